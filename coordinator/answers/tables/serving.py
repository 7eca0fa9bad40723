"""Serving capacity (issue 14): concurrency sweeps, and predictions calibrated on them
(coordinator/predict/serving.py)."""


from fleetfit.coordinator.answers import fit as fit_rules
from fleetfit.coordinator.answers import render
from fleetfit.coordinator.answers.tables.registry import (Fleet, TableData, TableError, device_option, float_option,
                                                          runs_precision, table)
from fleetfit.coordinator.predict import scaling, serving
from fleetfit.models import backends
from fleetfit.models.catalogue import CATALOGUE, n_params
from fleetfit.v1 import fleetfit_pb2 as pb
from fleetfit.coordinator.answers.tables.deployment import streams_per_device, use_speeds
from fleetfit.coordinator.answers.tables.sizes import device_models


def serving_models(fleet: Fleet, models: dict | None = None) -> dict[tuple[str, str], serving.ServingModel]:
    """The serving model of every device and backend with a concurrency sweep."""
    models = models if models is not None else device_models(fleet)
    swept = sorted({(c.device_id, c.backend) for c in serving.curves(fleet.results)})
    return {k: fleet.serving_model(*k) for k in swept if k in models}


def _tokens_option(options: dict[str, str], key: str, default: int) -> int:
    value = float_option(options, key, default, minimum=1)
    if not value.is_integer() or value > 1_000_000:
        raise TableError(f"option {key} must be a whole number of tokens up to 1000000, got {options[key]!r}")
    return int(value)


def _figure_cell(value: float | None, measured: bool, band: float | None = None, digits: int = 4):
    """A serving figure: measured, or predicted with the band of the aggregate speed when it has one."""
    if value is None:
        return None
    return render.Figure(round(value, digits), band=None if measured else band,
                         provenance="measured" if measured else "predicted")


def _serving_label(cap: serving.Capacity, sm: serving.ServingModel) -> str:
    cm = cap.source
    if cm.curve is not None:
        dip = "" if cm.curve.monotonic else "; not monotonic: its aggregate falls somewhere as streams are added"
        if cap.provenance == "measured":
            return f"measured: sweep of {cm.curve.counts} streams{dip}"
        return f"predicted from its sweep of {cm.curve.counts} streams (t = a + b·N){dip}"
    fitted = ", ".join(sm.calibration.fitted_on) if sm.calibration else "none"
    return f"predicted: not swept here; calibrated on the sweeps of {fitted}"


def _answer_at(fleet: Fleet, sm: serving.ServingModel, model: str, quant: str, **constraints) -> pb.FitAnswer:
    """`fit`'s answer for the model on the serving model's device and backend, at the cell's context."""
    device_id, backend = sm.dm.device.device_id, sm.dm.backend
    return fleet.cell_answer(device_id, backend, model, quant, **constraints)


def _serving_figures(fleet: Fleet, sm: serving.ServingModel, model: str, quant: str, min_tps: float,
                     cap: serving.Capacity) -> tuple[render.Figure, render.Figure | None, render.Figure | None]:
    """(max streams, aggregate, per-stream) at the most streams that each get `min_tps`: `fit`'s answer for the
    cell (`fit MODEL --quant Q --device D --min-tps T`, then `--streams N`), the same capacity by construction; a
    model fit cannot size (no catalogued shape), or a device it cannot judge (no RAM figure), from the sweep."""
    a = _answer_at(fleet, sm, model, quant, min_decode_tps=min_tps)
    if fit_rules.provenance_word(a.max_streams) and int(a.max_streams.value) == cap.streams:
        streams = streams_per_device(a)[0]
        if not cap.streams:
            return streams, None, None
        at = _answer_at(fleet, sm, model, quant, min_decode_tps=min_tps, streams=cap.streams)
        return streams, fit_rules.shown(at.aggregate_tokens_per_s, digits=4), \
            fit_rules.shown(at.stream_tokens_per_s, digits=4)
    measured = cap.provenance == "measured"
    band = cap.aggregate_tps.error_fraction
    return (render.Figure(cap.streams, provenance=cap.provenance), _figure_cell(cap.aggregate_tps.value, measured, band),
            _figure_cell(cap.per_stream_tps.value, measured, band))


