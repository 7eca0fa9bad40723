"""Serving capacity from concurrency sweeps: the serving tables, fit --streams and the leave-one-out errors, on real
ProfileResult messages stored through the real ingest checks and Store (SQLite and PostgreSQL)."""

import json
import math
import re

import grpc
import pytest

from fleetfit.coordinator.answers import fit, tables
from fleetfit.coordinator.service import ingest
from fleetfit.coordinator.predict import scaling, serving
from fleetfit.coordinator.service.store import Store
from fleetfit.models.catalogue import CATALOGUE
from fleetfit.v1 import fleetfit_pb2 as pb
from tests.conftest import Agents, assert_one_line_error, fleet_stub, run_cli

MIB = 2**20
FAST, SLOW = "edge-1a2b3c4d", "edge-9f8e7d6c"  # two boards with one hostname
# aggregate decode tok/s by streams; per stream exactly 33, 25, 16.5, 10, 5.5
FAST_SWEEP = {1: 33.0, 2: 50.0, 4: 66.0, 8: 80.0, 16: 88.0}
# llama-batched-bench on the 2-core development machine (docs: measurement.md), SmolLM2-135M Q4_0
SMOLLM2_Q4_0 = {1: 175.0, 4: 268.0, 8: 335.0, 16: 359.0}


def inventory(device_id: str, ram_mib: int = 8192) -> pb.DeviceInventory:
    return pb.DeviceInventory(device_id=device_id, hostname="edge", ram_total_bytes=ram_mib * MIB)


def stat(value: float) -> pb.Stat:
    return pb.Stat(mean=value, stdev=0.01 * value, samples=[0.99 * value, 1.01 * value])


def sweep(result_id: str, device_id: str, aggregates: dict[int, float], model: str = "smollm2-135m",
          quant: str = "Q4_0", peak_mib: float = 300, prefill: float = 800.0, started: float = 1.0,
          one_stream: float | None = None) -> pb.ProfileResult:
    """A result as the agent reports a sweep: its one-stream run, and one ServingPoint per count."""
    decode = one_stream or aggregates.get(1) or next(iter(aggregates.values()))
    n_prompt, n_gen = 128, 64
    kv = scaling.kv_cache_bytes(CATALOGUE[model], n_prompt + n_gen)
    phase = lambda name, tps: pb.PhaseEnergy(phase=name, source="estimate", scope="cpu", provenance_kind=pb.PROVENANCE_KIND_ESTIMATED,
                                             method="estimated_from_utilization", average_power_w=6.0,
                                             joules_per_token=6.0 / tps)
    r = pb.ProfileResult(
        result_id=result_id, device_id=device_id, model_name=model, quant=quant, model_n_params=134515008,
        request=pb.ProfileRequest(backend="llama.cpp", quant=quant, n_prompt=n_prompt, n_gen=n_gen,
                                  parallel=list(aggregates)),
        n_prompt=n_prompt, n_gen=n_gen, n_ctx=n_prompt + n_gen, threads=2, n_batch=2048, n_ubatch=512,
        repetitions=2, started_unix_s=started, decode_tokens_per_s=stat(decode), prefill_tokens_per_s=stat(prefill),
        ttft_ms=stat(1000 * n_prompt / prefill), peak_rss_bytes=int(peak_mib * MIB + kv),
        power=pb.PowerTelemetry(headline_source="estimate", provenance_kind=pb.PROVENANCE_KIND_ESTIMATED,
                                phases=[phase("prefill", prefill), phase("decode", decode)]))
    for n, aggregate in aggregates.items():
        r.serving.add(parallel=n, aggregate_decode_tokens_per_s=stat(aggregate),
                      per_stream_decode_tokens_per_s=stat(aggregate / n),
                      prefill_tokens_per_s=stat(prefill), ttft_ms_p50=stat(1000 * n * n_prompt / prefill),
                      ttft_ms_p99=stat(1000 * n * n_prompt / prefill * 1.05),
                      peak_memory_bytes=stat(peak_mib * MIB + n * kv), decode_energy_per_token_j=6.0 / aggregate,
                      energy_provenance_kind=pb.PROVENANCE_KIND_ESTIMATED)
    return r


def fleet_of(*results: pb.ProfileResult, ids=(FAST, SLOW)) -> tables.Fleet:
    return tables.Fleet(list(results), [pb.Device(inventory=inventory(i)) for i in ids])


