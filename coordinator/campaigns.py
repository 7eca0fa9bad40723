"""Campaigns: a device selector and models × quants × backends, expanded into jobs for each matching device
and what it can run, and the progress of those jobs.

Selectors are comma-separated terms `KEY OP VALUE` (OP: = != >= <= > <):
  arch, os, hostname, device, cpu      text (= and != only; cpu matches a substring of the CPU model)
  ram, gpu_mem                          bytes, with a unit: 512MB, 8GB, 16GiB (GB = 10^9, GiB = 2^30)
  cores, gpus                           numbers
  label                                 label=lab: a label whose value (or key) is "lab"; label.site=lab
Jobs are declarative: they name a model of the catalogue and a quant, never a path or a command.
"""

import dataclasses
import operator
import re

from fleetfit.models.catalogue import CATALOGUE
from fleetfit.models.errors import ModelError
from fleetfit.models.quants import parse_quant
from fleetfit.models.real_models import REAL_MODELS
from fleetfit.v1 import fleetfit_pb2 as pb

OPS = {"=": operator.eq, "!=": operator.ne, ">=": operator.ge, "<=": operator.le, ">": operator.gt, "<": operator.lt}
TEXT_KEYS = {"arch", "os", "hostname", "device", "cpu"}
NUMBER_KEYS = {"cores", "gpus"}
BYTES_KEYS = {"ram", "gpu_mem"}
UNITS = {"b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12, "kib": 2**10, "mib": 2**20, "gib": 2**30,
         "tib": 2**40}
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
            known = sorted(TEXT_KEYS | NUMBER_KEYS | BYTES_KEYS | {"label"})
            raise SelectorError(f"unknown selector key {key!r} (known: {', '.join(known)})")
    return terms


def _value(key: str, inv: pb.DeviceInventory):
    return {
        "arch": inv.arch, "os": inv.os, "hostname": inv.hostname, "device": inv.device_id,
        "cores": inv.cpu_cores_physical, "gpus": len(inv.gpus), "ram": inv.ram_total_bytes,
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


def check_spec(spec: pb.CampaignSpec) -> None:
    """Raise ValueError (one line) for a spec that names nothing, an unknown model or quant."""
    if not (spec.models and spec.quants and spec.backends):
        raise ValueError("a campaign needs at least one model, one quant and one backend")
    known = set(CATALOGUE) | set(REAL_MODELS)
    for model in spec.models:
        if model not in known:
            raise ValueError(f"unknown model {model!r} (known: {', '.join(sorted(known))})")
    for quant in spec.quants:
        try:
            parse_quant(quant)
        except ModelError as exc:
            raise ValueError(str(exc)) from None
    for field in ("n_prompt", "n_gen", "repetitions"):
        if getattr(spec.template, field) < 1:
            raise ValueError(f"{field} must be at least 1")


def expand(spec: pb.CampaignSpec, terms: list[Term], devices: list[pb.Device], labels: dict[str, dict[str, str]]
           ) -> tuple[list[tuple[str, pb.ProfileRequest]], list[str], list[str]]:
    """(jobs as (device, request), matching device ids, "device: why" for combinations a device cannot run)."""
    jobs, matched, skipped = [], [], []
    for device in devices:
        inv = device.inventory
        if not matches(terms, inv, labels.get(inv.device_id, {})):
            continue
        matched.append(inv.device_id)
        available = {b.name: b for b in inv.backends}
        for backend in spec.backends:
            info = available.get(backend)
            if info is not None and not info.available:
                skipped.append(f"{inv.device_id}: {backend} is not available there ({info.reason})")
                continue
            for model in spec.models:
                for quant in spec.quants:
                    request = pb.ProfileRequest()
                    request.CopyFrom(spec.template)
                    request.model.CopyFrom(pb.ModelRef(name=model))
                    request.backend, request.quant = backend, parse_quant(quant)
                    jobs.append((inv.device_id, request))
    return jobs, matched, skipped


def progress(campaign_id: str, selector: str, created: float, spec: pb.CampaignSpec,
             jobs: list[pb.JobStatus]) -> pb.CampaignStatus:
    status = pb.CampaignStatus(campaign_id=campaign_id, selector=selector, created_unix_s=created, spec=spec)
    per_device: dict[str, pb.DeviceProgress] = {}
    for job in jobs:
        device = per_device.setdefault(job.device_id, pb.DeviceProgress(device_id=job.device_id))
        state = job.state if job.state in ("done", "running", "failed", "queued") else "queued"
        setattr(device, state, getattr(device, state) + 1)
        setattr(status, state, getattr(status, state) + 1)
        if job.state == "failed" and job.error:
            device.errors.append(job.error)
    status.devices.extend(per_device[d] for d in sorted(per_device))
    return status
