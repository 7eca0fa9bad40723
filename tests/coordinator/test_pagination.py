"""Lists are paged: with many devices and results and a small page size every item arrives exactly once, and
records stored large (before ingest bounded them) cannot push an answer past the message limit."""

import pytest

from fleetfit.coordinator import cli
from fleetfit.coordinator.harness import BackgroundCoordinator
from fleetfit.coordinator.service.store import Store
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


def _token(data: bytes) -> str:
    import base64

    return base64.urlsafe_b64encode(data).decode()


# tokens no coordinator gave: the wrong JSON types, the wrong item types, not base64, not UTF-8, nested past the
# JSON parser's depth, far too long
MADE_UP_TOKENS = [_token(b"5"), _token(b"{}"), _token(b"[]"), _token(b"null"), _token(b'"board-001"'),
                  _token(b"[1]"), _token(b'[["board-001"]]'), _token(b"[true, \"x\"]"), _token(b'{"a": 1}'),
                  "!!not-base64!!", _token(b"\xff\xfe\x00"), _token(b"[" * 200_000), _token(b'["x"]') * 2000]


def _campaign_request(**fields) -> pb.CreateCampaignRequest:
    spec = pb.CampaignSpec(models=["smollm2-135m"], quants=["Q4_0"], backends=["llama.cpp"],
                           template=pb.ProfileRequest(n_prompt=16, n_gen=4, repetitions=1))
    return pb.CreateCampaignRequest(spec=spec, **fields)


def test_a_made_up_page_token_is_a_bad_argument_on_every_paged_rpc(many):
    import grpc

    from tests.agent.test_hostile_inputs import valid_gguf
    from tests.coordinator.test_model_store import put_all

    fleet = fleet_stub(many)
    campaign_id = [fleet.CreateCampaign(_campaign_request(), timeout=10).campaign_id for _ in range(2)][0]
    (many.state_dir / "tiny.gguf").write_bytes(valid_gguf())
    for name in ("tiny-a", "tiny-b"):
        assert put_all(fleet, many.state_dir / "tiny.gguf", name).HasField("model")
    calls = [(fleet.ListDevices, pb.ListDevicesRequest), (fleet.GetLimitTable, pb.GetLimitTableRequest),
             (fleet.ListCampaigns, pb.ListCampaignsRequest), (fleet.ListModels, pb.ListModelsRequest),
             (fleet.Fit, lambda **kw: pb.FitRequest(model_name="smollm2-135m", quant="Q4_0", **kw)),
             (fleet.GetCampaign, lambda **kw: pb.GetCampaignRequest(campaign_id=campaign_id, **kw))]
    # every request of the service with a page_token is one of those above: a list added later is paged too
    paged = {m.input_type.name for m in pb.DESCRIPTOR.services_by_name["FleetService"].methods
             if "page_token" in m.input_type.fields_by_name}
    assert paged == {request(page_size=1).DESCRIPTOR.name for _, request in calls}, paged
    for call, request in calls:
        for token in MADE_UP_TOKENS:
            with pytest.raises(grpc.RpcError) as caught:
                call(request(page_token=token), timeout=10)
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (call, token[:40], caught.value.details())
            assert "page_token is not one this coordinator gave" in caught.value.details()
        # a token it gave is still taken
        first = call(request(page_size=1), timeout=10)
        assert first.next_page_token and call(request(page_size=1, page_token=first.next_page_token), timeout=10)


def test_every_list_rpc_is_paged_or_bounded(many):
    """A reply that lists things either pages them or bounds what a request may ask for: the lists of the
    service's replies are each a paged one's, or GetJobs' (at most MAX_JOB_IDS ids a call), or ListTables' names."""
    import grpc

    from fleetfit.coordinator.service.server import MAX_JOB_IDS

    service = pb.DESCRIPTOR.services_by_name["FleetService"]
    listing = {m.name for m in service.methods if any(f.is_repeated and f.message_type is not None
                                                       for f in m.output_type.fields)}
    paged = {m.name for m in service.methods if "page_token" in m.input_type.fields_by_name}
    assert listing - paged <= {"GetJobs", "ListTables", "GetTable", "CreateCampaign"}, listing - paged
    fleet = fleet_stub(many)
    job_ids = list(fleet.SubmitProfile(pb.SubmitProfileRequest(request=pb.ProfileRequest(
        model=pb.ModelRef(name="smollm2-135m"), quant="Q4_0", backend="llama.cpp", n_prompt=16, n_gen=4,
        repetitions=1)),
                                       timeout=10).job_ids)
    assert len(fleet.GetJobs(pb.GetJobsRequest(job_ids=job_ids + ["nope"] * (MAX_JOB_IDS - len(job_ids))),
                             timeout=10).jobs) == len(job_ids)
    with pytest.raises(grpc.RpcError) as caught:
        fleet.GetJobs(pb.GetJobsRequest(job_ids=[f"j{i}" for i in range(40_000)]), timeout=10)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "at most 1000 job_ids" in caught.value.details()


def test_max_attempts_outside_its_bound_is_a_bad_argument(many):
    import grpc

    from fleetfit.models.job_bounds import MAX_ATTEMPTS

    fleet = fleet_stub(many)
    for bad in (-5, -1, MAX_ATTEMPTS[1] + 1, 10**9, 2**31 - 1):
        with pytest.raises(grpc.RpcError) as caught:
            fleet.CreateCampaign(_campaign_request(max_attempts=bad), timeout=10)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "max_attempts must be" in caught.value.details() and "\n" not in caught.value.details()
    for good in (0, MAX_ATTEMPTS[0], MAX_ATTEMPTS[1]):  # 0: the coordinator's default
        assert fleet.CreateCampaign(_campaign_request(max_attempts=good), timeout=10).campaign_id
    env = {"FLEETFIT_TOKEN": many.operator_token, "FLEETFIT_INSECURE": "1", "FLEETFIT_COORDINATOR": many.address}
    for bad in ("-5", "0", "1000000000"):
        done = run_cli("fleetfit", "profile", "--models", "smollm2-135m", "--max-attempts", bad, env=env, timeout=60)
        assert done.returncode != 0 and "Traceback" not in done.stderr and "--max-attempts must be" in done.stderr


