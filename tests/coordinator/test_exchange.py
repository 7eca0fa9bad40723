"""Results that flow into people's tools, through the real coordinator and CLI: typed limit-table cells (csv, sql),
and export / import of every result between coordinators — idempotent, every imported line checked as a report."""

import csv
import io
import json
import sqlite3
import time


from fleetfit.coordinator.service.store import Store
from fleetfit.v1.words import DEVICE_STATUS
from tests.conftest import run_cli


def test_limit_tables_in_machine_formats_have_typed_columns(ladder_fleet):
    results, env = ladder_fleet
    table = run_cli("fleetfit", "limits", "--format", "csv", env=env)
    assert table.returncode == 0, table.stderr
    rows = list(csv.DictReader(io.StringIO(table.stdout)))
    ok = [r for r in rows if not r["failure"]]
    assert len(ok) == len([r for r in results if not r.failure])
    for r in ok:  # numbers, never "28.52 ± 20.51" or "134.5 M"
        float(r["decode_tok_s"]), float(r["decode_tok_s_stdev"]), float(r["params_m"]), float(r["memory_mib"])
        assert r["decode_tok_s_provenance"] == "measured"
    memory = list(csv.DictReader(io.StringIO(run_cli("fleetfit", "limits", "memory", "--format", "csv",
                                                     env=env).stdout)))
    predicted = [r for r in memory if r["f16_gb_provenance"] == "predicted"]
    assert predicted and all(float(r["f16_gb"]) > 0 and float(r["f16_gb_band"]) >= 0 for r in predicted)
    assert {"does_not_fit", ""} >= {r["f16_gb_verdict"] for r in memory}
    sql = run_cli("fleetfit", "limits", "--format", "sql", env=env).stdout
    db = sqlite3.connect(":memory:")
    db.executescript(sql)
    (kind,) = db.execute("SELECT DISTINCT typeof(decode_tok_s) FROM measured WHERE failure IS NULL").fetchone()
    assert kind == "real"
    shown = run_cli("fleetfit", "limits", "memory", "--format", "md", env=env).stdout
    assert "~" in shown and " ± " not in shown.split("\n")[2].split("|")[1]  # display strings only for people


def test_export_then_import_is_idempotent_and_checks_every_line(ladder_fleet, coordinator, tmp_path):
    results, _ = ladder_fleet
    exported = tmp_path / "results.jsonl"
    done = run_cli("fleetfit", "export", "--db", str(coordinator.db_path), "--out", str(exported))
    assert done.returncode == 0, done.stderr
    lines = exported.read_text().splitlines()
    assert len(lines) == len(results)
    first = json.loads(lines[0])
    assert first["schema"] == "fleetfit.result.v1" and isinstance(first["result"]["model_file_bytes"], int)

    other = tmp_path / "other.sqlite3"
    once = run_cli("fleetfit", "import", str(exported), "--db", str(other))
    assert once.returncode == 0 and f"imported {len(results)} results (0 already stored" in once.stdout, once.stderr
    again = run_cli("fleetfit", "import", str(exported), "--db", str(other))
    assert f"imported 0 results ({len(results)} already stored, 0 refused)" in again.stdout, again.stderr
    with Store(other) as store:
        assert sorted(r.result_id for r in store.results()) == sorted(r.result_id for r in results)
        assert [DEVICE_STATUS.word(d.device_status) for d in store.devices()] == ["lost"]  # imported, never in contact here

    changed = json.loads(lines[0])
    changed["result"]["decode_tokens_per_s"]["mean"] = 1e9  # same id, other figures: refused, not overwritten
    poisoned = json.loads(lines[1])
    poisoned["result"]["result_id"] = "new-id"
    poisoned["result"]["peak_rss_bytes"] = 2**60  # beyond ingest's physical bound
    hostile = tmp_path / "hostile.jsonl"
    hostile.write_text("\n".join([json.dumps(changed), json.dumps(poisoned), "{not json", '{"schema": "x"}',
                                  "x" * (5 * 2**20)]) + "\n")
    refused = run_cli("fleetfit", "import", str(hostile), "--db", str(other))
    assert refused.returncode == 1 and "imported 0 results (0 already stored, 5 refused)" in refused.stdout
    assert "Traceback" not in refused.stderr and "line 2: result.peak_rss_bytes" in refused.stderr
    with Store(other) as store:
        assert len(store.results()) == len(results)
        assert {r.decode_tokens_per_s.mean for r in store.results()} == {r.decode_tokens_per_s.mean for r in results}


