"""Per-token decode time as a sum of measured terms, fitted per device × backend from the device's own runs.

    seconds/token = Σ_type bytes(type) / B_type      weights streamed, per storage type: Q4_0, Q8_0, Q6_K (the
                                                     output projection of a Q4_0 file), F16 and F32 kernels
                                                     stream at different effective bandwidths
                  + KV bytes read at the context / B_kv   the cache the attention of every layer reads (GQA-aware:
                                                          n_kv_heads · head_dim per position)
                  + n_layers · c_layer                     graph nodes and thread barriers per layer
                  + c_token                                per-token fixed costs (output, graph build, sync)

The terms are the effects benchmarks/decode_terms.py separates with llama.cpp on synthetic files (vocabulary
at fixed depth, depth at fixed width, width at fixed depth, context): one fitted bandwidth plus a per-layer
constant over-predicted models with other vocabularies, because the output projection (Q6_K in a Q4_0 file)
streams slower than the Q4_0 matrices. The fit is least squares on relative error with every term
non-negative (a negative cost is noise, not physics); a type never measured on the device borrows the rate
of the measured type nearest in bits per weight.
"""

import dataclasses
import functools

import numpy as np

from fleetfit.models import backends
from fleetfit.models.backends import DEFAULT_BACKEND
from fleetfit.models.catalogue import Architecture

N_UBATCH = 512
MIN_SHARE = 0.02  # a type holding under 2 % of every point's bytes cannot be told apart: it joins its neighbour
_BITS = {"F32": 32, "F16": 16, "BF16": 16, "Q8_0": 8.5, "Q6_K": 6.56, "Q5_K": 5.5, "Q5_0": 5.5, "Q5_1": 6,
         "Q4_K": 4.5, "Q4_0": 4.5, "Q4_1": 5, "IQ4_NL": 4.5, "IQ4_XS": 4.25, "MXFP4": 4.25, "Q3_K": 3.44,
         "Q2_K": 2.63}


def bits(kind: str) -> float:
    """Bits per weight of a storage type (framework kinds: their name's width, e.g. "fp16" 16, "int4" 4)."""
    if kind in _BITS:
        return _BITS[kind]
    digits = "".join(c for c in kind.split("-")[0] if c.isdigit())
    return float(digits) if digits else 16.0


@functools.lru_cache(maxsize=None)
def weight_terms(arch: Architecture, quant: str, backend: str = DEFAULT_BACKEND) -> tuple[tuple[str, float], ...]:
    """Bytes one decoded token reads, per storage type (sorted by type)."""
    by_type = backends.backend(backend).bytes_by_type(arch, quant, per_token=True)
    return tuple(sorted(by_type.items()))


def kv_read_bytes(arch: Architecture, positions: float) -> float:
    """K and V bytes the attention of every layer reads with `positions` tokens in the cache (F16, GQA: the
    n_kv_heads heads; a sliding-window layer reads its window)."""
    return arch.kv_cache_bytes(positions, N_UBATCH)


@dataclasses.dataclass(frozen=True)
class Sample:
    """One measured decode: the architecture, precision, mean KV positions attended and tokens/s."""
    arch: Architecture
    quant: str
    positions: float
    tps: float
    backend: str = DEFAULT_BACKEND


