"""Run a backend operation in a child process with a timeout, and classify how it ended.

Failure kinds: oom (allocation failed, or SIGKILL that we did not send: the kernel's OOM killer),
signal (crash or abort), timeout (we killed it), error (the backend refused, with its message).
"""

import dataclasses
import json
import os
import signal
import subprocess
import sys
import tempfile

from fleetfit.agent.worker import HANDLED_ERROR_EXIT

OOM_MARKERS = ("bad_alloc", "failed to allocate", "out of memory", "cannot allocate memory", "unable to allocate")


@dataclasses.dataclass(frozen=True)
class WorkerFailure(Exception):
    failure: str  # "oom" | "signal" | "timeout" | "error"
    message: str

    def __str__(self) -> str:
        return f"{self.failure}: {self.message}"


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def _oom_line(text: str) -> str | None:
    """The last line of llama.cpp's log that says an allocation failed, if any."""
    lines = [line.strip() for line in text.splitlines() if any(m in line.lower() for m in OOM_MARKERS)]
    return lines[-1] if lines else None


def run_worker(request: dict, timeout_s: float, memory_limit_bytes: int | None = None) -> dict:
    """The worker's result dict, or WorkerFailure. With a memory limit the worker's address space is capped."""
    if memory_limit_bytes:
        request = {**request, "memory_limit_bytes": memory_limit_bytes}
    with tempfile.TemporaryDirectory(prefix="fleetfit-worker-") as tmp:
        result_path = os.path.join(tmp, "result.json")
        stderr_path = os.path.join(tmp, "stderr.txt")
        with open(stderr_path, "w+") as stderr:
            proc = subprocess.Popen(
                [sys.executable, "-m", "fleetfit.agent.worker", result_path],
                stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=stderr,
                start_new_session=True,  # so a timeout kills the whole group
            )
            try:
                proc.communicate(json.dumps(request).encode(), timeout=timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                raise WorkerFailure("timeout", f"no result after {timeout_s:.0f} s; the worker was killed") from None
            stderr.seek(0)
            err_text = stderr.read()[-8192:]
        if proc.returncode == 0:
            with open(result_path) as f:
                return json.load(f)["ok"]
        if proc.returncode == HANDLED_ERROR_EXIT and os.path.exists(result_path):
            with open(result_path) as f:
                outcome = json.load(f)
            oom = _oom_line(err_text)
            if oom:  # the backend's error is the consequence; the allocation that failed is the cause
                raise WorkerFailure("oom", f"{outcome['error']}: {oom}")
            raise WorkerFailure(outcome["failure"], outcome["error"])
        detail = _last_line(err_text)
        if proc.returncode < 0:
            signame = signal.Signals(-proc.returncode).name
            oom = _oom_line(err_text)
            if oom:
                raise WorkerFailure("oom", f"{signame}: {oom}")
            if -proc.returncode == signal.SIGKILL:
                raise WorkerFailure("oom", "killed by SIGKILL, not by fleetfit (most likely the kernel's OOM killer)")
            raise WorkerFailure("signal", f"{signame}" + (f": {detail}" if detail else ""))
        raise WorkerFailure("error", f"worker exited with {proc.returncode}" + (f": {detail}" if detail else ""))
