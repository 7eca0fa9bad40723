"""A stored model fetched by a device over its own authenticated channel (a real coordinator, real gRPC): verified
by SHA-256 before use, resumed after the agent is SIGKILLed mid-download, refused in one line when the disk or the
cache limit cannot take it or the bytes were altered; never a partial or corrupt file in the cache."""

import hashlib
import os
import signal
import subprocess
import sys
import textwrap

import pytest

from fleetfit.agent import model_cache, model_fetch
from fleetfit.agent.isolation import Deadline
from fleetfit.coordinator.service.model_store import MAX_CHUNK_BYTES
from fleetfit.models.errors import ModelError
from fleetfit.v1 import fleetfit_pb2 as pb
from tests.agent.test_disk_full import small_disk  # noqa: F401
from tests.conftest import Agents, fleet_stub, wait_until


def store(coordinator, path, name: str) -> str:
    stub, data = fleet_stub(coordinator), path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    reply = pb.PutModelResponse()
    while not reply.HasField("model"):
        at = reply.received_bytes
        reply = stub.PutModel(pb.PutModelRequest(name=name, sha256=digest, size_bytes=len(data), offset=at,
                                                 data=data[at:at + MAX_CHUNK_BYTES]), timeout=60)
    return digest


@pytest.fixture()
def stored(coordinator, ladder):
    agents = Agents(coordinator)
    digest = store(coordinator, ladder["Q4_1"], "mine")
    yield agents.stub("dev-1"), digest, ladder["Q4_1"]
    agents.close()


def test_a_stored_model_is_fetched_verified_and_used_from_the_cache(stored, tmp_path):
    stub, digest, original = stored
    ref = pb.ModelRef(name="mine", sha256=digest)
    got = model_fetch.fetch(stub, "dev-1", ref, tmp_path, Deadline.after(300))
    assert got.path == tmp_path / "stored" / digest / "mine-Q4_1.gguf"
    assert got.received_bytes == original.stat().st_size and got.resumed_from == 0
    assert hashlib.sha256(got.path.read_bytes()).hexdigest() == digest
    assert model_fetch.fetch(stub, "dev-1", ref, tmp_path, Deadline.after(60)).received_bytes == 0  # cached
    assert ("mine", "Q4_1", got.path, original.stat().st_size) in model_cache.cached_models(tmp_path)


def test_an_agent_killed_mid_download_resumes_where_it_stopped(stored, coordinator, tmp_path):
    stub, digest, original = stored
    token = coordinator.join_token(device_id="dev-slow")
    child = textwrap.dedent(f"""
        import pathlib, time
        from fleetfit.agent import identity, model_fetch
        from fleetfit.agent.isolation import Deadline
        from fleetfit.v1 import fleetfit_pb2 as pb, fleetfit_pb2_grpc as pb_grpc
        found = identity.join({coordinator.address!r}, {token!r}, "dev-slow", insecure=True)
        real = pb_grpc.AgentServiceStub(found.connect(5))
        class Slow:  # the real stream, read slowly so that the test can kill this process halfway
            def FetchModel(self, request, timeout):
                for chunk in real.FetchModel(request, timeout=timeout):
                    time.sleep(0.05)
                    yield chunk
        model_fetch.fetch(Slow(), "dev-slow", pb.ModelRef(name="mine", sha256={digest!r}),
                          pathlib.Path({str(tmp_path)!r}), Deadline.after(600))
    """)
    proc = subprocess.Popen([sys.executable, "-c", child], cwd=os.path.dirname(os.path.dirname(os.path.dirname(
        os.path.abspath(__file__)))))
    partial = tmp_path / "stored" / digest / ".fetch.resume"
    try:
        wait_until(lambda: partial.exists() and partial.stat().st_size >= 4 << 20, 120, "the download to start")
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    held = partial.stat().st_size
    assert 0 < held < original.stat().st_size
    assert model_fetch.stored_file(tmp_path, digest) is None  # nothing usable until verified
    got = model_fetch.fetch(stub, "dev-1", pb.ModelRef(name="mine", sha256=digest), tmp_path, Deadline.after(300))
    assert got.resumed_from == held and got.received_bytes == original.stat().st_size - held
    assert hashlib.sha256(got.path.read_bytes()).hexdigest() == digest


def test_altered_bytes_already_on_disk_are_never_used(stored, tmp_path):
    stub, digest, original = stored
    partial = tmp_path / "stored" / digest / ".fetch.resume"
    partial.parent.mkdir(parents=True)
    partial.write_bytes(b"\0" * 1000)  # a damaged first part (a bad disk, a crafted file)
    with pytest.raises(ModelError, match="hashes to sha256:.*removed, never used"):
        model_fetch.fetch(stub, "dev-1", pb.ModelRef(name="mine", sha256=digest), tmp_path, Deadline.after(300))
    assert not partial.exists() and model_fetch.stored_file(tmp_path, digest) is None
    assert model_fetch.fetch(stub, "dev-1", pb.ModelRef(name="mine", sha256=digest), tmp_path,
                             Deadline.after(300)).resumed_from == 0  # the next try starts clean


def test_a_full_disk_or_a_small_cache_limit_is_one_line(stored, small_disk):  # noqa: F811
    stub, digest, _ = stored
    ref = pb.ModelRef(name="mine", sha256=digest)
    with pytest.raises(ModelError, match="not enough disk for the model"):
        model_fetch.fetch(stub, "dev-1", ref, small_disk, Deadline.after(60))
    with pytest.raises(ModelError, match="larger than this device's cache limit"):
        model_fetch.fetch(stub, "dev-1", ref, small_disk, Deadline.after(60), limit_bytes=1000)
    assert model_fetch.stored_file(small_disk, digest) is None


def test_a_digest_the_coordinator_does_not_hold_is_one_line(stored, tmp_path):
    stub, _, _ = stored
    with pytest.raises(ModelError, match="holds no model"):
        model_fetch.fetch(stub, "dev-1", pb.ModelRef(name="x", sha256="1" * 64), tmp_path, Deadline.after(60))
    with pytest.raises(ModelError, match="not a SHA-256"):
        model_fetch.fetch(stub, "dev-1", pb.ModelRef(name="x", sha256="../../etc"), tmp_path, Deadline.after(60))
