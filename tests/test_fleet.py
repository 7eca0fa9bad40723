"""A heterogeneous fleet, end to end with real parts: three `fleetfit-agent run` processes on this machine, so with
one hostname and three device ids; one sees a GPU (a fake NVML at the hardware boundary, the real agent code
above it), one does not offer torch. Campaigns over llama.cpp Q4_0, torch int8 and onnxruntime int4 on the real
SmolLM2 complete exactly where they can run and are skipped elsewhere with reasons; tables, fit and the report
keep each device apart with its backend rows. On SQLite and on PostgreSQL."""

import json
import os
import subprocess
import time

import pytest

from fleetfit.coordinator.harness import BackgroundCoordinator
from fleetfit.v1 import fleetfit_pb2 as pb
from tests.conftest import BIN, assert_one_line_error, fleet_stub, run_cli, stop_processes

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAKE_PYNVML = """# nvidia-ml-py's module name, answered by the committed fake of NVML (this machine has no NVIDIA GPU)
import sys
from tests.agent.telemetry.fake_pynvml import FakePowerNvml
sys.modules[__name__] = FakePowerNvml(gpus=1)
"""
SHORT = dict(n_prompt=16, n_gen=4, repetitions=1, idle_baseline_s=0.0)


def start_agent(coordinator, device_id, cache_dir, tmp_path, env_extra):
    env = {**os.environ, "FLEETFIT_CACHE_DIR": str(cache_dir), **env_extra}
    log = open(tmp_path / f"{device_id}.log", "w")
    return subprocess.Popen([str(BIN / "fleetfit-agent"), "run", "--coordinator", coordinator.address, "--insecure",
                             "--device-id", device_id, "--token", coordinator.join_token({"rack": device_id[-1]}),
                             "--identity", str(tmp_path / f"{device_id}.json")], env=env, stdout=log, stderr=log)


@pytest.fixture()
def fleet(db_url, cache_dir, tmp_path):
    shim = tmp_path / "gpu-shim"
    shim.mkdir()
    (shim / "pynvml.py").write_text(FAKE_PYNVML)
    coordinator = BackgroundCoordinator(db_url, state_dir=tmp_path / "state")
    coordinator.start()
    agents = {
        "node-a": start_agent(coordinator, "node-a", cache_dir, tmp_path,
                              {"PYTHONPATH": os.pathsep.join([str(shim), ROOT])}),
        "node-b": start_agent(coordinator, "node-b", cache_dir, tmp_path, {"FLEETFIT_BACKENDS": "llama.cpp,onnxruntime"}),
        "node-c": start_agent(coordinator, "node-c", cache_dir, tmp_path, {}),
    }
    stub = fleet_stub(coordinator)
    deadline = time.monotonic() + 120
    while len(stub.ListDevices(pb.ListDevicesRequest(), timeout=5).devices) < 3:
        assert time.monotonic() < deadline, "the agents did not register"
        assert all(p.poll() is None for p in agents.values()), "an agent exited"
        time.sleep(0.3)
    yield coordinator, stub, agents
    stop_processes(*agents.values())
    coordinator.stop()


def campaign(stub, backend, quant):
    spec = pb.CampaignSpec(models=["smollm2-135m"], quants=[quant], backends=[backend],
                           template=pb.ProfileRequest(**SHORT))
    return stub.CreateCampaign(pb.CreateCampaignRequest(spec=spec), timeout=30)


def wait_campaigns(stub, campaign_ids, timeout_s=600):
    deadline = time.monotonic() + timeout_s
    while True:
        found = [stub.GetCampaign(pb.GetCampaignRequest(campaign_id=c), timeout=10).campaign for c in campaign_ids]
        if all(not (c.queued or c.running) for c in found):
            return found
        assert time.monotonic() < deadline, "campaigns did not finish"
        time.sleep(1)


