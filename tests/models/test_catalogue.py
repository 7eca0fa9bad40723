import dataclasses
import math

import pytest
from gguf import GGUFReader

from fleetfit.agent import model_cache
from fleetfit.models.catalogue import CATALOGUE, active_params, architecture, n_params, tensors
from fleetfit.models.errors import ModelError
from fleetfit.models.quant_sizes import bytes_per_weight, supported_quant, tensor_type, weight_bytes

# Published parameter counts: the model cards' sum(p.numel()) of the Hugging Face checkpoint (the GGUF
# tensor element count of the shipped SmolLM2-135M file is the same number, see test_gguf_file.py's model).
PUBLISHED_PARAMS = {
    "distilgpt2": 81_912_576,  # huggingface.co/distilbert/distilgpt2: 82M; sum(numel) quoted in many model reports
    "smollm2-135m": 134_515_008,  # = inspect_gguf(SmolLM2-135M-Instruct.Q4_1.gguf).n_params
    "smollm2-360m": 361_821_120,  # HuggingFaceTB/SmolLM2-360M model card: 362M
    "smollm2-1.7b": 1_711_376_384,  # HuggingFaceTB/SmolLM2-1.7B model card: 1.71B
    "tinyllama-1.1b": 1_100_048_384,  # TinyLlama/TinyLlama-1.1B model card: 1.1B
    "llama-3.2-1b": 1_235_814_400,  # meta-llama/Llama-3.2-1B safetensors metadata: 1.24B
    "llama-3.2-3b": 3_212_749_824,  # meta-llama/Llama-3.2-3B safetensors metadata: 3.21B
    "llama-2-7b": 6_738_415_616,  # meta-llama/Llama-2-7b-hf safetensors metadata: 6.74B
    "llama-2-13b": 13_015_864_320,  # meta-llama/Llama-2-13b-hf safetensors metadata: 13.0B
    "llama-2-70b": 68_976_648_192,  # meta-llama/Llama-2-70b-hf safetensors metadata: 69.0B
    "llama-3.1-8b": 8_030_261_248,  # meta-llama/Llama-3.1-8B safetensors metadata: 8.03B
    "mistral-7b": 7_241_732_096,  # mistralai/Mistral-7B-v0.1 safetensors metadata: 7.24B
    "qwen2.5-0.5b": 494_032_768,  # Qwen/Qwen2.5-0.5B model card: 0.49B (0.36B non-embedding)
    "qwen2.5-7b": 7_615_616_512,  # Qwen/Qwen2.5-7B model card: 7.61B
    "gemma-3-1b": 999_885_952,  # google/gemma-3-1b-pt safetensors metadata: 1,000M (999,885,952)
    "phi-4-mini": 3_836_021_760,  # microsoft/Phi-4-mini-instruct safetensors metadata: 3.84B
    "mistral-nemo-12b": 12_247_782_400,  # mistralai/Mistral-Nemo-Base-2407 safetensors metadata: 12.2B
}
# Models whose cards give rounded figures: (total B, non-embedding or active B, decimals). Qwen3's cards give the
# non-embedding count (their safetensors also store the tied lm_head, so the hub's total counts it twice);
# the MoE cards give the active count: gpt-oss counts the output projection but not the embedding lookup,
# Qwen3-30B-A3B counts the whole embedding table as well.
PUBLISHED_ROUNDED = {
    "qwen3-0.6b": (0.6, 1, ("non_embedding", 0.44, 2)),  # Qwen/Qwen3-0.6B model card: 0.6B, 0.44B non-embedding
    "qwen3-1.7b": (1.7, 1, ("non_embedding", 1.4, 1)),  # Qwen/Qwen3-1.7B: 1.7B, 1.4B non-embedding
    "qwen3-4b": (4.0, 1, ("non_embedding", 3.6, 1)),  # Qwen/Qwen3-4B: 4.0B, 3.6B non-embedding
    "qwen3-8b": (8.2, 1, ("non_embedding", 6.95, 2)),  # Qwen/Qwen3-8B: 8.2B, 6.95B non-embedding
    "gemma-3-4b": (3.88, 2, None),  # ggml-org/gemma-3-4b-it-GGUF (text model): 3.88B; 4.3B with the vision tower
    "qwen3-30b-a3b": (30.5, 1, ("active_with_embedding", 3.3, 1)),  # Qwen/Qwen3-30B-A3B: 30.5B, 3.3B activated
    "gpt-oss-20b": (20.91, 2, ("active", 3.61, 2)),  # openai/gpt-oss-20b model card (21B, 3.6B active); its paper: 20.91B, 3.61B
}


