"""The spine with real parts: agent process → gRPC → coordinator (SQLite) → limit table → fit answer."""

import json
import signal
import socket
import subprocess
import time

import grpc
import pytest

from fleetfit.coordinator.service.store import Store
from fleetfit.v1 import fleetfit_pb2 as pb
from fleetfit.v1 import fleetfit_pb2_grpc as pb_grpc
from fleetfit.v1.transport import connect
from fleetfit.v1.words import JOB_STATE
from tests.conftest import BIN, assert_one_line_error, run_cli


def wait_jobs(fleet, job_ids, timeout_s=240):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        jobs = fleet.GetJobs(pb.GetJobsRequest(job_ids=job_ids), timeout=5).jobs
        if all(JOB_STATE.word(j.job_state) in ("done", "failed") for j in jobs):
            return {j.job_id: j for j in jobs}
        time.sleep(0.3)
    raise AssertionError("jobs did not finish")


@pytest.fixture()
def agent_process(coordinator, cache_dir, tmp_path):
    proc = subprocess.Popen([str(BIN / "fleetfit-agent"), "run", "--coordinator", f"127.0.0.1:{coordinator.port}",
                             "--device-id", "e2e-device", "--cache-dir", str(cache_dir), "--insecure",
                             "--token", coordinator.join_token(), "--identity", str(tmp_path / "agent.json"),
                             "--allow-dir", "/nonexistent"],
                            stderr=subprocess.PIPE, text=True)
    yield proc
    proc.kill()
    proc.wait()


def test_agent_runs_jobs_and_the_coordinator_answers(coordinator, agent_process, monkeypatch, tmp_path):
    address = f"127.0.0.1:{coordinator.port}"
    monkeypatch.setenv("FLEETFIT_TOKEN", coordinator.operator_token)  # the operator commands below
    monkeypatch.setenv("FLEETFIT_INSECURE", "1")  # the test coordinator is plaintext on loopback
    with connect(address, 5, token=coordinator.operator_token) as channel:
        fleet = pb_grpc.FleetServiceStub(channel)
        deadline = time.monotonic() + 60
        while not fleet.ListDevices(pb.ListDevicesRequest(), timeout=5).devices:
            assert time.monotonic() < deadline and agent_process.poll() is None
            time.sleep(0.2)
        with pytest.raises(grpc.RpcError) as refused:  # jobs name models, never files: refused at submit
            fleet.SubmitProfile(pb.SubmitProfileRequest(request=pb.ProfileRequest(
                model=pb.ModelRef(path="/nonexistent/model.gguf"), n_prompt=16, n_gen=4, repetitions=1)), timeout=5)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "model.path" in refused.value.details()
        bad = pb.ProfileRequest(model=pb.ModelRef(name="smollm2-135m"), backend="torch", quant="fp16",
                                n_prompt=16, n_gen=4, repetitions=1)  # fp16 runs on CUDA only: fails on the device
        good = pb.ProfileRequest(model=pb.ModelRef(name="smollm2-135m"), backend="llama.cpp", quant="Q4_0",
                                 n_prompt=16, n_gen=4, repetitions=2)
        job_ids = [fleet.SubmitProfile(pb.SubmitProfileRequest(request=r), timeout=5).job_ids[0] for r in (bad, good)]
        jobs = wait_jobs(fleet, job_ids)
    assert jobs[job_ids[0]].job_state == pb.JOB_STATE_FAILED and "fp16 runs on CUDA only" in jobs[job_ids[0]].error
    assert jobs[job_ids[1]].job_state == pb.JOB_STATE_DONE  # the daemon stayed up after the bad job
    assert agent_process.poll() is None

    limits = run_cli("fleetfit", "limits", "--coordinator", address, "--format", "csv")
    assert limits.returncode == 0, limits.stderr
    lines = limits.stdout.splitlines()
    assert lines[0].startswith("device,backend,model,quant")
    assert any(",llama.cpp,smollm2-135m,Q4_0," in line and "measured" in line for line in lines[1:])
    assert not any(",torch," in line for line in lines)  # a failed run is no row of the measured table
    failures = run_cli("fleetfit", "limits", "failures", "--coordinator", address)
    assert failures.returncode == 0 and "fp16 runs on CUDA only" in failures.stdout

    fit = run_cli("fleetfit", "fit", "smollm2-135m", "--quant", "Q4_0", "--wide", "--coordinator", address)
    assert fit.returncode == 0 and "fits_comfortably" in fit.stdout and "at ctx 4096" in fit.stdout
    exact = run_cli("fleetfit", "fit", "smollm2-135m", "--quant", "Q4_0", "--context", "20", "--wide", "--coordinator",
                    address)  # --wide: the reason sentences
    assert exact.returncode == 0 and "measured: peak" in exact.stdout  # at the run's own context: all measured
    other = run_cli("fleetfit", "fit", "smollm2-135m", "--quant", "F16", "--wide", "--coordinator", address)
    assert "predicted" in other.stdout and "smollm2-135m F16 never measured on this device" in other.stdout
    devices = run_cli("fleetfit", "devices", "--wide", "--coordinator", address)
    assert "e2e-device" in devices.stdout

    assert_one_line_error(run_cli("fleetfit", "fit", "smollm3", "--quant", "Q4_0", "--coordinator", address),
                          "unknown model 'smollm3'")
    assert_one_line_error(run_cli("fleetfit", "fit", "smollm2-135m", "--quant", "Q4_0", "--min-tps", "-1",
                                  "--coordinator", address), "--min-tps must be positive")
    assert_one_line_error(run_cli("fleetfit", "fit", "--coordinator", address), "give a MODEL")
    assert_one_line_error(run_cli("fleetfit", "fit", "llama-2-7b", "--quant", "Q4_0", "--device", "ghost",
                                  "--coordinator", address), "no device 'ghost'")
    everything = run_cli("fleetfit", "limits", "all", "--format", "md", "--coordinator", address)
    assert everything.returncode == 0 and everything.stdout.index("## Memory requirements") < everything.stdout.index(
        "## Deployment recommendations")
    report = run_cli("fleetfit", "report", "--out", str(tmp_path / "report"), "--coordinator", address)
    assert report.returncode == 0 and (tmp_path / "report" / "index.html").read_text().count("<svg") == 3

    agent_process.send_signal(signal.SIGTERM)
    assert agent_process.wait(timeout=30) == 0


