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
    built = [tables.build(name, fleet, {}) for name in tables.SEED_ORDER]
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
    assert page.count("<svg") == 4 and "<script" not in page  # three fleet plots, one serving plot per swept device
    assert_serving_plot(re.findall(r"<svg\b.*?</svg>", page, flags=re.S)[3])
    for name in tables.SEED_ORDER:
        assert f"## {tables.TABLES[name].title}" in markdown
    assert "~" in markdown  # predicted figures are marked


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
    assert len(svgs) == 4 and "<script" not in dom, dom[:500]
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
    assert dom.count("<table>") == len(tables.SEED_ORDER) and "<th>F16 GB</th>" in dom and "<pre>" not in dom
