#!/usr/bin/env bash
# An emulated aarch64 board: a Debian arm64 root run under qemu-user, with the agent installed the way
# `scripts/install.sh --agent` installs it on aarch64, joined to a coordinator on this host, delivering a real
# SmolLM2 profile. A functional check of the agent on ARM (inventory, build record, probes, sensors), not a speed
# measurement: everything arm64 runs through qemu's instruction translation. Not part of the test suite.
#
#   sudo bash scripts/emulated-board.sh          # needs root (debootstrap, chroot, binfmt_misc) and network
#
# Host packages: debootstrap qemu-user-static binfmt-support crossbuild-essential-arm64 cmake.
# The arm64 root (debootstrap --foreign, then its second stage under qemu: ~17 minutes once), the cross-built
# llama.cpp and pip's caches are kept under ~/.cache/fleetfit/emulated-board/ (FLEETFIT_BOARD_CACHE), so a
# second run takes minutes. llama.cpp is cross-compiled on the host (Debian's aarch64-linux-gnu toolchain, the
# generic armv8 build: -DGGML_NATIVE=OFF) because compiling it under emulation is ~15x slower; install.sh takes
# it through FLEETFIT_LLAMA_LIB_DIR, as it would a library built on another machine for a real board.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cache=${FLEETFIT_BOARD_CACHE:-$HOME/.cache/fleetfit/emulated-board}
suite=bookworm mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
root=$cache/root-arm64-$suite
host_bin=${FLEETFIT_HOST_BIN:-$repo/.venv/bin}  # the coordinator's fleetfit (the host's own install)
. "$repo/scripts/llama-cpp-build.env"
say() { printf '[emulated-board %4ss] %s\n' "$SECONDS" "$*"; }
die() { echo "emulated-board.sh: $*" >&2; exit 2; }

# --- 0. the host's tools
[ "$(id -u)" = 0 ] || die "needs root (debootstrap, chroot and binfmt_misc)"
missing=""
for pair in debootstrap:debootstrap qemu-aarch64-static:qemu-user-static update-binfmts:binfmt-support \
            aarch64-linux-gnu-g++:crossbuild-essential-arm64 cmake:cmake; do
  command -v "${pair%%:*}" >/dev/null || missing="$missing ${pair#*:}"
done
[ -z "$missing" ] || die "missing host packages; run: apt-get install$missing"
[ -x "$host_bin/fleetfit" ] || die "no coordinator at $host_bin/fleetfit (set FLEETFIT_HOST_BIN to a venv's bin)"
mkdir -p "$cache"

# --- 1. qemu-aarch64 in binfmt_misc: the agent's worker is a subprocess, so every arm64 exec must be translated
if ! mountpoint -q /proc/sys/fs/binfmt_misc; then
  mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
fi
[ -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ] || update-binfmts --enable qemu-aarch64
grep -q '^enabled' /proc/sys/fs/binfmt_misc/qemu-aarch64 || die "qemu-aarch64 is registered but not enabled"
say "binfmt_misc: qemu-aarch64 $(grep -E '^(interpreter|flags)' /proc/sys/fs/binfmt_misc/qemu-aarch64 | xargs)"

# --- 2. the Debian arm64 root, made once
if [ ! -e "$root/.fleetfit-root-done" ]; then
  say "making a Debian $suite arm64 root in $root (first stage on the host, second under qemu; ~20 minutes once)"
  rm -rf "$root"
  debootstrap --foreign --arch=arm64 --variant=minbase \
    --include=python3,python3-venv,python3-dev,ca-certificates,gcc,g++,make,cmake,ninja-build,procps \
    "$suite" "$root" "$mirror" >"$cache/debootstrap-1.log" 2>&1 || die "debootstrap failed: see $cache/debootstrap-1.log"
  cp /usr/bin/qemu-aarch64-static "$root/usr/bin/"  # needed only where binfmt lacks the F (fix-binary) flag
  chroot "$root" /debootstrap/debootstrap --second-stage >"$cache/debootstrap-2.log" 2>&1 \
    || die "second stage failed: see $cache/debootstrap-2.log"
  touch "$root/.fleetfit-root-done"
  say "root made"
else
  say "reusing the arm64 root $root"
fi
say "root: $(chroot "$root" uname -m), $(chroot "$root" python3 --version)"

