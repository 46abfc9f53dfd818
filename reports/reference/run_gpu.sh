#!/usr/bin/env bash
# The GPU reference run behind reports/reference/<gpu-name>/ (one GPU, cuda:0): the paper
# preset's divergence grid for d <= 2048, a trimmed D_dim^k grid and the stiff-ODE d-sweep.
# Each stage has its own time limit; SIGINT lets pytest-benchmark write its JSON, and the
# journal beside it keeps every finished point whatever happens.
# Usage: reports/reference/run_gpu.sh OUT_DIR [PYTHON]
set -u
out=${1:?usage: run_gpu.sh OUT_DIR [PYTHON]}
py=${2:-python3}
mkdir -p "$out"
export XLA_PYTHON_CLIENT_PREALLOCATE=false PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,power.limit \
    --format=csv > "$out/nvidia-smi.csv" 2>&1
common=(-q -p no:cacheprovider --bench-devices cuda:0 --bench-timeout 30)
stage() {  # stage NAME LIMIT_S PYTEST_ARGS...
    local name=$1 limit=$2
    shift 2
    echo "== $name (limit ${limit}s): pytest $* ${common[*]}" | tee -a "$out/commands.txt"
    timeout -s INT "$limit" "$py" -m pytest "$@" "${common[@]}" \
        --benchmark-json "$out/$name.json" > "$out/$name.log" 2>&1
    echo "   exit $?" | tee -a "$out/commands.txt"
    tail -n 3 "$out/$name.log"
}
paper=(--bench-preset paper --benchmark-max-time 0.2)
stage divergence-jax 170 bench/test_divergence.py "${paper[@]}" --bench-backends jax \
    --bench-dims 8,32,128,512,2048
stage divergence-torch 110 bench/test_divergence.py "${paper[@]}" --bench-backends torch \
    --bench-dims 8,32,128,512,2048
stage ddim 60 bench/test_ddim.py "${paper[@]}" --bench-dims 8,128,2048 --bench-models hollownet \
    --bench-modes eval --bench-k 1,2,4
stage ode 80 bench/test_ode.py --bench-preset paper -k "hollow-d"
