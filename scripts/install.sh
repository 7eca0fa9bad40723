#!/usr/bin/env bash
# Install fleetfit into the active Python environment.
#
#   bash scripts/install.sh                  # a developer's checkout: editable, every extra and the test tools
#   bash scripts/install.sh --agent          # a device: the agent with llama.cpp only (plus NVML on NVIDIA)
#   bash scripts/install.sh --agent --cuda   # ... and insist on llama.cpp's CUDA build (fails without nvcc)
#   bash scripts/install.sh --agent --torch  # ... and the PyTorch backend (on a Jetson: the system's CUDA torch
#                                            #     is kept, never replaced by PyPI's)
#
# llama-cpp-python is a source distribution: pip compiles the llama.cpp it vendors (about 5 minutes on
# 2 cores). We build what a user's own llama.cpp build gets: kernels for this CPU (-march=native), and CUDA
# when an NVIDIA GPU and the CUDA toolkit are present (Metal is llama.cpp's default on macOS). A CPU can
# advertise an instruction set its OS does not enable (AMX on some VMs), and the first quantized kernel
# then dies with SIGILL; so each build is checked by a tiny quantized run in a child process
# (agent/backends/llama_cpp_check.py) and, if it fails, the next one is tried: native without AMX, then a
# portable level. Wheels are kept in a wheelhouse keyed by the flags (and, for native builds, by the CPU),
# because pip's own wheel cache ignores CMAKE_ARGS and would hand back a build made with other flags.
# The build chosen, and why, is written to $PREFIX/share/fleetfit/llama-cpp-build.json for
# `fleetfit-agent info` and every result's backend_build.
#
# FLEETFIT_LLAMA_CMAKE_ARGS=... builds exactly those flags (checked, no fall-back). A CUDA build that fails its
# check falls back like the others, and at last to a CPU-only native build.
# FLEETFIT_LLAMA_LIB_DIR=DIR takes a llama.cpp built elsewhere (libllama.so and the libggml*.so beside it, e.g.
# cross-compiled for a board too slow to build it: scripts/emulated-board.sh): llama-cpp-python is installed without
# building llama.cpp (-DLLAMA_BUILD=OFF), the libraries are copied into its package, where it loads them from, and
# the build is checked and recorded as any other (with DIR/cmake-args, if there, as its flags).
set -euo pipefail
cd "$(dirname "$0")/.."

mode=dev want_cuda="" want_torch=""
for arg in "$@"; do
  case "$arg" in
    --agent) mode=agent ;;
    --cuda) want_cuda=yes ;;
    --torch) want_torch=yes ;;
    -h|--help) sed -n '2,8p' "$0"; exit 0 ;;
    *) echo "install.sh: unknown option $arg (see --help)" >&2; exit 2 ;;
  esac
done

. scripts/llama-cpp-build.env
arch=$(uname -m)

# --- GPU: CUDA when an NVIDIA GPU (or a Jetson) and nvcc are both here; say why not otherwise.
gpu_args="" gpu_note="no NVIDIA GPU found: CPU-only build"
nvidia_gpu=""
if { command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1; } || [ -e /etc/nv_tegra_release ]; then
  nvidia_gpu=yes
fi
if [ "$(uname -s)" = "Darwin" ]; then
  gpu_note="macOS: llama.cpp's default build uses Metal"
elif [ -n "$nvidia_gpu" ]; then
  nvcc=$(command -v nvcc || ls /usr/local/cuda/bin/nvcc 2>/dev/null || true)
  if [ -n "$nvcc" ]; then
    export PATH="$(dirname "$nvcc"):$PATH"
    gpu_args="-DGGML_CUDA=ON"
    gpu_note="NVIDIA GPU and CUDA toolkit found ($("$nvcc" --version | grep -o 'release [0-9.]*' || echo nvcc)): CUDA build"
  else
    gpu_note="NVIDIA GPU found but no CUDA toolkit (nvcc): CPU-only build; install the toolkit and rerun to use the GPU"
  fi
