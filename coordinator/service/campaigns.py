"""Campaigns: a device selector and models × quants × backends, expanded into jobs for each matching device
and what it can run, and the progress of those jobs.

Selectors are comma-separated terms `KEY OP VALUE` (OP: = != >= <= > <):
  arch, os, hostname, device, cpu      text (= and != only; cpu matches a substring of the CPU model)
  ram, gpu_mem                          bytes, with a unit: 512MB, 8GB, 16GiB (GB = 10^9, GiB = 2^30)
  cores, gpus                           numbers
  label                                 label=lab: a label whose value (or key) is "lab"; label.site=lab
Jobs are declarative: they name a model of the catalogue (or carry a model's shape, read by the operator's CLI
from a GGUF header or config.json: CampaignSpec.shapes, synthesized on the device) and a quant, never a path or a
command. A campaign
queues only what each device can run (its reported backends, capabilities and the models it can obtain, checked
against the shared vocabulary in models/backends.py); the rest is skipped per device with the reason. A device
still probing (registered, its capability trials not yet reported) gets the jobs that what it reported allows;
when its trials arrive, those they rule out leave the queue and are skipped with the reason (after_trials).
"""

import dataclasses
import difflib
import operator
import re

from fleetfit.coordinator.answers.devices import display_names
from fleetfit.coordinator.service.model_store import stored_refusal
from fleetfit.coordinator.service.store import Campaign
from fleetfit.coordinator.service.model_store import HIGH_PRECISIONS
from fleetfit.models import backends, job_bounds
from fleetfit.models.catalogue import CATALOGUE, Architecture
from fleetfit.models.errors import ModelError
from fleetfit.models.real_models import REAL_MODELS
from fleetfit.models.shapes import checked, to_proto
from fleetfit.v1 import fleetfit_pb2 as pb
from fleetfit.v1.words import JOB_STATE

OPS = {"=": operator.eq, "!=": operator.ne, ">=": operator.ge, "<=": operator.le, ">": operator.gt, "<": operator.lt}
TEXT_KEYS = {"arch", "os", "hostname", "device", "cpu"}
NUMBER_KEYS = {"cores", "gpus"}
BYTES_KEYS = {"ram", "gpu_mem"}
UNITS = {"b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12, "kib": 2**10, "mib": 2**20, "gib": 2**30,
         "tib": 2**40}
MAX_SHAPES = 16  # CampaignSpec.shapes
TERM = re.compile(r"^\s*([a-z_]+(?:\.[\w.-]+)?)\s*(!=|>=|<=|=|>|<)\s*(.+?)\s*$")


class SelectorError(ValueError):
    """A selector that cannot be parsed; the message says which term and why."""


@dataclasses.dataclass(frozen=True)
class Term:
    key: str
    op: str
    value: str | float


def parse_selector(text: str) -> list[Term]:
    terms = []
    for raw in (t for t in text.split(",") if t.strip()):
        m = TERM.match(raw)
        if not m:
            raise SelectorError(f"bad selector term {raw.strip()!r} (expected KEY OP VALUE, e.g. ram>=8GB)")
        key, op, value = m.groups()
        base = key.split(".", 1)[0]
        if base in TEXT_KEYS or base == "label":
            if op not in ("=", "!="):
                raise SelectorError(f"{key} is text: use = or !=, not {op}")
            if base != "label" and "." in key:
                raise SelectorError(f"unknown selector key {key!r}")
            terms.append(Term(key, op, value))
        elif base in NUMBER_KEYS and "." not in key:
            if not re.fullmatch(r"\d+(?:\.\d+)?", value):
                raise SelectorError(f"{key} needs a number, got {value!r}")
            terms.append(Term(key, op, float(value)))
        elif base in BYTES_KEYS and "." not in key:
            unit = re.fullmatch(r"(\d+(?:\.\d+)?|\.\d+)\s*([a-zA-Z]*)", value)
            if not unit or unit.group(2).lower() not in UNITS or not unit.group(2):
                raise SelectorError(f"{key} needs a size with a unit (e.g. 8GB, 16GiB), got {value!r}")
            terms.append(Term(key, op, float(unit.group(1)) * UNITS[unit.group(2).lower()]))
        else:
            known = sorted(TEXT_KEYS | NUMBER_KEYS | BYTES_KEYS | {"label", "label.KEY"})
            near = difflib.get_close_matches(key, known, n=1)
            hint = f"did you mean {near[0]}? " if near else ""
            raise SelectorError(f"unknown selector key {key!r} ({hint}known: {', '.join(known)}; a label's key: "
                                f"label.{base}={value})")
    return terms


