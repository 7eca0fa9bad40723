"""What the coordinator accepts from a device: every ProfileResult and Register inventory is checked before it
is stored, and what answers read is filtered once more (results stored before these checks existed).

A figure must be finite, non-negative (only net energies may be negative: net of the idle baseline) and, unless
zero, within the physical range of its unit (models/physical_bounds.py, by the suffix of its field name); a Stat is
measured (every sample and its mean positive) or absent; strings, repeated fields and the whole
message are size-bounded. A concurrency sweep (`serving`) has one point per stream count the request asked for,
each either measured (every figure present, per-stream speed the aggregate over N, p99 at least p50) or
unsupported with a reason and no figures. A refusal names the field: "result.decode_tokens_per_s.samples[2] is nan: ...".
Quotas (results and bytes per hour, distinct models per day, per device) are counted by the store, in the
transaction that stores the result.
"""

import dataclasses
import logging
import math

from google.protobuf.descriptor import FieldDescriptor as F

from fleetfit.models import job_bounds, physical_bounds
from fleetfit.v1 import fleetfit_pb2 as pb
from fleetfit.v1.transport import device_id_problem
from fleetfit.v1.words import PROVENANCE, upgrade

log = logging.getLogger("fleetfit.coordinator")

MAX_MESSAGE_BYTES = 1024 * 1024  # a Register inventory (its probes and backends)
# A result (or quality result) as a device reports it. A real one needs a few kB: up to 100 repetitions of three
# figures (~3 kB), build info (2 x 16 kB at most), power phases, and a concurrency sweep of at most 16 points of six
# figures of 100 repetitions each (~90 kB at the bounds); 256 KiB holds all of them at their bounds together.
MAX_RESULT_BYTES = 256 * 1024
MAX_SAMPLES = 10_000           # Stat.samples, BandwidthProbe.samples_gb_per_s
MAX_REPEATED = 1024            # any other repeated field (power phases, GPUs, backends, probes, ...)
MAX_TEXT = 4096                # any string not named below
SHORT_TEXT = 256               # names and ids
LONG_TEXT = 16 * 1024          # build and system info
SHORT_TEXT_FIELDS = {"result_id", "device_id", "model_name", "model_arch", "model_sha256", "reference_sha256", "quant",
                     "backend", "hostname", "os", "arch", "name", "uuid", "driver_version", "version", "agent_version",
                     "target", "precision", "phase", "provenance", "kind", "compute_device", "model_origin",
                     "headline_source", "cache_key", "device", "device_name", "scope"}
LONG_TEXT_FIELDS = {"backend_build", "llama_system_info"}
SIGNED_FIELDS = {"net_energy_mj", "net_joules_per_token"}  # net of the idle baseline: may be below zero
FLOATS = (F.TYPE_DOUBLE, F.TYPE_FLOAT)
INTEGERS = (F.TYPE_INT32, F.TYPE_INT64, F.TYPE_UINT32, F.TYPE_UINT64, F.TYPE_SINT32, F.TYPE_SINT64)


class Refused(ValueError):
    """A report that is not stored; the message names the field and says why (one line)."""


@dataclasses.dataclass(frozen=True)
class Quotas:
    """Per device. Bytes per hour bound what one device can make the coordinator hold (and every answer read): a
    device reports a result every few seconds at most and a real one is a few kB, so 64 MiB is 10,000 results of
    6.5 kB, or 256 at MAX_RESULT_BYTES; results and quality results are counted apart."""
    results_per_hour: int = 10_000
    models_per_day: int = 200
    bytes_per_hour: int = 64 * 1024 * 1024


def check_device_id(device_id: str) -> None:
    """Refused unless a device id (chosen by the agent at join) can authenticate (transport.device_id_problem)."""
    if problem := device_id_problem(device_id):
        raise Refused(problem)


def check_result(result: pb.ProfileResult) -> None:
    """Refused unless every field of `result` is within bounds."""
    _check_size(result, "result", MAX_RESULT_BYTES)
    check_device_id(result.device_id)
    _check_message(result, "result", "")
    # an older agent's report carries the provenance words as strings (fleetfit/v1/words.py): stored as sent, read
    # as enums; the checks see what answers will read
    _check_serving(upgrade(type(result).FromString(result.SerializeToString())))
    _check_depth(result)
    _check_repetitions(result)


