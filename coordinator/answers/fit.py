"""Fit answers: for every known device, does MODEL at QUANT on BACKEND fit, how fast, at what energy, and how
we know. Answers are for an explicit context: the one asked, else FIT_CONTEXT (4096) or the model's trained
context when smaller; every answer says which context it used. The context sets memory only: decode and prefill
are at the device's usual run shape whatever the context (scaling.SPEED_RULE), so the limits tables, which answer
memory at the device's run context, give the same speed for a cell.

Verdict bands, by memory need / the device's RAM (the need is the measured peak, or the scaling model's
prediction or estimate at the asked context):
- fits_comfortably: under 70%;
- tight: 70% to 95% (it runs, but little is left for the OS, other processes and longer contexts);
- does_not_fit: over 95%, or measured out of memory, or decode below --min-tps, or decode power over --max-watts;
- unknown: the model has no catalogued shape and was never measured on the device, or its measurement failed.
Every figure carries its provenance (measured / predicted / estimated, see coordinator/predict/scaling.py).
"""

import collections
import dataclasses
import difflib
import functools
import hashlib
import math
from collections.abc import Callable

from fleetfit.coordinator.predict import fleet_priors, offload, scaling, serving
from fleetfit.coordinator.predict.runs import backend_of, quant_of
from fleetfit.coordinator.answers import render
from fleetfit.coordinator.answers.devices import display_names
from fleetfit.coordinator.answers.devices import find as find_device
from fleetfit.coordinator.answers.limits import limit_row
from fleetfit.models import backends
from fleetfit.models.catalogue import CATALOGUE, Architecture, n_params
from fleetfit.models.errors import ModelError
from fleetfit.models.real_models import REAL_MODELS
from fleetfit.v1 import fleetfit_pb2 as pb
from fleetfit.v1.words import PROVENANCE, VERDICT

MIB = 1024 * 1024
COMFORTABLE, TIGHT = 0.70, 0.95
OK_VERDICTS = (pb.VERDICT_FITS_COMFORTABLY, pb.VERDICT_TIGHT)
DEVICE_QUANTS = ("F16", "Q8_0", "Q4_K_M", "Q4_0")  # precisions `fit --device` answers for, besides measured ones
RANK = {"measured": 0, "predicted": 1, "estimated": 2}
MAX_STREAMS = 1_000_000  # fit --streams: beyond any device's memory
CONTEXT_RULE = (f"memory at the context shown: the one asked (--context), else {scaling.FIT_CONTEXT} or the model's own "
                f"when smaller; {scaling.SPEED_RULE}")


class UnknownModel(ValueError):
    """A model name that no device has measured and no catalogue knows."""


def check_model_known(model_name: str, known: set[str]) -> None:
    if model_name in known:
        return
    near = difflib.get_close_matches(model_name, sorted(known), n=3, cutoff=0.4)
    hint = f"; did you mean {', '.join(near)}?" if near else (f"; known: {', '.join(sorted(known))}" if known else "")
    raise UnknownModel(f"unknown model {model_name!r}{hint}")


def provenance_word(f) -> str:
    """The provenance word of a FitFigure, FitAnswer or PhaseEnergy ("" when it has none)."""
    return PROVENANCE.word(f.provenance_kind)


def _figure_message(value: float, provenance: str, method: str) -> pb.FitFigure:
    return pb.FitFigure(value=value, provenance_kind=PROVENANCE.code(provenance), method=method)


def memory_verdict(fraction: float) -> str:
    """The verdict word for a memory need as a fraction of the device's memory (the bands above)."""
    return "fits_comfortably" if fraction < COMFORTABLE else "tight" if fraction <= TIGHT else "does_not_fit"


def decode_watts(device_id: str, results: list[pb.ProfileResult], exact: pb.ProfileResult | None,
                 device_mean: Callable[[], tuple[float, str, str] | None] | None = None
                 ) -> tuple[float, str, str] | None:
    """Decode power: the exact run's, else the mean of the device's runs; with the power source's provenance.
    `device_mean`: that mean (this function with no exact run) where the caller keeps it per device."""
    def phase(r):
        return next((p for p in r.power.phases if p.phase == "decode" and p.source == r.power.headline_source
                     and p.HasField("average_power_w")), None)

    if (exact is None or not phase(exact)) and device_mean is not None:
        return device_mean()
    runs = [exact] if exact is not None and phase(exact) else [r for r in results if r.device_id == device_id
                                                                 and not r.failure and phase(r)]
    if not runs:
        return None
    phases = [phase(r) for r in runs]
    provenance = "estimated" if any(provenance_word(p) == "estimated" for p in phases) else "measured"
    how = f"{phases[0].method}, {'this run' if len(runs) == 1 and runs[0] is exact else f'mean of {len(runs)} runs'}"
    return sum(p.average_power_w for p in phases) / len(phases), provenance, how


