"""llama.cpp built once per class of device: `python -m fleetfit.agent.llama_wheel --install-url URL --ca CA`.

join.sh runs it after fleetfit is installed and the device joined. The device's class (device_class: architecture,
the CPU features ggml's kernels are built for, CUDA or not, Python version) names the wheel the fleet holds for it
on the coordinator (GET /llama/CLASS/). When there is one it is downloaded (its sha256 checked), installed and checked
here by the same tiny quantized runs install.sh uses (agent/backends/llama_cpp_check.py); only if there is none, or it
fails its check, is llama-cpp-python built here (its source from the coordinator's index), checked, and uploaded
with its build record for the next device of the class. A wheel from another class is never fetched. An installed
build that already passed its check (share/fleetfit/llama-cpp-build.json) is kept: rerunning changes nothing.
The local build is one native build (install.sh's first choice); install.sh's fall-backs stay its own.
"""

import argparse
import hashlib
import json
import os
import pathlib
import platform
import shutil
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

from fleetfit.models.backends import llama_cpp_python_pin

# The CPU features ggml's kernels are compiled for (x86: its GGML_* options; Arm: the dot-product, matrix and SVE
# extensions): two CPUs that agree on these run the same native build.
X86_FEATURES = ("sse3", "ssse3", "sse4_1", "sse4_2", "avx", "avx2", "fma", "f16c", "bmi2", "avx_vnni", "avx512f",
                "avx512bw", "avx512vl", "avx512dq", "avx512cd", "avx512_vnni", "avx512_bf16", "avx512vbmi",
                "amx_tile", "amx_int8", "amx_bf16")
ARM_FEATURES = ("asimd", "fphp", "asimdhp", "asimddp", "i8mm", "sve", "sve2", "bf16", "svei8mm", "sme")
BUILD_RECORD = pathlib.Path(sys.prefix) / "share" / "fleetfit" / "llama-cpp-build.json"


class WheelError(Exception):
    """One line for users."""


def cpu_features(cpuinfo: str) -> list[str]:
    """The ggml-relevant features a /proc/cpuinfo text lists (x86 "flags" or Arm "Features"), sorted."""
    found = set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            found.update(value.split())
            break
    return sorted(found & set(X86_FEATURES + ARM_FEATURES))


def has_cuda(root: pathlib.Path = pathlib.Path("/")) -> bool:
    """An NVIDIA GPU (or Jetson) and a CUDA toolkit: install.sh's rule for a CUDA build."""
    gpu = (root / "proc/driver/nvidia/gpus").is_dir() or (root / "etc/nv_tegra_release").exists()
    return gpu and bool(shutil.which("nvcc") or (root / "usr/local/cuda/bin/nvcc").exists())


def device_class(root: pathlib.Path = pathlib.Path("/")) -> str:
    """e.g. x86_64-cp311-cpu-3f2a9c1d04be: architecture, Python, CUDA or CPU, a digest of the CPU features."""
    try:
        cpuinfo = (root / "proc/cpuinfo").read_text(errors="replace")
    except OSError:
        cpuinfo = ""
    features = cpu_features(cpuinfo)
    digest = hashlib.sha256(" ".join(features).encode()).hexdigest()[:12]
    arch = platform.machine().lower() or "unknown"
    return f"{arch}-cp{sys.version_info[0]}{sys.version_info[1]}-{'cuda' if has_cuda(root) else 'cpu'}-{digest}"


def _open(url: str, ca: pathlib.Path, method: str = "GET", data=None, headers=None, timeout: float = 600):
    context = ssl.create_default_context(cafile=str(ca))
    request = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    return urllib.request.urlopen(request, context=context, timeout=timeout)


def pip_env(ca: pathlib.Path) -> dict:
    """pip's environment here: no configuration file, and the fleet CA as its only CA (REQUESTS_CA_BUNDLE or
    CURL_CA_BUNDLE in the environment would take precedence over --cert)."""
    env = {k: v for k, v in os.environ.items() if k != "CURL_CA_BUNDLE" and not k.startswith("PIP_")}
    return {**env, "PIP_CONFIG_FILE": os.devnull, "REQUESTS_CA_BUNDLE": str(ca)}


