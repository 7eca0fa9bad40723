"""Every figure that reaches an answer is bounded by physics (models/physical_bounds.py): refused at ingest just
outside each edge of its range, and a row stored without those checks (old data, a direct write) can neither break
an answer nor change another device's — every table, fit, the limit rows, the report and export, on the real
store (SQLite and PostgreSQL)."""

import math
import re

import pytest
from google.protobuf.descriptor import FieldDescriptor as F

from fleetfit.coordinator.service import exchange, ingest
from fleetfit.coordinator.answers import report, tables
from fleetfit.coordinator.predict import scaling
from fleetfit.coordinator.answers import fit as fit_answers
from fleetfit.coordinator.answers.limits import limit_rows
from fleetfit.coordinator.service.store import Store
from fleetfit.models import physical_bounds
from fleetfit.v1 import fleetfit_pb2 as pb
from tests.coordinator.test_ingest import answers_of, swept_result
from tests.coordinator.test_quality_results import quality
from tests.coordinator.test_scaling import ladder

NAN, INF = float("nan"), float("inf")
INT_TOP = {F.TYPE_INT32: 2**31 - 1, F.TYPE_UINT32: 2**32 - 1, F.TYPE_INT64: 2**63 - 1, F.TYPE_UINT64: 2**64 - 1,
           F.TYPE_SINT32: 2**31 - 1, F.TYPE_SINT64: 2**63 - 1}


def leaves(message, path: str = "", unit: str = ""):
    """(path, holder, field, index, range name) of every numeric figure set in `message`, recursively; a Stat's
    mean and samples take the range of the field that holds the Stat."""
    for field, value in message.ListFields():
        where = f"{path}.{field.name}" if path else field.name
        if field.type == F.TYPE_MESSAGE:
            if field.message_type.GetOptions().map_entry:
                continue
            inner = field.name if field.message_type.name == "Stat" else ""
            for i, item in enumerate(value if field.is_repeated else [value]):
                yield from leaves(item, f"{where}[{i}]" if field.is_repeated else where, inner)
        elif field.type in (F.TYPE_DOUBLE, F.TYPE_FLOAT) or field.type in INT_TOP:
            name = unit if unit and field.name != "stdev" else field.name
            for i in range(len(value)) if field.is_repeated else [None]:
                yield where if i is None else f"{where}[{i}]", message, field, i, name


def bounded(message) -> list:
    """The leaves with a physical range of their own (not the counters' default)."""
    return [leaf for leaf in leaves(message) if physical_bounds.bounds(leaf[4]) != physical_bounds.DEFAULT]


def put(holder, field, index, value) -> None:
    if index is None:
        setattr(holder, field.name, value)
    else:
        getattr(holder, field.name)[index] = value


def outside_values(field, name: str) -> list:
    """Values just outside each edge of the field's range, and the non-figures (NaN, infinities, a subnormal, a
    negative) — each one that the field's type can hold."""
    low, high = physical_bounds.bounds(name)
    if field.type in INT_TOP:
        return [v for v in (int(high) + 1, -1) if -2**63 <= v <= INT_TOP[field.type] and
                not (v < 0 and field.type in (F.TYPE_UINT32, F.TYPE_UINT64))]
    signed = name in ingest.SIGNED_FIELDS
    values = [math.nextafter(high, INF), -math.nextafter(high, INF), NAN, INF, -INF]
    if low > 0:
        values += [math.nextafter(low, 0), 5e-324, 1e-300, -5e-324]
    if not signed:
        values += [-1.0, -math.nextafter(0, 1)]
    if name == "kl_divergence_mean":  # a little below 0 is rounding, accepted as 0
        values = [v for v in values if not -physical_bounds.KLD_ROUNDING <= v < 0]
    if field.type == F.TYPE_FLOAT:  # what a float can hold, as it holds it
        values = [v for v in values if math.isnan(v) or abs(v) == INF or 1e-38 < abs(v) < 3e38]
    return values


def honest_messages() -> list[tuple[str, object, object]]:
    """(what, message, check) of real and realistic reports: a ladder result (power, roofline), a sweep, a
    quality result, an inventory with probes."""
    results, device = ladder()
    return [("result", results[-1], ingest.check_result), ("sweep", swept_result("dev-1"), ingest.check_result),
            ("quality", quality("dev-1", "Q4_0", 0.05).result, ingest.check_quality),
            ("inventory", device, ingest.check_inventory)]


CASES = [(what, path) for what, message, _ in honest_messages() for path, *_ in bounded(message)]


def test_the_cases_cover_every_kind_of_figure():
    names = {physical_bounds.bounds(leaf[4]) for _, message, _ in honest_messages() for leaf in bounded(message)}
    assert len(CASES) > 100 and len(names) >= 15  # speeds, times, sizes, energies, powers, quality, probes, ...


