"""Bytes per weight of GGUF tensor types, and the tensor type llama.cpp's quantizer gives each tensor of a file.

Block sizes come from the `gguf` package (`GGML_QUANT_SIZES[type] == (weights per block, bytes per block)`),
llama.cpp's own table. A file type such as Q4_K_M is a mix, so its size is not one bytes-per-weight figure:
`tensor_type` follows llama.cpp's `llama_tensor_get_type` (src/llama-quant.cpp, as vendored in
llama-cpp-python 0.3.36) for the file types listed in FILE_TYPES, with llama.cpp's defaults (no imatrix,
no overrides):
- 1-D tensors (norms, biases) stay F32; position embeddings are not quantized (F16).
- output.weight (token_embd.weight when the embeddings are tied) becomes Q6_K, or stays Q8_0 for a Q8_0 file,
  or Q8_0 when its rows do not split into the file type's blocks.
- Q4_K_M and Q5_K_M: attn_v and ffn_down of the first and last eighth of the layers, and of every third layer
  in between, become Q6_K; Q4_K_S: attn_v of the first 4 layers and ffn_down of the first eighth become Q5_K;
  Q4_K_M gives a fused attn_qkv Q5_K and Q5_K_M gives it Q6_K; a Llama 70B's attn_v goes from Q4_K to Q5_K.
- A tensor whose rows do not split into 256-weight blocks falls back: Q4_K to Q5_0, Q5_K to Q5_1, Q6_K to
  Q8_0, and to F16 when even 32-weight blocks do not fit.
`file_bits_per_weight` gives the resulting average for an architecture.
"""

import math

from fleetfit.models.catalogue import Architecture, TensorSpec, n_params, tensors
from fleetfit.models.errors import ModelError
from fleetfit.models.quants import parse_quant

# File type -> the tensor type llama.cpp quantizes most weights to (llama_model_quantize_impl's default_type).
FILE_TYPES = {
    "F32": "F32", "F16": "F16", "BF16": "BF16", "Q8_0": "Q8_0", "Q6_K": "Q6_K",
    "Q5_K_M": "Q5_K", "Q5_K_S": "Q5_K", "Q5_1": "Q5_1", "Q5_0": "Q5_0",
    "Q4_K_M": "Q4_K", "Q4_K_S": "Q4_K", "Q4_1": "Q4_1", "Q4_0": "Q4_0",
}
FLOAT_TYPES = ("F32", "F16", "BF16")
_FALLBACK = {"Q4_K": "Q5_0", "Q5_K": "Q5_1", "Q6_K": "Q8_0"}  # llama-quant.cpp tensor_type_fallback


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


def tensor_type(arch: Architecture, quant: str, spec: TensorSpec) -> str:
    """The GGML type llama.cpp's quantizer gives this tensor in a `quant` file (see the module docstring)."""
    default = FILE_TYPES[supported_quant(quant)]
    if len(spec.shape) < 2:
        return "F32"
    if default in FLOAT_TYPES:
        return default
    if spec.name == "position_embd.weight":
        return "F16"
    n_columns = spec.shape[-1]
    chosen = default
    if spec.name == "output.weight" or (arch.tied_embeddings and spec.name == "token_embd.weight"):
        chosen = "Q8_0" if not _fits(default, n_columns) or default == "Q8_0" else "Q6_K"
    elif spec.name.startswith("blk."):
        _, layer, part, _ = spec.name.split(".")
        more_bits = _use_more_bits(int(layer), arch.n_layers)
        if part == "attn_v":
            if quant in ("Q4_K_M", "Q5_K_M") and more_bits:
                chosen = "Q6_K"
            elif quant == "Q4_K_S" and int(layer) < 4:
                chosen = "Q5_K"
            is_70b = arch.n_layers == 80 and (arch.family == "qwen2" or arch.n_heads != arch.n_kv_heads)
            if is_70b and chosen == "Q4_K":
                chosen = "Q5_K"
        elif part == "ffn_down":
            if quant in ("Q4_K_M", "Q5_K_M") and more_bits:
                chosen = "Q6_K"
            elif quant == "Q4_K_S" and int(layer) < arch.n_layers // 8:
                chosen = "Q5_K"
        elif part == "attn_qkv" and quant in ("Q4_K_M", "Q5_K_M"):
            chosen = "Q5_K" if quant == "Q4_K_M" else "Q6_K"
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
