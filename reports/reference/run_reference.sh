#!/usr/bin/env bash
# The reference run behind reports/reference/<gpu-name>/ and cpu/ (one device: $DEVICE, default
# cuda:0; DIMS, PROFILE_DIMS and LIMIT_SCALE, a factor on every stage's limit, suit it to a
# CPU): profiles of the hollow and Hutchinson-1 train steps, then every workload at the
# paper preset (batch 512), with TF32 matmuls in both frameworks so that torch and JAX are
# compared like for like. The goal grid (a, d) covers d = 8..4096 in both modes: hollow and
# hollow_forward on the HollowNet, Hutchinson-1 on the FLOP-matched MLP, as torch eager and
# cudagraph and JAX jit. Each stage has its own time limit: SIGINT lets pytest-benchmark write
# its JSON, and the journal beside it keeps every finished point whatever happens.
# Usage: [DEVICE=cpu DIMS=8,32 PROFILE_DIMS=128 LIMIT_SCALE=3] run_reference.sh OUT_DIR [PYTHON]
set -u
out=${1:?usage: run_reference.sh OUT_DIR [PYTHON]}
py=${2:-python3}
dev=${DEVICE:-cuda:0}
dims=${DIMS:-8,32,128,512,1024,2048,4096}
mkdir -p "$out"
export XLA_PYTHON_CLIENT_PREALLOCATE=false PYTHONUNBUFFERED=1
scale=${LIMIT_SCALE:-1}
if command -v nvidia-smi > /dev/null; then
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,power.limit \
        --format=csv > "$out/nvidia-smi.csv" 2>&1
fi
run() {  # run NAME LIMIT_S COMMAND...: one stage, logged, under its own limit
    local name=$1 limit=$(($2 * scale))
    shift 2
    echo "== $name (limit ${limit}s): $*" | tee -a "$out/commands.txt"
    timeout -s INT "$limit" "$@" > "$out/$name.log" 2>&1
    echo "   exit $?" | tee -a "$out/commands.txt"
    tail -n 2 "$out/$name.log"
}
common=(-q -p no:cacheprovider --bench-devices "$dev" --bench-timeout 30
    --bench-matmul-precision tf32 --benchmark-max-time 0.2)
stage() {  # stage NAME LIMIT_S PYTEST_ARGS...
    local name=$1 limit=$2
    shift 2
    run "$name" "$limit" "$py" -m pytest "$@" "${common[@]}" --benchmark-json "$out/$name.json"
}
paper=(--bench-preset paper)
goal=(bench/test_divergence.py "${paper[@]}" --bench-dims "$dims")
exact=("${goal[@]}" --bench-models hollownet --bench-methods hollow,hollow_forward)
run profile 50 "$py" -m bench.profile --device "$dev" --dims "${PROFILE_DIMS:-128,4096}" --mode train \
    --methods hollow,hutchinson --variants eager,cudagraph,jit --matmul-precision tf32 \
    --out "$out/profile"
stage goal-hutch 75 "${goal[@]}" --bench-models mlp_flop_matched --bench-methods hutchinson \
    --bench-n-probes 1 --bench-variants eager,cudagraph,jit
stage goal-jax 95 "${exact[@]}" --bench-backends jax
stage goal-torch 90 "${exact[@]}" --bench-backends torch --bench-variants eager,cudagraph
stage dense 40 bench/test_divergence.py "${paper[@]}" --bench-dims 128,512,2048 \
    --bench-models hollownet --bench-methods dense_loop,dense_vectorized --bench-modes eval
stage ddim 40 bench/test_ddim.py "${paper[@]}" --bench-dims 8,128,2048 --bench-k 1,4 \
    --bench-models hollownet --bench-methods hollow,hollow_forward --bench-modes eval \
    --bench-variants eager,jit
stage compile 35 bench/test_divergence.py "${paper[@]}" --bench-dims 128,2048 \
    --bench-backends torch --bench-models hollownet --bench-methods hollow \
    --bench-modes eval --bench-variants compile
stage cnf 30 bench/test_cnf.py
stage sde 30 bench/test_sde.py "${paper[@]}" --bench-dims 8,128,2048
stage ode 30 bench/test_ode.py "${paper[@]}" -k "hollow-d"
