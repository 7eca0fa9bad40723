"""One answer per cell (issue 27 item 1): every figure a `limits` table shows for a cell (device, backend, model,
precision, context, limits) is the figure `fit` gives for it, on fleets built from random subsets of real stored
results (tests/fixtures/ladder and coverage-ladder), with a device that measured one model, one with a noisy
point and one that ran out of memory, on SQLite and PostgreSQL."""

import json
import pathlib
import random
import re

import pytest

from fleetfit.coordinator.answers import fit, tables
from fleetfit.coordinator.service.store import Store
from fleetfit.v1 import fleetfit_pb2 as pb
from fleetfit.v1.words import parse_dict

FIXTURES = pathlib.Path(__file__).resolve().parents[1] / "fixtures"
FLEETS = 3  # seeded fleets per database


def _measured(directory: str) -> tuple[pb.DeviceInventory, list[pb.ProfileResult]]:
    inventory = parse_dict(json.loads(next((FIXTURES / directory).glob("device-*.json")).read_text()),
                           pb.Device()).inventory
    results = [parse_dict(json.loads(p.read_text()), pb.ProfileResult())
               for p in sorted((FIXTURES / directory).glob("result-*.json"))]
    return inventory, sorted(results, key=lambda r: r.started_unix_s)


def _as_device(inventory: pb.DeviceInventory, results: list[pb.ProfileResult], device_id: str
               ) -> tuple[pb.DeviceInventory, list[pb.ProfileResult]]:
    """The measurements as another device's: its own id, hostname and result ids."""
    inv = pb.DeviceInventory()
    inv.CopyFrom(inventory)
    inv.device_id, inv.hostname = device_id, f"host-{device_id}"
    out = []
    for n, r in enumerate(results):
        copy = pb.ProfileResult()
        copy.CopyFrom(r)
        copy.device_id, copy.result_id = device_id, f"{device_id}-{n:03d}"
        out.append(copy)
    return inv, out


def _with_sweep(r: pb.ProfileResult, factors: tuple[float, ...]) -> None:
    """A concurrency sweep on the run (1, 2, 4, 8 streams): aggregate = its decode x each factor."""
    decode = r.decode_tokens_per_s.mean
    for n, f in zip((1, 2, 4, 8), factors):
        r.serving.add(parallel=n, aggregate_decode_tokens_per_s=pb.Stat(mean=decode * f),
                      per_stream_decode_tokens_per_s=pb.Stat(mean=decode * f / n))


def _fleet(seed: int) -> list[tuple[pb.DeviceInventory, list[pb.ProfileResult]]]:
    rng = random.Random(seed)
    fleet = []
    for n, directory in enumerate(("ladder", "coverage-ladder")):
        inventory, results = _measured(directory)
        fleet.append(_as_device(inventory, rng.sample(results, rng.randint(3, len(results))), f"d{n}-{seed}"))
        _with_sweep(rng.choice(fleet[-1][1]), (1.0, 1.6, 2.2, 2.4))  # swept: the serving tables have rows
    inventory, results = _measured("ladder")
    fleet.append(_as_device(inventory, [rng.choice(results)], f"one-{seed}"))  # a device that measured one model
    noisy = [r for r in rng.sample(results, 4)]
    inv, noisy = _as_device(inventory, noisy, f"noisy-{seed}")
    decode = noisy[0].decode_tokens_per_s  # repetitions spread widely: a noisy neighbour
    decode.samples[:] = [s * f for s, f in zip(decode.samples, (0.3, 1.7, 0.9, 1.2))] or [decode.mean]
    decode.mean = sum(decode.samples) / len(decode.samples)
    decode.stdev = 0.9 * decode.mean
    _with_sweep(noisy[1], (1.0, 1.9, 1.4, 3.1))  # a noisy sweep: its aggregate dips at 4 streams
    fleet.append((inv, noisy))
    inv, oom = _as_device(inventory, rng.sample(results, 5), f"oom-{seed}")
    failed = pb.ProfileResult()
    failed.CopyFrom(max(oom, key=lambda r: r.model_n_params))
    failed.result_id, failed.failure, failed.error = f"oom-{seed}-x", pb.FAILURE_KIND_OOM, "killed: out of memory"
    failed.started_unix_s += 1
    for field in ("decode_tokens_per_s", "prefill_tokens_per_s", "peak_rss_bytes", "roofline", "power"):
        failed.ClearField(field)
    fleet.append((inv, [*oom, failed]))
    return fleet


def _rows(table: pb.Table) -> list[dict]:
    return [dict(zip(table.columns, (tables.typed_cell(c) for c in row.cells))) for row in table.rows]


def _value(cell):
    """(value, verdict) of a size table's cell: a plain number is a measured figure."""
    if cell is None:
        return None, None
    if isinstance(cell, float):
        return cell, None
    return cell.value, cell.verdict


