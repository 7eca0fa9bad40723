"""Limit tables and fit answers as text: aligned table, markdown, CSV or JSON."""

import csv
import io
import json

from google.protobuf import json_format

from fleetfit.v1 import fleetfit_pb2 as pb

MIB = 1024 * 1024
FORMATS = ("table", "md", "csv", "json")
FAILURES = {pb.FAILURE_KIND_OOM: "oom", pb.FAILURE_KIND_SIGNAL: "signal", pb.FAILURE_KIND_TIMEOUT: "timeout",
            pb.FAILURE_KIND_ERROR: "error"}


def _stat(stat: pb.Stat) -> str:
    return f"{stat.mean:.2f} ± {stat.stdev:.2f}" if stat.samples else ""


def limit_table(rows: list[pb.LimitRow]) -> tuple[list[str], list[list[str]]]:
    header = ["device", "model", "quant", "backend", "params", "file MiB", "peak MiB", "prefill tok/s",
              "decode tok/s", "TTFT ms", "provenance"]
    body = []
    for r in rows:
        if r.failure:
            status = f"failed ({FAILURES.get(r.failure, 'error')}): {r.error}"
        else:
            status = f"{r.provenance.kind} (pp{r.n_prompt}/tg{r.n_gen}, {r.threads} threads)"
        body.append([
            r.hostname or r.device_id, r.model_name, r.quant, r.backend,
            f"{r.model_n_params / 1e6:.1f} M" if r.HasField("model_n_params") else "",
            f"{r.model_file_bytes / MIB:.1f}",
            f"{r.peak_rss_bytes / MIB:.1f}" if r.HasField("peak_rss_bytes") else "",
            _stat(r.prefill_tokens_per_s), _stat(r.decode_tokens_per_s), _stat(r.ttft_ms), status,
        ])
    return header, body


def fit_table(answers: list[pb.FitAnswer]) -> tuple[list[str], list[list[str]]]:
    header = ["device", "verdict", "decode tok/s", "peak MiB", "RAM MiB", "reason"]
    body = []
    for a in answers:
        ev = a.evidence if a.HasField("evidence") else None
        body.append([
            a.hostname or a.device_id, a.verdict,
            _stat(ev.decode_tokens_per_s) if ev else "",
            f"{ev.peak_rss_bytes / MIB:.1f}" if ev and ev.HasField("peak_rss_bytes") else "",
            f"{a.ram_total_bytes / MIB:.0f}", a.reason,
        ])
    return header, body


def render(header: list[str], body: list[list[str]], fmt: str, messages: list) -> str:
    if fmt == "json":
        return json.dumps([json_format.MessageToDict(m, preserving_proto_field_name=True) for m in messages], indent=2)
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(body)
        return out.getvalue().rstrip("\n")
    if fmt == "md":
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in body]
        return "\n".join(lines)
    widths = [max(len(str(c)) for c in column) for column in zip(header, *body)]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip() for row in [header, *body])
