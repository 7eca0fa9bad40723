"""The seed's model-size tables (issue 3): memory, speed and capacity — rows are model sizes, columns precisions,
per device; every cell is fit's answer for it (size_cell)."""

import dataclasses

from fleetfit.coordinator.answers import fit as fit_rules
from fleetfit.coordinator.answers import render
from fleetfit.coordinator.answers.devices import DeviceLookupError
from fleetfit.coordinator.answers.devices import find as find_device
from fleetfit.coordinator.answers.limits import chosen_shapes, comparable, limit_rows
from fleetfit.coordinator.answers.tables.registry import (Fleet, TableData, TableError, device_option, float_option,
                                                          params_text, runs_precision, shape_option, table)
from fleetfit.coordinator.predict import scaling
from fleetfit.models import backends
from fleetfit.models.catalogue import CATALOGUE, Architecture, n_params
from fleetfit.v1 import fleetfit_pb2 as pb


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
    wanted = shape_option(options)
    device = device_option(fleet, options)
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
                or not runs_precision(spec, quant):
            return None
        return size_cell(fleet, device_id, backend, model, quant, what)

    return keys, predicted


def size_cell(fleet: Fleet, device_id: str, backend: str, model: str, quant: str, what: str):
    """A size table's cell: fit's answer for the device, backend, model and precision at the cell's context
    (Snapshot.cell_context), by fit's rounding rule; a measured figure as a plain number, a predicted one with
    its band, 'does not fit' where that is the answer (a measured out-of-memory run shows no figure)."""
    a = fleet.cell_answer(device_id, backend, model, quant)
    verdict = "does_not_fit" if a.fit_verdict == pb.VERDICT_DOES_NOT_FIT else None
    figure = fit_rules.shown(a.memory_bytes, 1e9) if what == "memory" else fit_rules.shown(a.decode_tokens_per_s)
    if figure is None or figure.value is None:
        return render.Figure(None, verdict=verdict) if verdict else None
    if figure.provenance == "measured" and verdict is None and figure.band is None:
        return figure.value
    return dataclasses.replace(figure, verdict=verdict)


@table("memory", "Memory requirements by model size: measured peak memory (GB)")
def memory(fleet: Fleet, options: dict[str, str]) -> TableData:
    ladder = _ladder(fleet, options)
    keys, predicted = _with_seed_sizes(fleet, ladder)
    rows = [[fleet.name(d), b, m, params_text(ladder.params[(d, b, m)]),
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
        rows.append([fleet.name(d), b, m, params_text(ladder.params[(d, b, m)]), *figures, factor,
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
                params_text(largest.model_n_params) if largest else None,
                size_cell(fleet, device, backend, largest.model_name, q, "memory") if largest else None,
                size_cell(fleet, device, backend, largest.model_name, q, "decode") if largest else None,
                first_out.model_name if first_out else None,
                first_out.error if first_out else None,
                largest_text(fleet, dm, q) if dm else None, largest_text(fleet, dm, q, min_tps) if dm else None,
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
    if not runs_precision(spec, quant) or not spec.can_size(quant) or not dm.device.ram_total_bytes or dm.calibration is None:
        return None
    device_id = dm.device.device_id
    for arch in sorted(CATALOGUE.values(), key=n_params, reverse=True):
        if backends.obtainable(spec, arch.name, set(), CATALOGUE):
            continue
        a = fleet.cell_answer(device_id, dm.backend, arch.name, quant, min_decode_tps=min_tps)
        if a.fit_verdict in fit_rules.OK_VERDICTS:
            return arch, a
    return None


def largest_text(fleet: Fleet, dm: scaling.DeviceModel, quant: str, min_tps: float | None = None) -> str | None:
    found = largest(fleet, dm, quant, min_tps)
    if found is None:
        return None
    arch, a = found
    mark = "" if fit_rules.provenance_word(a.memory_bytes) == "measured" else "~"
    decode = fit_rules.shown(a.decode_tokens_per_s)
    speed = f", {render.number_text(decode.value)} tok/s" if decode else ""
    return f"{mark}{arch.name} ({scaling.params_text(arch)}{speed})"


def _relative(fleet: Fleet, dm: scaling.DeviceModel, base: scaling.DeviceModel | None, reference: str, quant: str
              ) -> str | None:
    spec = backends.backend(dm.backend)
    if base is None or dm.calibration is None or base.calibration is None or not runs_precision(spec, quant) \
            or not spec.can_size(quant):
        return None
    mine, theirs = (fleet.cell_answer(m.device.device_id, m.backend, reference, quant).decode_tokens_per_s
                    for m in (dm, base))
    if not mine.value or not theirs.value:
        return None
    mark = "" if fit_rules.provenance_word(mine) == fit_rules.provenance_word(theirs) == "measured" else "~"
    return f"{mark}{mine.value / theirs.value:.2f}x"
