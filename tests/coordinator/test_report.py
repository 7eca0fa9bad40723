"""`fleetfit report`: the page, rendered by headless Chromium, draws every plot with data."""

import re
import shutil
import subprocess

import pytest

from fleetfit.coordinator.answers import report, tables
from fleetfit.coordinator.answers.limits import limit_rows
from fleetfit.v1 import fleetfit_pb2 as pb
from tests.coordinator.test_scaling import ladder
from tests.coordinator.test_serving import SMOLLM2_Q4_0, sweep

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def three_devices():
    """The measured ladder on three devices: two boards sharing a hostname, one a little slower."""
    results, device = ladder()
    fleet_results, devices = [], []
    for n, (device_id, hostname, speed) in enumerate([(device.device_id, device.hostname, 1.0),
                                                      ("rpi-a1b2c3d4", "rpi", 0.5), ("rpi-e5f6a7b8", "rpi", 0.4)]):
        inventory = pb.DeviceInventory()
        inventory.CopyFrom(device)
        inventory.device_id, inventory.hostname = device_id, hostname
        devices.append(pb.Device(inventory=inventory))
        for r in results:
            copy = pb.ProfileResult()
            copy.CopyFrom(r)
            copy.device_id, copy.result_id = device_id, f"{r.result_id}-{n}"
            copy.decode_tokens_per_s.mean *= speed
            fleet_results.append(copy)
    fleet_results.append(sweep("sweep", device.device_id, SMOLLM2_Q4_0, started=results[-1].started_unix_s + 1))
    return tables.Fleet(fleet_results, devices)


def write_report(tmp_path, fleet=None):
    if fleet is None:
        results, device = ladder()
        results.append(sweep("sweep", device.device_id, SMOLLM2_Q4_0, started=results[-1].started_unix_s + 1))
        fleet = tables.Fleet(results, [pb.Device(inventory=device)])
    results = fleet.results
    built = [tables.build(name, fleet, {}) for name in tables.REPORT_ORDER]
    return report.write(tmp_path / "report", fleet.devices, limit_rows(results, fleet.devices), built)


def assert_serving_plot(svg: str) -> None:
    """Measured counts solid (aggregate and per stream, 4 each), predicted ones hollow with their band."""
    assert len(re.findall(r'<circle class="point measured"', svg)) == 2 * len(SMOLLM2_Q4_0)
    assert len(re.findall(r'<circle class="predicted"[^>]*fill="white"', svg)) == 2 * 3  # 2, 32, 64 streams
    assert len(re.findall(r'<line class="error-bar"', svg)) == 2 * 3
    assert "smollm2-135m Q4_0 aggregate" in svg and "smollm2-135m Q4_0 per stream" in svg


def test_page_holds_the_plots_and_every_table(tmp_path):
    index = write_report(tmp_path)
    page, markdown = index.read_text(), (index.parent / "tables.md").read_text()
    assert page.count("<svg") == 4  # three fleet plots, one serving plot per swept device
    assert page.count("<script") == 1 and report.SORT_SCRIPT in page  # only the sort: the page reads without it
    assert "<script>" not in page  # the bare tag a hostile name would carry (test_output_hygiene) never appears
    assert_serving_plot(re.findall(r"<svg\b.*?</svg>", page, flags=re.S)[3])
    for name in tables.SEED_ORDER:
        assert f"## {tables.TABLES[name].title}" in markdown
    assert "~" in markdown  # predicted figures are marked


def quality(device_id: str, model: str, quant: str, kld: float) -> pb.QualityResult:
    return pb.QualityResult(result_id=f"q-{model}-{quant}", device_id=device_id, model_name=model, quant=quant,
                            reference_quant="F16", context_tokens=512, n_positions=2048, kl_divergence_mean=kld,
                            kl_divergence_stderr=kld / 20, kl_divergence_p99=kld * 10, perplexity=12.0,
                            perplexity_stderr=0.2, same_top_token_fraction=0.9)


