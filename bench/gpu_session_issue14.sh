#!/usr/bin/env bash
# GPU session for issue 14: the lean decode loop against llama.cpp's own C++ loops at one reply, and
# continuous batching (8 replies at once through the ModelManager and worker) against
# llama-batched-bench at 8 parallel. Synthetic llama31-8b-shaped Q4_K_M weights (zeros): speed does not
# depend on weight values. Greedy everywhere (zero weights make every token a tie; at temperature > 0
# the end-of-sequence token would end replies at random).
# Writes $1/issue14_parallel.json (default /tmp/job/out). Carry: .gpu and .whl. About 4 minutes after the build.
set -euxo pipefail
source "$(dirname "$0")/gpu_prelude.sh" "${1:-/tmp/job/out}"
nvidia-smi > "$OUTDIR/nvidia-smi.txt" 2>&1 || true
[ -f /tmp/m/l31-8b.gguf ] || python3 -m tools.synth_gguf --shape llama31-8b --quant Q4_K_M --out /tmp/m/l31-8b.gguf
timeout 480 python3 bench/gpu_parallel.py --model /tmp/m/l31-8b.gguf --bin "$BIN" --out "$OUTDIR" \
    --prompt-tokens 300 --tokens 128 --runs 3 --clients 8
cat "$OUTDIR/issue14_parallel.json" | python3 -c "import json,sys; d=json.load(sys.stdin); print(json.dumps(d.get('ratios'), indent=1))"
