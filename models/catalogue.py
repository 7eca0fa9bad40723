"""Real model architectures with their exact shapes, and the tensors llama.cpp builds for each.

Every shape is the model's published Hugging Face config.json (the `source` of each entry); the parameter
count computed from the tensor list matches the published count (tests/models/test_catalogue.py).

Families are llama.cpp's `general.architecture` values, and `tensors` follows the tensor list each one's
loader creates (llama.cpp src/models/<family>.cpp, build 0c1e570):
- llama (Llama, Mistral, SmolLM2, TinyLlama; Mistral-Nemo with an explicit head_dim), qwen2 (Q/K/V biases),
  qwen3 (per-head RMSNorm of Q and K, explicit head_dim), gemma3 (qk-norm plus norms after attention and
  MLP, embeddings always tied), phi3 (fused QKV, fused gate+up, partial rotary), gpt2 (learned positions,
  fused QKV with biases, LayerNorm with biases, GELU MLP without a gate);
- mixture of experts: qwen3moe (a router and n_experts gate/up/down experts per layer, n_experts_used of
  them active per token) and gpt-oss (the same with biases on everything, attention sinks, MXFP4 experts
  in the published files). `n_params` counts every expert (what memory holds); `active_params` counts the
  n_experts_used a token is routed to (what decode reads).

distilgpt2 is catalogued as what it is, a GPT-2, not a Llama-shaped stand-in, because llama.cpp runs GPT-2
GGUFs. Phi-3's rope_factors_long/short (longrope tables of head_dim·partial/2 values) are left out: llama.cpp
treats them as optional, they are not parameters in the published counts, and they do not change speed or
memory. Shared experts (DeepSeek, Qwen2-MoE) are not modelled.
"""

import dataclasses
import difflib
import functools
import math

from fleetfit.models.errors import ModelError

# llama.cpp's `general.architecture` values that we write and size
FAMILIES = ("llama", "qwen2", "qwen3", "qwen3moe", "gemma3", "phi3", "gpt2", "gpt-oss")
MOE_FAMILIES = ("qwen3moe", "gpt-oss")
QK_NORM_FAMILIES = ("qwen3", "qwen3moe", "gemma3")
MAX_PARAMS = 10**12  # past a trillion parameters a shape is a typo, not a model to build on a device
MAX_EXPERTS = 1024
# Bounds on each number, beyond any real model's, checked before the tensor list is built: a shape from a file or
# the wire with 2^31 layers is refused at once instead of looping.
MAX_SIZES = {"n_layers": 1024, "hidden": 1 << 17, "n_heads": 1 << 12, "n_kv_heads": 1 << 12, "ffn": 1 << 20,
             "vocab": 1 << 22, "context_length": 1 << 24, "explicit_head_dim": 1 << 13, "sliding_window": 1 << 24}
MAX_NAME = 200


@dataclasses.dataclass(frozen=True)
class TensorSpec:
    name: str  # llama.cpp's tensor name, e.g. "blk.0.attn_q.weight"
    shape: tuple[int, ...]  # numpy order (rows, columns); GGUF stores the dimensions reversed

    @property
    def is_expert(self) -> bool:
        """A stacked tensor of every expert (ffn_*_exps): a token reads only its routed experts' slices."""
        return "_exps." in self.name


