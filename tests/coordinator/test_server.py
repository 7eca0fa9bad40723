"""The coordinator's gRPC services on a real server bound to a loopback port."""

import re
import signal
import subprocess
import threading
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from fleetfit.v1 import fleetfit_pb2 as pb
from fleetfit.v1.transport import connect
from fleetfit.v1.words import JOB_STATE, PROVENANCE, VERDICT
from tests.conftest import BIN, Agents, fleet_stub


@pytest.fixture()
def stubs(coordinator):
    agents = Agents(coordinator)  # each call made as the device it names, enrolled with a join token
    yield agents, fleet_stub(coordinator)
    agents.close()


def register(agent, device_id="dev-1"):
    agent.Register(pb.RegisterRequest(inventory=pb.DeviceInventory(device_id=device_id, hostname=device_id,
                                                                   ram_total_bytes=8 << 30)), timeout=5)


def small_request(quant="Q4_0"):
    return pb.ProfileRequest(model=pb.ModelRef(name="smollm2-135m"), backend="llama.cpp", quant=quant,
                             n_prompt=16, n_gen=4, repetitions=1)


def test_jobs_flow_from_operator_to_agent_and_back(stubs):
    agent, fleet = stubs
    register(agent)
    job_ids = fleet.SubmitProfile(pb.SubmitProfileRequest(request=small_request()), timeout=5).job_ids
    assert len(job_ids) == 1
    job = agent.PollJob(pb.PollJobRequest(device_id="dev-1", wait_s=2), timeout=5).job
    assert job.job_id == job_ids[0] and job.request.quant == "Q4_0"
    assert not agent.PollJob(pb.PollJobRequest(device_id="dev-1", wait_s=0.3), timeout=5).HasField("job")
    result = pb.ProfileResult(result_id="r1", device_id="dev-1", model_name="smollm2-135m", quant="Q4_0",
                              request=job.request, decode_tokens_per_s=pb.Stat(mean=99.0, samples=[99.0]))
    result.peak_rss_bytes = 200 << 20
    report = pb.ReportResultRequest(job_id=job.job_id, result=result, fence=job.fence)
    assert not agent.ReportResult(report, timeout=5).duplicate
    assert agent.ReportResult(report, timeout=5).duplicate
    assert JOB_STATE.word(fleet.GetJobs(pb.GetJobsRequest(job_ids=job_ids), timeout=5).jobs[0].job_state) == "done"
    rows = fleet.GetLimitTable(pb.GetLimitTableRequest(), timeout=5).rows
    assert [(r.device_id, r.quant, r.decode_tokens_per_s.mean) for r in rows] == [("dev-1", "Q4_0", 99.0)]
    answers = fleet.Fit(pb.FitRequest(model_name="smollm2-135m", quant="q4_0", context_tokens=20), timeout=5).answers
    assert [(a.device_id, VERDICT.word(a.fit_verdict), PROVENANCE.word(a.provenance_kind)) for a in answers] == [("dev-1", "fits_comfortably", "measured")]
    (default,) = fleet.Fit(pb.FitRequest(model_name="smollm2-135m", quant="Q4_0"), timeout=5).answers
    assert default.context_tokens == 4096 and PROVENANCE.word(default.decode_tokens_per_s.provenance_kind) == "measured"
    largest = fleet.Fit(pb.FitRequest(device="dev-1"), timeout=30).answers  # per precision, for one device
    assert "Q4_0" in [a.quant for a in largest] and all(a.model_name for a in largest if VERDICT.word(a.fit_verdict) != "does_not_fit")


def poll_in_background(agent, device_id: str, wait_s: float):
    """Start a long-poll; returns the thread and a dict that gets the reply and the seconds it took."""
    outcome = {}

    def poll():
        start = time.monotonic()
        outcome["job"] = agent.PollJob(pb.PollJobRequest(device_id=device_id, wait_s=wait_s), timeout=wait_s + 5).job
        outcome["waited_s"] = time.monotonic() - start

    thread = threading.Thread(target=poll)
    thread.start()
    time.sleep(0.5)  # the poll is waiting by now
    return thread, outcome


def test_a_waiting_poll_is_woken_by_a_job_queued_here_or_by_another_replica(stubs, coordinator):
    agent, fleet = stubs
    register(agent)
    thread, outcome = poll_in_background(agent, "dev-1", wait_s=20)
    (job_id,) = fleet.SubmitProfile(pb.SubmitProfileRequest(request=small_request()), timeout=5).job_ids
    thread.join()
    assert outcome["job"].job_id == job_id and outcome["waited_s"] < 10  # woken, not timed out
    thread, outcome = poll_in_background(agent, "dev-1", wait_s=20)
    other = coordinator.store.enqueue("dev-1", small_request("F16"))  # written by another coordinator replica
    thread.join()
    assert outcome["job"].job_id == other and outcome["waited_s"] < 10  # found by the queue sweep


