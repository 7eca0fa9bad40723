"""The size ladder with real llama.cpp on small synthetic models; larger sizes are refused by the cap."""

import pytest

from fleetfit.agent import probe
from fleetfit.models import job_bounds
from fleetfit.models.errors import ModelError
from fleetfit.v1 import fleetfit_pb2 as pb
from fleetfit.v1.words import PROVENANCE

MB = 1_000_000


def test_ladder_measures_what_fits_and_refuses_the_rest(tmp_path):
    # Runs this short are noisy on a busy machine: only a tenfold slowdown would count as a collapse here.
    settings = probe.ProbeSettings(n_prompt=16, n_gen=4, repetitions=1, threads=2, memory_cap_bytes=600 * MB,
                                   collapse_fraction=0.1)
    seen = []
    theirs = tmp_path / "synthetic" / "smollm2-135m-Q4_0.gguf"  # a cache entry `models synth` made: not the probe's
    theirs.parent.mkdir()
    theirs.write_bytes(b"not the probe's")
    results = probe.probe(["smollm2-360m", "smollm2-135m", "tinyllama-1.1b"], ["Q4_0", "F16"], "dev-1", tmp_path,
                          settings, seen.append)
    assert seen == results
    by_key = {(r.model_name, r.quant): r for r in results}
    assert list(by_key) == [("smollm2-135m", "Q4_0"), ("smollm2-360m", "Q4_0"), ("tinyllama-1.1b", "Q4_0"),
                            ("smollm2-135m", "F16"), ("smollm2-360m", "F16"), ("tinyllama-1.1b", "F16")]
    for key in [("smollm2-135m", "Q4_0"), ("smollm2-360m", "Q4_0"), ("smollm2-135m", "F16")]:
        r = by_key[key]
        assert r.failure == pb.FAILURE_KIND_UNSPECIFIED, r.error
        assert r.model_origin == "synthetic" and PROVENANCE.word(r.provenance.provenance_kind) == "measured"
        assert r.memory_limit_bytes == 600 * MB and r.peak_rss_bytes < 600 * MB
        assert r.decode_tokens_per_s.mean > 0
    assert by_key[("smollm2-360m", "Q4_0")].peak_rss_bytes > by_key[("smollm2-135m", "Q4_0")].peak_rss_bytes
    # 360M at F16 needs ~0.8 GB: refused without being attempted, and so is every larger F16 size.
    refused = by_key[("smollm2-360m", "F16")]
    assert refused.failure == pb.FAILURE_KIND_OOM and PROVENANCE.word(refused.provenance.provenance_kind) == "estimated"
    assert "the memory cap is 0.6 GB" in refused.error and not refused.HasField("peak_rss_bytes")
    assert "larger than smollm2-360m F16" in by_key[("tinyllama-1.1b", "F16")].error
    assert probe.capacity(results) == {"Q4_0": "smollm2-360m", "F16": "smollm2-135m"}
    assert list((tmp_path / "synthetic").iterdir()) == [theirs]  # every file the probe wrote was deleted, no other
    assert theirs.read_bytes() == b"not the probe's"


def test_collapsed_decode_counts_as_not_fitting():
    small = pb.ProfileResult(model_name="a", model_file_bytes=100, decode_tokens_per_s=pb.Stat(mean=50.0))
    thrashing = pb.ProfileResult(model_name="b", model_file_bytes=200, decode_tokens_per_s=pb.Stat(mean=2.0))
    healthy = pb.ProfileResult(model_name="b", model_file_bytes=200, decode_tokens_per_s=pb.Stat(mean=24.0))
    assert "decode collapsed to 2.00 tok/s, 8% of the 25.00 tok/s" in probe._decode_collapsed(thrashing, small)
    assert probe._decode_collapsed(healthy, small) is None


def test_probe_results_reach_the_coordinator(coordinator, tmp_path):
    """On an enrolled device the ladder goes through the outbox to the coordinator, which has never seen
    the device register before (joining does not register it)."""
    from tests.conftest import fleet_stub, run_cli

    identity = str(tmp_path / "agent.json")
    joined = run_cli("fleetfit-agent", "join", "--coordinator", coordinator.address, "--token",
                     coordinator.join_token(), "--device-id", "probe-dev", "--identity", identity, "--insecure")
    assert joined.returncode == 0, joined.stderr
    probed = run_cli("fleetfit-agent", "limits", "probe", "--sizes", "smollm2-135m", "--quants", "Q4_0",
                     "--n-prompt", "8", "--n-gen", "2", "--repetitions", "1", "--identity", identity,
                     "--cache-dir", str(tmp_path / "cache"), env={"FLEETFIT_IDLE_BASELINE_S": "0.2"})
    assert probed.returncode == 0, probed.stderr
    assert "results sent to" in probed.stderr
    devices = fleet_stub(coordinator).ListDevices(pb.ListDevicesRequest(), timeout=10).devices
    assert [d.inventory.device_id for d in devices] == ["probe-dev"]
    table = fleet_stub(coordinator).GetTable(pb.GetTableRequest(name="memory"), timeout=10).table
    col = list(table.columns).index
    measured = [row for row in table.rows if row.cells[col("model")].string_value == "smollm2-135m"]
    assert len(measured) == 1 and measured[0].cells[col("device")].string_value == devices[0].inventory.hostname
    assert measured[0].cells[col("backend")].string_value == "llama.cpp"
    assert measured[0].cells[list(table.columns).index("Q4_0 GB")].number_value > 0.05  # measured peak GB