# --- 3. llama.cpp for arm64, cross-compiled on the host from the sources llama-cpp-python vendors
libdir=$cache/llama-lib-arm64-$LLAMA_CPP_PYTHON
if [ ! -e "$libdir/libllama.so" ]; then
  sdist=$cache/llama_cpp_python-$LLAMA_CPP_PYTHON.tar.gz
  [ -e "$sdist" ] || "$host_bin/python" -m pip download -q --no-deps --no-binary :all: \
    "llama-cpp-python==$LLAMA_CPP_PYTHON" -d "$cache"
  rm -rf "$cache/llama-src" && mkdir -p "$cache/llama-src"
  tar xzf "$sdist" -C "$cache/llama-src" --strip-components=1
  say "cross-compiling llama.cpp $LLAMA_CPP_COMMIT for aarch64 (generic armv8: $LLAMA_CMAKE_ARGS_GENERIC; a few minutes once)"
  # The options llama-cpp-python's own build sets (shared libraries, no curl), less the tools it does not ship.
  # shellcheck disable=SC2086
  cmake -S "$cache/llama-src/vendor/llama.cpp" -B "$cache/llama-build" -DCMAKE_BUILD_TYPE=Release \
    -DCMAKE_SYSTEM_NAME=Linux -DCMAKE_SYSTEM_PROCESSOR=aarch64 \
    -DCMAKE_C_COMPILER=aarch64-linux-gnu-gcc -DCMAKE_CXX_COMPILER=aarch64-linux-gnu-g++ \
    $LLAMA_CMAKE_ARGS_GENERIC -DBUILD_SHARED_LIBS=ON -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF \
    -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF \
    -DCMAKE_BUILD_WITH_INSTALL_RPATH=ON '-DCMAKE_INSTALL_RPATH=$ORIGIN' >"$cache/llama-build.log" 2>&1 \
    || die "cmake failed: see $cache/llama-build.log"
  cmake --build "$cache/llama-build" --target llama -j "$(nproc)" >>"$cache/llama-build.log" 2>&1 \
    || die "cross-compiling llama.cpp failed: see $cache/llama-build.log"
  mkdir -p "$libdir.tmp" && cp -a "$cache/llama-build/bin/"lib*.so* "$libdir.tmp/" && rm -rf "$libdir" && mv "$libdir.tmp" "$libdir"
fi
say "llama.cpp for arm64: $(cd "$libdir" && ls ./*.so | xargs -n1 basename | xargs) ($(file -bL "$libdir/libllama.so" | cut -d, -f1-2))"

# --- 4. the agent in the root, installed as on a board: scripts/install.sh --agent, with the library from step 3
# The host's /sys and /dev as they are (cgroup and sensor trees included: the agent reads its limits there).
mountpoint -q "$root/proc" || mount -t proc proc "$root/proc"
for fs in sys dev; do mountpoint -q "$root/$fs" || mount --rbind "/$fs" "$root/$fs"; done
work=$(mktemp -d /tmp/fleetfit-board.XXXXXX)
serve_pid="" agent_pid=""
cleanup() {
  # The agent ends its job on SIGTERM, but not inside a long numpy or llama.cpp call: SIGKILL after 10 s.
  if [ -n "$agent_pid" ]; then
    kill "$agent_pid" 2>/dev/null || true
    for _ in $(seq 20); do kill -0 "$agent_pid" 2>/dev/null || break; sleep 0.5; done
    kill -9 "$agent_pid" 2>/dev/null || true
  fi
  [ -z "$serve_pid" ] || kill "$serve_pid" 2>/dev/null || true
  wait 2>/dev/null || true
  for fs in dev sys proc; do umount -l "$root/$fs" 2>/dev/null || true; done
}
trap cleanup EXIT
cp -L /etc/resolv.conf "$root/etc/resolv.conf"
# The board trusts what this host trusts (a local or proxy CA included); its pip uses that store, not certifi's.
cp -L /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"
rm -rf "$root/opt/fleetfit" "$root/opt/llama-lib" && mkdir -p "$root/opt/fleetfit"
(cd "$repo" && git ls-files -co --exclude-standard -z | tar --null -T - -cf -) | tar -xf - -C "$root/opt/fleetfit"
cp -a "$libdir" "$root/opt/llama-lib"
echo "$LLAMA_CMAKE_ARGS_GENERIC (cross-compiled with aarch64-linux-gnu-gcc $(aarch64-linux-gnu-gcc -dumpversion))" \
  >"$root/opt/llama-lib/cmake-args"