def _pip(ca: pathlib.Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input", *args],
                          capture_output=True, text=True, env=pip_env(ca))


def check() -> str | None:
    """Why the installed llama.cpp does not run here (install.sh's check, in a child process), or None."""
    done = subprocess.run([sys.executable, "-m", "fleetfit.agent.backends.llama_cpp_check"], capture_output=True,
                          text=True)
    if done.returncode == 0:
        return None
    return (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1][:300]


def install(wheel: pathlib.Path, index: str, ca: pathlib.Path) -> None:
    done = _pip(ca, "install", "-q", "--no-compile", "--force-reinstall", "--no-deps", str(wheel))
    if done.returncode == 0:  # its dependencies, from the coordinator's index
        done = _pip(ca, "install", "-q", "--no-compile", "--cert", str(ca), "--index-url", index, str(wheel))
    if done.returncode:
        raise WheelError(f"pip could not install {wheel.name}: {(done.stderr.strip().splitlines() or ['?'])[-1]}")


def record(build: dict) -> None:
    BUILD_RECORD.parent.mkdir(parents=True, exist_ok=True)
    BUILD_RECORD.write_text(json.dumps(build, indent=1) + "\n")


def fetch(install_url: str, ca: pathlib.Path, klass: str, out: pathlib.Path) -> tuple[pathlib.Path, dict] | None:
    """The fleet's wheel for `klass` (sha256 checked) and its record, or None when the fleet holds none."""
    try:
        with _open(f"{install_url}/llama/{klass}/", ca, timeout=30) as reply:
            held = json.loads(reply.read(1 << 20))
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return None
        raise WheelError(f"the coordinator answered {exc.code} for this class's llama.cpp wheel") from None
    name = held["wheel"]
    if "/" in name or not name.endswith(".whl"):
        raise WheelError("the coordinator named a wheel that is not one")
    path, digest = out / name, hashlib.sha256()
    with _open(f"{install_url}/llama/{klass}/{name}", ca) as reply, open(path, "wb") as f:
        while chunk := reply.read(1 << 20):
            digest.update(chunk)
            f.write(chunk)
    if digest.hexdigest() != held["sha256"]:
        raise WheelError(f"{name} does not match the sha256 the coordinator gave: not installed")
    return path, held.get("build", {})


def build(index: str, ca: pathlib.Path, out: pathlib.Path) -> pathlib.Path:
    """llama-cpp-python built here (native kernels), from the coordinator's source distribution and build tools.
    FLEETFIT_LLAMA_WHEEL=FILE takes a wheel built on this machine before instead (install.sh's wheelhouse): the tests
    use it, so that they do not compile llama.cpp; it is checked and shared like a build made here."""
    if prebuilt := os.environ.get("FLEETFIT_LLAMA_WHEEL"):
        path = pathlib.Path(prebuilt)
        if not path.is_file() or not path.name.startswith("llama_cpp_python-"):
            raise WheelError(f"FLEETFIT_LLAMA_WHEEL={prebuilt} is not a llama-cpp-python wheel")
        return pathlib.Path(shutil.copy2(path, out / path.name))
    env = {**pip_env(ca), "CMAKE_ARGS": "-DGGML_NATIVE=ON" +
           (" -DGGML_CUDA=ON" if has_cuda() else ""), "CMAKE_BUILD_PARALLEL_LEVEL": str(os.cpu_count() or 1)}
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-cache-dir", "--cert", str(ca),
                           "--index-url", index, "-w", str(out), f"llama-cpp-python=={llama_cpp_python_pin()}"],
                          capture_output=True, text=True, env=env)
    wheels = list(out.glob("llama_cpp_python-*.whl"))
    if done.returncode or not wheels:
        raise WheelError(f"building llama-cpp-python failed: {(done.stderr.strip().splitlines() or ['?'])[-1]}")
    return wheels[0]


