"""No result lost or duplicated when the coordinator dies, and a job finished exactly once when its agent dies
(real processes, real gRPC on loopback; each test on SQLite and on PostgreSQL)."""

import os
import signal
import socket
import subprocess
import threading
import time
import uuid

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from fleetfit.agent import identity
from fleetfit.agent.outbox import Outbox, flush
from fleetfit.coordinator.harness import BackgroundCoordinator
from fleetfit.coordinator.service.store import Store
from fleetfit.v1 import fleetfit_pb2 as pb
from fleetfit.v1 import fleetfit_pb2_grpc as pb_grpc
from fleetfit.v1.words import JOB_STATE
from tests.conftest import BIN, fleet_stub, wait_until

AGENTS, RESULTS_PER_AGENT = 20, 10
KILL_AT = (40, 100, 160)  # stored-result counts at which the coordinator is SIGKILLed


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServeProcess:
    """`fleetfit serve` as a user runs it, restartable on the same port and database."""

    def __init__(self, db_url: str, tmp_path):
        self.address = f"127.0.0.1:{free_port()}"
        self.args = [str(BIN / "fleetfit"), "serve", "--insecure", "--listen", self.address, "--db", db_url,
                     "--state-dir", str(tmp_path / "state")]
        self.log = open(tmp_path / "serve.log", "ab")
        self.proc = None

    def serving(self) -> bool:
        with grpc.insecure_channel(self.address) as channel:
            try:
                reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=0.5)
            except grpc.RpcError:
                return False
        return reply.status == health_pb2.HealthCheckResponse.SERVING

    def start(self) -> None:
        self.proc = subprocess.Popen(self.args, stdout=self.log, stderr=self.log)
        wait_until(lambda: self.serving() or self.proc.poll() is not None, 60, "the coordinator to serve", 0.05)
        assert self.proc.poll() is None, "fleetfit serve exited; see serve.log"

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=30)
        self.log.close()


def a_result(device_id: str) -> pb.ProfileResult:
    return pb.ProfileResult(result_id=str(uuid.uuid4()), device_id=device_id, model_name="smollm2-135m", quant="Q4_0",
                            request=pb.ProfileRequest(backend="llama.cpp", quant="Q4_0"),
                            decode_tokens_per_s=pb.Stat(mean=100.0, samples=[100.0]))


def test_no_result_is_lost_or_duplicated_when_the_coordinator_is_killed(db_url, tmp_path):
    with Store(db_url) as store:
        tokens = [store.create_join_token({}, 600) for _ in range(AGENTS)]
    server = ServeProcess(db_url, tmp_path)
    server.start()
    try:
        agents = [identity.join(server.address, token, f"agent-{n:02d}", insecure=True) for n, token in enumerate(tokens)]
        for agent in agents:
            with agent.connect(5) as channel:
                pb_grpc.AgentServiceStub(channel).Register(
                    pb.RegisterRequest(inventory=pb.DeviceInventory(device_id=agent.device_id)), timeout=5)
        minted: dict[str, list[str]] = {}
        outboxes = {a.device_id: Outbox(tmp_path / f"{a.device_id}-outbox.sqlite3") for a in agents}
        stop = threading.Event()

        def upload(agent: identity.Identity) -> None:
            outbox = outboxes[agent.device_id]
            with agent.connect(5) as channel:
                report = pb_grpc.AgentServiceStub(channel).ReportResult
                for _ in range(RESULTS_PER_AGENT):
                    result = a_result(agent.device_id)
                    minted.setdefault(agent.device_id, []).append(result.result_id)
                    outbox.put(pb.ReportResultRequest(result=result))  # kept before it is sent
                    flush(outbox, report, stop)
                    time.sleep(0.1)  # agents report over time, so the kills land mid-stream
                while len(outbox) and not stop.is_set():
                    flush(outbox, report, stop)

        threads = [threading.Thread(target=upload, args=(a,)) for a in agents]
        for t in threads:
            t.start()
        counts_at_kill = []
        with Store(db_url) as observer:
            for threshold in KILL_AT:
                counts_at_kill.append(wait_until(lambda: (n := observer.result_count()) >= threshold and n, 120,
                                                 f"{threshold} stored results", 0.01))
                server.kill()
                server.start()
            for t in threads:
                t.join(timeout=180)
            stop.set()
            assert not any(t.is_alive() for t in threads), "uploads did not finish"
            stored = [r.result_id for r in observer.results()]
        assert all(0 < n < AGENTS * RESULTS_PER_AGENT for n in counts_at_kill), counts_at_kill  # killed mid-stream
        expected = [rid for ids in minted.values() for rid in ids]
        assert len(expected) == len(set(expected)) == AGENTS * RESULTS_PER_AGENT
        assert len(stored) == len(set(stored)) == len(expected) and set(stored) == set(expected)
        for outbox in outboxes.values():
            assert len(outbox) == 0 and outbox.count("rejected") == outbox.count("dropped") == 0
            assert outbox.count("delivered") + outbox.count("duplicates") == RESULTS_PER_AGENT
            outbox.close()
    finally:
        server.stop()