def test_cli_against_a_coordinator_that_does_not_answer():
    assert_one_line_error(run_cli("fleetfit", "limits", "--coordinator", "127.0.0.1:1", env={"FLEETFIT_INSECURE": "1"}),
                          "coordinator at 127.0.0.1:1 does not answer")


def test_quickstart_runs_again_in_the_same_home(tmp_path, cache_dir):
    """The README's main command, twice on one database: the second run re-enrolls the same device (never
    "already enrolled") and its table holds that one device's rows, measured again."""
    def quickstart(n_gen: int):
        proc = run_cli("fleetfit", "quickstart", "--db", str(tmp_path / "qs.sqlite3"), "--n-prompt", "16", "--n-gen",
                       str(n_gen), "--repetitions", "1", env={"FLEETFIT_CACHE_DIR": str(cache_dir)}, timeout=600)
        assert proc.returncode == 0, proc.stderr[-2000:]
        return proc.stdout

    first, second = quickstart(4), quickstart(5)
    for out, shape in ((first, "pp16/tg4 ctx20"), (second, "pp16/tg5 ctx21")):
        table, answer = out.split("Measured here")[1].split("Does smollm2-135m Q4_0 fit?")
        assert max(map(len, (table + answer).splitlines())) <= 120  # the summary fits a terminal
        hoisted = f"shape: {shape} t" in table  # one shape in every row: named above the table
        rows = [line.split() for line in table.splitlines() if hoisted or f"{shape} t" in line]
        assert sorted(r[1] for r in rows if len(r) > 1 and r[1] in ("Q4_1", "F16", "Q8_0", "Q4_0")) == \
            ["F16", "Q4_0", "Q4_1", "Q8_0"]  # one row per precision at this run's shape
        assert "model: smollm2-135m" in table and "fits_comfortably" in answer
    registered = [line.split("agent registered as ")[1].split(";")[0] for line in (first + second).splitlines()
                  if "agent registered as" in line]
    assert len(registered) == 2 and registered[0] == registered[1]  # one device, enrolled again
    with Store(tmp_path / "qs.sqlite3") as store:
        assert [d.inventory.device_id for d in store.devices()] == registered[:1]


