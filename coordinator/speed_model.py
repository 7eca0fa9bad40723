"""Seconds per token as a sum of measured terms, fitted per device × backend × phase from the device's own runs.

Decode (one token at a time: memory-bound):

    seconds/token = Σ_type bytes(type) / B_type      weights streamed, per storage type: Q4_0, Q8_0, Q6_K (the
                                                     output projection of a Q4_0 file), F16 and F32 kernels
                                                     stream at different effective bandwidths
                  + KV bytes read at the depth / B_kv     the cache every layer's attention reads (GQA-aware:
                                                          n_kv_heads · head_dim per position)
                  + n_layers · c_layer                     graph nodes and thread barriers per layer
                  + c_token                                per-token fixed costs (output, graph build, sync)

Prefill (a micro-batch of prompt tokens: compute-bound) has the same shape with FLOPs in place of bytes:
2 per weight of each storage type's matrices (each type has its own matmul kernel), plus attention's
4 · layers · q_dim · positions.

benchmarks/speed_terms.py separates the terms with llama.cpp on synthetic files (vocabulary at fixed depth,
depth at fixed width, width at fixed depth, decode depth). One fitted bandwidth plus a per-layer constant
over-predicted models with other vocabularies, because the output projection (Q6_K in a Q4_0 file) streams
slower than the Q4_0 matrices. The fit is least squares on relative error with every term non-negative (a
negative cost is noise, not physics); a term the samples cannot separate is left out rather than guessed, and a
type never measured on the device borrows the rate of the measured type nearest in bits per weight.
"""

import dataclasses
import functools

import numpy as np

from fleetfit.models import backends
from fleetfit.models.backends import DEFAULT_BACKEND
from fleetfit.models.catalogue import Architecture

N_UBATCH = 512
PHASES = ("decode", "prefill")
MIN_SHARE = 0.02  # a type holding under 2 % of every point's work cannot be told apart: it joins its neighbour
_BITS = {"F32": 32, "F16": 16, "BF16": 16, "Q8_0": 8.5, "Q6_K": 6.5625, "Q5_K": 5.5, "Q5_0": 5.5, "Q5_1": 6,
         "Q4_K": 4.5, "Q4_0": 4.5, "Q4_1": 5, "IQ4_NL": 4.5, "IQ4_XS": 4.25, "MXFP4": 4.25, "Q3_K": 3.4375,
         "Q2_K": 2.625}


def bits(kind: str) -> float:
    """Bits per weight of a storage type (framework kinds: their name's width, e.g. "fp16" 16, "int4" 4)."""
    if kind in _BITS:
        return _BITS[kind]
    digits = "".join(c for c in kind.split("-")[0] if c.isdigit())
    return float(digits) if digits else 16.0


@functools.lru_cache(maxsize=None)
def weight_terms(arch: Architecture, quant: str, phase: str = "decode",
                 backend: str = DEFAULT_BACKEND) -> tuple[tuple[str, float], ...]:
    """Per storage type, what one token costs in it: bytes read (decode) or matmul FLOPs (prefill: 2 per
    weight a token multiplies; an untied embedding table is a lookup, not a product)."""
    by_type = backends.backend(backend).bytes_by_type(arch, quant, per_token=True)
    if phase == "prefill":
        by_type = {k: 2 * n * 8 / bits(k) for k, n in by_type.items()}
    return tuple(sorted(by_type.items()))


def context_term(arch: Architecture, positions: float, phase: str = "decode") -> float:
    """What attending to `positions` cached tokens costs one token: K and V bytes read (decode; F16, GQA: the
    n_kv_heads heads; a sliding-window layer reads its window) or attention FLOPs (prefill)."""
    if phase == "prefill":
        return 4.0 * arch.n_layers * arch.q_dim * positions
    return arch.kv_cache_bytes(positions, N_UBATCH)


@dataclasses.dataclass(frozen=True)
class Sample:
    """One measured phase: the architecture, precision, mean cache positions attended and tokens/s."""
    arch: Architecture
    quant: str
    positions: float
    tps: float
    backend: str = DEFAULT_BACKEND
    label: str = ""  # where it came from (model and precision, a result id), for the text of a prediction


