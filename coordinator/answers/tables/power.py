"""Power, energy and roofline (issue 5): from each result's PowerTelemetry and Roofline, with fit's decode power and
J/token for each cell."""


from fleetfit.coordinator.answers import fit as fit_rules
from fleetfit.coordinator.answers.tables.registry import (Fleet, TableData, TableError, float_option,
                                                          params_text, table)
from fleetfit.coordinator.predict.runs import backend_of, quant_of
from fleetfit.models import backends
from fleetfit.v1 import fleetfit_pb2 as pb
from fleetfit.v1.words import BOTTLENECK, PROVENANCE


HOURS_PER_MONTH = 730.0  # 8760 / 12


def _latest_measured(fleet: Fleet) -> list[tuple[str, pb.ProfileResult]]:
    """(device display name, latest successful result) per device, backend, model and precision, sorted by id."""
    found = {}
    for r in fleet.results:  # oldest first
        if not r.failure:
            found[(r.device_id, backend_of(r), r.model_name, quant_of(r))] = r
    return [(fleet.name(key[0]), r) for key, r in sorted(found.items())]


def _decode_energy(r: pb.ProfileResult) -> pb.PhaseEnergy | None:
    """The decode phase of the result's headline source (the widest scope; rails are never summed)."""
    return next((p for p in r.power.phases if p.phase == "decode" and p.source == r.power.headline_source), None)


def _rounded(value: float | None, digits: int):
    return round(value, digits) if value is not None else None


def _rounded_field(message, field: str, digits: int = 4):
    """`message.field` rounded to `digits`, or None where the message or that optional field is absent."""
    return round(getattr(message, field), digits) if message is not None and message.HasField(field) else None


def _models_supported(rows: list[tuple[str, pb.ProfileResult]]) -> dict[str, str]:
    """Per device: the range of parameter counts that ran there."""
    sizes: dict[str, list[int]] = {}
    for name, r in rows:
        if r.HasField("model_n_params"):
            sizes.setdefault(name, []).append(r.model_n_params)
    return {name: f"{params_text(min(n))}–{params_text(max(n))}" for name, n in sizes.items()}


def _energy_provenance(p: pb.PhaseEnergy | None) -> str | None:
    """How a phase's power is known, as the tables' provenance column shows it: "measured (method, scope)", or
    ESTIMATED in capitals where no sensor was read."""
    if p is None:
        return None
    word = PROVENANCE.word(p.provenance_kind)
    return f"{word.upper() if word == 'estimated' else word} ({p.method}, {p.scope})"


POWER_NOTES = [
    "decode W, tokens/J and J/token: `fleetfit fit`'s answer for the cell (the decode phase's average power of the "
    "run of that model and precision, its headline source, else the mean of the device's runs, over fit's decode "
    "tok/s); peak, idle and net: that phase as measured; net = minus the idle baseline measured before the run",
    "ESTIMATED rows: no readable sensor; CPU utilization x a per-CPU-class power model, not a measurement",
]


def _energy_answer(fleet: Fleet, r: pb.ProfileResult) -> tuple[float | None, float | None, str | None]:
    """(decode W, J/token, how) of `fit`'s answer for the result's cell (its device, backend, model and precision,
    at the cell's context): J/token = decode W / decode tok/s, both as fit gives them; Nones where fit gives none."""
    backend = backend_of(r)
    if backend not in backends.BACKENDS:
        return None, None, None
    quant = quant_of(r)
    a = fleet.cell_answer(r.device_id, backend, r.model_name, quant)
    f = a.joules_per_token
    if not fit_rules.provenance_word(f) or not fit_rules.provenance_word(a.decode_tokens_per_s):
        return None, None, None
    word = fit_rules.provenance_word(f)
    return f.value * a.decode_tokens_per_s.value, f.value, f"{word.upper() if word == 'estimated' else word} ({f.method})"