def rows(fleet: tables.Fleet, name: str, options=None) -> list[dict]:
    table = tables.build(name, fleet, options or {})
    return [dict(zip(table.columns, (tables.cell_text(c) for c in row.cells))) for row in table.rows]


def swept_rows(fleet, options=None) -> dict[tuple[str, str], dict]:
    """The serving table's rows of swept models, by (device, model)."""
    return {(r["device"], r["model"]): r for r in rows(fleet, "serving", options) if r["streams swept"] != "n/a"}


def streams_cell(row: dict, min_tps: float) -> str:
    return row[f"max streams ≥{min_tps:g} tok/s"]


def test_two_devices_with_one_hostname_keep_their_own_sweeps(db_url):
    store = Store(db_url)
    try:
        for device_id in (FAST, SLOW):
            store.upsert_device(inventory(device_id))
        for r in (sweep("fast", FAST, FAST_SWEEP), sweep("slow", SLOW, {n: a / 2 for n, a in FAST_SWEEP.items()})):
            ingest.check_result(r)  # what ReportResult checks before storing
            store.add_result(r)
        table = tables.build_from_store("serving", store, {"interactive_tps": "10"})
        curves = tables.build_from_store("serving-curves", store, {})
    finally:
        store.close()
    found = {r.cells[0].string_value: r for r in table.rows if r.cells[2].string_value == "smollm2-135m"}
    assert set(found) == {"edge (1a2b3c4d)", "edge (9f8e7d6c)"}  # one row each, never merged by hostname
    streams = list(table.columns).index("max streams ≥10 tok/s")
    fast, slow = (tables.typed_cell(found[f"edge ({i})"].cells[streams]) for i in ("1a2b3c4d", "9f8e7d6c"))
    assert (fast.value, fast.provenance) == (8, "measured")  # 80 tok/s over 8 streams: exactly 10 each
    assert (slow.value, slow.provenance) == (2, "measured")  # half as fast: 8.25 each at 4 streams
    measured = [(r.cells[0].string_value, r.cells[5].number_value) for r in curves.rows
                if r.cells[6].string_value == "measured"]
    assert sorted(measured) == sorted((f"edge ({i})", n) for i in ("1a2b3c4d", "9f8e7d6c") for n in FAST_SWEEP)


@pytest.mark.parametrize("min_tps, expected", [
    (10.0, "8"),    # 10 tok/s each at 8 streams, exactly the threshold: measured
    (10.5, "~"),    # met at 4, failed at 8: predicted between them
    (40.0, "0"),    # 33 tok/s alone: not one stream
    (5.0, "~"),     # still met at 16, the sweep's largest count: predicted beyond it
])
def test_max_streams_is_what_the_measured_curve_says(min_tps, expected):
    row = swept_rows(fleet_of(sweep("fast", FAST, FAST_SWEEP)), {"interactive_tps": str(min_tps)})[
        ("edge (1a2b3c4d)", "smollm2-135m")]
    cell = streams_cell(row, min_tps)
    if expected != "~":
        assert cell == expected and row["provenance"].startswith("measured")
        return
    assert cell.startswith("~") and row["provenance"].startswith("predicted")
    n = int(re.match(r"~(\d+)", cell).group(1))
    low, high = (4, 7) if min_tps == 10.5 else (17, 8 * 16)  # within the measured bracket; beyond it, capped
    assert low <= n <= high, cell
    assert float(row["per-stream tok/s"].lstrip("~").split()[0]) >= min_tps


def test_request_figures_at_a_measured_count():
    options = {"interactive_tps": "10", "prompt_tokens": "128", "response_tokens": "64"}
    row = swept_rows(fleet_of(sweep("fast", FAST, FAST_SWEEP)), options)[("edge (1a2b3c4d)", "smollm2-135m")]
    assert float(row["aggregate tok/s"]) == 80 and float(row["per-stream tok/s"]) == 10
    assert float(row["requests/hour (128 in, 64 out)"]) == pytest.approx(3600 / (128 / 800 + 64 / 80), rel=1e-3)
    assert float(row["TTFT p50 ms"]) == pytest.approx(1000 * 8 * 128 / 800, rel=1e-3)  # the sweep's own prompt
    assert float(row["response p50 s"]) == pytest.approx(8 * 128 / 800 + 64 / 10, rel=1e-3)
    assert float(row["J/request"]) == pytest.approx(64 * 6 / 80 + 128 * 6 / 800, rel=1e-3)
    with pytest.raises(tables.TableError, match="whole number"):
        tables.build("serving", fleet_of(), {"prompt_tokens": "1.5"})


