"""Bytes per weight of GGUF tensor types, and the tensor type llama.cpp's quantizer gives each tensor of a file.

Block sizes come from the `gguf` package (`GGML_QUANT_SIZES[type] == (weights per block, bytes per block)`),
llama.cpp's own table. A file type such as Q4_K_M is a mix, so its size is not one bytes-per-weight figure:
`tensor_type` is a port of llama.cpp's `llama_tensor_get_type` (src/llama-quant.cpp, build 0c1e570, as
vendored in llama-cpp-python 0.3.36) for the file types listed in FILE_TYPES, with llama.cpp's defaults (no
imatrix, no overrides):
- only 2-D and 3-D `.weight` tensors are quantized: norms, biases, attention sinks stay F32, and so do the
  expert routers (ffn_gate_inp); position embeddings stay F16 (the type of the F16 file quantized from);
- output.weight (token_embd.weight when the embeddings are tied) becomes Q6_K, or Q8_0 for a Q8_0 file, a
  MXFP4_MOE file, or when its rows do not split into the file type's blocks;
- attn_v (and a fused attn_qkv, which llama.cpp treats as attn_v) and ffn_down get more bits in the mixes:
  Q4_K_M/Q5_K_M: Q6_K in the first and last eighth of the layers and every third one between; Q3_K_M: attn_v
  Q5_K in the first 2 layers, else Q4_K, ffn_down Q5_K in the first sixteenth, else Q4_K, attn_output Q4_K;
  Q2_K: attn_v Q3_K (Q4_K with 4+ query heads per KV head), ffn_down and attn_output Q3_K; IQ4_XS: attn_v Q5_K
  with 4+ query heads per KV head, ffn_down Q5_K in the first eighth; Q4_K_S: attn_v of the first 4 layers and
  ffn_down of the first eighth Q5_K; a Llama 70B's Q3_K/Q4_K attn_v becomes Q5_K; a model of 8 experts gets
  attn_v and attn_k Q8_0 and attn_output Q5_K;
- MXFP4_MOE: expert tensors MXFP4, every other matrix Q8_0;
- a tensor whose rows do not split into 256-weight blocks falls back: Q2_K/Q3_K to Q4_0, Q4_K to Q5_0, Q5_K
  to Q5_1, Q6_K to Q8_0, IQ4_XS to IQ4_NL, and to F16 when even 32-weight blocks do not fit.
`file_bits_per_weight` gives the resulting average for an architecture.
"""

import math

from fleetfit.models.catalogue import Architecture, TensorSpec, n_params, tensors
from fleetfit.models.errors import ModelError
from fleetfit.models.quants import parse_quant

# File type -> the tensor type llama.cpp quantizes most weights to (llama_ftype_get_default_type).
FILE_TYPES = {
    "F32": "F32", "F16": "F16", "BF16": "BF16", "Q8_0": "Q8_0", "Q6_K": "Q6_K",
    "Q5_K_M": "Q5_K", "Q5_K_S": "Q5_K", "Q5_1": "Q5_1", "Q5_0": "Q5_0",
    "Q4_K_M": "Q4_K", "Q4_K_S": "Q4_K", "Q4_1": "Q4_1", "Q4_0": "Q4_0", "IQ4_XS": "IQ4_XS", "IQ4_NL": "IQ4_NL",
    "Q3_K_L": "Q3_K", "Q3_K_M": "Q3_K", "Q3_K_S": "Q3_K", "Q2_K": "Q2_K", "MXFP4_MOE": "MXFP4",
}
FLOAT_TYPES = ("F32", "F16", "BF16")
# llama-quant.cpp tensor_type_fallback, for rows that do not split into 256-weight blocks
_FALLBACK = {"Q2_K": "Q4_0", "Q3_K": "Q4_0", "Q4_K": "Q5_0", "Q5_K": "Q5_1", "Q6_K": "Q8_0", "IQ4_XS": "IQ4_NL"}


def block_size(ggml_type: str) -> tuple[int, int]:
    """(weights per block, bytes per block) of a GGML tensor type, from the gguf package."""
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    return GGML_QUANT_SIZES[GGMLQuantizationType[ggml_type]]


def bytes_per_weight(ggml_type: str) -> float:
    weights, nbytes = block_size(ggml_type)
    return nbytes / weights


def supported_quant(name: str) -> str:
    """The canonical file type name, or a ModelError when the synthetic writer cannot build that type."""
    quant = parse_quant(name)
    if quant not in FILE_TYPES:
        raise ModelError(f"quant type {quant} is not supported for synthetic models (supported: {', '.join(FILE_TYPES)})")
    return quant


def _use_more_bits(layer: int, n_layers: int) -> bool:
    return layer < n_layers // 8 or layer >= 7 * n_layers // 8 or (layer - n_layers // 8) % 3 == 2


def _fits(ggml_type: str, n_columns: int) -> bool:
    return n_columns % block_size(ggml_type)[0] == 0


def _category(name: str) -> str:
    """llama-quant.cpp tensor_get_category: broad roles matched on the name, in its order."""
    if name == "output.weight":
        return "output"
    if name == "token_embd.weight":
        return "token_embd"
    for role in ("attn_qkv", "attn_v", "attn_k", "attn_q", "attn_output"):
        if f"{role}.weight" in name:
            return "attn_v" if role == "attn_qkv" else role  # a fused QKV counts as attn_v
    for role in ("ffn_up", "ffn_gate", "ffn_down"):
        if role in name:
            return role
    return "other"


