#!/usr/bin/env bash
# Third GPU session (issues 6 and 7): a recorded Resources timeline for the tab's screenshot
# (bench/resources_replay.py replays it here), and the worker's life cycle on a real GPU per backend:
# load/unload x5 back to the VRAM baseline, kill -9 mid-stream, forced out-of-memory at load and
# during a reply. Writes under $1 (default /tmp/job/out). Carry: .gpu and .whl (pydantic wheels).
set -uxo pipefail
source "$(dirname "$0")/gpu_prelude.sh" "${1:-/tmp/job/out}"
nvidia-smi > "$OUTDIR/nvidia-smi.txt" 2>&1 || true
python3 bench/synthetic_hf_model.py --shape llama2-7b --device cuda --out /tmp/fitchat-bench/llama2-7b \
  > "$OUTDIR/hf_build.json" 2>"$OUTDIR/hf_build.log" &
python3 -m tools.synth_gguf --shape llama31-8b --quant Q4_K_M --out /tmp/m/l31-8b.gguf
wait
python3 bench/gpu_nvml_sampler.py --model /tmp/m/l31-8b.gguf --ctx 16384 --timeline --out "$OUTDIR/timeline.json"
python3 bench/gpu_lifecycle.py --gguf /tmp/m/l31-8b.gguf --hf /tmp/fitchat-bench/llama2-7b \
  --out "$OUTDIR/lifecycle.json"
