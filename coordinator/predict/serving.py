"""Serving capacity from concurrency sweeps (ProfileResult.serving): how many streams a device serves, each at a
per-stream speed, how fast they go together, and what that costs in memory, latency and energy.

A sweep measures, for N streams decoded together, the aggregate decode tok/s A(N); one decode step (a token for
each of the N streams) takes t(N) = N / A(N). The model is the roofline with a batch, in the form that measured
sweeps follow:

    t(N) = a + b · N

a is paid once per step for the whole batch (reading the weights, per-layer graph work), b by each stream (its
FLOPs per token at the batch's compute rate, reading its own KV cache). The overlap form of the roofline,
max(weights / bandwidth, N · FLOPs / compute) + N · KV read, fits llama-batched-bench's CPU sweeps (measurement.md:
SmolLM2 Q4_0 175 / 268 / 335 / 359 tok/s at 1 / 4 / 8 / 16) no better held out (benchmarks/serving_prediction.py
prints both: largest errors 12.2 % and 12.4 %) and needs one more term, so the sum is what is fitted.

- A count the sweep measured is measured; its N = 1 is the result's own one-stream run (the figure `limits speed`
  and `fit` show for that run). Physics makes the aggregate non-decreasing and the per-stream speed non-increasing
  in N; a noisy sweep that breaks either is replaced by its monotone fit (isotonic regression), labelled so.
- Another count of a swept model: a and b by least squares (relative) on its own points. Predicted; band: the
  largest leave-one-point-out error on the device's sweeps.
- A model not swept on the device: a + b = one stream's step from the device's scaling model (scaling.py:
  measured, or predicted), b = FLOPs per token / C_q + layers · e + KV cache bytes / B_q, where C_q (per precision)
  and e are fitted on the slopes of the device's swept models, B_q is the scaling model's decode bandwidth.
  Predicted; band: the largest leave-one-model-out error (plus the one-stream band when that is predicted).
- Memory for N streams: the measured peak at the largest swept count, plus the architecture's KV cache (F16,
  GQA-aware) for each further stream; counts are capped where that passes 95 % of the device's memory, and at
  EXTRAPOLATION × the largest count swept on the device.
"""

import dataclasses
import math

import numpy as np

from fleetfit.coordinator.predict import scaling
from fleetfit.coordinator.predict.runs import backend_of, memory_figure, quant_of, run_shape
from fleetfit.models.catalogue import CATALOGUE, Architecture
from fleetfit.v1 import fleetfit_pb2 as pb

INTERACTIVE_TPS = 8.0  # per stream: the interactive use's speed (tables' interactive_tps, fit --streams)
PROMPT_TOKENS, RESPONSE_TOKENS = 256, 256  # the request shape the serving table answers for by default
MEMORY_LIMIT = 0.95  # of the device's memory: fit's does_not_fit band
NOISY_SWEEP = " (monotone fit of a noisy sweep)"
EXTRAPOLATION = 8  # predictions go at most this many times past the largest count swept on the device


@dataclasses.dataclass(frozen=True)
class SweepPoint:
    """N streams decoded together, as measured."""
    streams: int
    aggregate_tps: float
    per_stream_tps: float
    prefill_tps: float | None  # N prompts together
    ttft_ms_p50: float | None
    ttft_ms_p99: float | None
    peak_bytes: float | None
    decode_j_per_token: float | None
    source: str  # "sweep" | "one-stream run"

    @property
    def step_s(self) -> float:
        return self.streams / self.aggregate_tps


def _mean(stat: pb.Stat) -> float | None:
    return stat.mean if stat.mean > 0 and math.isfinite(stat.mean) else None


