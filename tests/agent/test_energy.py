"""Energy per phase and the roofline, on real llama.cpp runs of the SmolLM2 ladder (short runs)."""

from fleetfit.agent import profiling, report
from fleetfit.v1 import fleetfit_pb2 as pb
from fleetfit.v1.words import PROVENANCE


def short_profile(path, cache_dir, **overrides) -> pb.ProfileResult:
    params = dict(n_prompt=16, n_gen=8, repetitions=2, threads=2, idle_baseline_s=0.3) | overrides
    return profiling.profile(profiling.make_request(str(path), **params), "dev-1", cache_dir)


def test_every_phase_has_energy_with_its_method_and_provenance(ladder, cache_dir):
    result = short_profile(ladder["Q4_0"], cache_dir)
    assert result.failure == pb.FAILURE_KIND_UNSPECIFIED, result.error
    power = result.power
    phases = {p.phase: p for p in power.phases if p.source == power.headline_source}
    assert list(phases) == ["load", "prefill", "decode"]  # the warm-up is not a phase
    assert power.warmup_excluded and power.idle_baseline_s == 0.3 and power.rate_hz == 20
    # No sensor is readable on this VM: the estimate, labelled as such, and every reader's reason.
    assert PROVENANCE.word(power.provenance_kind) == "estimated" and {PROVENANCE.word(p.provenance_kind) for p in power.phases} == {"estimated"}
    assert any(d.startswith("rapl:") for d in power.declined)
    decode, prefill = phases["decode"], phases["prefill"]
    assert (decode.tokens, prefill.tokens, phases["load"].tokens) == (16, 32, 0)
    assert decode.HasField("energy_mj") and decode.HasField("idle_power_w") and decode.coverage > 0.5
    assert abs(decode.joules_per_token * decode.tokens * 1000 - decode.energy_mj) < 1e-6
    assert abs(decode.tokens_per_joule * decode.joules_per_token - 1) < 1e-9
    assert decode.peak_power_w * (1 + 1e-9) >= decode.average_power_w > 0
    # The phases are what the worker timed: decode lasted about the sum of each repetition's n_gen / its rate (not
    # n_gen x reps / the mean rate: on a shared machine one stalled repetition is far from the mean).
    expected_s = sum(8 / rate for rate in result.decode_tokens_per_s.samples)
    assert 0.5 * expected_s < decode.duration_s < 2 * expected_s
    assert not phases["load"].HasField("joules_per_token")  # no tokens in load: absent, never 0


def test_the_roofline_uses_the_gguf_and_the_measured_bandwidth(ladder, cache_dir):
    result = short_profile(ladder["F16"], cache_dir, repetitions=1)
    rl = result.roofline
    assert (rl.n_layers, rl.n_kv_heads, rl.head_dim) == (30, 3, 64)
    assert rl.weight_bytes_per_token > 0.99 * result.model_file_bytes - 8 * 2**20
    assert rl.kv_cache_bytes_per_token == 2 * 30 * 3 * 64 * 4.5 * 2  # mean context (8 + 1) / 2
    assert abs(rl.achieved_gb_per_s - rl.bytes_per_token * result.decode_tokens_per_s.mean / 1e9) < 1e-9
    assert rl.device_bandwidth_gb_per_s > 0 and rl.percent_of_bandwidth > 0
    assert rl.bottleneck_kind == pb.BOTTLENECK_MEMORY and 0.5 < rl.arithmetic_intensity_flop_per_byte < 2
    text = report.markdown([result])
    assert "ESTIMATED" in text and "% of bandwidth" in text and "estimated_from_utilization" in text

