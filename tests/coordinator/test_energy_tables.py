import pytest

from fleetfit.coordinator.answers import tables
from fleetfit.v1 import fleetfit_pb2 as pb
from fleetfit.v1.words import PROVENANCE


def result(device: str, quant: str, watts: float | None, provenance: str = "measured", percent: float | None = 85.0):
    r = pb.ProfileResult(device_id=device, model_name="smollm2-135m", quant=quant, model_n_params=134_515_008,
                         request=pb.ProfileRequest(backend="llama.cpp"),
                         decode_tokens_per_s=pb.Stat(mean=100.0, samples=[100.0]))
    decode = pb.PhaseEnergy(phase="decode", source="s", scope="board", method="ina3221",
                            provenance_kind=PROVENANCE.code(provenance), tokens=100)
    if watts is not None:
        decode.average_power_w, decode.joules_per_token, decode.tokens_per_joule = watts, watts / 100, 100 / watts
    r.power.CopyFrom(pb.PowerTelemetry(phases=[decode], headline_source="s",
                                       provenance_kind=PROVENANCE.code(provenance)))
    r.roofline.CopyFrom(pb.Roofline(bytes_per_token=2.7e8, achieved_gb_per_s=27.0, bottleneck_kind=pb.BOTTLENECK_MEMORY))
    if percent is not None:
        r.roofline.percent_of_bandwidth = percent
    return r


FLEET = tables.Fleet([result("pi", "Q4_0", 5.0), result("vm", "F16", None, "estimated", percent=None),
                      result("vm", "Q8_0", 6.0, "estimated")], [])


def cells(name: str, options=None) -> list[dict]:
    table = tables.build(name, FLEET, options or {})
    return [dict(zip(table.columns, (tables.cell_text(c) for c in row.cells))) for row in table.rows]


def test_power_rows_say_watts_tokens_per_joule_and_how_they_were_obtained():
    pi, vm_f16, vm_q8 = cells("power")
    assert (pi["decode W"], pi["tokens/J"], pi["J/token"]) == ("5", "20", "0.05")
    assert pi["provenance (method, scope)"] == "measured (ina3221, board)"
    assert vm_q8["provenance (method, scope)"].startswith("ESTIMATED")
    # a run without a power reading shows fit's answer for its cell: the device's mean decode power, saying so
    assert (vm_f16["decode W"], vm_f16["J/token"]) == ("6", "0.06") and "mean of 1 runs" in vm_f16[
        "provenance (method, scope)"] and vm_f16["provenance (method, scope)"].startswith("ESTIMATED")
    (unread,) = [dict(zip(t.columns, (tables.cell_text(c) for c in row.cells))) for t in [tables.build(
        "power", tables.Fleet([result("nx", "Q4_0", None)], []), {})] for row in t.rows]
    assert unread["decode W"] == "n/a" and unread["tokens/J"] == "n/a"  # no reading on the device: n/a, never 0
    assert pi["models supported"] == "135M–135M"


def test_energy_cost_follows_price_and_duty_cycle():
    pi = cells("energy-cost", {"price_per_kwh": "0.30", "duty_cycle": "0.5"})[0]
    assert pi["kWh/month"] == "1.825" and pi["cost/month"] == "0.55"  # 5 W x 730 h x 0.5
    assert cells("energy-cost")[1]["cost/month"] == "0.66"  # fit's answer: the device's mean, 6 W x 730 h
    with pytest.raises(tables.TableError, match="duty_cycle must be at most 1"):
        cells("energy-cost", {"duty_cycle": "2"})


def test_bandwidth_rows_carry_the_roofline():
    pi, vm_f16, _ = cells("bandwidth")
    assert (pi["achieved GB/s"], pi["% of bandwidth"], pi["bottleneck"]) == ("27", "85", "memory")
    assert vm_f16["% of bandwidth"] == "n/a"
