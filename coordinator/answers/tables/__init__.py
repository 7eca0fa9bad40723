"""The coordinator's tables, by name: each a plain function of the fleet's results and devices.

`fleetfit limits NAME` and the GetTable RPC serve every table registered here with @table. A cell is a
number, a string, or None where there is no figure (rendered as "n/a", never as 0).
"""

import dataclasses
from typing import Callable

from google.protobuf import json_format, struct_pb2

from fleetfit.coordinator.answers import fit as fit_rules
from fleetfit.coordinator.answers import render
from fleetfit.coordinator.predict import scaling, serving
from fleetfit.coordinator.answers.devices import DeviceLookupError
from fleetfit.coordinator.answers.devices import find as find_device
from fleetfit.coordinator.answers.limits import (DEFAULT_SHAPE, backend_of, chosen_shapes, comparable, limit_rows, quant_of,
                                         shape_matches)
from fleetfit.models import backends
from fleetfit.models.catalogue import CATALOGUE, Architecture, n_params
from fleetfit.v1 import fleetfit_pb2 as pb
from fleetfit.v1.words import BOTTLENECK, PROVENANCE


class TableError(ValueError):
    """An unknown table or a bad option; the message is one line for users."""


Fleet = fit_rules.Snapshot  # one read of the store; every table's cells are fit's answers from it


@dataclasses.dataclass(frozen=True)
class TableData:
    columns: list[str]
    rows: list[list]
    notes: list[str] = dataclasses.field(default_factory=list)


@dataclasses.dataclass(frozen=True)
class TableSpec:
    name: str
    title: str
    build: Callable[[Fleet, dict[str, str]], TableData]


TABLES: dict[str, TableSpec] = {}


def table(name: str, title: str):
    def register(build):
        TABLES[name] = TableSpec(name, title, build)
        return build

    return register


def float_option(options: dict[str, str], key: str, default: float, minimum: float = 0.0) -> float:
    try:
        value = float(options.get(key, default))
    except ValueError:
        raise TableError(f"option {key} must be a number, got {options[key]!r}") from None
    if value < minimum:
        raise TableError(f"option {key} must be at least {minimum:g}, got {value:g}")
    return value


def _cell(value) -> struct_pb2.Value:
    if isinstance(value, render.Figure):  # a struct on the wire: value, stdev, band, provenance, verdict
        figure = struct_pb2.Value()
        figure.struct_value.update({k: v for k, v in dataclasses.asdict(value).items() if v is not None})
        return figure
    if value is None:
        return struct_pb2.Value(null_value=struct_pb2.NULL_VALUE)
    if isinstance(value, bool):
        return struct_pb2.Value(bool_value=value)
    if isinstance(value, (int, float)):
        return struct_pb2.Value(number_value=float(value))
    return struct_pb2.Value(string_value=str(value))


MAX_SHAPES = 16  # GetTableRequest.shapes


def checked_shapes(messages) -> dict[str, Architecture]:
    """GetTableRequest.shapes by name, each checked (models/shapes.py checked), or TableError (one line)."""
    from fleetfit.models.shapes import checked

    if len(messages) > MAX_SHAPES:
        raise TableError(f"at most {MAX_SHAPES} shapes, got {len(messages)}")
    try:
        return {m.name: checked(m, m.name) for m in messages}
    except ValueError as exc:
        raise TableError(str(exc)) from None


def build_from_store(name: str, store, options: dict[str, str], shapes: dict[str, Architecture] | None = None
                     ) -> pb.Table:
    return build_many([name], store, options, shapes)[0]


def build_many(names: list[str], store, options: dict[str, str], shapes: dict[str, Architecture] | None = None
               ) -> list[pb.Table]:
    """Several tables (`limits all`, the report) from one read of the store: every cell one snapshot's answer."""
    if len(names) > len(TABLES):
        raise TableError(f"at most {len(TABLES)} tables in one request, got {len(names)}")
    unknown = [n for n in names if n not in TABLES]
    if unknown:
        raise TableError(f"unknown table {unknown[0]!r} (known: {', '.join(TABLES)})")
    fleet = Fleet.of_store(store, shapes)
    asked = ReadOptions(options)
    found = [build(name, fleet, asked) for name in names]
    asked.check(names)
    return found


class ReadOptions(dict):
    """A table's options, recording each key its build read: a key no table read is a typo, refused (TableError)
    with a did-you-mean, never ignored."""

    def __init__(self, options: dict[str, str]):
        super().__init__(options)
        self.read: set[str] = set()

    def get(self, key, default=None):
        self.read.add(key)
        return super().get(key, default)

    def __getitem__(self, key):
        self.read.add(key)
        return super().__getitem__(key)

    def __contains__(self, key):
        self.read.add(key)
        return super().__contains__(key)

    def check(self, names: list[str]) -> None:
        unknown = sorted(set(self) - self.read)
        if not unknown:
            return
        import difflib

        near = [k for k in sorted(self.read) if k.startswith(unknown[0])] or \
            difflib.get_close_matches(unknown[0], sorted(self.read), n=1, cutoff=0.5)
        known = ", ".join(sorted(self.read)) or "none"
        raise TableError(f"unknown option {unknown[0]!r} for {', '.join(names)}"
                         f"{f' (did you mean {near[0]}? ' if near else ' ('}known: {known})")


def build(name: str, fleet: Fleet, options: dict[str, str]) -> pb.Table:
    spec = TABLES.get(name)
    if spec is None:
        raise TableError(f"unknown table {name!r} (known: {', '.join(TABLES)})")
    data = _with_device_ids(spec.build(fleet, options), fleet)
    return pb.Table(name=spec.name, title=spec.title, columns=data.columns, notes=data.notes,
                    rows=[pb.TableRow(cells=[_cell(c) for c in row]) for row in data.rows])


DEVICE_ID_COLUMN = "device id"


def _with_device_ids(data: TableData, fleet: Fleet) -> TableData:
    """The table with a "device id" column last where it has a "device" column and none yet: display names are
    unique by construction (devices.display_names), so each names one id; tools and the report key rows by it."""
    if "device" not in data.columns or DEVICE_ID_COLUMN in data.columns:
        return data
    column, ids = data.columns.index("device"), {name: i for i, name in fleet.names.items()}
    return dataclasses.replace(data, columns=[*data.columns, DEVICE_ID_COLUMN],
                               rows=[[*row, ids.get(row[column], row[column] if row[column] in fleet.names else None)]
                                     for row in data.rows])