def agent_run(identity_path, cache_dir, tmp_path, name: str) -> subprocess.Popen:
    """`fleetfit-agent run` in its own session, so that killing its group takes its profiling worker too."""
    log = open(tmp_path / f"{name}.log", "wb")
    return subprocess.Popen([str(BIN / "fleetfit-agent"), "run", "--identity", str(identity_path), "--insecure",
                             "--cache-dir", str(cache_dir)], stdout=log, stderr=log, start_new_session=True)


def test_a_job_whose_agent_dies_is_re_leased_and_done_once(db_url, cache_dir, tmp_path):
    coordinator = BackgroundCoordinator(db_url, state_dir=tmp_path / "state", lease_s=2.0)
    coordinator.start()
    first = second = None
    try:
        agent = identity.join(coordinator.address, coordinator.join_token(), "dev-dies", insecure=True)
        identity.save(agent, tmp_path / "agent.json")
        fleet = fleet_stub(coordinator)
        first = agent_run(tmp_path / "agent.json", cache_dir, tmp_path, "first")
        wait_until(lambda: fleet.ListDevices(pb.ListDevicesRequest(), timeout=5).devices, 60, "registration", 0.1)
        request = pb.ProfileRequest(model=pb.ModelRef(name="smollm2-135m"), backend="llama.cpp", quant="Q4_0",
                                    n_prompt=32, n_gen=128, repetitions=2, idle_baseline_s=0)
        (job_id,) = fleet.SubmitProfile(pb.SubmitProfileRequest(request=request), timeout=5).job_ids

        def job():
            return fleet.GetJobs(pb.GetJobsRequest(job_ids=[job_id]), timeout=5).jobs[0]

        wait_until(lambda: job().job_state == pb.JOB_STATE_RUNNING, 60, "the first agent to lease the job", 0.05)
        (first_fence,) = coordinator.store.db.query("SELECT fence FROM jobs WHERE job_id = ?", (job_id,))[0]
        time.sleep(1.0)  # the profile is under way
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
        assert job().job_state == pb.JOB_STATE_RUNNING  # nobody knows yet: the lease has not expired
        wait_until(lambda: job().job_state == pb.JOB_STATE_QUEUED, 30, "the lease to expire and the job to be queued again", 0.05)

        second = agent_run(tmp_path / "agent.json", cache_dir, tmp_path, "second")  # the device comes back
        done = wait_until(lambda: (j := job()).job_state in (pb.JOB_STATE_DONE, pb.JOB_STATE_FAILED) and j, 180, "the job to finish", 0.2)
        assert (JOB_STATE.word(done.job_state), done.attempts) == ("done", 2), done
        assert coordinator.store.db.query("SELECT COUNT(*) FROM results WHERE job_id = ?", (job_id,))[0][0] == 1

        # What the dead agent would have sent had it finished: its lease's fencing token is stale now.
        with agent.connect(5) as channel:
            stub = pb_grpc.AgentServiceStub(channel)
            late = pb.ReportResultRequest(job_id=job_id, result=a_result(agent.device_id), fence=first_fence)
            with pytest.raises(grpc.RpcError) as refused:
                stub.ReportResult(late, timeout=5)
            assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            with pytest.raises(grpc.RpcError) as refused:
                stub.Heartbeat(pb.HeartbeatRequest(device_id=agent.device_id, job_id=job_id, fence=first_fence),
                               timeout=5)
            assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert coordinator.store.db.query("SELECT COUNT(*) FROM results WHERE job_id = ?", (job_id,))[0][0] == 1
        assert job().result_id == done.result_id
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        coordinator.stop()
