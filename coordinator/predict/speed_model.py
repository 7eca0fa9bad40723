"""Seconds per token as a sum of measured terms, fitted per device × backend × phase from the device's own runs.

Decode (one token at a time: mostly memory-bound):

    seconds/token = Σ_type bytes(type) / B_type      weights streamed, per storage type: Q4_0, Q8_0, Q6_K (the
                                                     output projection of a Q4_0 file), F16 and F32 kernels
                                                     stream at different effective bandwidths
                  + KV bytes read at the depth / B_kv     the cache every layer's attention reads (GQA-aware:
                                                          n_kv_heads · head_dim per position)
                  + attention scores at the depth / S_att a score, its softmax and a weighted sum per query
                                                          head and position (GQA does not reduce them)
                  + n_layers · c_layer                     graph nodes and thread barriers per layer
                  + c_token                                per-token fixed costs (output, graph build, sync)

Prefill (a micro-batch of prompt tokens: compute-bound) has the same shape with FLOPs in place of bytes:
2 per weight of each storage type's matrices (each type has its own matmul kernel; not the output projection,
which every backend here applies to a prompt's last position only), plus attention's
4 · layers · q_dim · positions.

A mixture's expert matrices are types of their own ("Q4_0 experts"): llama.cpp multiplies them with
mul_mat_id, in a prompt a few tokens per expert, far from the dense kernels' rate. A device that ran a mixture
(a calibration run: `fleetfit calibrate DEVICE MODEL`) fits their rate; one that did not gives them the dense rate.

benchmarks/speed_terms.py separates the terms with llama.cpp on synthetic files (vocabulary at fixed depth,
depth at fixed width, width at fixed depth, decode depth at 1, 3 and 9 KV heads). What it measured on a 2-core
EPYC (Q4_0, tg32 x 3): the output projection (Q6_K in a Q4_0 file) streams at ~20 GB/s where the Q4_0 matrices
reach ~30, which is why one fitted bandwidth over-predicted models with other vocabularies; ~140 µs per 576-wide
layer, of which ~50 are fixed (not its weights); and per cached position a cost that grows far less than the KV
bytes (9x the KV heads: 1.5x the cost), so attention's FLOPs carry most of it and the KV read the rest. The fit is
least squares on relative error with every term non-negative (a negative cost is noise, not physics); a term the
samples cannot separate is left out rather than guessed, and a type never measured on the device borrows the rate
of the measured type nearest in bits per weight.
"""

import dataclasses
import functools

import numpy as np

from fleetfit.models import backends
from fleetfit.models.backends import DEFAULT_BACKEND, EXPERTS
from fleetfit.models.catalogue import Architecture

MIN_SHARE = 0.02  # a type holding under 2 % of every point's work cannot be told apart: it joins its neighbour
_BITS = {"F32": 32, "F16": 16, "BF16": 16, "Q8_0": 8.5, "Q6_K": 6.5625, "Q5_K": 5.5, "Q5_0": 5.5, "Q5_1": 6,
         "Q4_K": 4.5, "Q4_0": 4.5, "Q4_1": 5, "IQ4_NL": 4.5, "IQ4_XS": 4.25, "MXFP4": 4.25, "Q3_K": 3.4375,
         "Q2_K": 2.625}


def bits(kind: str) -> float:
    """Bits per weight of a storage type (framework kinds: their name's width, e.g. "fp16" 16, "int4" 4)."""
    kind = kind.removesuffix(EXPERTS)
    if kind in _BITS:
        return _BITS[kind]
    digits = "".join(c for c in kind.split("-")[0] if c.isdigit())
    return float(digits) if digits else 16.0