def typed_cell(value: struct_pb2.Value):
    """A wire cell as the typed cell it was built from (None, a number, text, a bool or a render.Figure)."""
    kind = value.WhichOneof("kind")
    if kind in (None, "null_value"):
        return None
    if kind == "struct_value":
        fields = {f.name for f in dataclasses.fields(render.Figure)}
        found = json_format.MessageToDict(value.struct_value)
        return render.Figure(**{"value": None, **{k: v for k, v in found.items() if k in fields}})
    return getattr(value, kind)


def _text(value: struct_pb2.Value) -> str:
    return render.display(typed_cell(value))


def render_table(message: pb.Table, fmt: str, wide: bool = False) -> str:
    """`message` in format `fmt` (render.render: people's formats leave out the device id column and the other
    WIDE_ONLY ones unless `wide`; display names are unique by construction, devices.with_display_names), with the
    table's notes under it in people's formats."""
    body = [[typed_cell(c) for c in row.cells] for row in message.rows]
    text = render.render(list(message.columns), body, fmt, table=message.name, wide=wide)
    if fmt in ("table", "md") and message.notes:
        text += "\n\n" + render.notes_text(list(message.notes), fmt)
    return text


def _shape_option(options: dict[str, str]) -> str:
    wanted = options.get("shape", DEFAULT_SHAPE).strip()
    if not wanted or not wanted.split()[0].startswith("pp") or "/tg" not in wanted.split()[0]:
        raise TableError(f"option shape must start like pp512/tg128, got {wanted!r}")
    return wanted


def _device_option(fleet: Fleet, options: dict[str, str]) -> str | None:
    """The device id an option `device` names (an id, or a hostname one device has)."""
    if not options.get("device"):
        return None
    try:
        return find_device(fleet.devices, options["device"]).inventory.device_id
    except DeviceLookupError as exc:
        raise TableError(f"option device: {exc}") from None


@table("measured", "Measured limits: device × backend × model × precision × run shape")
def measured(fleet: Fleet, options: dict[str, str]) -> TableData:
    rows = limit_rows(fleet.results, fleet.devices)
    if "shape" in options:
        rows = [r for r in rows if shape_matches(r.shape, _shape_option(options))]
    header, body = render.limit_table(rows)
    return TableData(header, body, ["every row is measured on the device it names (pp/tg as llama-bench), one row "
                                    "per run shape; failed runs are in `fleetfit limits failures`",
                                    "memory: GPU memory for GPU runs, else the worker's peak RSS"])


@table("failures", "Failed runs: what did not run, where, and why")
def failures(fleet: Fleet, options: dict[str, str]) -> TableData:
    rows = [[r.device_name, r.backend, r.model_name or None, r.quant or None, r.shape,
             render.FAILURES.get(r.failure, "error"), r.error, r.result_id]
            for r in limit_rows(fleet.results, fleet.devices, failures=True)]
    return TableData(["device", "backend", "model", "precision", "shape", "failure", "error", "result"], rows,
                     ["the latest failed run per device, backend, model, precision and shape; failures are never rows "
                      "of the measurement tables (an out-of-memory run shows there as 'does not fit')"])


# -- the seed's model-size tables (issue 3): rows are model sizes, columns precisions, per device

PRECISION_ORDER = ("F32", "BF16", "F16", "Q8_0", "Q6_K", "Q5_K_M", "Q5_0", "Q4_K_M", "Q4_1", "Q4_0",
                   "fp32", "bf16", "fp16", "int8", "int4")


def _precision_rank(q: str) -> tuple[int, str]:
    return (PRECISION_ORDER.index(q) if q in PRECISION_ORDER else len(PRECISION_ORDER), q)


@dataclasses.dataclass
class Ladder:
    """The comparable rows of each device and backend (one run shape each), as the size tables read them."""
    cells: dict[tuple[str, str, str, str], pb.LimitRow]  # (device, backend, model, precision) -> row
    quants: list[str]  # the precisions present, in PRECISION_ORDER
    keys: list[tuple[str, str, str]]  # (device, backend, model), by device then backend then parameters
    params: dict[tuple[str, str, str], int]
    shapes: dict[tuple[str, str], str]  # (device, backend) -> the shape its cells came from


def _ladder(fleet: Fleet, options: dict[str, str]) -> Ladder:
    """Successful runs of one shape per device and backend (option shape, default pp512/tg128; a device with no
    run of that shape shows its most common one, named in the shape column); OOM runs as 'does not fit'."""
    wanted = _shape_option(options)
    device = _device_option(fleet, options)
    rows = [r for r in limit_rows(fleet.results, fleet.devices) if device in (None, r.device_id)]
    shapes = chosen_shapes(rows, wanted)
    rows = comparable(rows, wanted)
    ooms = [r for r in limit_rows(fleet.results, fleet.devices, failures=True)
            if r.failure == pb.FAILURE_KIND_OOM and device in (None, r.device_id)
            and shapes.get((r.device_id, r.backend), r.shape).split()[0] == r.shape.split()[0]]
    cells = {(r.device_id, r.backend, r.model_name, r.quant): r for r in ooms}
    cells.update({(r.device_id, r.backend, r.model_name, r.quant): r for r in rows})
    quants = sorted({k[3] for k in cells}, key=_precision_rank)
    params = {k[:3]: r.model_n_params for k, r in cells.items()}
    keys = sorted(params, key=lambda k: (k[0], k[1], params[k]))
    return Ladder(cells, quants, keys, params, shapes)


def _params_text(n: int) -> str:
    return f"{n / 1e9:.1f}B" if n >= 1e9 else f"{n / 1e6:.0f}M"


PREDICTED_NOTE = ("~: predicted by the device's scaling model for that backend (calibrated on its own runs; `fleetfit "
                  "fit` gives the leave-one-size-out error band); bare numbers are measured")
CONTEXT_NOTE = ("every figure is `fleetfit fit`'s answer for its cell; memory at the context of the device's run of "
                "that model and precision, else of its latest run (`fleetfit fit MODEL --quant Q --device D --context "
                f"N` gives the same memory; fit's default context is {scaling.FIT_CONTEXT}, or the model's own when "
                f"smaller); {scaling.SPEED_RULE}")
