"""How a worker's end is classified, with real worker processes running real llama.cpp."""

import signal
import threading
import time

import psutil
import pytest

from fleetfit.agent.backends.base import RunTarget, WorkerJob
from fleetfit.agent.isolation import WorkerFailure, run_worker
from fleetfit.agent.profiling import make_request


def profile_op(model_path, **params) -> dict:
    """The worker's profile operation on a file, as the agent sends it."""
    request = make_request(str(model_path), **({"threads": 2} | params))
    job = WorkerJob(request, RunTarget(name="m", origin="file", precision=None, path=str(model_path)), 2, "/tmp")
    return {"op": "profile", "job": job.to_json()}


def test_system_info_runs_in_a_child():
    info = run_worker({"op": "system_info"}, 60)
    assert info["system_info"].startswith("CPU :") and info["version"]


def test_backend_error_is_reported_with_its_message(tmp_path, ladder):
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(ladder["Q4_0"].read_bytes()[:40_000_000])  # bypasses the agent's own check
    with pytest.raises(WorkerFailure) as exc:
        run_worker(profile_op(cut, n_prompt=8, n_gen=2, repetitions=1), 60)
    assert exc.value.failure == "error" and "could not load" in exc.value.message


def _kill_worker_after_start(model_path, sig: int) -> WorkerFailure:
    """Start a long real profile, send its worker `sig` from outside, return the classified failure."""
    outcome = {}

    def target():
        try:
            run_worker(profile_op(model_path, n_prompt=512, n_gen=128, repetitions=100), 120)
        except WorkerFailure as exc:
            outcome["failure"] = exc

    thread = threading.Thread(target=target)
    thread.start()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        workers = [p for p in psutil.Process().children(recursive=True) if "fleetfit.agent.worker" in p.cmdline()]
        if workers:
            time.sleep(1.0)  # let it load the model
            workers[0].send_signal(sig)
            break
        time.sleep(0.05)
    thread.join(60)
    return outcome["failure"]


def test_crash_is_classified_as_signal(ladder):
    failure = _kill_worker_after_start(ladder["F16"], signal.SIGSEGV)
    assert failure.failure == "signal" and "SIGSEGV" in failure.message


def test_illegal_instruction_says_to_rebuild_for_this_cpu(ladder):
    failure = _kill_worker_after_start(ladder["Q4_0"], signal.SIGILL)
    assert failure.failure == "signal" and failure.message.startswith("SIGILL: illegal instruction")
    assert "rerun scripts/install.sh on this device" in failure.message


def test_sigkill_not_sent_by_us_is_classified_as_oom(ladder):
    failure = _kill_worker_after_start(ladder["F16"], signal.SIGKILL)
    assert failure.failure == "oom" and "OOM killer" in failure.message
