#!/usr/bin/env bash
# Issue 26's goals on this CPU, one run, both backends, the harness's own fair train steps:
# for each d, interleaved, per backend Hutchinson-1 on the FLOP-matched MLP then hollow_forward
# on the HollowNet (torch eager and torch.compile; JAX jit). Usage, from the repo root, on an
# otherwise idle machine:
#   bash reports/reference/cpu/i26/run.sh [OUT]   (default: this folder)
# then: python -m reports build OUT/goals.json --out OUT/report
set -euo pipefail
out=${1:-reports/reference/cpu/i26}
mkdir -p "$out"
node=bench/test_divergence.py::test_divergence
ids=()
for d in 32 128 512 1024; do
  for b in jax torch; do
    ids+=("$node[$b-cpu-mlp_flop_matched-hutchinson-m1-d$d-b512-k1-train]")
    ids+=("$node[$b-cpu-hollownet-hollow_forward-d$d-b512-k1-train]")
  done
  ids+=("$node[torch-cpu-hollownet-hollow_forward+compile-d$d-b512-k1-train]")
done
{
  date -u
  lscpu | grep "Model name"
  echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)"
} >"$out/load.txt"
python -m pytest "${ids[@]}" -p no:cacheprovider --bench-preset paper \
  --bench-dims 32,128,512,1024 --bench-batch 512 --bench-modes train --bench-n-probes 1 \
  --bench-methods hollow_forward,hutchinson --bench-models hollownet,mlp_flop_matched \
  --bench-backends torch,jax --bench-devices cpu --bench-variants eager,compile,jit \
  --benchmark-json "$out/goals.json" 2>&1 | tee "$out/goals.log"
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)" >>"$out/load.txt"
