"""A scaling model per device and backend, fitted from that device's own measurements.

The model is per device × backend × precision: each backend's runs calibrate only that backend. Features come
from the catalogue (exact tensor shapes) and the bytes per weight of each precision (models/backends.py: the
per-tensor GGML types of llama.cpp's quantizer, or a framework's fp32/bf16/fp16/int8/int4 matrices); memory is
the figure each run needs (GPU memory for GPU runs, peak RSS elsewhere: limits.memory_figure):
- memory = α · (weights + F16 KV cache at the context, GQA-aware + compute buffer) + β, where α and β are
  least squares (relative) over the device's measured peaks: β is the runtime overhead (process, llama.cpp
  buffers not in the formula), α absorbs the compute buffer's misfit;
- decode and prefill seconds/token: coordinator/predict/speed_model.py, a sum of measured terms: per GGML storage type
  the bytes streamed (decode) or matmul FLOPs (prefill) at that type's own effective rate, the KV cache read (or
  attention FLOPs) at the run's depth, a cost per layer and a cost per token, non-negative least squares;
- beside it, the one-rate roofline (bytes / B_q + layers · c, FLOPs / F_q + layers · c') whose efficiencies
  against the device's probes coordinator/predict/fleet_priors.py lends to devices never calibrated.
A mixture of experts is held whole (memory: every expert) and reads per token only the n_experts_used experts
it is routed to (decode bytes and FLOPs: models/catalogue.py active_fraction); a sliding-window layer's KV
cache holds its window (Architecture.kv_cache_bytes).

Every figure says where it comes from: `measured` (that model and quant on that device), `predicted`
(calibrated on the device; its band covers 90 % of the errors of leave-one-family-out predictions: every model
family the device measured is held out in turn, all its sizes, precisions and depths, and predicted by the
others; a model inside the span of architectures the device calibrated on gets the band of the held-out families
that were inside the others' span, a model outside it (DeviceModel.outside) the band of those that were not), or
`estimated` (nothing
measured on the device: catalogue formula with efficiencies learned from calibrated devices of its kind
(coordinator/predict/fleet_priors.py), else fixed defaults, against the device's probes).
"""

import dataclasses
import difflib
import functools
import math
from collections.abc import Callable

import numpy as np

from fleetfit.coordinator.predict import speed_model
from fleetfit.models.catalogue import CATALOGUE, Architecture, active_fraction, n_params, tensors
from fleetfit.models.job_bounds import NOISE_CV, spread_of
from fleetfit.models.errors import ModelError
from fleetfit.coordinator.predict.runs import backend_of, memory_figure, quant_of, run_shape
from fleetfit.models import backends, physical_bounds
from fleetfit.models.backends import DEFAULT_BACKEND
from fleetfit.models.quant_sizes import file_bits_per_weight
from fleetfit.models.roofline import mean_decode_context
from fleetfit.v1 import fleetfit_pb2 as pb

DEFAULT_CONTEXT = 512  # a run's context when its result does not say
FIT_CONTEXT = 4096  # the context fit answers for by default (or the model's own, when smaller)
# The one speed rule (issue 27): a decode or prefill figure is the speed of the device's usual run shape (llama-bench
# tg/pp from an empty cache: decode attends to (n_gen + 1) / 2 positions, a prompt to n_prompt / 2), whatever
# context its memory is asked at. A measured figure is quoted so already; a predicted one at the same depth, so `fit`
# (memory at 4096 tokens) and the limits tables (memory at the device's run context) give one decode per cell.
SPEED_SHAPE = (512, 128)  # (n_prompt, n_gen) of llama-bench's default tests: a device with no runs
SPEED_RULE = ("decode and prefill figures are at the device's usual run shape (llama-bench tg/pp from an empty cache, "
              "as its runs measured them), whatever the context: the context sets memory only, so `fleetfit fit` and "
              "every limits table give one speed per device, model and precision")