SHAPE_NOTE = ("shape: the run shape the row's cells come from (option shape, default pp512/tg128; a device and "
              "backend with no run of that shape show their most common one)")


def device_models(fleet: Fleet) -> dict[tuple[str, str], scaling.DeviceModel]:
    """The scaling model of every device and backend with results (the snapshot's, built once)."""
    return fleet.device_models()


def _with_seed_sizes(fleet: Fleet, ladder: Ladder):
    """The measured (device, backend, model) keys plus the seed's sizes not measured on each, and a function that
    gives the predicted cell ("~x") of one device, backend, model and precision."""
    models = device_models(fleet)
    pairs = [k for k in dict.fromkeys(k[:2] for k in ladder.keys) if k in models and models[k].calibration is not None]
    spec_of = {b: backends.backend(b) for _, b in pairs}
    known = {**CATALOGUE, **fleet.shapes}  # the catalogue, and the models asked about by shape
    extra = {(d, b, m) for d, b in pairs for m in (*scaling.SEED_SIZES, *fleet.shapes)
             if not backends.obtainable(spec_of[b], m, set(), known)}
    for key in extra:
        ladder.params.setdefault(key, n_params(known[key[2]]))
    keys = sorted(set(ladder.keys) | extra, key=lambda k: (k[0], k[1], ladder.params[k]))

    def predicted(device_id: str, backend: str, model: str, quant: str, what: str):
        dm = models.get((device_id, backend))
        spec = backends.BACKENDS.get(backend)
        if dm is None or dm.calibration is None or model not in known or spec is None or not spec.can_size(quant) \
                or not _takes(spec, quant):
            return None
        return size_cell(fleet, device_id, backend, model, quant, what)

    return keys, predicted


def size_cell(fleet: Fleet, device_id: str, backend: str, model: str, quant: str, what: str):
    """A size table's cell: fit's answer for the device, backend, model and precision at the cell's context
    (Snapshot.cell_context), by fit's rounding rule; a measured figure as a plain number, a predicted one with
    its band, 'does not fit' where that is the answer (a measured out-of-memory run shows no figure)."""
    a = fleet.answer(device_id, backend, model, quant, fleet.cell_context(device_id, backend, model, quant))
    verdict = "does_not_fit" if a.fit_verdict == pb.VERDICT_DOES_NOT_FIT else None
    figure = fit_rules.shown(a.memory_bytes, 1e9) if what == "memory" else fit_rules.shown(a.decode_tokens_per_s)
    if figure is None or figure.value is None:
        return render.Figure(None, verdict=verdict) if verdict else None
    if figure.provenance == "measured" and verdict is None and figure.band is None:
        return figure.value
    return dataclasses.replace(figure, verdict=verdict)


def _takes(spec: backends.BackendSpec, quant: str) -> bool:
    try:
        return spec.canonical(quant) == quant
    except Exception:
        return False


@table("memory", "Memory requirements by model size: measured peak memory (GB)")
def memory(fleet: Fleet, options: dict[str, str]) -> TableData:
    ladder = _ladder(fleet, options)
    keys, predicted = _with_seed_sizes(fleet, ladder)
    rows = [[fleet.name(d), b, m, _params_text(ladder.params[(d, b, m)]),
             *(size_cell(fleet, d, b, m, q, "memory") if (d, b, m, q) in ladder.cells
               else predicted(d, b, m, q, "memory") for q in ladder.quants), ladder.shapes.get((d, b))]
            for d, b, m in keys]
    return TableData(["device", "backend", "model", "parameters", *(f"{q} GB" for q in ladder.quants), "shape"], rows,
                     ["peak memory: the worker's peak RSS (weights read without mmap), or GPU memory for GPU runs; "
                      "'does not fit': out of memory, or not attempted because the predicted need exceeded the "
                      "memory cap", SHAPE_NOTE, CONTEXT_NOTE, PREDICTED_NOTE])


@table("speed", "Inference speed by model size: measured decode tokens/s")
def speed(fleet: Fleet, options: dict[str, str]) -> TableData:
    ladder = _ladder(fleet, options)
    keys, predicted = _with_seed_sizes(fleet, ladder)
    rows, smallest = [], {}
    for d, b, m in keys:
        figures = [size_cell(fleet, d, b, m, q, "decode") if (d, b, m, q) in ladder.cells
                   else predicted(d, b, m, q, "decode") for q in ladder.quants]
        measured = [(q, f) for q, f in zip(ladder.quants, figures) if isinstance(f, float)]
        for q, f in measured:  # the smallest size measured on this device and backend, per precision
            smallest.setdefault((d, b, q), f)
        # speed against the smallest size on this device and backend, in the first precision this size was measured at
        factor = round(measured[0][1] / smallest[(d, b, measured[0][0])], 3) if measured else None
        rows.append([fleet.name(d), b, m, _params_text(ladder.params[(d, b, m)]), *figures, factor,
                     ladder.shapes.get((d, b))])
    return TableData(["device", "backend", "model", "parameters", *(f"{q} tok/s" for q in ladder.quants),
                      "speed factor", "shape"], rows,
                     ["decode as llama-bench tg: single-token decodes from an empty cache, random tokens",
                      "speed factor: against the smallest size measured on the same device and backend, first "
                      "precision shown", SHAPE_NOTE, CONTEXT_NOTE, PREDICTED_NOTE])


