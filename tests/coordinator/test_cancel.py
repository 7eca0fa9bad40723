"""Cancelling a campaign in the store, on real SQLite and PostgreSQL: queued jobs dropped at once; a running job
stays leased to its device, whose next heartbeat hears of it, until the agent reports it (cancelled when it was
stopped, done when it finished first: a measurement is never thrown away) or its lease runs out; idempotent."""

import time

import pytest

from fleetfit.coordinator.service import campaigns
from fleetfit.coordinator.service.store import StaleLease, Store, UnknownCampaign
from fleetfit.v1 import fleetfit_pb2 as pb
from fleetfit.v1.words import JOB_STATE

from tests.coordinator.test_store import result, store  # noqa: F401  (the store fixture: dev-1 registered)


def campaign(store: Store, jobs: int) -> str:
    spec = pb.CampaignSpec(models=["smollm2-135m"], quants=["Q4_0"], backends=["llama.cpp"])
    return store.create_campaign("", spec, [("dev-1", pb.ProfileRequest(quant=f"Q{n}")) for n in range(jobs)])


def states(store: Store, campaign_id: str) -> list[str]:
    return [JOB_STATE.word(j.job_state) for j in store.campaign_jobs(campaign_id)]


def test_queued_jobs_are_dropped_and_running_ones_stopped_through_their_heartbeat(store):
    campaign_id, other = campaign(store, 4), campaign(store, 1)
    stopped, finished = store.claim_job("dev-1"), store.claim_job("dev-1")
    assert store.renew_lease("dev-1", stopped.job_id, stopped.fence) is False  # not cancelled yet
    assert store.cancel_campaign(campaign_id) == (2, 2)
    assert store.cancel_campaign(campaign_id) == (0, 0)  # idempotent
    assert states(store, campaign_id) == ["running", "running", "cancelled", "cancelled"]
    assert all("cancelled by the operator" in j.error for j in store.campaign_jobs(campaign_id))
    assert store.renew_lease("dev-1", stopped.job_id, stopped.fence) is True  # the agent hears of it
    assert store.claim_job("dev-1").job_id == store.campaign_jobs(other)[0].job_id  # dropped jobs are never leased
    stop = result("r-stopped")
    stop.failure, stop.error = pb.FAILURE_KIND_ERROR, "cancelled by the operator during the run"
    store.add_result(stop, stopped.job_id, stopped.fence)
    store.add_result(result("r-finished"), finished.job_id, finished.fence)  # finished before it heard
    assert states(store, campaign_id) == ["cancelled", "done", "cancelled", "cancelled"]
    assert {r.result_id for r in store.results()} == {"r-stopped", "r-finished"}  # both results stored
    status = campaigns.statuses(store, campaign_id)[0]
    assert (status.cancelled, status.done, status.running, status.queued) == (3, 1, 0, 0)
    assert (status.devices[0].cancelled, status.devices[0].done) == (3, 1)
    with pytest.raises(StaleLease):
        store.renew_lease("dev-1", stopped.job_id, stopped.fence)
    with pytest.raises(UnknownCampaign):
        store.cancel_campaign("no-such-campaign")


def test_a_cancelled_job_given_back_or_silent_is_cancelled_not_queued_again(store):
    campaign_id = campaign(store, 2)
    given_back = store.claim_job("dev-1", lease_s=60)
    store.claim_job("dev-1", lease_s=0.01)  # its agent goes silent
    store.cancel_campaign(campaign_id)
    store.release_job("dev-1", given_back.job_id, given_back.fence)  # the agent was stopping anyway
    time.sleep(0.05)
    assert store.expire_leases() == 1
    assert states(store, campaign_id) == ["cancelled", "cancelled"]
    assert "lease expired" in store.campaign_jobs(campaign_id)[1].error
    assert store.claim_job("dev-1") is None