@pytest.mark.parametrize("what, path", CASES)
def test_a_figure_just_outside_its_range_is_refused_naming_it(what, path):
    for kind, message, check in honest_messages():
        if kind != what:
            continue
        check(message)  # the honest report passes
        for value in outside_values(*next((f, n) for p, _, f, _, n in bounded(message) if p == path)):
            bad = type(message)()
            bad.CopyFrom(message)
            _, holder, field, index, _ = next(leaf for leaf in bounded(bad) if leaf[0] == path)
            put(holder, field, index, value)
            with pytest.raises(ingest.Refused) as err:
                check(bad)
            text = str(err.value)
            assert "\n" not in text and len(text) < 400, text
            assert field.name in text or path.split(".")[-1].split("[")[0] in text, (path, value, text)


def test_every_float_figure_has_a_stated_range():
    """A float field reported by a device is a figure that answers may read: each has a range of its own in
    models/physical_bounds.py (a new field without one fails here), times of day included; a Stat's figures take
    the range of the field that holds it, and a model's shape (a request's question) is checked by models/shapes.py."""
    missing = set()

    def walk(descriptor, seen):
        for field in descriptor.fields:
            if field.type == F.TYPE_MESSAGE and field.message_type.full_name not in seen:
                seen.add(field.message_type.full_name)
                walk(field.message_type, seen)
            elif field.type in (F.TYPE_DOUBLE, F.TYPE_FLOAT) and descriptor.name not in ("Stat", "Architecture") \
                    and physical_bounds.bounds(field.name) == physical_bounds.DEFAULT:
                missing.add(f"{descriptor.name}.{field.name}")

    for message in (pb.ProfileResult, pb.QualityResult, pb.DeviceInventory):
        walk(message.DESCRIPTOR, set())
    assert not missing, missing


CONTEXT_FIELD = re.compile(r"(^|_)(ctx|prompt|gen|batch|ubatch|depth|context)(_|$)")


def test_every_context_figure_has_a_stated_range():
    """A run's context in tokens (what scaling and serving size the KV cache by: prompt, generation, depth, n_ctx,
    batch sizes) is an integer figure: each field that holds one has a range of its own, so a device reporting a run
    at 10^15 tokens of context is refused, and such a stored row is dropped where answers read it."""
    missing, found = set(), set()

    def walk(descriptor, seen):
        for field in descriptor.fields:
            if field.type == F.TYPE_MESSAGE and field.message_type.full_name not in seen:
                seen.add(field.message_type.full_name)
                walk(field.message_type, seen)
            elif field.type in INT_TOP and CONTEXT_FIELD.search(field.name) and descriptor.name != "Architecture":
                found.add(f"{descriptor.name}.{field.name}")
                if physical_bounds.bounds(field.name) == physical_bounds.DEFAULT:
                    missing.add(f"{descriptor.name}.{field.name}")

    for message in (pb.ProfileResult, pb.QualityResult, pb.DeviceInventory):
        walk(message.DESCRIPTOR, set())
    assert len(found) >= 8 and not missing, (found, missing)


# -- rows stored without the checks

EDGES = (5e-324, 1e-300, 0.0, -5.0, NAN, INF, -INF, "below", "low", "high", "above")


def hostile_copy(message, n: int, edge) -> object:
    """A copy of `message` for the device "vm-evil" with every bounded figure set to one edge case: a value just
    below the floor, at the floor, at the ceiling, just above it, or a non-figure."""
    bad = type(message)()
    bad.CopyFrom(message)
    bad.device_id = "vm-evil"
    if hasattr(bad, "result_id"):
        bad.result_id = f"evil-{n}"
    for _, holder, field, index, name in bounded(bad):
        low, high = physical_bounds.bounds(name)
        value = {"below": math.nextafter(low, 0), "low": low, "high": high,
                 "above": math.nextafter(high, INF)}.get(edge, edge)
        if field.type in INT_TOP:
            if not isinstance(value, float) or not math.isfinite(value) or value < 0:
                continue
            value = min(int(value), INT_TOP[field.type])
        elif field.type == F.TYPE_FLOAT and math.isfinite(value) and value and not 1e-38 < abs(value) < 3e38:
            continue
        put(holder, field, index, value)
    return bad


def wild_sweeps() -> list[pb.ProfileResult]:
    """Sweeps within every range but wild, one per model: aggregate speed jumping between the floor and the
    ceiling as streams are added, so that the leave-one-out errors of the device's sweeps pass 100 %."""
    out = []
    low, high = physical_bounds.bounds("tokens_per_s")
    for n, (model, speeds) in enumerate((("smollm2-135m", (high / 10, low * 8, high)),
                                         ("tinyllama-1.1b", (low * 8, high, low * 16)),
                                         ("llama-2-7b", (1e6, 1.9e6, 1.0)))):
        r = swept_result("vm-evil")
        r.result_id, r.model_name = f"evil-wild-{n}", model
        r.request.parallel[:] = [1, 2, 4]
        r.serving.insert(1, r.serving[0])
        for point, streams, aggregate in zip(r.serving, (1, 2, 4), speeds):
            point.parallel = streams
            point.aggregate_decode_tokens_per_s.CopyFrom(pb.Stat(mean=aggregate, samples=[aggregate]))
            point.per_stream_decode_tokens_per_s.CopyFrom(pb.Stat(mean=aggregate / streams,
                                                                  samples=[aggregate / streams]))
        ingest.check_result(r)  # each passes ingest: only their combination is wild
        out.append(r)
    return out


