"""`fleetfit report --out DIR`: one static HTML page with plots (inline SVG, no JavaScript) and the tables.

Plots: decode tokens/s against parameters per device and precision (log-log), peak memory against parameters
with each device's RAM as a line, tokens per joule against parameters, and per device with concurrency sweeps,
aggregate and per-stream decode tokens/s against concurrent streams (measured points solid, predicted ones hollow
with their leave-one-out band). Other points are measured runs; the tables below carry the predicted (~) figures.
DIR/tables.md holds the tables as markdown.
"""

import html
import math
import pathlib
import re

from fleetfit.coordinator.devices import display_names
from fleetfit.coordinator.render import clean
from fleetfit.coordinator.limits import comparable
from fleetfit.coordinator.tables import render_table
from fleetfit.models.backends import DEFAULT_BACKEND
from fleetfit.v1 import fleetfit_pb2 as pb

W, H, PAD_L, PAD_R, PAD_T, PAD_B = 640, 380, 70, 170, 20, 50
COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf", "#7f7f7f")


def _escape(text: str) -> str:
    """Text for the page: control characters escaped (render.clean), then HTML-escaped."""
    return html.escape(clean(text))


def _ticks(lo: float, hi: float, log: bool) -> list[float]:
    if log:
        return [10.0 ** e for e in range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1)]
    step = 10 ** math.floor(math.log10((hi - lo) or 1))
    return [step * i for i in range(math.floor(lo / step), math.ceil(hi / step) + 1)]


def scatter_svg(title: str, series: dict[str, list[tuple[float, float]]], x_label: str, y_label: str,
                log_y: bool = True, lines: dict[str, float] | None = None,
                predicted: dict[str, list[tuple[float, float, float | None, float | None]]] | None = None) -> str:
    """A scatter plot with one polyline per series (log x; log or linear y) and optional horizontal lines.
    `predicted` adds, per series, hollow points (x, y, band low, band high) with their band as a vertical bar,
    joined to the series' measured points by a dashed line; measured points are solid."""
    # Only finite, positive figures are drawn (log axes): a run stored with a zero or broken figure is left out.
    def drawable(*values: float) -> bool:
        return all(math.isfinite(v) and v > 0 for v in values)

    lines = {name: y for name, y in (lines or {}).items() if drawable(y)}
    series = {name: kept for name, pts in series.items() if (kept := [(x, y) for x, y in pts if drawable(x, y)])}
    predicted = {name: kept for name, pts in (predicted or {}).items()
                 if (kept := [(x, y, lo if lo is not None and drawable(lo) else None,
                               hi if hi is not None and drawable(hi) else None)
                              for x, y, lo, hi in pts if drawable(x, y)])}
    names = sorted(set(series) | set(predicted))
    xs = [x for pts in series.values() for x, _ in pts] + [p[0] for pts in predicted.values() for p in pts]
    ys = [y for pts in series.values() for _, y in pts] + list(lines.values()) + \
        [v for pts in predicted.values() for p in pts for v in p[1:] if v is not None]
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
    for i, (name, y) in enumerate(lines.items()):
        colour = COLOURS[i % len(COLOURS)]
        out.append(f'<line class="capacity" x1="{PAD_L}" x2="{W - PAD_R}" y1="{py(y):.1f}" y2="{py(y):.1f}" '
                   f'stroke="{colour}" stroke-dasharray="6 4"/><text x="{W - PAD_R + 4}" y="{py(y) + 4:.1f}" '
                   f'font-size="10" fill="{colour}">{_escape(name)} RAM</text>')
    for i, name in enumerate(names):
        colour, pts, guesses = COLOURS[i % len(COLOURS)], sorted(series.get(name, [])), sorted(predicted.get(name, []))
        if len(pts) > 1:
            path = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in pts)
            out.append(f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="1.5"/>')
        if guesses:
            path = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in sorted(pts + [g[:2] for g in guesses]))
            out.append(f'<polyline class="predicted" points="{path}" fill="none" stroke="{colour}" '
                       f'stroke-width="1" stroke-dasharray="4 3"/>')
        out += [f'<circle class="point" cx="{px(x):.1f}" cy="{py(y):.1f}" r="4" fill="{colour}">'
                f'<title>{_escape(name)}: {_num(x)}, {_num(y)}</title></circle>' for x, y in pts]
        for x, y, lo, hi in guesses:
            if lo is not None and hi is not None:
                out.append(f'<line class="band" x1="{px(x):.1f}" x2="{px(x):.1f}" y1="{py(lo):.1f}" '
                           f'y2="{py(hi):.1f}" stroke="{colour}" stroke-width="1.5"/>')
            band = f" ({_num(lo)}–{_num(hi)})" if lo is not None and hi is not None else ""
            out.append(f'<circle class="predicted" cx="{px(x):.1f}" cy="{py(y):.1f}" r="4" fill="white" '
                       f'stroke="{colour}" stroke-width="1.5"><title>{_escape(name)} (predicted): {_num(x)}, '
                       f'{_num(y)}{band}</title></circle>')
        ly = PAD_T + 14 * (i + len(lines)) + 10
        out.append(f'<circle cx="{W - PAD_R + 10}" cy="{ly - 4}" r="4" fill="{colour}"/>'
                   f'<text x="{W - PAD_R + 18}" y="{ly}" font-size="11">{_escape(name)}</text>')
    return "\n".join(out + ["</svg>"])


def _num(v: float) -> str:
    for unit, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(v) >= scale:
            return f"{v / scale:g}{unit}"
    return f"{v:.3g}"


