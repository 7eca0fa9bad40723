"""Limit tables, fit answers and devices as text: an aligned table or markdown for people (display strings), or
typed rows as csv, json, jsonl or sql for tools (numbers as numbers; a figure's stdev, error band, provenance and
verdict in columns of their own)."""

import dataclasses
import html
import re
import shutil
import textwrap

from fleetfit.models.cli_common import clean, unseen  # noqa: F401  (the terminal's rule: both command lines)
from fleetfit.v1 import fleetfit_pb2 as pb
from fleetfit.v1 import records
from fleetfit.v1.words import PROVENANCE

MIB = 1024 * 1024
FORMATS = ("table", "md", *records.FORMATS)
FIGURE_PARTS = ("stdev", "band", "provenance", "verdict")  # the columns a figure adds beside its value


@dataclasses.dataclass(frozen=True)
class Figure:
    """A cell that is a figure: its value and what a tool needs beside it. table and md show `text()`."""
    value: float | None
    stdev: float | None = None
    band: float | None = None          # ± relative error band of a prediction (largest leave-one-size-out error)
    provenance: str = "measured"       # measured | predicted | estimated
    verdict: str | None = None         # "does_not_fit" where that is the answer

    def text(self) -> str:
        if self.value is None:
            return self.verdict.replace("_", " ") if self.verdict else "n/a"
        text = ("" if self.provenance == "measured" else "~") + number_text(self.value)
        if self.stdev is not None:
            text += " ± " + number_text(self.stdev)
        if self.band is not None:
            text += " " + band_text(self.band)
        return text + (f" ({self.verdict.replace('_', ' ')})" if self.verdict else "")

    def parts(self) -> list:
        return [self.value, *(getattr(self, p) for p in FIGURE_PARTS)]


def band_text(fraction: float) -> str:
    """A ± relative band as people read it: whole percents, finer below 1 % (a band never reads "±0%")."""
    if round(fraction, 2) >= 0.01:
        return f"±{fraction:.0%}"
    return f"±{fraction:.1%}" if round(fraction, 3) >= 0.001 else "±<0.1%"


def number_text(number: float) -> str:
    return f"{number:.0f}" if abs(number) >= 1000 else f"{number:.4g}"


def stat_figure(stat: pb.Stat) -> Figure | None:
    return Figure(round(stat.mean, 3), round(stat.stdev, 3)) if stat.samples else None


def md_cell(text: str) -> str:
    """A markdown table cell: clean, with pipes escaped and HTML shown as text (no `<script>` in tables.md)."""
    return html.escape(clean(text), quote=False).replace("|", "\\|")


FAILURES = {pb.FAILURE_KIND_OOM: "oom", pb.FAILURE_KIND_SIGNAL: "signal", pb.FAILURE_KIND_TIMEOUT: "timeout",
            pb.FAILURE_KIND_ERROR: "error"}


def _stat(stat: pb.Stat) -> str:
    return f"{stat.mean:.2f} ± {stat.stdev:.2f}" if stat.samples else ""


def limit_table(rows: list[pb.LimitRow]) -> tuple[list[str], list[list]]:
    """Typed cells: numbers, Figures (speeds with their stdev), strings, None where there is no figure."""
    header = ["device", "backend", "model", "quant", "params M", "file MiB", "memory MiB",
              "prefill tok/s", "decode tok/s", "TTFT ms", "shape", "provenance", "failure", "result", "device id"]
    body = []
    for r in rows:
        body.append([
            r.device_name or r.hostname or r.device_id, r.backend, r.model_name, r.quant,
            round(r.model_n_params / 1e6, 1) if r.HasField("model_n_params") else None,
            round(r.model_file_bytes / MIB, 1) if r.model_file_bytes else None,
            round(r.memory_bytes / MIB, 1) if r.HasField("memory_bytes") else None,
            stat_figure(r.prefill_tokens_per_s), stat_figure(r.decode_tokens_per_s), stat_figure(r.ttft_ms),
            r.shape, PROVENANCE.word(r.provenance.provenance_kind) or None,
            f"{FAILURES.get(r.failure, 'error')}: {r.error}" if r.failure else None, r.result_id, r.device_id,
        ])
    return header, body