def dump_dom(tmp_path, index) -> str:
    return subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                           "--disable-background-networking", "--disable-component-update", "--disable-sync",
                           f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom", index.as_uri()],
                          capture_output=True, text=True, timeout=120, check=True).stdout


def test_speed_against_kld_per_precision(tmp_path):
    results, device = ladder()
    marks = [("tinyllama-1.1b", "Q8_0", 0.002), ("tinyllama-1.1b", "Q4_0", 0.05), ("distilgpt2", "Q4_0", 0.08),
             ("distilgpt2", "Q5_K_M", 0.01)]  # the last never had its speed measured: no point
    fleet = tables.Fleet(results, [pb.Device(inventory=device)], [quality(device.device_id, *m) for m in marks])
    index = write_report(tmp_path, fleet)
    page = index.read_text()
    if CHROMIUM is not None:  # what a browser draws, not only what was written
        page = dump_dom(tmp_path, index)
    (svg,) = [s for s in re.findall(r"<svg\b.*?</svg>", page, flags=re.S) if "KL divergence" in s]
    decode = {(r.model_name, r.quant): r.decode_tokens_per_s.mean for r in results}
    points = re.findall(r'<circle class="point measured"[^>]*><title>vm (\S+) (\S+): ([^,]+), (\S+) \(measured\)', svg)
    assert sorted(points) == sorted((m, q, report._num(k), report._num(decode[m, q])) for m, q, k in marks[:3])
    xs = {(m, q): float(re.search(rf'cx="([0-9.]+)"[^>]*><title>vm {m} {q}:', svg)[1]) for m, q, _ in marks[:3]}
    assert xs["tinyllama-1.1b", "Q8_0"] < xs["tinyllama-1.1b", "Q4_0"] < xs["distilgpt2", "Q4_0"]  # KLD rightwards
    assert "mean KL divergence from F16" in svg and "Q5_K_M" not in svg


def test_scatter_without_data_says_so():
    assert "no data yet" in report.scatter_svg("empty", {}, "x", "y")


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (Debian: apt-get install -y chromium)")
def test_chromium_draws_a_series_per_device_with_measured_predicted_and_estimated_marks(tmp_path):
    fleet = three_devices()
    index = write_report(tmp_path, fleet)
    dom = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                          "--disable-background-networking", "--disable-component-update", "--disable-sync",
                          f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom", index.as_uri()],
                         capture_output=True, text=True, timeout=120, check=True).stdout
    svgs = re.findall(r"<svg\b.*?</svg>", dom, flags=re.S)
    assert len(svgs) == 4 and dom.count("<script") == 1, dom[:500]
    decode, memory, energy, streams = svgs
    assert_serving_plot(streams)
    for device in range(3):  # two boards named rpi never merge: a series of each device, told apart by short id
        for svg in (decode, memory, energy):
            assert f'<g class="series" data-device="{device}"' in svg
        groups = re.findall(rf'<g class="series" data-device="{device}".*?</g>', decode, flags=re.S)
        assert len(groups) == 3 and all('<circle class="point measured"' in g and "<polyline" in g for g in groups)
        assert f'<line class="capacity" data-device="{device}"' in memory  # its RAM line
    for label in ("rpi (a1b2c3d4) llama.cpp Q4_0", "rpi (e5f6a7b8) llama.cpp Q4_0"):
        assert label in dom
    for svg in (decode, memory):  # predictions: hollow, with their error bars
        assert svg.count('class="predicted"') >= 3 and svg.count('class="error-bar"') == svg.count('class="predicted"')
        assert 'fill="white"' in svg.split('class="predicted"')[1][:200]
    assert 'class="point estimated"' in energy and "(ESTIMATED)" in dom  # estimated power is marked as such
    assert dom.count('<ul class="legend">') == 4 and "<text x" not in "".join(re.findall(r"<g class=.*?</g>", decode))
    assert all(f'id="dev-{i}"' in dom for i in range(3)) and '#dev-2:checked ~ main [data-device]' in dom
    assert dom.count("<table>") == len(tables.REPORT_ORDER) - 1 and "<th>F16 GB</th>" in dom and "<pre>" not in dom


