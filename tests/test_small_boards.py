"""Devices as they really are: agents in real cgroup v1 groups of different sizes, one hostname, distinct device
ids, against a real coordinator. The coordinator judges each against the memory its agent may use, before any
run there. Skips where cgroups cannot be made (not root)."""

import contextlib
import json
import subprocess
import time


from fleetfit.v1 import fleetfit_pb2 as pb
from fleetfit.v1 import fleetfit_pb2_grpc as pb_grpc
from fleetfit.v1.transport import connect
from tests.cgroups import v1_cgroup
from tests.conftest import BIN, run_cli

GIB = 1 << 30


@contextlib.contextmanager
def agent(coordinator, tmp_path, cache_dir, device_id: str, prefix: list[str]):
    """`fleetfit-agent run` as `device_id`, its command behind `prefix` (a cgroup's, or none)."""
    proc = subprocess.Popen([*prefix, str(BIN / "fleetfit-agent"), "run", "--coordinator", coordinator.address,
                             "--device-id", device_id, "--cache-dir", str(cache_dir), "--insecure",
                             "--token", coordinator.join_token(), "--identity", str(tmp_path / f"{device_id}.json"),
                             "--allow-dir", "/nonexistent"], stderr=subprocess.PIPE, text=True)
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def wait_devices(coordinator, ids: set[str], agents, timeout_s: float = 120) -> dict[str, pb.DeviceInventory]:
    with connect(coordinator.address, 5, token=coordinator.operator_token) as channel:
        fleet = pb_grpc.FleetServiceStub(channel)
        deadline = time.monotonic() + timeout_s
        while True:
            found = {d.inventory.device_id: d.inventory
                     for d in fleet.ListDevices(pb.ListDevicesRequest(), timeout=5).devices}
            if ids <= found.keys():
                return found
            dead = [a for a in agents if a.poll() is not None]
            assert not dead and time.monotonic() < deadline, dead[0].stderr.read() if dead else "agents silent"
            time.sleep(0.3)


def test_fit_judges_each_board_by_its_cgroup_before_any_run(coordinator, tmp_path, cache_dir, monkeypatch):
    """An agent registered from a 1 GiB / 1-CPU cgroup is a 1 GiB / 1-CPU device: llama-2-7b Q4_0 does not fit
    there (nothing measured), while the same host unconstrained fits it; a 2 GiB / 1-CPU board too small also."""
    monkeypatch.setenv("FLEETFIT_TOKEN", coordinator.operator_token)
    monkeypatch.setenv("FLEETFIT_INSECURE", "1")
    with contextlib.ExitStack() as stack:
        small = stack.enter_context(v1_cgroup(GIB, "0", 50000))
        medium = stack.enter_context(v1_cgroup(2 * GIB, None, 100000))
        agents = [stack.enter_context(agent(coordinator, tmp_path, cache_dir, device, prefix))
                  for device, prefix in (("board-1g", small), ("board-2g", medium), ("host-free", []))]
        inventories = wait_devices(coordinator, {"board-1g", "board-2g", "host-free"}, agents)
        fit = run_cli("fleetfit", "fit", "llama-2-7b", "--quant", "Q4_0", "--json", "--coordinator",
                      coordinator.address)
        devices = run_cli("fleetfit", "devices", "--format", "json", "--coordinator", coordinator.address)
    assert fit.returncode == 0, fit.stderr
    answers = {a["device_id"]: a for a in json.loads(fit.stdout)}
    assert {d: inventories[d].ram_total_bytes for d in ("board-1g", "board-2g")} == {"board-1g": GIB,
                                                                                      "board-2g": 2 * GIB}
    assert (inventories["board-1g"].cpus_usable, inventories["board-2g"].cpus_usable) == (1, 1)
    assert "memory.limit_in_bytes 1.0 GiB" in inventories["board-1g"].memory_source
    assert inventories["host-free"].ram_total_bytes == inventories["board-1g"].host_ram_total_bytes > 8 * GIB
    for board in ("board-1g", "board-2g"):
        assert answers[board]["verdict"] == "does_not_fit", answers[board]
        assert f"exceeds {answers[board]['ram_total_bytes'] // (1 << 20)} MiB of RAM" in answers[board]["reason"]
    assert answers["host-free"]["verdict"] == "fits_comfortably", answers["host-free"]
    rows = {row["device_id"]: row for row in json.loads(devices.stdout)}
    assert (rows["board-1g"]["ram_gib"], rows["board-1g"]["cores"]) == (1, 1)


def test_a_campaign_measures_what_fits_per_board(coordinator, tmp_path, monkeypatch):
    """A campaign over two catalogue sizes on a 1 GiB / 1-CPU board and an unconstrained agent of the same host:
    the board measures the small size and refuses the large one before loading (out of memory: needs ~1.7 GB);
    the host measures both. `limits` and `fit` then differ by device."""
    monkeypatch.setenv("FLEETFIT_TOKEN", coordinator.operator_token)
    monkeypatch.setenv("FLEETFIT_INSECURE", "1")
    address = coordinator.address
    with contextlib.ExitStack() as stack:
        small = stack.enter_context(v1_cgroup(GIB, "0", 100000))
        # each its own cache: a file one synthesized must not let the other skip its own room check
        agents = [stack.enter_context(agent(coordinator, tmp_path, tmp_path / f"cache-{device}", device, prefix))
                  for device, prefix in (("board-1g", small), ("host-free", []))]
        wait_devices(coordinator, {"board-1g", "host-free"}, agents)
        started = run_cli("fleetfit", "profile", "--models", "smollm2-360m,llama-3.2-1b", "--quants", "Q8_0",
                          "--n-prompt", "16", "--n-gen", "4", "--repetitions", "1", "--max-attempts", "1",
                          "--coordinator", address)
        assert started.returncode == 0 and "4 jobs on 2 device(s)" in started.stdout, started
        campaign_id = started.stdout.split()[1].rstrip(":")
        watched = run_cli("fleetfit", "campaign", "status", campaign_id, "--watch", "--coordinator", address)
        assert watched.returncode == 0, watched.stderr
        assert all(a.poll() is None for a in agents)  # a refused size takes no agent down
    limits = run_cli("fleetfit", "limits", "--format", "json", "--coordinator", address)
    failures = run_cli("fleetfit", "limits", "failures", "--format", "json", "--coordinator", address)
    fit = run_cli("fleetfit", "fit", "llama-3.2-1b", "--quant", "Q8_0", "--json", "--coordinator", address)
    def device(row):  # the device column names the id, with the hostname where ids share one
        return "board-1g" if "board-1g" in row["device"] else "host-free" if "host-free" in row["device"] else None

    measured = {(device(row), row["model"]) for row in json.loads(limits.stdout)}
    assert measured == {("board-1g", "smollm2-360m"), ("host-free", "smollm2-360m"), ("host-free", "llama-3.2-1b")}
    refused = json.loads(failures.stdout)
    assert [(device(r), r["model"]) for r in refused] == [("board-1g", "llama-3.2-1b")], refused
    assert "oom" in json.dumps(refused[0]) and "GB of RAM to load" in json.dumps(refused[0]), refused
    answers = {a["device_id"]: a for a in json.loads(fit.stdout)}
    assert answers["board-1g"]["verdict"] == "does_not_fit", answers["board-1g"]
    assert answers["host-free"]["verdict"] == "fits_comfortably", answers["host-free"]
