"""Real model architectures with their exact shapes, and the tensors llama.cpp builds for each.

Every shape is the model's published Hugging Face config.json (the `source` of each entry); the parameter
count computed from the tensor list matches the published count (tests/models/test_catalogue.py).

distilgpt2 is catalogued as what it is, a GPT-2 (llama.cpp's `gpt2` architecture: learned position
embeddings, fused QKV with biases, LayerNorm with biases, GELU MLP without a gate), not a Llama-shaped
stand-in, because llama.cpp runs GPT-2 GGUFs.
"""

import dataclasses
import difflib
import math

from fleetfit.models.errors import ModelError

FAMILIES = ("llama", "qwen2", "gpt2")  # llama.cpp's `general.architecture` values that we write
MAX_PARAMS = 10**12  # past a trillion parameters a shape is a typo, not a model to build on a device


@dataclasses.dataclass(frozen=True)
class TensorSpec:
    name: str  # llama.cpp's tensor name, e.g. "blk.0.attn_q.weight"
    shape: tuple[int, ...]  # numpy order (rows, columns); GGUF stores the dimensions reversed


@dataclasses.dataclass(frozen=True)
class Architecture:
    name: str
    family: str  # one of FAMILIES
    n_layers: int
    hidden: int
    n_heads: int
    n_kv_heads: int
    ffn: int  # intermediate size of the MLP
    vocab: int
    context_length: int  # tokens the model was trained for
    tied_embeddings: bool  # the output projection reuses token_embd.weight
    rope_theta: float | None  # None: learned position embeddings (gpt2)
    norm_eps: float  # RMSNorm epsilon (LayerNorm epsilon for gpt2)
    source: str  # where the shape comes from
    stands_in_for: str | None = None  # set when the shape imitates another model instead of being it

    def __post_init__(self):
        if self.family not in FAMILIES:
            raise ModelError(f"{self.name}: unknown architecture family {self.family!r} (known: {', '.join(FAMILIES)})")
        for field in ("n_layers", "hidden", "n_heads", "n_kv_heads", "ffn", "vocab", "context_length"):
            value = getattr(self, field)
            if not isinstance(value, int) or value <= 0:
                raise ModelError(f"{self.name}: {field} must be a positive integer, got {value!r}")
        if self.hidden % self.n_heads or self.n_heads % self.n_kv_heads:
            raise ModelError(f"{self.name}: hidden ({self.hidden}) must split into n_heads ({self.n_heads}) "
                             f"and n_heads into n_kv_heads ({self.n_kv_heads})")
        if n_params(self) > MAX_PARAMS:
            raise ModelError(f"{self.name}: {n_params(self):,} parameters is over the limit of {MAX_PARAMS:,}")

    @property
    def head_dim(self) -> int:
        return self.hidden // self.n_heads  # no catalogued model sets a different head_dim

    @property
    def kv_dim(self) -> int:
        return self.n_kv_heads * self.head_dim

    @property
    def has_qkv_bias(self) -> bool:
        return self.family in ("qwen2", "gpt2")


def tensors(arch: Architecture) -> list[TensorSpec]:
    """The tensors llama.cpp loads for this architecture (src/models/llama.cpp, qwen2.cpp, gpt2.cpp), in file order."""
    h, kv, ff = arch.hidden, arch.kv_dim, arch.ffn
    specs = [TensorSpec("token_embd.weight", (arch.vocab, h))]
    if arch.family == "gpt2":
        specs.append(TensorSpec("position_embd.weight", (arch.context_length, h)))
    for i in range(arch.n_layers):
        if arch.family == "gpt2":
            for part, shape in (("attn_norm", (h,)), ("attn_qkv", (h + 2 * kv, h)), ("attn_output", (h, h)),
                                ("ffn_norm", (h,)), ("ffn_up", (ff, h)), ("ffn_down", (h, ff))):
                specs.append(TensorSpec(f"blk.{i}.{part}.weight", shape))
                specs.append(TensorSpec(f"blk.{i}.{part}.bias", (shape[0],)))
            continue
        specs.append(TensorSpec(f"blk.{i}.attn_norm.weight", (h,)))
        for part, rows in (("attn_q", h), ("attn_k", kv), ("attn_v", kv)):
            specs.append(TensorSpec(f"blk.{i}.{part}.weight", (rows, h)))
            if arch.has_qkv_bias:
                specs.append(TensorSpec(f"blk.{i}.{part}.bias", (rows,)))
        specs += [
            TensorSpec(f"blk.{i}.attn_output.weight", (h, h)),
            TensorSpec(f"blk.{i}.ffn_norm.weight", (h,)),
            TensorSpec(f"blk.{i}.ffn_gate.weight", (ff, h)),
            TensorSpec(f"blk.{i}.ffn_up.weight", (ff, h)),
            TensorSpec(f"blk.{i}.ffn_down.weight", (h, ff)),
        ]
    specs.append(TensorSpec("output_norm.weight", (h,)))
    if arch.family == "gpt2":
        specs.append(TensorSpec("output_norm.bias", (h,)))
    if not arch.tied_embeddings:
        specs.append(TensorSpec("output.weight", (arch.vocab, h)))
    return specs