def _check_repetitions(result: pb.ProfileResult) -> None:
    """A phase's samples are its repetitions, at most the job bound, and its mean lies among them: the scaling
    model fits the median of the samples (scaling.typical_tps), so samples that disagree with the mean the tables
    show, or thousands of them, would move that device's fit unseen."""
    most = job_bounds.BOUNDS["repetitions"][1]
    for name in ("prefill_tokens_per_s", "decode_tokens_per_s", "ttft_ms"):
        stat = getattr(result, name)
        if not stat.samples:
            continue
        if len(stat.samples) > most:
            raise Refused(f"result.{name} has {len(stat.samples)} samples: 1 to {most} are accepted")
        low, high = min(stat.samples), max(stat.samples)
        if not low * (1 - 1e-9) <= stat.mean <= high * (1 + 1e-9):
            raise Refused(f"result.{name}.mean is {stat.mean:g}: outside its samples ({low:g}..{high:g})")


def _check_depth(result: pb.ProfileResult) -> None:
    """A run at depth (llama-bench's -d) within the job bounds, at the depth its request asked for: a depth that
    was not run would put a point where the scaling model reads the KV cache's cost."""
    depth, asked = result.n_depth, result.request.decode_depth
    try:
        job_bounds.check_value("decode_depth", asked)
        job_bounds.check_depth(asked, result.request.n_prompt, result.request.n_gen, result.request.backend)
    except ValueError as exc:
        raise Refused(f"result.request.{exc}") from None
    if depth != asked:
        raise Refused(f"result.n_depth is {depth}: the request asked for a depth of {asked}")


def check_quality(result: pb.QualityResult) -> None:
    """Refused unless a quality result is within bounds: finite, non-negative figures within their physical ranges
    (a fraction at most 1, a perplexity at least 1: the exponential of a mean negative log-likelihood) and a mean
    KL divergence no further below 0 than rounding puts it (a quant against itself)."""
    _check_size(result, "quality", MAX_RESULT_BYTES)
    check_device_id(result.device_id)
    if not result.result_id or not result.model_name or not result.quant:
        raise Refused("quality.result_id, model_name and quant are required")
    kld = result.kl_divergence_mean
    if math.isfinite(kld) and kld < 0:
        if kld < -physical_bounds.KLD_ROUNDING:
            raise Refused(f"quality.kl_divergence_mean is {kld:g}: a KL divergence is not negative")
        result = type(result).FromString(result.SerializeToString())
        result.kl_divergence_mean = 0.0  # checked as the rounding it is; the stored value is unchanged
    _check_message(result, "quality", "")  # the ranges of models/physical_bounds.py
    if result.perplexity < 1:  # zero included: a perplexity is always measured
        raise Refused(f"quality.perplexity is {result.perplexity:g}: at least 1")
    if not 0 < result.n_positions <= 10_000_000 or not 0 < result.context_tokens <= 1 << 20:
        raise Refused("quality.n_positions and context_tokens must be positive and bounded")


def check_inventory(inventory: pb.DeviceInventory) -> None:
    """Refused unless every field of a Register inventory is within bounds."""
    _check_size(inventory, "inventory")
    check_device_id(inventory.device_id)
    _check_message(inventory, "inventory", "")


def _check_size(message, path: str, most: int = MAX_MESSAGE_BYTES) -> None:
    if (size := message.ByteSize()) > most:
        raise Refused(f"{path} is {size} bytes: at most {most} are accepted")


def _check_message(message, path: str, unit: str) -> None:
    """`unit` is the name of the field holding a Stat, whose mean and samples take that field's range."""
    for field, value in message.ListFields():
        where = f"{path}.{field.name}"
        name = unit or field.name
        if _is_map(field):
            if len(value) > MAX_REPEATED:
                raise Refused(f"{where} has {len(value)} entries: at most {MAX_REPEATED} are accepted")
            for key, item in value.items():
                _check_text(str(key), f"{where}[key]", SHORT_TEXT)
                _check_text(str(item), f"{where}[{str(key)[:40]!r}]", MAX_TEXT)
        elif field.is_repeated:
            limit = MAX_SAMPLES if field.name.startswith("samples") else MAX_REPEATED
            if len(value) > limit:
                raise Refused(f"{where} has {len(value)} entries: at most {limit} are accepted")
            for i, item in enumerate(value):
                _check_value(field, item, f"{where}[{i}]", name, unit)
        else:
            _check_value(field, value, where, name, unit)
    if unit and not _stat_measured(message):
        raise Refused(f"{path} has a figure of 0: a Stat is a measurement (its mean and every sample within the "
                      f"range of a {unit} figure) or absent")


