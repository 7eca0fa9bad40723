"""A tool people enjoy (issue 32): terminal tables that fit 120 columns while the machine formats keep every field,
typed; one command-line grammar; one-line errors that list what exists; campaign status that says when nothing can
progress. On a real coordinator (gRPC, SQLite) holding real stored results (tests/fixtures/ladder and
coverage-ladder), a measured concurrency sweep and a device that went silent, through the installed CLIs."""

import csv
import io
import json
import pathlib
import subprocess
import time

import pytest

from fleetfit.coordinator import quickstart
from fleetfit.coordinator.harness import BackgroundCoordinator
from fleetfit.coordinator.service.store import Store
from fleetfit.v1 import fleetfit_pb2 as pb
from fleetfit.v1.words import parse_dict
from tests.conftest import BIN, assert_one_line_error, fleet_stub, run_cli
from tests.coordinator.test_serving import FAST_SWEEP, sweep

FIXTURES = pathlib.Path(__file__).resolve().parents[1] / "fixtures"
WIDTH = 120
SILENT = "ghost-0badc0de"  # registered long ago, never heard from since: lost


def _measured(directory: str, device_id: str) -> tuple[pb.DeviceInventory, list[pb.ProfileResult]]:
    inventory = parse_dict(json.loads(next((FIXTURES / directory).glob("device-*.json")).read_text()),
                           pb.Device()).inventory
    inventory.device_id, inventory.hostname = device_id, f"host-{device_id}"
    results = []
    for n, path in enumerate(sorted((FIXTURES / directory).glob("result-*.json"))):
        r = parse_dict(json.loads(path.read_text()), pb.ProfileResult())
        r.device_id, r.result_id = device_id, f"{device_id}-{n:03d}"
        results.append(r)
    return inventory, results


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    """A plaintext coordinator on loopback over a database of two measured devices, one swept and one lost."""
    path = tmp_path_factory.mktemp("ux") / "fleet.sqlite3"
    with Store(path) as store:
        for directory, device_id in (("ladder", "lab-vm-0035969e"), ("coverage-ladder", "edge-vm-11aa22bb")):
            inventory, results = _measured(directory, device_id)
            store.upsert_device(inventory)
            for r in sorted(results, key=lambda r: r.started_unix_s):
                store.add_result(r)
        store.upsert_device(pb.DeviceInventory(device_id="edge-1a2b3c4d", hostname="edge", ram_total_bytes=8 << 30))
        store.add_result(sweep("fast", "edge-1a2b3c4d", FAST_SWEEP))
        ghost = _measured("ladder", SILENT)[0]
        ghost.backends.add(name="llama.cpp", available=True, version="0.3.36")  # its jobs are queued
        store.upsert_device(ghost)
        with store.db.transaction() as execute:
            execute("UPDATE devices SET last_seen = ? WHERE device_id = ?", (time.time() - 3600, SILENT))
    coordinator = BackgroundCoordinator(path)
    coordinator.start()
    yield coordinator
    coordinator.stop()


def cli(coordinator, *args: str, columns: int = WIDTH) -> subprocess.CompletedProcess:
    return run_cli("fleetfit", *args, "--coordinator", coordinator.address, timeout=120,
                   env={"FLEETFIT_TOKEN": coordinator.operator_token, "FLEETFIT_INSECURE": "1",
                        "COLUMNS": str(columns)})


PEOPLE = [["limits"], ["limits", "serving"], ["limits", "memory"], ["limits", "capacity"], ["limits", "deployment"],
          ["limits", "recommendations"], ["fit", "smollm2-135m", "--quant", "Q4_0"],
          ["fit", "smollm2-135m", "--quant", "Q4_0", "--streams", "4"], ["fit", "--device", "lab-vm-0035969e"],
          ["devices"], ["limits", "all", "-o", "table"]]


@pytest.mark.parametrize("args", PEOPLE, ids=" ".join)
def test_people_tables_fit_120_columns(fleet, args):
    done = cli(fleet, *args)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) > 2 and max(map(len, lines)) <= WIDTH, max(lines, key=len)
    wide = cli(fleet, *args, "--wide")
    assert wide.returncode == 0, wide.stderr
    assert len(wide.stdout) >= len(done.stdout)  # --wide leaves nothing out


