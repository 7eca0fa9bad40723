"""Ingest validation, quotas and the filter where answers read results: a hostile or buggy device cannot store
poison, flood the store, or change other devices' answers — against the real coordinator over loopback gRPC."""

import re
import threading
import uuid

import grpc
import pytest

from fleetfit.agent.outbox import Outbox, flush
from fleetfit.coordinator.answers import fit as fit_answers
from fleetfit.coordinator.service import ingest
from fleetfit.coordinator.answers import tables
from fleetfit.coordinator.harness import BackgroundCoordinator
from fleetfit.coordinator.answers.limits import limit_rows
from fleetfit.coordinator.service.store import QuotaExceeded, Store
from fleetfit.v1 import fleetfit_pb2 as pb
from tests.conftest import Agents, assert_one_line_error, fleet_stub, run_cli
from tests.coordinator.test_scaling import ladder

NAN, INF = float("nan"), float("inf")


def good_result(device_id: str, model: str = "smollm2-135m") -> pb.ProfileResult:
    r = pb.ProfileResult(result_id=str(uuid.uuid4()), device_id=device_id, model_name=model, quant="Q4_0",
                         request=pb.ProfileRequest(backend="llama.cpp", quant="Q4_0"),
                         decode_tokens_per_s=pb.Stat(mean=100.0, stdev=1.0, samples=[99.0, 100.0, 101.0]),
                         load_time_s=0.5, peak_rss_bytes=200 << 20)
    r.power.phases.add(phase="decode", energy_mj=500.0, net_energy_mj=-20.0, average_power_w=5.0, tokens=100)
    return r


def poisoned(edit) -> pb.ProfileResult:
    r = good_result("dev-1")
    edit(r)
    return r


@pytest.mark.parametrize("edit, fragment", [
    (lambda r: r.decode_tokens_per_s.samples.__setitem__(2, NAN),
     "result.decode_tokens_per_s.samples[2] is nan: every figure must be finite"),
    (lambda r: setattr(r.prefill_tokens_per_s, "mean", INF), "result.prefill_tokens_per_s.mean is inf"),
    (lambda r: setattr(r, "load_time_s", -1.0), "result.load_time_s is -1: figures must not be negative"),
    (lambda r: setattr(r.decode_tokens_per_s, "mean", 5e7), "result.decode_tokens_per_s.mean is 5e+07: above"),
    (lambda r: setattr(r, "peak_rss_bytes", 2**50 + 1), "result.peak_rss_bytes is"),
    (lambda r: setattr(r, "wall_s", 90_000.0), "result.wall_s is 90000: above the ceiling of 86400"),
    (lambda r: setattr(r.power.phases[0], "average_power_w", -3.0), "result.power.phases[0].average_power_w is -3"),
    (lambda r: setattr(r, "model_name", "m" * 257), "result.model_name is 257 characters: at most 256"),
    (lambda r: setattr(r, "error", "e" * 5000), "result.error is 5000 characters: at most 4096"),
    (lambda r: setattr(r, "backend_build", "b" * 20000), "result.backend_build is 20000 characters"),
    (lambda r: r.ttft_ms.samples.extend([1.0] * 10_001), "result.ttft_ms.samples has 10001 entries"),
    (lambda r: [r.power.phases.add(phase="decode") for _ in range(1100)], "result.power.phases has 1101 entries"),
    (lambda r: setattr(r, "failure", 77), "result.failure is 77: not a value of FailureKind"),
    (lambda r: setattr(r, "device_id", "dev\x1b[2J"), "device_id 'dev\\x1b[2J' must be 1 to 256 printable"),
    (lambda r: [r.power.declined.append("d" * 4000) for _ in range(300)], "bytes: at most 262144 are accepted"),
    (lambda r: setattr(r, "n_depth", 1024), "result.n_depth is 1024: the request asked for a depth of 0"),
    (lambda r: setattr(r, "n_depth", -5), "result.n_depth is -5: figures must not be negative"),
    (lambda r: setattr(r.request, "decode_depth", 200_000), "decode_depth is 200000: above the ceiling of 131072"),
    (lambda r: r.decode_tokens_per_s.samples.extend([5.0] * 98), "result.decode_tokens_per_s has 101 samples: 1 to 100"),
    (lambda r: r.decode_tokens_per_s.samples.__setitem__(slice(None), [900.0, 950.0, 1000.0]),
     "result.decode_tokens_per_s.mean is 100: outside its samples (900..1000)"),
])
def test_check_result_names_the_field_and_why(edit, fragment):
    with pytest.raises(ingest.Refused) as err:
        ingest.check_result(poisoned(edit))
    assert fragment in str(err.value) and "\n" not in str(err.value)