def test_import_never_merges_another_machine_into_a_device_here(ladder_fleet, coordinator, tmp_path):
    """A line whose device id is here (or earlier in the file) but whose inventory is another machine is refused,
    naming what differs; the same machine (free memory and backends changing) merges as before."""
    results, _ = ladder_fleet
    exported = tmp_path / "results.jsonl"
    assert run_cli("fleetfit", "export", "--db", str(coordinator.db_path), "--out", str(exported)).returncode == 0
    line = json.loads(exported.read_text().splitlines()[0])
    device_id = line["result"]["device_id"]

    def claim(result_id: str, as_device: str = device_id, **inventory) -> str:
        found = json.loads(json.dumps(line))
        found["result"].update(result_id=result_id, device_id=as_device)
        found["result"]["decode_tokens_per_s"] = {"mean": 999.0, "stdev": 0.0, "samples": [999.0]}
        found["device"].update(device_id=as_device, **inventory)
        if inventory.get("hostname") == "bare":
            del found["device"]
        return json.dumps(found)

    others = [claim("x-host", hostname="evil"), claim("x-ram", ram_total_bytes=2**40),
              claim("x-cpu", cpu_model="Other CPU"), claim("x-gpu", gpus=[{"name": "H100", "memory_total_bytes": 8}]),
              claim("x-cores", cpu_cores_logical=512), claim("x-bare", hostname="bare")]
    same = claim("same-machine", ram_available_bytes=12345, agent_version="9.9")
    hostile = tmp_path / "claims.jsonl"
    hostile.write_text("\n".join([*others, same]) + "\n")
    done = run_cli("fleetfit", "import", str(hostile), "--db", str(coordinator.db_path))
    assert done.returncode == 1 and f"imported 1 results (0 already stored, {len(others)} refused)" in done.stdout
    assert "Traceback" not in done.stderr
    for field in ("hostname", "ram_total_bytes", "cpu_model", "gpus", "cpu_cores_logical"):
        assert f"here is another machine (its {field} differ" in done.stderr, field
    assert "no inventory to show it is the same machine" in done.stderr
    with Store(coordinator.db_path) as store:
        mine = {r.result_id for r in store.results(device_id=device_id)}
        assert "same-machine" in mine and not mine & {"x-host", "x-ram", "x-cpu", "x-gpu", "x-cores", "x-bare"}
        assert store.devices()[0].inventory.hostname == line["device"]["hostname"]

    # two machines claiming one new id within one file: the first is added, the second refused
    fresh = tmp_path / "fresh.sqlite3"
    twins = [claim("t1", "twin"), claim("t2", "twin", hostname="evil")]
    (tmp_path / "twins.jsonl").write_text("\n".join(twins) + "\n")
    done = run_cli("fleetfit", "import", str(tmp_path / "twins.jsonl"), "--db", str(fresh))
    assert "imported 1 results (0 already stored, 1 refused), 1 new devices" in done.stdout, done.stdout + done.stderr


def test_import_of_future_dated_results_brings_no_device_online(ladder_fleet, coordinator, tmp_path):
    exported = tmp_path / "results.jsonl"
    assert run_cli("fleetfit", "export", "--db", str(coordinator.db_path), "--out", str(exported)).returncode == 0
    lines = []
    for n, (year_s, text) in enumerate(zip((2**33, 1e10, 4e9), exported.read_text().splitlines())):
        found = json.loads(text)
        found["result"]["started_unix_s"] = year_s  # 2242, 2286, 2096
        lines.append(json.dumps(found))
    (tmp_path / "future.jsonl").write_text("\n".join(lines) + "\n")
    other = tmp_path / "other.sqlite3"
    assert run_cli("fleetfit", "import", str(tmp_path / "future.jsonl"), "--db", str(other)).returncode == 0
    with Store(other) as store:
        (device,) = store.devices()
        assert DEVICE_STATUS.word(device.device_status) == "lost"
        assert device.last_seen_unix_s <= time.time() and device.first_seen_unix_s <= time.time()
        store.set_seen(device.inventory.device_id, 2**33, 2**33)  # a future contact stored before this check
        assert DEVICE_STATUS.word(store.devices()[0].device_status) == "lost"


BAD_JSON = {
    "200k-deep arrays": '{"schema": "fleetfit.result.v1", "result": ' + "[" * 200_000 + "]" * 200_000 + "}",
    "200k-deep objects": '{"a":' * 200_000 + "1" + "}" * 200_000,
    "deep inside the result": '{"schema": "fleetfit.result.v1", "result": {"result_id": "d", "request": '
                              + '{"model": ' * 900 + "{}" + "}" * 900 + "}}",
    "5,000-digit integer": '{"schema": "fleetfit.result.v1", "result": {"result_id": "i", "n_prompt": '
                           + "9" * 5000 + "}}",
    "5,000-digit integer key": '{"x": ' + "1" * 5000 + "}",
    "huge exponent": '{"schema": "fleetfit.result.v1", "result": {"result_id": "e", "n_prompt": 1e999999}}',
    "lone surrogate": '{"schema": "fleetfit.result.v1", "result": {"result_id": "\\ud800", "device_id": "\\udfff"}}',
    "NaN": '{"schema": "fleetfit.result.v1", "result": {"result_id": "n", "decode_tokens_per_s": {"mean": NaN}}}',
    "over the line bound": '{"schema": "' + "x" * (5 << 20) + '"}',
}


def test_import_counts_each_bad_line_and_keeps_going(ladder_fleet, coordinator, tmp_path):
    """Every kind of line that does not parse is one counted, one-line refusal, and the lines after it are read."""
    results, _ = ladder_fleet
    exported = tmp_path / "results.jsonl"
    assert run_cli("fleetfit", "export", "--db", str(coordinator.db_path), "--out", str(exported)).returncode == 0
    good = exported.read_text().splitlines()
    mixed = [x for pair in zip(BAD_JSON.values(), good) for x in pair]  # a bad line before each good one
    (tmp_path / "mixed.jsonl").write_text("\n".join(mixed) + "\n")
    other = tmp_path / "other.sqlite3"
    done = run_cli("fleetfit", "import", str(tmp_path / "mixed.jsonl"), "--db", str(other), timeout=120)
    kept = min(len(BAD_JSON), len(good))
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert f"imported {kept} results (0 already stored, {len(BAD_JSON)} refused)" in done.stdout, done.stdout
    refused = [line for line in done.stderr.splitlines() if line.startswith("refused line ")]
    assert [int(line.split()[2].rstrip(":")) for line in refused] == list(range(1, 2 * len(BAD_JSON), 2))
    assert all(len(line) < 400 for line in refused)