N_UBATCH = 512  # llama.cpp's default micro-batch
KV_BLOCK = 256  # llama.cpp rounds a context's KV cache up to whole blocks of this many positions
DEFAULT_OVERHEAD_BYTES = 64 << 20  # estimated runtime overhead when a device has no measurement
# llama.cpp's vocabulary in host memory, per token: its text, score and attributes and the text-to-id index (peak
# RSS less every buffer llama.cpp logs, at depth 0 on vocabularies of 32k..262k tokens; BPE merges add more)
VOCAB_TABLE_BYTES = 185
DEFAULT_BANDWIDTH_EFFICIENCY = 0.6  # of the triad probe, for devices never measured
DEFAULT_COMPUTE_EFFICIENCY = 0.3  # of the float32 matmul probe
SEED_SIZES = ("distilgpt2", "tinyllama-1.1b", "llama-2-7b", "llama-2-13b", "llama-2-70b")
BAND_COVERAGE = 0.9  # a band covers this share of the held-out errors
OUTSIDE_FACTOR = 2.0  # an architecture this far beyond the calibrated range on an axis is outside it
# Noise (measurement.md: on a shared VM runs repeat to 8.5 % at the median, and a busy neighbour scatters them): a
# point whose repetitions spread more than NOISE_CV (coefficient of variation) is flagged and counts less in the fit
# (weight NOISE_CV / cv); a device's noise floor is the median spread of its points, and no band is narrower.
MIN_BAND = 0.01  # a band never reads ±0 %: below a percent, no run repeats
# A prediction nothing held out validates (a device that measured one family: none to hold out) extrapolates from
# the architectures it measured to others. How far such extrapolations miss: benchmarks/prediction_error.py
# --holdout architectures (a 2-core EPYC, quiet), bands of the families outside the others' span, 90 % coverage.
UNVALIDATED_BAND = {"decode": 0.54, "prefill": 0.39}
# Physics first: no prediction decodes faster than the bytes a token reads allow at the device's bandwidth, nor
# prefills faster than its compute allows. The triad probe counts 3 arrays per pass (STREAM, no write-allocate) and
# llama.cpp's threads reach past it: on the development VM up to 1.5x (tests/fixtures/coverage-ladder: Llama-2-7B
# Q4_0 27 GB/s against a 19.8 GB/s probe). Quantized dot products beat the float32 matmul probe: up to 1.6x there.
BANDWIDTH_HEADROOM = 1.5
COMPUTE_HEADROOM = 2.0
CACHE_BYTES = 256 << 20  # a run reading less per token may be served from the CPU's caches: not a bandwidth figure
AXES = {"vocabulary": lambda a: a.vocab, "width": lambda a: a.hidden, "depth (layers)": lambda a: a.n_layers,
        "GQA ratio": lambda a: a.n_heads // a.n_kv_heads, "head size": lambda a: a.head_dim}


class ScalingError(ValueError):
    """An unknown model or quant name; the message is one line and suggests the nearest names."""


def default_context(arch: Architecture | None) -> int:
    """The context fit answers for when none is asked: FIT_CONTEXT, or the model's trained context if smaller."""
    return min(FIT_CONTEXT, arch.context_length) if arch is not None else FIT_CONTEXT


def resolve(model_name: str, quant: str, backend: str = DEFAULT_BACKEND) -> tuple[Architecture, str]:
    arch = CATALOGUE.get(model_name.strip().lower())
    if arch is None:
        near = difflib.get_close_matches(model_name.strip().lower(), list(CATALOGUE), n=3, cutoff=0.4)
        hint = f"; did you mean {', '.join(near)}?" if near else f"; known: {', '.join(CATALOGUE)}"
        raise ScalingError(f"unknown model {model_name!r}{hint}")
    try:
        spec = backends.backend(backend)
        canonical = spec.canonical(quant)
        spec.matrix_bytes_per_weight(canonical)  # refuses a precision without a size formula
    except ModelError as exc:
        raise ScalingError(str(exc)) from None
    return arch, canonical


# -- features from the catalogue --------------------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def weight_bytes(arch: Architecture, quant: str, backend: str = DEFAULT_BACKEND) -> int:
    return backends.backend(backend).weight_bytes(arch, quant)


def kv_cache_bytes(arch: Architecture, context: float) -> float:
    """F16 K and V of every layer: 2 · layers · n_kv_heads · head_dim · context · 2 bytes (a sliding-window
    layer holds its window: Architecture.kv_cache_bytes)."""
    return arch.kv_cache_bytes(context, N_UBATCH)


def kv_cache_held_bytes(arch: Architecture, context: int) -> float:
    """The KV cache llama.cpp allocates for a context: n_ctx rounded up to whole 256-token blocks."""
    return arch.kv_cache_bytes(-(-int(context) // KV_BLOCK) * KV_BLOCK, N_UBATCH)


def compute_buffer_bytes(arch: Architecture, context: int, resident: bool = False) -> float:
    """llama.cpp's compute buffer for one micro-batch (Architecture.compute_buffer_bytes: logits and
    activations; no context-sized attention matrix with flash attention); `resident`: the part a CPU process
    touches."""
    return arch.compute_buffer_bytes(context, N_UBATCH, resident)


def memory_feature(arch: Architecture, quant: str, context: int, backend: str = DEFAULT_BACKEND,
                   resident: bool = True) -> float:
    """Weights + the KV cache held + the compute buffer: what a CPU process touches (`resident`: its peak RSS), or
    all llama.cpp allocates (GPU memory, where allocation is what counts)."""
    return (weight_bytes(arch, quant, backend) + kv_cache_held_bytes(arch, context)
            + compute_buffer_bytes(arch, context, resident) + (VOCAB_TABLE_BYTES * arch.vocab if resident else 0))


@functools.lru_cache(maxsize=None)
def _weights_read_per_token(arch: Architecture, quant: str, backend: str = DEFAULT_BACKEND) -> float:
    return backends.backend(backend).weight_bytes(arch, quant, per_token=True)


def decode_bytes_per_token(arch: Architecture, quant: str, context: float, backend: str = DEFAULT_BACKEND) -> float:
    """Weights read per token (an untied embedding table only for one row) + the KV cache at `context`."""
    return _weights_read_per_token(arch, quant, backend) + kv_cache_bytes(arch, context)


@functools.lru_cache(maxsize=None)
def _matmul_params(arch: Architecture, with_output: bool = True) -> int:
    """Weights one token multiplies: every matrix but the embedding lookups, the routed experts only, and the
    output projection unless `with_output` is false."""
    matmul = sum(math.prod(s.shape) * active_fraction(arch, s) for s in tensors(arch)
                 if len(s.shape) >= 2 and s.name.endswith("weight")
                 and s.name not in ("token_embd.weight", "position_embd.weight")
                 and (with_output or s.name != "output.weight"))
    return int(matmul) + (arch.vocab * arch.hidden if arch.tied_embeddings and with_output else 0)


def flops_per_token(arch: Architecture, context: float, prompt: bool = False) -> float:
    """2 per weight in a matrix product (not the embedding lookup) + attention over `context` positions. A prompt
    token (prompt=True) skips the output projection: every backend here computes a prompt's logits for its last
    position only (speed_model.weight_terms)."""
    return 2 * _matmul_params(arch, with_output=not prompt) + 4 * arch.n_layers * arch.q_dim * context


# -- calibration ----------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Point:
    """One successful measurement of a catalogued model on the device."""
    model: str
    quant: str
    arch: Architecture
    context: int  # n_ctx of the run
    n_prompt: int
    n_gen: int
    peak_bytes: float | None
    decode_tps: float  # the typical speed (typical_tps: median of the repetitions); tables show the mean
    prefill_tps: float
    result: pb.ProfileResult
    backend: str = DEFAULT_BACKEND
    depth: int = 0  # tokens in the KV cache before each test (llama-bench's n_depth)
    resident: bool = True  # peak_bytes is the host's peak RSS (else GPU memory, where allocations count)
    decode_cv: float | None = None  # spread of the repetitions (spread_of); None with fewer than two
    prefill_cv: float | None = None

    def weight(self, phase: str) -> float:
        """What the fit trusts this point with in `phase`: 1, less for repetitions spread over NOISE_CV."""
        cv = self.decode_cv if phase == "decode" else self.prefill_cv
        return 1.0 if cv is None or cv <= NOISE_CV else NOISE_CV / cv

    @property
    def noisy(self) -> bool:
        return any(cv is not None and cv > NOISE_CV for cv in (self.decode_cv, self.prefill_cv))

    @property
    def decode_positions(self) -> float:
        """Mean cache positions a decoded token attends to: the depth, then (n_gen + 1) / 2 of its own."""
        return mean_decode_context(self.n_gen, self.depth)

    @property
    def prefill_positions(self) -> float:
        return self.depth + self.n_prompt / 2

    @property
    def label(self) -> str:
        return f"{self.model} {self.quant}" + (f" @ depth {self.depth}" if self.depth else "")


def family(model: str) -> str:
    """A model's family for holding out: its name without the size ("llama-3.2-1b" -> "llama-3.2", "smollm2-135m"
    -> "smollm2"); a name with no size part is its own family."""
    head, _, tail = model.rpartition("-")
    return head if head and tail[:1].isdigit() and tail[-1:] in "bmk" else model


def _context(r: pb.ProfileResult) -> int:
    return r.n_ctx or (r.n_prompt or r.request.n_prompt) + (r.n_gen or r.request.n_gen) or DEFAULT_CONTEXT


def points(results: list[pb.ProfileResult], device_id: str, backend: str = DEFAULT_BACKEND) -> list[Point]:
    """Per catalogued model, precision and depth of `backend` on the device: its latest successful result, with
    the speeds of every run like it (typical_tps)."""
    spec = backends.backend(backend)
    runs: dict[tuple[str, str, int], list[pb.ProfileResult]] = {}
    for r in results:
        if (r.device_id != device_id or r.failure or backend_of(r) != spec.name
                or r.model_name not in CATALOGUE or not r.decode_tokens_per_s.mean):
            continue
        if spec.can_size(quant_of(r)):
            runs.setdefault((r.model_name, quant_of(r), r.n_depth), []).append(r)
    pts = []
    for (m, q, depth), same in sorted(runs.items()):
        r = same[-1]
        like = [o for o in same if (o.n_prompt, o.n_gen, o.threads, o.backend_version, o.backend_commit)
                == (r.n_prompt, r.n_gen, r.threads, r.backend_version, r.backend_commit)]
        memory, which = memory_figure(r)
        pts.append(Point(m, q, CATALOGUE[m], _context(r), r.n_prompt or r.request.n_prompt, r.n_gen or r.request.n_gen,
                         float(memory) if memory is not None else None,
                         typical_tps([o.decode_tokens_per_s for o in like]),
                         typical_tps([o.prefill_tokens_per_s for o in like]), r, spec.name, depth,
                         not which.startswith("GPU"), spread_of([o.decode_tokens_per_s for o in like]),
                         spread_of([o.prefill_tokens_per_s for o in like])))
    return pts


def typical_tps(stats: list[pb.Stat]) -> float:
    """The median of the repetitions of every run given (each run's mean where it kept no samples). On a shared
    VM one repetition can stall (5 tokens/s among 300: benchmarks/prediction_error.py), and a mean carries that
    into every prediction the device's fit makes; a run repeated (a second `limits probe`) adds its samples."""
    samples = [x for s in stats for x in (s.samples or [s.mean]) if x > 0]
    return float(np.median(samples)) if samples else 0.0


@dataclasses.dataclass(frozen=True)
class Calibration:
    """A device's fitted terms. Rates are per precision; `rate` borrows one for an unmeasured precision."""
    alpha: float
    overhead_bytes: float
    bandwidth: dict[str, float]  # effective bytes/s per quant (decode)
    decode_layer_s: float  # seconds per layer and token besides the bytes
    compute: dict[str, float]  # effective FLOP/s per quant (prefill)
    prefill_layer_s: float
    decode: speed_model.SpeedModel | None = None  # what predictions use; the rates above are for fleet priors
    prefill: speed_model.SpeedModel | None = None

    def rate(self, rates: dict[str, float], quant: str, backend: str = DEFAULT_BACKEND) -> tuple[float | None, str | None]:
        if not rates:
            return None, None
        if quant in rates:
            return rates[quant], quant
        bits = {q: _bits(backend, q) for q in rates}
        nearest = min(bits, key=lambda q: abs(bits[q] - _bits(backend, quant)))
        return rates[nearest], nearest


@functools.lru_cache(maxsize=None)
def _bits(backend: str, quant: str) -> float:
    """Bits per weight of a precision, to borrow the rate of the nearest measured one (GGUF: llama.cpp's mix on
    a 7B; frameworks: the matrices' bytes)."""
    spec = backends.backend(backend)
    if spec.takes_gguf_types():
        return file_bits_per_weight(CATALOGUE["llama-2-7b"], quant)
    return 8 * spec.matrix_bytes_per_weight(quant)


def _fit_memory(pts: list[Point]) -> tuple[float, float]:
    pts = [p for p in pts if p.peak_bytes]
    x = np.array([memory_feature(p.arch, p.quant, p.context, p.backend, p.resident) for p in pts])
    y = np.array([p.peak_bytes for p in pts])
    if len({p.model for p in pts}) < 2:  # one size: no slope to fit, only the overhead
        return 1.0, float(np.mean(y - x)) if len(pts) else DEFAULT_OVERHEAD_BYTES
    w = 1 / y  # relative least squares: small models count as much as large ones
    (alpha, beta), *_ = np.linalg.lstsq(np.c_[x * w, w], y * w, rcond=None)
    return float(alpha), float(beta)


def _fit_rates(pts: list[Point], x_of, tps_of) -> tuple[dict[str, float], float]:
    """seconds/token = x / R_q + layers · c, least squares in relative terms: R_q per precision, and c, a cost
    per layer and token (graph ops, thread barriers) shared by the precisions. Returns ({quant: R_q}, c)."""
    pts = [p for p in pts if tps_of(p) > 0]
    quants = sorted({p.quant for p in pts})
    if not quants:
        return {}, 0.0
    rows = [[x_of(p) * tps_of(p) if q == p.quant else 0.0 for q in quants] + [p.arch.n_layers * tps_of(p)]
            for p in pts]
    per_layer = len({p.model for p in pts}) >= 2  # one size cannot separate the two terms
    design = np.array(rows) if per_layer else np.array(rows)[:, :-1]
    coef, *_ = np.linalg.lstsq(design, np.ones(len(rows)), rcond=None)
    if per_layer and (coef[-1] < 0 or np.any(coef[:-1] <= 0)):  # a negative cost is noise: refit without it
        coef, *_ = np.linalg.lstsq(np.array(rows)[:, :-1], np.ones(len(rows)), rcond=None)
        per_layer = False
    return {q: 1 / v for q, v in zip(quants, coef) if v > 0}, float(coef[-1]) if per_layer else 0.0


def calibrate(pts: list[Point]) -> Calibration | None:
    if not pts:
        return None
    alpha, beta = _fit_memory(pts)
    bw, c = _fit_rates(pts, lambda p: decode_bytes_per_token(p.arch, p.quant, p.decode_positions, p.backend),
                       lambda p: p.decode_tps)
    fl, c2 = _fit_rates(pts, lambda p: flops_per_token(p.arch, p.prefill_positions, prompt=True),
                       lambda p: p.prefill_tps)
    decode = speed_model.fit([speed_model.Sample(p.arch, p.quant, p.decode_positions, p.decode_tps, p.backend,
                                                 p.label, p.weight("decode")) for p in pts], "decode")
    prefill = speed_model.fit([speed_model.Sample(p.arch, p.quant, p.prefill_positions, p.prefill_tps, p.backend,
                                                  p.label, p.weight("prefill")) for p in pts], "prefill")
    return Calibration(alpha, beta, bw, c, fl, c2, decode, prefill)


# -- predictions ----------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Figure:
    value: float | None
    provenance: str  # "measured" | "predicted" | "estimated"
    method: str
    error_fraction: float | None = None  # ± relative band covering 90 % of leave-one-family-out errors

    def text(self, fmt: str = "{:.3g}") -> str | None:
        if self.value is None:
            return None
        return fmt.format(self.value) if self.provenance == "measured" else "~" + fmt.format(self.value)


def band_of(value: float, fraction: float | None, unit: str = "") -> tuple[float, float]:
    """(low, high) of `value` ± `fraction` of it, however wide the band a device's own leave-one-out errors give (a
    noisy or hostile sweep's can pass 100 %): low never below zero (a speed, a size), high never above the
    physical ceiling of `unit` (a field name's suffix, models/physical_bounds.py) when one is given."""
    fraction = fraction or 0.0
    return value * max(1 - fraction, 0.0), min(value * (1 + fraction), physical_bounds.bounds(unit)[1] if unit
                                               else math.inf)


@dataclasses.dataclass(frozen=True)
class Prediction:
    memory_bytes: Figure
    decode_tps: Figure
    prefill_tps: Figure
    context: int
    ruled_out: str | None = None  # why it cannot fit: a measured out-of-memory at a smaller need (DeviceModel.oom)


@dataclasses.dataclass(frozen=True)
class Efficiency:
    """The fraction of its probe a never-measured device is estimated to reach, what that rests on, its ± relative
    band (None for a fixed default), and a cost per layer and token besides (seconds; 0 for a fixed default)."""
    value: float
    how: str
    band: float | None = None
    layer_s: float = 0.0


def default_efficiency(rate: str) -> Efficiency:
    """The fixed default for `rate` ("bandwidth" | "compute"), when no fleet knowledge applies."""
    if rate == "bandwidth":
        return Efficiency(DEFAULT_BANDWIDTH_EFFICIENCY, f"default {DEFAULT_BANDWIDTH_EFFICIENCY:.0%} of the bandwidth probe")
    return Efficiency(DEFAULT_COMPUTE_EFFICIENCY, f"default {DEFAULT_COMPUTE_EFFICIENCY:.0%} of the matmul probe")


@dataclasses.dataclass(frozen=True)
class DeviceModel:
    """A device's calibration, its error bands and the points they came from."""
    device: pb.DeviceInventory
    points: list[Point]
    calibration: Calibration | None
    errors: dict[str, float | None]  # "memory" | "decode" | "prefill" -> band: 90 % of |relative errors| held out,
    # of the held-out families inside the span of the others (what a model inside the calibrated span gets)
    backend: str = DEFAULT_BACKEND
    priors: "Callable[[str, str], Efficiency] | None" = None  # (rate, quant) -> Efficiency: coordinator/fleet_priors
    # the same for a model outside the calibrated span: the held-out families that were outside the others' span
    errors_outside: dict[str, float | None] = dataclasses.field(default_factory=dict)
    ooms: tuple[pb.ProfileResult, ...] = ()  # the device's measured out-of-memory runs of this backend

    @functools.cached_property
    def noise(self) -> dict[str, float | None]:
        """The device's repeatability per phase: the median spread (coefficient of variation) of its points'
        repetitions; None where no point repeated."""
        out = {}
        for phase in ("decode", "prefill"):
            cvs = [cv for p in self.points if (cv := getattr(p, f"{phase}_cv")) is not None]
            out[phase] = float(np.median(cvs)) if cvs else None
        return out

    def floored(self, phase: str, band: float | None) -> tuple[float, str]:
        """A speed band no narrower than the device's noise floor (nor MIN_BAND), and what says so; with nothing
        held out to validate against, no narrower than UNVALIDATED_BAND either."""
        floor = self.noise.get(phase)
        unvalidated = UNVALIDATED_BAND[phase] if band is None else 0.0
        wide = max(band or 0.0, floor or 0.0, unvalidated, MIN_BAND)
        if floor is not None and floor > NOISE_CV:
            return wide, (f"calibration too noisy: this device's runs repeat only to ±{floor:.0%} (median spread of "
                          f"its repetitions, over the {NOISE_CV:.0%} a trusted point allows); the band is at least that")
        if band is None:
            return wide, (f"band ±{wide:.0%}: nothing measured here can be held out to validate the extrapolation, so "
                          f"it is what predictions of architectures held out from a calibration miss by "
                          f"(benchmarks/prediction_error.py), or the device's repeatability if wider")
        if wide > band:
            return wide, f"band widened to the device's repeatability (±{wide:.0%})"
        return wide, ""

    def ceiling(self, phase: str) -> tuple[float | None, str]:
        """The most bytes/s (decode) or FLOP/s (prefill) a prediction may assume here, and what it rests on: the
        probe with its headroom, or the most this device's own runs reached (decode: of runs reading more than
        its caches hold), whichever is higher; None without either."""
        if phase == "decode":
            probe, headroom, unit, what = self.bandwidth_probe, BANDWIDTH_HEADROOM, "GB/s", "bandwidth probe"
            reached = [decode_bytes_per_token(p.arch, p.quant, p.decode_positions, p.backend) * p.decode_tps
                       for p in self.points if _weights_read_per_token(p.arch, p.quant, p.backend) >= CACHE_BYTES]
        else:
            probe, headroom, unit, what = self.matmul_probe, COMPUTE_HEADROOM, "GFLOP/s", "matmul probe"
            reached = [flops_per_token(p.arch, p.prefill_positions, prompt=True) * p.prefill_tps for p in self.points]
        options = ([(headroom * probe, f"{headroom:g}x the {what} ({probe / 1e9:.1f} {unit})")] if probe else []) + \
            ([(max(reached), "the most this device's own runs reached")] if reached else [])
        if not options:
            return None, ""
        rate, why = max(options)
        return rate, f"{rate / 1e9:.1f} {unit}: {why}"

    def physical(self, figure: Figure, phase: str, arch: Architecture, quant: str, positions: float) -> Figure:
        """`figure` no faster than the device's ceiling allows for the bytes a token reads (decode) or the FLOPs a
        prompt token needs (prefill); a capped figure says so."""
        rate, why = self.ceiling(phase)
        if figure.value is None or rate is None:
            return figure
        if phase == "decode" and _weights_read_per_token(arch, quant, self.backend) < CACHE_BYTES:
            return figure  # it may be read from the CPU's caches, which no DRAM figure bounds
        work = (decode_bytes_per_token(arch, quant, positions, self.backend) if phase == "decode"
                else flops_per_token(arch, positions, prompt=True))
        if figure.value <= rate / work:
            return figure
        return dataclasses.replace(figure, value=rate / work, method=(
            f"{figure.method}; capped at the physical ceiling: {'bytes' if phase == 'decode' else 'FLOPs'} per "
            f"token at {why} (the speed terms gave {figure.value:.3g} tok/s)"))

    def ruled_out(self, arch: Architecture, quant: str, context: int) -> str | None:
        """Why `arch` at `quant` and `context` cannot fit here: a measured out-of-memory at a context no larger
        and a need (weights + KV cache + compute buffer) no larger. None when no such run."""
        need = memory_feature(arch, quant, context, self.backend)
        for r in self.ooms:
            smaller = CATALOGUE[r.model_name]
            if _context(r) <= context and memory_feature(smaller, quant_of(r), _context(r), self.backend) <= need:
                return (f"measured: {r.model_name} {quant_of(r)} at n_ctx {_context(r)} ran out of memory here "
                        f"(result {r.result_id}), and this needs at least as much")
        return None

    @property
    def bandwidth_probe(self) -> float | None:
        bw = [b.gb_per_s for b in self.device.probes.bandwidth if b.HasField("gb_per_s")]
        return max(bw) * 1e9 if bw else None

    @property
    def matmul_probe(self) -> float | None:
        fl = [m.gflop_per_s for m in self.device.probes.matmul if m.HasField("gflop_per_s")]
        return max(fl) * 1e9 if fl else None

    def measured(self, model: str, quant: str) -> Point | None:
        """The run of that model and precision from an empty cache (a run at depth only calibrates)."""
        return next((p for p in self.points if (p.model, p.quant, p.depth) == (model, quant, 0)), None)

    def speed_positions(self) -> tuple[float, float]:
        """(decode, prefill) cache positions a predicted speed is quoted at (SPEED_RULE): those of the device's
        latest run from an empty cache, else of SPEED_SHAPE."""
        run = max((p for p in self.points if p.depth == 0), key=lambda p: p.result.started_unix_s, default=None)
        n_prompt, n_gen = (run.n_prompt, run.n_gen) if run and run.n_gen else SPEED_SHAPE
        return mean_decode_context(n_gen), n_prompt / 2

    def context_for(self, arch: Architecture, quant: str, measured: "Point | None" = None) -> int:
        """The context `predict` answers at when asked none: the run's, where this device measured that model and
        precision, else the context its runs usually have."""
        measured = measured or self.measured(arch.name, quant)
        return measured.context if measured else self._usual_context()

    def predict(self, arch: Architecture, quant: str, context: int | None = None,
                decode_context: float | None = None, prefill_context: float | None = None) -> Prediction:
        """Memory for a context of `context` tokens; decode with `decode_context` positions in the KV cache and
        prefill attending to `prefill_context` positions on average (default for both: SPEED_RULE, the device's
        usual run shape, whatever `context` is)."""
        measured = self.measured(arch.name, quant)
        ctx = context or self.context_for(arch, quant, measured)
        if measured and ctx == measured.context:
            how = f"measured at n_ctx {ctx} (result {measured.result.result_id})"
            r = measured.result
            return Prediction(Figure(measured.peak_bytes, "measured", "peak RSS, " + how),
                              Figure(r.decode_tokens_per_s.mean, "measured", "llama-bench tg mean, " + how),
                              Figure(r.prefill_tokens_per_s.mean or None, "measured", "llama-bench pp mean, " + how), ctx)
        out = self._predict(arch, quant, ctx, measured, decode_context, prefill_context)
        return dataclasses.replace(out, ruled_out=self.ruled_out(arch, quant, ctx))

    def _predict(self, arch: Architecture, quant: str, ctx: int, measured: Point | None,
                 decode_context: float | None, prefill_context: float | None) -> Prediction:
        cal = self.calibration
        if cal is None:
            return self._estimate(arch, quant, ctx, decode_context, prefill_context)
        if measured and measured.peak_bytes:  # measured at another context: its speed, its memory grown to ctx
            r, shape = measured.result, run_shape(measured.result)
            grown = cal.alpha * (memory_feature(arch, quant, ctx, self.backend, measured.resident)
                                 - memory_feature(arch, quant, measured.context, self.backend, measured.resident))
            return Prediction(
                Figure(measured.peak_bytes + grown, "predicted",
                       f"measured peak at n_ctx {measured.context} (result {r.result_id}) + KV cache and compute "
                       f"buffer to ctx {ctx}, scaled {cal.alpha:.3f}"),
                self._at_depth(measured, "decode", cal.decode, decode_context, r.decode_tokens_per_s.mean,
                               measured.decode_positions, f"llama-bench tg mean at {shape} (result {r.result_id})"),
                self._at_depth(measured, "prefill", cal.prefill, prefill_context, r.prefill_tokens_per_s.mean or None,
                               measured.prefill_positions, f"llama-bench pp mean at {shape} (result {r.result_id})"),
                ctx)
        memory = cal.alpha * memory_feature(arch, quant, ctx, self.backend, self._resident()) + cal.overhead_bytes
        bands = self.bands(arch)
        n = len({p.model for p in self.points})
        mem_how = (f"weights + KV(ctx {ctx}) + compute buffer, scaled {cal.alpha:.3f} + overhead "
                   f"{cal.overhead_bytes / 2**20:.0f} MiB, fitted on {len(self.points)} runs of {n} sizes here")
        decode_at, prefill_at = self.speed_positions()
        decode = self._speed(cal.decode, arch, quant, decode_context if decode_context is not None else decode_at,
                             bands["decode"], "decode")
        prefill = self._speed(cal.prefill, arch, quant, prefill_context if prefill_context is not None else prefill_at,
                              bands["prefill"], "prefill")
        return Prediction(Figure(memory, "predicted", mem_how, bands["memory"]), decode, prefill, ctx)

    def bands(self, arch: Architecture) -> dict[str, float | None]:
        """The bands a prediction for `arch` carries: those of held-out families inside the others' span, or,
        for a model outside the span calibrated here, those of the families that were outside (else all's)."""
        if not self.outside(arch):
            return self.errors
        return {k: self.errors_outside.get(k) or v for k, v in self.errors.items()}

    def _at_depth(self, measured: Point, phase: str, model: speed_model.SpeedModel | None, positions: float | None,
                  value: float | None, measured_positions: float, how: str) -> Figure:
        """A measured speed as it is, or, asked at another depth, scaled by the speed model's ratio between the two
        depths (the KV read or attention it adds), labelled predicted."""
        if positions is None or model is None or value is None or abs(positions - measured_positions) < 1:
            return Figure(value, "measured", how)
        ratio = model.tps(measured.arch, measured.quant, positions) / model.tps(measured.arch, measured.quant,
                                                                                 measured_positions)
        band, why = self.floored(phase, self.errors[phase])
        figure = Figure(value * ratio, "predicted", f"{how}, scaled by the speed terms to {positions:.0f} cache "
                        f"positions ({ratio:.2f}x): {model.text()}" + (f"; {why}" if why else ""), band)
        return self.physical(figure, phase, measured.arch, measured.quant, positions)

    def _speed(self, model: speed_model.SpeedModel | None, arch: Architecture, quant: str, positions: float,
               band: float | None, phase: str) -> Figure:
        """A predicted decode or prefill rate with `positions` cache positions attended, saying what it rests on:
        the device's speed terms, within the physical ceiling, with a band no narrower than its noise floor."""
        if model is None:
            return Figure(None, "predicted", "nothing measured on this device for this phase")
        borrowed = model.borrowed(arch, quant, self.backend)
        lent = "; never measured here: " + ", ".join(f"{k} at {v}'s rate" for k, v in sorted(borrowed.items())) \
            if borrowed else ""
        how = (f"speed terms fitted on {len(model.fitted_on)} runs here ({', '.join(model.fitted_on)}): "
               f"{model.text()}; at {positions:.0f} cache positions{lent}")
        if band is not None:
            span = "outside" if self.outside(arch) else "inside"
            how += (f"; band ±{band:.0%} covers {BAND_COVERAGE:.0%} of leave-one-family-out errors of families "
                    f"{span} the span of the others")
        if len({p.model for p in self.points}) == 1:
            how += self._efficiency_text(model, phase)
        band, why = self.floored(phase, band)
        noisy = [p.label for p in self.points if p.noisy]
        if noisy:
            how += f"; noisy points down-weighted (repetitions spread over {NOISE_CV:.0%}): {', '.join(noisy)}"
        figure = Figure(model.tps(arch, quant, positions, self.backend), "predicted", how + (f"; {why}" if why else ""),
                        band)
        return self.physical(figure, phase, arch, quant, positions)

    def _efficiency_text(self, model: speed_model.SpeedModel, phase: str) -> str:
        """For a device that measured one model: its speed is the probe × the efficiency its own runs reached."""
        probe = self.bandwidth_probe if phase == "decode" else self.matmul_probe
        rates = {1 / v for v in model.s_per_unit.values() if v > 0}
        if not probe or len(rates) != 1:
            return "; one model measured here: its own runs' rate, scaled by each model's work per token"
        return (f"; one model measured here: {'the bandwidth' if phase == 'decode' else 'the matmul'} probe x an "
                f"efficiency of {rates.pop() / probe:.2f} from its own runs, scaled by each model's work per token")

    def outside(self, arch: Architecture) -> list[str]:
        """Why `arch` is far from every architecture the device calibrated on (each axis more than OUTSIDE_FACTOR
        beyond the measured range, or a structure none of them has): its predictions are extrapolations there."""
        archs = {p.arch.name: p.arch for p in self.points}.values()
        if not archs:
            return []
        why = []
        for axis, value_of in AXES.items():
            values = [value_of(a) for a in archs]
            value, low, high = value_of(arch), min(values), max(values)
            if value > OUTSIDE_FACTOR * high:
                why.append(f"{axis} {value:,g} is over {OUTSIDE_FACTOR:g}x the largest measured, {high:,g}")
            elif value * OUTSIDE_FACTOR < low:
                why.append(f"{axis} {value:,g} is under 1/{OUTSIDE_FACTOR:g} of the smallest measured, {low:,g}")
        if arch.is_moe and not any(a.is_moe for a in archs):
            why.append("a mixture of experts, and none was measured")
        if arch.sliding_window and not any(a.sliding_window for a in archs):
            why.append("sliding-window attention, and no such model was measured")
        return why

    def _resident(self) -> bool:
        """Whether this device's memory figures are host RSS (most of its points), not GPU memory."""
        return sum(p.resident for p in self.points) * 2 >= len(self.points)

    def _usual_context(self) -> int:
        return self.points[-1].context if self.points else DEFAULT_CONTEXT

    def _estimate(self, arch: Architecture, quant: str, ctx: int, decode_context: float | None = None,
                  prefill_context: float | None = None) -> Prediction:
        why = "estimated: nothing measured on this device yet"
        decode_at, prefill_at = self.speed_positions()
        decode_at = decode_context if decode_context is not None else decode_at
        prefill_at = prefill_context if prefill_context is not None else prefill_at
        memory = memory_feature(arch, quant, ctx, self.backend) + DEFAULT_OVERHEAD_BYTES
        bw, fl = self.bandwidth_probe, self.matmul_probe
        priors = self.priors or (lambda rate, _quant: default_efficiency(rate))
        bw_eff, fl_eff = priors("bandwidth", quant), priors("compute", quant)
        decode = (1 / (decode_bytes_per_token(arch, quant, decode_at, self.backend) / (bw_eff.value * bw)
                       + arch.n_layers * bw_eff.layer_s)) if bw else None
        prefill = (1 / (flops_per_token(arch, prefill_at, prompt=True) / (fl_eff.value * fl)
                        + arch.n_layers * fl_eff.layer_s)) if fl else None
        no_probe = "; no probe of the device (fleetfit-agent probe), so no figure"
        floor = lambda b: max(b, MIN_BAND) if b is not None else None  # noqa: E731
        return Prediction(
            Figure(memory, "estimated", f"{why}; catalogue weights + KV + compute buffer + "
                   f"{DEFAULT_OVERHEAD_BYTES >> 20} MiB default overhead"),
            self.physical(Figure(decode, "estimated", f"{why}; {bw_eff.how}" + ("" if bw else no_probe),
                                 floor(bw_eff.band) if bw else None), "decode", arch, quant, decode_at),
            self.physical(Figure(prefill, "estimated", f"{why}; {fl_eff.how}" + ("" if fl else no_probe),
                                 floor(fl_eff.band) if fl else None), "prefill", arch, quant, prefill_at),
            ctx)


def leave_one_family_out(pts: list[Point]) -> list[tuple[Point, Prediction, bool]]:
    """Each measured family predicted by a calibration that never saw it (all its sizes, precisions and depths
    held out): what a prediction for an architecture the device never ran is worth. The flag: whether the held-out
    architecture was outside the span of the others (DeviceModel.outside), where a device's own prediction would
    say it extrapolates."""
    out = []
    for held in sorted({family(p.model) for p in pts}):
        rest = [p for p in pts if family(p.model) != held]
        if len({p.model for p in rest}) < 2:
            continue
        model = DeviceModel(pb.DeviceInventory(), rest, calibrate(rest), {"memory": None, "decode": None, "prefill": None},
                            rest[0].backend)
        for p in (p for p in pts if family(p.model) == held):
            if p.quant in model.calibration.bandwidth:  # a precision it has seen on other families
                out.append((p, model.predict(p.arch, p.quant, p.context, p.decode_positions, p.prefill_positions),
                            bool(model.outside(p.arch))))
    return out


def band(errors: list[float]) -> float | None:
    """The ± relative band that covers BAND_COVERAGE of the errors (the next one up: never below what was seen
    in that share of cases)."""
    if not errors:
        return None
    return float(np.quantile(np.abs(errors), BAND_COVERAGE, method="higher"))


def relative_errors(pairs: list[tuple[Point, Prediction, bool]]) -> dict[str, list[float]]:
    errors = {"memory": [], "decode": [], "prefill": []}
    for p, pred, _outside in pairs:
        for key, measured, figure in (("memory", p.peak_bytes, pred.memory_bytes), ("decode", p.decode_tps,
                                      pred.decode_tps), ("prefill", p.prefill_tps, pred.prefill_tps)):
            if measured and figure.value:
                errors[key].append(figure.value / measured - 1)
    return errors


def device_model(device: pb.DeviceInventory, results: list[pb.ProfileResult], backend: str = DEFAULT_BACKEND,
                 priors: "Callable[[str, str], Efficiency] | None" = None) -> DeviceModel:
    """The device's scaling model for one backend, calibrated on that backend's runs there; `priors` give the
    efficiencies an uncalibrated device is estimated with (coordinator/predict/fleet_priors.py; default: fixed ones)."""
    spec = backends.backend(backend)
    pts = points(results, device.device_id, spec.name)
    held = leave_one_family_out(pts)
    inside = [h for h in held if not h[2]] or held  # no family inside the others' span: every one's errors
    bands = {k: band(v) for k, v in relative_errors(inside).items()}
    outside = {k: band(v) for k, v in relative_errors([h for h in held if h[2]] or held).items()}
    return DeviceModel(device, pts, calibrate(pts), bands, spec.name, priors, outside, oom_runs(results, device.device_id,
                                                                                             spec.name))


def oom_runs(results: list[pb.ProfileResult], device_id: str, backend: str = DEFAULT_BACKEND) -> tuple:
    """The device's runs of catalogued models on `backend` that ran out of memory, as measured (not the sizes a
    ladder skipped on a plan's estimate)."""
    return tuple(r for r in results if r.device_id == device_id and r.failure == pb.FAILURE_KIND_OOM
                 and backend_of(r) == backend and r.model_name in CATALOGUE
                 and r.provenance.provenance_kind != pb.PROVENANCE_KIND_ESTIMATED)


def params_text(arch: Architecture) -> str:
    n = n_params(arch)
    return f"{n / 1e9:.1f}B" if n >= 1e9 else f"{n / 1e6:.0f}M"
