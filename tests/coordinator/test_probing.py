"""A device registered before its capability trials (inventory.trials_pending): listed as probing by the one status
rule, given the campaign jobs that what it reported allows, and, once its trials are reported, its queued campaign
jobs that they rule out skipped with the reason (campaigns.after_trials). On SQLite and PostgreSQL."""

import concurrent.futures

import pytest

from fleetfit.coordinator.service import campaigns
from fleetfit.coordinator.service.store import LOST_AFTER_S, Store
from fleetfit.v1 import fleetfit_pb2 as pb
from fleetfit.v1.words import DEVICE_STATUS

CUDA_ONLY = "fp16 runs on CUDA only"


def inventory(device_id: str, pending: bool, torch_available: bool = True) -> pb.DeviceInventory:
    """llama.cpp and torch import here; with the trials done, llama.cpp runs Q4_0 on the CPU and torch runs fp32
    but not fp16 there (as torch's own trial says)."""
    llama = pb.BackendInfo(name="llama.cpp", available=True, version="0.3")
    torch = pb.BackendInfo(name="torch", available=torch_available, version="2.5",
                           reason="" if torch_available else "module 'torch' is not installed")
    if not pending:
        llama.capabilities.add(device="cpu", precision="Q4_0", supported=True)
        if torch_available:
            torch.capabilities.add(device="cpu", precision="fp32", supported=True)
            torch.capabilities.add(device="cpu", precision="fp16", supported=False, reason=CUDA_ONLY)
    return pb.DeviceInventory(device_id=device_id, hostname="board", arch="aarch64", ram_total_bytes=2**31,
                              backends=[llama, torch], trials_pending=pending)


SPEC = pb.CampaignSpec(models=["smollm2-135m"], quants=["Q4_0", "fp16", "fp32"], backends=["llama.cpp", "torch"],
                       template=pb.ProfileRequest(n_prompt=16, n_gen=4, repetitions=1))


def create(store: Store, device_ids: list[str]) -> str:
    plan = campaigns.expand(SPEC, [], [d for d in store.devices() if d.inventory.device_id in device_ids])
    return store.create_campaign("", SPEC, plan.jobs, skipped=plan.skipped)


def queued(store: Store, device_id: str) -> list[str]:
    return sorted(f"{r.backend} {r.quant}" for _, r in store.queued_campaign_jobs(device_id))


@pytest.mark.parametrize("pending, silent_s, word", [
    (True, 0, "probing"), (False, 0, "online"), (True, LOST_AFTER_S - 1, "probing"),
    (True, LOST_AFTER_S + 1, "lost"), (False, LOST_AFTER_S + 1, "lost"),
    (True, -(LOST_AFTER_S + 1), "lost"),  # a last contact in the future is no contact
])
def test_one_status_rule_probing_is_online_with_trials_pending(db_url, pending, silent_s, word):
    with Store(db_url) as store:
        store.upsert_device(inventory("b-1", pending))
        (device,) = store.devices(now=store.devices()[0].last_seen_unix_s + silent_s)
        assert DEVICE_STATUS.word(device.device_status) == word


def test_a_probing_device_gets_what_it_reported_and_its_trials_then_skip_what_they_rule_out(db_url):
    with Store(db_url) as store:
        for device_id in ("b-1", "b-2", "b-3"):
            store.upsert_device(inventory(device_id, pending=True))
        store.upsert_device(inventory("b-4", pending=False))
        campaign_id = create(store, ["b-1", "b-2", "b-3", "b-4"])
        # probing: every combination its backends take waits for the trials; done: fp16 on torch is ruled out
        assert [queued(store, d) for d in ("b-1", "b-2", "b-3")] == [["llama.cpp Q4_0", "torch fp16", "torch fp32"]] * 3
        assert queued(store, "b-4") == ["llama.cpp Q4_0", "torch fp32"]
        direct = store.enqueue("b-1", pb.ProfileRequest(model=pb.ModelRef(name="smollm2-135m"), backend="torch",
                                                        quant="fp16"))
        leased = [store.claim_job("b-2").request.quant for _ in range(3)]  # b-2 runs all three already
        assert campaigns.after_trials(store, "b-1") == 0  # still probing: nothing decided

        store.upsert_device(inventory("b-1", pending=False))
        store.upsert_device(inventory("b-2", pending=False))
        store.upsert_device(inventory("b-3", pending=False, torch_available=False))  # torch went away meanwhile
        assert [campaigns.after_trials(store, d) for d in ("b-1", "b-2", "b-3", "b-4")] == [1, 0, 2, 0]
        assert [campaigns.after_trials(store, d) for d in ("b-1", "b-3")] == [0, 0]  # once each

        assert queued(store, "b-1") == ["llama.cpp Q4_0", "torch fp32"] and queued(store, "b-3") == ["llama.cpp Q4_0"]
        assert sorted(leased) == ["Q4_0", "fp16", "fp32"]  # leased before the trials came: left to run
        assert [j for j, _ in store.open_jobs("b-1") if j == direct]  # not a campaign's: untouched
        skipped = store.campaign(campaign_id).skipped
        (b1,) = [s for s in skipped["b-1"] if "fp16" in s and "capability trials" in s]
        assert f"torch smollm2-135m fp16: torch cannot run fp16 on cpu: {CUDA_ONLY}" in b1
        b3 = [s for s in skipped["b-3"] if "capability trials" in s]
        assert len(b3) == 2 and all("torch is not available there (module 'torch' is not installed)" in s for s in b3)
        assert "b-2" not in skipped or not [s for s in skipped["b-2"] if "capability trials" in s]
        status = campaigns.statuses(store, campaign_id)[0]
        assert (status.queued, status.running) == (5, 3)  # queued: b-1 2, b-3 1, b-4 2; running: b-2's 3
        assert sum(d.queued for d in status.devices) == status.queued


def test_trials_reported_at_once_by_many_devices_lose_no_skipped_reason(db_url):
    devices = [f"b-{n}" for n in range(8)]
    with Store(db_url) as store:
        for device_id in devices:
            store.upsert_device(inventory(device_id, pending=True))
        campaign_id = create(store, devices)
        for device_id in devices:
            store.upsert_device(inventory(device_id, pending=False))
        with concurrent.futures.ThreadPoolExecutor(len(devices)) as pool:
            assert list(pool.map(lambda d: campaigns.after_trials(store, d), devices)) == [1] * len(devices)
        skipped = store.campaign(campaign_id).skipped
        assert all(len([s for s in skipped[d] if "capability trials" in s]) == 1 for d in devices), skipped
        assert sum(len(queued(store, d)) for d in devices) == 2 * len(devices)