def display(cell) -> str:
    """A typed cell as people read it: n/a where there is no figure (never 0), `~` on predictions."""
    if cell is None:
        return "n/a"
    if isinstance(cell, Figure):
        return cell.text()
    if isinstance(cell, bool):
        return "yes" if cell else "no"
    if isinstance(cell, float):
        return number_text(cell)
    return str(cell)


def _as_figure(cell) -> Figure:
    """A cell of a figure column as a Figure: a bare number is measured; text (e.g. a name) stays the value."""
    if isinstance(cell, Figure):
        return cell
    return Figure(cell, provenance="measured" if isinstance(cell, (int, float)) else None)


def typed_rows(header: list[str], body: list[list]) -> tuple[list[records.Field], list[list]]:
    """Machine columns for typed cells: each column's machine name, and for a column holding Figures its value
    plus one column per FIGURE_PARTS (a bare number there is measured, as the tables' notes say); integral floats
    become ints so counts and bytes stay integers."""
    figure_columns = {i for row in body for i, c in enumerate(row) if isinstance(c, Figure)}
    names, rows = [], [[] for _ in body]
    for i, name in enumerate(header):
        base = records.machine_name(name)
        names += [base, *(f"{base}_{p}" for p in FIGURE_PARTS)] if i in figure_columns else [base]
        for out, row in zip(rows, body):
            cell = row[i]
            if i in figure_columns:
                out += _as_figure(cell).parts()
            else:
                out.append(cell)
    rows = [[int(v) if isinstance(v, float) and v.is_integer() and abs(v) < 2 ** 53 else v for v in r] for r in rows]
    return records.infer_fields(names, rows), rows


# People's formats (table, md) show the columns people read; these hold ids, evidence and reason sentences, kept
# for --wide and in every machine format (csv, json, jsonl, sql).
WIDE_ONLY = ("device id", "result", "evidence", "reason", "source", "streams: how", "last refusal")
# Columns that say what every row is about: in a terminal table with one value in every row, one line above it.
CONTEXT_COLUMNS = ("model", "backend", "quant", "precision", "context", "shape", "stream target tok/s", "provenance")
# To fit a terminal, a column with no figure in any row goes first, then these in order, then the rightmost; each is
# named in the line under the table.
DROP_ORDER = ("file MiB", "params M", "TTFT ms", "context", "RAM MiB", "prefill tok/s", "KLD vs F16", "streams swept",
              "max streams band", "TTFT p99 ms", "response p99 s", "models supported", "host", "cpu", "refused",
              "arch", "speed factor", "peak W", "idle W", "net J/token", "aggregate low", "aggregate high",
              "KLD stderr", "perplexity stderr", "positions", "shape")
MAX_CELL = 32  # a terminal table's longest cell (longer text ends in …; --wide shows it whole)
PARAMS = re.compile(r"(\d+(?:\.\d+)?)([MB])")


def terminal_width() -> int:
    """The terminal's columns: $COLUMNS, else the terminal's size, else 120."""
    return shutil.get_terminal_size((120, 24)).columns


def params_text(n: float) -> str:
    return f"{n / 1e9:.1f}B" if n >= 1e9 else f"{n / 1e6:.0f}M"


def _typed_params(header: list[str], body: list[list]) -> list[list]:
    """A `parameters` column as numbers ("135M" read as 135000000): tools get the count, people see it as text."""
    if "parameters" not in header:
        return body
    i = header.index("parameters")

    def number(cell):
        m = PARAMS.fullmatch(cell) if isinstance(cell, str) else None
        return round(float(m.group(1)) * (1e9 if m.group(2) == "B" else 1e6)) if m else cell

    return [[*row[:i], number(row[i]), *row[i + 1:]] for row in body]