class Fit:
    """`fit`'s answers as the FitService servicer gives them (fit.respond), one device and context at a time."""

    def __init__(self, store: Store):
        self.store, self.cache = store, fit.AnswerCache(store)
        self.snapshot = fit.Snapshot.of_store(store)

    def __call__(self, device_id: str, backend: str, model: str, quant: str, **limits) -> pb.FitAnswer:
        context = self.snapshot.cell_context(device_id, backend, model, quant)
        request = pb.FitRequest(model_name=model, quant=quant, backend=backend, device=device_id, **limits)
        if context:
            request.context_tokens = context
        (answer,) = fit.respond(request, self.store, self.cache).answers
        return answer


def _check_size_tables(found: dict[str, pb.Table], ask: Fit) -> int:
    checked = 0
    for name, unit, figure in (("speed", " tok/s", "decode_tokens_per_s"), ("memory", " GB", "memory_bytes")):
        for row in _rows(found[name]):
            for column, cell in row.items():
                if not column.endswith(unit) or cell is None:
                    continue
                a = ask(row["device id"], row["backend"], row["model"], column[:-len(unit)])
                value, verdict = _value(cell)
                shown = fit.shown(getattr(a, figure), 1e9 if name == "memory" else 1)
                where = f"{name} {row['device']} {row['model']} {column}: table {cell}, fit {shown} ({a.reason})"
                assert value == (shown.value if shown else None), where
                assert (verdict == "does_not_fit") == (a.fit_verdict == pb.VERDICT_DOES_NOT_FIT), where
                checked += 1
    return checked


LARGEST = re.compile(r"^~?(?P<model>\S+) \((?P<params>[^,]+)(, (?P<tps>[\d.e+-]+) tok/s)?\)$")


def _check_largest(found: dict[str, pb.Table], ask: Fit) -> int:
    """The capacity and deployment tables' largest models are models `fit` says fit (at the speed asked), with
    fit's decode; deployment's interactive streams and the recommendations are fit's max streams."""
    checked = 0
    capacity = found["capacity"]
    speed_column = next(c for c in capacity.columns if c.startswith("largest at ≥"))
    min_tps = float(re.search(r"≥([\d.]+)", speed_column).group(1))
    for row in _rows(capacity):
        for column, limits in (("largest in catalogue (predicted)", {}), (speed_column, {"min_decode_tokens_per_s": min_tps})):
            if row[column] is None:
                continue
            m = LARGEST.match(row[column])
            a = ask(row["device id"], row["backend"], m["model"], row["precision"], **limits)
            assert a.fit_verdict in fit.OK_VERDICTS, (row, a.reason)
            assert float(m["tps"]) == pytest.approx(fit.shown(a.decode_tokens_per_s).value, rel=1e-3), (row, a.reason)
            checked += 1
    deployment = found["deployment"]
    interactive = next(c for c in deployment.columns if c.startswith("interactive (≥"))
    tps = float(re.search(r"≥([\d.]+)", interactive).group(1))
    for row in _rows(deployment):
        if row[interactive] is None:
            assert row["interactive streams"] is None
            continue
        a = ask(row["device id"], row["backend"], LARGEST.match(row[interactive])["model"], row["precision"],
                min_decode_tokens_per_s=tps)
        assert row["interactive streams"].value == int(a.max_streams.value), (row, a.reason)
        assert row["streams: how"] == a.max_streams.method
        checked += 1
    for row in _rows(found["recommendations"]):
        if row["model"] is None:
            continue
        a = ask(row["device id"], row["backend"], row["model"], row["precision"], min_decode_tokens_per_s=tps)
        assert row["one-stream decode tok/s"].value == fit.shown(a.decode_tokens_per_s).value, (row, a.reason)
        assert row["streams per device"].value == int(a.max_streams.value), (row, a.reason)
        assert row["streams: how"], row  # a documented word, never null
        checked += 1
    return checked


def _number(cell):
    return cell.value if hasattr(cell, "value") else cell


