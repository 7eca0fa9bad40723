"""A compact Llama-family model in plain PyTorch (after gpt-fast): static KV cache, meta-device init, weights
from a GGUF file or random on the target device, and weight-only int8 / int4 linear layers.

Imported only by torch_runtime.py (and onnx_runtime.py's export), inside the isolated worker. Tensor names and
the rope layout follow llama.cpp's GGUF: convert_hf_to_gguf permutes the q/k rows so that rope rotates
adjacent pairs (2i, 2i+1), which is what `apply_rope` does, so GGUF weights load as stored.
"""

import dataclasses

import torch
from torch import nn
from torch.nn import functional as F

from fleetfit.models.backends import backend
from fleetfit.models.gguf_file import open_gguf

PRECISIONS = backend("torch").precisions
FLOAT_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
INT4_GROUP_SIZES = (128, 64, 32)  # the largest that divides a layer's input features is used


class UnsupportedPrecision(ValueError):
    """This precision cannot run on this device (or this layer shape); the message says why."""


@dataclasses.dataclass(frozen=True)
class Config:
    n_layers: int
    hidden: int
    n_heads: int
    n_kv_heads: int
    ffn: int
    vocab: int
    rope_theta: float
    norm_eps: float
    tied_embeddings: bool
    qkv_bias: bool = False

    @property
    def head_dim(self) -> int:
        return self.hidden // self.n_heads

    @classmethod
    def of(cls, arch) -> "Config":
        """From a models.catalogue.Architecture (llama and qwen2 families)."""
        if arch.family not in ("llama", "qwen2"):
            raise UnsupportedPrecision(f"{arch.name}: the torch backend runs Llama-family models, not {arch.family}")
        if arch.head_dim * arch.n_heads != arch.hidden:
            raise UnsupportedPrecision(f"{arch.name}: the torch backend needs head_dim x n_heads = hidden "
                                       f"({arch.head_dim} x {arch.n_heads} != {arch.hidden})")
        return cls(arch.n_layers, arch.hidden, arch.n_heads, arch.n_kv_heads, arch.ffn, arch.vocab, arch.rope_theta,
                   arch.norm_eps, arch.tied_embeddings, arch.has_qkv_bias)


