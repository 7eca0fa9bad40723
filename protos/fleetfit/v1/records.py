"""Records for people's tools: the one place messages become JSON, and the printers every CLI shares.

- `message_dict` / `to_json`: a message as JSON with proto field names and 64-bit integers as numbers (proto3's
  JSON mapping writes them as strings, so `jq '.peak_rss_bytes / 1048576'` would fail).
- `write(fields, rows, fmt)`: typed rows as csv, json, jsonl or sql (CREATE TABLE + INSERTs for `sqlite3`).
- `ProfileRow` / `profile_rows`: one llama-bench test row (pp or tg) of a ProfileResult, with llama-bench's field
  names where a field means the same thing, plus fleetfit's (memory, energy, provenance, run shape). Every
  format of `fleetfit-agent profile -o` reads these fields, so a new field appears in all of them at once.
"""

import csv
import dataclasses
import datetime
import io
import json
import math
import re
import typing
from typing import Iterable, Optional

from google.protobuf import json_format
from google.protobuf.descriptor import FieldDescriptor

from fleetfit.v1 import words

FORMATS = ("csv", "json", "jsonl", "sql")
_INT64 = {FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_SINT64,
          FieldDescriptor.TYPE_FIXED64, FieldDescriptor.TYPE_SFIXED64}


def message_dict(message, defaults: bool = False) -> dict:
    """`message` as a JSON-ready dict: proto field names, 64-bit integers as numbers; fields without presence at
    their defaults omitted, or with `defaults` printed (a stdev of 0), so that every entry has the same keys."""
    found = json_format.MessageToDict(message, preserving_proto_field_name=True,
                                      always_print_fields_with_no_presence=defaults)
    _plain_json(message.DESCRIPTOR, found)
    return found


def _plain_json(descriptor, found: dict) -> None:
    """64-bit integers as numbers, and enums that replaced strings as the words under the old keys (words.py)."""
    words.rename_out(descriptor, found)
    for field in descriptor.fields:
        if field.name not in found:
            continue
        value, kind = found[field.name], field.message_type
        if field.type in _INT64:
            found[field.name] = [int(v) for v in value] if isinstance(value, list) else int(value)
        elif kind is not None and not kind.full_name.startswith("google.protobuf."):
            if kind.GetOptions().map_entry:
                entry = kind.fields_by_name["value"]
                for key, item in value.items():
                    if entry.type in _INT64:
                        value[key] = int(item)
                    elif isinstance(item, dict) and entry.message_type is not None:
                        _plain_json(entry.message_type, item)
            else:
                for item in value if isinstance(value, list) else [value]:
                    if isinstance(item, dict):
                        _plain_json(kind, item)


def to_json(messages, indent: Optional[int] = 2, defaults: bool = False) -> str:
    """One message, or a list of them, as JSON (see message_dict)."""
    if isinstance(messages, (list, tuple)):
        return json.dumps([message_dict(m, defaults) for m in messages], indent=indent)
    return json.dumps(message_dict(messages, defaults), indent=indent)


# -- typed rows and their printers


@dataclasses.dataclass(frozen=True)
class Field:
    name: str  # a machine name: lower case, digits and underscores (a SQL column, a CSV header, a JSON key)
    type: type  # str, int, float or bool


def machine_name(display: str) -> str:
    """A column's display name as a machine name: "decode tok/s" -> decode_tok_s, "% RAM" -> pct_ram."""
    text = display.replace("%", " pct ").replace("±", " ").replace("≥", " min ").replace("~", " ")
    name = re.sub(r"[^0-9a-z]+", "_", text.lower()).strip("_")
    return ("c_" + name if name[:1].isdigit() else name) or "column"


def infer_fields(names: list[str], rows: list[list]) -> list[Field]:
    """Fields whose type is what every non-null cell of the column is: int, float (numbers), bool, else str."""
    fields = []
    for i, name in enumerate(names):
        kinds = {type(row[i]) for row in rows if row[i] is not None}
        kind = (bool if kinds == {bool} else int if kinds == {int} else
                float if kinds and kinds <= {int, float} else str)
        fields.append(Field(name, kind))
    return fields


def _sql_value(value) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "NULL"
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, dict)):
        value = json.dumps(value)
    return "'" + str(value).replace("'", "''") + "'"


def _plain(value):
    """A cell as CSV writes it: lists (raw samples) as JSON, None as an empty cell."""
    return json.dumps(value) if isinstance(value, (list, dict)) else value


_SQL_TYPES = {str: "TEXT", int: "INTEGER", bool: "INTEGER", float: "REAL"}


