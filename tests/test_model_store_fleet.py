"""Your model on your fleet, end to end with real parts: `fleetfit models add` stores the SmolLM2 Q4_1 file under a
name of the operator's and an F16 derived from it; two `fleetfit-agent run` processes on this machine (one hostname,
two device ids, one cache) fetch them from the coordinator over their own channels and profile them at two
precisions, the F16 file's Q4_1 derived on the device by llama.cpp's quantizer. Each run of a stored file reports
the stored digest as its model_sha256."""

import hashlib
import os
import subprocess

import pytest

from fleetfit.coordinator.harness import BackgroundCoordinator
from fleetfit.v1 import fleetfit_pb2 as pb
from tests.conftest import BIN, fleet_stub, run_cli, stop_processes, wait_until

SHORT = dict(n_prompt=16, n_gen=4, repetitions=1, idle_baseline_s=0.0)


def start_agent(coordinator, device_id, cache, tmp_path):
    env = {**os.environ, "FLEETFIT_CACHE_DIR": str(cache), "FLEETFIT_BACKENDS": "llama.cpp"}
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