MAX_LISTED = 12  # values of a key named in a selector that matched nothing


def no_match(selector: str, terms: list[Term], devices: list[pb.Device]) -> str:
    """Why a selector matched nothing, in one line: the values each of its keys has in the fleet."""
    if not devices:
        return f"no device matches {selector!r}: no device has registered yet"
    seen = []
    for key in dict.fromkeys(t.key for t in terms):
        if key == "label":
            values = sorted({f"{k}={v}" for d in devices for k, v in d.labels.items()})
        elif key.startswith("label."):
            values = sorted({d.labels[key[len("label."):]] for d in devices if key[len("label."):] in d.labels})
        elif key in BYTES_KEYS:
            values = sorted({f"{_value(key, d.inventory) / 1e9:.1f}GB" for d in devices})
        elif key == "cpu":
            values = sorted({d.inventory.cpu_model for d in devices})
        else:
            values = sorted({str(_value(key, d.inventory)) for d in devices})
        shown = ", ".join(values[:MAX_LISTED]) + (f", ... ({len(values)} in all)" if len(values) > MAX_LISTED else "")
        seen.append(f"{key}: {shown or 'none'}")
    return f"no device matches {selector!r}; the {len(devices)} device(s) have " + "; ".join(seen)


def _value(key: str, inv: pb.DeviceInventory):
    return {
        "arch": inv.arch, "os": inv.os, "hostname": inv.hostname, "device": inv.device_id,
        "cores": inv.cpus_usable or inv.cpu_cores_physical, "gpus": len(inv.gpus), "ram": inv.ram_total_bytes,
        "gpu_mem": max((g.memory_total_bytes for g in inv.gpus), default=0),
    }[key]


def _text_holds(term: Term, inv: pb.DeviceInventory, labels: dict[str, str]) -> bool:
    if term.key == "label":
        return term.value in labels.values() or term.value in labels
    if term.key.startswith("label."):
        return labels.get(term.key[len("label."):]) == term.value
    if term.key == "cpu":
        return term.value.lower() in inv.cpu_model.lower()
    return _value(term.key, inv) == term.value


def matches(terms: list[Term], inv: pb.DeviceInventory, labels: dict[str, str]) -> bool:
    for term in terms:
        if isinstance(term.value, float):
            ok = OPS[term.op](_value(term.key, inv), term.value)
        else:
            ok = _text_holds(term, inv, labels) == (term.op == "=")
        if not ok:
            return False
    return True


def spec_shapes(spec: pb.CampaignSpec) -> dict[str, Architecture]:
    """The campaign's shapes by name (each for a model it names), or ValueError (one line)."""
    if len(spec.shapes) > MAX_SHAPES:
        raise ValueError(f"a campaign carries at most {MAX_SHAPES} shapes, got {len(spec.shapes)}")
    found = {}
    for message in spec.shapes:
        job_bounds.check_model_name(message.name)
        if message.name not in spec.models:
            raise ValueError(f"shape {message.name!r} is for no model of the campaign")
        if message.name in found:
            raise ValueError(f"shape {message.name!r} is given twice")
        found[message.name] = checked(message, message.name)
    return found