def test_wide_shows_what_the_terminal_table_leaves_out(fleet):
    """Ids and evidence only behind --wide: the 120-column table names what it left out."""
    plain, wide = cli(fleet, "limits").stdout, cli(fleet, "limits", "--wide").stdout
    assert "lab-vm-0035969e-000" not in plain and "lab-vm-0035969e-000" in wide  # a result id
    assert max(map(len, wide.splitlines())) > WIDTH  # everything, whatever the terminal
    answers = cli(fleet, "fit", "smollm2-135m", "--quant", "Q4_0", "--wide").stdout
    assert "reason" in answers.splitlines()[0] and "evidence" in answers.splitlines()[0]


def test_machine_formats_keep_every_field_typed(fleet):
    rows = list(csv.DictReader(io.StringIO(cli(fleet, "limits", "-o", "csv").stdout)))
    assert rows and all(r["device_id"] and r["result"] for r in rows)
    speed = json.loads(cli(fleet, "limits", "speed", "-o", "json").stdout)
    assert speed and all(isinstance(r["parameters"], int) and r["device_id"] for r in speed)
    assert 135_000_000 in {r["parameters"] for r in speed}  # a count (to the precision shown, 135M), not "135M"
    fit = list(csv.DictReader(io.StringIO(cli(fleet, "fit", "smollm2-135m", "--quant", "Q4_0", "-o", "csv").stdout)))
    swept = next(r for r in fit if r["device_id"] == "edge-1a2b3c4d")
    assert float(swept["max_streams"]) >= 1 and swept["max_streams_provenance"] in ("measured", "predicted")
    assert float(swept["stream_target_tok_s"]) > 0 and swept["reason"] and swept["evidence"]
    asked = json.loads(cli(fleet, "fit", "smollm2-135m", "--quant", "Q4_0", "--streams", "4", "-o", "json").stdout)
    assert {type(r["serves"]) for r in asked} <= {bool, type(None)} and {r["streams"] for r in asked} <= {4, None}
    assert any(r["serves"] is not None and r["streams"] == 4 for r in asked)


def test_quickstart_summary_fits(fleet):
    lines = []
    quickstart.summary(fleet_stub(fleet), lines.append, width=WIDTH)
    text = "\n".join(lines).splitlines()
    assert max(map(len, text)) <= WIDTH and any("Q4_0" in line for line in text)
    assert any("fits_comfortably" in line or "tight" in line for line in text)


def test_old_spellings_still_work(fleet):
    """-o is the one documented spelling; --format and --json stay as hidden aliases."""
    old, new = (json.loads(cli(fleet, "devices", flag, "json").stdout) for flag in ("--format", "-o"))
    assert [d["device_id"] for d in old] == [d["device_id"] for d in new] and len(new) == 4
    answers = json.loads(cli(fleet, "fit", "smollm2-135m", "--quant", "Q4_0", "--json").stdout)
    assert answers == json.loads(cli(fleet, "fit", "smollm2-135m", "--quant", "Q4_0", "-o", "answers").stdout)
    shown = run_cli("fleetfit", "devices", "-h").stdout
    assert "-o, --output" in shown and "--format" not in shown and "--wide" in shown
    assert_one_line_error(cli(fleet, "devices", "-o", "yaml"), "choose from table, md, csv, json, jsonl, sql")


@pytest.mark.parametrize("option, hint", [("price=0.30", "did you mean price_per_kwh"),
                                          ("shap=pp512/tg128", "known:")])
def test_an_unknown_table_option_is_an_error(fleet, option, hint):
    table = "energy-cost" if option.startswith("price") else "memory"
    assert_one_line_error(cli(fleet, "limits", table, "--option", option), hint)
    assert cli(fleet, "limits", "energy-cost", "--option", "price_per_kwh=0.30").returncode == 0


@pytest.mark.parametrize("selector, fragment", [("site=lab", "label.site=lab"),
                                                ("hostname=nosuch", "host-lab-vm-0035969e"),
                                                ("label.site=labb", "label.site: none")])
def test_a_selector_error_lists_what_exists(fleet, selector, fragment):
    assert_one_line_error(cli(fleet, "profile", "--select", selector), fragment)