def write(fields: list[Field], rows: Iterable[list], fmt: str, table: str = "rows") -> str:
    """Rows (one value per field; None = no figure) as csv, json (a list of objects), jsonl or sql."""
    rows = [list(r) for r in rows]
    names = [f.name for f in fields]
    if fmt in ("json", "jsonl"):
        objects = [dict(zip(names, r)) for r in rows]
        if fmt == "json":
            return json.dumps(objects, indent=2, allow_nan=False)
        return "\n".join(json.dumps(o, allow_nan=False) for o in objects)
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(names)
        writer.writerows([_plain(v) for v in r] for r in rows)
        return out.getvalue().rstrip("\n")
    if fmt == "sql":
        columns = ",\n".join(f"  {f.name} {_SQL_TYPES[f.type]}" for f in fields)
        lines = [f"CREATE TABLE IF NOT EXISTS {table} (\n{columns}\n);"]
        lines += [f"INSERT INTO {table} ({', '.join(names)}) VALUES ({', '.join(map(_sql_value, r))});" for r in rows]
        return "\n".join(lines)
    raise ValueError(f"unknown format {fmt!r} (choose from {', '.join(FORMATS)})")


# -- one llama-bench test row per phase of a profile result


@dataclasses.dataclass(frozen=True)
class ProfileRow:
    """A pp (prefill) or tg (decode) test of one result. llama-bench's names first, where they mean the same."""
    # llama-bench's fields
    build_commit: Optional[str]      # llama.cpp's commit (ProfileResult.backend_commit); null when not known
    cpu_info: str
    gpu_info: str
    backends: str                    # llama-bench's "CPU", "CUDA", ...
    model_filename: str
    model_type: str                  # "<arch> <params> <quant>", like llama-bench's model description
    model_size: int                  # bytes of the model file
    model_n_params: Optional[int]
    n_batch: int
    n_ubatch: int
    n_threads: int
    type_k: str
    type_v: str
    n_gpu_layers: Optional[int]
    load_mode: str                   # how the weights were read ("none": read into memory, not mmap'd)
    n_prompt: int                    # pp rows: the prompt; tg rows: 0 (as llama-bench)
    n_gen: int                       # tg rows: the tokens decoded; pp rows: 0
    n_depth: int
    test_time: str                   # ISO 8601, UTC
    avg_ns: Optional[int]            # mean time of the test per repetition
    stddev_ns: Optional[int]
    avg_ts: Optional[float]          # tokens/s
    stddev_ts: Optional[float]
    samples_ns: list
    samples_ts: list
    # fleetfit's fields
    test: str                        # pp512, tg128
    result_id: str
    device_id: str
    backend: str
    backend_version: str
    model_name: str
    model_origin: str
    model_sha256: str
    quant: str
    compute_device: str
    n_ctx: int
    repetitions: int
    ttft_ms: Optional[float]         # pp rows: time to first token
    ttft_ms_stddev: Optional[float]
    load_time_s: Optional[float]
    peak_rss_bytes: Optional[int]
    baseline_rss_bytes: Optional[int]
    gpu_memory_bytes: Optional[int]  # GPU runs: what fit uses (torch reserved + CUDA context, else per process)
    memory_method: str
    energy_mj: Optional[float]       # this phase, from the headline power source
    net_energy_mj: Optional[float]   # minus the idle baseline
    average_power_w: Optional[float]
    joules_per_token: Optional[float]
    tokens_per_joule: Optional[float]
    energy_provenance: str           # measured | estimated | "" (no power figures)
    energy_method: str
    provenance: str                  # measured | predicted | estimated
    provenance_method: str
    failure: str                     # "" | oom | signal | timeout | error
    error: str


def profile_fields() -> list[Field]:
    """ProfileRow's fields with their column types (Optional[X] -> X; lists of samples are text in csv and sql)."""
    def column_type(hint) -> type:
        hint = next((a for a in typing.get_args(hint) if a is not type(None)), hint)
        return str if hint is list else hint

    return [Field(f.name, column_type(f.type)) for f in dataclasses.fields(ProfileRow)]


def _iso(unix_s: float) -> str:
    return datetime.datetime.fromtimestamp(unix_s, datetime.timezone.utc).isoformat(timespec="seconds") \
        .replace("+00:00", "Z") if unix_s else ""


def _phase_energy(result, phase: str):
    headline = result.power.headline_source
    return next((p for p in result.power.phases if p.phase == phase and p.source == headline), None)


def _load_mode(memory_method: str) -> str:
    """llama-bench's load_mode ("none": weights read into memory; "mmap") from the result's memory method."""
    return "none" if "load_mode=none" in memory_method else "mmap" if "mmap" in memory_method else ""


def _opt(message, name: str):
    return getattr(message, name) if message is not None and message.HasField(name) else None


