import json

import numpy as np
import pytest

from fleetfit.agent import quality
from fleetfit.models import synth
from fleetfit.models.catalogue import Architecture
from tests.conftest import assert_one_line_error, run_cli

TINY = Architecture(name="tiny-quality", family="llama", n_layers=2, hidden=256, n_heads=4, n_kv_heads=2, ffn=512,
                    vocab=512, context_length=256, tied_embeddings=False, rope_theta=10000.0, norm_eps=1e-5,
                    source="test")


def exact_kld(reference: np.ndarray, other: np.ndarray) -> np.ndarray:
    log_p = reference - np.logaddexp.reduce(reference, axis=1, keepdims=True)
    log_q = other - np.logaddexp.reduce(other, axis=1, keepdims=True)
    return (np.exp(log_p) * (log_p - log_q)).sum(axis=1)


def test_the_compressed_reference_gives_llama_perplexitys_figures():
    rng = np.random.default_rng(0)
    reference = rng.normal(0, 3, size=(200, 1000)).astype(np.float32)
    other = reference + rng.normal(0, 0.3, size=reference.shape).astype(np.float32)
    tokens = rng.integers(0, 1000, size=200)
    scale, min_log_prob, steps, _ = quality.compress(reference)
    same, changed = quality.Sums(), quality.Sums()
    quality.compare(reference, tokens, scale, min_log_prob, steps, same)
    quality.compare(other, tokens, scale, min_log_prob, steps, changed)
    assert max(abs(k) for k in same.kld) < 1e-3 and same.same_top == 200  # against itself: nothing lost
    assert np.array(changed.kld) == pytest.approx(exact_kld(reference.astype(np.float64), other), rel=0.02, abs=1e-4)
    row = quality.summary("X", "F16", 512, changed, None)
    assert row.kl_divergence_mean == pytest.approx(np.mean(changed.kld))
    assert row.kl_divergence_p99 == pytest.approx(np.percentile(changed.kld, 99), rel=1e-4)
    assert row.kl_divergence_stderr == pytest.approx(np.std(changed.kld, ddof=1) / np.sqrt(200), rel=0.01)


def test_quality_of_a_tiny_model_on_llama_cpps_logits(tmp_path, coordinator):
    f16 = synth.write_synthetic(TINY, "F16", tmp_path / "tiny.gguf", free_disk_bytes=1 << 50,
                                available_ram_bytes=1 << 50)
    text = tmp_path / "text.txt"
    text.write_text(quality.read_text(None)[:400] + "\n")  # byte tokens in the synthetic vocabulary: ~400 tokens
    done = run_cli("fleetfit-agent", "quality", str(f16), "--quants", "F16,Q8_0,Q4_0", "--text", str(text),
                   "--context", "64", "--threads", "1", "--json")
    assert done.returncode == 0, done.stderr
    reference, same, *_ = listed = json.loads(done.stdout)
    assert [r["quant"] for r in listed] == ["F16", "F16", "Q8_0", "Q4_0"]  # the reference's row, then each quant's
    assert reference["kl_divergence_mean"] is None and reference["perplexity"] == pytest.approx(same["perplexity"])
    assert same["kl_divergence_mean"] < 1e-4 and same["same_top_token_fraction"] == 1.0  # F16 against itself
    assert same["n_positions"] % 31 == 0 and same["n_positions"] >= 100  # 64-token chunks: positions 32..62 scored
    rows = {r["quant"]: r for r in listed[1:]}
    assert 0 < rows["Q8_0"]["kl_divergence_mean"] < rows["Q4_0"]["kl_divergence_mean"]
    assert rows["Q4_0"]["perplexity"] > 0 and rows["Q4_0"]["provenance"]["kind"] == "measured"

    # --report: an enrolled device sends each quant's row; the coordinator tables it (the file's name as the model)
    from fleetfit.v1 import fleetfit_pb2 as pb
    from tests.conftest import fleet_stub

    identity = str(tmp_path / "agent.json")
    joined = run_cli("fleetfit-agent", "join", "--coordinator", coordinator.address, "--token",
                     coordinator.join_token(), "--device-id", "quality-dev", "--identity", identity, "--insecure")
    assert joined.returncode == 0, joined.stderr
    sent = run_cli("fleetfit-agent", "quality", str(f16), "--quants", "Q8_0", "--text", str(text), "--context", "64",
                   "--threads", "1", "--report", "--identity", identity, "--cache-dir", str(tmp_path / "cache"))
    assert sent.returncode == 0 and "quality results sent to" in sent.stderr, sent.stderr
    table = fleet_stub(coordinator).GetTable(pb.GetTableRequest(name="quality"), timeout=10).table
    assert [(row.cells[1].string_value, row.cells[2].string_value) for row in table.rows] == [("tiny", "Q8_0")]

    short = tmp_path / "short.txt"
    short.write_text("too short")
    assert_one_line_error(run_cli("fleetfit-agent", "quality", str(f16), "--text", str(short), "--context", "64"),
                          "a context of 64 needs at least 128")


def test_a_jobs_quality_pass_compares_its_file_with_the_stored_models_highest_precision(ladder, tmp_path):
    import hashlib
    import shutil

    from fleetfit.agent import daemon
    from fleetfit.agent.isolation import Deadline
    from fleetfit.v1 import fleetfit_pb2 as pb

    def stored(path):  # as model_fetch leaves a fetched file: CACHE/stored/<sha256>/<name>-<TYPE>.gguf
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        target = tmp_path / "stored" / digest / f"mine-{path.stem.rpartition('-')[2]}.gguf"
        target.parent.mkdir(parents=True)
        shutil.copy(path, target)
        return digest, target

    digest, q4_1 = stored(ladder["Q4_1"])
    request = pb.ProfileRequest(model=pb.ModelRef(name="mine", sha256=digest), quant="Q4_1",
                                quality=pb.QualityPass(context_tokens=128, chunks=2))
    run = pb.ProfileResult(device_id="dev-q", model_file=str(q4_1), quant="Q4_1", model_sha256=digest, threads=1)
    found = quality.for_job(request, run, tmp_path, Deadline.after(600))
    derived = tmp_path / "stored" / digest / "derived" / "mine-F16.gguf"  # a quantized file's reference: its F16
    assert (found.model_name, found.quant, found.reference_quant, found.model_sha256) == ("mine", "Q4_1", "F16", digest)
    assert found.reference_sha256 == hashlib.sha256(derived.read_bytes()).hexdigest()
    assert found.n_positions == 2 * 63 and found.context_tokens == 128 and found.kl_divergence_mean >= 0

    f16_digest, f16 = stored(ladder["F16"])  # the stored F16 is its own reference: nothing to compare at F16
    request.model.sha256, request.quant = f16_digest, "F16"
    assert quality.for_job(request, pb.ProfileResult(model_file=str(f16), quant="F16", model_sha256=f16_digest),
                           tmp_path, Deadline.after(60)) is None
    job = pb.Job(job_id="j", request=request)
    assert daemon.run_quality(job, pb.ProfileResult(failure=pb.FAILURE_KIND_OOM), tmp_path) == []  # no run, no pass
