"""`fleetfit report --out DIR`: one static HTML page that answers first — a summary per device (read from the
tables, with provenance marks) and, for `--models`, fit's answers — then plots (inline SVG) and the tables. One
tiny inline script sorts a table on a heading click; the page reads the same without it.

Plots: decode tokens/s against parameters per device (by id), backend and precision (log-log), peak memory
against parameters with each device's RAM as a line, tokens per joule against parameters, and per device with concurrency sweeps
aggregate and per-stream decode tokens/s against concurrent streams, and per device with quality results decode
tokens/s against mean KL divergence from F16, one point per model and precision (the quality table). Measured points are
solid, predicted ones hollow with their error band, estimated ones (power from a model) diamonds; legends are
HTML below each plot. A device filter (radio buttons and CSS) shows one device's series and table rows, a model
filter one model's table rows. Predicted sizes are drawn up to PREDICTION_RANGE x the largest size measured on the
device; series that draw the same point are spread sideways.
DIR/tables.md holds the tables as markdown.
"""

import dataclasses
import difflib
import html
import math
import pathlib
import re

from fleetfit.coordinator.answers.devices import display_names, short_id
from fleetfit.coordinator.answers.fit import fit_table
from fleetfit.coordinator.answers.limits import comparable
from fleetfit.coordinator.answers.render import Figure, clean, display
from fleetfit.coordinator.predict.scaling import band_of
from fleetfit.coordinator.answers.tables import typed_cell
from fleetfit.coordinator.answers.tables import render_table
from fleetfit.models.backends import DEFAULT_BACKEND
from fleetfit.models.catalogue import CATALOGUE, n_params
from fleetfit.v1 import fleetfit_pb2 as pb

W, H, PAD_L, PAD_R, PAD_T, PAD_B = 640, 380, 70, 20, 20, 50
SPREAD = 5  # px between series that draw the same point
MAX_MODELS = 16  # --models
PREDICTION_RANGE = 8.0  # predicted sizes are drawn up to this multiple of the largest size measured on the device
COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf", "#7f7f7f")


@dataclasses.dataclass
class Series:
    """One device's backend and precision on a plot: measured points (solid), predicted ones (hollow, with their
    error band as (low, high)), and whether its figures are estimates (marked as such)."""
    label: str
    device: int  # index of the device on the page (the filter's key); devices are keyed by id, never by name
    measured: list[tuple[float, float]] = dataclasses.field(default_factory=list)
    predicted: list[tuple[float, float, float, float]] = dataclasses.field(default_factory=list)
    estimated: bool = False


def _escape(text: str) -> str:
    """Text for the page: control characters escaped (render.clean), then HTML-escaped."""
    return html.escape(clean(text))


def _ticks(lo: float, hi: float, log: bool) -> list[float]:
    if log:
        return [10.0 ** e for e in range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1)]
    step = 10 ** math.floor(math.log10((hi - lo) or 1))
    return [step * i for i in range(math.floor(lo / step), math.ceil(hi / step) + 1)]