class RMSNorm(nn.Module):
    """Written out (not nn.RMSNorm) so that the ONNX exporter sees plain ops."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps, self.weight = eps, nn.Parameter(torch.ones(dim))

    def forward(self, x):
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).type_as(x) * self.weight


class KVCache(nn.Module):
    def __init__(self, n_kv_heads: int, max_seq: int, head_dim: int, dtype: torch.dtype, device, batch: int = 1):
        super().__init__()
        shape = (batch, n_kv_heads, max_seq, head_dim)
        self.register_buffer("k", torch.zeros(shape, dtype=dtype, device=device), persistent=False)
        self.register_buffer("v", torch.zeros(shape, dtype=dtype, device=device), persistent=False)

    def update(self, pos: torch.Tensor, k: torch.Tensor, v: torch.Tensor):
        self.k[:, :, pos] = k
        self.v[:, :, pos] = v
        return self.k, self.v


class Attention(nn.Module):
    def __init__(self, c: Config):
        super().__init__()
        self.c = c
        self.wq = nn.Linear(c.hidden, c.hidden, bias=c.qkv_bias)
        self.wk = nn.Linear(c.hidden, c.n_kv_heads * c.head_dim, bias=c.qkv_bias)
        self.wv = nn.Linear(c.hidden, c.n_kv_heads * c.head_dim, bias=c.qkv_bias)
        self.wo = nn.Linear(c.hidden, c.hidden, bias=False)
        self.cache: KVCache | None = None

    def forward(self, x, rope, mask, pos):
        b, t, _ = x.shape
        c = self.c
        q = apply_rope(self.wq(x).view(b, t, c.n_heads, c.head_dim), rope).transpose(1, 2)
        k = apply_rope(self.wk(x).view(b, t, c.n_kv_heads, c.head_dim), rope).transpose(1, 2)
        v = self.wv(x).view(b, t, c.n_kv_heads, c.head_dim).transpose(1, 2)
        k, v = self.cache.update(pos, k, v)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=c.n_heads != c.n_kv_heads)
        return self.wo(y.transpose(1, 2).reshape(b, t, c.hidden))


class Block(nn.Module):
    def __init__(self, c: Config):
        super().__init__()
        self.attn_norm = RMSNorm(c.hidden, eps=c.norm_eps)
        self.attn = Attention(c)
        self.ffn_norm = RMSNorm(c.hidden, eps=c.norm_eps)
        self.gate = nn.Linear(c.hidden, c.ffn, bias=False)
        self.up = nn.Linear(c.hidden, c.ffn, bias=False)
        self.down = nn.Linear(c.ffn, c.hidden, bias=False)

    def forward(self, x, rope, mask, pos):
        x = x + self.attn(self.attn_norm(x), rope, mask, pos)
        h = self.ffn_norm(x)
        return x + self.down(F.silu(self.gate(h)) * self.up(h))


class Transformer(nn.Module):
    def __init__(self, c: Config):
        super().__init__()
        self.c = c
        self.embed = nn.Embedding(c.vocab, c.hidden)
        self.layers = nn.ModuleList(Block(c) for _ in range(c.n_layers))
        self.norm = RMSNorm(c.hidden, eps=c.norm_eps)
        self.output = nn.Linear(c.hidden, c.vocab, bias=False)
        self.max_seq = 0

    def setup_cache(self, max_seq: int, batch: int = 1) -> None:
        """Allocate the static KV cache (for `batch` sequences of max_seq tokens) and the rope table on the model's
        device, in its dtype."""
        device, dtype = self.embed.weight.device, self.embed.weight.dtype
        self.max_seq = max_seq
        for layer in self.layers:
            layer.attn.cache = None  # the old cache goes before the new one is allocated
            layer.attn.cache = KVCache(self.c.n_kv_heads, max_seq, self.c.head_dim, dtype, device, batch)
        exponents = torch.arange(0, self.c.head_dim, 2, device=device).float() / self.c.head_dim
        freqs = 1.0 / (self.c.rope_theta ** exponents)
        angles = torch.outer(torch.arange(max_seq, device=device).float(), freqs)
        self.rope = torch.stack([angles.cos(), angles.sin()], -1)  # (max_seq, head_dim/2, 2), float32
        self.causal = torch.ones(max_seq, max_seq, dtype=torch.bool, device=device).tril()

    def clear_cache(self) -> None:
        for layer in self.layers:
            layer.attn.cache.k.zero_()
            layer.attn.cache.v.zero_()

    def forward(self, tokens: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """Logits of the last position of each sequence for tokens (batch, t) placed at cache positions `pos` (t,)."""
        x = self.embed(tokens)
        mask = self.causal[pos][None, None]
        rope = self.rope[pos]
        for layer in self.layers:
            x = layer(x, rope, mask, pos)
        return self.output(self.norm(x[:, -1:])).float()


def apply_rope(x: torch.Tensor, rope: torch.Tensor) -> torch.Tensor:
    """Rotate adjacent pairs (x[2i], x[2i+1]) of each head: x (b, t, heads, head_dim), rope (t, head_dim/2, 2)."""
    xs = x.float().reshape(*x.shape[:-1], -1, 2)
    cos, sin = rope[None, :, None, :, 0], rope[None, :, None, :, 1]
    out = torch.stack([xs[..., 0] * cos - xs[..., 1] * sin, xs[..., 1] * cos + xs[..., 0] * sin], -1)
    return out.flatten(3).type_as(x)


# ---- weights ------------------------------------------------------------------------------------

def _gguf_names(c: Config) -> dict[str, str]:
    """Our parameter name -> llama.cpp's GGUF tensor name."""
    names = {"embed.weight": "token_embd.weight", "norm.weight": "output_norm.weight",
             "output.weight": "token_embd.weight" if c.tied_embeddings else "output.weight"}
    parts = {"attn_norm.weight": "attn_norm.weight", "attn.wq": "attn_q", "attn.wk": "attn_k", "attn.wv": "attn_v",
             "attn.wo.weight": "attn_output.weight", "ffn_norm.weight": "ffn_norm.weight",
             "gate.weight": "ffn_gate.weight", "up.weight": "ffn_up.weight", "down.weight": "ffn_down.weight"}
    for i in range(c.n_layers):
        for ours, theirs in parts.items():
            if ours.startswith("attn.w") and ours != "attn.wo.weight":
                names[f"layers.{i}.{ours}.weight"] = f"blk.{i}.{theirs}.weight"
                if c.qkv_bias:
                    names[f"layers.{i}.{ours}.bias"] = f"blk.{i}.{theirs}.bias"
            else:
                names[f"layers.{i}.{ours}"] = f"blk.{i}.{theirs}"
    return names