def _serving_row(fleet: Fleet, sm: serving.ServingModel, model: str, quant: str, min_tps: float, prompt: int,
                 response: int) -> list | None:
    cap = sm.capacity(model, quant, min_tps)  # the call fit's answer makes: its sweep, its band of streams
    if cap is None:
        return None
    cm = cap.source
    streams, aggregate, per_stream = _serving_figures(fleet, sm, model, quant, min_tps, cap)
    measured = aggregate is not None and aggregate.provenance == "measured"
    band = aggregate.band if aggregate is not None else None
    one = cm.one_stream.prefill_tps.value if cm.one_stream else None
    req = serving.request_figures(cm.curve, cap.streams, aggregate.value if aggregate else None, one, prompt, response)
    point = cm.curve.at(cap.streams) if cm.curve else None
    if point is not None:
        memory = point.peak_bytes
    else:
        per_kv, base, _ = sm.memory_line(CATALOGUE.get(model), cm)
        memory = base + cap.streams * per_kv if per_kv is not None and cap.streams else None
    shape = cm.curve.shape if cm.curve else f"as {max(sm.curves, key=lambda c: c.result.started_unix_s).shape}"
    return [fleet.name(sm.dm.device.device_id), sm.dm.backend, model, quant, shape,
            cm.curve.counts if cm.curve else None, streams, cap.streams_range(), aggregate, per_stream,
            _figure_cell(req.requests_per_hour, measured, band, 0), _figure_cell(req.ttft_ms_p50, measured),
            _figure_cell(req.ttft_ms_p99, measured), _figure_cell(req.response_s_p50, measured),
            _figure_cell(req.response_s_p99, measured),
            _figure_cell(memory / 1e9 if memory else None, measured), _figure_cell(req.joules, measured),
            _serving_label(cap, sm)]


def _unswept_models(sm: serving.ServingModel) -> list[tuple[str, str]]:
    """(model, precision) to predict on a swept device: the seed's sizes and the models measured there with one
    stream, at each precision swept there, that have no sweep."""
    spec = backends.backend(sm.dm.backend)
    quants = dict.fromkeys(c.quant for c in sm.curves)
    models = dict.fromkeys([*scaling.SEED_SIZES, *(p.model for p in sm.dm.points)])
    return [(m, q) for q in quants for m in models if sm.curve(m, q) is None and m in CATALOGUE
            and not backends.obtainable(spec, m, set(), CATALOGUE) and spec.can_size(q) and runs_precision(spec, q)]


@table("serving", "Cloud deployment scaling: concurrent streams, requests per hour and latency per device")
def serving_table(fleet: Fleet, options: dict[str, str]) -> TableData:
    min_tps = dict(use_speeds(options))["interactive"]
    prompt = _tokens_option(options, "prompt_tokens", serving.PROMPT_TOKENS)
    response = _tokens_option(options, "response_tokens", serving.RESPONSE_TOKENS)
    device = device_option(fleet, options)
    rows = []
    for (device_id, _), sm in serving_models(fleet).items():
        if device not in (None, device_id):
            continue
        swept = dict.fromkeys((c.model, c.quant) for c in sm.curves)  # one row per cell: the sweep fit reads
        found = [(n_params(CATALOGUE[m]) if m in CATALOGUE else 0, m, q, "",
                  _serving_row(fleet, sm, m, q, min_tps, prompt, response)) for m, q in swept]
        found += [(n_params(CATALOGUE[m]), m, q, "", _serving_row(fleet, sm, m, q, min_tps, prompt, response))
                  for m, q in _unswept_models(sm)]
        rows += [row for *_, row in sorted(found, key=lambda f: f[:4]) if row is not None]
    return TableData(["device", "backend", "model", "precision", "shape", "streams swept",
                      f"max streams ≥{min_tps:g} tok/s", "max streams band", "aggregate tok/s", "per-stream tok/s",
                      f"requests/hour ({prompt} in, {response} out)", "TTFT p50 ms", "TTFT p99 ms",
                      "response p50 s", "response p99 s", "peak memory GB", "J/request", "provenance"], rows,
                     [f"max streams: the most concurrent streams that each still decode at ≥{min_tps:g} tok/s "
                      "(option interactive_tps); the figures after it are at that many streams",
                      f"request: {prompt} prompt tokens in, {response} out (options prompt_tokens, response_tokens); "
                      + serving.METHOD,
                      "measured: a count the sweep ran (`fleetfit-agent profile --parallel 1,2,4,8`; the result's "
                      "one-stream run is its 1 when the sweep has none), figures derived from its measured rates; "
                      "~: predicted, ± the band of the aggregate speed (largest leave-one-out error on the device's "
                      "sweeps), (a–b) the streams within that band; a ~ without ± has no band (the device has too "
                      "few sweeps to hold one out)",
                      "predicted: beyond or between a sweep's counts, t(N) = a + b·N (one decode step for N streams) "
                      "fitted on its points; a model not swept, one stream from the scaling model plus a per-stream "
                      "cost (FLOPs/token at the device's batched compute rate + KV cache read) calibrated on the "
                      "device's sweeps; capped where the KV caches pass 95% of memory and at "
                      f"{serving.EXTRAPOLATION}x the largest count swept there",
                      "devices without a sweep have no rows here (recommendations says how it counts them)"])