@functools.lru_cache(maxsize=None)
def weight_terms(arch: Architecture, quant: str, phase: str = "decode",
                 backend: str = DEFAULT_BACKEND) -> tuple[tuple[str, float], ...]:
    """Per storage type, what one token costs in it: bytes read (decode) or matmul FLOPs (prefill: 2 per
    weight a token multiplies; an embedding table is a lookup, not a product). Every backend here (llama.cpp,
    the torch model and its ONNX export) computes a prompt's logits for its last position only, so a prompt token
    does not multiply the output projection: counting it put small models with large vocabularies (Qwen2.5-0.5B,
    Gemma-3-1B: 28-30 % of their weights) 22-29 % slow on llama.cpp."""
    by_type = backends.backend(backend).bytes_by_type(arch, quant, per_token=True, without_output=phase == "prefill",
                                                      experts_apart=True)
    if phase == "prefill":
        by_type = {k: 2 * n * 8 / bits(k) for k, n in by_type.items()}
    return tuple(sorted(by_type.items()))


CONTEXT_TERMS = {"decode": ("KV bytes", "attention scores"), "prefill": ("attention FLOPs",)}
CONTEXT_UNITS = {"KV bytes": ("KV read", "GB/s"), "attention scores": ("attention", "G scores/s"),
                 "attention FLOPs": ("attention", "GFLOP/s")}  # each context term's name and rate unit in text()


def context_terms(arch: Architecture, positions: float, phase: str = "decode") -> dict[str, float]:
    """What attending to `positions` cached tokens costs one token, per kind of work. Decode reads K and V (F16
    bytes: n_kv_heads heads, so GQA reduces them) and computes, per query head and position, a score, its online
    softmax and a weighted sum (GQA does not reduce them; benchmarks/speed_terms.py's depth sweep at 1, 3 and 9 KV
    heads needs both terms). Counted per score, not per FLOP: llama.cpp's CPU flash attention pays a fixed cost per
    score (the exponential, the running maximum) that outweighs the head's dot products; Gemma-3-1B (head size 256)
    at depth 4096 cost a quarter of what its FLOPs at the 64-wide heads' rate predicted, as many scores as FLOPs/4.
    A prefill micro-batch shares its K/V reads and multiplies them as matrices, so its cost is the FLOPs (Gemma-3's
    prefill at depth followed them). A sliding-window layer attends to its window only (llama.cpp skips masked
    positions)."""
    attended = arch.attended_positions(positions)
    if phase == "prefill":
        return {"attention FLOPs": 4.0 * arch.q_dim * attended}
    return {"KV bytes": 2.0 * 2 * arch.kv_dim * attended, "attention scores": float(arch.n_heads) * attended}


@dataclasses.dataclass(frozen=True)
class Sample:
    """One measured phase: the architecture, precision, mean cache positions attended and tokens/s."""
    arch: Architecture
    quant: str
    positions: float
    tps: float
    backend: str = DEFAULT_BACKEND
    label: str = ""  # where it came from (model and precision, a result id), for the text of a prediction
    weight: float = 1.0  # how much the fit trusts it: below 1 for a point whose repetitions spread widely