def _sweep_point(s: pb.ServingPoint) -> SweepPoint | None:
    aggregate = _mean(s.aggregate_decode_tokens_per_s)
    if s.parallel < 1 or aggregate is None:
        return None
    gpu = s.gpu_memory if s.HasField("gpu_memory") else None
    peak = gpu.fit_bytes if gpu is not None and gpu.HasField("fit_bytes") else _mean(s.peak_memory_bytes)
    energy = s.decode_energy_per_token_j if s.HasField("decode_energy_per_token_j") else None
    per_stream = min(_mean(s.per_stream_decode_tokens_per_s) or aggregate / s.parallel, aggregate)  # never above all
    return SweepPoint(s.parallel, aggregate, per_stream,
                      _mean(s.prefill_tokens_per_s), _mean(s.ttft_ms_p50), _mean(s.ttft_ms_p99),
                      float(peak) if peak else None, energy if energy and math.isfinite(energy) else None, "sweep")


def _one_stream_point(r: pb.ProfileResult) -> SweepPoint | None:
    decode = _mean(r.decode_tokens_per_s)
    if decode is None:
        return None
    ttft, memory = _mean(r.ttft_ms), memory_figure(r)[0]
    phase = next((p for p in r.power.phases if p.phase == "decode" and p.source == r.power.headline_source
                  and p.HasField("joules_per_token")), None)
    return SweepPoint(1, decode, decode, _mean(r.prefill_tokens_per_s), ttft, ttft, float(memory) if memory else None,
                      phase.joules_per_token if phase else None, "one-stream run")


@dataclasses.dataclass(frozen=True)
class Curve:
    """One result's sweep: its points by stream count (one each, ascending)."""
    device_id: str
    backend: str
    model: str
    quant: str
    shape: str
    result: pb.ProfileResult = dataclasses.field(repr=False)
    points: tuple[SweepPoint, ...] = ()

    @property
    def arch(self) -> Architecture | None:
        return CATALOGUE.get(self.model)

    @property
    def n_prompt(self) -> int:
        return self.result.n_prompt or self.result.request.n_prompt

    @property
    def n_gen(self) -> int:
        return self.result.n_gen or self.result.request.n_gen

    @property
    def decode_context(self) -> float:
        """Positions each stream's attention reads on average while decoding."""
        return self.n_prompt + (self.n_gen + 1) / 2

    def at(self, streams: int) -> SweepPoint | None:
        return next((p for p in self.points if p.streams == streams), None)

    @property
    def counts(self) -> str:
        return ",".join(str(p.streams) for p in self.points)

    @property
    def monotonic(self) -> bool:
        """Whether the sweep as measured was monotone (noise can make it not: its points are then a monotone fit)."""
        return not any(p.source.endswith(NOISY_SWEEP) for p in self.points)


def curves(results: list[pb.ProfileResult], device_id: str | None = None) -> list[Curve]:
    """The latest successful sweep per device, backend, model, precision and run shape (results oldest first)."""
    latest = {}
    for r in results:
        if not r.failure and r.serving and device_id in (None, r.device_id):
            latest[(r.device_id, backend_of(r), r.model_name, quant_of(r), run_shape(r))] = r
    out = []
    for key, r in sorted(latest.items()):
        by_count = {p.streams: p for p in map(_sweep_point, r.serving) if p is not None}  # the last of a repeated N
        if not by_count:
            continue
        if (one := _one_stream_point(r)) is not None:  # one stream is the run's own decode: what `limits speed` shows
            by_count[1] = one
        out.append(Curve(*key, r, monotone([by_count[n] for n in sorted(by_count)])))
    return out


def monotone(points: list[SweepPoint]) -> tuple[SweepPoint, ...]:
    """A sweep as physics allows it: aggregate speed never falling as streams are added (isotonic regression: pool
    adjacent violators) and per-stream speed never rising (each count's aggregate at most the previous one's scaled
    by the counts). Noise makes a measured sweep break both; a point moved says so in its source."""
    blocks: list[list] = []  # [sum of aggregates, how many, first index]
    for i, p in enumerate(points):
        blocks.append([p.aggregate_tps, 1, i])
        while len(blocks) > 1 and blocks[-2][0] / blocks[-2][1] > blocks[-1][0] / blocks[-1][1]:
            total, n, _ = blocks.pop()
            blocks[-1][0] += total
            blocks[-1][1] += n
    fitted = [total / n for total, n, _ in blocks for _ in range(n)]
    out, previous = [], None
    for p, aggregate in zip(points, fitted):
        if previous is not None:
            aggregate = min(aggregate, previous.aggregate_tps * p.streams / previous.streams)
        per_stream = min(p.per_stream_tps, aggregate, previous.per_stream_tps if previous else math.inf)
        moved = abs(aggregate - p.aggregate_tps) > 1e-9 * p.aggregate_tps or per_stream != p.per_stream_tps
        previous = dataclasses.replace(p, aggregate_tps=aggregate, per_stream_tps=per_stream, source=p.source + (
            NOISY_SWEEP if moved else ""))
        out.append(previous)
    return tuple(out)