def test_a_band_of_a_hundred_percent_or_more_has_no_lower_bound():
    """A ±116 % band would put the bar's foot at a negative speed: on a log axis it runs to the plot's bottom and
    its title says "up to", where a clamp would have drawn it down to a thousandth of the value."""
    wide = report.Series("dev gguf Q4_0", 0, measured=[(1e8, 50.0), (1e9, 10.0)],
                         predicted=[(7e9, 2.0, 2.0 * (1 - 1.16), 2.0 * 2.16), (3e9, 5.0, 4.0, 6.0)])
    svg = report.scatter_svg("decode", {"dev": wide}, "parameters", "tokens/s")
    bars = re.findall(r'<line class="error-bar" x1="[\d.]+" x2="[\d.]+" y1="([\d.]+)" y2="([\d.]+)"', svg)
    assert len(bars) == 2 and float(bars[0][0]) == report.H - report.PAD_B > float(bars[1][0])
    assert "~2 (predicted, up to 4.32)" in svg and "~5 (predicted, 4 to 6)" in svg
    assert not re.search(r">0\.00\d", svg)  # no axis tick down at a thousandth


def summary_rows(page: str) -> list[list[str]]:
    """The summary's body rows as cell texts, marks included ("0.518 measured")."""
    (found,) = re.findall(r'<table class="summary">.*?</table>', page, flags=re.S)
    return [[re.sub(r"<[^>]+>", "", c) for c in re.findall(r"<td[^>]*>(.*?)</td>", row)]
            for row in re.findall(r"<tr data-device[^>]*>(.*?)</tr>", found)]


def test_summary_answers_first_from_the_tables_with_provenance(tmp_path):
    """Per device and precision: largest that fits, decode at the reference size, streams, J/token, each figure
    as the tables show it (read, never recomputed) with its mark; above every plot."""
    fleet = three_devices()
    built = {name: tables.build(name, fleet, {}) for name in tables.REPORT_ORDER}
    page = write_report(tmp_path, fleet).read_text()
    assert page.index("<h2>Summary</h2>") < page.index("<svg")
    rows = summary_rows(page)
    assert len(rows) == len(built["capacity"].rows) == 9  # three devices x three precisions
    speed = built["speed"]
    col = {c: i for i, c in enumerate(speed.columns)}
    for row in rows:
        device, backend, precision, largest, catalogue, decode, streams, joules, device_id = row
        assert device_id in {d.inventory.device_id for d in fleet.devices}  # as every table, the id last
        (cells,) = [[tables.typed_cell(c) for c in r.cells] for r in speed.rows
                    if report.display(tables.typed_cell(r.cells[col["device"]])) == device
                    and r.cells[col["model"]].string_value == "llama-2-7b"]
        assert decode == f"{report.display(cells[col[f'{precision} tok/s']])} measured"
        assert largest.endswith(" measured") and catalogue.startswith("~") and catalogue.endswith("~predicted")
        assert re.fullmatch(r"~\d+ × \S+ (estimated|~predicted)", streams), streams
        assert joules.endswith("(llama-2-7b) estimated")  # the power model: ESTIMATED, never shown as measured
    assert "<th>decode tok/s at llama-2-7b</th>" in page and "<th>streams at ≥8 tok/s (model)</th>" in page