@dataclasses.dataclass(frozen=True)
class SpeedModel:
    """Fitted terms of one phase: seconds per unit (byte or FLOP) for each weight type and for the context,
    seconds per layer and per token."""
    phase: str
    s_per_unit: dict[str, float]  # weight storage type -> seconds per byte (decode) or per FLOP (prefill)
    context_s_per_unit: float
    layer_s: float
    token_s: float
    fitted_on: tuple[str, ...]  # the samples' labels

    def rate(self, kind: str) -> tuple[float, str]:
        """Seconds per unit of `kind`, borrowed from the nearest measured type in bits when never measured."""
        if kind in self.s_per_unit:
            return self.s_per_unit[kind], kind
        nearest = min(self.s_per_unit, key=lambda k: (abs(bits(k) - bits(kind)), k))
        return self.s_per_unit[nearest], nearest

    def seconds(self, arch: Architecture, quant: str, positions: float, backend: str = DEFAULT_BACKEND) -> float:
        weights = sum(n * self.rate(kind)[0] for kind, n in weight_terms(arch, quant, self.phase, backend))
        return (weights + context_term(arch, positions, self.phase) * self.context_s_per_unit
                + arch.n_layers * self.layer_s + self.token_s)

    def tps(self, arch: Architecture, quant: str, positions: float, backend: str = DEFAULT_BACKEND) -> float:
        return 1 / self.seconds(arch, quant, positions, backend)

    def borrowed(self, arch: Architecture, quant: str, backend: str = DEFAULT_BACKEND) -> dict[str, str]:
        """{type used by this model: measured type whose rate it borrows} for the types never measured."""
        return {k: self.rate(k)[1] for k, _ in weight_terms(arch, quant, self.phase, backend)
                if k not in self.s_per_unit}

    def text(self) -> str:
        unit, scale = ("GB/s", 1e9) if self.phase == "decode" else ("GFLOP/s", 1e9)
        rates = ", ".join(f"{k} {1 / v / scale:.1f} {unit}" for k, v in sorted(self.s_per_unit.items()) if v > 0)
        ctx = (f"{'KV' if self.phase == 'decode' else 'attention'} {1 / self.context_s_per_unit / scale:.1f} {unit}"
               if self.context_s_per_unit > 0 else "no context term")
        return f"{rates}; {ctx}; {self.layer_s * 1e6:.0f} µs/layer + {self.token_s * 1e6:.0f} µs/token"


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
    projection of a 576-wide model) would otherwise soak up whatever else is slow in that model. The others join
    the kept type nearest in width."""
    archs: dict[str, set[str]] = {}
    for s in samples:
        terms = dict(weight_terms(s.arch, s.quant, phase, s.backend))
        total = sum(terms.values())
        for k, n in terms.items():
            archs.setdefault(k, set())
            if n >= MIN_SHARE * total:
                archs[k].add(s.arch.name)
    kept = [k for k, v in archs.items() if len(v) >= 2] or [max(archs, key=lambda k: len(archs[k]))]
    return {k: k if k in kept else min(kept, key=lambda j: (abs(bits(j) - bits(k)), j)) for k in archs}


def fit(samples: list[Sample], phase: str = "decode") -> SpeedModel | None:
    """Non-negative least squares on relative error: Σ_i (t_i · predicted_seconds_i − 1)², t_i the measured
    tokens/s. Terms the samples cannot separate (one depth only: no per-layer term; one context: no context
    term) are left out rather than guessed."""
    samples = [s for s in samples if s.tps > 0]
    if not samples:
        return None
    merged = _merged_kinds(samples, phase)
    kinds = sorted(set(merged.values()))
    rows = []
    for s in samples:
        terms = dict(weight_terms(s.arch, s.quant, phase, s.backend))
        row = [sum(n for k, n in terms.items() if merged[k] == kind) for kind in kinds]
        rows.append(row + [context_term(s.arch, s.positions, phase), s.arch.n_layers, 1.0])
    a = np.array(rows)
    scale = a.max(axis=0)
    scale[scale == 0] = 1
    use = np.ones(a.shape[1], bool)
    positions = [s.positions for s in samples]
    use[len(kinds)] = max(positions) >= 4 * min(positions)  # a run at depth separates the context term
    use[len(kinds) + 1] = len({s.arch.n_layers for s in samples}) > 1
    t = np.array([s.tps for s in samples])
    x = np.zeros(a.shape[1])
    x[use] = nnls((a[:, use] / scale[use]) * t[:, None], np.ones(len(samples))) / scale[use]
    rates = {k: float(x[kinds.index(merged[k])]) for k in merged}
    return SpeedModel(phase, rates, float(x[len(kinds)]), float(x[len(kinds) + 1]), float(x[len(kinds) + 2]),
                      tuple(s.label for s in samples))