@pytest.mark.slow
def test_a_heterogeneous_fleet_runs_what_each_device_can_and_keeps_devices_apart(fleet, monkeypatch):
    coordinator, stub, agents = fleet
    devices = {d.inventory.device_id: d for d in stub.ListDevices(pb.ListDevicesRequest(), timeout=5).devices}
    assert len({d.inventory.hostname for d in devices.values()}) == 1  # one machine: one hostname for all three
    assert [g.name for g in devices["node-a"].inventory.gpus] == ["NVIDIA H100 80GB HBM3"]
    assert not devices["node-b"].inventory.gpus
    assert len({d.display_name for d in devices.values()}) == 3  # the short id tells them apart
    offered = {i: {b.name for b in d.inventory.backends if b.available} for i, d in devices.items()}
    assert "torch" not in offered["node-b"] and "torch" in offered["node-a"] and "torch" in offered["node-c"]

    started = [campaign(stub, "llama.cpp", "Q4_0"), campaign(stub, "torch", "INT8"), campaign(stub, "onnxruntime",
                                                                                            "int4")]
    llama, torch, onnx = started
    assert sorted(llama.device_ids) == ["node-a", "node-b", "node-c"] and len(llama.job_ids) == 3
    assert len(torch.job_ids) == 2 and [s for s in torch.skipped if s.startswith("node-b: ")]
    assert "torch is not" in next(s for s in torch.skipped if s.startswith("node-b: ")) or \
        "not offered" in next(s for s in torch.skipped if s.startswith("node-b: "))
    done = wait_campaigns(stub, [c.campaign_id for c in started])
    for status, expected in zip(done, (3, 2, 3)):
        assert (status.done, status.failed) == (expected, 0), [list(d.errors) for d in status.devices]
    torch_status = done[1]
    node_b = next(d for d in torch_status.devices if d.device_id == "node-b")
    assert node_b.skipped and not (node_b.done or node_b.failed)  # skipped with a reason, never queued to fail

    rows = stub.GetLimitTable(pb.GetLimitTableRequest(), timeout=10).rows
    measured = sorted((r.device_id, r.backend, r.quant) for r in rows if not r.failure)
    assert measured == sorted([(d, "llama.cpp", "Q4_0") for d in ("node-a", "node-b", "node-c")]
                              + [(d, "torch", "int8") for d in ("node-a", "node-c")]
                              + [(d, "onnxruntime", "int4") for d in ("node-a", "node-b", "node-c")])
    assert all(r.memory_bytes > 0 and r.shape.startswith("pp16/tg4") for r in rows)

    monkeypatch.setenv("FLEETFIT_TOKEN", coordinator.operator_token)
    monkeypatch.setenv("FLEETFIT_INSECURE", "1")
    address = coordinator.address
    table = run_cli("fleetfit", "limits", "--format", "md", "--coordinator", address)
    assert table.returncode == 0, table.stderr
    names = {i: d.display_name for i, d in devices.items()}
    for device_id, backend, quant in measured:
        assert any(line.startswith(f"| {names[device_id]} | {backend} | smollm2-135m | {quant} |")
                   for line in table.stdout.splitlines()), (device_id, backend, quant, table.stdout)

    answer = run_cli("fleetfit", "fit", "smollm2-135m", "--backend", "torch", "--quant", "int8", "--json",
                     "--coordinator", address)
    assert answer.returncode == 0, answer.stderr
    by_device = {a["device_id"]: a for a in json.loads(answer.stdout)}
    for device_id in ("node-a", "node-c"):
        assert by_device[device_id]["decode_tokens_per_s"]["provenance"] == "measured"
        assert by_device[device_id]["backend"] == "torch" and by_device[device_id]["context_tokens"] == 4096
    assert "evidence" not in by_device["node-b"]  # torch never ran there: nothing measured is claimed
    assert by_device["node-b"].get("decode_tokens_per_s", {}).get("provenance") != "measured"

    hostname = devices["node-a"].inventory.hostname
    assert_one_line_error(run_cli("fleetfit", "fit", "smollm2-135m", "--quant", "Q4_0", "--device", hostname,
                                  "--coordinator", address), "3 devices have hostname")
    one = run_cli("fleetfit", "fit", "smollm2-135m", "--quant", "Q4_0", "--device", "node-b", "--json",
                  "--coordinator", address)
    assert [a["device_id"] for a in json.loads(one.stdout)] == ["node-b"]

    speed = stub.GetTable(pb.GetTableRequest(name="speed"), timeout=30).table
    col = {c: i for i, c in enumerate(speed.columns)}
    speed_rows = {(r.cells[col["device"]].string_value, r.cells[col["backend"]].string_value)
                  for r in speed.rows if r.cells[col["model"]].string_value == "smollm2-135m"}
    assert {(names[d], b) for d, b, _ in measured} <= speed_rows

    report_dir = coordinator.state_dir / "report"
    made = run_cli("fleetfit", "report", "--out", str(report_dir), "--coordinator", address)
    assert made.returncode == 0, made.stderr
    page = (report_dir / "index.html").read_text()
    for device_id, backend, quant in measured:
        assert f"{names[device_id]} {backend} {quant}" in page