def test_good_results_and_net_energies_below_zero_pass():
    ingest.check_result(good_result("dev-1"))
    ingest.check_inventory(pb.DeviceInventory(device_id="dev-1", hostname="pi", ram_total_bytes=8 << 30))


def swept_result(device_id: str) -> pb.ProfileResult:
    """A good result with a concurrency sweep at 1 and 4 streams, the second with energy."""
    r = good_result(device_id)
    r.request.parallel[:] = [1, 4]
    r.request.n_prompt, r.request.n_gen = 16, 8
    for n, aggregate in ((1, [100.0, 104.0]), (4, [250.0, 262.0])):
        point = r.serving.add(parallel=n)
        point.aggregate_decode_tokens_per_s.CopyFrom(pb.Stat(mean=sum(aggregate) / 2, stdev=4.2, samples=aggregate))
        point.per_stream_decode_tokens_per_s.CopyFrom(pb.Stat(mean=sum(aggregate) / 2 / n, stdev=4.2 / n,
                                                              samples=[a / n for a in aggregate]))
        point.prefill_tokens_per_s.CopyFrom(pb.Stat(mean=600.0, stdev=1.0, samples=[599.0, 601.0]))
        point.ttft_ms_p50.CopyFrom(pb.Stat(mean=30.0 * n, stdev=0.0, samples=[30.0 * n] * 2))
        point.ttft_ms_p99.CopyFrom(pb.Stat(mean=31.0 * n, stdev=0.0, samples=[31.0 * n] * 2))
        point.peak_memory_bytes.CopyFrom(pb.Stat(mean=150e6 + n * 6e6, stdev=0.0, samples=[150e6 + n * 6e6] * 2))
    r.serving[1].decode_energy_per_token_j = 0.05
    r.serving[1].energy_provenance_kind = pb.PROVENANCE_KIND_MEASURED
    return r


def hostile_sweep(edit) -> pb.ProfileResult:
    r = swept_result("dev-1")
    edit(r)
    return r


def test_a_good_sweep_and_an_unsupported_point_pass():
    ingest.check_result(swept_result("dev-1"))
    r = swept_result("dev-1")
    r.serving[1].Clear()
    r.serving[1].parallel, r.serving[1].unsupported_reason = 4, "llama.cpp could not create a context"
    ingest.check_result(r)