def config_from_gguf(reader) -> Config:
    def field(key):
        f = reader.fields[key]
        return f.contents()

    arch = field("general.architecture")
    if arch not in ("llama", "qwen2"):
        raise UnsupportedPrecision(f"the torch backend runs Llama-family GGUFs, not {arch!r}")
    names = {t.name for t in reader.tensors}
    n_heads = int(field(f"{arch}.attention.head_count"))
    return Config(
        n_layers=int(field(f"{arch}.block_count")), hidden=int(field(f"{arch}.embedding_length")), n_heads=n_heads,
        n_kv_heads=int(field(f"{arch}.attention.head_count_kv")) if f"{arch}.attention.head_count_kv" in reader.fields
        else n_heads,
        ffn=int(field(f"{arch}.feed_forward_length")),
        vocab=next(t for t in reader.tensors if t.name == "token_embd.weight").shape[-1].item(),
        rope_theta=float(field(f"{arch}.rope.freq_base")) if f"{arch}.rope.freq_base" in reader.fields else 10000.0,
        norm_eps=float(field(f"{arch}.attention.layer_norm_rms_epsilon")),
        tied_embeddings="output.weight" not in names, qkv_bias="blk.0.attn_q.bias" in names,
    )


def load_gguf(path: str, device: str, dtype: torch.dtype) -> Transformer:
    """The model with its weights read from a GGUF file and dequantized by the gguf package."""
    import gguf

    reader = open_gguf(path)
    c = config_from_gguf(reader)
    tensors = {t.name: t for t in reader.tensors}
    with torch.device("meta"):
        model = Transformer(c)
    state = {}
    for ours, theirs in _gguf_names(c).items():
        if ours == "output.weight" and c.tied_embeddings:
            continue
        t = tensors[theirs]
        array = gguf.quants.dequantize(t.data, t.tensor_type).reshape([int(d) for d in reversed(t.shape)])
        state[ours] = torch.from_numpy(array.astype("float32")).to(device=device, dtype=dtype)
    if c.tied_embeddings:
        state["output.weight"] = state["embed.weight"]
    model.load_state_dict(state, assign=True)
    if c.tied_embeddings:
        model.output.weight = model.embed.weight
    return model.eval()


def random_model(c: Config, device: str, dtype: torch.dtype, seed: int = 0) -> Transformer:
    """Random weights created directly on `device` (meta init, then materialized there: no CPU copy)."""
    with torch.device("meta"):
        model = Transformer(c).to(dtype)
    for name, child in model.named_children():  # a tied output is not materialized: it is the embedding
        if not (c.tied_embeddings and name == "output"):
            child.to_empty(device=device)
    if c.tied_embeddings:
        model.output.weight = model.embed.weight
    generator = torch.Generator(device=device).manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.fill_(1.0)
            elif name.endswith("bias"):
                p.zero_()
            else:
                p.normal_(0.0, 0.02, generator=generator)
    return model.eval()


# ---- weight-only quantization --------------------------------------------------------------------

