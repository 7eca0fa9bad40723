"""Device-provided text never reaches a terminal, a markdown table or the HTML report raw: control characters are
escaped, markdown cells escape pipes, line breaks and HTML — through the real coordinator and CLI."""

import re

import pytest

from fleetfit.coordinator.answers import render
from fleetfit.v1 import fleetfit_pb2 as pb
from tests.conftest import Agents, fleet_stub, run_cli

HOSTILE = "\x1b]0;owned\x07\x1b[2J\rpi|<script>alert(1)</script>\nrow\x9b31m\u202eevil\x7f"
RAW = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")  # what must not be printed (tab/LF aside)


@pytest.mark.parametrize("fmt", render.FORMATS)
def test_render_escapes_control_characters_in_every_format(fmt):
    text = render.render(["device", "x"], [[HOSTILE, "ok"]], fmt)
    assert not RAW.search(text)
    assert len(text.splitlines()) == {"table": 2, "md": 3, "csv": 2, "jsonl": 1, "sql": 5}.get(fmt, len(text.splitlines()))
    if fmt == "md":
        row = text.splitlines()[2]
        assert "<script>" not in row and "&lt;script&gt;" in row and "pi\\|" in row and row.count(" | ") == 1


def test_clean_shows_what_it_escaped():
    assert render.clean("a\x1b[31mb\r\n") == "a\\x1b[31mb\\r\\n"
    assert render.clean("ok: tabs\tand ünïcode") == "ok: tabs\\tand ünïcode"


@pytest.fixture()
def hostile_fleet(coordinator, tmp_path):
    agents = Agents(coordinator)
    agents.Register(pb.RegisterRequest(inventory=pb.DeviceInventory(
        device_id="dev-hostile", hostname=HOSTILE, cpu_model=HOSTILE, arch="x86_64", ram_total_bytes=8 << 30,
        gpus=[pb.GpuInfo(name=HOSTILE)])), timeout=5)
    agents.Register(pb.RegisterRequest(inventory=pb.DeviceInventory(
        device_id="dev-good", hostname="pi", ram_total_bytes=8 << 30)), timeout=5)
    result = pb.ProfileResult(result_id="r1", device_id="dev-hostile", model_name="smollm2-135m", quant="Q4_0",
                              request=pb.ProfileRequest(backend="llama.cpp", quant="Q4_0"), model_n_params=134_515_008,
                              failure=pb.FAILURE_KIND_ERROR, error=HOSTILE)
    agents.ReportResult(pb.ReportResultRequest(result=result), timeout=5)
    ok = pb.ProfileResult(result_id="r2", device_id="dev-hostile", model_name="smollm2-135m", quant="Q4_0",
                          request=pb.ProfileRequest(backend="llama.cpp", quant="Q4_0"), model_n_params=134_515_008,
                          decode_tokens_per_s=pb.Stat(mean=50.0, samples=[50.0]), peak_rss_bytes=300 << 20,
                          backend_version=HOSTILE)
    agents.ReportResult(pb.ReportResultRequest(result=ok), timeout=5)
    yield {"FLEETFIT_TOKEN": coordinator.operator_token, "FLEETFIT_INSECURE": "1",
           "FLEETFIT_COORDINATOR": coordinator.address}
    agents.close()


def test_cli_tables_and_report_carry_no_raw_device_text(hostile_fleet, coordinator, tmp_path):
    env = hostile_fleet
    for args in (["devices"], ["devices", "--format", "md"], ["devices", "--format", "csv"],
                 ["limits"], ["limits", "failures", "--format", "md"], ["limits", "all", "--format", "md"],
                 ["fit", "smollm2-135m", "--quant", "Q4_0"]):
        done = run_cli("fleetfit", *args, env=env, timeout=120)
        assert done.returncode == 0, (args, done.stderr)
        assert not RAW.search(done.stdout), (args, done.stdout)
        if "md" in args:
            assert "<script>" not in done.stdout, args
    devices = run_cli("fleetfit", "devices", "--format", "md", env=env, timeout=60).stdout.splitlines()
    assert len(devices) == 4  # header, rule, one line per device: the hostile hostname broke no row
    assert all(line.count(" | ") == devices[0].count(" | ") for line in devices[2:])

    fleet = fleet_stub(coordinator)
    fleet.CreateCampaign(pb.CreateCampaignRequest(selector="", spec=pb.CampaignSpec(
        models=["smollm2-135m"], quants=["Q4_0"], backends=["llama.cpp"],
        template=pb.ProfileRequest(n_prompt=16, n_gen=4, repetitions=1))), timeout=10)
    listed = run_cli("fleetfit", "campaigns", env=env, timeout=60)
    assert listed.returncode == 0 and not RAW.search(listed.stdout)

    report = run_cli("fleetfit", "report", "--out", str(tmp_path / "r"), env=env, timeout=120)
    assert report.returncode == 0, report.stderr
    for name in ("index.html", "tables.md"):
        text = (tmp_path / "r" / name).read_text()
        assert "<script>" not in text and not RAW.search(text), name
    assert "&lt;script&gt;" in (tmp_path / "r" / "tables.md").read_text()