@pytest.mark.parametrize("edit, fragment", [
    (lambda r: setattr(r.serving[1], "parallel", 8), "result.serving[1].parallel is 8: not a stream count the request"),
    (lambda r: setattr(r.serving[1], "parallel", 1), "result.serving[1].parallel is 1: not a stream count"),
    (lambda r: r.serving.append(r.serving[0]), "result.serving has 3 points: the request asked for 2"),
    (lambda r: r.request.parallel.extend(range(100, 120)), "result.request.parallel lists 22 values: at most 16"),
    (lambda r: r.request.parallel.__setitem__(1, 100_000), "result.request.parallel values must be 1..256"),
    (lambda r: r.serving[1].aggregate_decode_tokens_per_s.samples.__setitem__(0, NAN),
     "result.serving[1].aggregate_decode_tokens_per_s.samples[0] is nan"),
    (lambda r: setattr(r.serving[0].ttft_ms_p99, "mean", -1.0), "result.serving[0].ttft_ms_p99.mean is -1"),
    (lambda r: setattr(r.serving[0].ttft_ms_p50, "mean", 1e12), "result.serving[0].ttft_ms_p50.mean is 1e+12: above"),
    (lambda r: setattr(r.serving[1].peak_memory_bytes, "mean", 2.0**60), "peak_memory_bytes.mean is 1.15292e+18"),
    (lambda r: setattr(r.serving[1], "decode_energy_per_token_j", 1e9), "decode_energy_per_token_j is 1e+09: above"),
    (lambda r: r.serving[1].ClearField("ttft_ms_p99"), "result.serving[1].ttft_ms_p99 is missing"),
    (lambda r: r.serving[1].per_stream_decode_tokens_per_s.CopyFrom(r.serving[1].aggregate_decode_tokens_per_s),
     "per_stream_decode_tokens_per_s must be the aggregate over 4 streams"),
    (lambda r: r.serving[0].ttft_ms_p99.samples.__setitem__(0, 1.0), "result.serving[0].ttft_ms_p99 is below its p50"),
    (lambda r: r.serving[0].prefill_tokens_per_s.samples.extend([600.0] * 200), "has 202 samples: 1 to 100"),
    (lambda r: setattr(r.serving[1], "energy_provenance_kind", pb.PROVENANCE_KIND_PREDICTED),
     "energy_provenance is 'predicted'"),
    (lambda r: setattr(r.serving[0], "energy_provenance_kind", pb.PROVENANCE_KIND_MEASURED),
     "empty when no energy is reported"),
    (lambda r: setattr(r.serving[1], "unsupported_reason", "oom"), "is unsupported ('oom') yet carries figures"),
])
def test_a_hostile_sweep_is_refused_naming_the_field(edit, fragment):
    with pytest.raises(ingest.Refused) as err:
        ingest.check_result(hostile_sweep(edit))
    assert fragment in str(err.value) and "\n" not in str(err.value)


def test_check_inventory_bounds_strings_and_lists():
    with pytest.raises(ingest.Refused, match=r"inventory.hostname is 300 characters"):
        ingest.check_inventory(pb.DeviceInventory(device_id="d", hostname="h" * 300))
    with pytest.raises(ingest.Refused, match=r"inventory.gpus has 2000 entries"):
        ingest.check_inventory(pb.DeviceInventory(device_id="d", gpus=[pb.GpuInfo()] * 2000))
    probes = pb.DeviceProbes(bandwidth=[pb.BandwidthProbe(target="cpu", samples_gb_per_s=[1.0, NAN])])
    with pytest.raises(ingest.Refused, match=r"inventory.probes.bandwidth\[0\].samples_gb_per_s\[1\] is nan"):
        ingest.check_inventory(pb.DeviceInventory(device_id="d", probes=probes))


# -- through the real coordinator

@pytest.fixture()
def fleet_of_two(coordinator):
    """Two devices with one hostname and distinct ids: `good` and `bad`, enrolled and registered."""
    agents = Agents(coordinator)
    for device_id in ("lab-good", "lab-bad"):
        agents.Register(pb.RegisterRequest(inventory=pb.DeviceInventory(
            device_id=device_id, hostname="lab", ram_total_bytes=8 << 30)), timeout=5)
    yield agents, fleet_stub(coordinator)
    agents.close()


def devices_by_id(fleet) -> dict[str, pb.Device]:
    return {d.inventory.device_id: d for d in fleet.ListDevices(pb.ListDevicesRequest(), timeout=5).devices}