def devices_unable_to_run(db_url: str, reason: str, n: int = 40) -> None:
    """`n` devices whose one backend is unavailable for `reason` (a device's own text)."""
    with Store(db_url) as store:
        for d in range(n):
            store.upsert_device(pb.DeviceInventory(
                device_id=f"node-{d:02d}", hostname=f"node-{d:02d}", ram_total_bytes=8 << 30,
                backends=[pb.BackendInfo(name="llama.cpp", available=False, reason=reason)]))


def test_the_reply_to_a_new_campaign_keeps_a_pages_worth_of_skipped_reasons(db_url, tmp_path, monkeypatch):
    """Every device's reason is its own text (up to ingest's bound): however many devices skip, CreateCampaign's
    reply keeps a page's bytes of them and names the command that pages the rest."""
    from fleetfit.coordinator.service import server as coordinator_server

    monkeypatch.setattr(coordinator_server, "PAGE_BYTES", 20_000)  # 40 devices' 4 kB reasons: 160 kB
    reason = "driver mismatch " + "x" * 4080
    devices_unable_to_run(db_url, reason)
    server = BackgroundCoordinator(db_url, state_dir=tmp_path / "state")
    server.start()
    try:
        created = fleet_stub(server).CreateCampaign(_campaign_request(), timeout=10)
        assert created.ByteSize() < 20_000 + 5000 and 1 < len(created.skipped) < 40, created.ByteSize()
        assert created.skipped[-1].endswith(f"more devices' skipped combinations: fleetfit campaign status "
                                            f"{created.campaign_id}"), created.skipped[-1]
        shown = len(created.skipped) - 1
        assert f"... and {40 - shown} more" in created.skipped[-1]
        campaign = cli._campaign(fleet_stub(server), created.campaign_id)  # every device's reason is still there
        assert all(len(d.skipped) == 1 and reason in d.skipped[0] for d in campaign.devices) and \
            len(campaign.devices) == 40
    finally:
        server.stop()


def test_campaigns_are_paged_and_a_device_reason_is_kept_once_per_reason(db_url, tmp_path):
    """Devices whose one backend is unavailable for a 4 kB reason, asked for many combinations in many campaigns:
    the reason is kept once per device, ListCampaigns carries totals in pages, GetCampaign pages the devices, and
    the CLI follows the pages."""
    import grpc

    reason = "driver mismatch " + "x" * 4080  # a device's own text, at ingest's bound for a string
    devices_unable_to_run(db_url, reason)
    server = BackgroundCoordinator(db_url, state_dir=tmp_path / "state")
    server.start()
    try:
        fleet = fleet_stub(server)
        spec = pb.CampaignSpec(models=["smollm2-135m", "tinyllama-1.1b", "llama-3.2-1b"],
                               quants=["Q4_0", "Q8_0", "Q4_K_M", "Q5_K_M", "Q6_K", "F16"], backends=["llama.cpp"],
                               template=pb.ProfileRequest(n_prompt=16, n_gen=4, repetitions=1))
        ids = []
        for _ in range(9):
            created = fleet.CreateCampaign(pb.CreateCampaignRequest(spec=spec), timeout=10)
            assert len(created.skipped) == 40 and all(line.count(reason) == 1 for line in created.skipped)
            assert created.ByteSize() < 40 * 5000
            ids.append(created.campaign_id)

        listed = cli._pages(fleet.ListCampaigns, pb.ListCampaignsRequest(page_size=2), "campaigns")
        assert [c.campaign_id for c in listed] == ids  # oldest first, each once
        whole = fleet.ListCampaigns(pb.ListCampaignsRequest(), timeout=10)
        assert whole.ByteSize() < 100_000 and not whole.next_page_token and not whole.campaigns[0].devices

        first = fleet.GetCampaign(pb.GetCampaignRequest(campaign_id=ids[0], page_size=7), timeout=10)
        assert len(first.campaign.devices) == 7 and first.next_page_token
        campaign = cli._campaign(fleet, ids[0])
        assert [d.device_id for d in campaign.devices] == [f"node-{d:02d}" for d in range(40)]
        for device in campaign.devices:  # 18 combinations, one reason: one line naming them all
            assert len(device.skipped) == 1 and device.skipped[0].count(reason) == 1
            assert device.skipped[0].split(": ")[0].count("llama.cpp ") == 18
        with pytest.raises(grpc.RpcError) as caught:
            fleet.GetCampaign(pb.GetCampaignRequest(campaign_id=ids[0], page_size=-1), timeout=10)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT

        env = {"FLEETFIT_TOKEN": server.operator_token, "FLEETFIT_INSECURE": "1", "FLEETFIT_COORDINATOR": server.address}
        done = run_cli("fleetfit", "campaigns", env=env, timeout=60)
        assert done.returncode == 0 and all(i in done.stdout for i in ids), done.stderr
        done = run_cli("fleetfit", "campaign", "status", ids[-1], env=env, timeout=60)
        assert done.returncode == 0 and all(f"node-{d:02d}" in done.stdout for d in range(40)), done.stderr
    finally:
        server.stop()
