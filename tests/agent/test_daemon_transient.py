"""`fleetfit-agent run` never leaves the fleet because of the coordinator (issue 26): down at boot, answering
errors for a while, SIGKILLed and restarted — the agent stays up, joins when the coordinator is back and its
outbox is delivered; only refused credentials end it (exit 2, which its systemd unit does not restart).
Real processes, real gRPC on loopback."""

import collections
import concurrent.futures
import signal
import subprocess
import time

import grpc
import pytest

from fleetfit.agent import identity
from fleetfit.agent.outbox import Outbox, path_beside
from fleetfit.coordinator.harness import BackgroundCoordinator
from fleetfit.coordinator.service.store import Store
from fleetfit.v1 import fleetfit_pb2 as pb
from fleetfit.v1 import fleetfit_pb2_grpc as pb_grpc
from tests.conftest import BIN, fleet_stub, wait_until
from tests.test_reliability import ServeProcess, a_result, free_port


class Failing(pb_grpc.AgentServiceServicer):
    """A real gRPC server in a coordinator's place that answers every agent RPC with `code`."""

    def __init__(self, code: grpc.StatusCode):
        self.code, self.calls = code, collections.Counter()

    @classmethod
    def serve(cls, code: grpc.StatusCode, port: int) -> tuple["Failing", grpc.Server]:
        """One answering every RPC with `code` on 127.0.0.1:`port`, started; and its server (to stop)."""
        failing, server = cls(code), grpc.server(concurrent.futures.ThreadPoolExecutor(4))
        pb_grpc.add_AgentServiceServicer_to_server(failing, server)
        server.add_insecure_port(f"127.0.0.1:{port}")
        server.start()
        return failing, server


def _failing(name):
    def method(self, request, context):
        self.calls[name] += 1
        context.abort(self.code, f"{name} failed here")
    return method


for _rpc in ("Register", "PollJob", "ReportResult", "Heartbeat", "ReleaseJob", "Join"):
    setattr(Failing, _rpc, _failing(_rpc))


def start_agent(identity_path, tmp_path, name="agent"):
    log = open(tmp_path / f"{name}.log", "wb")
    return subprocess.Popen([str(BIN / "fleetfit-agent"), "run", "--identity", str(identity_path),
                             "--connect-timeout", "1", "--cache-dir", str(tmp_path / "cache")],
                            stdout=log, stderr=log, start_new_session=True)


def stop_agent(agent, tmp_path, name="agent") -> str:
    """SIGTERM: the agent ends at once (exit 0); returns its log."""
    started = time.monotonic()
    agent.send_signal(signal.SIGTERM)
    try:
        code = agent.wait(timeout=15)
    finally:
        if agent.poll() is None:
            agent.kill()
    text = (tmp_path / f"{name}.log").read_text()
    assert code == 0 and time.monotonic() - started < 10, text
    return text


def enrolled_at(address: str, token: str, tmp_path, device_id: str = "dev-1"):
    path = tmp_path / "agent.json"
    identity.save(identity.join(address, token, device_id, insecure=True), path)
    return path


def test_an_agent_started_while_the_coordinator_is_down_or_failing_joins_when_it_is_back(tmp_path):
    port = free_port()
    db_path = tmp_path / "fleet.sqlite3"
    first = BackgroundCoordinator(db_path, listen=f"127.0.0.1:{port}", state_dir=tmp_path / "state")
    first.start()
    path = enrolled_at(first.address, first.join_token(), tmp_path)
    first.stop()
    waiting = a_result("dev-1")  # measured before the outage, kept in the outbox
    box = Outbox(path_beside(path))
    box.put(pb.ReportResultRequest(result=waiting))
    box.close()

    agent = start_agent(path, tmp_path)
    try:
        time.sleep(3)  # nothing listens: before, `run` exited 2 after its 1 s connect timeout
        assert agent.poll() is None, (tmp_path / "agent.log").read_text()
        failing, server = Failing.serve(grpc.StatusCode.INTERNAL, port)
        try:  # a coordinator that answers each of these for a while: the agent keeps asking, never exits
            for code in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.UNAVAILABLE,
                         grpc.StatusCode.DATA_LOSS, grpc.StatusCode.UNIMPLEMENTED):
                failing.code, seen = code, sum(failing.calls.values())
                wait_until(lambda: sum(failing.calls.values()) > seen or agent.poll() is not None, 60,
                           f"the agent to call again after {code.name}")
                assert agent.poll() is None, (tmp_path / "agent.log").read_text()
        finally:
            server.stop(0)
        calls = sum(failing.calls.values())
        back = BackgroundCoordinator(db_path, listen=f"127.0.0.1:{port}", state_dir=tmp_path / "state")
        back.start()
        try:
            wait_until(lambda: back.store.devices("dev-1") and back.store.result_count() == 1
                       or agent.poll() is not None, 90, "the agent to register and deliver its outbox", 0.2)
            assert agent.poll() is None, (tmp_path / "agent.log").read_text()
            assert back.store.results() == [waiting]
        finally:
            log = stop_agent(agent, tmp_path)
            back.stop()
    finally:
        if agent.poll() is None:
            agent.kill()
    failed_lines = [line for line in log.splitlines() if "failed" in line]
    assert calls >= 5 and len(failed_lines) <= 3, log  # one line per minute per kind, not one per attempt
    assert "Traceback" not in log


