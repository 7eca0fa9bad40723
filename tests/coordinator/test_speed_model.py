"""The speed model's fit recovers the terms that generated its points, for decode and for prefill."""

from fleetfit.coordinator.predict import speed_model as dm
from fleetfit.models.catalogue import CATALOGUE

TRUE = dm.SpeedModel("decode", {"Q4_0": 1 / 40e9, "Q6_K": 1 / 20e9, "Q8_0": 1 / 30e9, "F32": 1 / 40e9},
                     {"KV bytes": 1 / 40e9, "attention scores": 1 / 0.5e9}, 30e-6, 200e-6, ())
LADDER = ("smollm2-135m", "llama-3.2-1b", "tinyllama-1.1b", "llama-2-7b")


def test_fit_recovers_known_terms():
    samples = [dm.Sample(CATALOGUE[m], q, pos, TRUE.tps(CATALOGUE[m], q, pos))
               for m in LADDER for q in ("Q4_0", "Q8_0") for pos in (8.5, 2048)]
    got = dm.fit(samples)
    for kind in ("Q4_0", "Q6_K", "Q8_0"):
        assert abs(got.s_per_unit[kind] / TRUE.s_per_unit[kind] - 1) < 0.02, kind
    for kind in ("KV bytes", "attention scores"):  # depth runs of GQA 3, 4 and 8 tell them apart
        assert abs(got.context_s_per_unit[kind] / TRUE.context_s_per_unit[kind] - 1) < 0.02, kind
    assert abs(got.layer_s / TRUE.layer_s - 1) < 0.05
    held = CATALOGUE["qwen2.5-0.5b"]  # never in the fit: another vocabulary, another GQA ratio
    assert abs(got.tps(held, "Q4_0", 512) / TRUE.tps(held, "Q4_0", 512) - 1) < 0.02


def test_one_context_leaves_the_kv_term_out():
    samples = [dm.Sample(CATALOGUE[m], "Q4_0", 8.5, TRUE.tps(CATALOGUE[m], "Q4_0", 8.5)) for m in LADDER]
    assert dm.fit(samples).context_s_per_unit == {"KV bytes": 0.0, "attention scores": 0.0}


def test_depth_runs_of_one_gqa_ratio_fit_attention_alone():
    """KV bytes and attention scores grow together within one GQA ratio and head size: the fit keeps one term, not
    a split."""
    samples = [dm.Sample(CATALOGUE[m], "Q4_0", pos, TRUE.tps(CATALOGUE[m], "Q4_0", pos))
               for m in LADDER for pos in (8.5,) + ((2048,) if m == "smollm2-135m" else ())]
    got = dm.fit(samples)
    assert got.context_s_per_unit["KV bytes"] == 0 and got.context_s_per_unit["attention scores"] > 0


def test_attention_visits_a_sliding_window_only():
    gemma = CATALOGUE["gemma-3-1b"]  # 26 layers, five of six sliding over 512 positions
    terms = dm.context_terms(gemma, 4096)
    global_layers = sum(not gemma.sliding(i) for i in range(gemma.n_layers))
    assert terms["attention scores"] == gemma.n_heads * (global_layers * 4096 + (26 - global_layers) * 512)
    assert dm.context_terms(gemma, 100)["attention scores"] == gemma.n_heads * 26 * 100
    prefill = dm.context_terms(gemma, 4096, "prefill")["attention FLOPs"]  # a prompt's: its matrix products' FLOPs
    assert prefill == 4 * gemma.q_dim * (global_layers * 4096 + (26 - global_layers) * 512)


def test_decode_attention_costs_per_score_not_per_flop():
    """Two models alike but for their head size: the same scores cost the same at depth, whatever their FLOPs."""
    import dataclasses
    narrow = CATALOGUE["smollm2-135m"]
    wide = dataclasses.replace(narrow, name="wide-heads", explicit_head_dim=4 * narrow.head_dim)
    assert dm.context_terms(wide, 4096)["attention scores"] == dm.context_terms(narrow, 4096)["attention scores"]
    assert dm.context_terms(wide, 4096, "prefill")["attention FLOPs"] == \
        4 * dm.context_terms(narrow, 4096, "prefill")["attention FLOPs"]


def test_prefill_terms_are_flops_per_type():
    true = dm.SpeedModel("prefill", {"Q4_0": 1 / 200e9, "Q6_K": 1 / 80e9, "Q8_0": 1 / 300e9, "F32": 1 / 50e9},
                         {"attention FLOPs": 1 / 100e9}, 50e-6, 100e-6, ())
    arch = CATALOGUE["llama-3.2-1b"]
    terms = dict(dm.weight_terms(arch, "Q4_0", "prefill"))
    # 2 FLOPs per multiplied weight; not the output projection (a prompt's logits are its last token's only), so
    # the tied Q6_K table (llama.cpp's quantizer keeps it at Q6_K) is a lookup of one row, as decode reads it whole
    assert abs(sum(terms.values()) / (2 * (1.236e9 - arch.vocab * arch.hidden)) - 1) < 0.02
    assert terms["Q6_K"] < 1e-5 * terms["Q4_0"] and dict(dm.weight_terms(arch, "Q4_0"))["Q6_K"] > 2e8
    samples = [dm.Sample(CATALOGUE[m], q, pos, true.tps(CATALOGUE[m], q, pos))
               for m in LADDER for q in ("Q4_0", "Q8_0") for pos in (32, 2048)]
    got = dm.fit(samples, "prefill")
    held = CATALOGUE["qwen2.5-0.5b"]
    assert abs(got.tps(held, "Q4_0", 512) / true.tps(held, "Q4_0", 512) - 1) < 0.02


def test_a_mixture_s_expert_kernel_has_its_own_rate_and_leaves_the_dense_rates_alone():
    """llama.cpp multiplies a prompt's tokens by their experts with mul_mat_id, a few tokens per expert, far below
    the dense kernels' rate. One mixture on the device (a calibration run: fleetfit calibrate) fits that rate
    without moving the dense ones, and predicts another mixture; with none, experts take the dense rate."""
    true = dm.SpeedModel("prefill", {"Q4_0": 1 / 200e9, "Q6_K": 1 / 80e9, "Q8_0": 1 / 300e9, "F32": 1 / 50e9,
                                     "Q4_0 experts": 1 / 60e9, "MXFP4 experts": 1 / 60e9},
                         {"attention FLOPs": 1 / 100e9}, 50e-6, 100e-6, ())
    dense = [dm.Sample(CATALOGUE[m], q, 32, true.tps(CATALOGUE[m], q, 32)) for m in LADDER for q in ("Q4_0", "Q8_0")]
    moe, other_moe, held = CATALOGUE["qwen3-30b-a3b"], CATALOGUE["gpt-oss-20b"], CATALOGUE["qwen2.5-0.5b"]
    assert "Q4_0 experts" in dict(dm.weight_terms(moe, "Q4_0", "prefill"))
    without = dm.fit(dense, "prefill")
    assert without.rate("Q4_0 experts") == without.rate("Q4_0")  # no mixture measured: the dense rate
    with_moe = dm.fit(dense + [dm.Sample(moe, "Q4_0", 32, true.tps(moe, "Q4_0", 32))], "prefill")
    assert abs(with_moe.tps(held, "Q4_0", 32) / without.tps(held, "Q4_0", 32) - 1) < 0.01
    assert abs(with_moe.tps(other_moe, "Q4_0", 32) / true.tps(other_moe, "Q4_0", 32) - 1) < 0.05
    assert without.tps(other_moe, "Q4_0", 32) > 2 * true.tps(other_moe, "Q4_0", 32)  # what the dense rate says
