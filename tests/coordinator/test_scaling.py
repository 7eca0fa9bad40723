"""The scaling model on a real ladder measured on the development machine (tests/fixtures/ladder)."""

import json
import pathlib

import pytest

from fleetfit.coordinator.predict import scaling
from fleetfit.models import synth
from fleetfit.models.catalogue import CATALOGUE
from fleetfit.v1 import fleetfit_pb2 as pb
from fleetfit.v1.words import parse_dict

LADDER = pathlib.Path(__file__).resolve().parents[1] / "fixtures" / "ladder"
COVERAGE_LADDER = LADDER.parent / "coverage-ladder"  # the default limits-probe ladder, measured in session 8


def ladder(directory: pathlib.Path = LADDER) -> tuple[list[pb.ProfileResult], pb.DeviceInventory]:
    results = [parse_dict(json.loads(p.read_text()), pb.ProfileResult()) for p in sorted(directory.glob("result-*.json"))]
    device = parse_dict(json.loads(next(directory.glob("device-*.json")).read_text()), pb.Device())  # old keys
    return sorted(results, key=lambda r: r.started_unix_s), device.inventory


def test_leave_one_family_out_holds_out_whole_families():
    results, device = ladder()
    pairs = scaling.leave_one_family_out(scaling.points(results, device.device_id))
    held_out = {(p.model, p.quant) for p, _, _ in pairs}
    assert len({m for m, _ in held_out}) >= 3 and len({q for _, q in held_out}) >= 2  # a real ladder, not a stub
    for p, pred, _ in pairs:
        assert pred.memory_bytes.provenance == pred.decode_tps.provenance == "predicted"
        # a family predicted from other families: memory within issue 17's ±5 %; decode within ±40 % here
        # (distilgpt2, a GPT-2, from Llamas alone: -36 %); issue 17's ±12 % is not met yet
        assert abs(pred.memory_bytes.value / p.peak_bytes - 1) <= 0.05, (p.model, p.quant, pred.memory_bytes)
        assert abs(pred.decode_tps.value / p.decode_tps - 1) <= 0.40, (p.model, p.quant, pred.decode_tps)
    assert {scaling.family(m) for m, _ in held_out} == {"distilgpt2", "tinyllama", "llama-2"}


def test_a_model_inside_the_calibrated_span_gets_the_band_of_families_held_out_inside_it():
    """Leave-one-family-out flags a held-out family the others do not span (distilgpt2's 6 layers against 22 and
    more, TinyLlama's GQA ratio 8 against 1, Llama-2-13B's width 5,120 against 2,048 at most); their errors band the predictions for models outside the device's span, and the families inside band
    the rest, so an extrapolation does not widen every band and an interpolation does not narrow its own."""
    results, device = ladder()
    pts = scaling.points(results, device.device_id)
    flagged = {p.model: outside for p, _, outside in scaling.leave_one_family_out(pts)}
    assert flagged["distilgpt2"] and flagged["tinyllama-1.1b"] and flagged["llama-2-13b"]
    assert not flagged["llama-2-7b"]  # width 4,096: 2x TinyLlama's
    dm = scaling.device_model(device, results)
    inside = scaling.relative_errors([h for h in scaling.leave_one_family_out(pts) if not h[2]])
    assert dm.errors["decode"] == scaling.band(inside["decode"])
    assert dm.errors_outside["decode"] != dm.errors["decode"]
    assert dm.bands(CATALOGUE["mistral-7b"]) == dm.errors  # 32 layers, width 4096, vocabulary 32,768: inside
    gemma = dm.predict(CATALOGUE["gemma-3-1b"], "Q4_0", 4096)
    assert gemma.decode_tps.error_fraction == dm.errors_outside["decode"]
    assert "of families outside the span of the others" in gemma.decode_tps.method