in_root=(chroot "$root" /usr/bin/env -i HOME=/root PATH=/opt/venv/bin:/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8
         PIP_CERT=/etc/ssl/certs/ca-certificates.crt SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt)
board() { "${in_root[@]}" "$@"; }
say "installing the agent in the root (scripts/install.sh --agent, FLEETFIT_LLAMA_LIB_DIR=/opt/llama-lib)"
board bash -c 'cd /opt/fleetfit && { [ -x /opt/venv/bin/python ] || python3 -m venv /opt/venv; } &&
  FLEETFIT_LLAMA_LIB_DIR=/opt/llama-lib bash scripts/install.sh --agent' >"$work/install.log" 2>&1 \
  || { tail -20 "$work/install.log"; die "install.sh --agent failed in the root: see $work/install.log"; }
grep -E '^llama.cpp' "$work/install.log" | sed 's/^/  /'
say "fleetfit-agent info on the board:"
board fleetfit-agent info | sed 's/^/  /'

# --- 5. a coordinator on this host (the chroot shares its network), the board joins and profiles SmolLM2
port=$("$host_bin/python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
export FLEETFIT_COORDINATOR=127.0.0.1:$port FLEETFIT_STATE_DIR=$work
"$host_bin/fleetfit" serve --listen "$FLEETFIT_COORDINATOR" --db "$work/fleet.sqlite3" >"$work/serve.log" 2>&1 &
serve_pid=$!
for _ in $(seq 100); do [ -e "$work/tls/ca.pem" ] && [ -e "$work/operator.token" ] && break; sleep 0.2; done
rm -rf "$root/tmp/board"  # a fresh enrollment with this coordinator (an earlier run's credentials pin another CA)
token=$("$host_bin/fleetfit" token create --db "$work/fleet.sqlite3" --labels board=emulated-arm64)
say "coordinator on $FLEETFIT_COORDINATOR; the board joins and runs"
# Not through board() (a subshell): $! must be the agent itself (chroot and env exec into it), for cleanup.
"${in_root[@]}" fleetfit-agent run --coordinator "$FLEETFIT_COORDINATOR" --token "$token" \
  --identity /tmp/board/identity.json --outbox /tmp/board/outbox >"$work/agent.log" 2>&1 &
agent_pid=$!
for _ in $(seq 300); do "$host_bin/fleetfit" devices 2>/dev/null | grep -q aarch64 && break; sleep 1; done
"$host_bin/fleetfit" devices | sed 's/^/  /'
started=$("$host_bin/fleetfit" profile --select arch=aarch64 --models smollm2-135m --quants Q4_1 \
  --n-prompt 64 --n-gen 16 --repetitions 2)
echo "$started" | sed 's/^/  /'
campaign=$(echo "$started" | sed -n 's/^campaign \([^:]*\):.*/\1/p')
timeout 1800 "$host_bin/fleetfit" campaign status "$campaign" --watch | tail -5 | sed 's/^/  /'
say "what the coordinator holds from the board:"
"$host_bin/fleetfit" limits | sed 's/^/  /'
"$host_bin/fleetfit" export --db "$work/fleet.sqlite3" | "$host_bin/python" -c '
import json, sys
for line in sys.stdin:
    line = json.loads(line); r, d = line["result"], line.get("device", {})
    keep = ("model_name", "model_origin", "quant", "failure", "error", "threads", "backend_build",
            "decode_tokens_per_s", "prefill_tokens_per_s", "memory_method", "power")
    for k in keep:
        if r.get(k):
            print(f"  result.{k}: {json.dumps(r[k])[:300]}")
    for k in ("arch", "cpu_model", "cpus_usable", "cpu_source", "memory_source", "llama_system_info"):
        if d.get(k):
            print(f"  device.{k}: {json.dumps(d[k])[:300]}")'
grep -q . "$work/agent.log" && { say "agent log (last lines):"; tail -5 "$work/agent.log" | sed 's/^/  /'; }
say "done in ${SECONDS}s (logs: $work)"