def test_a_poisoned_report_is_refused_counted_and_harms_no_other_device(fleet_of_two):
    agents, fleet = fleet_of_two
    agents.ReportResult(pb.ReportResultRequest(result=good_result("lab-good")), timeout=5)
    before = devices_by_id(fleet)["lab-good"]
    rows_before = fleet.GetLimitTable(pb.GetLimitTableRequest(), timeout=5).rows
    bad = good_result("lab-bad")
    bad.decode_tokens_per_s.samples[1] = NAN
    for _ in range(3):
        with pytest.raises(grpc.RpcError) as err:
            agents.ReportResult(pb.ReportResultRequest(result=bad), timeout=5)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert err.value.details() == "result.decode_tokens_per_s.samples[1] is nan: every figure must be finite"
    with pytest.raises(grpc.RpcError) as err:
        agents.Register(pb.RegisterRequest(inventory=pb.DeviceInventory(device_id="lab-bad", hostname="x" * 10_000)),
                        timeout=5)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "inventory.hostname" in err.value.details()
    after = devices_by_id(fleet)
    assert after["lab-bad"].refused == 4 and "inventory.hostname" in after["lab-bad"].last_refusal
    assert after["lab-bad"].results == 0 and after["lab-bad"].inventory.hostname == "lab"
    assert after["lab-good"].refused == 0 and after["lab-good"].results == before.results == 1
    assert list(fleet.GetLimitTable(pb.GetLimitTableRequest(), timeout=5).rows) == list(rows_before)
    agents.ReportResult(pb.ReportResultRequest(result=good_result("lab-good", "tinyllama-1.1b")), timeout=5)
    assert devices_by_id(fleet)["lab-good"].results == 2  # the good device goes on reporting


def test_a_sweep_is_stored_whole_and_a_hostile_one_from_another_device_is_refused(fleet_of_two, coordinator):
    agents, fleet = fleet_of_two
    agents.ReportResult(pb.ReportResultRequest(result=swept_result("lab-good")), timeout=5)
    bad = swept_result("lab-bad")
    bad.serving[1].parallel = 64  # a device claiming a point nobody asked for
    with pytest.raises(grpc.RpcError) as err:
        agents.ReportResult(pb.ReportResultRequest(result=bad), timeout=5)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "result.serving[1].parallel is 64" in \
        err.value.details()
    stored = coordinator.store.results(device_id="lab-good")
    assert [list(r.serving) for r in stored] == [list(swept_result("lab-good").serving)]
    assert not coordinator.store.results(device_id="lab-bad") and devices_by_id(fleet)["lab-bad"].refused == 1


def test_the_outbox_of_a_buggy_agent_moves_on_past_a_refused_result(fleet_of_two, tmp_path):
    agents, _ = fleet_of_two
    outbox = Outbox(tmp_path / "outbox.sqlite3")
    bad = good_result("lab-bad")
    bad.load_time_s = INF
    outbox.put(pb.ReportResultRequest(result=bad))
    outbox.put(pb.ReportResultRequest(result=good_result("lab-bad")))
    assert flush(outbox, agents.stub("lab-bad").ReportResult, threading.Event(), max_attempts=3)
    assert (len(outbox), outbox.count("rejected"), outbox.count("delivered")) == (0, 1, 1)
    outbox.close()