def test_summary_reference_follows_the_tables_option(tmp_path):
    fleet = three_devices()
    built = [tables.build(name, fleet, {"reference": "tinyllama-1.1b"}) for name in tables.REPORT_ORDER]
    page = report.write(tmp_path, fleet.devices, limit_rows(fleet.results, fleet.devices), built).read_text()
    assert "<th>decode tok/s at tinyllama-1.1b</th>" in page
    assert all(r[7].endswith("(tinyllama-1.1b) estimated") for r in summary_rows(page))


def test_no_results_no_summary_table_and_empty_tables_named_in_one_line(tmp_path):
    index = write_report(tmp_path, tables.Fleet([], []))
    page, markdown = index.read_text(), (index.parent / "tables.md").read_text()
    assert '<p class="empty">Summary: no device has measured results yet.</p>' in page
    assert "<table" not in page and "|" not in markdown
    for name in tables.REPORT_ORDER:
        title = tables.TABLES[name].title
        assert f'<p class="empty">{report._escape(title)}: no rows yet.</p>' in page and f"{title}: no rows yet." in markdown


def test_predictions_drawn_only_within_the_declared_range_with_their_bands(tmp_path):
    """Measured up to 1.1B: llama-2-7b (6.7B, within 8x) is predicted on the plots, 13B and 69B are not (the
    tables still hold them); the caption declares the range."""
    results, device = ladder()
    small = [r for r in results if r.model_n_params < 2e9]
    index = write_report(tmp_path, tables.Fleet(small, [pb.Device(inventory=device)]))
    page, markdown = index.read_text(), (index.parent / "tables.md").read_text()
    decode, memory = re.findall(r"<svg\b.*?</svg>", page, flags=re.S)[:2]
    for svg in (decode, memory):
        assert f"predictions up to {report.PREDICTION_RANGE:g}x the largest size measured" in svg
        xs = re.findall(r'<circle class="predicted"[^>]*><title>[^:]*: ([^,]+),', svg)
        assert sorted(set(xs)) == [report._num(6738415616)], xs  # llama-2-7b
        assert svg.count('class="error-bar"') == svg.count('class="predicted"') == 3  # one per precision, banded
    assert "llama-2-70b" in markdown and "llama-2-13b" in markdown


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (Debian: apt-get install -y chromium)")
def test_series_that_draw_the_same_point_stay_visible(tmp_path):
    """Three devices with equal memory per model: the browser draws each device's point, spread sideways, where
    they would have covered each other; a point only one series draws stays at its place."""
    dom = dump_dom(tmp_path, write_report(tmp_path, three_devices()))
    memory = re.findall(r"<svg\b.*?</svg>", dom, flags=re.S)[1]
    points: dict[str, list[tuple[float, float]]] = {}
    for cx, cy, label, where in re.findall(r'<circle class="point measured" cx="([\d.]+)" cy="([\d.]+)"[^>]*>'
                                           r'<title>(.*?): (\S+, \S+) \(measured\)', memory):
        points.setdefault(f"{label.split(' llama.cpp ')[1].split(' ')[0]} {where}", []).append((float(cx), float(cy)))
    assert len(points) == 11 and all(len(p) == 3 for p in points.values())  # 3 devices each
    assert not any(k.startswith("F16 13") for k in points)  # 4 sizes x 3 precisions, less 13B F16 (out of memory)
    for drawn in points.values():
        xs = sorted(x for x, _ in drawn)
        assert len({y for _, y in drawn}) == 1 and all(b - a >= report.SPREAD - 0.1 for a, b in zip(xs, xs[1:]))
    single = report.scatter_svg("one", {"a": report.Series("a", 0, measured=[(1e8, 2.0), (1e9, 1.0)])}, "x", "y")
    assert f'cx="{report.PAD_L:.1f}"' in single  # alone: no offset