def _is_map(field) -> bool:
    return field.message_type is not None and field.message_type.GetOptions().map_entry


def _check_value(field, value, where: str, name: str, unit: str) -> None:
    if field.type == F.TYPE_MESSAGE:
        _check_message(value, where, field.name if field.message_type.name == "Stat" else "")
    elif field.type == F.TYPE_STRING:
        limit = LONG_TEXT if field.name in LONG_TEXT_FIELDS else SHORT_TEXT if field.name in SHORT_TEXT_FIELDS \
            else MAX_TEXT
        _check_text(value, where, limit)
    elif field.type == F.TYPE_ENUM:
        if field.enum_type.values_by_number.get(value) is None:
            raise Refused(f"{where} is {value}: not a value of {field.enum_type.name}")
    elif field.type in FLOATS or field.type in INTEGERS:
        if field.type in FLOATS and not math.isfinite(value):
            raise Refused(f"{where} is {value}: every figure must be finite")
        if value < 0 and name not in SIGNED_FIELDS:
            raise Refused(f"{where} is {value:g}: figures must not be negative")
        if unit and field.name == "stdev":
            # a spread: the Stat's ceiling, no floor (nothing divides by it)
            if value > physical_bounds.bounds(unit)[1]:
                raise Refused(f"{where} is {value:g}: above the ceiling for a {unit} figure")
        elif why := physical_bounds.outside(name, value):
            raise Refused(f"{where} {why}")


SERVING_STATS = ("aggregate_decode_tokens_per_s", "per_stream_decode_tokens_per_s", "prefill_tokens_per_s",
                 "ttft_ms_p50", "ttft_ms_p99", "peak_memory_bytes")
ENERGY_PROVENANCES = (pb.PROVENANCE_KIND_MEASURED, pb.PROVENANCE_KIND_ESTIMATED)


def _check_serving(result: pb.ProfileResult) -> None:
    """The sweep's points against the request's stream counts, each measured in full or unsupported with a reason."""
    asked = list(result.request.parallel)
    try:
        job_bounds.check_parallel(asked, result.request.n_prompt, result.request.n_gen)
    except ValueError as exc:
        raise Refused(f"result.request.{exc}") from None
    if len(result.serving) > len(asked):
        raise Refused(f"result.serving has {len(result.serving)} points: the request asked for {len(asked)}")
    most_samples = job_bounds.BOUNDS["repetitions"][1]
    seen = set()
    for i, point in enumerate(result.serving):
        where = f"result.serving[{i}]"
        if point.parallel not in asked or point.parallel in seen:
            raise Refused(f"{where}.parallel is {point.parallel}: not a stream count the request asked for once "
                          f"({', '.join(map(str, asked))})")
        seen.add(point.parallel)
        present = [name for name in SERVING_STATS if point.HasField(name)]
        if point.unsupported_reason:
            if present or point.HasField("decode_energy_per_token_j"):
                raise Refused(f"{where} is unsupported ({point.unsupported_reason[:80]!r}) yet carries figures")
            continue
        if missing := [name for name in SERVING_STATS if name not in present]:
            raise Refused(f"{where}.{missing[0]} is missing: a measured point carries every figure")
        for name in SERVING_STATS:
            stat = getattr(point, name)
            if not 1 <= len(stat.samples) <= most_samples:
                raise Refused(f"{where}.{name} has {len(stat.samples)} samples: 1 to {most_samples} are accepted")
        aggregate, per_stream = point.aggregate_decode_tokens_per_s, point.per_stream_decode_tokens_per_s
        if not aggregate.mean > 0 or not math.isclose(per_stream.mean * point.parallel, aggregate.mean, rel_tol=1e-6):
            raise Refused(f"{where}.per_stream_decode_tokens_per_s must be the aggregate over {point.parallel} "
                          f"streams, and the aggregate positive")
        if any(p99 < p50 for p50, p99 in zip(point.ttft_ms_p50.samples, point.ttft_ms_p99.samples)):
            raise Refused(f"{where}.ttft_ms_p99 is below its p50")
        has_energy = point.HasField("decode_energy_per_token_j")
        if point.energy_provenance_kind not in (ENERGY_PROVENANCES if has_energy else (0,)):
            raise Refused(f"{where}.energy_provenance is {PROVENANCE.word(point.energy_provenance_kind)!r}: "
                          + ("measured or estimated" if has_energy else "empty when no energy is reported"))


