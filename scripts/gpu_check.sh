#!/usr/bin/env bash
# Run on a machine with an NVIDIA GPU, the package installed and the demo model cached:
#   bash scripts/gpu_check.sh [report.md]
# Checks lens fidelity on CUDA (float32, bfloat16), the steering one-token path against a full
# forward, and measures eval / lens items/s. Takes under 5 minutes on one GPU.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
exec "$PY" scripts/gpu_check.py --report "${1:-benchmarks/gpu_check_report.md}"
