"""One wall-clock limit per job over every phase, and a stop request that ends the job within seconds: in the
agent's profile path, and in a real `fleetfit-agent run` against a real coordinator."""

import os
import signal
import subprocess
import threading
import time

import psutil
import pytest

from fleetfit.agent import device_probe, identity, profiling
from fleetfit.coordinator.harness import BackgroundCoordinator
from fleetfit.v1 import fleetfit_pb2 as pb
from fleetfit.v1.words import JOB_STATE
from tests.conftest import BIN, fleet_stub, wait_until


def request(**overrides) -> pb.ProfileRequest:
    params = dict(n_prompt=16, n_gen=8, repetitions=1, threads=2) | overrides
    return profiling.make_request("smollm2-135m", "Q4_0", **params)


def workers() -> list[psutil.Process]:
    return [p for p in psutil.Process().children(recursive=True) if "fleetfit.agent.worker" in p.cmdline()]


@pytest.fixture()
def probed(cache_dir):
    """The device probes, measured once per device before any job's clock starts, already in the cache."""
    device_probe.probes(cache_dir)
    return cache_dir


def test_a_long_idle_baseline_ends_at_the_jobs_deadline(probed):
    cache_dir = probed
    start = time.monotonic()
    result = profiling.profile(request(idle_baseline_s=500, timeout_s=2), "dev-1", cache_dir)
    assert time.monotonic() - start < 10
    assert result.failure == pb.FAILURE_KIND_TIMEOUT
    assert result.error == "no result within the job's limit of 2 s (reached during the idle baseline)"
    assert not result.HasField("power") and not result.HasField("decode_tokens_per_s")


@pytest.mark.parametrize("phase, overrides", [
    ("idle baseline", {"idle_baseline_s": 500}),
    ("run", {"idle_baseline_s": 0, "n_prompt": 512, "n_gen": 128, "repetitions": 100}),
])
def test_a_stop_request_ends_the_job_and_its_worker(probed, phase, overrides):
    cache_dir = probed
    stop = threading.Event()
    threading.Timer(3.0, stop.set).start()
    start = time.monotonic()
    result = profiling.profile(request(**overrides), "dev-1", cache_dir, stop=stop)
    assert time.monotonic() - start < 3.0 + 3.0
    assert result.failure == pb.FAILURE_KIND_ERROR
    assert result.error.startswith(f"the agent was asked to stop during the {phase}")
    assert workers() == []  # the worker's whole process group was killed


@pytest.fixture()
def fleet(tmp_path, probed):
    """A real coordinator and one real `fleetfit-agent run` process enrolled with it."""
    coordinator = BackgroundCoordinator(tmp_path / "fleet.sqlite3", state_dir=tmp_path / "state")
    coordinator.start()
    found = identity.join(coordinator.address, coordinator.join_token(), "dev-limits", insecure=True)
    identity.save(found, tmp_path / "agent.json")
    log = open(tmp_path / "agent.log", "wb")
    agent = subprocess.Popen([str(BIN / "fleetfit-agent"), "run", "--identity", str(tmp_path / "agent.json"),
                              "--insecure", "--cache-dir", str(probed)], stdout=log, stderr=log,
                             start_new_session=True)
    stub = fleet_stub(coordinator)
    try:
        wait_until(lambda: stub.ListDevices(pb.ListDevicesRequest(), timeout=5).devices, 120, "registration")
        yield coordinator, stub, agent
    finally:
        if agent.poll() is None:
            os.killpg(agent.pid, signal.SIGKILL)
            agent.wait()
        log.close()
        coordinator.stop()


def submit(stub, **overrides) -> str:
    (job_id,) = stub.SubmitProfile(pb.SubmitProfileRequest(request=request(**overrides)), timeout=5).job_ids
    return job_id


def job(stub, job_id: str) -> pb.JobStatus:
    return stub.GetJobs(pb.GetJobsRequest(job_ids=[job_id]), timeout=5).jobs[0]


def test_a_job_with_a_huge_idle_baseline_fails_as_a_timeout_within_its_limit(fleet):
    coordinator, stub, agent = fleet
    job_id = submit(stub, idle_baseline_s=500, timeout_s=4)
    wait_until(lambda: job(stub, job_id).job_state == pb.JOB_STATE_RUNNING, 60, "the agent to lease the job", 0.05)
    started = time.monotonic()
    done = wait_until(lambda: (j := job(stub, job_id)).job_state in (pb.JOB_STATE_DONE, pb.JOB_STATE_FAILED) and j, 30, "the job to end")
    assert time.monotonic() - started < 4 + 3
    assert JOB_STATE.word(done.job_state) == "failed" and agent.poll() is None  # the agent stays up for the next job
    (result,) = [r for r in coordinator.store.results() if r.result_id == done.result_id]
    assert result.failure == pb.FAILURE_KIND_TIMEOUT and "idle baseline" in result.error


@pytest.mark.parametrize("overrides", [
    {"idle_baseline_s": 500},  # waiting for the baseline
    {"idle_baseline_s": 0, "n_prompt": 512, "n_gen": 128, "repetitions": 100},  # in the worker
], ids=["baseline", "worker"])
def test_sigterm_during_a_long_job_ends_the_agent_within_seconds(fleet, overrides):
    coordinator, stub, agent = fleet
    job_id = submit(stub, **overrides)
    wait_until(lambda: job(stub, job_id).job_state == pb.JOB_STATE_RUNNING, 60, "the agent to lease the job", 0.05)
    in_worker = not overrides["idle_baseline_s"]
    running = wait_until(lambda: [p for p in psutil.Process(agent.pid).children(recursive=True)
                                  if "fleetfit.agent.worker" in p.cmdline()] or not in_worker, 60, "the worker")
    time.sleep(2.0)  # well into the phase
    agent.send_signal(signal.SIGTERM)
    start = time.monotonic()
    agent.wait(timeout=30)
    assert time.monotonic() - start < 5.0 and agent.returncode == 0
    if in_worker:  # killed with the job, not left running
        assert not [p for p in running if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    ended = job(stub, job_id)
    assert JOB_STATE.word(ended.job_state) == "failed" and "asked to stop" in ended.error