def _check_text(text: str, where: str, limit: int) -> None:
    if len(text) > limit:
        raise Refused(f"{where} is {len(text)} characters: at most {limit} are accepted")
    if "\x00" in text:  # PostgreSQL text cannot hold it: refused here, for this report alone, on both databases
        raise Refused(f"{where} holds a NUL character: text must not")


def nul_text(message, path: str = "request") -> str | None:
    """The first text field of `message` (any RPC's request, recursively, map keys and values included) that holds a
    NUL character, or None. PostgreSQL text cannot hold one (psycopg refuses it even as a lookup key), so auth.guard
    refuses such a request as INVALID_ARGUMENT before it runs: the same answer on SQLite and PostgreSQL, for that
    request alone."""
    for field, value in message.ListFields():
        where = f"{path}.{field.name}"
        if _is_map(field):
            entry = field.message_type.fields_by_name["value"]
            for key, item in value.items():
                if "\x00" in str(key) or (entry.type == F.TYPE_STRING and "\x00" in item):
                    return f"{where}[{str(key)[:40]!r}]"
                if entry.type == F.TYPE_MESSAGE and (found := nul_text(item, f"{where}[{str(key)[:40]!r}]")):
                    return found
        elif field.type == F.TYPE_MESSAGE:
            for i, item in enumerate(value if field.is_repeated else [value]):
                if found := nul_text(item, f"{where}[{i}]" if field.is_repeated else where):
                    return found
        elif field.type == F.TYPE_STRING:
            if any("\x00" in text for text in (value if field.is_repeated else [value])):
                return where
    return None


# -- what answers read

def usable(message):
    """`message` (a ProfileResult, a DeviceInventory) as answers may use it: a figure that is not finite, negative
    where it may not be, or outside its physical range (models/physical_bounds.py) is dropped (absent), and so is
    a figure that must be positive and is not (speeds, times, sizes: a Stat with any such sample goes whole).
    Messages that pass come back as they are (no copy); others come back as a cleaned copy."""
    if _clean(message, dry_run=True):
        return message
    cleaned = type(message)()
    cleaned.CopyFrom(message)
    _clean(cleaned, dry_run=False)
    return cleaned


def usable_quality(result: pb.QualityResult) -> bool:
    """Whether answers may read a stored quality result: whether check_quality would accept it today."""
    try:
        check_quality(result)
    except Refused:
        return False
    return True


def _clean(message, dry_run: bool) -> bool:
    """True when nothing needed cleaning; else (unless dry_run) clears what is unusable."""
    fine = True
    for field, value in message.ListFields():
        if _is_map(field):
            continue
        if field.type == F.TYPE_MESSAGE:
            items = value if field.is_repeated else [value]
            if field.message_type.name == "Stat" and not field.is_repeated:
                if not _stat_usable(value, field.name):
                    fine = False
                    if not dry_run:
                        message.ClearField(field.name)
                continue
            for item in items:
                fine = _clean(item, dry_run) and fine
        elif field.type in FLOATS or field.type in INTEGERS:
            if field.is_repeated:
                if not all(_number_usable(field, v) for v in value):
                    fine = False
                    if not dry_run:
                        kept = [v for v in value if _number_usable(field, v)]
                        message.ClearField(field.name)
                        getattr(message, field.name).extend(kept)
            elif not _number_usable(field, value):
                fine = False
                if not dry_run:
                    message.ClearField(field.name)
    return fine


def _number_usable(field, value) -> bool:
    if field.type in FLOATS and not math.isfinite(value):
        return False
    if physical_bounds.outside(field.name, value):
        return False
    if field.name in SIGNED_FIELDS:
        return True
    # Figures with presence (optional: absent means not measured) must be positive; plain counters non-negative.
    return value > 0 if field.has_presence else value >= 0


def _stat_measured(stat: pb.Stat) -> bool:
    """Absent (nothing set), or every sample and the mean positive: zero is no measurement of a speed, time or
    size."""
    return (not stat.samples and not stat.mean) or all(v > 0 for v in (stat.mean, *stat.samples))


def _stat_usable(stat: pb.Stat, unit: str) -> bool:
    if not stat.samples and not stat.mean:
        return True  # not measured
    low, high = physical_bounds.bounds(unit)
    return all(math.isfinite(v) and low <= v <= high and v > 0 for v in (stat.mean, *stat.samples)) \
        and math.isfinite(stat.stdev) and 0 <= stat.stdev <= high