# -- the step-time line t(N) = a + b·N -------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Line:
    fixed_s: float  # a: per decode step, for the whole batch
    per_stream_s: float  # b: per step, for each stream

    def step_s(self, streams: float) -> float:
        return self.fixed_s + self.per_stream_s * streams

    def aggregate_tps(self, streams: float) -> float:
        return streams / self.step_s(streams)

    def streams_at(self, min_tps: float) -> float:
        """The most streams (a real number) that each still get `min_tps`: 1 / (a + b·N) >= min_tps."""
        if self.per_stream_s <= 0:
            return math.inf if self.fixed_s * min_tps <= 1 else 0.0
        return max((1 / min_tps - self.fixed_s) / self.per_stream_s, 0.0)


def fit_line(points: list[tuple[int, float]], slope_s: float | None = None) -> Line | None:
    """t(N) = a + b·N through (N, step seconds): least squares in relative terms with two or more counts; through
    one count with a slope from elsewhere (the device's calibration). None when the steps shorten as streams are
    added (nothing a roofline can describe) or there is too little to fit."""
    counts = np.array([n for n, _ in points], dtype=float)
    steps = np.array([t for _, t in points], dtype=float)
    if len(set(counts)) >= 2:
        (a, b), *_ = np.linalg.lstsq(np.c_[1 / steps, counts / steps], np.ones(len(steps)), rcond=None)
        if b < 0:
            return None
        if a < 0:  # no fixed part: the line through the origin
            a, b = 0.0, float(np.sum(counts / steps) / np.sum((counts / steps) ** 2))
        return Line(float(a), float(b))
    if len(points) == 1 and slope_s is not None and slope_s >= 0:
        (n, t), = points
        a = t - slope_s * n
        return Line(a, slope_s) if a >= 0 else Line(0.0, t / n)
    return None


def _line_of(curve: Curve, slope_s: float | None = None, without: int | None = None) -> Line | None:
    return fit_line([(p.streams, p.step_s) for p in curve.points if p.streams != without], slope_s)


# -- the device's calibration: what one more stream costs, for any architecture ---------------------------------

@dataclasses.dataclass(frozen=True)
class _Slope:
    """A swept model's per-stream step cost, less its KV cache read: what FLOPs per token / C_q + layers · e fit."""
    model: str
    quant: str
    arch: Architecture
    context: float
    seconds: float


def _kv_read_s(dm: scaling.DeviceModel, arch: Architecture, quant: str, context: float) -> float:
    bandwidth = dm.calibration.rate(dm.calibration.bandwidth, quant, dm.backend)[0] if dm.calibration else None
    return scaling.kv_cache_bytes(arch, context) / bandwidth if bandwidth else 0.0


@dataclasses.dataclass(frozen=True)
class Calibration:
    compute: dict[str, float]  # C_q: FLOP/s per precision a batch of streams reaches
    layer_s: float  # e: seconds per layer and stream besides the FLOPs
    fitted_on: tuple[str, ...]  # "model quant" of the sweeps
    floored: tuple[str, ...] = ()  # those whose measured per-stream cost noise hid: floored at the compute ceiling

    def per_stream_s(self, dm: scaling.DeviceModel, arch: Architecture, quant: str, context: float
                     ) -> tuple[float, str] | None:
        rate, used = dm.calibration.rate(self.compute, quant, dm.backend) if dm.calibration else (None, None)
        if not rate:
            return None
        borrowed = "" if used == quant else f"; {quant} never swept here, compute of {used}"
        return (scaling.flops_per_token(arch, context) / rate + arch.n_layers * self.layer_s
                + _kv_read_s(dm, arch, quant, context),
                f"per stream: FLOPs/token at {rate / 1e9:.1f} GFLOP/s + {self.layer_s * 1e6:.0f} µs per layer + its KV "
                f"cache read, fitted on the sweeps of {', '.join(self.fitted_on)}{borrowed}"
                + (f"; noisy sweeps floored at the compute ceiling: {', '.join(self.floored)}" if self.floored else ""))