@dataclasses.dataclass(frozen=True)
class SpeedModel:
    """Fitted terms of one phase: seconds per unit (byte or FLOP) for each weight type and for each context term,
    seconds per layer and per token."""
    phase: str
    s_per_unit: dict[str, float]  # weight storage type -> seconds per byte (decode) or per FLOP (prefill)
    context_s_per_unit: dict[str, float]  # CONTEXT_TERMS[phase] -> seconds per byte or FLOP
    layer_s: float
    token_s: float
    fitted_on: tuple[str, ...]  # the samples' labels
    left_out: tuple[str, ...] = ()  # terms the samples could not support, each with why

    def rate(self, kind: str) -> tuple[float, str]:
        """Seconds per unit of `kind`, borrowed when never measured: from the nearest measured type in bits of the
        same kind of kernel (experts or not); a device that never ran a mixture gives its experts the dense rate."""
        if kind in self.s_per_unit:
            return self.s_per_unit[kind], kind
        experts = kind.endswith(EXPERTS)
        alike = [k for k in self.s_per_unit if k.endswith(EXPERTS) == experts]
        if experts and not alike:
            return self.rate(kind.removesuffix(EXPERTS))
        nearest = min(alike or self.s_per_unit, key=lambda k: (abs(bits(k) - bits(kind)), k))
        return self.s_per_unit[nearest], nearest

    def parts(self, arch: Architecture, quant: str, positions: float,
              backend: str = DEFAULT_BACKEND) -> dict[str, float]:
        """Seconds per token, term by term: weights, context (KV read or attention), layers, token."""
        weights = sum(n * self.rate(kind)[0] for kind, n in weight_terms(arch, quant, self.phase, backend))
        context = sum(n * self.context_s_per_unit.get(k, 0.0)
                      for k, n in context_terms(arch, positions, self.phase).items())
        return {"weights": weights, "context": context, "layers": arch.n_layers * self.layer_s, "token": self.token_s}

    def seconds(self, arch: Architecture, quant: str, positions: float, backend: str = DEFAULT_BACKEND) -> float:
        return sum(self.parts(arch, quant, positions, backend).values())

    def tps(self, arch: Architecture, quant: str, positions: float, backend: str = DEFAULT_BACKEND) -> float:
        return 1 / self.seconds(arch, quant, positions, backend)

    def borrowed(self, arch: Architecture, quant: str, backend: str = DEFAULT_BACKEND) -> dict[str, str]:
        """{type used by this model: measured type whose rate it borrows} for the types never measured."""
        return {k: self.rate(k)[1] for k, _ in weight_terms(arch, quant, self.phase, backend)
                if k not in self.s_per_unit}

    def text(self) -> str:
        unit, scale = ("GB/s", 1e9) if self.phase == "decode" else ("GFLOP/s", 1e9)
        rates = ", ".join(f"{k} {1 / v / scale:.1f} {unit}" for k, v in sorted(self.s_per_unit.items()) if v > 0)
        ctx = ", ".join(f"{CONTEXT_UNITS[k][0]} {1 / v / 1e9:.2g} {CONTEXT_UNITS[k][1]}"
                        for k, v in self.context_s_per_unit.items() if v > 0) or "no context term"
        left = f"; left out: {'; '.join(self.left_out)}" if self.left_out else ""
        return f"{rates}; {ctx}; {self.layer_s * 1e6:.0f} µs/layer + {self.token_s * 1e6:.0f} µs/token{left}"


def nnls(a: np.ndarray, b: np.ndarray, iterations: int = 500) -> np.ndarray:
    """argmin ‖a·x − b‖ with x ≥ 0 (Lawson–Hanson active set)."""
    m, n = a.shape
    x, passive = np.zeros(n), np.zeros(n, bool)
    for _ in range(iterations):
        w = a.T @ (b - a @ x)
        if passive.all() or w[~passive].max(initial=-np.inf) <= 1e-12 * max(1.0, np.abs(a.T @ b).max()):
            break
        passive[np.argmax(np.where(passive, -np.inf, w))] = True
        while True:
            z = np.zeros(n)
            z[passive] = np.linalg.lstsq(a[:, passive], b, rcond=None)[0]
            if (z[passive] > 0).all():
                x = z
                break
            neg = passive & (z <= 0)
            alpha = np.min(x[neg] / (x[neg] - z[neg]))
            x = x + alpha * (z - x)
            passive &= x > 1e-15
    return x


def _merged_kinds(samples: list[Sample], phase: str) -> dict[str, str]:
    """Each weight type → the type whose rate it shares. A type is fitted on its own only where it holds at least
    MIN_SHARE of the work in runs of two or more architectures: a type only one architecture has (the Q8_0 output
    projection of a 576-wide model) would otherwise soak up whatever else is slow in that model. Expert types need
    one: what is slow in a mixture is its expert kernel, and a dense rate must not take it up. The others join
    the kept type of their kind nearest in width."""
    archs: dict[str, set[str]] = {}
    for s in samples:
        terms = dict(weight_terms(s.arch, s.quant, phase, s.backend))
        total = sum(terms.values())
        for k, n in terms.items():
            archs.setdefault(k, set())
            if n >= MIN_SHARE * total:
                archs[k].add(s.arch.name)
    kept = [k for k, v in archs.items() if len(v) >= (1 if k.endswith(EXPERTS) else 2)] or \
        [max(archs, key=lambda k: len(archs[k]))]

    def alike(k: str) -> list[str]:
        return [j for j in kept if j.endswith(EXPERTS) == k.endswith(EXPERTS)] or kept
    return {k: k if k in kept else min(alike(k), key=lambda j: (abs(bits(j) - bits(k)), j)) for k in archs}


