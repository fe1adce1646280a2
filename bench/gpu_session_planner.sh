#!/usr/bin/env bash
# GPU session for the planner (issue 3): build llama.cpp with CUDA, make synthetic Q4_K_M models
# (zero weights; speed and memory do not depend on values), run the sweep. Writes to $1 (default
# /tmp/job/out). Carry: .gpu (../shared/gpu/prepare_carry.sh) and .whl (pydantic wheels).
set -euxo pipefail
source "$(dirname "$0")/gpu_prelude.sh" "${1:-/tmp/job/out}"
nvidia-smi > "$OUTDIR/nvidia-smi.txt" 2>&1 || true
python3 .gpu/bandwidth.py > "$OUTDIR/bandwidth.txt" 2>&1 || true
python3 -m tools.synth_gguf --shape llama2-7b --quant Q4_K_M --out /tmp/m/l2-7b.gguf
python3 -m tools.synth_gguf --shape llama31-8b --quant Q4_K_M --out /tmp/m/l31-8b.gguf
python3 -m tools.synth_gguf --shape llama31-70b --quant Q4_K_M --layers 20 --out /tmp/m/l70-20.gguf
"$BIN/llama-bench" -m /tmp/m/l31-8b.gguf -fa 1 -p 0 -n 128 -o json > "$OUTDIR/llama-bench-8b.json" 2>/dev/null || true
python3 bench/gpu_planner_sweep.py --model 7b=/tmp/m/l2-7b.gguf --model 8b=/tmp/m/l31-8b.gguf \
  --model 70b20=/tmp/m/l70-20.gguf --out "$OUTDIR"