def calibrate(dm: scaling.DeviceModel, swept: list[Curve]) -> Calibration | None:
    """C_q and e fitted on the per-stream costs of the device's sweeps. A noisy sweep (a busy neighbour: its monotone
    fit flat, or steps that shorten) can show a per-stream cost at or below its KV cache read, which no roofline
    allows: its cost is floored at the FLOPs per token at the device's compute ceiling (scaling's physical rule),
    so the device still predicts the models it never swept, and the method says which sweeps were floored."""
    slopes, floored = [], []
    ceiling, _ = dm.ceiling("prefill")
    for c in swept:
        if c.arch is None or len(c.points) < 2:
            continue
        line = _line_of(c)
        seconds = line.per_stream_s - _kv_read_s(dm, c.arch, c.quant, c.decode_context) if line else None
        least = scaling.flops_per_token(c.arch, c.decode_context) / ceiling if ceiling else None
        if least is not None and (seconds is None or seconds < least):
            seconds = least
            floored.append(f"{c.model} {c.quant}")
        if seconds is not None and seconds > 0:
            slopes.append(_Slope(c.model, c.quant, c.arch, c.decode_context, seconds))
    if not slopes:
        return None
    # the scaling model's own fit (seconds = x / R_q + layers · c, relative least squares), on the slopes
    compute, layer_s = scaling._fit_rates(slopes, lambda s: scaling.flops_per_token(s.arch, s.context),
                                          lambda s: 1 / s.seconds)
    if not compute:
        return None
    return Calibration(compute, layer_s, tuple(dict.fromkeys(f"{s.model} {s.quant}" for s in slopes)),
                       tuple(floored))


# -- predictions ------------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class CurveModel:
    """What serving figures for one model and precision on a device come from."""
    line: Line | None
    provenance: str  # "measured" (a sweep of this model) | "predicted" (calibrated on other sweeps)
    method: str
    error_fraction: float | None  # band of a predicted aggregate speed
    curve: Curve | None  # the sweep, when this model was swept
    one_stream: scaling.Prediction | None  # the scaling model's, for a model never swept


@dataclasses.dataclass(frozen=True)
class Capacity:
    """The most streams that each get `min_tps`, and what serving them gives."""
    streams: int
    provenance: str  # "measured" | "predicted"
    method: str
    band: tuple[int, int] | None  # streams under the aggregate speed's band (predicted)
    aggregate_tps: scaling.Figure
    per_stream_tps: scaling.Figure
    point: SweepPoint | None  # the measured point at `streams`
    source: CurveModel

    def streams_range(self) -> str | None:
        """A predicted count's range within the band of the aggregate speed, e.g. "15–32" (None: none)."""
        if self.provenance == "measured" or not self.band or self.band == (self.streams, self.streams):
            return None
        return f"{self.band[0]}–{self.band[1]}"