def test_quotas_are_refused_with_resource_exhausted_naming_the_quota(fleet_of_two, coordinator):
    agents, fleet = fleet_of_two
    coordinator.store.quotas = ingest.Quotas(results_per_hour=3, models_per_day=2)
    first = good_result("lab-bad", "smollm2-135m")
    agents.ReportResult(pb.ReportResultRequest(result=first), timeout=5)
    agents.ReportResult(pb.ReportResultRequest(result=good_result("lab-bad", "tinyllama-1.1b")), timeout=5)
    with pytest.raises(grpc.RpcError) as err:  # a third model in a day
        agents.ReportResult(pb.ReportResultRequest(result=good_result("lab-bad", "llama-2-7b")), timeout=5)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "quota of 2 distinct models per day per device" in err.value.details()
    agents.ReportResult(pb.ReportResultRequest(result=good_result("lab-bad", "smollm2-135m")), timeout=5)
    with pytest.raises(grpc.RpcError) as err:  # a fourth result in an hour
        agents.ReportResult(pb.ReportResultRequest(result=good_result("lab-bad", "smollm2-135m")), timeout=5)
    assert "quota of 3 results per hour per device" in err.value.details()
    assert agents.ReportResult(pb.ReportResultRequest(result=first), timeout=5).duplicate  # a retry is never refused
    agents.ReportResult(pb.ReportResultRequest(result=good_result("lab-good")), timeout=5)  # quotas are per device
    found = devices_by_id(fleet)
    assert (found["lab-bad"].results, found["lab-bad"].refused, found["lab-good"].results) == (3, 2, 1)


def test_store_quota_counts_only_new_results(db_url):
    with Store(db_url, ingest.Quotas(results_per_hour=1, models_per_day=5)) as store:
        store.upsert_device(pb.DeviceInventory(device_id="d"))
        first = good_result("d")
        store.add_result(first)
        assert store.add_result(first) is True
        with pytest.raises(QuotaExceeded):
            store.add_result(good_result("d"))


# -- defence in depth: results stored before ingest checked them

def poison(r: pb.ProfileResult, n: int) -> pb.ProfileResult:
    """A copy of a ladder result for the hostile device with its figures made NaN, infinite, zero or negative."""
    bad = pb.ProfileResult()
    bad.CopyFrom(r)
    bad.device_id, bad.result_id = "vm-evil", f"evil-{n}"
    kind = n % 4
    value = (NAN, INF, 0.0, -5.0)[kind]
    for stat in (bad.decode_tokens_per_s, bad.prefill_tokens_per_s, bad.ttft_ms):
        if stat.samples:
            stat.samples[0] = value
            stat.mean = value if kind != 2 else stat.mean
    bad.load_time_s = value
    if kind == 2:
        bad.peak_rss_bytes = 0
    for phase in bad.power.phases:
        phase.average_power_w, phase.tokens_per_joule, phase.joules_per_token = value, -INF, NAN
    bad.roofline.achieved_gb_per_s = value
    bad.roofline.percent_of_bandwidth = NAN
    return bad


def answers_of(store: Store, good: str) -> dict:
    out = {}
    for name in tables.TABLES:
        table = tables.build_from_store(name, store, {})
        out[name] = [row for row in table.rows if not any("evil" in c.string_value for c in row.cells)]
    cache = fit_answers.AnswerCache(store)
    for model, quant in (("llama-2-7b", "Q4_0"), ("tinyllama-1.1b", "Q8_0")):
        fleet_wide = fit_answers.respond(pb.FitRequest(model_name=model, quant=quant), store, cache).answers
        out[f"fit {model}"] = [a for a in fleet_wide if a.device_id == good]
    out["limit rows"] = [r for r in limit_rows(store.results(), store.devices()) if r.device_id == good]
    return out


def test_poisoned_stored_results_leave_every_answer_of_other_devices_unchanged(db_url, tmp_path):
    results, device = ladder()
    evil = pb.DeviceInventory()
    evil.CopyFrom(device)
    evil.device_id = "vm-evil"  # the same hostname, another id
    with Store(db_url) as store:
        store.upsert_device(device)
        store.upsert_device(evil)
        for r in results:
            store.add_result(r)
        before = answers_of(store, device.device_id)
        for n, r in enumerate(results * 2):
            store.add_result(poison(r, n))
        assert len(store.results(device_id="vm-evil")) == 2 * len(results)
        after = answers_of(store, device.device_id)
        assert after == before
        assert sum(len(rows) for rows in before.values()) > 20  # the comparison covered real answers

        server = BackgroundCoordinator(db_url, state_dir=tmp_path / "state")
        server.start()
        try:
            env = {"FLEETFIT_TOKEN": server.operator_token, "FLEETFIT_INSECURE": "1",
                   "FLEETFIT_COORDINATOR": server.address}
            for args in (["limits", "all", "--format", "md"], ["fit", "llama-2-7b", "--quant", "Q4_0", "--json"],
                         ["report", "--out", str(tmp_path / "report")], ["limits", "power", "--format", "json"]):
                done = run_cli("fleetfit", *args, env=env, timeout=120)
                assert done.returncode == 0 and "Traceback" not in done.stderr, (args, done.stderr)
            assert not re.search(r"\b(nan|-?inf)\b", (tmp_path / "report" / "tables.md").read_text(), re.I)
        finally:
            server.stop()


