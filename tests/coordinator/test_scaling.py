"""The scaling model on a real ladder measured on the development machine (tests/fixtures/ladder)."""

import json
import pathlib

import pytest

from fleetfit.coordinator import scaling
from fleetfit.models import synth
from fleetfit.models.catalogue import CATALOGUE
from fleetfit.v1 import fleetfit_pb2 as pb
from fleetfit.v1.words import parse_dict

LADDER = pathlib.Path(__file__).resolve().parents[1] / "fixtures" / "ladder"


def ladder() -> tuple[list[pb.ProfileResult], pb.DeviceInventory]:
    results = [parse_dict(json.loads(p.read_text()), pb.ProfileResult()) for p in sorted(LADDER.glob("result-*.json"))]
    device = parse_dict(json.loads(next(LADDER.glob("device-*.json")).read_text()), pb.Device())  # old keys
    return sorted(results, key=lambda r: r.started_unix_s), device.inventory


def test_leave_one_size_out_meets_the_targets():
    results, device = ladder()
    pairs = scaling.leave_one_size_out(scaling.points(results, device.device_id))
    held_out = {(p.model, p.quant) for p, _ in pairs}
    assert len({m for m, _ in held_out}) >= 3 and len({q for _, q in held_out}) >= 2  # a real ladder, not a stub
    for p, pred in pairs:
        assert pred.memory_bytes.provenance == pred.decode_tps.provenance == "predicted"
        assert abs(pred.memory_bytes.value / p.peak_bytes - 1) <= 0.10, (p.model, p.quant, pred.memory_bytes)
        assert abs(pred.decode_tps.value / p.decode_tps - 1) <= 0.20, (p.model, p.quant, pred.decode_tps)


def test_provenance_measured_predicted_estimated():
    results, device = ladder()
    dm = scaling.device_model(device, results)
    measured = dm.predict(CATALOGUE["llama-2-7b"], "Q4_0")
    assert measured.memory_bytes.provenance == "measured" and measured.memory_bytes.value == dm.measured(
        "llama-2-7b", "Q4_0").peak_bytes
    longer = dm.predict(CATALOGUE["llama-2-7b"], "Q4_0", context=4096)  # another context is a prediction
    assert longer.memory_bytes.provenance == "predicted" and longer.memory_bytes.value > measured.memory_bytes.value
    unseen = dm.predict(CATALOGUE["llama-3.1-8b"], "Q4_K_M")
    assert unseen.decode_tps.provenance == "predicted" and unseen.decode_tps.error_fraction is not None
    assert "Q4_K_M never measured here" in unseen.decode_tps.method
    stranger = scaling.device_model(pb.DeviceInventory(device_id="new", ram_total_bytes=8 << 30), results)
    guess = stranger.predict(CATALOGUE["llama-3.1-8b"], "Q4_K_M")
    assert guess.memory_bytes.provenance == "estimated" and "nothing measured on this device" in guess.memory_bytes.method
    assert guess.decode_tps.value is None and "no probe" in guess.decode_tps.method  # no bandwidth probe: no figure


def test_memory_formula_agrees_with_the_synthetic_plan():
    for name, quant in (("tinyllama-1.1b", "Q4_0"), ("llama-3.1-8b", "Q4_K_M"), ("distilgpt2", "F16")):
        arch = CATALOGUE[name]
        assert scaling.weight_bytes(arch, quant) == pytest.approx(synth.plan_file(arch, quant).weight_bytes, rel=1e-3)
    gqa, mha = CATALOGUE["llama-3.1-8b"], CATALOGUE["llama-2-7b"]  # 8 vs 32 KV heads
    assert scaling.kv_cache_bytes(mha, 4096) == 4 * scaling.kv_cache_bytes(gqa, 4096) == 2 * 32 * 4096 * 4096 * 2


@pytest.mark.parametrize("model, quant, message", [
    ("llama-2-7", "Q4_0", "did you mean llama-2-7b"),
    ("llama-2-7b", "Q4_Z", "Q4_Z"),
    ("llama-2-7b", "IQ2_XS", "no size formula for IQ2_XS"),
])
def test_unknown_names_are_one_line_errors_with_suggestions(model, quant, message):
    with pytest.raises(scaling.ScalingError) as exc:
        scaling.resolve(model, quant)
    assert message in str(exc.value) and "\n" not in str(exc.value)
