"""Real llama.cpp through the isolated worker, on the real SmolLM2 ladder, with short runs."""

import pytest

from fleetfit.agent import profiling
from fleetfit.models.errors import ModelError
from fleetfit.v1 import fleetfit_pb2 as pb
from fleetfit.v1.words import PROVENANCE


def short_request(model: str, **overrides) -> pb.ProfileRequest:
    params = dict(n_prompt=32, n_gen=8, repetitions=2, threads=2) | overrides
    return profiling.make_request(model, **params)


def test_profile_measures_every_figure(ladder, cache_dir):
    result = profiling.profile(short_request(str(ladder["Q4_0"])), "dev-1", cache_dir)
    assert result.failure == pb.FAILURE_KIND_UNSPECIFIED, result.error
    assert result.quant == "Q4_0" and result.model_arch == "llama"
    for stat in (result.prefill_tokens_per_s, result.decode_tokens_per_s, result.ttft_ms):
        assert len(stat.samples) == 2 and all(s > 0 for s in stat.samples)
        assert min(stat.samples) <= stat.mean <= max(stat.samples)
    # TTFT covers the prefill of the whole prompt, so it is at least the prefill time.
    assert result.ttft_ms.mean >= 1000 * 32 / max(result.prefill_tokens_per_s.samples) * 0.99
    # Weights are read without mmap, so they show in the worker's peak RSS above its baseline.
    assert result.peak_rss_bytes - result.baseline_rss_bytes > 0.9 * result.model_file_bytes
    assert "load_mode=none" in result.memory_method
    assert result.load_time_s > 0 and result.n_ctx == 40 and result.threads == 2
    assert PROVENANCE.word(result.provenance.provenance_kind) == "measured"
    assert "AVX" in result.backend_build or "NEON" in result.backend_build


def test_peak_memory_follows_precision(ladder, cache_dir):
    peaks = {q: profiling.profile(short_request(str(ladder[q]), repetitions=1), "dev-1", cache_dir).peak_rss_bytes
             for q in ("F16", "Q4_0")}
    assert peaks["F16"] > peaks["Q4_0"] + 100 * 2**20  # F16 weights are ~170 MiB larger


def test_profile_by_name_resolves_the_cached_ladder(cache_dir, ladder):
    result = profiling.profile(short_request("smollm2-135m", quant="Q8_0", repetitions=1), "dev-1", cache_dir)
    assert result.model_name == "smollm2-135m" and result.quant == "Q8_0"
    assert result.model_file == str(ladder["Q8_0"])


def test_timeout_is_a_classified_failure(ladder, cache_dir):
    request = short_request(str(ladder["F16"]), n_prompt=512, n_gen=128, repetitions=50, timeout_s=10,
                            idle_baseline_s=0)  # the deadline covers the baseline too: let it end in the worker
    result = profiling.profile(request, "dev-1", cache_dir)
    assert result.failure == pb.FAILURE_KIND_TIMEOUT
    assert "killed" in result.error
    assert not result.HasField("peak_rss_bytes")  # not measured is absent, never 0
    assert not result.HasField("power") and not result.HasField("roofline")


@pytest.mark.parametrize("overrides, message", [
    ({"n_gen": 0}, "n-gen must be at least 1"),
    ({"n_prompt": -5}, "n-prompt must be at least 1"),
    ({"repetitions": 0}, "repetitions must be at least 1"),
    ({"backend": "tensorflow"}, "unknown backend"),
    ({"quant": "Q9_9"}, "unknown quant type"),
    ({"decode_depth": -1}, "decode_depth must be at least 0"),
    ({"decode_depth": 1, "backend": "onnxruntime", "quant": "fp32"}, "decode depth is run by llama.cpp only"),
])
def test_bad_requests_are_refused(ladder, cache_dir, overrides, message):
    with pytest.raises(profiling.ProfileInputError if "quant" not in overrides else ModelError, match=message):
        profiling.profile(short_request(str(ladder["Q4_0"]), **overrides), "dev-1", cache_dir)


