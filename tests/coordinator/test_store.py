"""The SQLite store, on a real database file."""

import pytest

from fleetfit.coordinator.store import ConflictingResult, Store, UnknownDevice
from fleetfit.v1 import fleetfit_pb2 as pb


def result(result_id: str, device_id: str = "dev-1", quant: str = "Q4_0", decode: float = 100.0) -> pb.ProfileResult:
    return pb.ProfileResult(result_id=result_id, device_id=device_id, model_name="smollm2-135m", quant=quant,
                            request=pb.ProfileRequest(backend="llama.cpp", quant=quant),
                            decode_tokens_per_s=pb.Stat(mean=decode, samples=[decode]))


@pytest.fixture()
def store(tmp_path):
    s = Store(tmp_path / "fleet.sqlite3")
    s.upsert_device(pb.DeviceInventory(device_id="dev-1", hostname="box", ram_total_bytes=8 << 30))
    yield s
    s.close()


def test_results_are_ingested_idempotently(store):
    assert store.add_result(result("r1")) is False
    assert store.add_result(result("r1")) is True  # same id, same payload: acknowledged duplicate
    with pytest.raises(ConflictingResult):
        store.add_result(result("r1", decode=5.0))
    assert [r.decode_tokens_per_s.mean for r in store.results()] == [100.0]


def test_everything_survives_reopening(store, tmp_path):
    store.add_result(result("r1"))
    job = store.enqueue("dev-1", pb.ProfileRequest(quant="F16"))
    store.close()
    again = Store(tmp_path / "fleet.sqlite3")
    assert [r.result_id for r in again.results()] == ["r1"]
    assert [d.inventory.hostname for d in again.devices()] == ["box"]
    assert again.jobs([job])[0].state == "queued"
    again.close()


def test_jobs_are_claimed_oldest_first_once(store):
    first = store.enqueue("dev-1", pb.ProfileRequest(quant="F16"))
    second = store.enqueue("dev-1", pb.ProfileRequest(quant="Q8_0"))
    assert store.claim_job("dev-1").job_id == first
    assert store.claim_job("dev-1").job_id == second
    assert store.claim_job("dev-1") is None
    store.add_result(result("r1"), job_id=first)
    failed = result("r2")
    failed.failure, failed.error = pb.FAILURE_KIND_OOM, "killed"
    store.add_result(failed, job_id=second)
    states = {j.job_id: (j.state, j.result_id, j.error) for j in store.jobs([first, second])}
    assert states == {first: ("done", "r1", ""), second: ("failed", "r2", "killed")}


def test_unknown_device_cannot_poll(store):
    with pytest.raises(UnknownDevice):
        store.touch_device("dev-404")
