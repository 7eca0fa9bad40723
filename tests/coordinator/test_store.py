"""The store, on a real SQLite file and on a real PostgreSQL schema (the same tests for both)."""

import sqlite3
import time

import pytest

from fleetfit.coordinator.db import MIGRATIONS, Database
from fleetfit.coordinator.store import BadToken, ConflictingResult, StaleLease, Store, UnknownDevice
from fleetfit.v1 import fleetfit_pb2 as pb


def result(result_id: str, device_id: str = "dev-1", quant: str = "Q4_0", decode: float = 100.0) -> pb.ProfileResult:
    return pb.ProfileResult(result_id=result_id, device_id=device_id, model_name="smollm2-135m", quant=quant,
                            request=pb.ProfileRequest(backend="llama.cpp", quant=quant),
                            decode_tokens_per_s=pb.Stat(mean=decode, samples=[decode]))


@pytest.fixture()
def store(db_url):
    s = Store(db_url)
    s.upsert_device(pb.DeviceInventory(device_id="dev-1", hostname="box", ram_total_bytes=8 << 30))
    yield s
    s.close()


def test_results_are_ingested_idempotently(store):
    assert store.add_result(result("r1")) is False
    assert store.add_result(result("r1")) is True  # same id, same payload: acknowledged duplicate
    with pytest.raises(ConflictingResult):
        store.add_result(result("r1", decode=5.0))
    assert [r.decode_tokens_per_s.mean for r in store.results()] == [100.0]
    assert store.result_count() == 1


def test_everything_survives_reopening(store, db_url):
    store.add_result(result("r1"))
    job = store.enqueue("dev-1", pb.ProfileRequest(quant="F16"))
    store.close()
    again = Store(db_url)  # migrating a current database changes nothing
    assert [r.result_id for r in again.results()] == ["r1"]
    assert [d.inventory.hostname for d in again.devices()] == ["box"]
    assert again.jobs([job])[0].state == "queued"
    assert again.db.query("SELECT COUNT(*) FROM schema_migrations")[0][0] == len(MIGRATIONS)
    again.close()


def test_jobs_are_claimed_oldest_first_once(store):
    first = store.enqueue("dev-1", pb.ProfileRequest(quant="F16"))
    second = store.enqueue("dev-1", pb.ProfileRequest(quant="Q8_0"))
    a, b = store.claim_job("dev-1"), store.claim_job("dev-1")
    assert (a.job_id, b.job_id) == (first, second) and a.fence == b.fence == 1
    assert store.claim_job("dev-1") is None
    store.add_result(result("r1"), job_id=first, fence=a.fence)
    failed = result("r2")
    failed.failure, failed.error = pb.FAILURE_KIND_OOM, "killed"
    store.add_result(failed, job_id=second, fence=b.fence)
    states = {j.job_id: (j.state, j.result_id, j.error) for j in store.jobs([first, second])}
    assert states == {first: ("done", "r1", ""), second: ("failed", "r2", "killed")}


def test_unknown_device_cannot_poll(store):
    with pytest.raises(UnknownDevice):
        store.touch_device("dev-404")


def test_an_expired_lease_is_requeued_and_the_old_holder_is_fenced_off(store):
    job_id = store.enqueue("dev-1", pb.ProfileRequest(quant="F16"))
    first = store.claim_job("dev-1", lease_s=0.05)
    time.sleep(0.1)
    assert store.expire_leases() == 1
    assert store.jobs([job_id])[0].state == "queued"
    second = store.claim_job("dev-1", lease_s=30)
    assert second.job_id == job_id and second.fence == first.fence + 1
    with pytest.raises(StaleLease):
        store.renew_lease("dev-1", job_id, first.fence)
    with pytest.raises(StaleLease):  # the late report of the lost attempt is refused and not stored
        store.add_result(result("late"), job_id=job_id, fence=first.fence)
    store.renew_lease("dev-1", job_id, second.fence)
    store.add_result(result("on-time"), job_id=job_id, fence=second.fence)
    assert [r.result_id for r in store.results()] == ["on-time"]
    status = store.jobs([job_id])[0]
    assert (status.state, status.result_id, status.attempts) == ("done", "on-time", 2)


def test_a_job_fails_after_its_attempts_with_the_reason(store):
    job_id = store.enqueue("dev-1", pb.ProfileRequest(quant="F16"), max_attempts=2)
    for _ in range(2):
        assert store.claim_job("dev-1", lease_s=-1).job_id == job_id  # already expired
        store.expire_leases()
    status = store.jobs([job_id])[0]
    assert status.state == "failed" and "lease expired on each of 2 attempts" in status.error
    assert store.claim_job("dev-1") is None


def test_a_released_job_goes_back_without_using_an_attempt(store):
    job_id = store.enqueue("dev-1", pb.ProfileRequest(quant="F16"))
    job = store.claim_job("dev-1")
    store.release_job("dev-1", job_id, job.fence)
    assert (store.jobs([job_id])[0].state, store.jobs([job_id])[0].attempts) == ("queued", 0)
    with pytest.raises(StaleLease):
        store.release_job("dev-1", job_id, job.fence)


def test_another_device_cannot_report_a_job(store):
    store.upsert_device(pb.DeviceInventory(device_id="dev-2"))
    job_id = store.enqueue("dev-1", pb.ProfileRequest(quant="F16"))
    job = store.claim_job("dev-1")
    with pytest.raises(StaleLease):
        store.add_result(result("x", device_id="dev-2"), job_id=job_id, fence=job.fence)
    assert store.result_count() == 0


def test_join_tokens_are_spent_once_and_expire(store):
    token = store.create_join_token({"site": "lab"}, expires_s=60)
    secret = store.redeem_join_token(token, "dev-9")
    assert len(secret) > 30 and store.agent_secret_hash("dev-9") not in (None, secret)
    assert store.device_labels()["dev-9"] == {"site": "lab"}
    with pytest.raises(BadToken, match="already used"):
        store.redeem_join_token(token, "dev-10")
    with pytest.raises(BadToken, match="expired"):
        store.redeem_join_token(store.create_join_token({}, expires_s=-1), "dev-10")
    with pytest.raises(BadToken, match="unknown"):
        store.redeem_join_token("made-up", "dev-10")
    assert store.agent_secret_hash("dev-10") is None
    operator = store.add_operator_token()
    assert store.is_operator_token(operator) and not store.is_operator_token(token)


def test_campaign_jobs_are_stored_together(store):
    spec = pb.CampaignSpec(models=["smollm2-135m"], quants=["Q4_0"], backends=["llama.cpp"])
    campaign_id = store.create_campaign("arch=x86_64", spec, [("dev-1", pb.ProfileRequest(quant="Q4_0"))])
    (found_id, selector, _, found_spec), = store.campaigns()
    assert (found_id, selector, list(found_spec.quants)) == (campaign_id, "arch=x86_64", ["Q4_0"])
    assert [j.state for j in store.campaign_jobs(campaign_id)] == ["queued"]


def test_a_database_from_before_migrations_is_brought_up_to_date(tmp_path):
    path = tmp_path / "old.sqlite3"
    old = sqlite3.connect(path)
    old.executescript(MIGRATIONS[0])
    old.execute("INSERT INTO jobs (job_id, device_id, request, state, created, updated) "
                "VALUES ('j1', 'dev-1', x'', 'queued', 1, 1)")
    old.commit()
    old.close()
    store = Store(path)
    job = store.claim_job("dev-1")
    assert (job.job_id, job.fence) == ("j1", 1)
    store.close()
    assert Database(path).migrate() == len(MIGRATIONS)