def _figure(f: scaling.Figure | None) -> pb.FitFigure | None:
    if f is None or f.value is None:
        return None
    out = _figure_message(f.value, f.provenance, f.method)
    if f.error_fraction is not None:
        out.error_fraction = f.error_fraction
    return out


def _band_text(f: pb.FitFigure) -> str:
    return " " + render.band_text(f.error_fraction) if f.HasField("error_fraction") else ""


@dataclasses.dataclass(frozen=True)
class Cell:
    """What a question asks of a device: a model at a precision on a backend. `shape`: the model's architecture
    when the catalogue does not know it (read by the operator's CLI from a GGUF or config.json)."""
    model_name: str
    quant: str
    backend: str
    shape: Architecture | None = None


@dataclasses.dataclass(frozen=True)
class Constraints:
    """What a question asks beyond its cell: `context` tokens (None: FIT_CONTEXT, or the model's own when
    smaller), the slowest decode it accepts (per stream with `streams`), the most decode power, and how many
    concurrent streams."""
    context: int | None = None
    min_decode_tps: float | None = None
    max_watts: float | None = None
    streams: int | None = None


@dataclasses.dataclass(frozen=True)
class Prebuilt:
    """What a caller asking many cells of one device builds once and hands to `answer`: the device's scaling and
    serving models, the fleet's priors (the efficiencies a device with only its probes is estimated with) and its
    mean decode power (decode_watts's `device_mean`). What is left None is built for the one answer."""
    device_model: scaling.DeviceModel | None = None
    serving_model: serving.ServingModel | None = None
    priors: fleet_priors.FleetPriors | None = None
    device_power: Callable[[], tuple[float, str, str] | None] | None = None


def answer(device: pb.DeviceInventory, cell: Cell, results: list[pb.ProfileResult],
           constraints: Constraints = Constraints(), built: Prebuilt = Prebuilt(),
           device_name: str = "") -> pb.FitAnswer:
    """Does the cell's model at its precision on its backend fit `device` at the constraints' context (default:
    FIT_CONTEXT, or the model's own when smaller), how fast, how many streams it serves (with `constraints.streams`:
    does it serve that many, each at `constraints.min_decode_tps` or the interactive speed), and how we know."""
    model_name, quant, backend, shape = cell.model_name, cell.quant, cell.backend, cell.shape
    min_decode_tps, max_watts, streams = constraints.min_decode_tps, constraints.max_watts, constraints.streams
    dm, sm, priors = built.device_model, built.serving_model, built.priors
    spec = backends.backend(backend)
    known = shape or CATALOGUE.get(model_name)
    arch = known if spec.can_size(quant) else None
    context = constraints.context or scaling.default_context(known)
    out = pb.FitAnswer(device_id=device.device_id, hostname=device.hostname, ram_total_bytes=device.ram_total_bytes,
                       model_name=model_name, quant=quant, backend=spec.name, context_tokens=context,
                       device_name=device_name or device.hostname or device.device_id)
    mine = [r for r in results if r.device_id == device.device_id and backend_of(r) == spec.name
            and r.model_name == model_name and quant_of(r) == quant]
    if mine:
        out.evidence.CopyFrom(limit_row(mine[-1], out.device_name, device.hostname))
    row = out.evidence if mine else None
    if row is not None and row.failure == pb.FAILURE_KIND_OOM:
        out.fit_verdict, out.reason = pb.VERDICT_DOES_NOT_FIT, f"measured: ran out of memory ({row.error})"
        out.provenance_kind = pb.PROVENANCE_KIND_MEASURED
        return out
    if row is not None and row.failure:
        out.fit_verdict, out.reason = pb.VERDICT_UNKNOWN, f"the measurement failed: {row.error}"
        return out
    if arch is None and row is None:
        out.fit_verdict, out.reason = pb.VERDICT_UNKNOWN, (f"never measured on this device with {spec.name}, and no "
                                                          f"catalogued shape or size formula for {quant} to predict from")
        return out
    if arch is not None:
        dm = dm or scaling.device_model(device, results, spec.name, priors and priors.for_device(device, spec.name))
        pred = dm.predict(arch, quant, context)
        out.calibration.extend(p.label for p in dm.points)
        if pred.ruled_out and row is None:  # a smaller need ran out of memory here: measured, whatever predicts
            out.fit_verdict, out.reason = pb.VERDICT_DOES_NOT_FIT, pred.ruled_out
            out.provenance_kind = pb.PROVENANCE_KIND_MEASURED
            return out
        if pred.decode_tps.provenance == "predicted":
            out.outside_calibration.extend(dm.outside(arch))
        figures = (pred.memory_bytes, pred.decode_tps, pred.prefill_tps)
    else:  # a measured model without a catalogued shape: the measurement alone, at the context it ran at
        how = f"measured at n_ctx {row.n_prompt + row.n_gen} (result {row.result_id})"
        out.context_tokens = row.n_prompt + row.n_gen
        figures = (scaling.Figure(row.memory_bytes if row.HasField("memory_bytes") else None, "measured", how),
                   scaling.Figure(row.decode_tokens_per_s.mean, "measured", how),
                   scaling.Figure(row.prefill_tokens_per_s.mean or None, "measured", how))
    for field, f in zip(("memory_bytes", "decode_tokens_per_s", "prefill_tokens_per_s"), figures):
        if _figure(f) is not None:
            getattr(out, field).CopyFrom(_figure(f))
    power = decode_watts(device.device_id, results, mine[-1] if figures[1].provenance == "measured" else None,
                         built.device_power)
    watts = None
    if power is not None and out.HasField("decode_tokens_per_s"):
        watts, prov, method = power
        prov = max(prov, provenance_word(out.decode_tokens_per_s), key=RANK.get)
        out.joules_per_token.CopyFrom(_figure_message(watts / out.decode_tokens_per_s.value, prov,
                                                      f"decode {watts:.1f} W ({method}) / decode tok/s"))
    present = [provenance_word(f) for f in (out.memory_bytes, out.decode_tokens_per_s) if provenance_word(f)]
    out.provenance_kind = PROVENANCE.code(max(present, key=RANK.get) if present else "")
    out = _verdict(out, device, min_decode_tps, max_watts, watts)
    if arch is not None and out.fit_verdict != pb.VERDICT_UNKNOWN and out.HasField("decode_tokens_per_s"):
        sm = sm if sm is not None else serving.serving_model(dm, results)
        _serving(out, device, arch, sm, streams, min_decode_tps or serving.INTERACTIVE_TPS)
    if arch is not None and spec.name == "llama.cpp":
        _add_offload(out, device, arch, quant, context)
    if out.outside_calibration:  # a question never queues work: measuring it is the operator's explicit request
        out.reason += (f"; outside what this device calibrated on ({'; '.join(out.outside_calibration)}): its "
                       f"speed is extrapolated, the band was validated inside that range only; "
                       f"`fleetfit calibrate {device.device_id} {model_name} --quant {quant}` (or `fleetfit fit "
                       f"{model_name} --quant {quant} --device {device.device_id} --calibrate`) measures it")
    return out