def upload(install_url: str, ca: pathlib.Path, klass: str, wheel: pathlib.Path, build_record: dict,
           credential: str) -> str:
    with open(wheel, "rb") as f:
        try:
            with _open(f"{install_url}/llama/{klass}/{wheel.name}", ca, "PUT", f, {
                    "Authorization": f"Bearer {credential}", "Content-Length": str(wheel.stat().st_size),
                    "X-Fleetfit-Build": json.dumps(build_record)}) as reply:
                return f"uploaded ({reply.status})"
        except urllib.error.HTTPError as exc:
            return f"not uploaded ({exc.code}: {exc.read(300).decode(errors='replace').strip()})"


def ensure(install_url: str, ca: pathlib.Path, credential: str | None, say=print) -> dict:
    """Install the fleet's checked wheel for this device's class, or build, check and upload one; the build record."""
    if BUILD_RECORD.exists() and _installed():
        held = json.loads(BUILD_RECORD.read_text())
        say(f"llama.cpp already installed and checked here ({held.get('build', '?')}, {held.get('source', 'local')})")
        return held
    klass, index = device_class(), f"{install_url}/simple/"
    with tempfile.TemporaryDirectory(prefix="fleetfit-llama-") as tmp:
        out = pathlib.Path(tmp)
        began = time.monotonic()
        got = fetch(install_url, ca, klass, out)
        tried = ""
        if got is not None:
            wheel, built = got
            install(wheel, index, ca)
            why = check()
            if why is None:
                held = {**built, "source": f"the fleet's wheel for {klass}", "device_class": klass,
                        "checked": "Q4_0, Q8_0, Q4_K_M and F16 ran in a child process"}
                record(held)
                say(f"llama.cpp: the fleet's wheel for {klass} installed and checked in {time.monotonic() - began:.0f} s")
                return held
            tried = f"the fleet's wheel for {klass} failed its check here: {why}"
            say(f"llama.cpp: {tried}; building here")
        else:
            say(f"llama.cpp: the fleet holds no wheel for {klass} yet; building here (minutes, once per class)")
        wheel = build(index, ca, out)
        install(wheel, index, ca)
        if (why := check()) is not None:
            raise WheelError(f"the llama.cpp built here failed its check: {why}")
        given = os.environ.get("FLEETFIT_LLAMA_WHEEL")
        how = {"build": "given", "wheel_from": given} if given else {"build": "native", "cmake_args": "-DGGML_NATIVE=ON"}
        held = {**how, "llama_cpp_python": llama_cpp_python_pin(),
                "device_class": klass, "checked": "Q4_0, Q8_0, Q4_K_M and F16 ran in a child process",
                "built_on": platform.node(), "source": "built here", **({"fell_back_from": tried} if tried else {})}
        record(held)
        shared = upload(install_url, ca, klass, wheel, held, credential) if credential and not tried else \
            "not uploaded (no credential)" if not credential else "not uploaded (the fleet holds another for the class)"
        say(f"llama.cpp built and checked here in {time.monotonic() - began:.0f} s; {shared}")
        return held


def _installed() -> bool:
    import importlib.util
    return importlib.util.find_spec("llama_cpp") is not None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fleetfit.agent.llama_wheel", description=__doc__.split("\n")[0])
    parser.add_argument("--install-url", required=True, help="https://HOST:PORT of the coordinator's install server")
    parser.add_argument("--ca", required=True, type=pathlib.Path, help="the fleet CA (PEM) join.sh pinned")
    parser.add_argument("--identity", type=pathlib.Path, help="this device's credentials (to upload a wheel built here)")
    parser.add_argument("--class", dest="show_class", action="store_true", help="print this device's class and exit")
    args = parser.parse_args(argv)
    if args.show_class:
        print(device_class())
        return 0
    credential = None
    if args.identity and args.identity.exists():
        found = json.loads(args.identity.read_text())
        credential = f"agent.{found['device_id']}.{found['secret']}"
    try:
        ensure(args.install_url.rstrip("/"), args.ca, credential)
    except (WheelError, OSError) as exc:
        print(f"llama.cpp: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