def test_the_catalogue_is_the_published_list():
    assert set(CATALOGUE) == set(PUBLISHED_PARAMS) | set(PUBLISHED_ROUNDED)


@pytest.mark.parametrize("name", sorted(PUBLISHED_ROUNDED))
def test_parameter_count_matches_the_model_card(name):
    arch = architecture(name)
    total, decimals, second = PUBLISHED_ROUNDED[name]
    assert round(n_params(arch) / 1e9, decimals) == total
    if second is not None:
        kind, billions, decimals = second
        embedding = arch.vocab * arch.hidden
        count = {"non_embedding": n_params(arch) - embedding * (1 if arch.tied_embeddings else 2),
                 "active": active_params(arch),
                 "active_with_embedding": active_params(arch) - arch.hidden + embedding}[kind]
        # cards round, or cut at their last digit (Qwen3-30B-A3B's 3.35B is "3.3B")
        assert billions in (round(count / 1e9, decimals), math.floor(count / 1e9 * 10**decimals) / 10**decimals)


def test_a_mixture_of_experts_holds_every_expert_and_reads_the_routed_ones():
    arch = architecture("gpt-oss-20b")
    specs = {s.name: s.shape for s in tensors(arch)}
    assert specs["blk.0.ffn_gate_exps.weight"] == (32, 2880, 2880) and specs["blk.0.attn_sinks.weight"] == (64,)
    assert specs["blk.0.attn_q.weight"] == (64 * 64, 2880)  # explicit head_dim 64, not 2880 / 64
    experts = sum(math.prod(s) for n, s in specs.items() if "_exps." in n)
    assert n_params(arch) - active_params(arch) == experts * 28 // 32 + arch.vocab * arch.hidden - arch.hidden


@pytest.mark.parametrize("name", sorted(PUBLISHED_PARAMS))
def test_parameter_count_matches_the_published_one(name):
    assert n_params(architecture(name)) == PUBLISHED_PARAMS[name]


def test_tensor_names_follow_llama_cpp():
    qwen = {spec.name: spec.shape for spec in tensors(architecture("qwen2.5-0.5b"))}
    assert qwen["blk.0.attn_k.weight"] == (128, 896) and qwen["blk.0.attn_k.bias"] == (128,)
    assert "output.weight" not in qwen  # tied embeddings
    llama = {spec.name for spec in tensors(architecture("llama-2-7b"))}
    assert {"output.weight", "blk.31.ffn_gate.weight"} <= llama and not any(n.endswith(".bias") for n in llama)
    gpt2 = {spec.name: spec.shape for spec in tensors(architecture("distilgpt2"))}
    assert gpt2["position_embd.weight"] == (1024, 768) and gpt2["blk.5.attn_qkv.weight"] == (2304, 768)


def test_unknown_architecture_suggests_near_names():
    with pytest.raises(ModelError, match=r"unknown architecture 'llama-2-7' \(did you mean llama-2-7b"):
        architecture("llama-2-7")
    with pytest.raises(ModelError, match=r"unknown architecture 'gpt5' \(known: distilgpt2, "):
        architecture("gpt5")


