#!/usr/bin/env bash
# Second GPU session: transformers backend (issue 5), planner validation on models the constants
# were not fitted on + budgets near full offload (issue 3), the Resources sampler on real NVML
# (issue 6). Writes under $1 (default /tmp/job/out). Carry: .gpu and .whl.
set -uxo pipefail
source "$(dirname "$0")/gpu_prelude.sh" "${1:-/tmp/job/out}"
python3 bench/gpu_transformers.py --out "$OUTDIR/gpu_transformers.json" > "$OUTDIR/transformers.log" 2>&1
echo "transformers exit=$?"
python3 -m tools.synth_gguf --shape mistral-7b --quant Q4_K_M --out /tmp/m/mistral.gguf
python3 -m tools.synth_gguf --shape llama2-13b --quant Q4_K_M --out /tmp/m/l2-13b.gguf
python3 -m tools.synth_gguf --shape llama31-8b --quant Q8_0 --out /tmp/m/l31-8b-q8.gguf
python3 -m tools.synth_gguf --shape llama31-70b --quant Q4_K_M --layers 20 --out /tmp/m/l70-20.gguf
python3 bench/gpu_planner_sweep.py --model mistral7b=/tmp/m/mistral.gguf --model 13b=/tmp/m/l2-13b.gguf \
  --model 8bq8=/tmp/m/l31-8b-q8.gguf --model 70b20=/tmp/m/l70-20.gguf \
  --grid mistral7b=validate,13b=validate,8bq8=validate,70b20=near-full --budget-models 70b20 --no-dry-runs \
  --out "$OUTDIR/validate"
python3 bench/gpu_nvml_sampler.py --model /tmp/m/l31-8b-q8.gguf --out "$OUTDIR/nvml_sampler.json"