UNSEEN = {"line separator": "\u2028", "paragraph separator": "\u2029", "zero-width space": "\u200b",
          "byte-order mark": "\ufeff", "right-to-left override": "\u202e", "first-strong isolate": "\u2068",
          "arabic letter mark": "\u061c", "soft hyphen": "\u00ad", "tag character": "\U000e0041",
          "private use": "\ue000", "unassigned": "\u0378", "lone surrogate": "\ud800", "next line (C1)": "\x85",
          "hangul filler": "\u3164", "combining grapheme joiner": "\u034f", "variation selector": "\ufe0f",
          "mongolian free variation selector": "\u180b"}


@pytest.mark.parametrize("fmt", ["table", "md", "csv", "sql"])
@pytest.mark.parametrize("name", UNSEEN)
def test_characters_a_person_cannot_see_are_shown_escaped(name, fmt):
    """Every Unicode character that is invisible or moves what is shown (separators, format and bidi characters,
    surrogates, private-use and unassigned code points) reaches a people's or text format as its escape, so a row
    stays one line and two names that differ only by one never look the same."""
    char = UNSEEN[name]
    text = render.render(["device", "x"], [[f"lab{char}gpu", "ok"]], fmt)
    assert char not in text
    assert render.clean(char) in text and render.clean(char).startswith("\\")
    assert len(text.splitlines()) == {"table": 2, "md": 3, "csv": 2, "sql": 5}[fmt]
    assert render.clean("ok: ünïcode, 日本, emoji \U0001f600") == "ok: ünïcode, 日本, emoji \U0001f600"  # seen: kept


@pytest.mark.parametrize("cli", ["fleetfit", "fleetfit-agent"])
def test_a_refusal_that_quotes_outside_text_is_one_escaped_line(cli, tmp_path):
    """Both command lines refuse in one place (cli_common.fail), which escapes what it quotes: a file name, a
    device's or the coordinator's text can neither split the line nor send a control to the terminal."""
    hostile = tmp_path / "model\x1b[2J\u2028next\u202e\u3164.gguf"
    args = ["fit", str(hostile)] if cli == "fleetfit" else ["profile", "--model", str(hostile), "--quant", "Q4_0"]
    done = run_cli(cli, *args, timeout=60)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert len(done.stderr.splitlines()) == 1 and not RAW.search(done.stderr), repr(done.stderr)
    assert "\u2028" not in done.stderr and "\u3164" not in done.stderr
    assert "model\\x1b[2J\\u2028next\\u202e\\u3164.gguf" in done.stderr, done.stderr


def test_the_agents_result_tables_escape_a_files_and_a_workers_text():
    """fleetfit-agent profile's tables quote a model file's name and a worker's error: escaped as every table is."""
    from fleetfit.agent import report

    failed = pb.ProfileResult(model_name=HOSTILE, quant="Q4_0", error=HOSTILE + "\u2028\u3164",
                              request=pb.ProfileRequest(backend="llama.cpp"), failure=pb.FAILURE_KIND_ERROR)
    ran = pb.ProfileResult(model_name=HOSTILE, quant="Q4_0", request=pb.ProfileRequest(backend="llama.cpp"),
                           decode_tokens_per_s=pb.Stat(mean=1.0, samples=[1.0]))
    for text in (report.markdown([failed, ran]), report.serving_markdown([ran]), report.energy_markdown([ran]),
                 report.roofline_markdown([ran])):
        assert not RAW.search(text.replace("\n", "")) and "\u2028" not in text and "\u3164" not in text, repr(text)
    rows = [line for line in report.markdown([failed, ran]).splitlines() if line.startswith("|")]
    assert len(rows) == 2 + 1 + 2 and all(row.endswith("|") for row in rows), rows  # header, the failure, pp, tg