@table("capacity", "Hardware capacity: the largest model that fits, per device, backend and precision")
def capacity(fleet: Fleet, options: dict[str, str]) -> TableData:
    ladder = _ladder(fleet, options)
    min_tps = float_option(options, "min_tps", 5.0)
    models = device_models(fleet)
    pairs = list(dict.fromkeys(k[:2] for k in ladder.keys))
    baseline = _baseline(options.get("baseline"), fleet, [d for d, _ in pairs])
    try:
        reference = scaling.resolve(options.get("reference", "llama-2-7b"), "F16")[0].name
    except scaling.ScalingError as exc:
        raise TableError(f"option reference: {exc}") from None
    rows = []
    for device, backend in pairs:
        dm = models.get((device, backend))
        for q in ladder.quants:
            measured = [(ladder.params[k], ladder.cells[(*k, q)]) for k in ladder.keys
                        if k[:2] == (device, backend) and (*k, q) in ladder.cells]
            if not measured:
                continue
            fitting = [(n, r) for n, r in measured if not r.failure]
            failing = [(n, r) for n, r in measured if r.failure == pb.FAILURE_KIND_OOM]
            largest = max(fitting, key=lambda x: x[0], default=(0, None))[1]
            first_out = min(failing, key=lambda x: x[0], default=(0, None))[1]
            rows.append([
                fleet.name(device), backend, q,
                largest.model_name if largest else None,
                _params_text(largest.model_n_params) if largest else None,
                size_cell(fleet, device, backend, largest.model_name, q, "memory") if largest else None,
                size_cell(fleet, device, backend, largest.model_name, q, "decode") if largest else None,
                first_out.model_name if first_out else None,
                first_out.error if first_out else None,
                _largest_text(fleet, dm, q) if dm else None, _largest_text(fleet, dm, q, min_tps) if dm else None,
                _relative(fleet, dm, models.get((baseline, backend)), reference, q) if dm else None,
                ladder.shapes.get((device, backend)),
            ])
    return TableData(["device", "backend", "precision", "largest that fits", "parameters", "peak GB", "decode tok/s",
                      "smallest that does not fit", "why", "largest in catalogue (predicted)",
                      f"largest at ≥{min_tps:g} tok/s", f"{reference} decode vs {fleet.name(baseline) if baseline else None}",
                      "shape"], rows,
                     ["from measured runs (synthetic ladders from `fleetfit-agent limits probe` and real models)",
                      "largest in catalogue: the scaling model over every catalogued architecture the backend runs, "
                      "under 95% of RAM (fit's does_not_fit band); ~ marks a prediction",
                      f"speed target: option min_tps (now {min_tps:g}); baseline device: option baseline (device id, "
                      f"or a hostname one device has), same backend; reference model: option reference",
                      SHAPE_NOTE, CONTEXT_NOTE, PREDICTED_NOTE])


def _baseline(asked: str | None, fleet: Fleet, device_ids: list[str]) -> str | None:
    if not asked:
        return device_ids[0] if device_ids else None
    try:
        found = find_device(fleet.devices, asked).inventory.device_id
    except DeviceLookupError as exc:
        raise TableError(f"option baseline: {exc}") from None
    if found not in device_ids:
        raise TableError(f"option baseline: {asked!r} has no measurements (measured: {', '.join(dict.fromkeys(device_ids))})")
    return found


def largest(fleet: Fleet, dm: scaling.DeviceModel, quant: str, min_tps: float | None = None
            ) -> tuple[Architecture, pb.FitAnswer] | None:
    """(architecture, fit's answer) of the largest catalogued model that fits (fits_comfortably or tight, and with
    `min_tps` at least that decode), each answered at its cell's context (Snapshot.cell_context)."""
    spec = backends.backend(dm.backend)
    if not _takes(spec, quant) or not spec.can_size(quant) or not dm.device.ram_total_bytes or dm.calibration is None:
        return None
    device_id = dm.device.device_id
    for arch in sorted(CATALOGUE.values(), key=n_params, reverse=True):
        if backends.obtainable(spec, arch.name, set(), CATALOGUE):
            continue
        a = fleet.answer(device_id, dm.backend, arch.name, quant, fleet.cell_context(device_id, dm.backend, arch.name,
                                                                                     quant), min_decode_tps=min_tps)
        if a.fit_verdict in fit_rules.OK_VERDICTS:
            return arch, a
    return None


def _largest_text(fleet: Fleet, dm: scaling.DeviceModel, quant: str, min_tps: float | None = None) -> str | None:
    found = largest(fleet, dm, quant, min_tps)
    if found is None:
        return None
    arch, a = found
    mark = "" if fit_rules.kind(a.memory_bytes) == "measured" else "~"
    decode = fit_rules.shown(a.decode_tokens_per_s)
    speed = f", {render.number_text(decode.value)} tok/s" if decode else ""
    return f"{mark}{arch.name} ({scaling.params_text(arch)}{speed})"


def _relative(fleet: Fleet, dm: scaling.DeviceModel, base: scaling.DeviceModel | None, reference: str, quant: str
              ) -> str | None:
    spec = backends.backend(dm.backend)
    if base is None or dm.calibration is None or base.calibration is None or not _takes(spec, quant) \
            or not spec.can_size(quant):
        return None
    mine, theirs = (fleet.answer(m.device.device_id, m.backend, reference, quant,
                                 fleet.cell_context(m.device.device_id, m.backend, reference, quant)).decode_tokens_per_s
                    for m in (dm, base))
    if not mine.value or not theirs.value:
        return None
    mark = "" if fit_rules.kind(mine) == fit_rules.kind(theirs) == "measured" else "~"
    return f"{mark}{mine.value / theirs.value:.2f}x"


# -- power, energy and roofline (issue 5): from each result's PowerTelemetry and Roofline

HOURS_PER_MONTH = 730.0  # 8760 / 12


def _latest_measured(fleet: Fleet) -> list[tuple[str, pb.ProfileResult]]:
    """(device display name, latest successful result) per device, backend, model and precision, sorted by id."""
    found = {}
    for r in fleet.results:  # oldest first
        if not r.failure:
            found[(r.device_id, backend_of(r), r.model_name, quant_of(r))] = r
    return [(fleet.name(key[0]), r) for key, r in sorted(found.items())]


def _decode_energy(r: pb.ProfileResult) -> pb.PhaseEnergy | None:
    """The decode phase of the result's headline source (the widest scope; rails are never summed)."""
    return next((p for p in r.power.phases if p.phase == "decode" and p.source == r.power.headline_source), None)


def _rounded(value: float | None, digits: int):
    return round(value, digits) if value is not None else None


def _opt(message, field: str, digits: int = 4):
    return round(getattr(message, field), digits) if message is not None and message.HasField(field) else None


def _models_supported(rows: list[tuple[str, pb.ProfileResult]]) -> dict[str, str]:
    """Per device: the range of parameter counts that ran there."""
    sizes: dict[str, list[int]] = {}
    for name, r in rows:
        if r.HasField("model_n_params"):
            sizes.setdefault(name, []).append(r.model_n_params)
    return {name: f"{_params_text(min(n))}–{_params_text(max(n))}" for name, n in sizes.items()}