def test_predicted_points_are_marked_with_a_band():
    noisy = {1: 34.0, 2: 48.5, 4: 67.0, 8: 78.0, 16: 89.5}
    tiny = {n: a / 8 for n, a in noisy.items()}
    fleet = fleet_of(sweep("s", FAST, noisy), sweep("t", FAST, tiny, model="tinyllama-1.1b", peak_mib=700))
    curve = rows(fleet, "serving-curves")
    predicted = [r for r in curve if r["provenance"] == "predicted"]
    assert {int(r["streams"]) for r in predicted} == {32, 64}  # beyond the sweep, up to 4x its largest count
    for r in predicted:
        assert float(r["aggregate low"]) < float(r["aggregate tok/s"]) < float(r["aggregate high"])
    assert all(r["aggregate low"] == "n/a" for r in curve if r["provenance"] == "measured")
    unswept = [r for r in rows(fleet, "serving") if r["streams swept"] == "n/a"]
    assert {r["model"] for r in unswept} >= {"llama-2-7b", "distilgpt2"}
    for r in unswept:
        assert r["provenance"].startswith("predicted: not swept here")
        assert streams_cell(r, 8).startswith("~")
    distil = next(r for r in unswept if r["model"] == "distilgpt2")
    assert "±" in distil["aggregate tok/s"]  # the leave-one-model-out band


def test_leave_one_out_error_of_the_aggregate_speed():
    dm = scaling.device_model(inventory(FAST), [sweep("s", FAST, SMOLLM2_Q4_0)])
    curve, = serving.curves([sweep("s", FAST, SMOLLM2_Q4_0)])
    errors = {n: e for _, n, e in serving.leave_one_count_out([curve], dm)}
    assert set(errors) == {4, 8, 16}  # every count above the smallest held out once (1 is always measured)
    assert all(abs(e) < 0.15 for e in errors.values()), errors  # between and beyond the others
    sm = serving.serving_model(dm, [sweep("s", FAST, SMOLLM2_Q4_0)])
    assert sm.point_error == pytest.approx(max(abs(e) for e in errors.values()))


@pytest.mark.parametrize("aggregates, expected, label", [
    ({1: 44.0, 4: 59.0, 8: 56.0, 16: 65.0}, None, "not monotonic"),  # TinyLlama shape: aggregate dips at 8
    ({1: 30.0}, "1", "measured"),  # a single count: no slope to predict with
    ({1: 10.0, 2: 30.0, 4: 100.0}, "4", "measured"),  # steps shorten as streams are added: no roofline fits
])
def test_hostile_curves_give_labelled_answers(aggregates, expected, label):
    r = sweep("h-" + "-".join(f"{v:g}" for v in aggregates.values()), FAST, aggregates)  # a result id is its content's
    r.serving.add(parallel=0, aggregate_decode_tokens_per_s=stat(1e6))  # not a count
    r.serving.add(parallel=32)  # its figures dropped by ingest (not finite): no aggregate
    fleet = fleet_of(r)
    row = swept_rows(fleet)[("edge (1a2b3c4d)", "smollm2-135m")]
    assert label in row["provenance"]
    if expected is not None:
        assert streams_cell(row, 8) == expected
    else:
        assert re.fullmatch(r"4|~[5-7]( \([4-7]–[5-7]\))?", streams_cell(row, 8))  # met at 4, failed at 8
    counts = [r["streams"] for r in rows(fleet, "serving-curves") if r["provenance"] == "measured"]
    assert counts == [str(n) for n in sorted(aggregates)]
    for name in ("recommendations", "deployment"):
        assert rows(fleet, name)  # no crash