def corrupt(store: Store) -> None:
    """Payloads that do not decode, as a damaged database would hold them."""
    with store.db.transaction() as execute:
        execute("INSERT INTO results (result_id, device_id, job_id, model_name, quant, backend, failure, received, "
                "payload) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                ("evil-corrupt", "vm-evil", None, "llama-2-7b", "Q4_0", "llama.cpp", 0, 1.0, b"\xff\xff\xff\x07"))
        execute("INSERT INTO quality_results (result_id, device_id, model_name, quant, received, payload) "
                "VALUES (?, ?, ?, ?, ?, ?)", ("evil-q-corrupt", "vm-evil", "llama-2-7b", "Q4_0", 1.0, b"\x0a\xff"))
        execute("UPDATE devices SET inventory = ? WHERE device_id = ?", (b"\x12\xff\xff", "vm-corrupt"))


def everything(store: Store, tmp_path) -> str:
    """Every answer built, as text: each table in every format, fit for each model, the limit rows, the report
    and export; raises on any error."""
    built = [tables.build_from_store(name, store, {}) for name in tables.TABLES]
    text = [tables.render_table(t, fmt) for t in built for fmt in ("md", "csv", "json")]
    devices, results = store.devices(), store.results()
    rows = limit_rows(results, devices)
    page, markdown = report.build(devices, rows, [t for t in built if t.name in tables.REPORT_ORDER])
    text += [page, markdown, *map(str, rows), *exchange.export_lines(store)]
    for model, quant in {(r.model_name, r.quant) for r in results}:
        text.append(str(fit_answers.respond(pb.FitRequest(model_name=model, quant=quant), store,
                                            fit_answers.AnswerCache(store))))
    return "\n".join(text)


def test_stored_rows_outside_the_ranges_break_no_answer_and_change_no_other_device(db_url, tmp_path):
    results, device = ladder()
    evil, corrupted = pb.DeviceInventory(), pb.DeviceInventory()
    evil.CopyFrom(device)
    evil.device_id = "vm-evil"  # the same hostname, another id
    corrupted.CopyFrom(evil)
    corrupted.device_id = "vm-corrupt"
    sha = {r.model_sha256 for r in results}
    with Store(db_url) as store:
        for d in (device, evil, corrupted):
            store.upsert_device(d)
        for r in results:
            store.add_result(r)
        good = [quality(device.device_id, r.quant, 0.01 * (i + 1), model_name=r.model_name,
                        model_sha256=r.model_sha256).result for i, r in enumerate(results) if r.quant != "F16"]
        for q in good:
            store.add_quality(q)
        before = answers_of(store, device.device_id)
        assert sum(len(rows) for rows in before.values()) > 20  # the comparison covers real answers
        assert not re.search(r"\b(nan|-?inf(inity)?)\b", everything(store, tmp_path), re.I)

        # the hostile device: every figure of every kind of row at each edge, stored without ingest's checks
        n = 0
        for edge in EDGES:
            for message in (*results, swept_result("dev-1"), evil):
                n += 1
                bad = hostile_copy(message, n, edge)
                (store.upsert_device if isinstance(bad, pb.DeviceInventory) else store.add_result)(bad)
            for q in good:
                n += 1
                bad = hostile_copy(q, n, edge)
                bad.model_sha256 = "f" * 64  # a file of its own: its quality reaches only its own answers
                store.add_quality(bad)
        for r in wild_sweeps():
            store.add_result(r)
        for kld in (0.0, 5e-324, 1e14, NAN):  # quality of another file, and of no file
            for n, q in enumerate(good):
                bad = hostile_copy(q, n, "low")
                bad.result_id, bad.kl_divergence_mean = f"evil-kld-{kld}-{n}", kld
                bad.model_sha256 = "" if n % 2 else "e" * 64
                store.add_quality(bad)
        corrupt(store)

        assert len(store.results(device_id="vm-evil")) > len(results) * len(EDGES)
        text = everything(store, tmp_path)
        assert not re.search(r"\b(nan|-?inf(inity)?)\b", text, re.I)
        assert answers_of(store, device.device_id) == before
        # serving curves stay physical: no band below zero or above the ceiling of a speed
        serving_curves = tables.build_from_store("serving-curves", store, {})
        top = physical_bounds.bounds("tokens_per_s")[1]
        for row in serving_curves.rows:
            cells = [tables.typed_cell(c) for c in row.cells]
            assert all(0 <= c <= top for c in cells[7:11] if c is not None), cells
        # a band past 100 % (what a wild sweep's leave-one-out errors gave before sweeps were fit monotone) is
        # clamped where every band is drawn, at zero below and the speed's ceiling above
        assert scaling.band_of(100.0, 1.5, "tokens_per_s") == (0.0, 250.0)
        assert scaling.band_of(top, 0.5, "tokens_per_s") == (top / 2, top)
        assert "vm-corrupt" in {d.inventory.device_id for d in store.devices()}  # known by its id
        assert sha  # the ladder's files are named, so the same-file rule was exercised above