def _keep(header: list[str], body: list[list], keep: list[int]) -> tuple[list[str], list[list]]:
    return [header[i] for i in keep], [[row[i] for i in keep] for row in body]


def render(header: list[str], body: list[list], fmt: str, table: str = "rows", wide: bool = False,
           width: int | None = None) -> str:
    """Typed cells as an aligned table or markdown (display strings), or as csv, json, jsonl or sql rows (every
    column). People's formats leave out WIDE_ONLY columns unless `wide`; a terminal table (not `wide`) also fits
    `width` columns (default: the terminal's): long cells shortened, a column every row shares as one line above
    it, and columns left out (named under it) until it fits."""
    body = _typed_params(header, body)
    if fmt in records.FORMATS:
        fields, rows = typed_rows(header, body)
        if fmt != "json" and fmt != "jsonl":  # JSON escapes control characters itself; csv and sql must not carry them
            rows = [[clean(v) if isinstance(v, str) else v for v in r] for r in rows]
        return records.write(fields, rows, fmt, table=records.machine_name(table))
    if not wide:
        header, body = _keep(header, body, [i for i, c in enumerate(header) if c not in WIDE_ONLY])
    params = header.index("parameters") if "parameters" in header else None
    body = [[params_text(c) if i == params and isinstance(c, (int, float)) and not isinstance(c, bool) else display(c)
             for i, c in enumerate(row)] for row in body]
    if fmt == "md":
        lines = ["| " + " | ".join(map(md_cell, header)) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(map(md_cell, row)) + " |" for row in body]
        return "\n".join(lines)
    header, body = [clean(c) for c in header], [[clean(c) for c in row] for row in body]
    if wide:
        return _aligned(header, body)
    width = width or terminal_width()
    if not body:
        return "(no rows)"
    shared = [i for i, c in enumerate(header) if c in CONTEXT_COLUMNS and len({row[i] for row in body}) == 1]
    above = [f"{header[i]}: {body[0][i]}" for i in shared]
    header, body = _keep(header, body, [i for i in range(len(header)) if i not in shared])
    body = [[c if len(c) <= MAX_CELL else c[:MAX_CELL - 1] + "…" for c in row] for row in body]
    hidden = []
    while len(header) > 2 and max(map(len, _aligned(header, body).splitlines()), default=0) > width:
        empty = [i for i in range(1, len(header)) if all(row[i] in ("n/a", "") for row in body)]
        named = [i for name in DROP_ORDER for i, c in enumerate(header) if c == name]
        i = (empty or named or [len(header) - 1])[0]
        hidden.append(header[i])
        header, body = _keep(header, body, [j for j in range(len(header)) if j != i])
    lines = _packed(above, width)
    lines.append(_aligned(header, body))
    if hidden:
        lines += textwrap.wrap(f"(not shown, to fit {width} columns: {', '.join(hidden)}; --wide or -o csv/json show "
                               "every column)", width, break_on_hyphens=False)
    return "\n".join(lines)


def _packed(items: list[str], width: int) -> list[str]:
    """Items two spaces apart, as many to a line as fit `width` (an item longer than a line wrapped alone)."""
    lines: list[str] = []
    for item in items:
        if lines and len(lines[-1]) + 2 + len(item) <= width:
            lines[-1] += "  " + item
        else:
            lines += textwrap.wrap(item, width, break_on_hyphens=False) or [""]
    return lines


def _aligned(header: list[str], body: list[list[str]]) -> str:
    widths = [max(len(str(c)) for c in column) for column in zip(header, *body)]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip() for row in [header, *body])


def notes_text(notes: list[str], fmt: str, width: int | None = None) -> str:
    """A table's notes under it: one `- ` line each (md), wrapped to the terminal's width (table)."""
    if fmt == "md":
        return "\n".join(f"- {note}" for note in notes)
    width = width or terminal_width()
    return "\n".join(textwrap.fill(clean(note), width, initial_indent="- ", subsequent_indent="  ",
                                    break_on_hyphens=False, break_long_words=True) for note in notes)