def test_fit_section_holds_fits_answers_for_the_models_named(tmp_path):
    """--models: the Fit RPC's answers (fit.respond, what the servicer calls) for each named model, at the precision
    named or each one the fleet measured, in fit's cells, one row per device and precision."""
    from fleetfit.coordinator.answers import fit
    from fleetfit.coordinator.answers.fit import fit_table
    from fleetfit.coordinator.service.store import Store

    fleet = three_devices()
    with Store(tmp_path / "fleet.sqlite3") as store:
        for d in fleet.devices:
            store.upsert_device(d.inventory)
        for r in fleet.results:
            store.add_result(r)
        built = tables.build_many(list(tables.REPORT_ORDER), store, {})
        devices = store.devices()
        capacity = next(t for t in built if t.name == "capacity")
        named = report.named_models(["qwen3-8b, llama-2-13b:Q4_0"])
        requests = report.fit_requests(named, capacity, devices)
        assert [(q.model_name, q.quant) for q in requests] == [("qwen3-8b", "F16"), ("qwen3-8b", "Q8_0"),
                                                               ("qwen3-8b", "Q4_0"), ("llama-2-13b", "Q4_0")]
        answers = [a for q in requests for a in fit.respond(q, store, fit.AnswerCache(store)).answers]
    page = report.write(tmp_path / "out", devices, limit_rows(fleet.results, devices), built, answers).read_text()
    assert page.index("<h2>Summary</h2>") < page.index("<h2>Fit: the models named</h2>") < page.index("<svg")
    (section,) = re.findall(r'<table class="fit">.*?</table>', page, flags=re.S)
    header, body = fit_table(answers)
    drawn = [[re.sub(r"<[^>]+>", "", c) for c in re.findall(r"<td[^>]*>(.*?)</td>", row)]
             for row in re.findall(r"<tr data-device[^>]*>(.*?)</tr>", section)]
    assert len(drawn) == len(answers) == 4 * 3
    shown = [header.index(c) for c in report.FIT_COLUMNS if c in header]
    assert drawn == [[("why" if header[i] == "reason" else "") + report._escape(report.display(cells[i]))
                      for i in shown] for cells in body]  # the reason behind a <details> that opens without script
    assert all(r[7].startswith("~") for r in drawn if r[1] == "qwen3-8b")  # never measured: predicted
    assert all(not r[7].startswith("~") for r in drawn if r[1] == "llama-2-13b")  # measured on each device


def test_models_named_wrong_is_a_one_line_error():
    with pytest.raises(ValueError, match=r"unknown model 'lama-2-7b' \(did you mean llama-2-7b\?\)"):
        report.named_models(["qwen3-8b,lama-2-7b"])
    with pytest.raises(ValueError, match="at most 16 models"):
        report.named_models([",".join(list(report.CATALOGUE)[:17])])
    assert report.fit_requests([("qwen3-8b", None)], None, []) == []  # no measured precision: nothing to ask


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (Debian: apt-get install -y chromium)")
def test_a_heading_click_sorts_its_table_by_value_and_again_the_other_way(tmp_path):
    """Chromium runs the page's sort: the speed table by Q4_0 tok/s (numbers, not text: 61.2 after 6.75), up then
    down, n/a last; the page without the script keeps the table's own order."""
    index = write_report(tmp_path, three_devices())
    page = index.read_text()
    plain = re.search(r"<h3>Inference speed.*?</table>", page, flags=re.S).group()
    heading = re.findall(r"<th>(.*?)</th>", plain).index("Q4_0 tok/s") + 1

    def q4_after(clicks: int) -> list[float | None]:
        target = tmp_path / f"sorted-{clicks}.html"
        speed_first = page.replace("<h3>Inference speed", '<h3 id="s">Inference speed')
        script = "".join(f'document.querySelector("#s + div th:nth-child({heading})").click();' for _ in range(clicks))
        target.write_text(speed_first.replace("</body>", f"<script>{script}</script></body>"))
        dom = dump_dom(tmp_path, target)
        table = re.search(r'<h3 id="s">Inference speed.*?</table>', dom, flags=re.S).group()
        return [float(v) if v else None for v in
                re.findall(rf'<tr[^>]*>(?:<td[^>]*>.*?</td>){{{heading - 1}}}<td(?: data-v="([^"]+)")?', table)]

    unsorted, up, down = q4_after(0), q4_after(1), q4_after(2)
    numbers = sorted(v for v in unsorted if v is not None)
    assert len(numbers) >= 12 and unsorted != up
    assert up == numbers + [None] * (len(unsorted) - len(numbers))
    assert down == numbers[::-1] + [None] * (len(unsorted) - len(numbers))