def _quantizable(spec: TensorSpec) -> bool:
    """llama-quant.cpp tensor_allows_quantization, for the tensors our families have."""
    name = spec.name
    return (len(spec.shape) >= 2 and name.endswith("weight") and not name.endswith("_norm.weight")
            and "ffn_gate_inp.weight" not in name and name != "position_embd.weight")


def _is_70b(arch: Architecture) -> bool:
    """llama.cpp's LLM_TYPE_70B: 80 layers of a Llama with grouped KV heads, or of a Qwen2."""
    return arch.n_layers == 80 and (arch.family == "qwen2" or (arch.family == "llama" and arch.n_heads != arch.n_kv_heads))


def _mix(arch: Architecture, quant: str, spec: TensorSpec, chosen: str) -> str:
    """llama_tensor_get_type_impl for our file types: the type of one quantizable tensor before the fallback."""
    category = _category(spec.name)
    n_gqa, n_expert = arch.n_heads // arch.n_kv_heads, arch.n_experts
    layer = int(spec.name.split(".")[1]) if spec.name.startswith("blk.") else 0
    n_layers, more_bits = arch.n_layers, _use_more_bits(layer, arch.n_layers)
    if category == "output" or (arch.tied_embeddings and category == "token_embd"):
        if quant == "MXFP4_MOE" or not _fits(chosen, spec.shape[-1]):
            return "Q8_0"
        return chosen if chosen == "Q8_0" else "Q6_K"
    if quant == "MXFP4_MOE":
        return "MXFP4" if len(spec.shape) == 3 else "Q8_0"
    if category == "attn_v":
        if quant == "Q2_K":
            chosen = "Q4_K" if n_gqa >= 4 else "Q3_K"
        elif quant == "Q3_K_M":
            chosen = "Q5_K" if layer < 2 else "Q4_K"
        elif quant == "Q3_K_L":
            chosen = "Q5_K"
        elif quant in ("IQ4_NL", "IQ4_XS") and n_gqa >= 4:
            chosen = "Q5_K"
        elif quant in ("Q4_K_M", "Q5_K_M") and more_bits:
            chosen = "Q6_K"
        elif quant == "Q4_K_S" and layer < 4:
            chosen = "Q5_K"
        if _is_70b(arch) and chosen in ("Q3_K", "Q4_K"):
            chosen = "Q5_K"
        return "Q8_0" if n_expert == 8 else chosen
    if category == "attn_k":
        return "Q8_0" if n_expert == 8 else chosen
    if category == "ffn_down":
        if quant == "Q2_K":
            return "Q3_K"
        if quant == "Q3_K_M":
            return "Q5_K" if layer < n_layers // 16 else "Q4_K"
        if quant == "Q3_K_L":
            return "Q5_K"
        if quant in ("Q4_K_M", "Q5_K_M"):
            return "Q6_K" if more_bits else chosen
        if quant in ("IQ4_NL", "IQ4_XS", "Q4_K_S") and layer < n_layers // 8:
            return "Q5_K"
        return chosen
    if category == "attn_output":
        if n_expert == 8:
            eight = ("Q2_K", "Q3_K_S", "Q3_K_M", "IQ4_NL", "Q4_K_S", "Q4_K_M", "IQ4_XS")
            return "Q5_K" if quant in eight else chosen
        return {"Q2_K": "Q3_K", "Q3_K_M": "Q4_K", "Q3_K_L": "Q5_K"}.get(quant, chosen)
    return chosen


def tensor_type(arch: Architecture, quant: str, spec: TensorSpec) -> str:
    """The GGML type llama.cpp's quantizer gives this tensor in a `quant` file (see the module docstring)."""
    default = FILE_TYPES[supported_quant(quant)]
    if len(spec.shape) < 2 or not spec.name.endswith("weight") or "ffn_gate_inp.weight" in spec.name:
        # norms, biases (gpt-oss's per-expert biases are 2-D) and routers: F32 in every file, as converters write them
        return "F32"
    if default in FLOAT_TYPES:
        return default
    if not _quantizable(spec):
        return "F16"  # position embeddings: the F16 of the file they were quantized from
    chosen = _mix(arch, quant, spec, default)
    n_columns = spec.shape[-1]
    if not _fits(chosen, n_columns):
        chosen = _FALLBACK.get(chosen, chosen)
        if not _fits(chosen, n_columns):
            chosen = "F16"
    return chosen


def tensor_bytes(shape: tuple[int, ...], ggml_type: str) -> int:
    weights, nbytes = block_size(ggml_type)
    return math.prod(shape) // weights * nbytes


def weight_bytes(arch: Architecture, quant: str) -> int:
    """Bytes of tensor data (without alignment padding) in a `quant` file of this architecture."""
    return sum(tensor_bytes(spec.shape, tensor_type(arch, quant, spec)) for spec in tensors(arch))


def file_bits_per_weight(arch: Architecture, quant: str) -> float:
    """Average bits per weight of the llama.cpp mix for this architecture (Q4_K_M is about 4.8 on a 7B)."""
    return 8 * weight_bytes(arch, quant) / n_params(arch)