def test_quant_must_match_a_given_file(ladder, cache_dir):
    with pytest.raises(ModelError, match="is Q4_0, not F16"):
        profiling.profile(short_request(str(ladder["Q4_0"]), quant="F16"), "dev-1", cache_dir)


def test_a_run_at_depth_decodes_from_a_filled_cache(ladder, cache_dir):
    """llama-bench's -d: each test starts with decode_depth tokens in the KV cache, and the context holds the depth
    too. What the run did is checked (depth, context, the cache's memory held), never how fast it ran: speed on a
    shared machine proves nothing about which run attended to more positions."""
    results = {d: profiling.profile(short_request(str(ladder["Q4_0"]), decode_depth=d), "dev-1", cache_dir)
               for d in (0, 1024)}
    deep = results[1024]
    assert deep.failure == pb.FAILURE_KIND_UNSPECIFIED, deep.error
    assert deep.n_depth == deep.request.decode_depth == 1024 and deep.n_ctx == 1024 + 32 + 8
    assert results[0].n_depth == 0 and results[0].n_ctx == 40
    for result in results.values():  # each repetition measured both phases from its own filled cache
        assert len(result.decode_tokens_per_s.samples) == len(result.prefill_tokens_per_s.samples) == \
            result.request.repetitions
    assert deep.peak_rss_bytes > results[0].peak_rss_bytes  # the KV cache of 1064 positions


def test_a_depth_past_learned_positions_is_an_error_not_an_abort(tmp_path):
    """GPT-2's positions are a learned table (1024 for distilgpt2): llama.cpp would abort on a position past it; the
    run fails with a line that says so instead of dying from SIGABRT."""
    from fleetfit.models.synth import write_synthetic

    path = write_synthetic("distilgpt2", "Q4_0", tmp_path / "distilgpt2-Q4_0.gguf", force=True)
    result = profiling.profile(short_request(str(path), decode_depth=1000), "dev-1", tmp_path)
    assert result.failure == pb.FAILURE_KIND_ERROR, (result.failure, result.error)
    assert "learned position embeddings for 1024 positions" in result.error and "1040" in result.error


def test_peak_memory_grows_with_depth_as_the_memory_feature_says(tmp_path):
    """Peak RSS from an empty cache to 3072 tokens of depth grows by what coordinator/predict/scaling.py's memory feature
    adds (the KV cache held, the full micro-batch's activations and attention mask), for a dense model and for
    one whose sliding-window layers cache their window only, as llama-bench runs them (swa_full off): with the
    C API's default (a full cache for every layer) the sliding model grows 21 MB more than that."""
    import dataclasses

    from fleetfit.coordinator.predict import scaling
    from fleetfit.models.catalogue import CATALOGUE
    from fleetfit.models.synth import write_synthetic

    gemma = CATALOGUE["gemma-3-1b"]
    small = {"dense": dataclasses.replace(gemma, name="dense-test", n_layers=12, sliding_window=None, sliding_pattern=0,
                                          vocab=32000),
             "sliding": dataclasses.replace(gemma, name="sliding-test", n_layers=12, vocab=32000)}
    for kind, arch in small.items():
        path = write_synthetic(arch, "Q4_0", tmp_path / f"{arch.name}-Q4_0.gguf", force=True)
        peaks = {d: profiling.profile(short_request(str(path), repetitions=1, decode_depth=d), "dev-1", tmp_path)
                 for d in (0, 3072)}
        assert all(r.failure == pb.FAILURE_KIND_UNSPECIFIED for r in peaks.values()), [r.error for r in peaks.values()]
        grown = peaks[3072].peak_rss_bytes - peaks[0].peak_rss_bytes
        predicted = (scaling.memory_feature(arch, "Q4_0", peaks[3072].n_ctx)
                     - scaling.memory_feature(arch, "Q4_0", peaks[0].n_ctx))
        assert abs(grown - predicted) < 0.1 * predicted + 4e6, (kind, grown, predicted)
