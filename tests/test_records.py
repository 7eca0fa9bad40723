"""Records for people's tools (fleetfit.v1.records): JSON with integers as numbers, and one profile row type whose
fields every printer writes — sql straight into real SQLite, csv and json typed."""

import csv
import io
import json
import sqlite3

from fleetfit.v1 import fleetfit_pb2 as pb
from fleetfit.v1 import records
from tests.coordinator.test_scaling import ladder


def test_json_writes_64_bit_integers_as_numbers_at_every_depth():
    results, device = ladder()
    found = records.message_dict(results[0])
    assert isinstance(found["peak_rss_bytes"], int) and found["peak_rss_bytes"] == results[0].peak_rss_bytes
    inventory = records.message_dict(pb.DeviceInventory(ram_total_bytes=2**40 + 1, gpus=[pb.GpuInfo(
        memory_total_bytes=2**35)]))
    assert inventory["ram_total_bytes"] == 2**40 + 1 and inventory["gpus"][0]["memory_total_bytes"] == 2**35
    assert json.loads(records.to_json([results[0]]))[0]["model_file_bytes"] == results[0].model_file_bytes


def _rows():
    results, _ = ladder()
    ok = results[0]
    failed = pb.ProfileResult(result_id="it's-failed", device_id="d", model_name="m", quant="Q4_0",
                              failure=pb.FAILURE_KIND_OOM, error="out of memory: 'quoted'; DROP TABLE x")
    return ok, records.profile_rows(ok, "cpu 'x'") + records.profile_rows(failed, failure_name="oom")


def test_sql_output_loads_into_sqlite_as_llama_bench_with_numeric_speeds():
    ok, rows = _rows()
    db = sqlite3.connect(":memory:")
    db.executescript(records.write_profile_rows(rows, "sql"))
    got = db.execute("SELECT test, avg_ts, typeof(avg_ts), n_prompt, n_gen, peak_rss_bytes, failure, error "
                     "FROM llama_bench").fetchall()
    assert [g[0] for g in got] == [f"pp{ok.n_prompt}", f"tg{ok.n_gen}", ""]
    assert got[0][1] == ok.prefill_tokens_per_s.mean and got[1][1] == ok.decode_tokens_per_s.mean
    assert got[0][2] == got[1][2] == "real" and got[2][1] is None  # a failed run has no speed, not 0
    assert got[0][3:5] == (ok.n_prompt, 0) and got[1][3:5] == (0, ok.n_gen)  # as llama-bench splits pp and tg
    assert got[0][5] == ok.peak_rss_bytes and got[2][6:] == ("oom", "out of memory: 'quoted'; DROP TABLE x")
    (avg,) = db.execute("SELECT avg(avg_ts) FROM llama_bench WHERE test LIKE 'tg%'").fetchone()
    assert avg == ok.decode_tokens_per_s.mean


def test_every_format_carries_the_same_fields():
    ok, rows = _rows()
    names = [f.name for f in records.profile_fields()]
    assert {"build_commit", "cpu_info", "model_type", "model_size", "model_n_params", "n_threads", "n_prompt",
            "n_gen", "avg_ts", "stddev_ts", "samples_ts", "peak_rss_bytes", "energy_provenance"} <= set(names)
    table = list(csv.DictReader(io.StringIO(records.write_profile_rows(rows, "csv"))))
    assert list(table[0]) == names and float(table[1]["avg_ts"]) == ok.decode_tokens_per_s.mean
    assert json.loads(table[1]["samples_ts"]) == list(ok.decode_tokens_per_s.samples)
    objects = json.loads(records.write_profile_rows(rows, "json"))
    lines = [json.loads(line) for line in records.write_profile_rows(rows, "jsonl").splitlines()]
    assert objects == lines and list(objects[0]) == names
    assert isinstance(objects[0]["model_size"], int) and objects[2]["avg_ts"] is None