@dataclasses.dataclass(frozen=True)
class Architecture:
    name: str
    family: str  # one of FAMILIES
    n_layers: int
    hidden: int
    n_heads: int
    n_kv_heads: int
    ffn: int  # intermediate size of the MLP (of one expert, for a mixture of experts)
    vocab: int
    context_length: int  # tokens the model was trained for
    tied_embeddings: bool  # the output projection reuses token_embd.weight
    rope_theta: float | None  # None: learned position embeddings (gpt2)
    norm_eps: float  # RMSNorm epsilon (LayerNorm epsilon for gpt2)
    source: str  # where the shape comes from
    explicit_head_dim: int | None = None  # config.json's head_dim when it is not hidden / n_heads (Qwen3, Gemma)
    n_experts: int = 0  # experts per layer; 0 = a dense MLP
    n_experts_used: int = 0  # experts each token is routed to
    rotary_fraction: float = 1.0  # partial rotary (Phi-3/4: 0.75 of each head is rotated)
    sliding_window: int | None = None  # tokens a sliding-window layer attends to
    sliding_pattern: int = 0  # every n-th layer is global, the others slide (Gemma 3: 6, gpt-oss: 2)

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name.isprintable() or not 0 < len(self.name) <= MAX_NAME:
            raise ModelError(f"a model name must be 1 to {MAX_NAME} printable characters, got {str(self.name)[:40]!r}")
        if self.family not in FAMILIES:
            raise ModelError(f"{self.name}: unknown architecture family {self.family!r} (known: {', '.join(FAMILIES)})")
        for field, limit in MAX_SIZES.items():
            value = getattr(self, field)
            if value is None and field in ("explicit_head_dim", "sliding_window"):
                continue
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ModelError(f"{self.name}: {field} must be a positive integer, got {value!r}")
            if value > limit:
                raise ModelError(f"{self.name}: {field} {value:,} is over the limit of {limit:,}")
        for field in ("rope_theta", "norm_eps"):
            value = getattr(self, field)
            if value is not None and (not isinstance(value, (int, float)) or not 0 < value < math.inf):
                raise ModelError(f"{self.name}: {field} must be a positive finite number, got {value!r}")
        if self.n_heads % self.n_kv_heads:
            raise ModelError(f"{self.name}: n_heads ({self.n_heads}) must split into n_kv_heads ({self.n_kv_heads})")
        if self.explicit_head_dim is None and self.hidden % self.n_heads:
            raise ModelError(f"{self.name}: hidden ({self.hidden}) must split into n_heads ({self.n_heads}) "
                             f"and n_heads into n_kv_heads ({self.n_kv_heads}), or head_dim be given")
        if self.family in ("phi3", "gpt2") and self.head_dim * self.n_heads != self.hidden:
            raise ModelError(f"{self.name}: {self.family} needs head_dim x n_heads = hidden")
        if self.family in MOE_FAMILIES:
            if not all(isinstance(n, int) for n in (self.n_experts, self.n_experts_used)) or \
                    not 0 < self.n_experts_used <= self.n_experts <= MAX_EXPERTS:
                raise ModelError(f"{self.name}: a mixture of experts needs 0 < n_experts_used ({self.n_experts_used}) "
                                 f"<= n_experts ({self.n_experts}) <= {MAX_EXPERTS}")
        elif self.n_experts or self.n_experts_used:
            raise ModelError(f"{self.name}: family {self.family} has no experts (experts: {', '.join(MOE_FAMILIES)})")
        if not isinstance(self.rotary_fraction, (int, float)) or not 0 < self.rotary_fraction <= 1 \
                or (self.head_dim * self.rotary_fraction) % 2:
            raise ModelError(f"{self.name}: rotary_fraction {self.rotary_fraction} must rotate an even part of a head")
        if not isinstance(self.sliding_pattern, int) or not 0 <= self.sliding_pattern <= self.n_layers \
                or (self.sliding_pattern and self.sliding_window is None):
            raise ModelError(f"{self.name}: a sliding-window pattern needs a sliding_window")
        if n_params(self) > MAX_PARAMS:
            raise ModelError(f"{self.name}: {n_params(self):,} parameters is over the limit of {MAX_PARAMS:,}")

    @property
    def head_dim(self) -> int:
        return self.explicit_head_dim or self.hidden // self.n_heads

    @property
    def q_dim(self) -> int:
        return self.n_heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.n_kv_heads * self.head_dim

    @property
    def rotary_dim(self) -> int:
        return int(self.head_dim * self.rotary_fraction)

    @property
    def has_qkv_bias(self) -> bool:
        return self.family in ("qwen2", "gpt2", "gpt-oss")

    @property
    def is_moe(self) -> bool:
        return self.family in MOE_FAMILIES

    def sliding(self, layer: int) -> bool:
        """Whether this layer attends to a sliding window (llama.cpp's swa pattern: the n-th layer is global)."""
        return bool(self.sliding_pattern) and (layer + 1) % self.sliding_pattern != 0

    @property
    def n_sliding(self) -> int:
        """How many layers `sliding` says are sliding-window ones: all but every sliding_pattern-th (counted, not
        walked: answers ask it per figure)."""
        return self.n_layers - self.n_layers // self.sliding_pattern if self.sliding_pattern else 0

    def attended_positions(self, positions: float) -> float:
        """Positions one token's attention visits, summed over layers: all of them in a global layer, at most the
        window in a sliding-window one."""
        n_sliding = self.n_sliding
        return (self.n_layers - n_sliding) * positions + n_sliding * min(positions, self.sliding_window or positions)

    @property
    def gated_mlp(self) -> bool:
        """A gate and an up projection (SwiGLU, GeGLU); GPT-2's MLP has an up projection only."""
        return self.family != "gpt2"

    def compute_buffer_bytes(self, context: int, n_ubatch: int = 512, resident: bool = False) -> float:
        """llama.cpp's CPU compute buffer for one micro-batch of min(n_ubatch, context) tokens: the f32 logits over
        the vocabulary and two hidden-wide activations (4 · ub · (vocab + 2 · hidden)); a mixture of experts adds
        its routed MLPs' activations. With flash attention (llama.cpp's CPU default) no attention matrix of
        the context is held, so the allocation does not grow with the context: benchmarks/compute_buffer.py
        measured it within 1 % at 128..8192 tokens (SmolLM2-135M, Llama-3.2-1B). `resident`: the part a CPU
        process touches (what its RSS holds). A prompt's logits are computed for its last token only, so one row
        of logits, not ub of them; the space the other rows would take holds, earlier in the graph, the MLP's
        ffn-wide activations of every token (a gated MLP: gate, up, their product and the matmul kernel's
        converted copy, 4 per token; GPT-2's: 2) and the attention mask (F16, ub × the cache's positions), which
        a full micro-batch touches (a run at depth prefills its depth in full micro-batches). With these terms and
        scaling.VOCAB_TABLE_BYTES, peak RSS less the memory feature stays within -3..+6 MB on 8 architectures
        (SmolLM2, Qwen2.5/3, Llama 3.2, TinyLlama, Gemma 3, GPT-2) at depth 0..4096; with 2 ffn-wide rows and no
        mask, 10..40 MB short at depth."""
        ub = min(n_ubatch, int(context))
        if resident:
            mlp = (4 if self.gated_mlp else 2) * self.ffn * (self.n_experts_used if self.is_moe else 1)
            return 4 * ub * (2 * self.hidden + mlp) + 4 * self.vocab + 2 * ub * self.mask_positions(context)
        mlp = 2 * self.ffn * self.n_experts_used if self.is_moe else 0
        return 4 * ub * (self.vocab + 2 * self.hidden + mlp)

    def kv_cache_positions(self, context: float, n_ubatch: int = 512) -> tuple[float, float]:
        """Positions the cache holds for (a global layer, a sliding-window layer): llama.cpp's iSWA cache keeps
        min(context, pad256(window + n_ubatch)) positions for a sliding layer (with swa_full off, as llama-bench
        and llama-server run; the C API's default keeps the whole context)."""
        window = -(-(self.sliding_window + n_ubatch) // 256) * 256 if self.sliding_window else 0
        return context, min(context, window)

    def mask_positions(self, context: float, n_ubatch: int = 512) -> float:
        """Positions of the attention masks one micro-batch builds: one mask over the whole cache (rounded to
        256-position blocks) and, with sliding-window layers, one over their smaller cache."""
        held = -(-int(context) // 256) * 256
        return held + (self.kv_cache_positions(held, n_ubatch)[1] if self.sliding_pattern else 0)

    def kv_cache_bytes(self, context: float, n_ubatch: int = 512, bytes_per_element: int = 2) -> float:
        """K and V of every layer (F16 by default): 2 · n_kv_heads · head_dim · positions · bytes per layer, where a
        sliding-window layer keeps llama.cpp's iSWA cache of min(context, pad256(window + n_ubatch)) positions."""
        full, windowed = self.kv_cache_positions(context, n_ubatch)
        n_sliding = self.n_sliding
        positions = (self.n_layers - n_sliding) * full + n_sliding * windowed
        return 2 * self.kv_dim * positions * bytes_per_element


def _attention(arch: Architecture, i: int) -> list[TensorSpec]:
    h, q, kv = arch.hidden, arch.q_dim, arch.kv_dim
    specs = []
    for part, rows in (("attn_q", q), ("attn_k", kv), ("attn_v", kv)):
        specs.append(TensorSpec(f"blk.{i}.{part}.weight", (rows, h)))
        if arch.has_qkv_bias:
            specs.append(TensorSpec(f"blk.{i}.{part}.bias", (rows,)))
    specs.append(TensorSpec(f"blk.{i}.attn_output.weight", (h, q)))
    if arch.family == "gpt-oss":
        specs += [TensorSpec(f"blk.{i}.attn_output.bias", (h,)), TensorSpec(f"blk.{i}.attn_sinks.weight", (arch.n_heads,))]
    if arch.family in QK_NORM_FAMILIES:
        specs += [TensorSpec(f"blk.{i}.attn_k_norm.weight", (arch.head_dim,)),
                  TensorSpec(f"blk.{i}.attn_q_norm.weight", (arch.head_dim,))]
    return specs


def _experts(arch: Architecture, i: int) -> list[TensorSpec]:
    h, ff, n = arch.hidden, arch.ffn, arch.n_experts
    specs = [TensorSpec(f"blk.{i}.ffn_gate_inp.weight", (n, h))]
    if arch.family == "gpt-oss":
        specs.append(TensorSpec(f"blk.{i}.ffn_gate_inp.bias", (n,)))
    for part, shape, bias in (("ffn_gate_exps", (n, ff, h), (n, ff)), ("ffn_down_exps", (n, h, ff), (n, h)),
                              ("ffn_up_exps", (n, ff, h), (n, ff))):
        specs.append(TensorSpec(f"blk.{i}.{part}.weight", shape))
        if arch.family == "gpt-oss":
            specs.append(TensorSpec(f"blk.{i}.{part}.bias", bias))
    return specs


def _gpt2_layer(arch: Architecture, i: int) -> list[TensorSpec]:
    h, kv, ff = arch.hidden, arch.kv_dim, arch.ffn
    specs = []
    for part, shape in (("attn_norm", (h,)), ("attn_qkv", (h + 2 * kv, h)), ("attn_output", (h, h)),
                        ("ffn_norm", (h,)), ("ffn_up", (ff, h)), ("ffn_down", (h, ff))):
        specs.append(TensorSpec(f"blk.{i}.{part}.weight", shape))
        specs.append(TensorSpec(f"blk.{i}.{part}.bias", (shape[0],)))
    return specs


def _layer(arch: Architecture, i: int) -> list[TensorSpec]:
    h, kv, ff = arch.hidden, arch.kv_dim, arch.ffn
    norm = lambda part: TensorSpec(f"blk.{i}.{part}.weight", (h,))
    if arch.family == "gpt2":
        return _gpt2_layer(arch, i)
    if arch.family == "phi3":  # fused QKV; ffn_up holds gate and up, side by side
        return [norm("attn_norm"), TensorSpec(f"blk.{i}.attn_qkv.weight", (h + 2 * kv, h)),
                TensorSpec(f"blk.{i}.attn_output.weight", (h, h)), norm("ffn_norm"),
                TensorSpec(f"blk.{i}.ffn_down.weight", (h, ff)), TensorSpec(f"blk.{i}.ffn_up.weight", (2 * ff, h))]
    if arch.family == "gpt-oss":  # post_attention_norm is the norm before the experts
        return [norm("attn_norm"), norm("post_attention_norm"), *_attention(arch, i), *_experts(arch, i)]
    specs = [norm("attn_norm"), *_attention(arch, i)]
    if arch.family == "gemma3":
        specs.append(norm("post_attention_norm"))
    specs.append(norm("ffn_norm"))
    if arch.family == "qwen3moe":
        return specs + _experts(arch, i)
    specs += [TensorSpec(f"blk.{i}.ffn_gate.weight", (ff, h)), TensorSpec(f"blk.{i}.ffn_up.weight", (ff, h)),
              TensorSpec(f"blk.{i}.ffn_down.weight", (h, ff))]
    if arch.family == "gemma3":
        specs.append(norm("post_ffw_norm"))
    return specs


def tensors(arch: Architecture) -> list[TensorSpec]:
    """The tensors llama.cpp loads for this architecture (src/models/<family>.cpp), in file order."""
    h = arch.hidden
    specs = [TensorSpec("token_embd.weight", (arch.vocab, h))]
    if arch.family == "gpt2":
        specs.append(TensorSpec("position_embd.weight", (arch.context_length, h)))
    for i in range(arch.n_layers):
        specs += _layer(arch, i)
    specs.append(TensorSpec("output_norm.weight", (h,)))
    if arch.family == "gpt2":
        specs.append(TensorSpec("output_norm.bias", (h,)))
    if not arch.tied_embeddings:
        specs.append(TensorSpec("output.weight", (arch.vocab, h)))
    return specs


@functools.lru_cache(maxsize=4096)  # answers ask it per table row; an Architecture is frozen
def n_params(arch: Architecture) -> int:
    """Parameters computed from the shape: the elements of every tensor llama.cpp loads (every expert)."""
    return sum(math.prod(spec.shape) for spec in tensors(arch))


def active_fraction(arch: Architecture, spec: TensorSpec) -> float:
    """The part of a tensor one token uses: n_experts_used / n_experts of an expert tensor, else all of it."""
    return arch.n_experts_used / arch.n_experts if spec.is_expert else 1.0


def active_params(arch: Architecture) -> int:
    """Parameters one token uses: the routed experts only, and one row of an untied token-embedding table
    (the count model cards give as "active", e.g. gpt-oss-20b's 3.6B)."""
    total = 0.0
    for spec in tensors(arch):
        n = math.prod(spec.shape) * active_fraction(arch, spec)
        if spec.name == "token_embd.weight" and not arch.tied_embeddings:
            n = spec.shape[1]
        total += n
    return int(total)


def _hf(repo: str) -> str:
    return f"https://huggingface.co/{repo}/blob/main/config.json"


def _llama(name, repo, n_layers, hidden, n_heads, n_kv_heads, ffn, vocab, context_length, tied, rope_theta,
           norm_eps=1e-5, family="llama", **extra) -> Architecture:
    return Architecture(name=name, family=family, n_layers=n_layers, hidden=hidden, n_heads=n_heads,
                        n_kv_heads=n_kv_heads, ffn=ffn, vocab=vocab, context_length=context_length,
                        tied_embeddings=tied, rope_theta=rope_theta, norm_eps=norm_eps, source=_hf(repo), **extra)


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
    # Qwen3: head_dim 128 given explicitly (not hidden / heads), per-head q/k RMSNorm
    _llama("qwen3-0.6b", "Qwen/Qwen3-0.6B", 28, 1024, 16, 8, 3072, 151936, 40960, True, 1000000.0,
           norm_eps=1e-6, family="qwen3", explicit_head_dim=128),
    _llama("qwen3-1.7b", "Qwen/Qwen3-1.7B", 28, 2048, 16, 8, 6144, 151936, 40960, True, 1000000.0,
           norm_eps=1e-6, family="qwen3", explicit_head_dim=128),
    _llama("qwen3-4b", "Qwen/Qwen3-4B", 36, 2560, 32, 8, 9728, 151936, 40960, True, 1000000.0,
           norm_eps=1e-6, family="qwen3", explicit_head_dim=128),
    _llama("qwen3-8b", "Qwen/Qwen3-8B", 36, 4096, 32, 8, 12288, 151936, 40960, False, 1000000.0,
           norm_eps=1e-6, family="qwen3", explicit_head_dim=128),
    # Gemma 3, the text model (the 4B's text_config; its SigLIP vision tower is not part of the LLM): five
    # sliding-window layers to one global layer, global rope_theta 1e6 (sliding layers use 1e4)
    _llama("gemma-3-1b", "google/gemma-3-1b-pt", 26, 1152, 4, 1, 6912, 262144, 32768, True, 1000000.0,
           norm_eps=1e-6, family="gemma3", explicit_head_dim=256, sliding_window=512, sliding_pattern=6),
    _llama("gemma-3-4b", "google/gemma-3-4b-pt", 34, 2560, 8, 4, 10240, 262208, 131072, True, 1000000.0,
           norm_eps=1e-6, family="gemma3", explicit_head_dim=256, sliding_window=1024, sliding_pattern=6),
    _llama("phi-4-mini", "microsoft/Phi-4-mini-instruct", 32, 3072, 24, 8, 8192, 200064, 131072, True, 10000.0,
           family="phi3", rotary_fraction=0.75),
    _llama("mistral-nemo-12b", "mistralai/Mistral-Nemo-Base-2407", 40, 5120, 32, 8, 14336, 131072, 1024000, False,
           1000000.0, explicit_head_dim=128),
    # mixtures of experts: ffn is one expert's intermediate size (moe_intermediate_size / intermediate_size)
    _llama("qwen3-30b-a3b", "Qwen/Qwen3-30B-A3B", 48, 2048, 32, 4, 768, 151936, 40960, False, 1000000.0,
           norm_eps=1e-6, family="qwen3moe", explicit_head_dim=128, n_experts=128, n_experts_used=8),
    _llama("gpt-oss-20b", "openai/gpt-oss-20b", 24, 2880, 64, 8, 2880, 201088, 131072, False, 150000.0,
           family="gpt-oss", explicit_head_dim=64, n_experts=32, n_experts_used=4, sliding_window=128,
           sliding_pattern=2),
)}


def architecture(name: str) -> Architecture:
    """The catalogued architecture, or a ModelError that suggests the nearest names."""
    key = name.strip().lower()
    if key in CATALOGUE:
        return CATALOGUE[key]
    near = difflib.get_close_matches(key, list(CATALOGUE), n=3, cutoff=0.5)
    hint = f" (did you mean {', '.join(near)}?)" if near else f" (known: {', '.join(CATALOGUE)})"
    raise ModelError(f"unknown architecture {name!r}{hint}")
