"""Concurrency sweeps on real llama.cpp and the real SmolLM2: N streams decoded together in one KV cache, as
llama-batched-bench does, with short runs."""

import json
import math
import random
import subprocess
import sys

import pytest

from fleetfit.agent import profiling
from fleetfit.agent.isolation import run_worker
from fleetfit.models import roofline
from fleetfit.v1 import fleetfit_pb2 as pb
from fleetfit.v1.words import PROVENANCE

N_PROMPT, N_GEN = 16, 8
STATS = ("aggregate_decode_tokens_per_s", "per_stream_decode_tokens_per_s", "prefill_tokens_per_s", "ttft_ms_p50",
         "ttft_ms_p99", "peak_memory_bytes")


@pytest.fixture(scope="module")
def swept(ladder, cache_dir) -> pb.ProfileResult:
    # one thread: on a shared 2-core machine two spinning threads lose most of their time to each other
    request = profiling.make_request(str(ladder["Q4_0"]), n_prompt=N_PROMPT, n_gen=N_GEN, repetitions=2, threads=1,
                                     idle_baseline_s=0, parallel=[1, 2, 8])
    result = profiling.profile(request, "dev-serve", cache_dir)
    assert result.failure == pb.FAILURE_KIND_UNSPECIFIED, result.error
    return result


def test_each_stream_count_is_measured_in_full(swept):
    assert [p.parallel for p in swept.serving] == [1, 2, 8]
    for point in swept.serving:
        assert not point.unsupported_reason
        for name in STATS:
            stat = getattr(point, name)
            assert len(stat.samples) == 2 and all(s > 0 and math.isfinite(s) for s in stat.samples), name
        for aggregate, per_stream in zip(point.aggregate_decode_tokens_per_s.samples,
                                         point.per_stream_decode_tokens_per_s.samples):
            assert per_stream * point.parallel == pytest.approx(aggregate, rel=1e-9)
        assert all(p99 >= p50 for p50, p99 in zip(point.ttft_ms_p50.samples, point.ttft_ms_p99.samples))
        # every stream's first logits come after at least its own prompt's prefill
        assert point.ttft_ms_p50.mean >= 1000 * N_PROMPT / max(point.prefill_tokens_per_s.samples) * 0.99
        assert PROVENANCE.word(point.energy_provenance_kind) == PROVENANCE.word(swept.power.provenance_kind) and point.decode_energy_per_token_j > 0
    assert swept.decode_tokens_per_s.mean > 0 and "serving points: peak RSS per repetition" in swept.memory_method


def test_decoding_streams_together_serves_more_tokens(swept):
    # llama.cpp reads the weights once per step for all N streams (best of the repetitions: noise only slows). On
    # this CPU 2 streams of SmolLM2 Q4_0 are no faster than 1, in llama-batched-bench too; 8 are 1.3-1.6x.
    best = {p.parallel: max(p.aggregate_decode_tokens_per_s.samples) for p in swept.serving}
    assert best[8] > best[1], best


def test_peak_memory_grows_by_the_kv_cache_of_the_extra_sequences(swept, ladder):
    shape = roofline.model_shape(ladder["Q4_0"])
    per_token = 2 * shape.n_layers * shape.n_kv_heads * shape.head_dim * 2  # F16 K and V
    cells = 256  # llama.cpp holds each sequence in whole 256-token blocks (n_ctx_seq padded to 256)
    peak = {p.parallel: p.peak_memory_bytes.mean for p in swept.serving}
    assert peak[8] - peak[1] >= 0.9 * 7 * cells * per_token, (peak, per_token)
    assert peak[8] >= peak[2] >= peak[1]


def test_streams_whose_prompts_end_in_a_later_chunk_wait_longer_for_their_first_token(ladder):
    # 4 prompts of 16 tokens in chunks of 32: streams 0 and 1 get their first logits from the first llama_decode,
    # streams 2 and 3 from the second, which ends the prefill
    code = ("import json, sys; from fleetfit.agent.backends import llama_cpp_runtime as r; "
            "f = r.profile(sys.argv[1], 16, 2, 1, 1, n_batch=32, parallel=(4,)); "
            "print(json.dumps(f.to_json()['run']['serving'][0]))")
    done = subprocess.run([sys.executable, "-c", code, str(ladder["Q4_0"])], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    point = json.loads(done.stdout.strip().splitlines()[-1])
    p50, p99 = point["ttft_ms_p50"]["mean"], point["ttft_ms_p99"]["mean"]
    prefill_ms = 1000 * 4 * 16 / point["prefill_tokens_per_s"]["mean"]
    assert p50 < p99 and p99 == pytest.approx(prefill_ms, rel=0.05), (p50, p99, prefill_ms)


def test_sequences_decoded_together_decode_as_each_does_alone(ladder):
    rng = random.Random(7)
    prompts = [[rng.randrange(49152) for _ in range(N_PROMPT)] for _ in range(3)]

    def greedy(batch):
        return run_worker({"op": "batched_greedy", "model_path": str(ladder["Q4_0"]), "prompts": batch,
                           "n_gen": N_GEN, "threads": 2}, 300)

    alone = [greedy([p])["tokens"][0] for p in prompts[:2]]
    together = greedy([prompts[0], prompts[1], prompts[2], prompts[0]])
    assert together["tokens"][0] == alone[0] and together["tokens"][1] == alone[1]
    assert together["tokens"][3] == alone[0] and together["tokens"][2] != alone[0]
    assert together["pos_max"] == [N_PROMPT + N_GEN - 2] * 4  # each sequence holds its own tokens only


def test_a_point_llama_cpp_cannot_allocate_is_unsupported_and_the_run_stands(ladder, cache_dir):
    # 256 sequences hold 256 blocks of 256 cells: about 1.5 GB of KV cache, past a 1 GiB address-space cap
    request = profiling.make_request(str(ladder["Q4_0"]), n_prompt=8, n_gen=2, repetitions=1, threads=2,
                                     idle_baseline_s=0, parallel=[2, 256])
    result = profiling.profile(request, "dev-serve", cache_dir, memory_limit_bytes=1 << 30)
    assert result.failure == pb.FAILURE_KIND_UNSPECIFIED, result.error
    measured, refused = result.serving
    assert measured.parallel == 2 and measured.aggregate_decode_tokens_per_s.mean > 0
    assert refused.parallel == 256 and "could not create a context for 256 sequences" in refused.unsupported_reason
    assert not any(refused.HasField(name) for name in STATS) and not refused.HasField("decode_energy_per_token_j")
    assert result.decode_tokens_per_s.mean > 0
