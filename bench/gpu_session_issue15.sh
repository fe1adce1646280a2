#!/usr/bin/env bash
# GPU session for issue 15: the quality check's time per 1000 tokens (8B shape, fully on the GPU and
# half offloaded) and the KV cache in VRAM vs RAM at 4k/32k on an 8 GiB budget, predicted vs measured.
# Synthetic Q4_K_M weights (zeros): speed and memory do not depend on values; perplexity is meaningless.
# Writes $1/quality_kv.json (default /tmp/job/out). Carry: .gpu and .whl. About 3-4 minutes after the build.
set -euxo pipefail
source "$(dirname "$0")/gpu_prelude.sh" "${1:-/tmp/job/out}"
nvidia-smi > "$OUTDIR/nvidia-smi.txt" 2>&1 || true
[ -f /tmp/m/l31-8b.gguf ] || python3 -m tools.synth_gguf --shape llama31-8b --quant Q4_K_M --out /tmp/m/l31-8b.gguf
timeout 480 python3 bench/gpu_quality_kv.py --model /tmp/m/l31-8b.gguf --out "$OUTDIR"