@pytest.mark.parametrize("change, message", [
    ({"n_layers": 0}, "n_layers must be a positive integer, got 0"),
    ({"hidden": -4096}, "hidden must be a positive integer, got -4096"),
    ({"n_kv_heads": 5}, "must split into n_kv_heads"),
    ({"n_layers": 1000, "hidden": 65536}, "parameters is over the limit of 1,000,000,000,000"),
    ({"n_layers": 2**31}, "n_layers 2,147,483,648 is over the limit of 1,024"),  # refused before any loop
    ({"vocab": True}, "vocab must be a positive integer, got True"),
    ({"rope_theta": float("nan")}, "rope_theta must be a positive finite number"),
    ({"family": "qwen3moe"}, "a mixture of experts needs 0 < n_experts_used"),
    ({"n_experts": 8, "n_experts_used": 2}, "family llama has no experts"),
    ({"family": "mamba"}, "unknown architecture family 'mamba'"),
])
def test_absurd_shapes_are_rejected(change, message):
    with pytest.raises(ModelError, match=message):
        dataclasses.replace(architecture("llama-2-7b"), **change)


def test_bytes_per_weight_come_from_the_gguf_block_sizes():
    assert bytes_per_weight("F16") == 2
    assert bytes_per_weight("Q8_0") == 34 / 32  # fp16 scale + 32 int8
    assert bytes_per_weight("Q4_0") == 18 / 32  # fp16 scale + 32 nibbles
    assert bytes_per_weight("Q6_K") == 210 / 256


@pytest.mark.parametrize("quant, published_gb", [("Q4_0", 3.83), ("Q4_K_M", 4.08), ("Q8_0", 7.16)])
def test_llama_2_7b_sizes_match_published_files(quant, published_gb):
    # TheBloke/Llama-2-7B-GGUF lists llama-2-7b.Q4_0.gguf 3.83 GB, .Q4_K_M 4.08 GB, .Q8_0 7.16 GB (llama.cpp's mix).
    assert round(weight_bytes(architecture("llama-2-7b"), quant) / 1e9, 2) == published_gb


def test_unsupported_quant_types_are_refused():
    with pytest.raises(ModelError, match="quant type IQ2_XXS is not supported for synthetic models"):
        supported_quant("iq2_xxs")
    with pytest.raises(ModelError, match="unknown quant type"):
        supported_quant("Q4_M")


def _tensor_types(path):
    return {t.name: (t.tensor_type.name, tuple(int(n) for n in reversed(t.shape))) for t in GGUFReader(path).tensors}


@pytest.mark.parametrize("quant", ["Q4_0", "Q4_K_M", "IQ4_XS"])
def test_tensor_types_match_what_llama_cpp_quantizes_to(ladder, tmp_path, quant):
    """llama.cpp's own quantizer, run on the real SmolLM2-135M, gives every tensor the type we predict
    (SmolLM2's 576-wide rows do not split into 256-weight blocks, so Q4_K_M exercises the fallbacks)."""
    path = ladder.get(quant)
    if path is None:
        path = tmp_path / f"smollm2-135m-{quant}.gguf"
        model_cache.derive(ladder["F16"], quant, path, threads=2)
    arch = architecture("smollm2-135m")
    predicted = {spec.name: (tensor_type(arch, quant, spec), spec.shape) for spec in tensors(arch)}
    assert _tensor_types(path) == predicted


def test_sliding_layer_count_is_the_per_layer_rule():
    """Architecture.n_sliding (counted) agrees with `sliding` walked layer by layer, for every catalogued shape
    and every pattern, including layer counts that are and are not multiples of the pattern."""
    for arch in CATALOGUE.values():
        for pattern in (0, 1, 2, 5, 6, 7):
            for layers in (n for n in (1, 6, 25, arch.n_layers) if pattern <= n):
                window = {"sliding_window": 1024} if pattern and not arch.sliding_window else {}
                shape = dataclasses.replace(arch, n_layers=layers, sliding_pattern=pattern, **window)
                assert shape.n_sliding == sum(shape.sliding(i) for i in range(layers)), (arch.name, pattern, layers)