def _check_serving(found: dict[str, pb.Table], ask: Fit) -> int:
    """The serving table's max streams, aggregate and per-stream speed are `fit`'s (--min-tps T, then --streams N);
    the serving curves' figures `fit --streams N`'s; at one stream the speed table's decode; the aggregate never
    negative and never falling with streams, each stream's speed never rising (issue 27 item 5)."""
    checked = 0
    serving = found["serving"]
    streams_column = next(c for c in serving.columns if c.startswith("max streams ≥"))
    min_tps = float(re.search(r"≥([\d.]+)", streams_column).group(1))
    for row in _rows(serving):
        a = ask(row["device id"], row["backend"], row["model"], row["precision"], min_decode_tokens_per_s=min_tps)
        where = f"serving {row['device']} {row['model']} {row['precision']}: {a.reason}"
        assert row[streams_column].value == int(a.max_streams.value), where
        n = int(a.max_streams.value)
        if n:
            b = ask(row["device id"], row["backend"], row["model"], row["precision"], min_decode_tokens_per_s=min_tps,
                    streams=n)
            assert _number(row["aggregate tok/s"]) == fit.shown(b.aggregate_tokens_per_s, digits=4).value, where
            assert _number(row["per-stream tok/s"]) == fit.shown(b.stream_tokens_per_s, digits=4).value, where
            assert _number(row["aggregate tok/s"]) >= 0 and _number(row["per-stream tok/s"]) >= 0, where
        checked += 1
    curves: dict[tuple, list[dict]] = {}
    for row in _rows(found["serving-curves"]):
        b = ask(row["device id"], row["backend"], row["model"], row["precision"], streams=int(row["streams"]))
        where = f"serving-curves {row['device']} {row['model']} {row['precision']} x{row['streams']}: {b.reason}"
        assert row["aggregate tok/s"] == fit.shown(b.aggregate_tokens_per_s, digits=4).value, where
        assert row["per-stream tok/s"] == fit.shown(b.stream_tokens_per_s, digits=4).value, where
        if row["streams"] == 1:  # one stream is the speed table's decode for the cell
            assert row["aggregate tok/s"] == pytest.approx(b.decode_tokens_per_s.value, rel=1e-3), where
        curves.setdefault((row["device id"], row["model"], row["precision"]), []).append(row)
        checked += 1
    for rows in curves.values():
        aggregate = [r["aggregate tok/s"] for r in rows]
        per_stream = [r["per-stream tok/s"] for r in rows]
        assert min(aggregate) >= 0 and min(r["aggregate low"] or 0 for r in rows) >= 0, rows
        assert all(x <= y * (1 + 1e-6) for x, y in zip(aggregate, aggregate[1:])), rows
        assert all(x >= y * (1 - 1e-6) for x, y in zip(per_stream, per_stream[1:])), rows
    return checked


def _check_energy(found: dict[str, pb.Table], ask: Fit) -> int:
    """The power and energy-cost tables' decode W and J/token are `fit`'s (J/token = decode W / fit's decode)."""
    checked = 0
    for power, cost in zip(_rows(found["power"]), _rows(found["energy-cost"])):
        a = ask(power["device id"], power["backend"], power["model"], power["quant"])
        where = f"power {power['device']} {power['model']} {power['quant']}: {a.reason}"
        if not fit.provenance_word(a.joules_per_token):
            assert power["J/token"] is None and cost["power kW"] is None, where
            continue
        watts = a.joules_per_token.value * a.decode_tokens_per_s.value
        assert power["J/token"] == round(a.joules_per_token.value, 5), where
        assert power["decode W"] == round(watts, 3), where
        assert cost["power kW"] == round(watts / 1000, 5), where
        assert cost["cost per 1M tokens"] == round(a.joules_per_token.value * 1e6 / 3.6e6 * 0.15, 4), where
        checked += 1
    return checked


@pytest.mark.parametrize("seed", range(FLEETS))
def test_every_table_cell_is_fits_answer_for_it(db_url, seed):
    with Store(db_url) as store:
        for inventory, results in _fleet(seed):
            store.upsert_device(inventory)
            for r in results:
                store.add_result(r)
        found = dict(zip(tables.SEED_ORDER, tables.build_many(list(tables.SEED_ORDER), store, {})))
        ask = Fit(store)
        size_cells = _check_size_tables(found, ask)
        largest = _check_largest(found, ask)
        serving = _check_serving(found, ask)
        energy = _check_energy(found, ask)
    # the fleets give the property something to hold on
    assert size_cells >= 20 and largest >= 5 and serving >= 3 and energy >= 3, (size_cells, largest, serving, energy)


def test_limits_all_reads_the_store_once(tmp_path, monkeypatch):
    """`limits all` (GetTable with names) builds every table from one read of the results: no table rereads them."""
    with Store(tmp_path / "fleet.sqlite3") as store:
        for inventory, results in _fleet(7):
            store.upsert_device(inventory)
            for r in results:
                store.add_result(r)
        reads = []
        real = Store.results
        monkeypatch.setattr(Store, "results", lambda self, *a, **k: reads.append(a or k) or real(self, *a, **k))
        built = tables.build_many(list(tables.SEED_ORDER), store, {})
    assert [t.name for t in built] == list(tables.SEED_ORDER)
    assert len(reads) == 1
    with pytest.raises(tables.TableError, match="unknown table"):
        tables.build_many(["speed", "nope"], store, {})