def _energy_rows(fleet: Fleet):
    """Per latest measured row, what the power and energy-cost tables both show: (device name, row, its decode
    energy phase, decode watts, joules per token, models supported, provenance: the measured phase's when it has an
    average power, else the answer's)."""
    rows = _latest_measured(fleet)
    supported = _models_supported(rows)
    for name, r in rows:
        p = _decode_energy(r)
        watts, per_token, how = _energy_answer(fleet, r)
        how = _energy_provenance(p) if _rounded_field(p, "average_power_w") is not None else how
        yield name, r, p, watts, per_token, supported.get(name), how


@table("power", "Power consumption scaling: decode watts and tokens per joule")
def power(fleet: Fleet, options: dict[str, str]) -> TableData:
    body = []
    for name, r, p, watts, per_token, supported, how in _energy_rows(fleet):
        body.append([name, backend_of(r), r.model_name, quant_of(r), _rounded(watts, 3),
                     _rounded_field(p, "peak_power_w", 3),
                     _rounded_field(p, "idle_power_w", 3), _rounded(1 / per_token if per_token else None, 3),
                     _rounded(per_token, 5), _rounded_field(p, "net_joules_per_token", 5), supported, how])
    return TableData(["device", "backend", "model", "quant", "decode W", "peak W", "idle W", "tokens/J", "J/token",
                      "net J/token", "models supported", "provenance (method, scope)"], body, POWER_NOTES)


@table("energy-cost", "Energy cost analysis: monthly energy and cost at the measured decode power")
def energy_cost(fleet: Fleet, options: dict[str, str]) -> TableData:
    price = float_option(options, "price_per_kwh", 0.15)
    duty = float_option(options, "duty_cycle", 1.0)
    if duty > 1:
        raise TableError(f"option duty_cycle must be at most 1, got {duty:g}")
    body = []
    for name, r, _, watts, per_token, supported, how in _energy_rows(fleet):
        kwh = watts * HOURS_PER_MONTH * duty / 1000 if watts is not None else None
        per_million = per_token * 1e6 / 3.6e6 * price if per_token is not None else None
        body.append([name, backend_of(r), r.model_name, quant_of(r), round(watts / 1000, 5) if watts is not None else None,
                     round(kwh, 3) if kwh is not None else None, round(kwh * price, 2) if kwh is not None else None,
                     round(per_million, 4) if per_million is not None else None, supported, how])
    return TableData(["device", "backend", "model", "quant", "power kW", "kWh/month", "cost/month", "cost per 1M tokens",
                      "models supported", "provenance (method, scope)"], body,
                     [f"price {price:g} per kWh (option price_per_kwh), duty cycle {duty:g} (option duty_cycle), "
                      f"{HOURS_PER_MONTH:g} h per month at the decode phase's average power", *POWER_NOTES])


@table("bandwidth", "Memory bandwidth scaling: decode against the device's measured bandwidth")
def bandwidth(fleet: Fleet, options: dict[str, str]) -> TableData:
    body = []
    for name, r in _latest_measured(fleet):
        rl = r.roofline if r.HasField("roofline") else None
        body.append([name, backend_of(r), r.model_name, quant_of(r),
                     params_text(r.model_n_params) if r.HasField("model_n_params") else None,
                     round(rl.bytes_per_token / 1e6, 2) if rl is not None and rl.HasField("bytes_per_token") else None,
                     round(r.decode_tokens_per_s.mean, 3), _rounded_field(rl, "achieved_gb_per_s", 3),
                     _rounded_field(rl, "device_bandwidth_gb_per_s", 3), _rounded_field(rl, "percent_of_bandwidth", 1),
                     _rounded_field(rl, "arithmetic_intensity_flop_per_byte", 3), (BOTTLENECK.word(rl.bottleneck_kind) or None) if rl else None])
    return TableData(["device", "backend", "model", "quant", "parameters", "MB/token", "decode tok/s", "achieved GB/s",
                      "device GB/s", "% of bandwidth", "FLOP/byte", "bottleneck"], body,
                     ["bytes/token: weight tensor bytes from the GGUF + F16 KV cache (GQA-aware) at the mean decode "
                      "context; achieved = bytes/token x decode tok/s; device GB/s: the agent's triad probe",
                      "bottleneck: memory when FLOP/byte is below the device's ridge (float32 matmul peak / bandwidth)"])