class Int8Linear(nn.Module):
    """Per-output-channel symmetric int8 weights; torch's `_weight_int8pack_mm` kernel."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        w = linear.weight.detach().float()
        scales = w.abs().amax(dim=1).clamp(min=1e-8) / 127.0
        self.register_buffer("weight", (w / scales[:, None]).round().clamp(-128, 127).to(torch.int8))
        self.register_buffer("scales", scales.to(linear.weight.dtype))
        self.bias = linear.bias

    def forward(self, x):
        y = torch.ops.aten._weight_int8pack_mm(x.reshape(-1, x.shape[-1]), self.weight, self.scales.to(x.dtype))
        y = y.reshape(*x.shape[:-1], -1)
        return y + self.bias if self.bias is not None else y


class Int4Linear(nn.Module):
    """Group-wise asymmetric int4 weights (gpt-fast's layout: w = (q - 8) * scale + zero per group);
    torch's `_weight_int4pack_mm_for_cpu` on CPU, `_weight_int4pack_mm` (bfloat16) on CUDA."""

    def __init__(self, linear: nn.Linear, inner_k_tiles: int = 8):
        super().__init__()
        w = linear.weight.detach().float()
        out_f, in_f = w.shape
        self.group = next((g for g in INT4_GROUP_SIZES if in_f % g == 0), None)
        if self.group is None:
            raise UnsupportedPrecision(f"int4: input features {in_f} are not a multiple of 32")
        groups = w.reshape(out_f, -1, self.group)
        lo, hi = groups.amin(-1), groups.amax(-1)
        scales = (hi - lo).clamp(min=1e-6) / 15
        zeros = lo + scales * 8
        q = ((groups - lo[..., None]) / scales[..., None]).round().clamp(0, 15).to(torch.int32).reshape(out_f, in_f)
        self.cuda = w.is_cuda
        if self.cuda:
            if in_f % (inner_k_tiles * 16):
                raise UnsupportedPrecision(f"int4 on CUDA: input features {in_f} are not a multiple of "
                                           f"{inner_k_tiles * 16}")
            packed = torch.ops.aten._convert_weight_to_int4pack((q[:, ::2] << 4 | q[:, 1::2]).to(torch.uint8),
                                                                 inner_k_tiles)
            dtype = torch.bfloat16
        else:
            packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, inner_k_tiles)
            dtype = linear.weight.dtype
        self.register_buffer("weight", packed)
        scales_and_zeros = torch.stack([scales, zeros], -1).transpose(0, 1).contiguous()  # (groups, out, 2)
        self.register_buffer("scales_and_zeros", scales_and_zeros.to(dtype))
        self.out_features = out_f
        self.bias = linear.bias

    def forward(self, x):
        flat = x.reshape(-1, x.shape[-1])
        if self.cuda:
            y = torch.ops.aten._weight_int4pack_mm(flat.to(torch.bfloat16), self.weight, self.group,
                                                   self.scales_and_zeros).to(x.dtype)
        else:
            y = torch.ops.aten._weight_int4pack_mm_for_cpu(flat, self.weight, self.group,
                                                           self.scales_and_zeros.to(x.dtype))
        y = y.reshape(*x.shape[:-1], self.out_features)
        return y + self.bias if self.bias is not None else y


def quantize_(model: Transformer, precision: str) -> Transformer:
    """Replace every nn.Linear (the output projection included) with its weight-only quantized form."""
    kind = {"int8": Int8Linear, "int4": Int4Linear}[precision]
    with torch.no_grad():
        for module in list(model.modules()):
            for name, child in list(module.named_children()):
                if isinstance(child, nn.Linear):
                    setattr(module, name, kind(child))
    return model


def weight_bytes(model: Transformer, per_token: bool = False) -> int:
    """Bytes of the weights held (a tied tensor once, the KV cache excluded); with per_token, those one decode
    step reads (models/roofline.token_reads: the embedding table is a lookup of one row unless the output
    projection shares it)."""
    from fleetfit.models.roofline import token_reads

    seen, total = set(), 0.0
    lookup = getattr(model.output, "weight", None) is not model.embed.weight
    for name, t in list(model.named_parameters()) + list(model.named_buffers()):
        if ".cache." in name or t.data_ptr() in seen:
            continue
        seen.add(t.data_ptr())
        n_bytes = t.numel() * t.element_size()
        total += token_reads(n_bytes, t.shape[0], lookup=True) if per_token and name == "embed.weight" and lookup \
            else n_bytes
    return int(total)