def n_params(arch: Architecture) -> int:
    """Parameters computed from the shape: the elements of every tensor llama.cpp loads."""
    return sum(math.prod(spec.shape) for spec in tensors(arch))


def _hf(repo: str) -> str:
    return f"https://huggingface.co/{repo}/blob/main/config.json"


def _llama(name, repo, n_layers, hidden, n_heads, n_kv_heads, ffn, vocab, context_length, tied, rope_theta,
           norm_eps=1e-5, family="llama") -> Architecture:
    return Architecture(name=name, family=family, n_layers=n_layers, hidden=hidden, n_heads=n_heads,
                        n_kv_heads=n_kv_heads, ffn=ffn, vocab=vocab, context_length=context_length,
                        tied_embeddings=tied, rope_theta=rope_theta, norm_eps=norm_eps, source=_hf(repo))


CATALOGUE = {arch.name: arch for arch in (
    Architecture(name="distilgpt2", family="gpt2", n_layers=6, hidden=768, n_heads=12, n_kv_heads=12, ffn=3072,
                 vocab=50257, context_length=1024, tied_embeddings=True, rope_theta=None, norm_eps=1e-5,
                 source=_hf("distilbert/distilgpt2")),
    _llama("smollm2-135m", "HuggingFaceTB/SmolLM2-135M", 30, 576, 9, 3, 1536, 49152, 8192, True, 100000.0),
    _llama("smollm2-360m", "HuggingFaceTB/SmolLM2-360M", 32, 960, 15, 5, 2560, 49152, 8192, True, 100000.0),
    _llama("smollm2-1.7b", "HuggingFaceTB/SmolLM2-1.7B", 24, 2048, 32, 32, 8192, 49152, 8192, True, 130000.0),
    _llama("tinyllama-1.1b", "TinyLlama/TinyLlama-1.1B-intermediate-step-1431k-3T", 22, 2048, 32, 4, 5632, 32000,
           2048, False, 10000.0),
    _llama("llama-3.2-1b", "meta-llama/Llama-3.2-1B", 16, 2048, 32, 8, 8192, 128256, 131072, True, 500000.0),
    _llama("llama-3.2-3b", "meta-llama/Llama-3.2-3B", 28, 3072, 24, 8, 8192, 128256, 131072, True, 500000.0),
    _llama("llama-2-7b", "meta-llama/Llama-2-7b-hf", 32, 4096, 32, 32, 11008, 32000, 4096, False, 10000.0),
    _llama("llama-2-13b", "meta-llama/Llama-2-13b-hf", 40, 5120, 40, 40, 13824, 32000, 4096, False, 10000.0),
    _llama("llama-2-70b", "meta-llama/Llama-2-70b-hf", 80, 8192, 64, 8, 28672, 32000, 4096, False, 10000.0),
    _llama("llama-3.1-8b", "meta-llama/Llama-3.1-8B", 32, 4096, 32, 8, 14336, 128256, 131072, False, 500000.0),
    _llama("mistral-7b", "mistralai/Mistral-7B-v0.1", 32, 4096, 32, 8, 14336, 32000, 32768, False, 10000.0),
    _llama("qwen2.5-0.5b", "Qwen/Qwen2.5-0.5B", 24, 896, 14, 2, 4864, 151936, 32768, True, 1000000.0,
           norm_eps=1e-6, family="qwen2"),
    _llama("qwen2.5-7b", "Qwen/Qwen2.5-7B", 28, 3584, 28, 4, 18944, 152064, 131072, False, 1000000.0,
           norm_eps=1e-6, family="qwen2"),
)}


def architecture(name: str) -> Architecture:
    """The catalogued architecture, or a ModelError that suggests the nearest names."""
    key = name.strip().lower()
    if key in CATALOGUE:
        return CATALOGUE[key]
    near = difflib.get_close_matches(key, list(CATALOGUE), n=3, cutoff=0.5)
    hint = f" (did you mean {', '.join(near)}?)" if near else f" (known: {', '.join(CATALOGUE)})"
    raise ModelError(f"unknown architecture {name!r}{hint}")