fi
if [ -n "$want_cuda" ] && [ -z "$gpu_args" ]; then
  echo "install.sh: --cuda asked for, but $gpu_note" >&2
  exit 2
fi
echo "llama.cpp: $gpu_note"

# --- what to install: a developer gets everything, editable; a device the agent's extras only
if [ "$mode" = dev ]; then
  target=(-e ".[all,dev]")
else
  extras=llama
  [ -n "$nvidia_gpu" ] && extras="$extras,nvml"
  if [ -n "$want_torch" ]; then
    if [ -e /etc/nv_tegra_release ] && python -c "import torch" 2>/dev/null; then
      echo "Jetson: keeping the system's torch $(python -c 'import torch; print(torch.__version__)')"
    elif [ -e /etc/nv_tegra_release ]; then
      echo "install.sh: on a Jetson, install NVIDIA's torch for your JetPack first (PyPI's has no CUDA here)," \
           "in a venv made with --system-site-packages, then rerun" >&2
      exit 2
    else
      extras="$extras,torch"
    fi
  fi
  target=(".[$extras]")
fi

# --- the builds to try, best first: "name|CMAKE_ARGS|CFLAGS"
lib_dir="${FLEETFIT_LLAMA_LIB_DIR:-}" lib_note=""
if [ -n "$lib_dir" ]; then
  [ -e "$lib_dir/libllama.so" ] || { echo "install.sh: FLEETFIT_LLAMA_LIB_DIR=$lib_dir has no libllama.so" >&2; exit 2; }
  lib_note="$lib_dir/libllama.so sha256 $(sha256sum "$lib_dir/libllama.so" | cut -c1-12)"
  builds=("prebuilt|-DLLAMA_BUILD=OFF -DLLAVA_BUILD=OFF|")
elif [ -n "${FLEETFIT_LLAMA_CMAKE_ARGS:-}" ]; then
  builds=("custom|$FLEETFIT_LLAMA_CMAKE_ARGS|")
elif [ "$arch" = "x86_64" ]; then
  builds=("native|$LLAMA_CMAKE_ARGS_NATIVE $gpu_args|"
          "native-no-amx|$LLAMA_CMAKE_ARGS_NATIVE $gpu_args|$LLAMA_CFLAGS_NO_AMX"
          "portable|$LLAMA_CMAKE_ARGS_X86_64_PORTABLE $gpu_args|")
else
  builds=("native|$LLAMA_CMAKE_ARGS_NATIVE $gpu_args|" "generic|$LLAMA_CMAKE_ARGS_GENERIC $gpu_args|")
fi
if [ -n "$gpu_args" ] && [ -z "${FLEETFIT_LLAMA_CMAKE_ARGS:-}" ]; then
  builds+=("native-cpu-only|$LLAMA_CMAKE_ARGS_NATIVE|")  # when no CUDA build runs, the CPU still should
fi
cpu_id=$( { uname -m; grep -m1 -E '^(model name|flags|Features|CPU part)' /proc/cpuinfo 2>/dev/null \
            || sysctl -n machdep.cpu.brand_string 2>/dev/null || true; } | sha256sum | cut -c1-12)
wheel_root="${FLEETFIT_WHEELHOUSE:-${XDG_CACHE_HOME:-$HOME/.cache}/fleetfit/wheelhouse}"