def test_leave_one_family_out_on_the_coverage_ladder():
    """The default `limits probe` ladder as this machine measured it (tests/fixtures/coverage-ladder: SmolLM2-135M
    and distilgpt2 also at depth, Llama-3.2-1B, TinyLlama, Llama-2-7B; Q4_0 and Q8_0): each family predicted from
    the others. Peak memory, the runs at depth included (the KV cache, the full micro-batch's activations and
    attention mask, the vocabulary tables), lands within ±3 %; decode within ±40 % (this VM repeats its own decode
    figure only to about ±20 %), and the families outside the others' span err more than those inside."""
    results, device = ladder(COVERAGE_LADDER)
    pairs = scaling.leave_one_family_out(scaling.points(results, device.device_id))
    assert {scaling.family(p.model) for p, _, _ in pairs} == {"smollm2", "distilgpt2", "llama-3.2", "tinyllama",
                                                              "llama-2"}
    assert {p.depth for p, _, _ in pairs} == {0, 768, 2048}
    for p, pred, _ in pairs:
        assert abs(pred.memory_bytes.value / p.peak_bytes - 1) <= 0.03, (p.label, pred.memory_bytes)
        assert abs(pred.decode_tps.value / p.decode_tps - 1) <= 0.40, (p.label, pred.decode_tps)
    dm = scaling.device_model(device, results)
    assert dm.errors["decode"] < dm.errors_outside["decode"] and dm.errors["memory"] <= 0.03


def test_a_stalled_repetition_does_not_move_the_fit_and_a_repeated_run_adds_its_samples():
    """This VM once decoded distilgpt2 at [5.2, 301.0, 256.3] tokens/s: the mean (188) would be the device's
    figure for it in every fit. A point takes the median of the repetitions, pooled over the runs like the
    latest (same shape and llama.cpp build); a run of another build is not pooled."""
    results, device = ladder(COVERAGE_LADDER)
    first = next(r for r in results if (r.model_name, r.quant, r.n_depth) == ("distilgpt2", "Q4_0", 0))
    stalled = pb.ProfileResult()
    stalled.CopyFrom(first)
    stalled.result_id, stalled.started_unix_s = "stalled", first.started_unix_s + 3600
    del stalled.decode_tokens_per_s.samples[:]
    stalled.decode_tokens_per_s.samples.extend([5.2, 301.0, 256.3])
    stalled.decode_tokens_per_s.mean = sum(stalled.decode_tokens_per_s.samples) / 3
    pooled = sorted(list(first.decode_tokens_per_s.samples) + [5.2, 301.0, 256.3])
    point = next(p for p in scaling.points(results + [stalled], device.device_id)
                 if (p.model, p.quant, p.depth) == ("distilgpt2", "Q4_0", 0))
    assert point.result.result_id == "stalled" and point.decode_tps == pytest.approx((pooled[2] + pooled[3]) / 2)
    stalled.backend_commit = "another"
    point = next(p for p in scaling.points(results + [stalled], device.device_id)
                 if (p.model, p.quant, p.depth) == ("distilgpt2", "Q4_0", 0))
    assert point.decode_tps == pytest.approx(256.3)


def test_family_is_the_name_without_its_size():
    assert [scaling.family(m) for m in ("llama-3.2-1b", "smollm2-135m", "qwen3-30b-a3b", "distilgpt2", "phi-4-mini")] \
        == ["llama-3.2", "smollm2", "qwen3-30b-a3b", "distilgpt2", "phi-4-mini"]


def test_the_band_covers_ninety_percent_of_held_out_errors():
    errors = [0.01 * i for i in range(1, 21)]  # 1 % .. 20 %
    assert scaling.band(errors) == pytest.approx(0.19)  # the next error up: 19 of 20 within it, never under 90 %
    assert scaling.band([-0.3, 0.05]) == pytest.approx(0.3) and scaling.band([]) is None


