"""Adding a backend is what the docs say: a spec entry, a runner module, a registry line (tests/agent/toy_backend.py
makes the two entries; no other file knows the toy). A campaign on it then runs end to end, real parts throughout:
an agent process and its workers, gRPC, the coordinator's store, its measured table and its fit answers."""

import os
import pathlib
import subprocess
import time

import pytest

from fleetfit.models.catalogue import CATALOGUE, n_params
from fleetfit.v1 import fleetfit_pb2 as pb
from fleetfit.v1.words import JOB_STATE
from tests.agent import toy_backend
from tests.conftest import BIN, fleet_stub, run_cli, stop_processes

REPO = pathlib.Path(__file__).resolve().parents[2]
MODEL = "smollm2-360m"  # a llama-family catalogue shape (not a real model): the toy runs it from the shape


@pytest.fixture()
def toy(monkeypatch, tmp_path):
    from fleetfit.agent.backends import registry
    from fleetfit.models import backends

    monkeypatch.setitem(backends.BACKENDS, toy_backend.NAME, toy_backend.SPEC)
    monkeypatch.setitem(registry.MODULES, toy_backend.NAME, toy_backend.MODULE)
    site = toy_backend.sitecustomize(tmp_path / "site")
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(REPO)])}


def test_the_toy_is_registered_as_every_backend_is(toy):
    from fleetfit.agent.backends import registry

    assert registry.get("TOY").NAME == "toy" and registry.get("toy").spec is toy_backend.SPEC
    assert "toy" in [b.NAME for b in registry.all_backends()]
    assert toy_backend.SPEC.weight_bytes(CATALOGUE[MODEL], "f32") == 4 * n_params(CATALOGUE[MODEL])  # its sizes


def test_a_campaign_on_a_toy_backend_runs_end_to_end(toy, coordinator, cache_dir, tmp_path):
    agent = subprocess.Popen([str(BIN / "fleetfit-agent"), "run", "--coordinator", coordinator.address,
                              "--device-id", "toy-device", "--cache-dir", str(cache_dir), "--insecure",
                              "--token", coordinator.join_token(), "--identity", str(tmp_path / "agent.json")],
                             stderr=subprocess.PIPE, text=True, env=toy)
    try:
        fleet = fleet_stub(coordinator)
        deadline = time.monotonic() + 120
        while not fleet.ListDevices(pb.ListDevicesRequest(), timeout=5).devices:
            assert time.monotonic() < deadline and agent.poll() is None, "the agent did not register"
            time.sleep(0.3)
        spec = pb.CampaignSpec(models=[MODEL], quants=["f32"], backends=["toy"],
                               template=pb.ProfileRequest(n_prompt=16, n_gen=4, repetitions=2))
        reply = fleet.CreateCampaign(pb.CreateCampaignRequest(spec=spec), timeout=10)
        assert len(reply.job_ids) == 1, reply.skipped
        deadline = time.monotonic() + 300
        while True:
            job = fleet.GetJobs(pb.GetJobsRequest(job_ids=list(reply.job_ids)), timeout=5).jobs[0]
            if JOB_STATE.word(job.job_state) in ("done", "failed"):
                break
            assert time.monotonic() < deadline and agent.poll() is None, "the job did not finish"
            time.sleep(0.5)
        assert job.job_state == pb.JOB_STATE_DONE, job.error
    finally:
        stop_processes(agent)

    env = {"FLEETFIT_TOKEN": coordinator.operator_token, "FLEETFIT_INSECURE": "1", "PYTHONPATH": toy["PYTHONPATH"]}
    limits = run_cli("fleetfit", "limits", "--coordinator", coordinator.address, "--format", "csv", env=env)
    assert limits.returncode == 0, limits.stderr
    rows = [line for line in limits.stdout.splitlines() if f",toy,{MODEL},f32," in line]
    assert rows and "measured" in rows[0]
    fit = run_cli("fleetfit", "fit", MODEL, "--quant", "f32", "--backend", "toy", "-o", "csv", "--coordinator",
                  coordinator.address, env=env)  # csv: every column, the device id included
    assert fit.returncode == 0, fit.stderr
    assert "toy-device" in fit.stdout and MODEL in fit.stdout
