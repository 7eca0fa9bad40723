"""Deployment limits and recommendations (issue 7): the scaling model against use thresholds."""


from fleetfit.coordinator.answers import fit as fit_rules
from fleetfit.coordinator.answers import render
from fleetfit.coordinator.answers.tables.registry import (Fleet, TableData, TableError, float_option,
                                                          table)
from fleetfit.coordinator.predict import scaling, serving
from fleetfit.models.catalogue import n_params
from fleetfit.v1 import fleetfit_pb2 as pb
from fleetfit.coordinator.answers.tables.power import HOURS_PER_MONTH
from fleetfit.coordinator.answers.tables.sizes import PREDICTED_NOTE, device_models, largest, largest_text


USES = (("real-time", "realtime_tps", 20.0), ("interactive", "interactive_tps", serving.INTERACTIVE_TPS),
        ("batch", "batch_tps", 1.0))


def use_speeds(options: dict[str, str]) -> list[tuple[str, float]]:
    return [(use, float_option(options, key, default, minimum=1e-6)) for use, key, default in USES]


def _ladder_devices(fleet: Fleet, models: dict | None = None) -> list[tuple[str, scaling.DeviceModel]]:
    """(display name, scaling model) of every calibrated device and backend."""
    models = models if models is not None else device_models(fleet)
    return [(fleet.name(i), dm) for (i, _), dm in models.items() if dm.calibration is not None]


def streams_per_device(a: pb.FitAnswer) -> tuple[render.Figure | None, int, str | None]:
    """(cell, count, how): the streams one device serves at the answer's stream speed each (fit's max_streams:
    from its sweeps where it has some, else one stream's decode divided)."""
    if not fit_rules.provenance_word(a.max_streams):  # a documented word, never null (issue 27 item 5)
        return None, 0, "no stream count: the answer has no decode figure"
    n = int(a.max_streams.value)
    return render.Figure(n, provenance=fit_rules.provenance_word(a.max_streams)), n, a.max_streams.method


@table("deployment", "Deployment limits: the largest model per device and precision for each use's decode speed")
def deployment(fleet: Fleet, options: dict[str, str]) -> TableData:
    uses = use_speeds(options)
    interactive = dict(uses)["interactive"]
    rows = []
    for name, dm in _ladder_devices(fleet):
        for quant in dict.fromkeys(p.quant for p in dm.points):
            found = largest(fleet, dm, quant, interactive)
            streams = streams_per_device(found[1]) if found else \
                (None, 0, f"no catalogued model decodes at ≥{interactive:g} tok/s here")
            rows.append([name, dm.backend, quant,
                         f"{dm.device.ram_total_bytes / 1e9:.1f}" if dm.device.ram_total_bytes else None,
                         *(largest_text(fleet, dm, quant, tps) for _, tps in uses), largest_text(fleet, dm, quant),
                         streams[0], streams[2]])
    return TableData(["device", "backend", "precision", "RAM GB", *(f"{use} (≥{tps:g} tok/s)" for use, tps in uses),
                      "offline (fits at all)", "interactive streams", "streams: how"], rows,
                     ["largest catalogued model under 95% of RAM whose decode meets the use's speed; thresholds are "
                      "options realtime_tps, interactive_tps, batch_tps (tokens/s of one stream)",
                      "interactive streams: how many concurrent streams of the interactive model each get the "
                      "interactive speed (the serving table's max streams); 'one-stream division': "
                      + serving.DIVISION, PREDICTED_NOTE])


SCALES = (("small", 100), ("medium", 10_000), ("large", 100_000))


@table("recommendations", "Deployment recommendations by scale of use: what to run, on how many devices, at what cost")
def recommendations(fleet: Fleet, options: dict[str, str]) -> TableData:
    interactive = dict(use_speeds(options))["interactive"]
    active = float_option(options, "active_fraction", 0.05)
    price = float_option(options, "price_per_kwh", 0.15)
    if active > 1:
        raise TableError(f"option active_fraction must be at most 1, got {active:g}")
    watts = {d: fleet.device_power(d) for d in fleet.by_device}
    choices = []  # per device and backend: the model to run and the streams one device serves
    for name, dm in _ladder_devices(fleet):
        best = max(((q, largest(fleet, dm, q, interactive)) for q in dict.fromkeys(p.quant for p in dm.points)),
                   key=lambda qf: (n_params(qf[1][0]) if qf[1] else 0, -(qf[1][1].memory_bytes.value if qf[1] else 0)))
        quant, found = best
        streams = streams_per_device(found[1]) if found else None
        choices.append((name, dm, quant, found, streams))
    rows = []
    for scale, users in SCALES:
        wanted = max(1, round(users * active))
        for name, dm, quant, found, streams in choices:
            if found is None:
                rows.append([scale, users, wanted, name, dm.backend, None, None, None, None, None, None,
                             f"no catalogued model decodes at ≥{interactive:g} tok/s here"])
                continue
            arch, a = found
            cell, per_device, how = streams
            n_devices = -(-wanted // per_device) if per_device else None
            w = watts.get(dm.device.device_id)
            cost = round(n_devices * w[0] * HOURS_PER_MONTH / 1000 * price, 2) if w and n_devices else None
            decode = fit_rules.shown(a.decode_tokens_per_s)
            rows.append([scale, users, wanted, name, dm.backend, arch.name, quant, decode, cell, n_devices, cost, how])
    return TableData(["scale", "users", "concurrent streams", "device", "backend", "model", "precision",
                      "one-stream decode tok/s", "streams per device", "devices needed", "energy cost/month",
                      "streams: how"], rows,
                     [f"concurrent streams = users x active_fraction ({active:g}); each stream needs the interactive "
                      f"speed ({interactive:g} tok/s, option interactive_tps)",
                      "streams per device: from the device's concurrency sweeps (measured counts, or predicted from "
                      "them: the serving table's max streams); 'one-stream division': " + serving.DIVISION,
                      "model: the largest catalogued model that meets the interactive speed on the device, any "
                      "precision measured there",
                      f"energy cost: devices x the device's mean decode power x {HOURS_PER_MONTH:g} h x price_per_kwh "
                      f"({price:g}); power may be ESTIMATED (see the power table)", PREDICTED_NOTE])
