"""The store, on a real SQLite file and on a real PostgreSQL schema (the same tests for both)."""

import sqlite3
import time

import pytest

from fleetfit.coordinator.service.db import MIGRATIONS, Database
from fleetfit.coordinator.service.store import (LOST_AFTER_S, BadToken, ConflictingResult, ForeignJob, StaleLease, Store,
                                        UnknownDevice)
from fleetfit.v1 import fleetfit_pb2 as pb
from fleetfit.v1.words import DEVICE_STATUS, JOB_STATE


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
    assert again.jobs([job])[0].job_state == pb.JOB_STATE_QUEUED
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
    states = {j.job_id: (JOB_STATE.word(j.job_state), j.result_id, j.error) for j in store.jobs([first, second])}
    assert states == {first: ("done", "r1", ""), second: ("failed", "r2", "killed")}


def test_unknown_device_cannot_poll(store):
    with pytest.raises(UnknownDevice):
        store.touch_device("dev-404")


def test_an_expired_lease_is_requeued_and_the_old_holder_is_fenced_off(store):
    job_id = store.enqueue("dev-1", pb.ProfileRequest(quant="F16"))
    first = store.claim_job("dev-1", lease_s=0.05)
    time.sleep(0.1)
    assert store.expire_leases() == 1
    assert store.jobs([job_id])[0].job_state == pb.JOB_STATE_QUEUED
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
    assert (JOB_STATE.word(status.job_state), status.result_id, status.attempts) == ("done", "on-time", 2)


def test_a_job_fails_after_its_attempts_with_the_reason(store):
    job_id = store.enqueue("dev-1", pb.ProfileRequest(quant="F16"), max_attempts=2)
    for _ in range(2):
        assert store.claim_job("dev-1", lease_s=-1).job_id == job_id  # already expired
        store.expire_leases()
    status = store.jobs([job_id])[0]
    assert JOB_STATE.word(status.job_state) == "failed" and "lease expired on each of 2 attempts" in status.error
    assert store.claim_job("dev-1") is None


def test_a_released_job_goes_back_without_using_an_attempt(store):
    job_id = store.enqueue("dev-1", pb.ProfileRequest(quant="F16"))
    job = store.claim_job("dev-1")
    store.release_job("dev-1", job_id, job.fence)
    assert (store.jobs([job_id])[0].job_state, store.jobs([job_id])[0].attempts) == (pb.JOB_STATE_QUEUED, 0)
    with pytest.raises(StaleLease):
        store.release_job("dev-1", job_id, job.fence)


def test_another_device_cannot_report_a_job(store):
    store.upsert_device(pb.DeviceInventory(device_id="dev-2"))
    job_id = store.enqueue("dev-1", pb.ProfileRequest(quant="F16"))
    job = store.claim_job("dev-1")
    with pytest.raises(ForeignJob):
        store.add_result(result("x", device_id="dev-2"), job_id=job_id, fence=job.fence)
    with pytest.raises(ForeignJob):
        store.add_result(result("y"), job_id="no-such-job", fence=1)
    assert store.result_count() == 0 and [d.results for d in store.devices()] == [0, 0]


def test_devices_carry_their_result_count_and_whether_they_are_in_touch(store):
    store.add_result(result("r1"))
    store.add_result(result("r1"))  # an acknowledged duplicate is not counted twice
    store.add_result(result("r2", quant="F16"))
    (device,) = store.devices()
    assert (device.results, DEVICE_STATUS.word(device.device_status)) == (2, "online")
    assert store.devices(now=time.time() + LOST_AFTER_S + 1)[0].device_status == pb.DEVICE_STATUS_LOST
    assert store.devices("box") == []  # keyed by id only: a hostname is a name (coordinator/answers/devices.py finds by it)
    assert store.devices("dev-1")[0].inventory.hostname == "box" and store.devices("nowhere") == []
    assert [r.result_id for r in store.results(device_id="dev-1")] == ["r1", "r2"]
    assert store.results(device_id="dev-2") == [] and [r.result_id for r in store.results("smollm2-135m", "dev-1")] == ["r1", "r2"]


def test_a_result_from_an_unregistered_device_is_not_stored(store):
    with pytest.raises(UnknownDevice):
        store.add_result(result("r1", device_id="dev-404"))
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
    campaign_id = store.create_campaign("arch=x86_64", spec, [("dev-1", pb.ProfileRequest(quant="Q4_0"))],
                                        skipped={"dev-2": ["torch smollm2-135m Q4_0: torch does not take it"]})
    (found,) = store.campaigns()
    assert (found.campaign_id, found.selector, list(found.spec.quants)) == (campaign_id, "arch=x86_64", ["Q4_0"])
    assert found.skipped == {"dev-2": ["torch smollm2-135m Q4_0: torch does not take it"]}
    assert store.campaign(campaign_id) == found and store.campaign("nope") is None
    assert [JOB_STATE.word(j.job_state) for j in store.campaign_jobs(campaign_id)] == ["queued"]


def test_the_result_counter_migration_counts_what_devices_already_have(tmp_path):
    path = tmp_path / "v2.sqlite3"
    old = sqlite3.connect(path)
    for script in MIGRATIONS[:2]:
        old.executescript(script)
    old.executescript("CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, applied REAL NOT NULL);"
                      "INSERT INTO schema_migrations VALUES (1, 0), (2, 0);")
    for device_id in ("dev-1", "dev-2"):
        old.execute("INSERT INTO devices VALUES (?, ?, 1, 1)",
                    (device_id, pb.DeviceInventory(device_id=device_id).SerializeToString()))
    for n in range(3):
        old.execute("INSERT INTO results VALUES (?, 'dev-1', NULL, 'm', 'Q4_0', 'llama.cpp', 0, ?, x'')", (f"r{n}", n))
    old.commit()
    old.close()
    with Store(path) as store:
        assert {d.inventory.device_id: d.results for d in store.devices()} == {"dev-1": 3, "dev-2": 0}


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