def test_run_with_a_token_joins_once_the_coordinator_answers_however_long_it_was_down_or_failing(tmp_path):
    """A device whose first boot (`run --token`: not enrolled yet) meets no coordinator, then one that fails its Join
    (UNAVAILABLE: a locked database; INTERNAL), keeps trying and joins once the coordinator answers (before, `run`
    exited 2 at the first such failure, which its systemd unit does not restart); a token the coordinator refuses is
    still a one-line error, exit 2."""
    from fleetfit.coordinator.service.enrollment import join_token_text

    port, db_path = free_port(), tmp_path / "fleet.sqlite3"
    with Store(db_path) as store:
        token = join_token_text(store, None, {}, 600)
    command = [str(BIN / "fleetfit-agent"), "run", "--coordinator", f"127.0.0.1:{port}", "--insecure", "--device-id",
               "dev-boot", "--token", token, "--identity", str(tmp_path / "agent.json"), "--connect-timeout", "1",
               "--cache-dir", str(tmp_path / "cache")]
    with open(tmp_path / "agent.log", "wb") as log:
        agent = subprocess.Popen(command, stdout=log, stderr=log, start_new_session=True)
    try:
        time.sleep(2)  # nothing listens
        assert agent.poll() is None, (tmp_path / "agent.log").read_text()
        failing, server = Failing.serve(grpc.StatusCode.UNAVAILABLE, port)
        try:
            for code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.INTERNAL):
                failing.code, seen = code, failing.calls["Join"]
                wait_until(lambda: failing.calls["Join"] > seen or agent.poll() is not None, 60,
                           f"the agent to join again after {code.name}")
                assert agent.poll() is None, (tmp_path / "agent.log").read_text()
        finally:
            server.stop(0)
        back = BackgroundCoordinator(db_path, listen=f"127.0.0.1:{port}", state_dir=tmp_path / "state")
        back.start()
        try:
            wait_until(lambda: back.store.devices("dev-boot") or agent.poll() is not None, 90, "join and register",
                       0.2)
            assert agent.poll() is None, (tmp_path / "agent.log").read_text()
            text = stop_agent(agent, tmp_path)
            assert "Traceback" not in text and len([x for x in text.splitlines() if "joining" in x]) <= 3, text
            refused = subprocess.run([*command[:command.index("--token") + 1], "not-a-token",
                                      "--identity", str(tmp_path / "other.json"), "--connect-timeout", "1"],
                                     capture_output=True, text=True, timeout=60)
            assert refused.returncode == 2 and "Traceback" not in refused.stderr, refused.stderr
            assert refused.stderr.splitlines()[-1].startswith("error: the coordinator refused to enroll"), \
                refused.stderr
        finally:
            back.stop()
    finally:
        if agent.poll() is None:
            agent.kill()


def test_an_agent_keeps_running_through_a_coordinator_sigkill_and_delivers_its_outbox(db_url, tmp_path):
    with Store(db_url) as store:
        token = store.create_join_token({}, 600)
    server = ServeProcess(db_url, tmp_path)
    server.start()
    agent = None
    try:
        path = enrolled_at(server.address, token, tmp_path, "dev-kill")
        agent = start_agent(path, tmp_path)
        with Store(db_url) as observer:
            wait_until(lambda: observer.devices("dev-kill") or agent.poll() is not None, 60, "registration", 0.2)
            assert agent.poll() is None, (tmp_path / "agent.log").read_text()
            measured = []
            for _ in range(2):  # killed twice; each time a result waits in the outbox meanwhile
                server.kill()
                measured.append(a_result("dev-kill"))
                box = Outbox(path_beside(path))
                box.put(pb.ReportResultRequest(result=measured[-1]))
                box.close()
                time.sleep(2)
                assert agent.poll() is None, (tmp_path / "agent.log").read_text()
                server.start()
                wait_until(lambda: observer.result_count() == len(measured) or agent.poll() is not None, 90,
                           "the outbox to be delivered", 0.2)
                assert agent.poll() is None, (tmp_path / "agent.log").read_text()
            assert sorted(r.result_id for r in observer.results()) == sorted(r.result_id for r in measured)
        stop_agent(agent, tmp_path)
    finally:
        if agent is not None and agent.poll() is None:
            agent.kill()
        server.stop()


@pytest.mark.parametrize("how", ["revoked", "another device's id"])
def test_refused_credentials_end_the_agent_with_the_status_systemd_does_not_restart(how, coordinator, tmp_path):
    path = enrolled_at(coordinator.address, coordinator.join_token(), tmp_path)
    if how == "another device's id":  # a credential the coordinator knows, used for another device
        found = identity.load(path)
        identity.save(identity.Identity(found.coordinator, "dev-other", found.secret), path)
    agent = start_agent(path, tmp_path)
    try:
        if how == "revoked":
            wait_until(lambda: coordinator.store.devices("dev-1") or agent.poll() is not None, 60, "registration")
            fleet_stub(coordinator).RevokeDevice(pb.RevokeDeviceRequest(device_id="dev-1"), timeout=5)
        code = agent.wait(timeout=60)
    finally:
        if agent.poll() is None:
            agent.kill()
    log = (tmp_path / "agent.log").read_text()
    assert code == 2 and "Traceback" not in log, log
    assert log.splitlines()[-1].startswith("error: the coordinator refused this agent (UNAUTHENTICATED"), log
