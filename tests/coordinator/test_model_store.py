"""The coordinator's model store over the real gRPC server: uploads in pieces that resume, verified before they are
stored and named; a partial upload is never served; bad input (a hash mismatch, a non-GGUF file, a catalogue name, a
taken name, a file larger than the disk) is a one-line refusal that stores nothing."""

import hashlib
import os
import subprocess
import time

import grpc
import pytest

from fleetfit.coordinator.service.model_store import MAX_CHUNK_BYTES, ModelStore, StoreRefused, attach
from fleetfit.v1 import fleetfit_pb2 as pb
from tests.conftest import (BIN, Agents, assert_one_line_error, fleet_stub, lease_job, run_cli, stop_processes,
                            wait_until)


def sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def put_all(stub, path, name, upto: int | None = None) -> pb.PutModelResponse:
    data, digest = path.read_bytes(), sha256(path)
    base = dict(name=name, sha256=digest, size_bytes=len(data), added_by="tester@here")
    reply = stub.PutModel(pb.PutModelRequest(**base), timeout=10)
    while not reply.HasField("model") and (upto is None or reply.received_bytes < upto):
        at = reply.received_bytes
        reply = stub.PutModel(pb.PutModelRequest(**base, offset=at, data=data[at:at + MAX_CHUNK_BYTES]), timeout=60)
    return reply