@dataclasses.dataclass(frozen=True)
class ServingModel:
    """A device's sweeps for one backend, the calibration they give and its leave-one-out errors."""
    dm: scaling.DeviceModel
    curves: list[Curve]
    calibration: Calibration | None
    point_error: float | None  # largest |relative error| of a held-out count's aggregate speed
    model_error: float | None  # largest |relative error| of a held-out model's sweep

    @property
    def largest_swept(self) -> int:
        return max((p.streams for c in self.curves for p in c.points), default=1)

    def curve(self, model: str, quant: str) -> Curve | None:
        """The sweep of `model` at `quant` with the most counts (the latest of those)."""
        found = [c for c in self.curves if (c.model, c.quant) == (model, quant)]
        return max(reversed(found), key=lambda c: len(c.points), default=None)

    def curve_model(self, arch_or_model: Architecture | str, quant: str, curve: Curve | None = None,
                    context: tuple[int, float] | None = None) -> CurveModel:
        """The sweep of the model (or `curve`), else a prediction for a run of `context` (KV tokens per stream,
        mean decode positions; default: the device's latest sweep's)."""
        model = arch_or_model if isinstance(arch_or_model, str) else arch_or_model.name
        arch = CATALOGUE.get(model)
        curve = curve or self.curve(model, quant)
        if curve is not None:
            slope = self._slope(arch, quant, curve.decode_context) if len(curve.points) == 1 else None
            line = _line_of(curve, slope[0] if slope else None)
            how = (f"sweep of result {curve.result.result_id} at {curve.shape} (streams {curve.counts})"
                   + ("" if line or len(curve.points) == 1 else "; its steps shorten as streams are added, so "
                      "nothing is predicted beyond the counts measured")
                   + ("; other counts: t(N) = a + b·N fitted on its points" if line and len(curve.points) > 1 else "")
                   + (f"; other counts: through its one point with the device's {slope[1]}" if line and slope else ""))
            return CurveModel(line, "measured", how, self.point_error if len(curve.points) > 1 else self.model_error,
                              curve, None)
        if arch is None or self.calibration is None:
            why = "no catalogued shape" if arch is None else "no sweep on this device fits the roofline"
            return CurveModel(None, "predicted", f"not swept here, and {why}", None, None, None)
        # one stream is the speed table's cell (scaling.SPEED_RULE), unless a held-out sweep's own depth is asked
        asked, context = context is not None, context or self._usual_context()
        one = self.dm.predict(arch, quant, context=context[0], decode_context=context[1] if asked else None)
        slope = self._slope(arch, quant, context[1])
        if one.decode_tps.value is None or slope is None:
            return CurveModel(None, "predicted", "not swept here: " + one.decode_tps.method, None, None, one)
        t1, b = 1 / one.decode_tps.value, slope[0]
        line = Line(t1 - b, b) if t1 >= b else Line(0.0, t1)
        band = (None if self.model_error is None else
                self.model_error + (one.decode_tps.error_fraction or 0) * (one.decode_tps.provenance != "measured"))
        return CurveModel(line, "predicted", f"not swept here: one stream {one.decode_tps.provenance} "
                          f"({one.decode_tps.method}); {slope[1]}", band, None, one)

    def _slope(self, arch: Architecture | None, quant: str, context: float) -> tuple[float, str] | None:
        if arch is None or self.calibration is None:
            return None
        return self.calibration.per_stream_s(self.dm, arch, quant, context)

    def _usual_context(self) -> tuple[int, float]:
        """(KV context per stream, mean decode context) of the device's latest sweep."""
        c = max(self.curves, key=lambda c: c.result.started_unix_s)
        return c.n_prompt + c.n_gen, c.decode_context

    def memory_cap(self, arch: Architecture | None, cm: CurveModel, capacity_bytes: int) -> tuple[int | None, str]:
        """The most streams whose KV caches fit under 95% of `capacity_bytes`, and how that was found."""
        per_stream, base, how = self.memory_line(arch, cm)
        if per_stream is None or not capacity_bytes:
            return None, how
        return max(int((MEMORY_LIMIT * capacity_bytes - base) // per_stream), 0), how

    def memory_line(self, arch: Architecture | None, cm: CurveModel) -> tuple[float | None, float, str]:
        """(KV bytes per stream, bytes besides the streams' caches, how): memory(N) = base + N · per stream."""
        if arch is None:
            return None, 0.0, "no catalogued shape: KV cache per stream unknown"
        if cm.curve is not None:
            measured = [p for p in cm.curve.points if p.peak_bytes]
            if not measured:
                return None, 0.0, "the sweep has no memory figure"
            top = measured[-1]
            per_stream = scaling.kv_cache_bytes(arch, cm.curve.n_prompt + cm.curve.n_gen)
            return per_stream, top.peak_bytes - top.streams * per_stream, (
                f"measured peak at {top.streams} streams + F16 KV cache per further stream")
        if cm.one_stream is None or cm.one_stream.memory_bytes.value is None:
            return None, 0.0, "no memory figure"
        per_stream = scaling.kv_cache_bytes(arch, cm.one_stream.context)
        return per_stream, cm.one_stream.memory_bytes.value - per_stream, (
            f"one stream {cm.one_stream.memory_bytes.provenance} + F16 KV cache per further stream")

    def aggregate(self, cm: CurveModel, streams: int) -> scaling.Figure:
        point = cm.curve.at(streams) if cm.curve else None
        if point is not None:
            return scaling.Figure(point.aggregate_tps, "measured", f"{point.source} at {streams} streams, " + cm.method)
        if cm.line is None:
            return scaling.Figure(None, "predicted", cm.method)
        return scaling.Figure(cm.line.aggregate_tps(streams), "predicted",
                              f"t(N) = {cm.line.fixed_s * 1e3:.3g} ms + N × {cm.line.per_stream_s * 1e3:.3g} ms; "
                              + cm.method, cm.error_fraction)

    def per_stream(self, cm: CurveModel, streams: int, aggregate: scaling.Figure) -> scaling.Figure:
        """Each stream's decode at `streams`: the sweep's measured per-stream figure at a count it ran (never above
        the aggregate), else the aggregate shared equally."""
        point = cm.curve.at(streams) if cm.curve else None
        if point is not None:
            return scaling.Figure(point.per_stream_tps, "measured", aggregate.method)
        value = aggregate.value / streams if aggregate.value is not None and streams else None
        return dataclasses.replace(aggregate, value=value)

    def capacity_bytes(self, cm: CurveModel) -> int:
        """The memory streams must fit in: where the model's sweep (else the device's latest) ran."""
        run = cm.curve or max(self.curves, key=lambda c: c.result.started_unix_s, default=None)
        return memory_capacity(self.dm.device, run.result.compute_device if run else "")

    def capacity(self, arch_or_model: Architecture | str, quant: str, min_tps: float, curve: Curve | None = None
                 ) -> Capacity | None:
        """The most streams that each get `min_tps` (None: nothing to answer from)."""
        cm = self.curve_model(arch_or_model, quant, curve)
        arch = CATALOGUE.get(arch_or_model if isinstance(arch_or_model, str) else arch_or_model.name)
        mem_cap, mem_how = self.memory_cap(arch, cm, self.capacity_bytes(cm))
        top = EXTRAPOLATION * self.largest_swept
        measured_n, ceiling = 0, math.inf
        if cm.curve is not None:
            meeting = [p.streams for p in cm.curve.points if p.per_stream_tps >= min_tps]
            measured_n = max(meeting, default=0)
            ceiling = min((p.streams for p in cm.curve.points if p.streams > measured_n), default=math.inf) - 1
        elif cm.line is None:
            return None
        limits = [n for n in (ceiling, mem_cap, top) if n is not None]

        def bounded(real: float) -> int:
            return int(math.floor(min(real + 1e-9, *limits)))

        predicted_n = bounded(cm.line.streams_at(min_tps)) if cm.line else None
        if cm.curve is None and predicted_n == 0:
            why = "memory" if mem_cap == 0 else f"≥{min_tps:g} tok/s"
            return Capacity(0, "predicted", f"predicted: not even one stream at {why}; {cm.method}", None,
                            scaling.Figure(None, "predicted", cm.method), scaling.Figure(None, "predicted", cm.method),
                            None, cm)
        if predicted_n is None or predicted_n <= measured_n:
            note = "" if cm.curve.monotonic else "; aggregate speed not monotonic in streams (noise?)"
            more = "; the sweep's largest count: more may serve" if measured_n == cm.curve.points[-1].streams else ""
            point = cm.curve.at(measured_n)
            return Capacity(measured_n, "measured", f"largest count measured at ≥{min_tps:g} tok/s per stream"
                            f"{more}{note}; {cm.method}", None, self.aggregate(cm, measured_n) if point else
                            scaling.Figure(None, "measured", "not even one stream gets that speed"),
                            scaling.Figure(point.per_stream_tps if point else None, "measured", cm.method), point, cm)
        band = None
        if cm.error_fraction is not None:
            e = cm.error_fraction
            low = max(bounded(cm.line.streams_at(min_tps / (1 - e))) if e < 1 else 0, measured_n)
            band = (min(low, predicted_n), max(bounded(cm.line.streams_at(min_tps / (1 + e))), predicted_n))
        caps = [f"capped at {mem_cap} by memory ({mem_how})" if predicted_n == mem_cap else "",
                f"capped at {top} ({EXTRAPOLATION}× the largest count swept here)" if predicted_n == top else ""]
        aggregate = self.aggregate(cm, predicted_n)
        per_stream = scaling.Figure(aggregate.value / predicted_n if predicted_n else None, "predicted",
                                    aggregate.method, aggregate.error_fraction)
        method = "; ".join(x for x in (f"predicted count at ≥{min_tps:g} tok/s per stream", *caps, cm.method) if x)
        return Capacity(predicted_n, "predicted", method, band, aggregate, per_stream, None, cm)


def serving_model(dm: scaling.DeviceModel, results: list[pb.ProfileResult]) -> ServingModel:
    """The device's serving model for dm's backend, with its leave-one-out errors."""
    swept = [c for c in curves(results, dm.device.device_id) if c.backend == dm.backend]
    point_errors = [e for _, _, e in leave_one_count_out(swept, dm)]
    model_errors = [e for _, _, e in leave_one_model_out(swept, dm)]
    return ServingModel(dm, swept, calibrate(dm, swept), max(map(abs, point_errors), default=None),
                        max(map(abs, model_errors), default=None))


# -- leave-one-out ---------------------------------------------------------------------------------------------

def leave_one_count_out(swept: list[Curve], dm: scaling.DeviceModel) -> list[tuple[Curve, int, float]]:
    """(curve, held-out count, relative error of its predicted aggregate speed): each count of each sweep but its
    smallest predicted from the sweep's other counts (a curve left with one count takes the slope calibrated on the
    other models). The smallest is not held out: predictions are only ever above it (1 is always measured)."""
    out = []
    for c in swept:
        if len(c.points) < 2:
            continue
        others = calibrate(dm, [o for o in swept if o.model != c.model]) if len(c.points) == 2 else None
        slope = others.per_stream_s(dm, c.arch, c.quant, c.decode_context) if others and c.arch else None
        for p in c.points[1:]:
            line = _line_of(c, slope[0] if slope else None, without=p.streams)
            if line is not None:
                out.append((c, p.streams, line.aggregate_tps(p.streams) / p.aggregate_tps - 1))
    return out


def leave_one_model_out(swept: list[Curve], dm: scaling.DeviceModel) -> list[tuple[Curve, int, float]]:
    """(curve, count, relative error): each swept model's counts predicted as for a model never swept, from a
    calibration on the device's other models' sweeps (its own one-stream figure from the scaling model)."""
    out = []
    for c in swept:
        rest = [o for o in swept if o.model != c.model]
        if c.arch is None or not rest:
            continue
        held = ServingModel(dm, rest, calibrate(dm, rest), None, 0.0)
        if held.calibration is None:
            continue
        cm = held.curve_model(c.arch, c.quant, context=(c.n_prompt + c.n_gen, c.decode_context))
        if cm.line is None:
            continue
        out += [(c, p.streams, cm.line.aggregate_tps(p.streams) / p.aggregate_tps - 1) for p in c.points]
    return out


def one_stream_division(sm: "ServingModel | None", detail: bool = True) -> str:
    """The method of a stream count that no sweep gives: one stream's speed divided among the streams."""
    why = "no sweep on this device" if sm is None or not sm.curves else \
        "the device's sweeps give no prediction for this model"
    return f"one-stream division: {why}" + (f"; {DIVISION}" if detail else "")


DIVISION = ("one stream's decode tok/s ÷ the per-stream speed, time-shared: a lower bound (batching serves more; "
            "`fleetfit-agent profile --parallel 1,2,4,8` measures it)")


# -- what a request costs -----------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class RequestFigures:
    requests_per_hour: float | None
    ttft_ms_p50: float | None
    ttft_ms_p99: float | None
    response_s_p50: float | None
    response_s_p99: float | None
    joules: float | None


METHOD = ("requests/hour = 3600 / (prompt / prefill tok/s + response / aggregate decode tok/s): the device's time "
          "per request at N streams (N prompts prefilled together, then N responses decoded together, in turn; "
          "prefill tok/s of the N prompts, else of the nearest count below, else of the one-stream run); "
          "TTFT: the sweep's p50/p99 scaled to the prompt (prefill ∝ prompt tokens), or N × prompt / prefill tok/s "
          "for a predicted count; response: TTFT + response tokens / per-stream decode tok/s; energy: response × "
          "decode J/token at N + prompt × the run's prefill J/token")


def request_figures(curve: Curve | None, streams: int, aggregate_tps: float | None, prefill_tps: float | None,
                    prompt: int, response: int) -> RequestFigures:
    """A request of `prompt` + `response` tokens on a device serving `streams` streams at `aggregate_tps` (see
    METHOD); the measured point's TTFT and energy where `streams` was swept, else derived."""
    point = curve.at(streams) if curve else None
    nearest = max((p for p in curve.points if p.streams <= streams), key=lambda p: p.streams, default=None) \
        if curve else None
    prefill = (point.prefill_tps if point and point.prefill_tps else None) or prefill_tps or \
        (nearest.prefill_tps if nearest else None) or (_mean(curve.result.prefill_tokens_per_s) if curve else None)
    if not streams or not aggregate_tps:
        return RequestFigures(None, None, None, None, None, None)
    per_hour = 3600 / (prompt / prefill + response / aggregate_tps) if prefill else None
    if point is not None and point.ttft_ms_p50 and curve.n_prompt:
        scale = prompt / curve.n_prompt
        p50, p99 = point.ttft_ms_p50 * scale, (point.ttft_ms_p99 or point.ttft_ms_p50) * scale
    elif prefill:
        p50 = p99 = 1000 * streams * prompt / prefill
    else:
        p50 = p99 = None
    decode_s = response * streams / aggregate_tps
    energy = None
    per_token = (point or nearest).decode_j_per_token if (point or nearest) else None
    prefill_j = _prefill_j_per_token(curve.result) if curve else None
    if per_token is not None and prefill_j is not None:
        energy = response * per_token + prompt * prefill_j
    return RequestFigures(per_hour, p50, p99, p50 / 1000 + decode_s if p50 is not None else None,
                          p99 / 1000 + decode_s if p99 is not None else None, energy)


def _prefill_j_per_token(r: pb.ProfileResult) -> float | None:
    phase = next((p for p in r.power.phases if p.phase == "prefill" and p.source == r.power.headline_source
                  and p.HasField("joules_per_token")), None)
    return phase.joules_per_token if phase else None


def memory_capacity(device: pb.DeviceInventory, compute_device: str) -> int:
    """The memory a run is judged against: its GPU's for a run on a GPU, else the device's RAM (the agent's usable
    RAM: a cgroup limit included). A GPU that shares the RAM (Jetson) is one pool with it: the smaller of the two."""
    if compute_device.startswith("cuda"):
        index = int(compute_device.partition(":")[2] or 0)
        gpu = next((g for g in device.gpus if g.index == index), None)
        if gpu is not None and gpu.memory_total_bytes:
            if gpu.unified_memory and device.ram_total_bytes:
                return min(gpu.memory_total_bytes, device.ram_total_bytes)
            return gpu.memory_total_bytes
    return device.ram_total_bytes
