"""Your model on your fleet, end to end with real parts: `fleetfit models add` stores the SmolLM2 Q4_1 file under a
name of the operator's and an F16 derived from it; two `fleetfit-agent run` processes on this machine (one hostname,
two device ids, one cache) fetch them from the coordinator over their own channels and profile them at two
precisions, the F16 file's Q4_1 derived on the device by llama.cpp's quantizer. Each run of a stored file reports
the stored digest as its model_sha256. With `fleetfit profile --quality`, each run's file is also compared (KL
divergence) with the model's highest precision on the device, and the quality table and fit read those rows."""

import csv
import hashlib
import io
import os
import subprocess

import pytest

from fleetfit.coordinator.harness import BackgroundCoordinator
from fleetfit.v1 import fleetfit_pb2 as pb
from tests.conftest import BIN, assert_one_line_error, fleet_stub, run_cli, stop_processes, wait_until

SHORT = dict(n_prompt=16, n_gen=4, repetitions=1, idle_baseline_s=0.0)


def start_agent(coordinator, device_id, cache, tmp_path):
    env = {**os.environ, "FLEETFIT_CACHE_DIR": str(cache), "FLEETFIT_BACKENDS": "llama.cpp",
           "FLEETFIT_IDLE_BASELINE_S": "0"}
    log = open(tmp_path / f"{device_id}.log", "w")
    return subprocess.Popen([str(BIN / "fleetfit-agent"), "run", "--coordinator", coordinator.address, "--insecure",
                             "--device-id", device_id, "--token", coordinator.join_token(),
                             "--identity", str(tmp_path / f"{device_id}.json")], env=env, stdout=log, stderr=log)


@pytest.mark.slow
def test_two_agents_profile_models_added_to_the_store(tmp_path, ladder):
    coordinator = BackgroundCoordinator(tmp_path / "fleet.sqlite3", state_dir=tmp_path / "state")
    coordinator.start()
    cache = tmp_path / "agent-cache"  # shared by both agents: the fetch lock keeps them apart
    agents = [start_agent(coordinator, d, cache, tmp_path) for d in ("node-a", "node-b")]
    try:
        env = {"FLEETFIT_STATE_DIR": str(tmp_path / "state"), "FLEETFIT_INSECURE": "1",
               "FLEETFIT_TOKEN": coordinator.operator_token, "FLEETFIT_COORDINATOR": coordinator.address}
        mine = tmp_path / "my-smollm.gguf"
        mine.write_bytes(ladder["Q4_1"].read_bytes())  # the shipped file, renamed
        digests = {}
        for name, path in (("my-smollm", mine), ("my-smollm-f16", ladder["F16"])):
            added = run_cli("fleetfit", "models", "add", str(path), "--name", name, env=env)
            assert added.returncode == 0, added.stderr
            digests[name] = hashlib.sha256(path.read_bytes()).hexdigest()
        stub = fleet_stub(coordinator)
        wait_until(lambda: len(stub.ListDevices(pb.ListDevicesRequest(), timeout=5).devices) == 2, 120,
                   "the agents to register")
        hosts = {d.inventory.hostname for d in stub.ListDevices(pb.ListDevicesRequest(), timeout=5).devices}
        assert len(hosts) == 1  # two devices sharing a hostname
        wait_until(lambda: all(not d.inventory.trials_pending
                               for d in stub.ListDevices(pb.ListDevicesRequest(), timeout=5).devices), 300,
                   "the capability trials")
        spec = pb.CampaignSpec(models=["my-smollm", f"sha256:{digests['my-smollm-f16']}"], quants=["Q4_1", "F16"],
                               backends=["llama.cpp"], template=pb.ProfileRequest(**SHORT))
        reply = stub.CreateCampaign(pb.CreateCampaignRequest(spec=spec), timeout=30)
        assert len(reply.job_ids) == 6  # my-smollm Q4_1; my-smollm-f16 F16 and Q4_1 (derived); on each device
        assert all("the stored file is Q4_1" in line for line in reply.skipped)  # my-smollm F16: never requantized

        def finished():
            c = stub.GetCampaign(pb.GetCampaignRequest(campaign_id=reply.campaign_id), timeout=10).campaign
            return c if not (c.queued or c.running) else None

        campaign = wait_until(finished, 900, "the campaign", every_s=1)
        assert campaign.done == 6, [d.errors for d in campaign.devices]
        rows = [(r.device_id, r.model_name, r.quant, r.model_origin, r.model_sha256)
                for r in coordinator.store.results() if r.model_name.startswith("my-smollm")]
        assert len(rows) == 6, rows
        for device, name, quant, origin, digest in rows:
            if origin == "stored":
                assert digest == digests[name], (device, name, quant)
            else:
                assert (name, quant, origin) == ("my-smollm-f16", "Q4_1", "derived") and digest != digests[name]
        assert {(r[0], r[2]) for r in rows if r[3] == "stored"} == {(d, q) for d in ("node-a", "node-b")
                                                                    for q in ("Q4_1", "F16")}
    finally:
        stop_processes(*agents)
        coordinator.stop()


