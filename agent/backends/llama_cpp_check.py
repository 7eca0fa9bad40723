"""Check that the installed llama.cpp build runs on this CPU: `python -m fleetfit.agent.backends.llama_cpp_check`.

scripts/install.sh builds llama.cpp for the CPU it runs on (-march=native), which uses every instruction set
the CPU advertises. A CPU (or a VM) can advertise one the OS does not enable (AMX on some VMs), and the first
quantized matrix product then dies with SIGILL. So each build is tried first: tiny synthetic models of the
types whose kernels differ (Q4_0, Q8_0, Q4_K_M, F16) are profiled, each in its own child process, through the
same runtime the agent measures with, with a prompt long enough for the batched (GEMM) kernels and a few
single-token decodes; a build that offloads (CUDA, Metal) also runs one with every layer on the GPU. Exit status 0 when every type ran; 1 with one line per failed type (the build does not
run here); 2 when the check itself could not run (then the build is not to blame).
"""

import os
import signal
import subprocess
import sys
import tempfile

from fleetfit.models.catalogue import Architecture
from fleetfit.models.synth import write_synthetic

CHECK_TYPES = ("Q4_0", "Q8_0", "Q4_K_M", "F16")
CHECK_SHAPE = Architecture(name="build-check", family="llama", n_layers=2, hidden=256, n_heads=4, n_kv_heads=2,
                           ffn=768, vocab=1024, context_length=512, tied_embeddings=False, rope_theta=10000.0,
                           norm_eps=1e-5, source="fleetfit's llama.cpp build check (not a real model)")
CHILD = ("import sys\n"
         "from fleetfit.agent.backends import llama_cpp_runtime as runtime\n"
         "runtime.profile(sys.argv[1], 64, 4, 1, 2, sys.argv[2])\n")
OFFLOADS = ("from fleetfit.agent.backends import llama_cpp_runtime as runtime\n"
            "print(runtime.compute_devices()[-1])\n")
CHILD_TIMEOUT_S = 120


def why(returncode: int, stderr: str) -> str:
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        hint = " (illegal instruction: the CPU or OS lacks an instruction set it was built for)" \
            if -returncode == signal.SIGILL else ""
        return f"died with {name}{hint}"
    last = stderr.strip().splitlines()[-1:] or ["no message"]
    return f"exited {returncode}: {last[0][:200]}"


def _child(code: str, *args: str) -> tuple[subprocess.CompletedProcess | None, str]:
    try:
        return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                              timeout=CHILD_TIMEOUT_S), ""
    except subprocess.TimeoutExpired:
        return None, f"did not finish in {CHILD_TIMEOUT_S} s"


def check(types=CHECK_TYPES) -> list[str]:
    """One line per type that failed to run; empty when the build works. A build that offloads also runs the
    first type with every layer on its GPU."""
    failures = []
    with tempfile.TemporaryDirectory(prefix="fleetfit-build-check-") as tmp:
        runs = [(quant, "cpu") for quant in types]
        found, _ = _child(OFFLOADS)
        if found is not None and found.returncode == 0 and found.stdout.strip() != "cpu":
            runs.append((types[0], ""))  # "": llama.cpp's default, every layer offloaded
        for quant, device in runs:
            path = os.path.join(tmp, f"check-{quant}.gguf")
            if not os.path.exists(path):
                write_synthetic(CHECK_SHAPE, quant, path, force=True)
            done, timeout = _child(CHILD, path, device)
            where = "" if device == "cpu" else f" on the {found.stdout.strip()} GPU"
            if done is None:
                failures.append(f"{quant}{where}: {timeout}")
            elif done.returncode != 0:
                failures.append(f"{quant}{where}: {why(done.returncode, done.stderr)}")
    return failures


def main() -> int:
    try:
        failures = check()
    except Exception as exc:  # the checker's own fault (disk, a bad install): not evidence against the build
        print(f"llama.cpp build check could not run: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    for line in failures:
        print(f"llama.cpp build check: {line}", file=sys.stderr)
    if not failures:
        print(f"llama.cpp build check: {', '.join(CHECK_TYPES)} ran")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