def test_watching_a_campaign_on_a_lost_device_ends_and_says_why(fleet):
    made = cli(fleet, "profile", "--select", f"device={SILENT}", "--models", "smollm2-135m", "--quants", "Q4_0")
    assert made.returncode == 0, made.stderr
    campaign_id = made.stdout.split()[1].rstrip(":")
    started = time.monotonic()
    watched = cli(fleet, "campaign", "status", campaign_id, "--watch")
    assert time.monotonic() - started < 60
    assert watched.returncode == 1 and "LOST (silent" in watched.stdout
    assert "nothing can progress: 1 job(s) wait on lost device(s)" in watched.stdout
    plain = cli(fleet, "campaign", "status", campaign_id)
    assert plain.returncode == 0 and "eta: unknown until a job ends" in plain.stdout


def test_token_create_never_invents_a_database(tmp_path):
    env = {"HOME": str(tmp_path), "XDG_DATA_HOME": str(tmp_path / "data")}
    assert_one_line_error(run_cli("fleetfit", "token", "create", "--state-dir", str(tmp_path / "state"), env=env),
                          "records no database")
    assert_one_line_error(run_cli("fleetfit", "token", "create", env=env), "no coordinator database at")
    assert not (tmp_path / "data" / "fleetfit").exists()


def test_token_create_finds_the_database_serve_runs(tmp_path):
    state, db = tmp_path / "state", tmp_path / "fleet.sqlite3"
    serve = subprocess.Popen([str(BIN / "fleetfit"), "serve", "--db", str(db), "--state-dir", str(state), "--listen",
                              "127.0.0.1:0", "--insecure"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        line = serve.stdout.readline()
        assert "listening on" in line, line
        address = line.split("listening on ")[1].split(",")[0]
        made = run_cli("fleetfit", "token", "create", "--state-dir", str(state))
        assert made.returncode == 0, made.stderr
        joined = run_cli("fleetfit-agent", "join", "--coordinator", address, "--token", made.stdout.strip(),
                         "--insecure", "--device-id", "board-1", "--identity", str(tmp_path / "id.json"))
        assert joined.returncode == 0, joined.stderr
    finally:
        serve.terminate()
        serve.wait(timeout=30)


def test_join_says_what_to_fix(tmp_path):
    refused = run_cli("fleetfit-agent", "join", "--coordinator", "127.0.0.1:1", "--token", "x." + "0" * 64,
                      "--identity", str(tmp_path / "id.json"))
    assert_one_line_error(refused, "nothing listens at 127.0.0.1:1 (connection refused): is `fleetfit serve` running")
    tls = BackgroundCoordinator(tmp_path / "tls.sqlite3", tls=True)
    tls.start()
    try:
        plain = run_cli("fleetfit-agent", "join", "--coordinator", tls.address, "--token", tls.join_token(),
                        "--insecure", "--identity", str(tmp_path / "id.json"), timeout=120)
    finally:
        tls.stop()
    assert_one_line_error(plain, "it serves TLS; join without --insecure")
    assert "--ca" not in plain.stderr and "--state-dir" not in plain.stderr  # options join does not have


def test_agent_grammar():
    shown = run_cli("fleetfit-agent", "profile", "-h").stdout
    assert "--compute" in shown and "--device " not in shown and "-o, --output" in shown
    listed = run_cli("fleetfit-agent", "models", "list", "-h").stdout
    assert "<bool>" not in listed and "-o, --output" in listed and "--json" not in listed


def test_every_option_and_argument_has_help():
    """Both CLIs: help on every option and argument, -h everywhere, flags shown without a value."""
    import typer

    from fleetfit.agent.cli import app as agent
    from fleetfit.coordinator.cli import app as coordinator

    def commands(command, path):
        if hasattr(command, "commands"):
            for name, sub in command.commands.items():
                yield from commands(sub, [*path, name])
        else:
            yield " ".join(path), command

    found = 0
    for app, name in ((coordinator, "fleetfit"), (agent, "fleetfit-agent")):
        for path, command in commands(typer.main.get_command(app), [name]):
            for param in command.params:
                if not getattr(param, "hidden", False):
                    assert param.help, f"{path} {param.name}: no help"
                    found += 1
    assert found > 150
    assert "<bool>" not in run_cli("fleetfit", "fit", "-h").stdout and "--calibrate " in run_cli("fleetfit", "fit",
                                                                                                   "-h").stdout