def test_a_devices_hostile_sweeps_leave_the_other_devices_rows_alone(db_url):
    """Another board with the same hostname reports nonsense sweeps (stored before ingest checked them): counts
    in the billions, a per-stream speed above the aggregate, non-finite figures. FAST's answers do not move."""
    def answers(store):
        built = {name: tables.build_from_store(name, store, {}) for name in
                 ("serving", "serving-curves", "recommendations", "deployment")}
        return {name: [list(r.cells) for r in t.rows if r.cells[0 if name != "recommendations" else 3].string_value
                       == "edge (1a2b3c4d)"] for name, t in built.items()}

    with Store(db_url) as store:
        for device_id in (FAST, SLOW):
            store.upsert_device(inventory(device_id))
        store.add_result(sweep("fast", FAST, FAST_SWEEP))
        before = answers(store)
        evil = sweep("evil", SLOW, {1: 30.0, 2**31 - 1: 1e7})
        evil.serving[0].per_stream_decode_tokens_per_s.mean = 1e9
        evil.serving.add(parallel=4, aggregate_decode_tokens_per_s=pb.Stat(mean=math.nan, samples=[math.inf]))
        store.add_result(evil)  # straight to the store, as results stored before ingest's checks
        store.add_result(sweep("evil-2", SLOW, {8: 1e-9}, model="llama-2-70b", started=2.0))
        assert answers(store) == before and before["serving"] and before["recommendations"]
        slow = [r for r in tables.build_from_store("serving", store, {}).rows
                if r.cells[0].string_value == "edge (9f8e7d6c)"]
        assert slow  # its own rows are there, labelled, and built without an error


def test_fit_streams_yes_and_no():
    results = [sweep("fast", FAST, FAST_SWEEP), sweep("solo", SLOW, {1: 30.0})]
    results[1].ClearField("serving")  # SLOW has one stream measured, no sweep
    devices = [pb.Device(inventory=inventory(FAST)), pb.Device(inventory=inventory(SLOW))]

    def ask(streams, min_tps=10.0, device=FAST):
        (a,) = [a for a in fit.fit("smollm2-135m", "Q4_0", "llama.cpp", devices, results, min_decode_tps=min_tps,
                                   context=192, streams=streams) if a.device_id == device]
        return a

    yes = ask(8)
    assert yes.serves and yes.fit_verdict == pb.VERDICT_FITS_COMFORTABLY
    assert yes.stream_tokens_per_s.provenance_kind == pb.PROVENANCE_KIND_MEASURED
    assert yes.stream_tokens_per_s.value == 10.0 and yes.aggregate_tokens_per_s.value == 80.0
    kv = scaling.kv_cache_bytes(CATALOGUE["smollm2-135m"], 192)
    assert yes.serving_memory_bytes.value == pytest.approx(yes.memory_bytes.value + 7 * kv)
    no = ask(12)  # between 8 (10 each) and 16 (5.5 each): predicted below 10
    assert no.HasField("serves") and not no.serves and no.fit_verdict == pb.VERDICT_DOES_NOT_FIT
    assert no.stream_tokens_per_s.provenance_kind == pb.PROVENANCE_KIND_PREDICTED and no.stream_tokens_per_s.value < 10
    assert no.reason.startswith("does not serve: 12 streams")
    crowd = ask(200_000)  # 200000 KV caches: far past 8 GiB
    assert not crowd.serves and "over 95%" in crowd.reason
    alone = ask(None)  # no --streams: the most streams at the speed, from the sweep
    assert alone.max_streams.value == 8 and alone.max_streams.provenance_kind == pb.PROVENANCE_KIND_MEASURED
    assert "serves 8 stream(s) at ≥10 tok/s" in alone.reason
    divided = ask(2, device=SLOW)  # no sweep: one stream's 30 tok/s divided, labelled an estimate
    assert divided.serves and divided.stream_tokens_per_s.value == 15.0
    assert divided.stream_tokens_per_s.provenance_kind == pb.PROVENANCE_KIND_ESTIMATED and "one-stream division" in \
        divided.stream_tokens_per_s.method
    assert not ask(4, device=SLOW).serves  # 7.5 each
    assert ask(None, device=SLOW).max_streams.value == 3


def test_recommendations_use_the_sweeps_and_say_where_there_is_none():
    results = [sweep("fast", FAST, FAST_SWEEP), sweep("solo", SLOW, {1: 30.0})]
    results[1].ClearField("serving")
    fleet = fleet_of(*results)
    found = rows(fleet, "recommendations", {"interactive_tps": "10"})
    fast = [r for r in found if r["device"] == "edge (1a2b3c4d)"]
    slow = [r for r in found if r["device"] == "edge (9f8e7d6c)"]
    assert fast and all(r["streams: how"].startswith(("measured", "predicted")) for r in fast)
    assert slow and all(r["streams: how"].startswith("one-stream division") for r in slow)
    sm = tables.serving_models(fleet)[(FAST, "llama.cpp")]
    expected = sm.capacity(fast[0]["model"], fast[0]["precision"], 10.0)
    assert fast[0]["streams per device"] == ("" if expected.provenance == "measured" else "~") + str(expected.streams)
    large = next(r for r in fast if r["scale"] == "large")
    assert int(large["devices needed"]) == math.ceil(int(large["concurrent streams"]) / expected.streams)
    assert not any("time-shared (no batching measured)" in n for n in tables.build("recommendations", fleet, {}).notes)


