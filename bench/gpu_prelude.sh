# Sourced first by the bench/gpu_session*.sh scripts, on the GPU machine: OUTDIR from $1, the
# carried pydantic wheels (.whl) on PYTHONPATH, llama-cpp-python built with CUDA and bitsandbytes
# installed by .gpu/build_device.sh (skipped on a warm machine), and gguf-py for synthetic models.
OUTDIR=${1:-/tmp/job/out}
cd "$(dirname "${BASH_SOURCE[0]}")/.."
mkdir -p "$OUTDIR" /tmp/m
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD
bash .gpu/build_device.sh || exit 1
source /tmp/gpu/env.sh
export PYTHONPATH=$PYTHONPATH:$GGUF_PY
