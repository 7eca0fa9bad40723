"""Results that flow into people's tools, through the real coordinator and CLI: typed limit-table cells (csv, sql),
and export / import of every result between coordinators — idempotent, every imported line checked as a report."""

import csv
import io
import json
import sqlite3

import pytest

from fleetfit.coordinator.store import Store
from fleetfit.v1 import fleetfit_pb2 as pb
from fleetfit.v1.words import DEVICE_STATUS
from tests.conftest import Agents, run_cli
from tests.coordinator.test_scaling import ladder


@pytest.fixture()
def ladder_fleet(coordinator):
    results, device = ladder()
    agents = Agents(coordinator)
    agents.Register(pb.RegisterRequest(inventory=device), timeout=5)
    for r in results:
        agents.ReportResult(pb.ReportResultRequest(result=r), timeout=5)
    agents.close()
    yield results, {"FLEETFIT_TOKEN": coordinator.operator_token, "FLEETFIT_INSECURE": "1",
                    "FLEETFIT_COORDINATOR": coordinator.address}


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