def scatter_svg(title: str, series: dict, x_label: str, y_label: str, log_y: bool = True,
                lines: dict[str, tuple[int, float]] | None = None) -> str:
    """A scatter plot (log x; log or linear y): per series a line through its measured points (solid dots),
    hollow predicted points with error bars, and horizontal dashed lines (label -> (device, y)). The legend is
    HTML below the plot, so it never overlaps the data."""
    # Only finite, positive figures are drawn (log axes): a run stored with a zero or broken figure is left out.
    def drawable(*values: float) -> bool:
        return all(math.isfinite(v) and v > 0 for v in values)

    lines = {name: (d, y) for name, (d, y) in (lines or {}).items() if drawable(y)}
    kept = {}
    for name, s in series.items():
        s = dataclasses.replace(s, measured=[p for p in s.measured if drawable(*p)],
                                predicted=[p for p in s.predicted if drawable(*p[:2], p[3])])
        if s.measured or s.predicted:
            kept[name] = s
    xs = [p[0] for s in kept.values() for p in s.measured + s.predicted]
    ys = ([p[1] for s in kept.values() for p in s.measured] + [v for s in kept.values() for p in s.predicted
                                                              for v in p[1:] if drawable(v)]
          + [y for _, y in lines.values()])
    if not xs:
        return f'<p class="empty">{_escape(title)}: no data yet</p>'
    x_ticks = _ticks(min(xs), max(xs), True)
    y_ticks = _ticks(min(ys), max(ys), log_y) if log_y else _ticks(0, max(ys), False)
    tx = math.log10
    ty = (lambda v: math.log10(v)) if log_y else (lambda v: v)
    x0, x1, y0, y1 = tx(x_ticks[0]), tx(x_ticks[-1]), ty(y_ticks[0]), ty(y_ticks[-1])
    px = lambda v: PAD_L + (tx(v) - x0) / ((x1 - x0) or 1) * (W - PAD_L - PAD_R)
    py = lambda v: H - PAD_B - (ty(v) - y0) / ((y1 - y0) or 1) * (H - PAD_T - PAD_B)
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" role="img" '
           f'aria-label="{_escape(title)}"><title>{_escape(title)}</title>',
           f'<rect x="{PAD_L}" y="{PAD_T}" width="{W - PAD_L - PAD_R}" height="{H - PAD_T - PAD_B}" fill="none" stroke="#999"/>']
    for v in x_ticks:
        out.append(f'<text x="{px(v):.1f}" y="{H - PAD_B + 16}" font-size="11" text-anchor="middle">{_num(v)}</text>')
    for v in y_ticks:
        out.append(f'<line x1="{PAD_L}" x2="{W - PAD_R}" y1="{py(v):.1f}" y2="{py(v):.1f}" stroke="#eee"/>'
                   f'<text x="{PAD_L - 6}" y="{py(v) + 4:.1f}" font-size="11" text-anchor="end">{_num(v)}</text>')
    out.append(f'<text x="{(PAD_L + W - PAD_R) / 2}" y="{H - 10}" font-size="12" text-anchor="middle">'
               f'{_escape(x_label)}</text><text x="14" y="{(PAD_T + H - PAD_B) / 2}" font-size="12" '
               f'text-anchor="middle" transform="rotate(-90 14 {(PAD_T + H - PAD_B) / 2})">{_escape(y_label)}</text>')
    legend = []
    for i, (name, (device, y)) in enumerate(lines.items()):
        colour = COLOURS[device % len(COLOURS)]
        out.append(f'<line class="capacity" data-device="{device}" x1="{PAD_L}" x2="{W - PAD_R}" y1="{py(y):.1f}" '
                   f'y2="{py(y):.1f}" stroke="{colour}" stroke-dasharray="6 4"><title>{_escape(name)}: '
                   f'{_num(y)}</title></line>')
        legend.append(f'<li data-device="{device}"><span class="swatch dashed" style="border-color:{colour}"></span>'
                      f'{_escape(name)}</li>')
    # Series that draw the same point (two devices' equal memory, say) are spread sideways by SPREAD px each, in
    # drawing order, so every one stays visible; a point no other series shares stays where it is.
    stacks: dict[tuple[int, int], list] = {}
    for key, s in sorted(kept.items()):
        for x, y, *_ in s.measured + s.predicted:
            members = stacks.setdefault((round(px(x) / SPREAD), round(py(y) / SPREAD)), [])
            members += [] if key in members else [key]

    def sx(key, x: float, y: float) -> float:
        members = stacks[round(px(x) / SPREAD), round(py(y) / SPREAD)]
        return px(x) + (members.index(key) - (len(members) - 1) / 2) * SPREAD

    for i, (key, s) in enumerate(sorted(kept.items())):  # keyed by device id (and more), shown by label
        name, colour, measured = s.label, COLOURS[i % len(COLOURS)], sorted(s.measured)
        mark = "estimated" if s.estimated else "measured"
        out.append(f'<g class="series" data-device="{s.device}" data-series="{_escape(name)}">')
        if len(measured) > 1:
            path = " ".join(f"{sx(key, x, y):.1f},{py(y):.1f}" for x, y in measured)
            dash = ' stroke-dasharray="2 3"' if s.estimated else ""
            out.append(f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="1.5"{dash}/>')
        for x, y in measured:
            at = sx(key, x, y)
            shape = (f'<rect class="point {mark}" x="{at - 4:.1f}" y="{py(y) - 4:.1f}" width="8" height="8" '
                     f'fill="{colour}" transform="rotate(45 {at:.1f} {py(y):.1f})">' if s.estimated else
                     f'<circle class="point {mark}" cx="{at:.1f}" cy="{py(y):.1f}" r="4" fill="{colour}">')
            out.append(f'{shape}<title>{_escape(name)}: {_num(x)}, {_num(y)} ({mark})</title>'
                       f'{"</rect>" if s.estimated else "</circle>"}')
        for x, y, lo, hi in s.predicted:
            # a band of 100 % or more has no lower bound: its bar runs to the bottom of the plot
            bottom, span = (py(lo), f"{_num(lo)} to {_num(hi)}") if drawable(lo) else (H - PAD_B, f"up to {_num(hi)}")
            at = sx(key, x, y)
            out.append(f'<line class="error-bar" x1="{at:.1f}" x2="{at:.1f}" y1="{bottom:.1f}" '
                       f'y2="{py(hi):.1f}" stroke="{colour}"/><circle class="predicted" cx="{at:.1f}" '
                       f'cy="{py(y):.1f}" r="4" fill="white" stroke="{colour}" stroke-width="1.5"><title>'
                       f'{_escape(name)}: {_num(x)}, ~{_num(y)} (predicted, {span})</title></circle>')
        out.append("</g>")
        note = " (ESTIMATED)" if s.estimated else ""
        legend.append(f'<li data-device="{s.device}"><span class="swatch" style="background:{colour}"></span>'
                      f'{_escape(name)}{note}</li>')
    return "\n".join(out + ["</svg>", f'<ul class="legend">{"".join(legend)}</ul>'])


def _num(v: float) -> str:
    for unit, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(v) >= scale:
            return f"{v / scale:g}{unit}"
    return f"{v:.3g}"


def _label(names: dict[str, str], hosts: dict[str, str], device_id: str, backend: str, quant: str) -> str:
    """A series' name: the device's display name with its short id (two devices never share a series), backend,
    precision."""
    name = names.get(device_id, device_id)
    short = short_id(device_id, hosts.get(device_id, ""))
    return f"{name} {backend} {quant}" + ("" if short in name else f" · {short}")


def _row_device(cells: list, col: dict[str, int], ids: dict[str, str]) -> str | None:
    """The id of the device a table row is about: its "device id" column (a coordinator before that column: the
    id its display name stands for)."""
    if "device id" in col:
        return cells[col["device id"]]
    return ids.get(cells[col["device"]]) if "device" in col else None


def _predicted(table: pb.Table | None, suffix: str, ids: dict[str, str], add) -> None:
    """Predicted and estimated cells of a size table (columns "<precision><suffix>") as add(device id, backend,
    precision, parameters, figure)."""
    if table is None:
        return
    col = {c: i for i, c in enumerate(table.columns)}
    for row in table.rows:
        cells = [typed_cell(c) for c in row.cells]
        device_id, arch = _row_device(cells, col, ids), CATALOGUE.get(cells[col["model"]])
        for name, i in col.items():
            figure = cells[i]
            if (device_id and arch and name.endswith(suffix) and isinstance(figure, Figure)
                    and figure.provenance != "measured" and figure.value is not None):
                add(device_id, cells[col["backend"]], name[:-len(suffix)], n_params(arch), figure)


def plots(devices: list[pb.Device], rows: list[pb.LimitRow], tables: list[pb.Table]) -> list[str]:
    names = display_names(devices)
    ids = {name: device_id for device_id, name in names.items()}
    index = {d.inventory.device_id: i for i, d in enumerate(devices)}
    hosts = {d.inventory.device_id: d.inventory.hostname for d in devices}
    by_name = {t.name: t for t in tables}
    ok = [r for r in comparable([r for r in rows if not r.failure]) if r.HasField("model_n_params")]
    decode, memory, energy = {}, {}, {}

    def series(plot: dict, device_id: str, backend: str, quant: str) -> Series:
        label = _label(names, hosts, device_id, backend, quant)
        return plot.setdefault((device_id, backend, quant), Series(label, index.get(device_id, -1)))

    for r in ok:  # one series per device (by id), backend and precision
        series(decode, r.device_id, r.backend, r.quant).measured.append((r.model_n_params, r.decode_tokens_per_s.mean))
        if r.HasField("memory_bytes"):
            series(memory, r.device_id, r.backend, r.quant).measured.append((r.model_n_params, r.memory_bytes / 1e9))

    largest: dict[tuple[str, str], float] = {}  # (device, backend) -> its largest measured size
    for r in ok:
        largest[r.device_id, r.backend] = max(largest.get((r.device_id, r.backend), 0), r.model_n_params)

    def predicted(plot):
        def add(device_id, backend, quant, params, figure):
            if params <= PREDICTION_RANGE * largest.get((device_id, backend), 0):  # the declared range only
                series(plot, device_id, backend, quant).predicted.append(
                    (params, figure.value, *band_of(figure.value, figure.band)))
        return add

    _predicted(by_name.get("speed"), " tok/s", ids, predicted(decode))
    _predicted(by_name.get("memory"), " GB", ids, predicted(memory))
    params = {(r.device_id, r.backend, r.model_name, r.quant): r.model_n_params for r in ok}
    power = by_name.get("power")
    if power is not None:
        col = {c: i for i, c in enumerate(power.columns)}
        for row in power.rows:
            cells = [typed_cell(c) for c in row.cells]
            key = (_row_device(cells, col, ids), cells[col["backend"]], cells[col["model"]], cells[col["quant"]])
            tpj = cells[col["tokens/J"]]
            if key in params and isinstance(tpj, float) and tpj > 0:
                s = series(energy, key[0], key[1], key[3])
                s.measured.append((params[key], tpj))
                s.estimated |= "ESTIMATED" in str(cells[col["provenance (method, scope)"]])
    ram = {f"{names.get(d.inventory.device_id, d.inventory.device_id)} RAM": (index[d.inventory.device_id],
                                                                            d.inventory.ram_total_bytes / 1e9)
           for d in devices if d.inventory.ram_total_bytes and any(r.device_id == d.inventory.device_id for r in ok)}
    return [
        scatter_svg(f"Decode tokens/s against parameters (log-log; predictions up to {PREDICTION_RANGE:g}x the "
                    "largest size measured on each device)", decode, "parameters", "decode tokens/s"),
        scatter_svg(f"Peak memory against parameters, with each device's RAM (predictions up to {PREDICTION_RANGE:g}x "
                    "the largest size measured on each device)", memory, "parameters", "peak memory GB", lines=ram),
        scatter_svg("Tokens per joule against parameters (decode)", energy, "parameters", "tokens per joule"),
    ] + serving_plots(by_name.get("serving-curves"), ids, index) + quality_plots(by_name.get("quality"), ids, index)


def per_device_plots(table: pb.Table | None, ids: dict[str, str], index: dict[str, int], add, title: str,
                     x_label: str, y_label: str) -> list[str]:
    """One scatter per device of a table's rows (it has a "device" column): `add(cell, series)` puts one row's
    points on its series, `cell(column)` being the row's typed cell and `series(label)` that device's series."""
    if table is None:
        return []
    col = {c: i for i, c in enumerate(table.columns)}
    per_device: dict[str, tuple[str, dict[str, Series]]] = {}  # device id -> (its name, its plot)
    for row in table.rows:
        cells = [typed_cell(c) for c in row.cells]
        device_id = _row_device(cells, col, ids) or cells[col["device"]]
        name, plot = per_device.setdefault(device_id, (cells[col["device"]], {}))
        where = index.get(device_id, -1)
        add(lambda column: cells[col[column]], lambda label: plot.setdefault(label, Series(label, where)))
    return [scatter_svg(title.format(device=name), plot, x_label, y_label)
            for _, (name, plot) in sorted(per_device.items()) if plot]


def _number(value) -> float | None:
    return value if isinstance(value, float) else None


def quality_plots(quality: pb.Table | None, ids: dict[str, str], index: dict[str, int]) -> list[str]:
    """Per device with quality results: its measured decode tok/s against the mean KL divergence from the
    reference, one series per model and precision (log-log; the quality table's rows with a decode speed)."""
    def add(cell, series):
        kld, decode = _number(cell("mean KLD")), _number(cell("decode tok/s"))
        if kld is not None and decode is not None:
            series(f"{cell('device')} {cell('model')} {cell('precision')}").measured.append((kld, decode))

    return per_device_plots(quality, ids, index, add,
                            "{device}: decode tokens/s against mean KL divergence from F16, per precision (measured)",
                            "mean KL divergence from F16", "decode tokens/s")


def serving_plots(curves: pb.Table | None, ids: dict[str, str], index: dict[str, int]) -> list[str]:
    """Per device with concurrency sweeps: aggregate and per-stream decode tok/s against concurrent streams, from
    the serving-curves table; measured points solid, predicted ones hollow with their leave-one-out band."""
    def add(cell, series):
        streams, aggregate, per_stream = (_number(cell(c)) for c in ("streams", "aggregate tok/s", "per-stream tok/s"))
        if streams is None or aggregate is None or per_stream is None:
            return
        backend = cell("backend")
        key = f"{cell('device')} {cell('model')} {cell('precision')}" + (
            "" if backend == DEFAULT_BACKEND else f" {backend}")
        total, each = series(f"{key} aggregate"), series(f"{key} per stream")
        if cell("provenance") == "measured":
            total.measured.append((streams, aggregate))
            each.measured.append((streams, per_stream))
        else:
            low, high = _number(cell("aggregate low")) or aggregate, _number(cell("aggregate high")) or aggregate
            total.predicted.append((streams, aggregate, low, high))
            each.predicted.append((streams, per_stream, low / streams, high / streams))

    return per_device_plots(curves, ids, index, add, "{device}: decode tokens/s against concurrent streams (solid: "
                            "measured, hollow: predicted with its band)", "concurrent streams", "decode tokens/s")


MARKS = {"measured": "measured", "predicted": "~predicted", "estimated": "estimated"}
SCALE = {"": 1.0, "k": 1e3, "M": 1e6, "B": 1e9, "T": 1e12}
# Click a heading to sort its table (again: the other way); numbers by their value (a cell's data-v), text after.
# Without script the page reads the same, in the tables' own order.
SORT_SCRIPT = """<script id="sort">
for (const th of document.querySelectorAll("th")) th.addEventListener("click", () => {
  const body = th.closest("table").tBodies[0], i = th.cellIndex, up = th.dataset.sorted !== "up";
  const key = r => { const c = r.cells[i]; return !c ? "" : c.dataset.v !== undefined ? +c.dataset.v : c.textContent; };
  const rows = [...body.rows].sort((a, b) => { const x = key(a), y = key(b);
    if (typeof x !== typeof y) return typeof x === "number" ? -1 : 1;
    const d = typeof x === "number" ? x - y : x.localeCompare(y); return up ? d : -d; });
  for (const h of th.parentNode.cells) delete h.dataset.sorted;
  th.dataset.sorted = up ? "up" : "down"; rows.forEach(r => body.appendChild(r));
});
</script>"""


def _sort_value(cell) -> float | None:
    """The number a cell sorts by: a figure's value, a number, or text that starts with one ("6.7B", "~1.2 ±5%")."""
    if isinstance(cell, Figure):
        return cell.value
    if isinstance(cell, (int, float)) and not isinstance(cell, bool):
        return float(cell)
    found = re.match(r"~?(\d+(?:\.\d+)?)([kMBT]?)(?![\w-])", cell) if isinstance(cell, str) else None
    return float(found[1]) * SCALE[found[2]] if found else None


def _td(cell, text: str | None = None) -> str:
    """A table cell: its display text (or `text`), and the number it sorts by."""
    value = _sort_value(cell)
    sort = f' data-v="{value:.9g}"' if value is not None and math.isfinite(value) else ""
    return f"<td{sort}>{_escape(text if text is not None else display(cell))}"


def _records(table: pb.Table | None, ids: dict[str, str]) -> list[dict]:
    """A table's rows as {column: typed cell}, with "_device": the id of the device the row is about."""
    if table is None:
        return []
    col = {c: i for i, c in enumerate(table.columns)}
    found = []
    for row in table.rows:
        cells = [typed_cell(c) for c in row.cells]
        found.append({**dict(zip(table.columns, cells)), "_device": _row_device(cells, col, ids)})
    return found


def _provenance(cell, estimated: bool = False) -> str | None:
    """What a table's cell is: measured, predicted or estimated (None: no figure). A bare number is measured
    (or estimated where its row says so), text with a leading ~ a prediction."""
    if cell is None or (isinstance(cell, Figure) and cell.value is None):
        return None
    if isinstance(cell, Figure):
        return "estimated" if estimated and cell.provenance == "measured" else cell.provenance
    if isinstance(cell, str):
        return "predicted" if cell.startswith("~") else "measured"
    return "estimated" if estimated else "measured"


def _marked(cell, estimated: bool = False, text: str | None = None) -> str:
    """A summary cell: the figure as the tables show it, and its provenance mark (none where there is no figure)."""
    kind = _provenance(cell, estimated)
    mark = f' <span class="mark {kind}">{MARKS[kind]}</span>' if kind else ""
    return f"{_td(cell, text)}{mark}</td>"


def _column(table: pb.Table | None, pattern: str, default: str) -> str:
    """The first column of a table whose name matches `pattern` (its options show in its names), else default."""
    return next((c for c in (table.columns if table is not None else []) if re.fullmatch(pattern, c)), default)


def summary(tables: list[pb.Table], ids: dict[str, str], device_of: dict[str, int]) -> str:
    """The answers first: per device, backend and precision the largest model that fits (measured, and in the
    catalogue), decode at the capacity table's reference model, the streams the deployment table serves at its
    interactive speed, and J/token — every figure read from the tables (so it agrees with fit and limits), each
    with its provenance mark."""
    by_name = {t.name: t for t in tables}
    capacity = _records(by_name.get("capacity"), ids)
    if not capacity:
        return '<p class="empty">Summary: no device has measured results yet.</p>'
    reference = _column(by_name.get("capacity"), r".+ decode vs .*", "llama-2-7b decode vs").split(" decode vs")[0]
    interactive = _column(by_name.get("deployment"), r"interactive \(.*\)", "interactive")
    target = re.search(r"≥[0-9.]+ tok/s", interactive)
    speed = {(r["_device"], r["backend"], r["model"]): r for r in _records(by_name.get("speed"), ids)}
    deployment = {(r["_device"], r["backend"], r["precision"]): r for r in _records(by_name.get("deployment"), ids)}
    power: dict[tuple, list[dict]] = {}
    for r in _records(by_name.get("power"), ids):
        power.setdefault((r["_device"], r["backend"], r["quant"]), []).append(r)

    def size(model: str) -> float:
        return n_params(CATALOGUE[model]) if model in CATALOGUE else 0

    body = []
    for r in capacity:
        key = (r["_device"], r["backend"], r["precision"])
        largest = r.get("largest that fits")
        at_reference = speed.get((*key[:2], reference), {}).get(f"{key[2]} tok/s")
        deployed = deployment.get(key, {})
        streams, served = deployed.get("interactive streams"), re.match(r"~?(\S+)", str(deployed.get(interactive, "")))
        rows = sorted(power.get(key, []), key=lambda p: (p["model"] == reference, size(p["model"])))
        energy = rows[-1] if rows else {}
        joules = energy.get("J/token")
        estimated = "ESTIMATED" in str(energy.get("provenance (method, scope)", ""))
        device = device_of.get(key[0])
        tag = f' data-device="{device}"' if device is not None else ""
        body.append(
            f"<tr{tag}><td>{_escape(display(r['device']))}</td><td>{_escape(display(key[1]))}</td>"
            f"<td>{_escape(display(key[2]))}</td>"
            + _marked(largest, text=f"{largest} ({r.get('parameters')})" if largest else None)
            + _marked(r.get("largest in catalogue (predicted)")) + _marked(at_reference)
            + _marked(streams, text=f"{display(streams)} × {served[1]}" if streams is not None and served else None)
            + _marked(joules, estimated, f"{display(joules)} ({energy['model']})" if joules is not None else None)
            + f"<td>{_escape(display(key[0]))}</td></tr>")
    head = ["device", "backend", "precision", "largest that fits (measured)", "largest in catalogue",
            f"decode tok/s at {reference}", f"streams at {target.group() if target else 'the interactive speed'} (model)",
            "J/token (model)", "device id"]
    return ('<h2>Summary</h2><div class="scroll"><table class="summary"><thead><tr>'
            + "".join(f"<th>{_escape(h)}</th>" for h in head) + f"</tr></thead><tbody>{''.join(body)}</tbody></table>"
            "</div><p class=\"notes\">Read from the capacity, speed, deployment and power tables below (the answers "
            "of <code>fleetfit limits</code> and <code>fleetfit fit</code>). The size: the capacity table's reference "
            "model (option reference); streams: the deployment table's interactive streams of its interactive model; "
            "J/token: the reference model where it was measured, else the largest model measured at that precision.</p>")


def named_models(values: list[str]) -> list[tuple[str, str | None]]:
    """`--models`: catalogue names, NAME:QUANT for one precision, comma-separated or repeated, as (name, quant or
    None); ValueError (one line, with a did-you-mean) for a name the catalogue lacks or too many."""
    found = []
    for item in (i.strip() for v in values for i in v.split(",")):
        name, _, quant = item.partition(":")
        if not item:
            continue
        if name not in CATALOGUE:
            close = difflib.get_close_matches(name, list(CATALOGUE), 1)
            raise ValueError(f"--models: unknown model {name!r}" + (f" (did you mean {close[0]}?)" if close else "")
                             + "; `fleetfit models list` names them")
        found.append((name, quant.strip() or None))
    found = list(dict.fromkeys(found))
    if len(found) > MAX_MODELS:
        raise ValueError(f"--models: at most {MAX_MODELS} models, got {len(found)}")
    return found


def fit_requests(models: list[tuple[str, str | None]], capacity: pb.Table | None,
                 devices: list[pb.Device]) -> list[pb.FitRequest]:
    """The questions `fleetfit fit MODEL --quant Q --backend B` asks, one per named model and precision: the one
    named, else each backend and precision the fleet measured (the capacity table's rows)."""
    ids = {name: device_id for device_id, name in display_names(devices).items()}
    measured = list(dict.fromkeys((r["backend"], r["precision"]) for r in _records(capacity, ids)))
    return [pb.FitRequest(model_name=name, quant=q, backend=b) for name, quant in models
            for b, q in ([p for p in measured if p[1] == quant] or [(DEFAULT_BACKEND, quant)] if quant else measured)]


FIT_COLUMNS = ("device", "model", "backend", "quant", "verdict", "memory MiB", "% RAM", "decode tok/s", "J/token",
               "max streams", "stream target tok/s", "provenance", "reason")


def fit_section(answers: list[pb.FitAnswer] | None, device_of: dict[str, int], model_of: dict[str, int]) -> str:
    """The models the operator named (--models): fit's answers (the Fit RPC `fleetfit fit` asks), in fit's cells."""
    if answers is None:
        return ""
    if not answers:
        return ('<h2>Fit</h2><p class="empty">Fit: no answers for the models named (no device, or no precision '
                'measured yet: name one as NAME:QUANT).</p>')
    header, body = fit_table(answers)
    shown, wrap = [header.index(c) for c in FIT_COLUMNS if c in header], ' class="wrap"'
    rows = []
    for a, cells in zip(answers, body):
        device, model = device_of.get(a.device_id), model_of.get(a.model_name)
        tag = (f' data-device="{device}"' if device is not None else "") + f' data-model="{model}"' * (model is not None)
        rows.append(f"<tr{tag}>" + "".join(
            f"<td{wrap}><details><summary>why</summary>{_escape(display(cells[i]))}</details></td>"
            if header[i] == "reason" else f"{_td(cells[i])}</td>" for i in shown) + "</tr>")
    return ('<h2>Fit: the models named</h2><div class="scroll"><table class="fit"><thead><tr>'
            + "".join(f"<th>{_escape(header[i])}</th>" for i in shown) + f"</tr></thead><tbody>{''.join(rows)}"
            "</tbody></table></div><p class=\"notes\">The answers of <code>fleetfit fit MODEL --quant Q</code> "
            "(per device: fits / tight / does not fit, at fit's default context and speed target); <code>~</code> marks "
            "a predicted or estimated figure, <code>±</code> its band.</p>")


def _html_table(table: pb.Table, device_of: dict[str, int], ids: dict[str, str], model_of: dict[str, int]) -> str:
    """A table as HTML: the display strings people read (units are in the column names), each row tagged with its
    device and model for the filters, each figure with the number it sorts by. A table without rows is named in
    one line, not drawn."""
    if not table.rows:
        return f'<p class="empty">{_escape(table.title)}: no rows yet.</p>'
    col = {c: i for i, c in enumerate(table.columns)}
    head = "".join(f"<th>{_escape(c)}</th>" for c in table.columns)
    body = []
    for row in table.rows:
        cells = [typed_cell(c) for c in row.cells]
        device = device_of.get(_row_device(cells, col, ids))
        model = model_of.get(cells[col["model"]]) if "model" in col and isinstance(cells[col["model"]], str) else None
        tag = (f' data-device="{device}"' if device is not None else "") + f' data-model="{model}"' * (model is not None)
        body.append(f"<tr{tag}>" + "".join(f"{_td(c)}</td>" for c in cells) + "</tr>")
    notes = "".join(f"<li>{_escape(n)}</li>" for n in table.notes)
    return (f'<h3>{_escape(table.title)}</h3><div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>'
            f'{"".join(body)}</tbody></table></div><ul class="notes">{notes}</ul>')


def build(devices: list[pb.Device], rows: list[pb.LimitRow], tables: list[pb.Table],
          fits: list[pb.FitAnswer] | None = None) -> tuple[str, str]:
    """(index.html, tables.md) for the fleet; `fits`: fit's answers for the models the operator named."""
    markdown = "\n\n".join(f"## {t.title}\n\n{render_table(t, 'md')}" if t.rows else f"{t.title}: no rows yet."
                             for t in tables)
    figures = "\n".join(f"<figure><figcaption>{re.search(r'<title>(.*?)</title>', svg).group(1)}"
                         f"</figcaption>{svg}</figure>" if "<svg" in svg else svg for svg in plots(devices, rows, tables))
    names = display_names(devices)
    ids = {name: device_id for device_id, name in names.items()}
    device_of = {d.inventory.device_id: i for i, d in enumerate(devices)}
    # A device filter without JavaScript: one radio button per device; CSS hides every other device's series,
    # lines and table rows while it is checked.
    radios = "".join(f'<input type="radio" name="device" id="dev-{i}" class="pick">' for i in range(len(devices)))
    labels = "".join(f'<label for="dev-{i}">{_escape(names[d.inventory.device_id])}</label>'
                     for i, d in enumerate(devices))
    rules = "\n".join(f'#dev-{i}:checked ~ main [data-device]:not([data-device="{i}"]){{display:none}} '
                       f'#dev-{i}:checked ~ nav label[for="dev-{i}"]{{font-weight:bold;background:#dde}}'
                       for i in range(len(devices)))
    # The same for models (the rows of every table with a model column, and of the fit section), by size.
    models = sorted(({r.cells[list(t.columns).index("model")].string_value for t in tables if "model" in t.columns
                      for r in t.rows} | {a.model_name for a in fits or []}) - {""},
                    key=lambda m: (n_params(CATALOGUE[m]) if m in CATALOGUE else 0, m))
    model_of = {m: j for j, m in enumerate(models)}
    radios += "".join(f'<input type="radio" name="model" id="model-{j}" class="pick">' for j in range(len(models)))
    model_labels = "".join(f'<label for="model-{j}">{_escape(m)}</label>' for j, m in enumerate(models))
    rules += "\n" + "\n".join(f'#model-{j}:checked ~ main tr[data-model]:not([data-model="{j}"]){{display:none}} '
                               f'#model-{j}:checked ~ nav label[for="model-{j}"]{{font-weight:bold;background:#dde}}'
                               for j in range(len(models)))
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>fleetfit report</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto}} figure{{margin:1em 0}}
figcaption{{font-weight:bold}} .pick{{display:none}} nav label{{margin-right:.6em;padding:.1em .4em;cursor:pointer;
border:1px solid #ccc;border-radius:3px}} #dev-all:checked ~ nav label[for="dev-all"]{{font-weight:bold;background:#dde}}
#model-all:checked ~ nav label[for="model-all"]{{font-weight:bold;background:#dde}} nav{{margin:.3em 0}}
th{{cursor:pointer}} th[data-sorted=up]::after{{content:" \\25b2"}} th[data-sorted=down]::after{{content:" \\25bc"}}
.legend{{list-style:none;padding:0;display:flex;flex-wrap:wrap;gap:.2em 1.2em;font-size:12px;max-width:640px}}
.swatch{{display:inline-block;width:10px;height:10px;border-radius:50%;margin-right:.4em}}
.swatch.dashed{{border-radius:0;height:0;width:16px;border-top:2px dashed;vertical-align:middle}}
.scroll{{overflow-x:auto}} table{{border-collapse:collapse;font-size:12px}} th,td{{border:1px solid #ddd;
padding:2px 6px;text-align:left;white-space:nowrap}} td.wrap{{white-space:normal;min-width:20em}}
.summary td{{white-space:normal}} th{{background:#f3f3f3}} .notes{{font-size:11px;color:#555}}
.mark{{font-size:10px;color:#555;border:1px solid #ccc;border-radius:3px;padding:0 .3em}}
.mark.predicted{{border-style:dashed}} .mark.estimated{{background:#fff3d6}}
{rules}</style></head><body>
<input type="radio" name="device" id="dev-all" class="pick" checked>
<input type="radio" name="model" id="model-all" class="pick" checked>{radios}
<h1>fleetfit: scalability analysis and deployment limits</h1>
<nav>Devices: <label for="dev-all">all</label>{labels}</nav>
<nav>Models (table rows): <label for="model-all">all</label>{model_labels}</nav>
<main>
{summary(tables, ids, device_of)}
{fit_section(fits, device_of, model_of)}
<p>{len(devices)} device(s), {len(rows)} measured rows. Solid points are measurements; hollow points with error
bars are predictions of each device's scaling model (the bar: its leave-one-size-out error band); diamonds and
dotted lines are ESTIMATED figures (tokens per joule from a power model where no sensor is readable). In the
tables a <code>~</code> marks a prediction or estimate. Series that draw the same point (two devices with equal
memory, say) are spread {SPREAD} px apart sideways, so each stays visible.</p>
{figures}
<h2>Tables</h2>
{"".join(_html_table(t, device_of, ids, model_of) for t in tables)}
</main>
{SORT_SCRIPT}
</body></html>
"""
    return page, markdown + "\n"


def write(out_dir: pathlib.Path, devices: list[pb.Device], rows: list[pb.LimitRow], tables: list[pb.Table],
          fits: list[pb.FitAnswer] | None = None) -> pathlib.Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    page, markdown = build(devices, rows, tables, fits)
    (out_dir / "tables.md").write_text(markdown)
    index = out_dir / "index.html"
    index.write_text(page)
    return index