def _how(p: pb.PhaseEnergy | None) -> str | None:
    if p is None:
        return None
    word = PROVENANCE.word(p.provenance_kind)
    return f"{word.upper() if word == 'estimated' else word} ({p.method}, {p.scope})"


POWER_NOTES = [
    "decode W, tokens/J and J/token: `fleetfit fit`'s answer for the cell (the decode phase's average power of the "
    "run of that model and precision, its headline source, else the mean of the device's runs, over fit's decode "
    "tok/s); peak, idle and net: that phase as measured; net = minus the idle baseline measured before the run",
    "ESTIMATED rows: no readable sensor; CPU utilization x a per-CPU-class power model, not a measurement",
]


def _energy_answer(fleet: Fleet, r: pb.ProfileResult) -> tuple[float | None, float | None, str | None]:
    """(decode W, J/token, how) of `fit`'s answer for the result's cell (its device, backend, model and precision,
    at the cell's context): J/token = decode W / decode tok/s, both as fit gives them; Nones where fit gives none."""
    backend = backend_of(r)
    if backend not in backends.BACKENDS:
        return None, None, None
    quant = quant_of(r)
    a = fleet.answer(r.device_id, backend, r.model_name, quant, fleet.cell_context(r.device_id, backend,
                                                                                  r.model_name, quant))
    f = a.joules_per_token
    if not fit_rules.kind(f) or not fit_rules.kind(a.decode_tokens_per_s):
        return None, None, None
    word = fit_rules.kind(f)
    return f.value * a.decode_tokens_per_s.value, f.value, f"{word.upper() if word == 'estimated' else word} ({f.method})"


@table("power", "Power consumption scaling: decode watts and tokens per joule")
def power(fleet: Fleet, options: dict[str, str]) -> TableData:
    rows = _latest_measured(fleet)
    supported = _models_supported(rows)
    body = []
    for name, r in rows:
        p = _decode_energy(r)
        watts, per_token, how = _energy_answer(fleet, r)
        body.append([name, backend_of(r), r.model_name, quant_of(r), _rounded(watts, 3), _opt(p, "peak_power_w", 3),
                     _opt(p, "idle_power_w", 3), _rounded(1 / per_token if per_token else None, 3),
                     _rounded(per_token, 5), _opt(p, "net_joules_per_token", 5), supported.get(name),
                     _how(p) if _opt(p, "average_power_w") is not None else how])
    return TableData(["device", "backend", "model", "quant", "decode W", "peak W", "idle W", "tokens/J", "J/token",
                      "net J/token", "models supported", "provenance (method, scope)"], body, POWER_NOTES)


@table("energy-cost", "Energy cost analysis: monthly energy and cost at the measured decode power")
def energy_cost(fleet: Fleet, options: dict[str, str]) -> TableData:
    price = float_option(options, "price_per_kwh", 0.15)
    duty = float_option(options, "duty_cycle", 1.0)
    if duty > 1:
        raise TableError(f"option duty_cycle must be at most 1, got {duty:g}")
    rows = _latest_measured(fleet)
    supported = _models_supported(rows)
    body = []
    for name, r in rows:
        p = _decode_energy(r)
        watts, per_token, how = _energy_answer(fleet, r)
        kwh = watts * HOURS_PER_MONTH * duty / 1000 if watts is not None else None
        per_million = per_token * 1e6 / 3.6e6 * price if per_token is not None else None
        body.append([name, backend_of(r), r.model_name, quant_of(r), round(watts / 1000, 5) if watts is not None else None,
                     round(kwh, 3) if kwh is not None else None, round(kwh * price, 2) if kwh is not None else None,
                     round(per_million, 4) if per_million is not None else None, supported.get(name),
                     _how(p) if _opt(p, "average_power_w") is not None else how])
    return TableData(["device", "backend", "model", "quant", "power kW", "kWh/month", "cost/month", "cost per 1M tokens",
                      "models supported", "provenance (method, scope)"], body,
                     [f"price {price:g} per kWh (option price_per_kwh), duty cycle {duty:g} (option duty_cycle), "
                      f"{HOURS_PER_MONTH:g} h per month at the decode phase's average power", *POWER_NOTES])


@table("bandwidth", "Memory bandwidth scaling: decode against the device's measured bandwidth")
def bandwidth(fleet: Fleet, options: dict[str, str]) -> TableData:
    body = []
    for name, r in _latest_measured(fleet):
        rl = r.roofline if r.HasField("roofline") else None
        body.append([name, backend_of(r), r.model_name, quant_of(r),
                     _params_text(r.model_n_params) if r.HasField("model_n_params") else None,
                     round(rl.bytes_per_token / 1e6, 2) if rl is not None and rl.HasField("bytes_per_token") else None,
                     round(r.decode_tokens_per_s.mean, 3), _opt(rl, "achieved_gb_per_s", 3),
                     _opt(rl, "device_bandwidth_gb_per_s", 3), _opt(rl, "percent_of_bandwidth", 1),
                     _opt(rl, "arithmetic_intensity_flop_per_byte", 3), (BOTTLENECK.word(rl.bottleneck_kind) or None) if rl else None])
    return TableData(["device", "backend", "model", "quant", "parameters", "MB/token", "decode tok/s", "achieved GB/s",
                      "device GB/s", "% of bandwidth", "FLOP/byte", "bottleneck"], body,
                     ["bytes/token: weight tensor bytes from the GGUF + F16 KV cache (GQA-aware) at the mean decode "
                      "context; achieved = bytes/token x decode tok/s; device GB/s: the agent's triad probe",
                      "bottleneck: memory when FLOP/byte is below the device's ridge (float32 matmul peak / bandwidth)"])


# -- deployment limits and recommendations (issue 7): the scaling model against use thresholds

USES = (("real-time", "realtime_tps", 20.0), ("interactive", "interactive_tps", serving.INTERACTIVE_TPS),
        ("batch", "batch_tps", 1.0))


def _uses(options: dict[str, str]) -> list[tuple[str, float]]:
    return [(use, float_option(options, key, default, minimum=1e-6)) for use, key, default in USES]


def _ladder_devices(fleet: Fleet, models: dict | None = None) -> list[tuple[str, scaling.DeviceModel]]:
    """(display name, scaling model) of every calibrated device and backend."""
    models = models if models is not None else device_models(fleet)
    return [(fleet.name(i), dm) for (i, _), dm in models.items() if dm.calibration is not None]