def check_request(request: pb.ProfileRequest) -> pb.ProfileRequest:
    """The request with its backend and precision spelled canonically, or ValueError (one line) saying why it
    cannot be queued (models/job_bounds.py: a model named, never a path; parameters within bounds)."""
    if not (request.model.name or request.model.path):
        raise ValueError("the request names no model")
    job_bounds.check_job(request)
    if request.model.HasField("shape"):
        checked(request.model.shape, request.model.name)
    canonical = pb.ProfileRequest()
    canonical.CopyFrom(request)
    try:
        spec = backends.backend(request.backend or backends.DEFAULT_BACKEND)
        canonical.backend = spec.name
        if request.quant:
            canonical.quant = spec.canonical(request.quant)
    except ModelError as exc:
        raise ValueError(str(exc)) from None
    return canonical


def check_spec(spec: pb.CampaignSpec) -> None:
    """Raise ValueError (one line) for a spec that names nothing, or a backend, model or precision that none of
    its backends knows."""
    if not (spec.models and spec.quants and spec.backends):
        raise ValueError("a campaign needs at least one model, one quant and one backend")
    if spec.template.model.name:
        raise ValueError("a campaign template must not name a model: its models are in spec.models")
    job_bounds.check_parameters(spec.template)
    for model in spec.models:
        job_bounds.check_model_name(model)
    for model in spec.stored:
        if not model.HasField("shape"):
            raise ValueError(f"stored model {model.name!r} is {model.architecture}, a family whose shape fleetfit does "
                             "not read: campaigns run stored models of the families fleetfit models")
    if spec.template.HasField("quality"):
        stored = {m.name for m in spec.stored}
        if shapes_only := [m for m in spec.models if m not in stored and m.lower() not in REAL_MODELS]:
            raise ValueError(f"--quality needs real weights: {', '.join(shapes_only)} would run as random weights "
                             "(add the file with fleetfit models add, and name it)")
    known = {**CATALOGUE, **spec_shapes(spec)}
    try:
        named = [backends.backend(b) for b in spec.backends]
    except ModelError as exc:
        raise ValueError(str(exc)) from None
    for model in spec.models:
        why = [backends.obtainable(b, model, set(REAL_MODELS), known) for b in named]
        if all(why):
            known = sorted(set(CATALOGUE) | set(REAL_MODELS))
            raise ValueError(f"{why[0]}" if len(named) == 1 and model in known else
                             f"no backend of the campaign can run model {model!r} ({'; '.join(why)})")
    for quant in spec.quants:
        if not any(_canonical(b, quant) for b in named):
            raise ValueError(f"precision {quant[:40]!r} is not one that {', '.join(b.name for b in named)} take "
                             f"({'; '.join(f'{b.name}: {b.precision_text()}' for b in named)})")


def _canonical(spec: backends.BackendSpec, precision: str) -> str | None:
    try:
        return spec.canonical(precision)
    except ModelError:
        return None


def compute_device(info: pb.BackendInfo, asked: str) -> str:
    """The kind of compute device a job will run on: the one asked, else CUDA when the backend reports a CUDA
    capability (the agent's default), else the CPU."""
    if asked and asked != "auto":
        return asked.split(":")[0]
    return "cuda" if any(c.device.startswith("cuda") and c.supported for c in info.capabilities) else "cpu"


def refusal(spec: backends.BackendSpec, info: pb.BackendInfo | None, model: str, precision: str,
            asked_device: str, shape: Architecture | None = None, trials_pending: bool = False) -> str | None:
    """Why this device cannot run (backend, model, precision), from what it reported; None when it can. `shape`:
    a model the catalogue does not know, synthesized there (the device lists the catalogue shapes it synthesizes:
    one of the same family says it can). With `trials_pending` (the device's capability trials still running),
    only what it reported before them counts: the rest is decided when they are reported (after_trials)."""
    if info is None:
        return f"{spec.name} is not reported by the device"
    if not info.available:
        return f"{spec.name} is not available there ({info.reason or 'no reason given'})"
    if why := backends.obtainable(spec, model, set(REAL_MODELS), {**CATALOGUE, **({model: shape} if shape else {})}):
        return why
    if shape is not None and shape.name not in CATALOGUE:
        if not spec.takes_gguf_types():
            return f"{spec.name} runs catalogue shapes only; a file's shape is synthesized as GGUF"
        if info.models and not any(CATALOGUE[m].family == shape.family for m in info.models if m in CATALOGUE):
            return f"{spec.name} cannot synthesize {shape.family} shapes there"
    elif info.models and model not in info.models:
        return f"{spec.name} cannot obtain {model} there"
    if trials_pending:
        return None
    device = compute_device(info, asked_device)
    if device not in spec.compute_devices:
        return f"{spec.name} does not run on {device}"
    for c in info.capabilities:
        if c.device.split(" ")[0].split(":")[0] == device and c.precision == precision and not c.supported:
            return f"{spec.name} cannot run {precision} on {c.device}: {c.reason or 'unsupported'}"
    return None


