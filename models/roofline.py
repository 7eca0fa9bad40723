"""What one decoded token costs a model in bytes moved and FLOPs, and where that puts it on a roofline.

Decode reads every weight once per token (the token-embedding table only for one row, unless the
output projection is tied to it, as in SmolLM2, and reads all of it; of a mixture of experts only the
expert_used_count experts of expert_count a token is routed to) plus the KV cache up to the
current position, grouped-query aware: 2 · layers · n_kv_heads · head_dim · context · bytes.
FLOPs: 2 per weight used in a matrix product, plus 4 · layers · n_heads · head_dim · context for
attention (QK^T and the weighted sum of V). Architecture numbers come from the GGUF metadata.
"""

import dataclasses
import pathlib

from fleetfit.models.errors import ModelError

KV_CACHE_BYTES_PER_ELEMENT = 2  # llama.cpp's default KV cache type is F16
METHOD = ("bytes/token = GGUF weight tensor bytes read per token + F16 KV cache (GQA-aware) at the mean decode "
          "context; FLOPs/token = 2 x weights used + attention; achieved = bytes/token x mean decode tok/s")


@dataclasses.dataclass(frozen=True)
class ModelShape:
    architecture: str
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    weight_bytes_per_token: int  # weight tensor bytes read to decode one token
    matmul_params_per_token: int  # weights that take part in a matrix product for one token


def token_reads(n_bytes: float, rows: int = 1, lookup: bool = False, routed: float = 1.0) -> float:
    """Bytes of one weight tensor that decoding one token reads: one of its `rows` rows when the tensor is only
    looked up (a token-embedding table that is not also the output projection), the routed share of a mixture's
    expert tensor (`routed`: experts used / experts), else all of it. The one rule behind the roofline of a GGUF
    file (model_shape), the scaling model's catalogue shapes (models/backends.py) and the torch backend's figures."""
    return (n_bytes / max(rows, 1) if lookup else n_bytes) * routed


def _field(reader, key: str):
    field = reader.fields.get(key)
    return None if field is None else field.contents()


def model_shape(path: pathlib.Path | str) -> ModelShape:
    """Read the architecture numbers and per-tensor bytes from a GGUF file's header."""
    from fleetfit.models.gguf_file import open_gguf

    reader = open_gguf(path)  # bounded; a damaged or crafted file is a one-line ModelError
    arch = str(_field(reader, "general.architecture") or "")
    numbers = {key: _field(reader, f"{arch}.{key}") for key in
               ("block_count", "attention.head_count", "attention.head_count_kv", "embedding_length")}
    missing = [f"{arch}.{key}" for key, value in numbers.items() if value is None and key != "attention.head_count_kv"]
    if missing:
        raise ModelError(f"GGUF metadata lacks {', '.join(missing)}: {path}")
    n_heads = int(numbers["attention.head_count"])
    n_kv_heads = int(numbers["attention.head_count_kv"] or n_heads)  # absent = no grouping
    key_length = _field(reader, f"{arch}.attention.key_length")
    head_dim = int(key_length) if key_length is not None else int(numbers["embedding_length"]) // n_heads

    tensors = {t.name: (int(t.n_bytes), int(t.n_elements), [int(d) for d in t.shape]) for t in reader.tensors}
    tied = "output.weight" not in tensors
    n_experts, n_used = _field(reader, f"{arch}.expert_count"), _field(reader, f"{arch}.expert_used_count")
    routed = n_used / n_experts if isinstance(n_experts, int) and isinstance(n_used, int) and 0 < n_used <= n_experts \
        else 1.0  # a token reads only the experts it is routed to
    weight_bytes, matmul_params = 0, 0
    for name, (n_bytes, n_elements, shape) in tensors.items():
        if name == "token_embd.weight" and not tied:
            weight_bytes += int(token_reads(n_bytes, shape[-1] if len(shape) > 1 else 1, lookup=True))
            continue
        share = routed if "_exps." in name else 1.0
        weight_bytes += int(token_reads(n_bytes, routed=share))
        if len(shape) > 1 and name.endswith("weight"):  # norms and biases are not matrix products
            matmul_params += int(n_elements * share)
    return ModelShape(arch, int(numbers["block_count"]), n_heads, n_kv_heads, head_dim, weight_bytes, matmul_params)


def kv_cache_bytes(shape: ModelShape, context_tokens: float, bytes_per_element: int = KV_CACHE_BYTES_PER_ELEMENT) -> float:
    """K and V of every layer for `context_tokens` positions: 2 · layers · n_kv_heads · head_dim · context · bytes."""
    return 2 * shape.n_layers * shape.n_kv_heads * shape.head_dim * context_tokens * bytes_per_element


def mean_decode_context(n_gen: int, n_past: int = 0) -> float:
    """llama-bench's tg test decodes from position n_past to n_past + n_gen - 1: attention sees 1 .. n_gen positions."""
    return n_past + (n_gen + 1) / 2


@dataclasses.dataclass(frozen=True)
class RooflinePoint:
    weight_bytes_per_token: float
    kv_cache_bytes_per_token: float
    flops_per_token: float
    achieved_gb_per_s: float | None
    percent_of_bandwidth: float | None
    ridge_flop_per_byte: float | None
    bottleneck: str | None  # "memory" | "compute" | None when the device's peaks are unknown

    @property
    def bytes_per_token(self) -> float:
        return self.weight_bytes_per_token + self.kv_cache_bytes_per_token

    @property
    def arithmetic_intensity(self) -> float:
        return self.flops_per_token / self.bytes_per_token


def roofline(shape: ModelShape, context_tokens: float, decode_tokens_per_s: float | None,
             bandwidth_gb_per_s: float | None, peak_gflop_per_s: float | None) -> RooflinePoint:
    kv = kv_cache_bytes(shape, context_tokens)
    flops = 2 * shape.matmul_params_per_token + 4 * shape.n_layers * shape.n_heads * shape.head_dim * context_tokens
    bytes_per_token = shape.weight_bytes_per_token + kv
    achieved = bytes_per_token * decode_tokens_per_s / 1e9 if decode_tokens_per_s else None
    percent = 100 * achieved / bandwidth_gb_per_s if achieved is not None and bandwidth_gb_per_s else None
    ridge = peak_gflop_per_s / bandwidth_gb_per_s if peak_gflop_per_s and bandwidth_gb_per_s else None
    bottleneck = None if ridge is None else ("memory" if flops / bytes_per_token < ridge else "compute")
    return RooflinePoint(shape.weight_bytes_per_token, kv, flops, achieved, percent, ridge, bottleneck)