def _powers_of_two(top: int) -> list[int]:
    return [1 << i for i in range(max(top, 1).bit_length()) if 1 << i <= top]


def _curve_figures(fleet: Fleet, sm: serving.ServingModel, cm: serving.CurveModel, model: str, quant: str,
                   streams: int) -> tuple[render.Figure, render.Figure]:
    """(aggregate, per-stream) at `streams`: `fit MODEL --quant Q --device D --streams N`'s figures; from the sweep
    where fit cannot answer the cell (no catalogued shape, no RAM figure)."""
    a = _answer_at(fleet, sm, model, quant, streams=streams)
    if fit_rules.provenance_word(a.aggregate_tokens_per_s) and fit_rules.provenance_word(a.aggregate_tokens_per_s) != "estimated":
        return (fit_rules.shown(a.aggregate_tokens_per_s, digits=4), fit_rules.shown(a.stream_tokens_per_s, digits=4))
    f = sm.aggregate(cm, streams)
    per_stream = sm.per_stream(cm, streams, f)
    return (render.Figure(round(f.value, 4), band=f.error_fraction, provenance=f.provenance),
            render.Figure(round(per_stream.value, 4), provenance=per_stream.provenance))


@table("serving-curves", "Serving curves: aggregate and per-stream decode against concurrent streams")
def serving_curves(fleet: Fleet, options: dict[str, str]) -> TableData:
    rows = []
    for (device_id, backend), sm in serving_models(fleet).items():
        for model, quant in dict.fromkeys((c.model, c.quant) for c in sm.curves):  # the sweep fit reads, per cell
            c, cm = sm.curve(model, quant), sm.curve_model(model, quant)
            counts = [p.streams for p in c.points]
            mem_cap, _ = sm.memory_cap(c.arch, cm, sm.capacity_bytes(cm))
            top = min(4 * counts[-1], serving.EXTRAPOLATION * sm.largest_swept, *([mem_cap] if mem_cap else []))
            predicted = [n for n in _powers_of_two(top) if n not in counts] if cm.line else []
            for n in sorted([*counts, *predicted]):
                aggregate, per_stream = _curve_figures(fleet, sm, cm, model, quant, n)
                point = c.at(n)
                band = scaling.band_of(aggregate.value, aggregate.band, "tokens_per_s") \
                    if point is None and aggregate.band is not None else (None, None)
                rows.append([fleet.name(device_id), backend, model, quant, c.shape, n, aggregate.provenance,
                             aggregate.value, per_stream.value, *(round(x, 4) if x is not None else None for x in band),
                             point.source if point else "t(N) = a + b·N fitted on the sweep"])
    return TableData(["device", "backend", "model", "precision", "shape", "streams", "provenance", "aggregate tok/s",
                      "per-stream tok/s", "aggregate low", "aggregate high", "source"], rows,
                     ["measured: the counts each sweep ran; predicted: the powers of two up to 4x its largest count "
                      "(within memory) that it did not run, from t(N) = a + b·N fitted on its points",
                      "low/high: the predicted aggregate ± the largest leave-one-count-out error on the device's "
                      "sweeps"])