@dataclasses.dataclass(frozen=True)
class Plan:
    jobs: list[tuple[str, pb.ProfileRequest]]  # (device id, request)
    matched: list[str]  # device ids the selector matched
    # device id -> "backend model precision, ...: why" for what it cannot run, one line per reason (a device's own
    # reason, up to 4 kB, is not copied into each combination it stops)
    skipped: dict[str, list[str]]
    probing: list[str]  # matched device ids whose capability trials are still running: their jobs wait for them


def expand(spec: pb.CampaignSpec, terms: list[Term], devices: list[pb.Device]) -> Plan:
    """Jobs for every combination each matching device can run; the rest skipped, per device, with the reason. A
    device still probing gets a job for each combination its trials may allow (after_trials decides the rest)."""
    jobs, matched, skipped, probing = [], [], {}, []
    named = [backends.backend(b) for b in dict.fromkeys(spec.backends)]
    shapes = spec_shapes(spec)
    stored = {m.name: m for m in spec.stored}  # files of the coordinator's model store (model_store.attach)
    for device in devices:
        inv = device.inventory
        if not matches(terms, inv, dict(device.labels)):
            continue
        matched.append(inv.device_id)
        if inv.trials_pending:
            probing.append(inv.device_id)
        reported = {b.name: b for b in inv.backends}
        for backend in named:
            for quant in dict.fromkeys(spec.quants):
                precision = _canonical(backend, quant)
                for model in dict.fromkeys(spec.models):
                    what = f"{backend.name} {model} {precision or quant}"
                    if precision is None:
                        why = f"{backend.name} does not take precision {quant!r}"
                    else:
                        why = (model in stored and _stored_refusal(backend, stored[model], precision)) or \
                            refusal(backend, reported.get(backend.name), model, precision, spec.template.device,
                                    shapes.get(model), inv.trials_pending)
                    if why:
                        skipped.setdefault(inv.device_id, {}).setdefault(why, []).append(what)
                        continue
                    request = pb.ProfileRequest()
                    request.CopyFrom(spec.template)
                    request.model.CopyFrom(pb.ModelRef(name=model))
                    if model in shapes and model not in CATALOGUE:
                        request.model.shape.CopyFrom(to_proto(shapes[model]))
                    if model in stored:
                        request.model.sha256 = stored[model].sha256
                    request.backend, request.quant = backend.name, precision
                    if request.HasField("quality") and (why := _quality_refusal(backend, stored.get(model), inv)):
                        request.ClearField("quality")
                        skipped.setdefault(inv.device_id, {}).setdefault(f"no quality pass: {why}", []).append(what)
                    jobs.append((inv.device_id, request))
    return Plan(jobs, matched, {d: [f"{', '.join(whats)}: {why}" for why, whats in reasons.items()]
                                for d, reasons in skipped.items()}, probing)


def _stored_refusal(spec: backends.BackendSpec, model: pb.StoredModel, precision: str) -> str | None:
    """Why a stored file cannot run at `precision` on `spec`: GGUF backends only; its own type as it is, others
    derived on the device from an F32/F16/BF16 file with llama.cpp's quantizer (a quantized file is never
    requantized)."""
    if not spec.takes_gguf_types():
        return f"{spec.name} runs catalogue shapes; a stored model runs on llama.cpp"
    return stored_refusal(model, precision)