def test_every_row_of_a_model_table_is_in_its_models_view(tmp_path):
    """The model filter (radio buttons and CSS, no script): each row of a table with a model column carries its
    model's index, the models listed by size, and a rule hides the other models' rows."""
    page = write_report(tmp_path, three_devices()).read_text()
    models = re.findall(r'<label for="model-(\d+)">(.*?)</label>', page)
    assert [m for _, m in models][:2] == ["distilgpt2", "smollm2-135m"] and len(models) >= 5
    speed = re.search(r"<h3>Inference speed.*?</table>", page, flags=re.S).group()
    for tag, model in re.findall(r'<tr data-device="\d+" data-model="(\d+)"><td[^>]*>[^<]*</td><td[^>]*>[^<]*</td>'
                                 r'<td[^>]*>([^<]*)</td>', speed):
        assert models[int(tag)][1] == model
    assert speed.count("<tr data-device") == 15 and speed.count("data-model=") == 15
    assert f'#model-{models[-1][0]}:checked ~ main tr[data-model]:not([data-model="{models[-1][0]}"]){{display:none}}' in page
    assert '<table class="summary">' in page and 'data-model' not in re.search(r'<table class="summary">.*?</table>',
                                                                              page, flags=re.S).group()


def test_report_models_answers_as_fit_does_over_the_wire(ladder_fleet, coordinator, tmp_path):
    """`fleetfit report --models` against a running coordinator: its fit section holds what `fleetfit fit` prints
    for the same question (one Fit RPC, the same answers); a misspelt model is a one-line error, nothing written."""
    import json

    from tests.conftest import assert_one_line_error, run_cli

    _, env = ladder_fleet
    done = run_cli("fleetfit", "report", "--out", str(tmp_path / "r"), "--models", "qwen3-8b:Q4_0", env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    page = (tmp_path / "r" / "index.html").read_text()
    (section,) = re.findall(r'<table class="fit">.*?</table>', page, flags=re.S)
    heads = re.findall(r"<th>(.*?)</th>", section)
    (row,) = [[re.sub(r"<[^>]+>", "", c) for c in re.findall(r"<td[^>]*>(.*?)</td>", r)]
              for r in re.findall(r"<tr data-device[^>]*>(.*?)</tr>", section)]
    shown = dict(zip(heads, row))
    fit = run_cli("fleetfit", "fit", "qwen3-8b", "--quant", "Q4_0", "-o", "json", env=env, timeout=120)
    assert fit.returncode == 0, fit.stderr
    (answer,) = json.loads(fit.stdout)
    assert (shown["device"], shown["model"], shown["verdict"]) == (answer["device"], "qwen3-8b", answer["verdict"])
    for column, field in (("decode tok/s", "decode_tok_s"), ("J/token", "j_token"), ("memory MiB", "memory_mib")):
        assert float(shown[column].lstrip("~").split(" ")[0]) == pytest.approx(answer[field], rel=1e-3), column
        assert shown[column].startswith("~") == (answer[f"{field}_provenance"] != "measured"), column

    bad = run_cli("fleetfit", "report", "--out", str(tmp_path / "bad"), "--models", "qwen3-8c", env=env, timeout=60)
    assert_one_line_error(bad, "unknown model 'qwen3-8c' (did you mean qwen3-8b?)")
    assert bad.returncode == 2 and not (tmp_path / "bad").exists()
