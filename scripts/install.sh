#!/usr/bin/env bash
# Install fleetfit with all its extras (and the test tools) into the active Python environment.
#
# llama-cpp-python is a source distribution: pip compiles the llama.cpp it vendors (about 5 minutes on
# 2 cores). On x86_64 we compile for a portable CPU level (AVX2/FMA/F16C, no AVX-512, no AMX) rather than
# -march=native: virtual machines often advertise AMX without enabling it, and llama.cpp's AMX kernels
# then die with SIGILL on every quantized model. The wheel is kept in a wheelhouse keyed by those flags,
# because pip's own wheel cache ignores CMAKE_ARGS and would hand back a build made with other flags.
set -euo pipefail
cd "$(dirname "$0")/.."

. scripts/llama-cpp-build.env
if [ "$(uname -m)" = "x86_64" ]; then
  LLAMA_CMAKE_ARGS="$LLAMA_CMAKE_ARGS_X86_64"
else
  LLAMA_CMAKE_ARGS="${CMAKE_ARGS:-}"
fi
key=$(printf '%s %s' "$LLAMA_CPP_PYTHON" "$LLAMA_CMAKE_ARGS" | sha256sum | cut -c1-12)
wheelhouse="${FLEETFIT_WHEELHOUSE:-${XDG_CACHE_HOME:-$HOME/.cache}/fleetfit/wheelhouse}/$key"

if ! ls "$wheelhouse"/llama_cpp_python-"$LLAMA_CPP_PYTHON"-*.whl >/dev/null 2>&1; then
  echo "building llama-cpp-python $LLAMA_CPP_PYTHON ($LLAMA_CMAKE_ARGS); this takes a few minutes once"
  CMAKE_ARGS="$LLAMA_CMAKE_ARGS" CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" \
    python -m pip wheel --no-cache-dir --no-deps "llama-cpp-python==$LLAMA_CPP_PYTHON" -w "$wheelhouse"
fi
# Forced, because an llama-cpp-python 0.3.36 built with other flags may already be installed.
python -m pip install --no-deps --force-reinstall "$wheelhouse"/llama_cpp_python-"$LLAMA_CPP_PYTHON"-*.whl
python -m pip install --find-links "$wheelhouse" -e ".[all,dev]"
