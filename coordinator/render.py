"""Limit tables and fit answers as text: aligned table, markdown, CSV or JSON."""

import csv
import html
import io
import json
import re

from google.protobuf import json_format

from fleetfit.v1 import fleetfit_pb2 as pb

MIB = 1024 * 1024
FORMATS = ("table", "md", "csv", "json")
# What must never reach a terminal raw from device-provided text: C0 controls (ESC, CR, LF, ...), DEL, C1
# controls, and the bidirectional overrides that reorder what is shown.
CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def clean(text: str) -> str:
    """`text` safe to print: each control character shown as its escape (\\x1b, \\u202e), never sent raw."""
    return CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode(), str(text))


def md_cell(text: str) -> str:
    """A markdown table cell: clean, with pipes escaped and HTML shown as text (no `<script>` in tables.md)."""
    return html.escape(clean(text), quote=False).replace("|", "\\|")


FAILURES = {pb.FAILURE_KIND_OOM: "oom", pb.FAILURE_KIND_SIGNAL: "signal", pb.FAILURE_KIND_TIMEOUT: "timeout",
            pb.FAILURE_KIND_ERROR: "error"}


def _stat(stat: pb.Stat) -> str:
    return f"{stat.mean:.2f} ± {stat.stdev:.2f}" if stat.samples else ""


def limit_table(rows: list[pb.LimitRow]) -> tuple[list[str], list[list[str]]]:
    header = ["device", "backend", "model", "quant", "params", "file MiB", "memory MiB", "prefill tok/s",
              "decode tok/s", "TTFT ms", "shape", "provenance"]
    body = []
    for r in rows:
        if r.failure:
            status = f"failed ({FAILURES.get(r.failure, 'error')}): {r.error}"
        else:
            status = r.provenance.kind
        body.append([
            r.device_name or r.hostname or r.device_id, r.backend, r.model_name, r.quant,
            f"{r.model_n_params / 1e6:.1f} M" if r.HasField("model_n_params") else "",
            f"{r.model_file_bytes / MIB:.1f}" if r.model_file_bytes else "",
            f"{r.memory_bytes / MIB:.1f}" if r.HasField("memory_bytes") else "",
            _stat(r.prefill_tokens_per_s), _stat(r.decode_tokens_per_s), _stat(r.ttft_ms), r.shape, status,
        ])
    return header, body


def fit_table(answers: list[pb.FitAnswer]) -> tuple[list[str], list[list[str]]]:
    header = ["device", "backend", "context", "verdict", "decode tok/s", "memory MiB", "RAM MiB", "reason"]
    body = []
    for a in answers:
        ev = a.evidence if a.HasField("evidence") else None
        body.append([
            a.device_name or a.hostname or a.device_id, a.backend, str(a.context_tokens or ""), a.verdict,
            _stat(ev.decode_tokens_per_s) if ev else "",
            f"{a.memory_bytes.value / MIB:.1f}" if a.HasField("memory_bytes") else "",
            f"{a.ram_total_bytes / MIB:.0f}", a.reason,
        ])
    return header, body


def render(header: list[str], body: list[list[str]], fmt: str, messages: list) -> str:
    if fmt == "json":
        return json.dumps([json_format.MessageToDict(m, preserving_proto_field_name=True) for m in messages], indent=2)
    if fmt == "md":
        lines = ["| " + " | ".join(map(md_cell, header)) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(map(md_cell, row)) + " |" for row in body]
        return "\n".join(lines)
    header, body = [clean(c) for c in header], [[clean(c) for c in row] for row in body]
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(body)
        return out.getvalue().rstrip("\n")
    widths = [max(len(str(c)) for c in column) for column in zip(header, *body)]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip() for row in [header, *body])