def plots(devices: list[pb.Device], rows: list[pb.LimitRow], power: pb.Table | None) -> list[str]:
    names = display_names(devices)
    ok = [r for r in comparable([r for r in rows if not r.failure]) if r.HasField("model_n_params")]
    decode, memory = {}, {}
    for r in ok:  # one series per device (by id), backend and precision
        key = f"{names.get(r.device_id, r.device_id)} {r.backend} {r.quant}"
        decode.setdefault(key, []).append((r.model_n_params, r.decode_tokens_per_s.mean))
        if r.HasField("memory_bytes"):
            memory.setdefault(key, []).append((r.model_n_params, r.memory_bytes / 1e9))
    params = {(names.get(r.device_id, r.device_id), r.backend, r.model_name, r.quant): r.model_n_params for r in ok}
    energy = {}
    if power is not None:
        col = {c: i for i, c in enumerate(power.columns)}
        for row in power.rows:
            cells = [c.WhichOneof("kind") and getattr(c, c.WhichOneof("kind")) for c in row.cells]
            key = (cells[col["device"]], cells[col["backend"]], cells[col["model"]], cells[col["quant"]])
            tpj = cells[col["tokens/J"]]
            if key in params and isinstance(tpj, float) and tpj > 0:
                energy.setdefault(f"{key[0]} {key[1]} {key[3]}", []).append((params[key], tpj))
    ram = {names.get(d.inventory.device_id, d.inventory.device_id): d.inventory.ram_total_bytes / 1e9
           for d in devices if d.inventory.ram_total_bytes and any(r.device_id == d.inventory.device_id for r in ok)}
    return [
        scatter_svg("Decode tokens/s against parameters (log-log)", decode, "parameters", "decode tokens/s"),
        scatter_svg("Peak memory against parameters, with each device's RAM", memory, "parameters",
                    "peak memory GB", lines=ram),
        scatter_svg("Tokens per joule against parameters (decode)", energy, "parameters", "tokens per joule"),
    ]


def serving_plots(curves: pb.Table | None) -> list[str]:
    """Per device: aggregate and per-stream decode tok/s against concurrent streams, from the serving-curves table;
    measured points solid, predicted ones hollow with their band."""
    if curves is None:
        return []
    col = {c: i for i, c in enumerate(curves.columns)}
    per_device: dict[str, tuple[dict, dict]] = {}
    for row in curves.rows:
        cells = [c.WhichOneof("kind") and getattr(c, c.WhichOneof("kind")) for c in row.cells]
        value = lambda name: cells[col[name]] if isinstance(cells[col[name]], float) else None
        streams, aggregate, per_stream = value("streams"), value("aggregate tok/s"), value("per-stream tok/s")
        if streams is None or aggregate is None or per_stream is None:
            continue
        measured, guessed = per_device.setdefault(cells[col["device"]], ({}, {}))
        backend = cells[col["backend"]]
        key = f"{cells[col['model']]} {cells[col['precision']]}" + ("" if backend == DEFAULT_BACKEND else f" {backend}")
        if cells[col["provenance"]] == "measured":
            measured.setdefault(f"{key} aggregate", []).append((streams, aggregate))
            measured.setdefault(f"{key} per stream", []).append((streams, per_stream))
        else:
            low, high = value("aggregate low"), value("aggregate high")
            guessed.setdefault(f"{key} aggregate", []).append((streams, aggregate, low, high))
            guessed.setdefault(f"{key} per stream", []).append(
                (streams, per_stream, low / streams if low else None, high / streams if high else None))
    return [scatter_svg(f"{device}: decode tokens/s against concurrent streams (solid: measured, hollow: "
                        "predicted with its band)", measured, "concurrent streams", "decode tokens/s",
                        predicted=guessed) for device, (measured, guessed) in sorted(per_device.items())]


def build(devices: list[pb.Device], rows: list[pb.LimitRow], tables: list[pb.Table]) -> tuple[str, str]:
    """(index.html, tables.md) for the fleet."""
    markdown = "\n\n".join(f"## {t.title}\n\n{render_table(t, 'md')}" for t in tables)
    power = next((t for t in tables if t.name == "power"), None)
    curves = next((t for t in tables if t.name == "serving-curves"), None)
    svgs = plots(devices, rows, power) + serving_plots(curves)
    figures = "\n".join(f"<figure><figcaption>{re.search(r'<title>(.*?)</title>', svg).group(1)}"
                         f"</figcaption>{svg}</figure>" if "<svg" in svg else svg for svg in svgs)
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>fleetfit report</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto}} figure{{margin:1em 0}} figcaption{{font-weight:bold}}
pre{{background:#f6f6f6;padding:1em;overflow-x:auto;font-size:12px}}</style></head><body>
<h1>fleetfit: scalability analysis and deployment limits</h1>
<p>{len(devices)} device(s), {len(rows)} measured rows. Plotted points are measurements, except the hollow
points of the serving plots (predictions from the device's sweeps, with their band); in the tables a
<code>~</code> marks a prediction of the device's scaling model (or an estimate, where nothing was measured).</p>
{figures}
<h2>Tables</h2>
<pre>{html.escape(markdown)}</pre>
</body></html>
"""
    return page, markdown + "\n"


def write(out_dir: pathlib.Path, devices: list[pb.Device], rows: list[pb.LimitRow], tables: list[pb.Table]) -> pathlib.Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    page, markdown = build(devices, rows, tables)
    (out_dir / "tables.md").write_text(markdown)
    index = out_dir / "index.html"
    index.write_text(page)
    return index