def _quality_refusal(spec: backends.BackendSpec, model: pb.StoredModel | None, inv: pb.DeviceInventory) -> str | None:
    """Why a job's quality pass (its file against the model's highest precision: a stored F32/F16/BF16 file itself,
    else F16 derived from it) is not made on this device; None when it is."""
    from fleetfit.coordinator.answers.fit import TIGHT

    if not spec.takes_gguf_types():
        return f"{spec.name} runs no KL-divergence pass (llama.cpp does)"
    if model is None:
        return None
    need = model.size_bytes if model.quant in HIGH_PRECISIONS else 2 * model.n_params if model.HasField("n_params") \
        else 0
    if need > TIGHT * inv.ram_total_bytes:
        return (f"the {model.quant if model.quant in HIGH_PRECISIONS else 'F16'} reference ({need / 2**30:.1f} GiB) "
                f"does not fit the device's memory ({inv.ram_total_bytes / 2**30:.1f} GiB)")
    return None


def after_trials(store, device_id: str) -> int:
    """Once a device has reported its capability trials: each of its queued campaign jobs that they rule out leaves
    the queue and is listed with its campaign's skipped combinations, with the reason, as if the campaign had been
    created after them. Returns how many. Idempotent: the coordinator calls it on each full registration and after
    a campaign that queued jobs on probing devices (whichever comes second sees both)."""
    found = store.devices(device_id)
    if not found or found[0].inventory.trials_pending:
        return 0
    reported = {b.name: b for b in found[0].inventory.backends}
    reasons = {}
    for job_id, request in store.queued_campaign_jobs(device_id):
        try:
            spec = backends.backend(request.backend)
            shape = checked(request.model.shape, request.model.name) if request.model.HasField("shape") else None
        except (ModelError, ValueError):
            continue  # checked when it was queued; a job that no longer reads is the agent's to report
        why = refusal(spec, reported.get(spec.name), request.model.name, request.quant, request.device, shape)
        if why:
            reasons[job_id] = (f"{spec.name} {request.model.name} {request.quant}: {why} (found by the device's "
                               f"capability trials, after the campaign queued it)")
    return store.skip_queued(device_id, reasons) if reasons else 0


def progress(campaign: Campaign, jobs: list[pb.JobStatus], names: dict[str, str] | None = None) -> pb.CampaignStatus:
    names = names or {}
    status = pb.CampaignStatus(campaign_id=campaign.campaign_id, selector=campaign.selector,
                               created_unix_s=campaign.created_unix_s, spec=campaign.spec)
    per_device: dict[str, pb.DeviceProgress] = {}

    def device(device_id: str) -> pb.DeviceProgress:
        return per_device.setdefault(device_id, pb.DeviceProgress(device_id=device_id,
                                                                  device_name=names.get(device_id, device_id)))

    for job in jobs:
        d = device(job.device_id)
        state = JOB_STATE.word(job.job_state) or "queued"
        setattr(d, state, getattr(d, state) + 1)
        setattr(status, state, getattr(status, state) + 1)
        if job.job_state == pb.JOB_STATE_FAILED and job.error:
            d.errors.append(job.error)
    for device_id, reasons in campaign.skipped.items():
        device(device_id).skipped.extend(reasons)
    status.devices.extend(per_device[d] for d in sorted(per_device))
    return status


def statuses(store, campaign_id: str | None = None, totals_only: bool = False) -> list[pb.CampaignStatus]:
    """The progress of every campaign (or of one), with device display names; `totals_only`: without devices."""
    names = {} if totals_only else display_names(store.devices())
    found = store.campaigns(campaign_id) if campaign_id is not None else store.campaigns()
    out = [progress(c, store.campaign_jobs(c.campaign_id), names) for c in found]
    for status in out if totals_only else ():
        del status.devices[:]
    return out
