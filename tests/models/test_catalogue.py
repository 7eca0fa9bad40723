import dataclasses

import pytest
from gguf import GGUFReader

from fleetfit.agent import model_cache
from fleetfit.models.catalogue import CATALOGUE, architecture, n_params, tensors
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
}


def test_the_catalogue_is_the_published_list():
    assert set(CATALOGUE) == set(PUBLISHED_PARAMS)


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
    ({"n_kv_heads": 5}, "must split into n_heads"),
    ({"n_layers": 20_000}, "parameters is over the limit of 1,000,000,000,000"),
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


@pytest.mark.parametrize("quant", ["Q4_0", "Q4_K_M"])
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