fleetfit_installed="" tried=""
for build in "${builds[@]}"; do
  IFS='|' read -r name cmake_args cflags <<<"$build"
  cmake_args=$(echo "$cmake_args" | xargs)  # trim
  key_cpu=""; [ "$name" = "portable" ] || [ "$name" = "generic" ] || key_cpu="$cpu_id"
  # (a prebuilt library's note is keyed only when there is one: every other build keeps the key it always had)
  key=$(printf '%s %s %s %s%s' "$LLAMA_CPP_PYTHON" "$cmake_args" "$cflags" "$key_cpu" "${lib_note:+ $lib_note}" \
        | sha256sum | cut -c1-12)
  wheelhouse="$wheel_root/$key"
  if [ -e "$wheelhouse/check-failed" ]; then
    tried="$tried$name: $(cat "$wheelhouse/check-failed"); "
    echo "llama.cpp build '$name' failed its check on this machine before ($wheelhouse); skipping it"
    continue
  fi
  if ! ls "$wheelhouse"/llama_cpp_python-"$LLAMA_CPP_PYTHON"-*.whl >/dev/null 2>&1; then
    echo "building llama-cpp-python $LLAMA_CPP_PYTHON, build '$name' ($cmake_args${cflags:+ CFLAGS=$cflags}); this takes a few minutes once"
    CMAKE_ARGS="$cmake_args" CFLAGS="$cflags" CXXFLAGS="$cflags" CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" \
      python -m pip wheel --no-cache-dir --no-deps "llama-cpp-python==$LLAMA_CPP_PYTHON" -w "$wheelhouse"
  fi
  # Forced, because an llama-cpp-python 0.3.36 built with other flags may already be installed.
  python -m pip install --no-deps --force-reinstall "$wheelhouse"/llama_cpp_python-"$LLAMA_CPP_PYTHON"-*.whl
  if [ -n "$lib_dir" ]; then  # where llama_cpp looks first (llama_cpp/lib), so no LLAMA_CPP_LIB_PATH is needed to run
    pkg_lib="$(python -c 'import importlib.util, os; print(os.path.dirname(importlib.util.find_spec("llama_cpp").origin))')/lib"
    mkdir -p "$pkg_lib" && cp -a "$lib_dir"/lib*.so* "$pkg_lib"/
    if [ -e "$lib_dir/cmake-args" ]; then cmake_args="built with $(head -c 300 "$lib_dir/cmake-args" | tr -d '\n')"; fi
  fi
  if [ -z "$fleetfit_installed" ]; then
    python -m pip install --find-links "$wheelhouse" "${target[@]}"
    fleetfit_installed=yes
  fi
  check=0
  [ -e "$wheelhouse/check-passed" ] || failure=$(python -m fleetfit.agent.backends.llama_cpp_check 2>&1 >/dev/null) || check=$?
  if [ "$check" -eq 2 ]; then
    echo "$failure" >&2
    exit 1
  fi
  if [ "$check" -eq 0 ]; then
    touch "$wheelhouse/check-passed"
    echo "llama.cpp build '$name' passed its check (Q4_0, Q8_0, Q4_K_M and F16 ran in a child process)"
    [ "$name" = "native-cpu-only" ] && gpu_note="CUDA builds failed their check: CPU-only build"
    NAME="$name" CMAKE="$cmake_args" CFL="$cflags" GPU="$gpu_note" TRIED="$tried" LIB="$lib_note" \
      VERSION="$LLAMA_CPP_PYTHON" COMMIT="$LLAMA_CPP_COMMIT" python - <<'EOF'
import json, os, pathlib, sys
out = pathlib.Path(sys.prefix) / "share" / "fleetfit" / "llama-cpp-build.json"
out.parent.mkdir(parents=True, exist_ok=True)
out.write_text(json.dumps({"build": os.environ["NAME"], "cmake_args": os.environ["CMAKE"],
                           "llama_cpp_python": os.environ["VERSION"], "llama_cpp_commit": os.environ["COMMIT"],
                           "cflags": os.environ["CFL"], "gpu": os.environ["GPU"],
                           "checked": "Q4_0, Q8_0, Q4_K_M and F16 ran in a child process",
                           "fell_back_from": os.environ["TRIED"].strip("; "),
                           **({"library": os.environ["LIB"]} if os.environ["LIB"] else {})}, indent=1) + "\n")
EOF
    exit 0
  fi
  echo "llama.cpp build '$name' failed its check: $failure"
  printf '%s' "$(echo "$failure" | tail -1 | cut -c1-200)" >"$wheelhouse/check-failed"
  tried="$tried$name: $(cat "$wheelhouse/check-failed"); "
done
echo "no llama.cpp build ran on this machine ($tried); fleetfit is installed, but its llama.cpp backend will fail" >&2
exit 1