def _add_offload(out: pb.FitAnswer, device: pb.DeviceInventory, arch, quant: str, context: int) -> None:
    """On a device whose llama.cpp build offloads to a GPU: how many layers fit that GPU, and their speed."""
    llama = next((b for b in device.backends if b.name == "llama.cpp"), None)
    offloads = llama is not None and any(c.supported and c.device.startswith("cuda") for c in llama.capabilities)
    gpu = max(device.gpus, key=lambda g: g.memory_total_bytes, default=None)
    if not offloads or gpu is None or not gpu.memory_total_bytes:
        return
    split = offload.largest(device, gpu.memory_total_bytes, arch, quant, context, TIGHT)
    out.gpu_layers = split.gpu_layers
    how = f"{split.method}; at ctx {context}"
    if split.gpu_layers:
        out.gpu_memory_bytes.CopyFrom(_figure_message(split.gpu_bytes, "estimated", how))
    if split.decode_tps is not None:
        out.offload_decode_tokens_per_s.CopyFrom(_figure_message(split.decode_tps, "estimated", how))
    speed = f", estimated decode ~{split.decode_tps:.1f} tok/s" if split.decode_tps is not None else ""
    whole = split.gpu_layers > arch.n_layers
    out.reason += (f"; GPU {gpu.name} ({gpu.memory_total_bytes / MIB:.0f} MiB): "
                   + (f"the whole model fits (~{split.gpu_bytes / MIB:.0f} MiB){speed}" if whole else
                      f"{split.gpu_layers} of {arch.n_layers} layers fit (--gpu-layers {split.gpu_layers}, "
                      f"~{split.gpu_bytes / MIB:.0f} MiB){speed}" if split.gpu_layers else
                      "not even one layer fits; it runs on the CPU"))



