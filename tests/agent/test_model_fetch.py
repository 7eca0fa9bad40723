"""A stored model fetched by a device over its own authenticated channel (a real coordinator, real gRPC), for a job
leased to it: verified by SHA-256 before use, resumed after the agent is SIGKILLed mid-download, refused in one line
when the disk or the cache limit cannot take it, the bytes were altered, or no job of the device names the file;
never a partial or corrupt file in the cache."""

import hashlib
import os
import signal
import subprocess
import sys
import textwrap

import pytest

from fleetfit.agent import identity, model_cache, model_fetch
from fleetfit.agent.isolation import Deadline
from fleetfit.coordinator.service.model_store import MAX_CHUNK_BYTES
from fleetfit.models.errors import ModelError
from fleetfit.v1 import fleetfit_pb2 as pb
from tests.agent.test_disk_full import small_disk  # noqa: F401
from tests.conftest import Agents, assert_one_line_error, fleet_stub, lease_job, run_cli, wait_until


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
    lease_job(coordinator, agents.stub("dev-1"), "dev-1", pb.ModelRef(name="mine", sha256=digest))
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
    slow = Agents(coordinator)
    lease_job(coordinator, slow.stub("dev-slow"), "dev-slow", pb.ModelRef(name="mine", sha256=digest))
    identity.save(slow.identities["dev-slow"], tmp_path / "dev-slow.json")
    child = textwrap.dedent(f"""
        import pathlib, time
        from fleetfit.agent import identity, model_fetch
        from fleetfit.agent.isolation import Deadline
        from fleetfit.v1 import fleetfit_pb2 as pb, fleetfit_pb2_grpc as pb_grpc
        found = identity.load(pathlib.Path({str(tmp_path / "dev-slow.json")!r}))
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
        slow.close()
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


def test_a_digest_the_coordinator_does_not_hold_is_one_line(stored, coordinator, tmp_path):
    stub, _, _ = stored
    with pytest.raises(ModelError, match="PERMISSION_DENIED: no job leased to device dev-1 names"):
        model_fetch.fetch(stub, "dev-1", pb.ModelRef(name="x", sha256="1" * 64), tmp_path, Deadline.after(60))
    lease_job(coordinator, stub, "dev-1", pb.ModelRef(name="x", sha256="1" * 64))  # a job naming a removed model
    with pytest.raises(ModelError, match="holds no model"):
        model_fetch.fetch(stub, "dev-1", pb.ModelRef(name="x", sha256="1" * 64), tmp_path, Deadline.after(60))
    with pytest.raises(ModelError, match="not a SHA-256"):
        model_fetch.fetch(stub, "dev-1", pb.ModelRef(name="x", sha256="../../etc"), tmp_path, Deadline.after(60))


def test_a_coordinator_away_longer_than_a_few_tries_is_waited_for_within_the_deadline(ladder, tmp_path, monkeypatch):
    """The coordinator stops during a job's fetch and comes back (a restart): the fetch waits for it within the job's
    deadline and gets the file — before, a few tries without progress (~35 s) failed the job for good. One try is
    allowed here, so any wait at all is the rule at work."""
    import threading
    import time

    from fleetfit.coordinator.harness import BackgroundCoordinator
    from tests.test_reliability import free_port

    monkeypatch.setattr(model_fetch, "MAX_TRIES_WITHOUT_PROGRESS", 1)
    kept = dict(db_path=tmp_path / "fleet.sqlite3", listen=f"127.0.0.1:{free_port()}", state_dir=tmp_path / "state")
    first = BackgroundCoordinator(**kept)
    first.start()
    agents = Agents(first)
    restarted = []
    try:
        digest = store(first, ladder["Q4_1"], "mine")
        stub = agents.stub("dev-1")
        lease_job(first, stub, "dev-1", pb.ModelRef(name="mine", sha256=digest))
        first.stop()

        def back():
            time.sleep(3)
            restarted.append(BackgroundCoordinator(**kept))
            restarted[0].start()

        threading.Thread(target=back, daemon=True).start()
        got = model_fetch.fetch(stub, "dev-1", pb.ModelRef(name="mine", sha256=digest), tmp_path / "cache",
                                Deadline.after(120))
        assert restarted and hashlib.sha256(got.path.read_bytes()).hexdigest() == digest
    finally:
        agents.close()
        for server in restarted:
            server.stop()


def test_models_pull_from_a_hub_pins_its_sha256_into_the_stored_cache(hub, ladder, tmp_path):
    server = hub()
    cache, digest = tmp_path / "cache", hashlib.sha256(ladder["Q4_1"].read_bytes()).hexdigest()
    pulled = run_cli("fleetfit-agent", "models", "pull", "hf:test-org/smol/smollm2-Q4_1.gguf@main", "--cache-dir",
                     str(cache))
    assert pulled.returncode == 0, pulled.stderr
    path = cache / "stored" / digest / "smollm2-Q4_1-Q4_1.gguf"
    assert pulled.stdout.strip() == str(path) and hashlib.sha256(path.read_bytes()).hexdigest() == digest
    assert model_fetch.stored_file(cache, digest) == path  # a job naming this digest runs it without a fetch
    assert not (cache / "hf-cache").exists()  # kept once, in the cache's own layout
    other = tmp_path / "other"
    for ref, fragment in (("hf:test-org/../x.gguf", "is not a Hugging Face file"),
                          ("hf:test-org/smol/missing.gguf", "cannot download hf:test-org/smol/missing.gguf"),
                          ("../etc/passwd", "not a model name"),
                          ("my-model", "not enrolled to fetch it from a coordinator's store")):
        assert_one_line_error(run_cli("fleetfit-agent", "models", "pull", ref, "--cache-dir", str(other),
                                      "--identity", str(tmp_path / "none.json")), fragment)
    server.lie = True  # a mirror whose SHA-256 is not the file's: refused, nothing kept
    assert_one_line_error(run_cli("fleetfit-agent", "models", "pull", "hf:test-org/smol/smollm2-Q4_1.gguf",
                                  "--cache-dir", str(other)), "not the hub's sha256:")
    assert not list((other / "stored").glob("*/*.gguf"))


def test_models_pull_of_a_stored_name_needs_a_leased_job_or_the_operator(coordinator, ladder, tmp_path):
    digest = store(coordinator, ladder["Q4_1"], "mine")
    ident = tmp_path / "agent.json"
    joined = run_cli("fleetfit-agent", "join", "--coordinator", coordinator.address, "--token",
                     coordinator.join_token(), "--device-id", "puller", "--identity", str(ident), "--insecure")
    assert joined.returncode == 0, joined.stderr
    pull = ("fleetfit-agent", "models", "pull", "mine", "--cache-dir", str(tmp_path / "cache"), "--identity",
            str(ident))
    assert_one_line_error(run_cli(*pull), "PERMISSION_DENIED: no job leased to device puller names mine")
    assert_one_line_error(run_cli(*pull[:3], "nothing-stored", *pull[4:], "--operator-token",
                                  coordinator.operator_token), "gives no model 'nothing-stored': NOT_FOUND")
    pulled = run_cli(*pull, "--operator-token", coordinator.operator_token)
    assert pulled.returncode == 0, pulled.stderr
    path = tmp_path / "cache" / "stored" / digest / "mine-Q4_1.gguf"
    assert pulled.stdout.strip() == str(path) and hashlib.sha256(path.read_bytes()).hexdigest() == digest
