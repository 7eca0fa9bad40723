"""The decode model's fit recovers the terms that generated its points."""

from fleetfit.coordinator import decode_model as dm
from fleetfit.models.catalogue import CATALOGUE

TRUE = dm.DecodeModel({"Q4_0": 1 / 40e9, "Q6_K": 1 / 20e9, "Q8_0": 1 / 30e9, "F32": 1 / 40e9},
                      1 / 10e9, 30e-6, 200e-6, 0)
LADDER = ("smollm2-135m", "llama-3.2-1b", "tinyllama-1.1b", "llama-2-7b")


def test_fit_recovers_known_terms():
    samples = [dm.Sample(CATALOGUE[m], q, pos, TRUE.tps(CATALOGUE[m], q, pos))
               for m in LADDER for q in ("Q4_0", "Q8_0") for pos in (8.5, 2048)]
    got = dm.fit(samples)
    for kind in ("Q4_0", "Q6_K", "Q8_0"):
        assert abs(got.s_per_byte[kind] / TRUE.s_per_byte[kind] - 1) < 0.02, kind
    assert abs(got.kv_s_per_byte / TRUE.kv_s_per_byte - 1) < 0.02
    assert abs(got.layer_s / TRUE.layer_s - 1) < 0.05
    held = CATALOGUE["qwen2.5-0.5b"]  # never in the fit: another vocabulary, another GQA ratio
    assert abs(got.tps(held, "Q4_0", 512) / TRUE.tps(held, "Q4_0", 512) - 1) < 0.02


def test_one_context_leaves_the_kv_term_out():
    samples = [dm.Sample(CATALOGUE[m], "Q4_0", 8.5, TRUE.tps(CATALOGUE[m], "Q4_0", 8.5)) for m in LADDER]
    assert dm.fit(samples).kv_s_per_byte == 0