def _streams_per_device(a: pb.FitAnswer) -> tuple[render.Figure | None, int, str | None]:
    """(cell, count, how): the streams one device serves at the answer's stream speed each (fit's max_streams:
    from its sweeps where it has some, else one stream's decode divided)."""
    if not fit_rules.kind(a.max_streams):  # a documented word, never null (issue 27 item 5)
        return None, 0, "no stream count: the answer has no decode figure"
    n = int(a.max_streams.value)
    return render.Figure(n, provenance=fit_rules.kind(a.max_streams)), n, a.max_streams.method


@table("deployment", "Deployment limits: the largest model per device and precision for each use's decode speed")
def deployment(fleet: Fleet, options: dict[str, str]) -> TableData:
    uses = _uses(options)
    interactive = dict(uses)["interactive"]
    rows = []
    for name, dm in _ladder_devices(fleet):
        for quant in dict.fromkeys(p.quant for p in dm.points):
            found = largest(fleet, dm, quant, interactive)
            streams = _streams_per_device(found[1]) if found else \
                (None, 0, f"no catalogued model decodes at ≥{interactive:g} tok/s here")
            rows.append([name, dm.backend, quant,
                         f"{dm.device.ram_total_bytes / 1e9:.1f}" if dm.device.ram_total_bytes else None,
                         *(_largest_text(fleet, dm, quant, tps) for _, tps in uses), _largest_text(fleet, dm, quant),
                         streams[0], streams[2]])
    return TableData(["device", "backend", "precision", "RAM GB", *(f"{use} (≥{tps:g} tok/s)" for use, tps in uses),
                      "offline (fits at all)", "interactive streams", "streams: how"], rows,
                     ["largest catalogued model under 95% of RAM whose decode meets the use's speed; thresholds are "
                      "options realtime_tps, interactive_tps, batch_tps (tokens/s of one stream)",
                      "interactive streams: how many concurrent streams of the interactive model each get the "
                      "interactive speed (the serving table's max streams); 'one-stream division': "
                      + serving.DIVISION, PREDICTED_NOTE])


SCALES = (("small", 100), ("medium", 10_000), ("large", 100_000))