def test_refusals(stubs):
    agent, fleet = stubs
    register(agent, "dev-1")
    register(agent, "dev-2")
    job_id = fleet.SubmitProfile(pb.SubmitProfileRequest(device_ids=["dev-1"], request=small_request()),
                                 timeout=5).job_ids[0]
    cases = [
        (lambda: agent.PollJob(pb.PollJobRequest(device_id="ghost"), timeout=5), grpc.StatusCode.NOT_FOUND),
        (lambda: agent.ReportResult(pb.ReportResultRequest(job_id=job_id, result=pb.ProfileResult(
            result_id="x", device_id="dev-2")), timeout=5), grpc.StatusCode.PERMISSION_DENIED),
        (lambda: agent.Register(pb.RegisterRequest(), timeout=5), grpc.StatusCode.INVALID_ARGUMENT),
        (lambda: fleet.SubmitProfile(pb.SubmitProfileRequest(request=pb.ProfileRequest(
            model=pb.ModelRef(name="smollm2-135m"), n_prompt=8, n_gen=0, repetitions=1)), timeout=5),
         grpc.StatusCode.INVALID_ARGUMENT),
        (lambda: fleet.SubmitProfile(pb.SubmitProfileRequest(device_ids=["ghost"], request=small_request()),
                                     timeout=5), grpc.StatusCode.NOT_FOUND),
        (lambda: fleet.Fit(pb.FitRequest(model_name="smollm2-135n", quant="Q4_0"), timeout=5),
         grpc.StatusCode.INVALID_ARGUMENT),
        (lambda: fleet.Fit(pb.FitRequest(model_name="smollm2-135m", quant="Q4_Z"), timeout=5),
         grpc.StatusCode.INVALID_ARGUMENT),
        (lambda: fleet.Fit(pb.FitRequest(model_name="smollm2-135m", quant="Q4_0", context_tokens=0), timeout=5),
         grpc.StatusCode.INVALID_ARGUMENT),
        (lambda: fleet.Fit(pb.FitRequest(device="ghost"), timeout=5), grpc.StatusCode.NOT_FOUND),
    ]
    for call, code in cases:
        with pytest.raises(grpc.RpcError) as exc:
            call()
        assert exc.value.code() == code, exc.value.details()
    with pytest.raises(grpc.RpcError) as exc:
        fleet.Fit(pb.FitRequest(model_name="smollm2-135n", quant="Q4_0"), timeout=5)
    assert "did you mean smollm2-135m" in exc.value.details()


def test_serve_reports_health_and_stops_gracefully_on_sigterm(tmp_path):
    proc = subprocess.Popen([str(BIN / "fleetfit"), "serve", "--db", str(tmp_path / "f.sqlite3"), "--state-dir",
                             str(tmp_path / "state"), "--listen", "127.0.0.1:0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        port = int(re.search(r"listening on 127\.0\.0\.1:(\d+)", line).group(1))
        assert "TLS" in line  # TLS by default, with the CA made on first start
        ca = (tmp_path / "state" / "tls" / "ca.pem").read_bytes()
        with connect(f"127.0.0.1:{port}", 5, ca_pem=ca) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            for service in ("", "fleetfit.v1.AgentService", "fleetfit.v1.FleetService"):
                status = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status
                assert status == health_pb2.HealthCheckResponse.SERVING
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=20)
        assert proc.returncode == 0 and "coordinator stopped" in out
    finally:
        proc.kill()
    assert (tmp_path / "f.sqlite3").exists()


def test_tables_by_name(stubs):
    agent, fleet = stubs
    register(agent)
    result = pb.ProfileResult(result_id="r1", device_id="dev-1", model_name="smollm2-135m", quant="F16",
                              request=small_request("F16"), decode_tokens_per_s=pb.Stat(mean=47.0, samples=[47.0]))
    agent.ReportResult(pb.ReportResultRequest(result=result), timeout=5)
    names = [t.name for t in fleet.ListTables(pb.ListTablesRequest(), timeout=5).tables]
    assert "measured" in names
    table = fleet.GetTable(pb.GetTableRequest(name="measured"), timeout=5).table
    assert table.columns[:4] == ["device", "backend", "model", "quant"]
    assert [c.string_value for c in table.rows[0].cells[:4]] == ["dev-1", "llama.cpp", "smollm2-135m", "F16"]
    with pytest.raises(grpc.RpcError) as exc:
        fleet.GetTable(pb.GetTableRequest(name="nonsense"), timeout=5).table
    assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "unknown table 'nonsense'" in exc.value.details()


def test_a_shaped_job_is_queued_over_submit_profile(stubs):
    """A job whose model carries a shape (a user's own config.json) goes through SubmitProfile's checks and reaches
    the agent with its shape; an out-of-bounds shape is refused as bad input, never an internal error."""
    import dataclasses

    from fleetfit.models import catalogue, shapes

    agent, fleet = stubs
    register(agent)
    shape = shapes.to_proto(dataclasses.replace(catalogue.architecture("smollm2-135m"), name="my-tiny"))
    request = pb.ProfileRequest(model=pb.ModelRef(name="my-tiny", shape=shape), backend="llama.cpp", quant="q4_0",
                                n_prompt=16, n_gen=4, repetitions=1)
    (job_id,) = fleet.SubmitProfile(pb.SubmitProfileRequest(request=request), timeout=5).job_ids
    job = agent.PollJob(pb.PollJobRequest(device_id="dev-1", wait_s=2), timeout=5).job
    assert job.job_id == job_id and job.request.quant == "Q4_0"
    assert job.request.model.shape.n_layers == shape.n_layers
    request.model.shape.n_layers = 10**9
    with pytest.raises(grpc.RpcError) as refused:
        fleet.SubmitProfile(pb.SubmitProfileRequest(request=request), timeout=5)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