def test_an_upload_resumes_is_verified_listed_fetched_and_removed(coordinator, ladder):
    stub, file = fleet_stub(coordinator), ladder["Q4_1"]
    half = put_all(stub, file, "mine", upto=file.stat().st_size // 2)
    assert 0 < half.received_bytes < file.stat().st_size and not half.HasField("model")
    agents = Agents(coordinator)
    try:
        lease_job(coordinator, agents.stub("dev-1"), "dev-1", pb.ModelRef(name="mine", sha256=sha256(file)))
        with pytest.raises(grpc.RpcError) as refused:  # a partial upload is never served
            list(agents.FetchModel(pb.FetchModelRequest(device_id="dev-1", sha256=sha256(file)), timeout=10))
        assert refused.value.code() == grpc.StatusCode.NOT_FOUND
        again = stub.PutModel(pb.PutModelRequest(name="mine", sha256=sha256(file), size_bytes=file.stat().st_size),
                              timeout=10)
        assert again.received_bytes == half.received_bytes  # resumed where it stopped
        done = put_all(stub, file, "mine")
        assert done.model.sha256 == sha256(file) and done.model.size_bytes == file.stat().st_size
        assert (done.model.architecture, done.model.quant, done.model.added_by) == ("llama", "Q4_1", "tester@here")
        assert done.model.shape.name == "mine" and done.model.shape.family == "llama"
        chunks = list(agents.FetchModel(pb.FetchModelRequest(device_id="dev-1", sha256=sha256(file), offset=1000),
                                        timeout=30))
        assert all(len(c.data) <= MAX_CHUNK_BYTES for c in chunks)
        assert b"".join(c.data for c in chunks) == file.read_bytes()[1000:]
        # the same file under a second name shares the blob; removing one name keeps it
        assert put_all(stub, file, "mine-too").model.sha256 == sha256(file)
        assert [m.name for m in stub.ListModels(pb.ListModelsRequest(), timeout=10).models] == ["mine", "mine-too"]
        assert not stub.RemoveModel(pb.RemoveModelRequest(name="mine"), timeout=10).file_removed
        assert stub.RemoveModel(pb.RemoveModelRequest(name="mine-too"), timeout=10).file_removed
        assert not stub.ListModels(pb.ListModelsRequest(), timeout=10).models
        with pytest.raises(grpc.RpcError) as gone:
            stub.RemoveModel(pb.RemoveModelRequest(name="mine"), timeout=10)
        assert gone.value.code() == grpc.StatusCode.NOT_FOUND
    finally:
        agents.close()


def test_altered_bytes_are_refused_and_nothing_is_stored(tmp_path, ladder):
    store, file = ModelStore(tmp_path / "blobs"), ladder["Q4_1"]
    data = bytearray(file.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one byte altered on the way
    request = pb.PutModelRequest(name="mine", sha256=sha256(file), size_bytes=len(data), added_by="t")
    with pytest.raises(StoreRefused, match="hash to sha256:"):
        for at in range(0, len(data), MAX_CHUNK_BYTES):
            request.offset, request.data = at, bytes(data[at:at + MAX_CHUNK_BYTES])
            store.put(request)
    assert not store.models() and not list((tmp_path / "blobs" / "uploads").iterdir())
    assert not list((tmp_path / "blobs" / "blobs").iterdir())


def test_a_non_gguf_upload_with_a_right_digest_is_refused(tmp_path):
    store, data = ModelStore(tmp_path / "blobs"), os.urandom(10_000)
    with pytest.raises(StoreRefused, match="not a usable GGUF"):
        store.put(pb.PutModelRequest(name="junk", sha256=hashlib.sha256(data).hexdigest(), size_bytes=len(data),
                                     data=data))
    assert not store.models()


def test_names_the_store_refuses(tmp_path, ladder):
    store = ModelStore(tmp_path / "blobs")
    for name, why in (("smollm2-135m", "catalogue model"), ("../x", "not a model name"), ("a b", "not a model name"),
                      (".hidden", "not a model name")):
        with pytest.raises(StoreRefused, match=why):
            store.put(pb.PutModelRequest(name=name, sha256="0" * 64, size_bytes=1))
    with pytest.raises(StoreRefused, match="exceed its size"):  # a piece past the declared size
        store.put(pb.PutModelRequest(name="small", sha256="2" * 64, size_bytes=10, data=b"x" * 20))
    with pytest.raises(StoreRefused, match="has .* GB free"):  # a terabyte: refused before a byte is read
        store.put(pb.PutModelRequest(name="huge", size_bytes=1 << 50))


def _stored_as_mine(tmp_path, path):
    """A store holding `path` under the name "mine", uploaded in the wire's pieces; and its digest."""
    store = ModelStore(tmp_path / "blobs")
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    for at in range(0, len(data), MAX_CHUNK_BYTES):
        store.put(pb.PutModelRequest(name="mine", sha256=digest, size_bytes=len(data), offset=at,
                                     data=data[at:at + MAX_CHUNK_BYTES]))
    return store, digest


def test_a_stored_name_is_resolved_into_the_campaign_with_its_digest_and_shape(tmp_path, ladder):
    store, digest = _stored_as_mine(tmp_path, ladder["Q4_1"])
    spec = attach(store, pb.CampaignSpec(models=["smollm2-135m", "mine", f"sha256:{digest}"], quants=["Q4_1"],
                                         backends=["llama.cpp"]))
    assert list(spec.models) == ["smollm2-135m", "mine"]
    assert [(m.name, m.sha256) for m in spec.stored] == [("mine", digest)]
    assert [s.name for s in spec.shapes] == ["mine"]
    with pytest.raises(ValueError, match="no stored model"):
        attach(store, pb.CampaignSpec(models=["sha256:" + "1" * 64]))


# -- the operator's command line

def serve(tmp_path, port: int, db):
    env = {**os.environ, "FLEETFIT_STATE_DIR": str(tmp_path / "state")}
    log = open(tmp_path / "serve.log", "a")
    return subprocess.Popen([str(BIN / "fleetfit"), "serve", "--db", str(db), "--listen", f"127.0.0.1:{port}",
                             "--insecure"], env=env, stdout=log, stderr=log)


def cli(tmp_path, port, *args):
    env = {"FLEETFIT_STATE_DIR": str(tmp_path / "state"), "FLEETFIT_INSECURE": "1",
           "FLEETFIT_COORDINATOR": f"127.0.0.1:{port}"}
    return run_cli("fleetfit", "models", *args, env=env)


def test_models_add_list_rm_and_bad_input_from_the_command_line(tmp_path, ladder):
    from tests.test_reliability import free_port

    port = free_port()
    db = tmp_path / "fleet.sqlite3"
    proc = serve(tmp_path, port, db)
    try:
        wait_until(lambda: cli(tmp_path, port).returncode == 0, 60, "the coordinator")
        copy = tmp_path / "my-model.gguf"
        copy.write_bytes(ladder["Q4_1"].read_bytes())
        added = cli(tmp_path, port, "add", str(copy))
        assert added.returncode == 0, added.stderr
        assert f"stored my-model: sha256:{sha256(copy)}" in added.stdout
        assert (tmp_path / "blobs" / "blobs" / f"sha256-{sha256(copy)}").is_file()  # beside the database
        listed = cli(tmp_path, port, "list", "--format", "json")
        assert '"my-model"' in listed.stdout and sha256(copy) in listed.stdout
        assert_one_line_error(cli(tmp_path, port, "add", str(copy), "--name", "smollm2-135m"), "catalogue model")
        assert_one_line_error(cli(tmp_path, port, "add", str(ladder["F16"]), "--name", "my-model"), "is taken by")
        junk = tmp_path / "junk.gguf"
        junk.write_bytes(b"not a gguf file at all" * 100)
        assert_one_line_error(cli(tmp_path, port, "add", str(junk)), "junk.gguf")
        sparse = tmp_path / "sparse.gguf"
        with open(sparse, "wb") as f:
            f.write(ladder["Q4_1"].read_bytes())  # a real header and tensors, then zeros to a terabyte (sparse)
            f.truncate(1 << 40)
        started = time.monotonic()
        assert_one_line_error(cli(tmp_path, port, "add", str(sparse)), "past the end of its tensor data")
        assert time.monotonic() - started < 120  # refused from its header, never read in full
        removed = cli(tmp_path, port, "rm", "my-model")
        assert removed.returncode == 0 and not (tmp_path / "blobs" / "blobs" / f"sha256-{sha256(copy)}").exists()
        assert_one_line_error(cli(tmp_path, port, "rm", "my-model"), "no stored model")
    finally:
        stop_processes(proc)


def test_an_upload_cut_by_a_killed_coordinator_resumes(tmp_path, ladder):
    """The coordinator is SIGKILLed while the file arrives; `fleetfit models add` run again resumes from the bytes
    that reached its disk, and the stored file is exactly the original."""
    from tests.test_reliability import free_port

    port, db = free_port(), tmp_path / "fleet.sqlite3"
    proc = serve(tmp_path, port, db)
    uploads = tmp_path / "blobs" / "uploads"
    try:
        wait_until(lambda: cli(tmp_path, port).returncode == 0, 60, "the coordinator")
        file = ladder["F16"]
        env = {**os.environ, "FLEETFIT_STATE_DIR": str(tmp_path / "state"), "FLEETFIT_INSECURE": "1",
               "FLEETFIT_COORDINATOR": f"127.0.0.1:{port}"}
        adder = subprocess.Popen([str(BIN / "fleetfit"), "models", "add", str(file), "--name", "cut"], env=env,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        part = wait_until(lambda: next((p for p in uploads.glob("*.part") if p.stat().st_size > 0), None), 120,
                          "the upload to start", every_s=0.005)
        proc.kill()
        proc.wait()
        held = part.stat().st_size
        assert 0 < held < file.stat().st_size
        adder.kill()
        adder.wait()
        proc = serve(tmp_path, port, db)
        wait_until(lambda: cli(tmp_path, port).returncode == 0, 60, "the coordinator's return")
        again = cli(tmp_path, port, "add", str(file), "--name", "cut")
        assert again.returncode == 0, again.stderr
        assert "resuming the upload of cut" in again.stderr
        assert sha256(tmp_path / "blobs" / "blobs" / f"sha256-{sha256(file)}") == sha256(file)
    finally:
        stop_processes(proc)


def test_jobs_of_a_stored_model_carry_its_digest_and_run_only_precisions_its_file_allows(tmp_path, ladder):
    from fleetfit.coordinator.service.campaigns import check_spec, expand
    from tests.coordinator.test_campaigns import ALL_BACKENDS, WORKSTATION, spec

    store, digest = _stored_as_mine(tmp_path, ladder["Q4_1"])
    ws = pb.DeviceInventory()
    ws.CopyFrom(WORKSTATION)
    ws.backends.extend(ALL_BACKENDS)
    campaign = attach(store, spec(models=("mine",), quants=("Q4_1", "F16", "int8"), backends=("llama.cpp", "torch")))
    check_spec(campaign)
    plan = expand(campaign, [], [pb.Device(inventory=ws)])
    assert [(r.backend, r.model.name, r.quant, r.model.sha256, r.model.shape.family) for _, r in plan.jobs] == [
        ("llama.cpp", "mine", "Q4_1", digest, "llama")]
    skipped = plan.skipped["ws-1"]
    assert ("llama.cpp mine F16: the stored file is Q4_1: it runs at Q4_1; other precisions are derived only from an "
            "F32/F16/BF16 file") in skipped  # a quantized file is never requantized
    assert "torch mine int8: torch runs catalogue shapes; a stored model runs on llama.cpp" in skipped


def test_a_quality_campaign_needs_real_weights_and_a_device_that_holds_the_reference(tmp_path, ladder):
    from fleetfit.coordinator.service.campaigns import check_spec, expand
    from tests.coordinator.test_campaigns import ALL_BACKENDS, WORKSTATION, inventory, spec

    store, digest = _stored_as_mine(tmp_path, ladder["Q4_1"])
    quality = pb.QualityPass(context_tokens=128, chunks=2)
    with pytest.raises(ValueError, match="--quality needs real weights: llama-2-7b would run as random weights"):
        check_spec(attach(store, spec(models=("mine", "llama-2-7b"), quality=quality)))
    with pytest.raises(ValueError, match="quality context must be 16 to 32768 tokens, got 8"):
        check_spec(attach(store, spec(models=("mine",), quality=pb.QualityPass(context_tokens=8))))
    campaign = attach(store, spec(models=("mine",), quants=("Q4_1",), quality=quality))
    check_spec(campaign)
    ws = pb.DeviceInventory()
    ws.CopyFrom(WORKSTATION)
    ws.backends.extend(ALL_BACKENDS)
    # a board too small for the F16 reference derived from the Q4_1 file (2 bytes a parameter) still runs the profile
    tiny = inventory(device_id="tiny-1", ram=200 * 2**20, backends=ALL_BACKENDS)
    plan = expand(campaign, [], [pb.Device(inventory=ws), pb.Device(inventory=tiny)])
    jobs = {device: request for device, request in plan.jobs}
    assert jobs["ws-1"].quality == quality and jobs["ws-1"].model.sha256 == digest
    assert not jobs["tiny-1"].HasField("quality")
    assert plan.skipped["tiny-1"] == ["llama.cpp mine Q4_1: no quality pass: the F16 reference (0.3 GiB) does not fit "
                                      "the device's memory (0.2 GiB)"]


def test_a_device_fetches_only_the_files_its_leased_jobs_name(coordinator, ladder):
    from fleetfit.v1 import fleetfit_pb2_grpc as pb_grpc
    from fleetfit.v1.transport import connect

    stub, file = fleet_stub(coordinator), ladder["Q4_1"]
    digest, data = put_all(stub, file, "mine").model.sha256, file.read_bytes()
    agents = Agents(coordinator)

    def fetch(device_id: str, **asked) -> list[pb.ModelChunk]:
        return list(agents.FetchModel(pb.FetchModelRequest(device_id=device_id, **asked), timeout=60))

    def denied(device_id: str, **asked) -> None:
        with pytest.raises(grpc.RpcError) as refused:
            fetch(device_id, **asked)
        assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert f"no job leased to device {device_id} names" in refused.value.details()

    try:
        for device_id in ("dev-1", "dev-2"):
            agents.Register(pb.RegisterRequest(inventory=pb.DeviceInventory(device_id=device_id)), timeout=10)
        denied("dev-1", sha256=digest)  # no job: neither by digest nor by name
        denied("dev-1", name="mine")
        job = lease_job(coordinator, agents.stub("dev-1"), "dev-1", pb.ModelRef(name="mine", sha256=digest))
        assert b"".join(c.data for c in fetch("dev-1", sha256=digest)) == data
        (named,) = fetch("dev-1", name="mine")  # by name: the digest and size to fetch it by, no data
        assert (named.sha256, named.size_bytes, named.data) == (digest, len(data), b"")
        stub.SubmitProfile(pb.SubmitProfileRequest(device_ids=["dev-2"], request=job.request), timeout=10)
        denied("dev-2", sha256=digest)  # another device's lease does not count, nor its own job still queued
        with connect(coordinator.address, 5, token=coordinator.operator_token) as channel:  # the operator: any file
            chunks = pb_grpc.AgentServiceStub(channel).FetchModel(pb.FetchModelRequest(sha256=digest), timeout=60)
            assert b"".join(c.data for c in chunks) == data
        agents.ReportResult(pb.ReportResultRequest(job_id=job.job_id, fence=job.fence, result=pb.ProfileResult(
            result_id="r-1", device_id="dev-1", request=job.request, failure=pb.FAILURE_KIND_ERROR, error="stopped")),
            timeout=10)
        denied("dev-1", sha256=digest)  # its job is done: its lease, and the permission, are over
    finally:
        agents.close()
