#!/usr/bin/env bash
# GPU session for issue 17 (several GPUs), on a machine with two or more GPUs (nvidia-h200-x2):
# per-GPU VRAM predicted vs NVML, tokens/s predicted vs measured at several tensor_split ratios,
# split modes and contexts, the automatic plan vs the best split of the sweep, and per-GPU budgets.
# Synthetic Q4_K_M weights (zeros): speed and memory do not depend on values.
# Writes $1/multi_split.json (default /tmp/job/out). Carry: .gpu and .whl. About 5-7 minutes after the build.
set -euxo pipefail
source "$(dirname "$0")/gpu_prelude.sh" "${1:-/tmp/job/out}"
nvidia-smi > "$OUTDIR/nvidia-smi.txt" 2>&1 || true
nvidia-smi topo -m > "$OUTDIR/nvidia-smi-topo.txt" 2>&1 || true   # NVLink or PCIe between the GPUs
python3 .gpu/bandwidth.py > "$OUTDIR/bandwidth.txt" 2>&1 || true
n_gpus=$(nvidia-smi -L | wc -l)
[ "$n_gpus" -ge 2 ] || { echo "issue 17 needs two GPUs; this machine has $n_gpus" | tee "$OUTDIR/ERROR.txt"; exit 2; }
[ -f /tmp/m/l31-8b.gguf ] || python3 -m tools.synth_gguf --shape llama31-8b --quant Q4_K_M --out /tmp/m/l31-8b.gguf
[ -f /tmp/m/l70-20.gguf ] || python3 -m tools.synth_gguf --shape llama31-70b --quant Q4_K_M --layers 20 --out /tmp/m/l70-20.gguf
# MoE (budget runs only: experts across both GPUs, and in RAM when the budgets are small); routed like a real model
[ -f /tmp/m/moe30.gguf ] || python3 -m tools.synth_gguf --shape qwen3moe-30b-a3b --quant Q4_K_M --varied-routing --out /tmp/m/moe30.gguf
export CUDA_DEVICE_ORDER=PCI_BUS_ID   # llama.cpp's CUDA<i> = NVML's GPU i (the app's workers set it too)
timeout 500 python3 bench/gpu_multi_split.py --model 8b=/tmp/m/l31-8b.gguf --model 70b20=/tmp/m/l70-20.gguf \
  --model moe30=/tmp/m/moe30.gguf --budget-only moe30 --ctx 4096,32768 --tokens 64 --deadline-s 400 --out "$OUTDIR"