def test_an_architecture_far_from_the_calibration_is_flagged():
    results, device = ladder()  # vocabularies 32,000..50,257, no mixture of experts, no sliding window
    dm = scaling.device_model(device, results)
    assert dm.outside(CATALOGUE["tinyllama-1.1b"]) == [] and dm.outside(CATALOGUE["mistral-7b"]) == []
    gemma = dm.outside(CATALOGUE["gemma-3-1b"])
    assert any(w.startswith("vocabulary 262,144 is over 2x the largest measured, 50,257") for w in gemma)
    assert "sliding-window attention, and no such model was measured" in gemma
    assert "a mixture of experts, and none was measured" in dm.outside(CATALOGUE["qwen3-30b-a3b"])


def test_provenance_measured_predicted_estimated():
    results, device = ladder()
    dm = scaling.device_model(device, results)
    measured = dm.predict(CATALOGUE["llama-2-7b"], "Q4_0")
    assert measured.memory_bytes.provenance == "measured" and measured.memory_bytes.value == dm.measured(
        "llama-2-7b", "Q4_0").peak_bytes
    longer = dm.predict(CATALOGUE["llama-2-7b"], "Q4_0", context=4096)  # another context is a prediction
    assert longer.memory_bytes.provenance == "predicted" and longer.memory_bytes.value > measured.memory_bytes.value
    unseen = dm.predict(CATALOGUE["llama-3.1-8b"], "Q4_K_M")
    assert unseen.decode_tps.provenance == "predicted" and unseen.decode_tps.error_fraction is not None
    assert "never measured here: Q4_K at Q4_0's rate" in unseen.decode_tps.method
    stranger = scaling.device_model(pb.DeviceInventory(device_id="new", ram_total_bytes=8 << 30), results)
    guess = stranger.predict(CATALOGUE["llama-3.1-8b"], "Q4_K_M")
    assert guess.memory_bytes.provenance == "estimated" and "nothing measured on this device" in guess.memory_bytes.method
    assert guess.decode_tps.value is None and "no probe" in guess.decode_tps.method  # no bandwidth probe: no figure


def test_memory_formula_agrees_with_the_synthetic_plan():
    for name, quant in (("tinyllama-1.1b", "Q4_0"), ("llama-3.1-8b", "Q4_K_M"), ("distilgpt2", "F16")):
        arch = CATALOGUE[name]
        assert scaling.weight_bytes(arch, quant) == pytest.approx(synth.plan_file(arch, quant).weight_bytes, rel=1e-3)
    gqa, mha = CATALOGUE["llama-3.1-8b"], CATALOGUE["llama-2-7b"]  # 8 vs 32 KV heads
    assert scaling.kv_cache_bytes(mha, 4096) == 4 * scaling.kv_cache_bytes(gqa, 4096) == 2 * 32 * 4096 * 4096 * 2


def test_a_prompt_token_does_not_multiply_the_output_projection():
    # the one-rate prefill (fleet priors, estimates) counts what the backends compute: a prompt's logits come from its
    # last position only, tied (llama-3.2-1b) or not (tinyllama); a decoded token (serving) multiplies it
    for name in ("llama-3.2-1b", "tinyllama-1.1b"):
        arch = CATALOGUE[name]
        output = scaling.flops_per_token(arch, 100) - scaling.flops_per_token(arch, 100, prompt=True)
        assert output == 2 * arch.vocab * arch.hidden


@pytest.mark.parametrize("model, quant, message", [
    ("llama-2-7", "Q4_0", "did you mean llama-2-7b"),
    ("llama-2-7b", "Q4_Z", "Q4_Z"),
    ("llama-2-7b", "IQ2_XS", "no size formula for IQ2_XS"),
])
def test_unknown_names_are_one_line_errors_with_suggestions(model, quant, message):
    with pytest.raises(scaling.ScalingError) as exc:
        scaling.resolve(model, quant)
    assert message in str(exc.value) and "\n" not in str(exc.value)
