#!/usr/bin/env bash
# The GPU checks in one command (benchmarks/gpu_check.py), from a checkout:
#     bash benchmarks/gpu_check.sh [OUT_DIR] [gpu_check.py options...]
# writes OUT_DIR/gpu_check.json (the summary), gpu_check.log and nvidia-smi.txt. Needs
# growlm's dependencies importable (pip install -e ".[hf]", or its wheels on the path).
set -euo pipefail
out=${1:-gpu_check}
shift || true
mkdir -p "$out"
out=$(cd "$out" && pwd)
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
python3 - <<'PY' || exit 2
import importlib.util, sys
missing = [m for m in ("torch", "pydantic", "safetensors", "tokenizers", "transformers", "numpy")
           if importlib.util.find_spec(m) is None]
if missing:
    sys.exit("gpu_check: missing Python packages: " + ", ".join(missing)
             + " (install growlm with pip install -e '.[hf]')")
PY
nvidia-smi > "$out/nvidia-smi.txt" 2>&1 || echo "nvidia-smi not available" > "$out/nvidia-smi.txt"
set -o pipefail
python3 benchmarks/gpu_check.py --out "$out/gpu_check.json" "$@" 2>&1 | tee "$out/gpu_check.log"
