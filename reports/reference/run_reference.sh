#!/usr/bin/env bash
# The reference run behind reports/reference/<gpu-name>/ (one device: $DEVICE, default cuda:0;
# DIMS, PROFILE_DIMS and LIMIT_SCALE, a factor on every stage's limit, suit it to a CPU):
# profiles of the hollow, hollow_forward and Hutchinson-1 train steps in every variant, then
# the complete paper preset (every workload, batch 512, d = 8..4096, every variant, the fused
# triton and pallas ones included), with TF32 matmuls in both frameworks so that torch and JAX
# are compared like for like. Each stage has its own time limit: SIGINT lets pytest-benchmark
# write its JSON, and the journal beside it keeps every finished point whatever happens.
# Usage: [DEVICE=cpu DIMS=8,32 PROFILE_DIMS=128 LIMIT_SCALE=3] run_reference.sh OUT_DIR [PYTHON]
set -u
out=${1:?usage: run_reference.sh OUT_DIR [PYTHON]}
py=${2:-python3}
dev=${DEVICE:-cuda:0}
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
dims_arg=()
[ -n "${DIMS:-}" ] && dims_arg=(--bench-dims "$DIMS")
run profile 50 "$py" -m bench.profile --device "$dev" --dims "${PROFILE_DIMS:-128,4096}" --mode train \
    --methods hollow,hollow_forward,hutchinson --variants eager,cudagraph,triton,jit,pallas \
    --matmul-precision tf32 --out "$out/profile"
stage paper 600 bench --bench-preset paper "${dims_arg[@]}"