@dataclasses.dataclass(frozen=True)
class DecodeModel:
    """Fitted terms: seconds per byte for each weight type and for the KV cache, per layer and per token."""
    s_per_byte: dict[str, float]  # weight storage type -> seconds per byte (1 / effective bandwidth)
    kv_s_per_byte: float
    layer_s: float
    token_s: float
    fitted_on: int  # samples

    def rate(self, kind: str) -> tuple[float, str]:
        """Seconds per byte of `kind`, borrowed from the nearest measured type in bits when never measured."""
        if kind in self.s_per_byte:
            return self.s_per_byte[kind], kind
        nearest = min(self.s_per_byte, key=lambda k: (abs(bits(k) - bits(kind)), k))
        return self.s_per_byte[nearest], nearest

    def seconds(self, arch: Architecture, quant: str, positions: float, backend: str = DEFAULT_BACKEND) -> float:
        weights = sum(n * self.rate(kind)[0] for kind, n in weight_terms(arch, quant, backend))
        return weights + kv_read_bytes(arch, positions) * self.kv_s_per_byte + arch.n_layers * self.layer_s + self.token_s

    def tps(self, arch: Architecture, quant: str, positions: float, backend: str = DEFAULT_BACKEND) -> float:
        return 1 / self.seconds(arch, quant, positions, backend)

    def borrowed(self, arch: Architecture, quant: str, backend: str = DEFAULT_BACKEND) -> dict[str, str]:
        """{type read by this model: measured type whose rate it borrows} for the types never measured."""
        return {k: self.rate(k)[1] for k, _ in weight_terms(arch, quant, backend) if k not in self.s_per_byte}

    def text(self) -> str:
        rates = ", ".join(f"{k} {1 / v / 1e9:.1f} GB/s" for k, v in sorted(self.s_per_byte.items()) if v > 0)
        kv = f"KV {1 / self.kv_s_per_byte / 1e9:.1f} GB/s" if self.kv_s_per_byte > 0 else "KV term 0"
        return (f"{rates}; {kv}; {self.layer_s * 1e6:.0f} µs/layer + {self.token_s * 1e6:.0f} µs/token, "
                f"fitted on {self.fitted_on} runs")


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


def _merged_kinds(samples: list[Sample]) -> dict[str, str]:
    """Each weight type → the type whose rate it shares: a type too small a share of every sample to be
    separated (F32 norms) joins the largest type of the nearest width."""
    shares: dict[str, float] = {}
    for s in samples:
        terms = dict(weight_terms(s.arch, s.quant, s.backend))
        total = sum(terms.values())
        for k, n in terms.items():
            shares[k] = max(shares.get(k, 0.0), n / total)
    kept = [k for k, v in shares.items() if v >= MIN_SHARE] or [max(shares, key=shares.get)]
    return {k: k if k in kept else min(kept, key=lambda j: (abs(bits(j) - bits(k)), j)) for k in shares}


def fit(samples: list[Sample]) -> DecodeModel | None:
    """Non-negative least squares on relative error: Σ_i (t_i · predicted_seconds_i − 1)², t_i the measured
    tokens/s. Terms the samples cannot separate (one depth only: no per-layer term; one context: no KV term)
    are left out rather than guessed."""
    samples = [s for s in samples if s.tps > 0]
    if not samples:
        return None
    merged = _merged_kinds(samples)
    kinds = sorted(set(merged.values()))
    rows = []
    for s in samples:
        terms = dict(weight_terms(s.arch, s.quant, s.backend))
        row = [sum(n for k, n in terms.items() if merged[k] == kind) for kind in kinds]
        rows.append(row + [kv_read_bytes(s.arch, s.positions), s.arch.n_layers, 1.0])
    a = np.array(rows)
    scale = a.max(axis=0)
    scale[scale == 0] = 1
    use = np.ones(a.shape[1], bool)
    positions = [s.positions for s in samples]
    use[len(kinds)] = max(positions) >= 4 * min(positions)  # a run decoding at depth separates the KV read
    use[len(kinds) + 1] = len({s.arch.n_layers for s in samples}) > 1
    t = np.array([s.tps for s in samples])
    x = np.zeros(a.shape[1])
    x[use] = nnls((a[:, use] / scale[use]) * t[:, None], np.ones(len(samples))) / scale[use]
    rates = {k: float(x[kinds.index(merged[k])]) for k in merged}
    return DecodeModel({k: v for k, v in rates.items()}, float(x[len(kinds)]), float(x[len(kinds) + 1]),
                       float(x[len(kinds) + 2]), len(samples))