def test_a_non_finite_page_token_or_size_is_one_line(coordinator):
    fleet = fleet_stub(coordinator)
    for request in (pb.ListDevicesRequest(page_token="not-a-token"), pb.ListDevicesRequest(page_size=-1)):
        with pytest.raises(grpc.RpcError) as err:
            fleet.ListDevices(request, timeout=5)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "\n" not in err.value.details()


def test_serve_refuses_bad_quota_options(tmp_path):
    for option in ("--results-per-hour", "--models-per-day", "--mib-per-hour"):
        done = run_cli("fleetfit", "serve", "--db", str(tmp_path / "f.sqlite3"), option, "0", timeout=60)
        assert_one_line_error(done, "--results-per-hour, --models-per-day and --mib-per-hour must be at least 1")


def bulky_result(device_id: str, kib: int) -> pb.ProfileResult:
    """An honest result padded to about `kib` KiB with power phases (each field within its own bound)."""
    r = good_result(device_id)
    for n in range(kib):
        r.power.phases.append(pb.PhaseEnergy(phase="decode", source=f"rapl-{n}", method="m" * 1000))
    return r


def test_the_bytes_a_device_can_make_the_coordinator_hold_are_bounded(db_url):
    """Per result (ingest: MAX_RESULT_BYTES) and per hour per device (the store's quota, counted in the storing
    transaction): a device sending large results is stopped at its byte quota, results of any size class; another
    device is unaffected; a retry of a stored result is never refused."""
    for kib in (300, 1000):  # above the per-result bound: refused before anything is stored
        with pytest.raises(ingest.Refused, match=r"result is \d+ bytes: at most 262144"):
            ingest.check_result(bulky_result("d", kib))
    quotas = ingest.Quotas(results_per_hour=10_000, models_per_day=5, bytes_per_hour=2 << 20)
    with Store(db_url, quotas) as store:
        for device_id in ("big", "small", "mixed", "other"):
            store.upsert_device(pb.DeviceInventory(device_id=device_id))
        for device_id, kib in (("big", 240), ("small", 20), ("mixed", 0)):
            stored = []
            for n in range(400):
                r = bulky_result(device_id, kib or (1, 60, 200)[n % 3])
                ingest.check_result(r)  # each one acceptable on its own
                try:
                    store.add_result(r)
                except QuotaExceeded as exc:
                    assert "bytes of results per hour per device" in str(exc)
                    break
                stored.append(r)
            else:
                raise AssertionError(f"{device_id}: 400 results stored past a 2 MiB quota")
            held = sum(r.ByteSize() for r in stored)
            assert quotas.bytes_per_hour - held < 250 * 1024 and held <= quotas.bytes_per_hour, (device_id, held)
            assert store.add_result(stored[0]) is True  # a retry is a duplicate, not new bytes
        assert store.add_result(bulky_result("other", 240)) is False  # quotas are per device
        quality = pb.QualityResult(result_id="q", device_id="big", model_name="m", quant="Q4_0", n_positions=1,
                                   context_tokens=1, perplexity=2.0, reference_quant="F16" + "x" * 100)
        assert store.add_quality(quality) is False  # quality results have a budget of their own
