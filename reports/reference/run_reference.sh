#!/usr/bin/env bash
# The reference run behind reports/reference/<device-name>/: bench/reference.py (its docstring
# says what each stage does), one command of at most 8 minutes, so a 15-minute GPU lease can
# run it twice. DEVICE=cpu runs the same stages with the CPU's settings.
# Usage: [DEVICE=cpu] run_reference.sh OUT_DIR [PYTHON]
set -u
out=$(realpath -m "${1:?usage: run_reference.sh OUT_DIR [PYTHON]}")
py=${2:-python3}
cd "$(dirname "$0")/../.." || exit 2
exec "$py" -m bench.reference "$out" --device "${DEVICE:-cuda:0}" --python "$py"