def fit(samples: list[Sample], phase: str = "decode") -> SpeedModel | None:
    """Non-negative least squares on relative error: Σ_i w_i (t_i · predicted_seconds_i − 1)², t_i the measured
    tokens/s, w_i the sample's weight. Terms the samples cannot separate are left out rather than guessed (and the
    model says which): without a run at depth (4x the positions of another) no context term; with depth runs of
    one ratio of KV bytes to scores only, the two grow together, and the scores stand for both; with one layer
    count, no per-layer term; with one architecture, no per-token term (a fixed cost cannot be told from the cost
    of its bytes, and a constant would answer every size alike); never more terms than distinct samples. Physics
    first: the weights' cost must carry the fit. Where the fixed terms took it all (noise can make the weights'
    term look free), they are dropped and the weights fitted alone, so that a larger model is always slower."""
    samples = [s for s in samples if s.tps > 0]
    if not samples:
        return None
    merged = _merged_kinds(samples, phase)
    kinds = sorted(set(merged.values()))
    context_kinds = CONTEXT_TERMS[phase]
    rows = []
    for s in samples:
        terms = dict(weight_terms(s.arch, s.quant, phase, s.backend))
        context = context_terms(s.arch, s.positions, phase)
        rows.append([sum(n for k, n in terms.items() if merged[k] == kind) for kind in kinds]
                    + [context[k] for k in context_kinds] + [s.arch.n_layers, 1.0])
    a = np.array(rows)
    scale = a.max(axis=0)
    scale[scale == 0] = 1
    use = np.ones(a.shape[1], bool)
    left_out = []
    first = min(s.positions for s in samples)
    deep = [s for s in samples if s.positions >= 4 * first]  # runs at depth: they separate the context terms
    for i, kind in enumerate(context_kinds):
        ratios = {s.arch.kv_dim / s.arch.n_heads for s in deep}  # KV bytes per score: one value, one term
        use[len(kinds) + i] = bool(deep) and (kind != "KV bytes" or len(ratios) > 1)
    n_archs = len({s.arch.name for s in samples})
    use[-2] = len({s.arch.n_layers for s in samples}) > 1
    use[-1] = n_archs > 1
    if n_archs < 2:
        left_out.append("per-token and per-layer costs (one architecture measured: they cannot be told from the "
                        "cost of its bytes)")
    distinct = len({(s.arch.name, s.quant, round(s.positions)) for s in samples})
    for i, what in ((a.shape[1] - 1, "per-token cost"), (a.shape[1] - 2, "per-layer cost")):
        if use.sum() > distinct and use[i]:
            use[i] = False
            left_out.append(f"{what} (more terms than the {distinct} distinct runs)")
    t = np.array([s.tps for s in samples])
    root_w = np.sqrt([max(s.weight, 1e-6) for s in samples])

    def solve(use: np.ndarray) -> np.ndarray:
        x = np.zeros(a.shape[1])
        x[use] = nnls((a[:, use] / scale[use]) * (t * root_w)[:, None], root_w) / scale[use]
        return x

    x = solve(use)
    if not (x[:len(kinds)] > 0).any() and (use[-2] or use[-1]):
        use[-2:] = False
        left_out.append("per-token and per-layer costs (they took up the whole fit, leaving the weights free: "
                        "refitted on the weights alone)")
        x = solve(use)
    rates = {k: float(x[kinds.index(merged[k])]) for k in merged}
    context_rates = {k: float(x[len(kinds) + i]) for i, k in enumerate(context_kinds)}
    return SpeedModel(phase, rates, context_rates, float(x[-2]), float(x[-1]), tuple(s.label for s in samples),
                      tuple(left_out))