def operator_env(coordinator, tmp_path) -> dict:
    return {"FLEETFIT_STATE_DIR": str(tmp_path / "state"), "FLEETFIT_INSECURE": "1",
            "FLEETFIT_TOKEN": coordinator.operator_token, "FLEETFIT_COORDINATOR": coordinator.address}


@pytest.mark.slow
def test_a_quality_campaign_measures_each_file_against_the_models_highest_precision(tmp_path, ladder):
    coordinator = BackgroundCoordinator(tmp_path / "fleet.sqlite3", state_dir=tmp_path / "state")
    coordinator.start()
    agent = start_agent(coordinator, "node-q", tmp_path / "agent-cache", tmp_path)
    try:
        env = operator_env(coordinator, tmp_path)
        mine = tmp_path / "my-smollm.gguf"
        mine.write_bytes(ladder["Q4_1"].read_bytes())
        digests = {}
        for name, path in (("my-smollm", mine), ("my-smollm-f16", ladder["F16"])):
            assert run_cli("fleetfit", "models", "add", str(path), "--name", name, env=env).returncode == 0
            digests[name] = hashlib.sha256(path.read_bytes()).hexdigest()
        stub = fleet_stub(coordinator)
        wait_until(lambda: [d for d in stub.ListDevices(pb.ListDevicesRequest(), timeout=5).devices
                            if not d.inventory.trials_pending], 300, "the agent's capability trials")
        profile = ("fleetfit", "profile", "--models", "my-smollm,my-smollm-f16", "--quants", "Q4_1,Q8_0", "--n-prompt",
                   "16", "--n-gen", "4", "--repetitions", "1", "--quality")
        assert_one_line_error(run_cli(*profile[:3], "my-smollm,llama-2-7b", *profile[4:], env=env),
                              "--quality needs real weights: llama-2-7b")
        started = run_cli(*profile, "--quality-context", "128", "--quality-chunks", "2", env=env)
        assert started.returncode == 0, started.stderr
        assert "3 jobs on 1 device(s)" in started.stdout  # my-smollm Q8_0: a Q4_1 file is never requantized
        campaign_id = started.stdout.split()[1].rstrip(":")

        def finished():
            c = stub.GetCampaign(pb.GetCampaignRequest(campaign_id=campaign_id), timeout=10).campaign
            return c if not (c.queued or c.running) else None

        campaign = wait_until(finished, 900, "the campaign", every_s=1)
        assert campaign.done == 3, [d.errors for d in campaign.devices]
        runs = {(r.model_name, r.quant): r for r in coordinator.store.results()}
        rows = {(q.model_name, q.quant): q for q in coordinator.store.quality_results()}
        assert set(rows) == {("my-smollm", "Q4_1"), ("my-smollm-f16", "Q4_1"), ("my-smollm-f16", "Q8_0")}
        for key, q in rows.items():  # each row names the file that ran, and what it was compared with
            assert (q.device_id, q.model_sha256, q.reference_quant) == ("node-q", runs[key].model_sha256, "F16")
            assert q.context_tokens == 128 and q.n_positions == 2 * 63 and q.kl_divergence_mean >= 0
        assert rows["my-smollm-f16", "Q8_0"].reference_sha256 == digests["my-smollm-f16"]  # the stored F16 itself
        assert rows["my-smollm-f16", "Q4_1"].reference_sha256 == digests["my-smollm-f16"]
        derived = tmp_path / "agent-cache" / "stored" / digests["my-smollm"] / "derived" / "my-smollm-F16.gguf"
        assert rows["my-smollm", "Q4_1"].reference_sha256 == hashlib.sha256(derived.read_bytes()).hexdigest()

        table = run_cli("fleetfit", "limits", "quality", "-o", "csv", env=env)
        assert table.returncode == 0, table.stderr
        listed = {(r["model"], r["precision"]): r for r in csv.DictReader(io.StringIO(table.stdout))}
        assert set(listed) == set(rows) and all(r["decode_tok_s"] for r in listed.values())  # beside its own run
        answer = stub.Fit(pb.FitRequest(model_name="my-smollm-f16", quant="Q8_0"), timeout=60).answers[0]
        assert answer.kl_divergence.value == rows["my-smollm-f16", "Q8_0"].kl_divergence_mean
    finally:
        stop_processes(agent)
        coordinator.stop()