def test_fleet_serving_over_the_wire(coordinator, monkeypatch):
    """Two agents with one hostname report sweeps over ReportResult; the CLI shows their rows and fit --streams."""
    agents = Agents(coordinator)
    try:
        for device_id, scale in ((FAST, 1.0), (SLOW, 0.5)):
            agents.Register(pb.RegisterRequest(inventory=inventory(device_id)), timeout=5)
            result = sweep(f"r-{device_id}", device_id, {n: a * scale for n, a in FAST_SWEEP.items()})
            agents.ReportResult(pb.ReportResultRequest(result=result), timeout=5)
    finally:
        agents.close()
    monkeypatch.setenv("FLEETFIT_TOKEN", coordinator.operator_token)
    monkeypatch.setenv("FLEETFIT_INSECURE", "1")
    table = run_cli("fleetfit", "limits", "serving", "--option", "interactive_tps=10", "--coordinator",
                    coordinator.address)
    assert table.returncode == 0 and "edge (1a2b3c4d)" in table.stdout and "edge (9f8e7d6c)" in table.stdout, table
    answer = run_cli("fleetfit", "fit", "smollm2-135m", "--quant", "Q4_0", "--streams", "8", "--min-tps", "10",
                     "--device", FAST, "--json", "--coordinator", coordinator.address)
    assert answer.returncode == 0, answer.stderr
    (a,) = json.loads(answer.stdout)
    assert a["serves"] is True and a["streams"] == 8 and a["stream_tokens_per_s"]["provenance"] == "measured"
    assert_one_line_error(run_cli("fleetfit", "fit", "smollm2-135m", "--quant", "Q4_0", "--users", "0",
                                  "--coordinator", coordinator.address), "--streams must be positive")
    stub = fleet_stub(coordinator)
    assert {"serving", "serving-curves"} <= {t.name for t in stub.ListTables(pb.ListTablesRequest(), timeout=5).tables}
    served = stub.GetTable(pb.GetTableRequest(name="serving", options={"interactive_tps": "10"}), timeout=30).table
    names = sorted(r.cells[0].string_value for r in served.rows if r.cells[2].string_value == "smollm2-135m")
    assert names == ["edge (1a2b3c4d)", "edge (9f8e7d6c)"]
    with pytest.raises(grpc.RpcError) as refused:
        stub.Fit(pb.FitRequest(model_name="smollm2-135m", quant="Q4_0", streams=fit.MAX_STREAMS + 1), timeout=10)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "streams must be at most" in \
        refused.value.details()


def test_a_noisy_sweep_still_predicts_the_models_it_never_swept():
    """A busy neighbour made each count's aggregate grow in proportion to the streams (one even superlinear): no
    measurable per-stream cost, less than the KV cache read a stream needs. The device still predicts the models
    it never swept, the per-stream cost floored at its compute ceiling and labelled so, instead of answering by
    one-stream division (the recommendations row of the end-to-end sweep, under load)."""
    device = inventory(FAST)
    device.probes.bandwidth.add(target="cpu", gb_per_s=20.0)
    device.probes.matmul.add(target="cpu", precision="float32", gflop_per_s=100.0)
    results = [sweep("s", FAST, {1: 30.0, 2: 66.0, 4: 118.0, 8: 250.0})]
    sm = serving.serving_model(scaling.device_model(device, results), results)
    assert sm.calibration is not None and sm.calibration.floored == ("smollm2-135m Q4_0",)
    cap = sm.capacity("tinyllama-1.1b", "Q4_0", 1.0)
    assert cap is not None and cap.streams >= 1 and "floored at the compute ceiling" in cap.method
    a = fit.answer(device, fit.Cell("tinyllama-1.1b", "Q4_0", "llama.cpp"), results)
    assert fit.provenance_word(a.max_streams) == "predicted" and not a.max_streams.method.startswith("one-stream division")
    swept = sm.curve("smollm2-135m", "Q4_0")
    assert [p.aggregate_tps for p in swept.points] == sorted(p.aggregate_tps for p in swept.points)  # monotone fit