def test_a_sweep_campaign_fills_the_serving_tables(coordinator, cache_dir, tmp_path, monkeypatch):
    """Two agents with one hostname (distinct device ids) run a `fleetfit profile --parallel` campaign with real
    llama.cpp; `limits serving` and `limits recommendations` then show each device's measured stream counts."""
    address = f"127.0.0.1:{coordinator.port}"
    monkeypatch.setenv("FLEETFIT_TOKEN", coordinator.operator_token)
    monkeypatch.setenv("FLEETFIT_INSECURE", "1")
    devices = ("board-0a1b2c3d", "board-4e5f6a7b")
    agents = [subprocess.Popen([str(BIN / "fleetfit-agent"), "run", "--coordinator", address, "--device-id", device,
                                "--cache-dir", str(cache_dir), "--insecure", "--token", coordinator.join_token(),
                                "--identity", str(tmp_path / f"{device}.json"), "--allow-dir", "/nonexistent"],
                               stderr=subprocess.PIPE, text=True) for device in devices]
    try:
        with connect(address, 5, token=coordinator.operator_token) as channel:
            fleet = pb_grpc.FleetServiceStub(channel)
            deadline = time.monotonic() + 60
            while len(fleet.ListDevices(pb.ListDevicesRequest(), timeout=5).devices) < 2:
                assert time.monotonic() < deadline and all(a.poll() is None for a in agents)
                time.sleep(0.2)
            assert_one_line_error(run_cli("fleetfit", "profile", "--parallel", "1,x", "--coordinator", address),
                                  "--parallel takes stream counts")
            assert_one_line_error(run_cli("fleetfit", "profile", "--parallel", "0,2", "--coordinator", address),
                                  "parallel values must be 1..256")
            started = run_cli("fleetfit", "profile", "--models", "smollm2-135m", "--quants", "Q4_0", "--n-prompt",
                              "16", "--n-gen", "8", "--repetitions", "1", "--parallel", "1,2,4", "--coordinator",
                              address)
            assert started.returncode == 0 and "2 jobs on 2 device(s)" in started.stdout, started
            campaign_id = started.stdout.split()[1].rstrip(":")
            watched = run_cli("fleetfit", "campaign", "status", campaign_id, "--watch", "--coordinator", address)
            assert watched.returncode == 0, watched.stderr
            status = fleet.GetCampaign(pb.GetCampaignRequest(campaign_id=campaign_id), timeout=5).campaign
            assert (status.done, status.failed) == (2, 0), watched.stdout
    finally:
        for a in agents:
            a.kill()
            a.wait()

    # At 0.1 tok/s a stream: which rows fill must not depend on how fast a loaded machine decoded (two agents on
    # 2 shared cores have measured smollm2-135m below 1 tok/s here while other work ran)
    served = run_cli("fleetfit", "limits", "serving", "--format", "json", "--option", "interactive_tps=0.1",
                     "--coordinator", address)
    assert served.returncode == 0, served.stderr
    rows = [r for r in json.loads(served.stdout) if (r["model"], r["precision"]) == ("smollm2-135m", "Q4_0")]
    names = sorted(r["device"] for r in rows)  # one row per device, never merged by hostname
    assert names == sorted(f"{socket.gethostname()} ({d[:8]})" for d in devices)
    for row in rows:  # the counts each device ran (two agents share 2 cores here, so a sweep may be noisy)
        assert row["streams_swept"] == "1,2,4" and row["max_streams_min_0_1_tok_s"] >= 1, row
        assert row["aggregate_tok_s"] > 0 and row["max_streams_min_0_1_tok_s_provenance"] in ("measured", "predicted")
    recommended = run_cli("fleetfit", "limits", "recommendations", "--format", "json", "--option",
                          "interactive_tps=0.1", "--coordinator", address)
    assert recommended.returncode == 0, recommended.stderr
    found = json.loads(recommended.stdout)
    assert len(found) == 6, found
    # The recommended model is the largest meeting the speed, not the swept one: predicted from the sweeps, or, where
    # two agents' noisy sweeps on 2 shared cores give no per-stream slope, one stream's decode divided (estimated).
    # Either way every row says how, and its provenance matches its method.
    for r in found:
        how, kind = r["streams_how"], r["streams_per_device_provenance"]
        assert how and kind in ("measured", "predicted", "estimated"), r
        assert (kind == "estimated") == how.startswith("one-stream division"), r
