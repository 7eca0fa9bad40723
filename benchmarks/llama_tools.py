"""llama.cpp's own tools (llama-bench, llama-batched-bench, llama-perplexity, ...) for side-by-side benchmarks.

Built from the llama.cpp vendored in the llama-cpp-python sdist fleetfit installs, with llama.cpp's *default*
flags for this machine (what a user who builds llama.cpp gets: GGML_NATIVE, i.e. kernels for this CPU), or
with fleetfit's portable fall-back flags when asked (a third column). Builds live in the user cache, keyed by
release, flags and CPU, never in the repo. Shared by every benchmarks/*_parity.py script.
"""
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

BUILD_ENV = dict(re.findall(r'^(\w+)="([^"]*)"', (Path(__file__).resolve().parents[1] / "scripts" /
                                                 "llama-cpp-build.env").read_text(), re.M))
LLAMA_CPP_PYTHON = BUILD_ENV["LLAMA_CPP_PYTHON"]
FLAGS = {"default": "", "portable": BUILD_ENV["LLAMA_CMAKE_ARGS_X86_64_PORTABLE"]}
EXTRA_FLAGS = "-DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_SERVER=OFF -DCMAKE_BUILD_TYPE=Release"


class BenchError(Exception):
    """An expected failure: reported as one line, without a traceback."""


def run(cmd, **kw):
    try:
        return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kw)
    except FileNotFoundError as e:
        raise BenchError(f"cannot run {cmd[0]}: {e.strerror}")


def last_line(text):
    return (text.strip().splitlines() or ["?"])[-1]


def parse_json(text, what):
    """First JSON value that starts a line (tools may print log lines around it), or a BenchError."""
    for m in re.finditer(r"^[\[{]", text, re.M):
        try:
            return json.JSONDecoder().raw_decode(text, m.start())[0]
        except json.JSONDecodeError:
            continue
    raise BenchError(f"{what} printed no parsable JSON: {text.strip()[:120]!r}")


def cpu_key():
    try:
        text = Path("/proc/cpuinfo").read_text()
        return "".join(re.findall(r"^(?:model name|flags|Features)\s*:.*$", text, re.M)[:2])
    except OSError:
        return os.uname().machine


def cache_root(build):
    key = hashlib.sha256(f"{LLAMA_CPP_PYTHON} {FLAGS[build]} {cpu_key()}".encode()).hexdigest()[:12]
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "fleetfit" / "llama-tools" / key


def build_tool(target, build="default", sdist_dir=None):
    """Path of llama.cpp's `target` (e.g. "llama-bench"), built once per (release, flags, CPU). `build` is
    "default" (llama.cpp's own default flags) or "portable" (fleetfit's fall-back flags)."""
    root = cache_root(build)
    binary = root / "build" / "bin" / target
    if binary.exists():
        return binary
    src = Path(sdist_dir) if sdist_dir else fetch_sdist(root)
    llama_src = src / "vendor" / "llama.cpp"
    if not (llama_src / "CMakeLists.txt").exists():
        raise BenchError(f"no llama.cpp sources under {llama_src}")
    root.mkdir(parents=True, exist_ok=True)
    log = root / f"build-{target}.log"
    print(f"building {target} (llama.cpp {build} flags: {FLAGS[build] or 'none'}) into {root}; log: {log}",
          file=sys.stderr)
    with open(log, "w") as out:
        for cmd in (["cmake", "-S", llama_src, "-B", root / "build", *FLAGS[build].split(), *EXTRA_FLAGS.split()],
                    ["cmake", "--build", root / "build", "--target", target, "-j", str(os.cpu_count() or 2)]):
            started = time.monotonic()
            try:
                rc = subprocess.run([str(c) for c in cmd], stdout=out, stderr=subprocess.STDOUT).returncode
            except FileNotFoundError:
                raise BenchError("cmake not found; install cmake and a C++ compiler")
            print(f"[{time.monotonic() - started:.0f} s] {' '.join(map(str, cmd))}", file=out, flush=True)
            if rc != 0:
                raise BenchError(f"{target} build failed (exit {rc}); see {log}")
    if not binary.exists():
        raise BenchError(f"build finished but {binary} is missing; see {log}")
    return binary


def fetch_sdist(root):
    """Download and unpack the llama-cpp-python sdist into the cache (kept for building further tools)."""
    dest = root / "src"
    unpacked = dest / f"llama_cpp_python-{LLAMA_CPP_PYTHON}"
    if unpacked.exists():
        return unpacked
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        print(f"downloading llama-cpp-python {LLAMA_CPP_PYTHON} sdist", file=sys.stderr)
        r = run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                 f"llama-cpp-python=={LLAMA_CPP_PYTHON}", "-d", tmp])
        archives = list(Path(tmp).glob("*.tar.gz"))
        if r.returncode != 0 or not archives:
            raise BenchError(f"pip download of llama-cpp-python=={LLAMA_CPP_PYTHON} failed: {last_line(r.stderr)}")
        with tarfile.open(archives[0]) as tar:
            tar.extractall(dest, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
    if not unpacked.exists():
        raise BenchError(f"sdist did not unpack to {unpacked}")
    return unpacked


def physical_cores():
    """Count (package, core) pairs: llama.cpp gains nothing from SMT siblings."""
    try:
        text = Path("/proc/cpuinfo").read_text()
        pairs = set(re.findall(r"physical id\s*:\s*(\d+).*?core id\s*:\s*(\d+)", text, re.S))
        if pairs:
            return len(pairs)
    except OSError:
        pass
    return os.cpu_count() or 1


def agent_cmd():
    local = Path(sys.executable).parent / "fleetfit-agent"
    found = str(local) if local.exists() else shutil.which("fleetfit-agent")
    if not found:
        raise BenchError("fleetfit-agent not found next to this Python nor on PATH")
    return [found]


def main_guard(main):
    try:
        main()
    except BenchError as e:
        sys.exit(f"error: {e}")
    except KeyboardInterrupt:
        sys.exit("interrupted")
