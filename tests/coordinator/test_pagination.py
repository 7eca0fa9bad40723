"""Lists are paged: with many devices and results and a small page size every item arrives exactly once, and
records stored large (before ingest bounded them) cannot push an answer past the message limit."""

import pytest

from fleetfit.coordinator import cli
from fleetfit.coordinator.harness import BackgroundCoordinator
from fleetfit.coordinator.store import Store
from fleetfit.v1 import fleetfit_pb2 as pb
from fleetfit.v1.transport import MAX_MESSAGE_BYTES
from tests.conftest import fleet_stub, run_cli

DEVICES = 37


def result(device_id: str, model: str, n: int) -> pb.ProfileResult:
    return pb.ProfileResult(result_id=f"{device_id}-{model}-{n}", device_id=device_id, model_name=model, quant="Q4_0",
                            request=pb.ProfileRequest(backend="llama.cpp", quant="Q4_0", n_prompt=16 + n, n_gen=4),
                            model_n_params=134_515_008, decode_tokens_per_s=pb.Stat(mean=50.0 + n, samples=[50.0 + n]),
                            peak_rss_bytes=300 << 20)


@pytest.fixture()
def many(db_url, tmp_path):
    with Store(db_url) as store:
        for d in range(DEVICES):
            device_id = f"board-{d:03d}"  # one hostname, distinct ids
            store.upsert_device(pb.DeviceInventory(device_id=device_id, hostname="board", ram_total_bytes=8 << 30))
            for n in range(3):
                store.add_result(result(device_id, "smollm2-135m", n))
    server = BackgroundCoordinator(db_url, state_dir=tmp_path / "state")
    server.start()
    yield server
    server.stop()


def test_every_item_arrives_once_across_small_pages(many):
    fleet = fleet_stub(many)
    devices = cli._pages(fleet.ListDevices, pb.ListDevicesRequest(page_size=4), "devices")
    assert sorted(d.inventory.device_id for d in devices) == [f"board-{d:03d}" for d in range(DEVICES)]
    assert len({d.inventory.device_id for d in devices}) == DEVICES
    first = fleet.ListDevices(pb.ListDevicesRequest(page_size=4), timeout=5)
    assert len(first.devices) == 4 and first.next_page_token

    rows = cli._pages(fleet.GetLimitTable, pb.GetLimitTableRequest(page_size=5), "rows")
    assert sorted(r.result_id for r in rows) == sorted(f"board-{d:03d}-smollm2-135m-{n}" for d in range(DEVICES)
                                                       for n in range(3))
    whole = fleet.GetLimitTable(pb.GetLimitTableRequest(page_size=10_000), timeout=5)
    assert list(whole.rows) == rows and not whole.next_page_token  # pages add up to the whole, in its order

    answers = cli._pages(fleet.Fit, pb.FitRequest(model_name="smollm2-135m", quant="Q4_0", page_size=3), "answers")
    assert sorted(a.device_id for a in answers) == [f"board-{d:03d}" for d in range(DEVICES)]
    assert {a.device_name for a in answers} >= {"board (000)", "board (036)"}  # display names span all pages


def test_the_cli_follows_pages_past_the_message_limit(tmp_path):
    db = tmp_path / "fleet.sqlite3"
    with Store(db) as store:  # stored before ingest bounded records: 20 inventories of 1 MiB each, 20 MiB in all
        for d in range(20):
            store.upsert_device(pb.DeviceInventory(device_id=f"big-{d:02d}", hostname="big",
                                                   llama_system_info="x" * (1 << 20)))
    server = BackgroundCoordinator(db)
    server.start()
    try:
        reply = fleet_stub(server).ListDevices(pb.ListDevicesRequest(), timeout=30)
        assert 0 < len(reply.devices) < 20 and reply.ByteSize() < MAX_MESSAGE_BYTES // 2 and reply.next_page_token
        env = {"FLEETFIT_TOKEN": server.operator_token, "FLEETFIT_INSECURE": "1",
               "FLEETFIT_COORDINATOR": server.address}
        done = run_cli("fleetfit", "devices", "--format", "csv", env=env, timeout=120)
        assert done.returncode == 0, done.stderr
        assert sorted(line.split(",")[0] for line in done.stdout.splitlines()[1:]) == [f"big-{d:02d}" for d in range(20)]
    finally:
        server.stop()