def test_a_rung_names_a_model_and_optionally_a_depth():
    assert probe.parse_rung("smollm2-135m") == (probe.architecture("smollm2-135m"), 0)
    assert probe.parse_rung(" tinyllama-1.1b@2048 ") == (probe.architecture("tinyllama-1.1b"), 2048)
    for bad, message in (("smollm2-135m@-1", "depth must be 0..131072"), ("smollm2-135m@1e9", "depth must be"),
                         ("smollm2-135m@999999999", "depth must be"), ("gpt-5@16", "unknown architecture")):
        with pytest.raises(ModelError, match=message):
            probe.parse_rung(bad)


def test_the_default_ladder_spans_the_axes_models_differ_on():
    """Vocabulary, tied embeddings, GQA ratio, depth vs width, and a run at depth: what the scaling model needs
    to predict a model the device never ran (issue 17)."""
    rungs = [probe.parse_rung(r) for r in probe.DEFAULT_SIZES]
    archs = {a.name: a for a, _ in rungs}.values()
    assert max(a.vocab for a in archs) >= 4 * min(a.vocab for a in archs)
    assert {a.tied_embeddings for a in archs} == {True, False}
    assert {a.n_heads // a.n_kv_heads for a in archs} >= {1, 8}
    assert max(a.n_layers / a.hidden for a in archs) > 5 * min(a.n_layers / a.hidden for a in archs)
    assert any(depth >= 1024 for _, depth in rungs)
    deep = [a for a, depth in rungs if depth]
    assert len({a.n_heads // a.n_kv_heads for a in deep}) >= 2  # KV bytes told from attention FLOPs
    prompt, gen, _ = job_bounds.CALIBRATION_RUN
    assert all(depth + prompt + gen <= a.context_length for a, depth in rungs if a.rope_theta is None)  # learned
    from fleetfit.agent import cli  # the CLI's default is this ladder
    import inspect
    assert inspect.signature(cli.limits_probe).parameters["sizes"].default == ",".join(probe.DEFAULT_SIZES)


def test_sigterm_ends_a_probe_with_its_worker_and_deletes_the_file_it_measured(tmp_path):
    """`kill` (or a service manager) stops `limits probe` as Ctrl-C does: the worker dies with it, and the
    synthetic file it was measuring does not stay behind to fill the disk."""
    import signal
    import subprocess

    import psutil

    from tests.conftest import BIN, wait_until

    agent = subprocess.Popen([str(BIN / "fleetfit-agent"), "limits", "probe", "--sizes", "smollm2-135m", "--quants",
                              "Q4_0", "--n-gen", "256", "--repetitions", "50", "--threads", "1",
                              "--cache-dir", str(tmp_path), "--identity", str(tmp_path / "agent.json")],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        worker = wait_until(lambda: [p for p in psutil.Process(agent.pid).children(recursive=True)
                                     if "fleetfit.agent.worker" in p.cmdline()], 120, "the worker", 0.05)
        assert list((tmp_path / "synthetic").rglob("*.gguf"))  # the file it measures
        agent.send_signal(signal.SIGTERM)
        assert agent.wait(30) == 128 + signal.SIGTERM
    finally:
        agent.kill()
    _, alive = psutil.wait_procs(worker, timeout=10)
    assert not alive
    assert not list((tmp_path / "synthetic").iterdir())  # the file and the probe's own directory
    assert b"Traceback" not in agent.stderr.read()


def test_passes_walk_the_ladder_again_and_a_noisy_rung_is_measured_again(tmp_path):
    """--passes 2 measures each rung twice (the coordinator pools the repetitions and takes their median); a run
    whose repetitions spread over NOISE_CV is noisy (measured again, up to the bound), one that repeats is not."""
    settings = probe.ProbeSettings(n_prompt=8, n_gen=2, repetitions=1, threads=2, passes=2)
    results = probe.probe(["smollm2-135m"], ["Q4_0"], "dev-1", tmp_path, settings)
    assert [(r.model_name, r.quant) for r in results] == [("smollm2-135m", "Q4_0")] * 2
    assert all(not r.failure and r.decode_tokens_per_s.mean > 0 for r in results)
    assert len({r.result_id for r in results}) == 2
    for samples, noisy in (([100.0, 101.0, 99.0], False), ([5.2, 301.0, 256.3], True), ([100.0], False)):
        r = pb.ProfileResult(decode_tokens_per_s=pb.Stat(mean=sum(samples) / len(samples), samples=samples))
        assert probe._noisy(r) is noisy
