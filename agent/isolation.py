"""Run a backend operation in a child process with a timeout, and classify how it ended.

Failure kinds: oom (allocation failed, or SIGKILL that we did not send: the kernel's OOM killer),
signal (crash or abort), timeout (we killed it at the job's deadline), stopped (we killed it because the agent was
asked to stop), error (the backend refused, with its message).
"""

import contextlib
import dataclasses
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time

HANDLED_ERROR_EXIT = 3  # the worker wrote {"error", "failure"} for an error it handled
OOM_MARKERS = ("bad_alloc", "failed to allocate", "out of memory", "cannot allocate memory", "unable to allocate")


@dataclasses.dataclass  # not frozen: raising sets __traceback__, which e.g. contextlib does on the way out
class WorkerFailure(Exception):
    failure: str  # "oom" | "signal" | "timeout" | "stopped" | "error"
    message: str

    def __str__(self) -> str:
        return f"{self.failure}: {self.message}"


@dataclasses.dataclass(frozen=True)
class Deadline:
    """One wall-clock limit for a whole job (every phase), and the agent's stop request."""
    at_s: float  # on time.monotonic()
    limit_s: float
    stop: threading.Event | None = None

    @classmethod
    def after(cls, seconds: float, stop: threading.Event | None = None) -> "Deadline":
        return cls(time.monotonic() + seconds, seconds, stop)

    def remaining_s(self) -> float:
        return max(self.at_s - time.monotonic(), 0.0)

    def check(self, phase: str) -> None:
        """WorkerFailure("stopped" | "timeout") when the job must end now."""
        if self.stop is not None and self.stop.is_set():  # a stop says why when it can (a cancelled job)
            why = getattr(self.stop, "reason", None) or "the agent was asked to stop"
            raise WorkerFailure("stopped", f"{why} during the {phase}")
        if self.remaining_s() <= 0:
            raise WorkerFailure("timeout", f"no result within the job's limit of {self.limit_s:g} s "
                                           f"(reached during the {phase})")

    def checker(self, phase: str):
        """`check(phase)` as a callable without arguments, for a loop that reads a file (models/gguf_file.py)."""
        return lambda: self.check(phase)

    def wait(self, seconds: float, phase: str) -> None:
        """Sleep `seconds`, cut short (WorkerFailure) by the deadline or a stop request."""
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            self.check(phase)
            wait_s = min(left, self.remaining_s(), 0.2)
            if self.stop is not None:
                self.stop.wait(wait_s)
            else:
                time.sleep(wait_s)
        self.check(phase)


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def _oom_line(text: str) -> str | None:
    """The last line of llama.cpp's log that says an allocation failed, if any."""
    lines = [line.strip() for line in text.splitlines() if any(m in line.lower() for m in OOM_MARKERS)]
    return lines[-1] if lines else None


def run_worker(request: dict, limit: float | Deadline, memory_limit_bytes: int | None = None,
               phase: str = "run", pass_fds: tuple[int, ...] = ()) -> dict:
    """The worker's result dict, or WorkerFailure. `limit`: seconds, or a job's Deadline (whose stop request also
    ends the worker); `phase` names what the worker does, in the messages. With a memory limit the worker's
    address space is capped. `pass_fds`: descriptors the worker gets at the same numbers (a job's opened file)."""
    deadline = limit if isinstance(limit, Deadline) else Deadline.after(limit)
    deadline.check(phase)
    if memory_limit_bytes:
        request = {**request, "memory_limit_bytes": memory_limit_bytes}
    with tempfile.TemporaryDirectory(prefix="fleetfit-worker-") as tmp:
        result_path = os.path.join(tmp, "result.json")
        stderr_path = os.path.join(tmp, "stderr.txt")
        with open(stderr_path, "w+") as stderr:
            proc = subprocess.Popen(
                [sys.executable, "-m", "fleetfit.agent.worker", result_path, str(os.getpid())],  # dies with us
                stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=stderr,
                start_new_session=True,  # so a timeout kills the whole group
                pass_fds=pass_fds,
            )
            try:
                _send(proc, json.dumps(request).encode())
                _wait(proc, deadline, phase)
            except BaseException as exc:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)  # the whole group: nothing the worker started outlives it
                proc.wait()
                if isinstance(exc, WorkerFailure):
                    raise dataclasses.replace(exc, message=f"{exc.message}; the worker was killed") from None
                raise
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
            if -proc.returncode == signal.SIGILL:  # e.g. a native build copied to another CPU (a cloned image)
                detail = ("illegal instruction: the backend was built for instructions this CPU or OS does not "
                          "enable; rerun scripts/install.sh on this device")
            raise WorkerFailure("signal", f"{signame}" + (f": {detail}" if detail else ""))
        raise WorkerFailure("error", f"worker exited with {proc.returncode}" + (f": {detail}" if detail else ""))


def _send(proc: subprocess.Popen, data: bytes) -> None:
    try:
        proc.stdin.write(data)
        proc.stdin.close()
    except BrokenPipeError:
        pass  # the worker died before reading its request: its exit status says why


def _wait(proc: subprocess.Popen, deadline: Deadline, phase: str) -> None:
    """Until the worker exits; WorkerFailure when the deadline passes or the agent is asked to stop first."""
    while True:
        try:
            proc.wait(timeout=min(max(deadline.remaining_s(), 0.01), 0.2))
            return
        except subprocess.TimeoutExpired:
            deadline.check(phase)