@table("recommendations", "Deployment recommendations by scale of use: what to run, on how many devices, at what cost")
def recommendations(fleet: Fleet, options: dict[str, str]) -> TableData:
    interactive = dict(_uses(options))["interactive"]
    active = float_option(options, "active_fraction", 0.05)
    price = float_option(options, "price_per_kwh", 0.15)
    if active > 1:
        raise TableError(f"option active_fraction must be at most 1, got {active:g}")
    watts = {d: fleet.device_power(d) for d in fleet.by_device}
    choices = []  # per device and backend: the model to run and the streams one device serves
    for name, dm in _ladder_devices(fleet):
        best = max(((q, largest(fleet, dm, q, interactive)) for q in dict.fromkeys(p.quant for p in dm.points)),
                   key=lambda qf: (n_params(qf[1][0]) if qf[1] else 0, -(qf[1][1].memory_bytes.value if qf[1] else 0)))
        quant, found = best
        streams = _streams_per_device(found[1]) if found else None
        choices.append((name, dm, quant, found, streams))
    rows = []
    for scale, users in SCALES:
        wanted = max(1, round(users * active))
        for name, dm, quant, found, streams in choices:
            if found is None:
                rows.append([scale, users, wanted, name, dm.backend, None, None, None, None, None, None,
                             f"no catalogued model decodes at ≥{interactive:g} tok/s here"])
                continue
            arch, a = found
            cell, per_device, how = streams
            n_devices = -(-wanted // per_device) if per_device else None
            w = watts.get(dm.device.device_id)
            cost = round(n_devices * w[0] * HOURS_PER_MONTH / 1000 * price, 2) if w and n_devices else None
            decode = fit_rules.shown(a.decode_tokens_per_s)
            rows.append([scale, users, wanted, name, dm.backend, arch.name, quant, decode, cell, n_devices, cost, how])
    return TableData(["scale", "users", "concurrent streams", "device", "backend", "model", "precision",
                      "one-stream decode tok/s", "streams per device", "devices needed", "energy cost/month",
                      "streams: how"], rows,
                     [f"concurrent streams = users x active_fraction ({active:g}); each stream needs the interactive "
                      f"speed ({interactive:g} tok/s, option interactive_tps)",
                      "streams per device: from the device's concurrency sweeps (measured counts, or predicted from "
                      "them: the serving table's max streams); 'one-stream division': " + serving.DIVISION,
                      "model: the largest catalogued model that meets the interactive speed on the device, any "
                      "precision measured there",
                      f"energy cost: devices x the device's mean decode power x {HOURS_PER_MONTH:g} h x price_per_kwh "
                      f"({price:g}); power may be ESTIMATED (see the power table)", PREDICTED_NOTE])


# -- serving capacity (issue 14): concurrency sweeps, and predictions calibrated on them (coordinator/predict/serving.py)

def serving_models(fleet: Fleet, models: dict | None = None) -> dict[tuple[str, str], serving.ServingModel]:
    """The serving model of every device and backend with a concurrency sweep."""
    models = models if models is not None else device_models(fleet)
    swept = sorted({(c.device_id, c.backend) for c in serving.curves(fleet.results)})
    return {k: fleet.serving_model(*k) for k in swept if k in models}


def _tokens_option(options: dict[str, str], key: str, default: int) -> int:
    value = float_option(options, key, default, minimum=1)
    if not value.is_integer() or value > 1_000_000:
        raise TableError(f"option {key} must be a whole number of tokens up to 1000000, got {options[key]!r}")
    return int(value)


def _figure_cell(value: float | None, measured: bool, band: float | None = None, digits: int = 4):
    """A serving figure: measured, or predicted with the band of the aggregate speed when it has one."""
    if value is None:
        return None
    return render.Figure(round(value, digits), band=None if measured else band,
                         provenance="measured" if measured else "predicted")


def _serving_label(cap: serving.Capacity, sm: serving.ServingModel) -> str:
    cm = cap.source
    if cm.curve is not None:
        dip = "" if cm.curve.monotonic else "; not monotonic: its aggregate falls somewhere as streams are added"
        if cap.provenance == "measured":
            return f"measured: sweep of {cm.curve.counts} streams{dip}"
        return f"predicted from its sweep of {cm.curve.counts} streams (t = a + b·N){dip}"
    fitted = ", ".join(sm.calibration.fitted_on) if sm.calibration else "none"
    return f"predicted: not swept here; calibrated on the sweeps of {fitted}"


def _answer_at(fleet: Fleet, sm: serving.ServingModel, model: str, quant: str, **limits) -> pb.FitAnswer:
    """`fit`'s answer for the model on the serving model's device and backend, at the cell's context."""
    device_id, backend = sm.dm.device.device_id, sm.dm.backend
    return fleet.answer(device_id, backend, model, quant, fleet.cell_context(device_id, backend, model, quant),
                        **limits)


def _serving_figures(fleet: Fleet, sm: serving.ServingModel, model: str, quant: str, min_tps: float,
                     cap: serving.Capacity) -> tuple[render.Figure, render.Figure | None, render.Figure | None]:
    """(max streams, aggregate, per-stream) at the most streams that each get `min_tps`: `fit`'s answer for the
    cell (`fit MODEL --quant Q --device D --min-tps T`, then `--streams N`), the same capacity by construction; a
    model fit cannot size (no catalogued shape), or a device it cannot judge (no RAM figure), from the sweep."""
    a = _answer_at(fleet, sm, model, quant, min_decode_tps=min_tps)
    if fit_rules.kind(a.max_streams) and int(a.max_streams.value) == cap.streams:
        streams = _streams_per_device(a)[0]
        if not cap.streams:
            return streams, None, None
        at = _answer_at(fleet, sm, model, quant, min_decode_tps=min_tps, streams=cap.streams)
        return streams, fit_rules.shown(at.aggregate_tokens_per_s, digits=4), \
            fit_rules.shown(at.stream_tokens_per_s, digits=4)
    measured = cap.provenance == "measured"
    band = cap.aggregate_tps.error_fraction
    return (render.Figure(cap.streams, provenance=cap.provenance), _figure_cell(cap.aggregate_tps.value, measured, band),
            _figure_cell(cap.per_stream_tps.value, measured, band))


def _serving_row(fleet: Fleet, sm: serving.ServingModel, model: str, quant: str, min_tps: float, prompt: int,
                 response: int) -> list | None:
    cap = sm.capacity(model, quant, min_tps)  # the call fit's answer makes: its sweep, its band of streams
    if cap is None:
        return None
    cm = cap.source
    streams, aggregate, per_stream = _serving_figures(fleet, sm, model, quant, min_tps, cap)
    measured = aggregate is not None and aggregate.provenance == "measured"
    band = aggregate.band if aggregate is not None else None
    one = cm.one_stream.prefill_tps.value if cm.one_stream else None
    req = serving.request_figures(cm.curve, cap.streams, aggregate.value if aggregate else None, one, prompt, response)
    point = cm.curve.at(cap.streams) if cm.curve else None
    if point is not None:
        memory = point.peak_bytes
    else:
        per_kv, base, _ = sm.memory_line(CATALOGUE.get(model), cm)
        memory = base + cap.streams * per_kv if per_kv is not None and cap.streams else None
    shape = cm.curve.shape if cm.curve else f"as {max(sm.curves, key=lambda c: c.result.started_unix_s).shape}"
    return [fleet.name(sm.dm.device.device_id), sm.dm.backend, model, quant, shape,
            cm.curve.counts if cm.curve else None, streams, cap.streams_range(), aggregate, per_stream,
            _figure_cell(req.requests_per_hour, measured, band, 0), _figure_cell(req.ttft_ms_p50, measured),
            _figure_cell(req.ttft_ms_p99, measured), _figure_cell(req.response_s_p50, measured),
            _figure_cell(req.response_s_p99, measured),
            _figure_cell(memory / 1e9 if memory else None, measured), _figure_cell(req.joules, measured),
            _serving_label(cap, sm)]


def _unswept_models(sm: serving.ServingModel) -> list[tuple[str, str]]:
    """(model, precision) to predict on a swept device: the seed's sizes and the models measured there with one
    stream, at each precision swept there, that have no sweep."""
    spec = backends.backend(sm.dm.backend)
    quants = dict.fromkeys(c.quant for c in sm.curves)
    models = dict.fromkeys([*scaling.SEED_SIZES, *(p.model for p in sm.dm.points)])
    return [(m, q) for q in quants for m in models if sm.curve(m, q) is None and m in CATALOGUE
            and not backends.obtainable(spec, m, set(), CATALOGUE) and spec.can_size(q) and _takes(spec, q)]


@table("serving", "Cloud deployment scaling: concurrent streams, requests per hour and latency per device")
def serving_table(fleet: Fleet, options: dict[str, str]) -> TableData:
    min_tps = dict(_uses(options))["interactive"]
    prompt = _tokens_option(options, "prompt_tokens", serving.PROMPT_TOKENS)
    response = _tokens_option(options, "response_tokens", serving.RESPONSE_TOKENS)
    device = _device_option(fleet, options)
    rows = []
    for (device_id, _), sm in serving_models(fleet).items():
        if device not in (None, device_id):
            continue
        swept = dict.fromkeys((c.model, c.quant) for c in sm.curves)  # one row per cell: the sweep fit reads
        found = [(n_params(CATALOGUE[m]) if m in CATALOGUE else 0, m, q, "",
                  _serving_row(fleet, sm, m, q, min_tps, prompt, response)) for m, q in swept]
        found += [(n_params(CATALOGUE[m]), m, q, "", _serving_row(fleet, sm, m, q, min_tps, prompt, response))
                  for m, q in _unswept_models(sm)]
        rows += [row for *_, row in sorted(found, key=lambda f: f[:4]) if row is not None]
    return TableData(["device", "backend", "model", "precision", "shape", "streams swept",
                      f"max streams ≥{min_tps:g} tok/s", "max streams band", "aggregate tok/s", "per-stream tok/s",
                      f"requests/hour ({prompt} in, {response} out)", "TTFT p50 ms", "TTFT p99 ms",
                      "response p50 s", "response p99 s", "peak memory GB", "J/request", "provenance"], rows,
                     [f"max streams: the most concurrent streams that each still decode at ≥{min_tps:g} tok/s "
                      "(option interactive_tps); the figures after it are at that many streams",
                      f"request: {prompt} prompt tokens in, {response} out (options prompt_tokens, response_tokens); "
                      + serving.METHOD,
                      "measured: a count the sweep ran (`fleetfit-agent profile --parallel 1,2,4,8`; the result's "
                      "one-stream run is its 1 when the sweep has none), figures derived from its measured rates; "
                      "~: predicted, ± the band of the aggregate speed (largest leave-one-out error on the device's "
                      "sweeps), (a–b) the streams within that band; a ~ without ± has no band (the device has too "
                      "few sweeps to hold one out)",
                      "predicted: beyond or between a sweep's counts, t(N) = a + b·N (one decode step for N streams) "
                      "fitted on its points; a model not swept, one stream from the scaling model plus a per-stream "
                      "cost (FLOPs/token at the device's batched compute rate + KV cache read) calibrated on the "
                      "device's sweeps; capped where the KV caches pass 95% of memory and at "
                      f"{serving.EXTRAPOLATION}x the largest count swept there",
                      "devices without a sweep have no rows here (recommendations says how it counts them)"])


def _powers_of_two(top: int) -> list[int]:
    return [1 << i for i in range(max(top, 1).bit_length()) if 1 << i <= top]


def _curve_figures(fleet: Fleet, sm: serving.ServingModel, cm: serving.CurveModel, model: str, quant: str,
                   streams: int) -> tuple[render.Figure, render.Figure]:
    """(aggregate, per-stream) at `streams`: `fit MODEL --quant Q --device D --streams N`'s figures; from the sweep
    where fit cannot answer the cell (no catalogued shape, no RAM figure)."""
    a = _answer_at(fleet, sm, model, quant, streams=streams)
    if fit_rules.kind(a.aggregate_tokens_per_s) and fit_rules.kind(a.aggregate_tokens_per_s) != "estimated":
        return (fit_rules.shown(a.aggregate_tokens_per_s, digits=4), fit_rules.shown(a.stream_tokens_per_s, digits=4))
    f = sm.aggregate(cm, streams)
    per_stream = sm.per_stream(cm, streams, f)
    return (render.Figure(round(f.value, 4), band=f.error_fraction, provenance=f.provenance),
            render.Figure(round(per_stream.value, 4), provenance=per_stream.provenance))


@table("serving-curves", "Serving curves: aggregate and per-stream decode against concurrent streams")
def serving_curves(fleet: Fleet, options: dict[str, str]) -> TableData:
    rows = []
    for (device_id, backend), sm in serving_models(fleet).items():
        for model, quant in dict.fromkeys((c.model, c.quant) for c in sm.curves):  # the sweep fit reads, per cell
            c, cm = sm.curve(model, quant), sm.curve_model(model, quant)
            counts = [p.streams for p in c.points]
            mem_cap, _ = sm.memory_cap(c.arch, cm, sm.capacity_bytes(cm))
            top = min(4 * counts[-1], serving.EXTRAPOLATION * sm.largest_swept, *([mem_cap] if mem_cap else []))
            predicted = [n for n in _powers_of_two(top) if n not in counts] if cm.line else []
            for n in sorted([*counts, *predicted]):
                aggregate, per_stream = _curve_figures(fleet, sm, cm, model, quant, n)
                point = c.at(n)
                band = scaling.band_of(aggregate.value, aggregate.band, "tokens_per_s") \
                    if point is None and aggregate.band is not None else (None, None)
                rows.append([fleet.name(device_id), backend, model, quant, c.shape, n, aggregate.provenance,
                             aggregate.value, per_stream.value, *(round(x, 4) if x is not None else None for x in band),
                             point.source if point else "t(N) = a + b·N fitted on the sweep"])
    return TableData(["device", "backend", "model", "precision", "shape", "streams", "provenance", "aggregate tok/s",
                      "per-stream tok/s", "aggregate low", "aggregate high", "source"], rows,
                     ["measured: the counts each sweep ran; predicted: the powers of two up to 4x its largest count "
                      "(within memory) that it did not run, from t(N) = a + b·N fitted on its points",
                      "low/high: the predicted aggregate ± the largest leave-one-count-out error on the device's "
                      "sweeps"])


# `fleetfit limits all`: the seed's tables in the seed's order, then the raw measurements
SEED_ORDER = ("memory", "speed", "bandwidth", "capacity", "power", "energy-cost", "serving", "deployment",
              "recommendations", "measured", "serving-curves", "failures")
REPORT_ORDER = (*SEED_ORDER, "quality")  # `fleetfit report`: the seed's tables and the quality table


@table("quality", "Quality beside speed: KL divergence from F16, perplexity and same top token, per precision")
def quality(fleet: Fleet, options: dict[str, str]) -> TableData:
    """The latest quality result per device, model and precision, with that device's measured decode speed."""
    latest = {(q.device_id, q.model_name, q.quant): q for q in fleet.quality}
    decode = {(r.device_id, r.model_name, r.quant): r.decode_tokens_per_s.mean
              for r in fleet.results if not r.failure and r.decode_tokens_per_s.mean}
    rows = []
    for (device_id, model, quant), q in sorted(latest.items(), key=lambda kv: (kv[0][0], kv[0][1],
                                                                              -kv[1].kl_divergence_mean)):
        rows.append([fleet.name(device_id), model, quant, q.reference_quant,
                     round(q.kl_divergence_mean, 6), round(q.kl_divergence_stderr, 6), round(q.kl_divergence_p99, 5),
                     round(q.perplexity, 3), round(q.perplexity_stderr, 3), round(100 * q.same_top_token_fraction, 1),
                     q.context_tokens, q.n_positions, decode.get((device_id, model, quant)), q.result_id])
    return TableData(["device", "model", "precision", "reference", "mean KLD", "KLD stderr", "KLD p99", "perplexity",
                      "perplexity stderr", "same top token %", "context", "positions", "decode tok/s", "result"], rows,
                     ["measured by fleetfit-agent quality on the device it names: llama-perplexity --kl-divergence's "
                      "method (context-sized chunks, second half scored) against the reference precision; stderr: "
                      "the standard error of the mean over the scored positions",
                      "decode tok/s: the device's measured llama-bench-style decode of that file, when it has one"])