def _serving(out: pb.FitAnswer, device: pb.DeviceInventory, arch, sm: serving.ServingModel, streams: int | None,
             target: float) -> None:
    """The most streams that each get `target` tok/s and, with `streams`, whether the device serves that many:
    from the device's sweeps (measured, or predicted from them), else one stream's decode divided (estimated)."""
    out.stream_target_tokens_per_s = target
    decode = out.decode_tokens_per_s
    cap = sm.capacity(arch, out.quant, target) if sm.curves else None
    if cap is not None:
        band = f"; streams within the speed's band: {cap.band[0]}–{cap.band[1]}" if cap.band else ""
        out.max_streams.CopyFrom(_figure_message(cap.streams, cap.provenance, cap.method + band))
    else:
        out.max_streams.CopyFrom(_figure_message(int(decode.value // target), "estimated",
                                                 serving.one_stream_division(sm)))
    mark = "" if provenance_word(out.max_streams) == "measured" else "~"
    if streams is None:
        if out.fit_verdict in OK_VERDICTS:
            out.reason += (f"; serves {mark}{out.max_streams.value:.0f} stream(s) at ≥{target:g} tok/s each "
                           f"({provenance_word(out.max_streams)})")
        return
    out.streams = streams
    kv = scaling.kv_cache_bytes(arch, out.context_tokens)
    need = out.memory_bytes.value + (streams - 1) * kv
    out.serving_memory_bytes.CopyFrom(_figure_message(
        need, provenance_word(out.memory_bytes) if streams == 1 else
        max(provenance_word(out.memory_bytes), "predicted", key=RANK.get),
        f"one stream's {provenance_word(out.memory_bytes)} memory at ctx {out.context_tokens} + {streams - 1} more "
               f"F16 KV caches of {kv / MIB:.1f} MiB (GQA-aware)"))
    if cap is not None:
        aggregate = sm.aggregate(cap.source, streams)
        per_stream = sm.per_stream(cap.source, streams, aggregate)
    else:
        aggregate = scaling.Figure(decode.value, "estimated", serving.one_stream_division(sm))
        per_stream = dataclasses.replace(aggregate, value=decode.value / streams)
    if aggregate.value is not None:
        out.aggregate_tokens_per_s.CopyFrom(_figure(aggregate))
        out.stream_tokens_per_s.CopyFrom(_figure(per_stream))
    capacity = _capacity_bytes(device, out)
    fits = bool(capacity) and need <= TIGHT * capacity
    word = "" if provenance_word(out.stream_tokens_per_s) == "measured" else "~"
    if not fits:
        out.serves = False
        why = f"{streams} streams need ~{need / MIB:.0f} MiB at ctx {out.context_tokens}, over {TIGHT:.0%} of " \
              f"{capacity / MIB:.0f} MiB"
    elif aggregate.value is None:
        why = f"cannot tell the speed of {streams} streams: {aggregate.method}"
    else:
        out.serves = out.stream_tokens_per_s.value >= target
        why = (f"{streams} streams get {word}{out.stream_tokens_per_s.value:.1f} tok/s each "
               f"({provenance_word(out.stream_tokens_per_s)}{_band_text(out.stream_tokens_per_s)}), "
               f"{'at or above' if out.serves else 'below'} the {target:g} asked; memory ~{need / MIB:.0f} MiB")
    if out.HasField("serves") and not out.serves and out.fit_verdict in OK_VERDICTS:
        out.fit_verdict = pb.VERDICT_DOES_NOT_FIT
    out.reason = f"{'serves' if out.serves else 'does not serve' if out.HasField('serves') else 'unknown'}: {why}; " \
                 + out.reason


def _capacity_bytes(device: pb.DeviceInventory, out: pb.FitAnswer) -> int:
    """The memory the answer is judged against: the GPU's for a run measured on a GPU, else the device's RAM."""
    return serving.memory_capacity(device, out.evidence.compute_device if out.HasField("evidence") else "")


def _verdict(out: pb.FitAnswer, device: pb.DeviceInventory, min_tps, max_watts, watts) -> pb.FitAnswer:
    mem, dec = out.memory_bytes, out.decode_tokens_per_s
    mem_kind, dec_kind = provenance_word(mem), provenance_word(dec)
    if not out.HasField("memory_bytes") or not device.ram_total_bytes:
        out.fit_verdict, out.reason = pb.VERDICT_UNKNOWN, "no memory figure, or the device reported no RAM size"
        return out
    need, ram = mem.value, _capacity_bytes(device, out)
    out.memory_fraction = need / ram
    out.memory_headroom_bytes = int(ram - need)
    out.fit_verdict = VERDICT.code(memory_verdict(out.memory_fraction))
    word = {"measured": "measured: peak ", "predicted": "predicted: needs ~", "estimated": "estimated: needs ~"}
    speed = f", decode {'' if dec_kind == 'measured' else '~'}{dec.value:.1f} tok/s" if dec_kind else ""
    memory_kind = "GPU memory" if ram != device.ram_total_bytes else "RAM"
    out.reason = (f"{word[mem_kind]}{need / MIB:.0f} MiB{_band_text(mem)} at ctx {out.context_tokens} of "
                  f"{ram / MIB:.0f} MiB {memory_kind} ({out.memory_fraction:.0%}){speed}"
                  f"{_band_text(dec) if dec_kind else ''}")
    if mem_kind == "predicted" and out.HasField("evidence") and out.evidence.HasField("memory_bytes"):
        out.reason += (f"; measured peak {out.evidence.memory_bytes / MIB:.0f} MiB at ctx "
                       f"{out.evidence.n_prompt + out.evidence.n_gen}, grown to the asked context")
    if out.memory_fraction > 1:
        out.reason = (f"{mem_kind} peak memory {need / MIB:.0f} MiB at ctx {out.context_tokens} exceeds "
                      f"{ram / MIB:.0f} MiB of {memory_kind}")
    if mem_kind == "estimated":
        out.reason += "; nothing measured on this device yet: catalogue formula with default efficiencies"
    elif mem_kind == "predicted" and not out.HasField("evidence"):
        out.reason += f"; {out.model_name} {out.quant} never measured on this device: calibrated on its other runs"
    if out.fit_verdict in OK_VERDICTS and min_tps is not None and dec_kind and dec.value < min_tps:
        out.fit_verdict = pb.VERDICT_DOES_NOT_FIT
        out.reason = f"{dec_kind} decode {dec.value:.1f} tok/s is below the {min_tps:g} asked; " + out.reason
    if out.fit_verdict in OK_VERDICTS and max_watts is not None and watts is not None and watts > max_watts:
        out.fit_verdict = pb.VERDICT_DOES_NOT_FIT
        out.reason = f"decode draws {watts:.1f} W, over the {max_watts:g} W asked; " + out.reason
    return out


def fit(model_name: str, quant: str, backend: str, devices: list[pb.Device], results: list[pb.ProfileResult],
        **constraints) -> list[pb.FitAnswer]:
    """Every device's answer for one cell; `constraints`: Constraints's fields (context, min_decode_tps, max_watts,
    streams)."""
    names = display_names(devices)
    built = Prebuilt(priors=fleet_priors.FleetPriors.of_results(devices, results))
    return [answer(d.inventory, Cell(model_name, quant, backend), results, Constraints(**constraints), built,
                   names[d.inventory.device_id]) for d in devices]


@dataclasses.dataclass(frozen=True)
class Question:
    model_name: str  # empty with a device: the largest model per precision
    quant: str  # canonical for the backend
    backend: str
    device: str  # id or hostname; empty = every device
    constraints: Constraints
    shape: Architecture | None = None  # a model the catalogue does not know, as the operator's CLI read it


def question(request: pb.FitRequest, known_models: set[str]) -> Question:
    """The request checked and spelled canonically, or ValueError (one line) naming what is wrong."""
    limits = dict(min_decode_tps=request.min_decode_tokens_per_s if request.HasField("min_decode_tokens_per_s")
                  else None, context=request.context_tokens if request.HasField("context_tokens") else None,
                  max_watts=request.max_watts if request.HasField("max_watts") else None,
                  streams=request.streams if request.HasField("streams") else None)
    bad = [f"{name} must be positive" for name, value in (("context_tokens", limits["context"]),
           ("min_decode_tokens_per_s", limits["min_decode_tps"]), ("max_watts", limits["max_watts"]),
           ("streams", limits["streams"])) if value is not None and not (0 < value < math.inf)]  # NaN too
    if limits["streams"] is not None and limits["streams"] > MAX_STREAMS:
        bad.append(f"streams must be at most {MAX_STREAMS}")
    if bad:
        raise ValueError("; ".join(bad))
    try:
        spec = backends.backend(request.backend or backends.DEFAULT_BACKEND)
        quant = spec.canonical(request.quant) if request.model_name or request.quant else ""
    except ModelError as exc:
        raise ValueError(str(exc)) from None
    if not request.model_name and not request.device:
        raise ValueError("name a model (with a quant), or a device for its largest model per precision")
    if request.model_name and not quant:
        raise ValueError("a quant is required with a model")
    shape = None
    if request.HasField("shape"):
        shape = _shape(request)
    elif request.model_name:
        check_model_known(request.model_name, known_models | set(REAL_MODELS) | set(CATALOGUE))
    return Question(request.model_name, quant, spec.name, request.device, Constraints(**limits), shape)


def _shape(request: pb.FitRequest) -> Architecture:
    """The request's shape, checked as any catalogue entry is (models/shapes.py checked)."""
    from fleetfit.models.shapes import checked

    return checked(request.shape, request.model_name)


class BadQuestion(ValueError):
    """A fit request that is wrong (question's ValueError): the caller's fault. Any other ValueError while answering
    (a statistics or math error) is the coordinator's, so the server does not answer it as a bad argument."""


def respond(request: pb.FitRequest, store, cache: "AnswerCache") -> pb.FitResponse:
    """The FitResponse for a request: every device, or the one it names (by id, or a hostname only one has);
    BadQuestion for a request that is wrong."""
    known_models = store.model_names()
    try:
        q = question(request, known_models)
    except ValueError as exc:
        raise BadQuestion(str(exc)) from None
    known = store.devices()
    names = display_names(known)
    chosen = [find_device(known, q.device)] if q.device else known
    priors = fleet_priors.FleetPriors(known, lambda device_id: store.results(device_id=device_id))
    if not q.model_name:
        device = chosen[0].inventory
        return pb.FitResponse(answers=largest_per_precision(
            device, q.backend, store.results(device_id=device.device_id), q.constraints, names[device.device_id],
            priors))
    cell = Cell(q.model_name, q.quant, q.backend, q.shape)
    answers = [cache.answer(d, cell, q.constraints, names[d.inventory.device_id], priors) for d in chosen]
    quality = [r for r in store.quality_results(q.model_name) if r.quant == q.quant] if q.backend == "llama.cpp" else []
    files = collections.defaultdict(set)  # device id -> sha256 of the files of this model and quant it ran
    for r in store.results(model_name=q.model_name) if quality else ():
        if quant_of(r) == q.quant and r.model_sha256:
            files[r.device_id].add(r.model_sha256)
    answers = [with_quality(a, quality, names, files[a.device_id]) for a in answers]
    return pb.FitResponse(answers=answers)  # a question reads the store, never writes it (no job is queued)


def with_quality(a: pb.FitAnswer, quality: list[pb.QualityResult], names: dict[str, str],
                 files: set[str] = frozenset()) -> pb.FitAnswer:
    """The answer with its precision's quality cost: the device's own latest measurement, else the latest of
    another device that measured a file this device ran (`files`: their sha256; the KL divergence of a file from
    its F16 is a property of the file, devices differ only in rounding) — never another device's figure for a file
    this device did not run, so no device's quality result reaches the answers of devices it has nothing in common
    with. A device's own row names its file too: one of another file under the same name (a stored model replaced)
    is not its answer once it has run a file of that name (rows without a sha256 predate the field). The figure says
    where it was measured; the reason does not repeat it (fit's table shows both)."""
    own = [r for r in quality if r.device_id == a.device_id and (not files or not r.model_sha256
                                                                 or r.model_sha256 in files)]
    same_file = [r for r in quality if r.model_sha256 and r.model_sha256 in files]
    if not own and not same_file:
        return a
    r = (own or same_file)[-1]
    out = pb.FitAnswer()
    out.CopyFrom(a)
    where = "this device" if own else \
        f"device {names.get(r.device_id, r.device_id)} (the same file, sha256 {r.model_sha256[:12]})"
    out.kl_divergence.CopyFrom(_figure_message(
        r.kl_divergence_mean, "measured",
        f"mean KL divergence from {r.reference_quant} ± {r.kl_divergence_stderr:.2g}, {r.n_positions} positions "
               f"at ctx {r.context_tokens}, fleetfit-agent quality on {where} (result {r.result_id})"))
    return out


# Device models kept between requests (Snapshot.device_model): a model is a function of the device's inventory
# and results only, and calibrating one (a few tens of ms) for each of a thousand devices is most of a table's time.
_MODELS: collections.OrderedDict[tuple, scaling.DeviceModel] = collections.OrderedDict()
MAX_MODELS = 20_000
# Answers kept between requests (Snapshot.answer), keyed by what `answer` reads: the device's inventory and results
# (their digest), its fleet priors' version and the cell. A table asks thousands of cells; asking again is lookups.
_ANSWERS: collections.OrderedDict[tuple, pb.FitAnswer] = collections.OrderedDict()
MAX_ANSWERS = 200_000


def _kept(cache: collections.OrderedDict, key: tuple, make, limit: int):
    """`cache[key]`, made by `make()` when missing; the least recently used entry goes past `limit`."""
    found = cache.get(key)
    if found is None:
        found = cache[key] = make()
        if len(cache) > limit:
            cache.popitem(last=False)
    cache.move_to_end(key)
    return found


@dataclasses.dataclass(frozen=True, eq=False)
class Snapshot:
    """One read of the store (results, devices, quality results) and every answer a request gives from it.

    `fit`, every `limits` table and the report ask `answer` for a cell (device, backend, model, precision,
    context, constraints): one function, each device's scaling and serving model built once per snapshot (and kept
    between requests while the device's inventory and results are the same), so a table cell and `fit`'s answer
    for it are the same figure by construction. `limits all` and the report build all their tables from one."""
    results: list[pb.ProfileResult]
    devices: list[pb.Device]
    quality: list[pb.QualityResult] = dataclasses.field(default_factory=list)
    shapes: dict[str, Architecture] = dataclasses.field(default_factory=dict)  # asked models the catalogue lacks
    _memo: dict = dataclasses.field(default_factory=dict, repr=False)

    @classmethod
    def of_store(cls, store, shapes: dict[str, Architecture] | None = None) -> "Snapshot":
        return cls(store.results(), store.devices(), store.quality_results(), shapes or {})

    @functools.cached_property
    def names(self) -> dict[str, str]:
        """device id -> display name (the id is the key; two devices never merge under one hostname)."""
        return display_names(self.devices)

    def name(self, device_id: str) -> str:
        return self.names.get(device_id, device_id)

    @functools.cached_property
    def by_device(self) -> dict[str, list[pb.ProfileResult]]:
        found: dict[str, list[pb.ProfileResult]] = {}
        for r in self.results:
            found.setdefault(r.device_id, []).append(r)
        return found

    @functools.cached_property
    def priors(self) -> fleet_priors.FleetPriors:
        return fleet_priors.FleetPriors(self.devices, lambda i: self.by_device.get(i, []))

    @functools.cached_property
    def inventories(self) -> dict[str, pb.DeviceInventory]:
        return {d.inventory.device_id: d.inventory for d in self.devices}

    def inventory(self, device_id: str) -> pb.DeviceInventory:
        return self.inventories.get(device_id) or pb.DeviceInventory(device_id=device_id)

    def version(self, device_id: str) -> bytes:
        """A digest of the device's inventory and results: what its models and answers are functions of."""
        key = ("version", device_id)
        if key not in self._memo:
            seen = hashlib.blake2b(self.inventory(device_id).SerializeToString(deterministic=True), digest_size=16)
            seen.update("\0".join(r.result_id for r in self.by_device.get(device_id, [])).encode())
            self._memo[key] = seen.digest()
        return self._memo[key]

    def priors_version(self, device_id: str) -> tuple:
        key = ("priors", device_id)
        if key not in self._memo:
            self._memo[key] = self.priors.version(self.inventory(device_id))
        return self._memo[key]

    def device_power(self, device_id: str) -> tuple[float, str, str] | None:
        """The device's mean decode power (decode_watts of its runs), once per snapshot."""
        key = ("power", device_id)
        if key not in self._memo:
            self._memo[key] = decode_watts(device_id, self.by_device.get(device_id, []), None)
        return self._memo[key]

    def device_model(self, device_id: str, backend: str) -> scaling.DeviceModel:
        """The device's scaling model for `backend`, with this snapshot's fleet priors."""
        key = ("dm", device_id, backend)
        if key not in self._memo:
            inventory, results = self.inventory(device_id), self.by_device.get(device_id, [])
            dm = _kept(_MODELS, (device_id, backend, self.version(device_id)),
                       lambda: scaling.device_model(inventory, results, backend), MAX_MODELS)
            self._memo[key] = dataclasses.replace(dm, priors=self.priors.for_device(inventory, backend))
        return self._memo[key]

    def device_models(self) -> dict[tuple[str, str], scaling.DeviceModel]:
        """The scaling model of every device and backend with results."""
        pairs = sorted({(i, backend_of(r)) for i, rs in self.by_device.items() for r in rs
                        if backend_of(r) in backends.BACKENDS})
        return {(i, b): self.device_model(i, b) for i, b in pairs}

    def serving_model(self, device_id: str, backend: str) -> serving.ServingModel:
        key = ("sm", device_id, backend)
        if key not in self._memo:
            self._memo[key] = serving.serving_model(self.device_model(device_id, backend),
                                                    self.by_device.get(device_id, []))
        return self._memo[key]

    def answer(self, device_id: str, backend: str, model_name: str, quant: str,
               constraints: Constraints = Constraints()) -> pb.FitAnswer:
        """`fit`'s answer for one cell (device, backend, model, precision) under `constraints`, once per snapshot."""
        spec = backends.backend(backend)
        key = ("answer", device_id, spec.name, model_name, quant, constraints)
        if key not in self._memo:
            shape = self.shapes.get(model_name)
            sizes = (shape or CATALOGUE.get(model_name)) is not None and spec.can_size(quant)

            def make() -> pb.FitAnswer:
                built = Prebuilt(self.device_model(device_id, spec.name),
                                 self.serving_model(device_id, spec.name) if sizes else None, self.priors,
                                 lambda: self.device_power(device_id))
                return answer(self.inventory(device_id), Cell(model_name, quant, spec.name, shape),
                              self.by_device.get(device_id, []), constraints, built, self.name(device_id))
            kept = (*key, self.name(device_id), shape, self.version(device_id), self.priors_version(device_id))
            self._memo[key] = _kept(_ANSWERS, kept, make, MAX_ANSWERS)
        return self._memo[key]

    def cell_answer(self, device_id: str, backend: str, model_name: str, quant: str, **constraints) -> pb.FitAnswer:
        """The answer a table cell shows: at the cell's context (cell_context), under `constraints` (the other
        fields of Constraints: min_decode_tps, max_watts, streams)."""
        context = self.cell_context(device_id, backend, model_name, quant)
        return self.answer(device_id, backend, model_name, quant, Constraints(context, **constraints))

    def cell_context(self, device_id: str, backend: str, model_name: str, quant: str) -> int | None:
        """The context a size table answers a cell at: the run's, where the device measured that model and
        precision, else the context its runs usually have (what `fleetfit fit --context` reproduces)."""
        arch = self.shapes.get(model_name) or CATALOGUE.get(model_name)
        if arch is None or not backends.backend(backend).can_size(quant):
            return None
        return self.device_model(device_id, backend).context_for(arch, quant)


class AnswerCache:
    """Fit answers remembered per device until the device's results or inventory change.

    An answer is a function of the device's inventory, its results and the question; the device's result
    count (bumped in the transaction that stores a result, by any coordinator replica) tells when its
    results changed. So a fleet-wide question asked again costs one dictionary lookup per device.
    """

    def __init__(self, store, max_entries: int = 100_000):
        self.store, self.max_entries = store, max_entries
        self.answers: collections.OrderedDict[tuple, pb.FitAnswer] = collections.OrderedDict()

    def answer(self, device: pb.Device, cell: Cell, constraints: Constraints = Constraints(), device_name: str = "",
               priors: fleet_priors.FleetPriors | None = None) -> pb.FitAnswer:
        inventory = hashlib.blake2b(device.inventory.SerializeToString(deterministic=True), digest_size=16).digest()
        key = (device.inventory.device_id, device.results, inventory, cell, device_name, constraints,
               priors.version(device.inventory) if priors else ())
        found = self.answers.get(key)
        if found is None:
            results = self.store.results(device_id=device.inventory.device_id)
            found = self.answers[key] = answer(device.inventory, cell, results, constraints, Prebuilt(priors=priors),
                                               device_name)
            if len(self.answers) > self.max_entries:
                self.answers.popitem(last=False)
        else:
            self.answers.move_to_end(key)
        return found


def largest_per_precision(device: pb.DeviceInventory, backend: str, results: list[pb.ProfileResult],
                          constraints: Constraints = Constraints(), device_name: str = "",
                          priors: fleet_priors.FleetPriors | None = None) -> list[pb.FitAnswer]:
    """Per precision (measured here, and the backend's common ones): the largest catalogued model that fits (with
    `streams`: that serves that many streams)."""
    spec = backends.backend(backend)
    dm = scaling.device_model(device, results, spec.name, priors and priors.for_device(device, spec.name))
    sm = serving.serving_model(dm, results)
    common = DEVICE_QUANTS if spec.takes_gguf_types() else spec.precisions
    quants = list(dict.fromkeys([*common, *(p.quant for p in dm.points)]))
    out = []
    for quant in quants:
        for arch in sorted(CATALOGUE.values(), key=n_params, reverse=True):
            if backends.obtainable(spec, arch.name, set(REAL_MODELS), CATALOGUE):
                continue
            a = answer(device, Cell(arch.name, quant, spec.name), results, constraints, Prebuilt(dm, sm), device_name)
            if a.fit_verdict in OK_VERDICTS:
                out.append(a)
                break
        else:
            out.append(pb.FitAnswer(device_id=device.device_id, hostname=device.hostname, quant=quant,
                                    backend=spec.name, device_name=device_name or device.hostname,
                                    ram_total_bytes=device.ram_total_bytes, fit_verdict=pb.VERDICT_DOES_NOT_FIT,
                                    reason="no catalogued model fits at this precision"))
    return out


def shown(f: pb.FitFigure, scale: float = 1.0, digits: int = 3, verdict: str | None = None):
    """An answer's figure as a table cell: the one rounding rule of fit's table and every limits table."""
    if not provenance_word(f):
        return render.Figure(None, verdict=verdict) if verdict else None
    return render.Figure(round(f.value / scale, digits), band=f.error_fraction if f.HasField("error_fraction") else None,
                         provenance=provenance_word(f), verdict=verdict)



def fit_table(answers: list[pb.FitAnswer]) -> tuple[list[str], list[list]]:
    """Typed rows (render.render shows them); `~` marks a predicted or estimated figure, `±` its band. Streams are
    typed columns: with --streams, the count asked, whether the device serves it and each stream's speed; else the
    most streams at the target speed (a figure with its provenance) and that target."""
    asked = any(a.HasField("streams") for a in answers)
    streams = ["streams", "serves", "stream tok/s"] if asked else ["max streams", "stream target tok/s"]
    header = ["device", "model", "backend", "quant", "context", "verdict", "memory MiB", "RAM MiB",
              "% RAM", "decode tok/s", "prefill tok/s", "J/token", *streams, "KLD vs F16", "provenance", "reason",
              "evidence", "device id"]
    body = [[a.device_name or a.hostname or a.device_id, a.model_name or None, a.backend, a.quant,
             a.context_tokens or None, VERDICT.word(a.fit_verdict), shown(a.memory_bytes, MIB, 1),
             round(a.ram_total_bytes / MIB),
             round(100 * a.memory_fraction, 1) if a.HasField("memory_fraction") else None,
             shown(a.decode_tokens_per_s), shown(a.prefill_tokens_per_s), shown(a.joules_per_token, digits=6),
             *_streams_cells(a, asked), shown(a.kl_divergence, digits=5), provenance_word(a) or None, a.reason,
             a.evidence.result_id if a.HasField("evidence") else None, a.device_id]
            for a in answers]
    return header, body


def _streams_cells(a: pb.FitAnswer, asked: bool) -> list:
    """With --streams: the count, whether it serves them (None: unknown) and each one's speed; else the most
    streams at the target speed and that target."""
    if asked:
        return [a.streams if a.HasField("streams") else None, a.serves if a.HasField("serves") else None,
                shown(a.stream_tokens_per_s)]
    if not provenance_word(a.max_streams):
        return [None, None]
    return [shown(a.max_streams, digits=0), a.stream_target_tokens_per_s or None]
