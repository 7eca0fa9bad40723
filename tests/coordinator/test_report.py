"""`fleetfit report`: the page, rendered by headless Chromium, draws every plot with data."""

import re
import shutil
import subprocess

import pytest

from fleetfit.coordinator import report, tables
from fleetfit.coordinator.limits import limit_rows
from fleetfit.v1 import fleetfit_pb2 as pb
from tests.coordinator.test_scaling import ladder
from tests.coordinator.test_serving import SMOLLM2_Q4_0, sweep

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def write_report(tmp_path):
    results, device = ladder()
    results.append(sweep("sweep", device.device_id, SMOLLM2_Q4_0, started=results[-1].started_unix_s + 1))
    fleet = tables.Fleet(results, [pb.Device(inventory=device)])
    built = [tables.build(name, fleet, {}) for name in tables.SEED_ORDER]
    return report.write(tmp_path / "report", fleet.devices, limit_rows(results, fleet.devices), built)


def assert_serving_plot(svg: str) -> None:
    """Measured counts solid (aggregate and per stream, 4 each), predicted ones hollow with their band."""
    assert len(re.findall(r'<circle class="point"', svg)) == 2 * len(SMOLLM2_Q4_0)
    assert len(re.findall(r'<circle class="predicted"[^>]*fill="white"', svg)) == 2 * 3  # 2, 32, 64 streams
    assert len(re.findall(r'<line class="band"', svg)) == 2 * 3
    assert "smollm2-135m Q4_0 aggregate" in svg and "smollm2-135m Q4_0 per stream" in svg


def test_page_holds_the_plots_and_every_table(tmp_path):
    index = write_report(tmp_path)
    page, markdown = index.read_text(), (index.parent / "tables.md").read_text()
    assert page.count("<svg") == 4 and "<script" not in page  # three fleet plots, one serving plot per swept device
    for name in tables.SEED_ORDER:
        assert f"## {tables.TABLES[name].title}" in markdown
    assert "~" in markdown  # predicted figures are marked
    assert_serving_plot(re.findall(r"<svg\b.*?</svg>", page, flags=re.S)[3])


def test_scatter_without_data_says_so():
    assert "no data yet" in report.scatter_svg("empty", {}, "x", "y")


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (Debian: apt-get install -y chromium)")
def test_chromium_draws_every_plot_with_data(tmp_path):
    index = write_report(tmp_path)
    dom = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                          "--disable-background-networking", "--disable-component-update", "--disable-sync",
                          f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom", index.as_uri()],
                         capture_output=True, text=True, timeout=120, check=True).stdout
    svgs = re.findall(r"<svg\b.*?</svg>", dom, flags=re.S)
    assert len(svgs) == 4, dom[:500]
    for svg in svgs:
        assert len(re.findall(r'<circle class="point"', svg)) >= 3  # data points, not only axes
        assert "<polyline" in svg
    assert len(re.findall(r'class="capacity"', svgs[1])) >= 1  # the device's RAM line on the memory plot
    assert_serving_plot(svgs[3])
    assert 'class="predicted" points=' in svgs[3]  # the dashed line through the predicted points