def _timing(stat, tokens: int):
    """(avg_ns, stddev_ns, samples_ns, samples_ts) of one test from its tokens/s samples."""
    samples_ts = [s for s in stat.samples if s > 0]
    samples_ns = [round(tokens / s * 1e9) for s in samples_ts]
    if not samples_ns:
        return None, None, [], []
    mean = sum(samples_ns) / len(samples_ns)
    var = sum((x - mean) ** 2 for x in samples_ns) / (len(samples_ns) - 1) if len(samples_ns) > 1 else 0.0
    return round(mean), round(math.sqrt(var)), samples_ns, list(samples_ts)


def profile_rows(result, cpu_info: str = "", failure_name: str = "") -> list[ProfileRow]:
    """The pp and tg rows of a result (one row, without figures, for a failed run)."""
    gpu = result.gpu_memory if result.HasField("gpu_memory") else None
    params = result.model_n_params if result.HasField("model_n_params") else None
    params_text = (f"{params / 1e9:.1f}B" if params >= 1e9 else f"{params / 1e6:.0f}M") if params else "?"
    common = dict(
        build_commit=result.backend_commit or None, cpu_info=cpu_info, gpu_info=gpu.device_name if gpu else "",
        backends="CUDA" if result.compute_device.startswith("cuda") else "CPU",
        model_filename=result.model_file, model_type=f"{result.model_arch or '?'} {params_text} {result.quant}",
        model_size=result.model_file_bytes, model_n_params=params, n_batch=result.n_batch,
        n_ubatch=result.n_ubatch, n_threads=result.threads, type_k="f16", type_v="f16",
        n_gpu_layers=_opt(result, "gpu_layers"), load_mode=_load_mode(result.memory_method), n_depth=result.n_depth,
        test_time=_iso(result.started_unix_s), result_id=result.result_id, device_id=result.device_id,
        backend=result.request.backend or "llama.cpp", backend_version=result.backend_version,
        model_name=result.model_name, model_origin=result.model_origin, model_sha256=result.model_sha256,
        quant=result.quant or result.request.quant, compute_device=result.compute_device or "cpu",
        n_ctx=result.n_ctx, repetitions=result.repetitions, load_time_s=_opt(result, "load_time_s"),
        peak_rss_bytes=_opt(result, "peak_rss_bytes"), baseline_rss_bytes=_opt(result, "baseline_rss_bytes"),
        gpu_memory_bytes=_opt(gpu, "fit_bytes") if gpu else None, memory_method=result.memory_method,
        provenance=words.PROVENANCE.word(result.provenance.provenance_kind), provenance_method=result.provenance.method,
        failure=failure_name if result.failure else "", error=result.error)
    tests = [] if result.failure else [("pp", result.n_prompt, result.prefill_tokens_per_s, "prefill"),
                                       ("tg", result.n_gen, result.decode_tokens_per_s, "decode")]
    rows = []
    for kind, tokens, stat, phase in tests:
        avg_ns, stddev_ns, samples_ns, samples_ts = _timing(stat, tokens)
        energy = _phase_energy(result, phase)
        rows.append(ProfileRow(
            **common, n_prompt=tokens if kind == "pp" else 0, n_gen=tokens if kind == "tg" else 0,
            avg_ns=avg_ns, stddev_ns=stddev_ns, avg_ts=stat.mean if samples_ts else None,
            stddev_ts=stat.stdev if samples_ts else None, samples_ns=samples_ns, samples_ts=samples_ts,
            test=f"{kind}{tokens}",
            ttft_ms=result.ttft_ms.mean if kind == "pp" and result.ttft_ms.samples else None,
            ttft_ms_stddev=result.ttft_ms.stdev if kind == "pp" and result.ttft_ms.samples else None,
            energy_mj=_opt(energy, "energy_mj"), net_energy_mj=_opt(energy, "net_energy_mj"),
            average_power_w=_opt(energy, "average_power_w"), joules_per_token=_opt(energy, "joules_per_token"),
            tokens_per_joule=_opt(energy, "tokens_per_joule"),
            energy_provenance=words.PROVENANCE.word(energy.provenance_kind) if energy else "",
            energy_method=energy.method if energy else ""))
    if not rows:
        rows.append(ProfileRow(**common, n_prompt=result.n_prompt, n_gen=result.n_gen, avg_ns=None, stddev_ns=None,
                               avg_ts=None, stddev_ts=None, samples_ns=[], samples_ts=[], test="",
                               ttft_ms=None, ttft_ms_stddev=None, energy_mj=None, net_energy_mj=None,
                               average_power_w=None, joules_per_token=None, tokens_per_joule=None,
                               energy_provenance="", energy_method=""))
    return rows


def write_profile_rows(rows: list[ProfileRow], fmt: str) -> str:
    """Profile rows in a machine format; sql writes llama-bench's table name, `llama_bench`."""
    return write(profile_fields(), [dataclasses.astuple(r) for r in rows], fmt, table="llama_bench")
