#!/usr/bin/env bash
# GPU session for issue 11: MoE and unseen dense shapes through the app's own engine. Layer offload vs
# expert offload (n_cpu_moe), contexts up to 128k, VRAM from NVML vs the planner (header only and with
# llama.cpp's dry run), tokens/s, the automatic plan at 8/12/16 GiB vs the best sweep configuration,
# and the engine's per-token decode cost. Synthetic GGUFs written on the device by tools/synth_gguf.py
# directly in the Q4_K_M layout (sparse files: no F16 intermediate, no llama-quantize, no disk used;
# speed and memory do not depend on weight values; --varied-routing gives MoE tokens varied experts).
# Writes $1/moe_sweep.json (default /tmp/job/out). Carry: .gpu and .whl. About 8-9 minutes after the build.
#   then here: .venv/bin/python bench/analyse_sweep.py OUT/moe_sweep.json --markdown --save
set -euxo pipefail
source "$(dirname "$0")/gpu_prelude.sh" "${1:-/tmp/job/out}"
nvidia-smi > "$OUTDIR/nvidia-smi.txt" 2>&1 || true
df -h /tmp > "$OUTDIR/df.txt" 2>&1 || true
timeout 570 python3 bench/gpu_moe_sweep.py --models /tmp/m --out "$OUTDIR" --limit-s 500
