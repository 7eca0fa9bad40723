"""Never-profiled devices estimated from the calibrated devices of their kind (coordinator/predict/fleet_priors.py), on a
real SQLite store holding the real ladder (tests/fixtures/ladder) as the agent sent it, copied to a second device
of the same kind, plus a hostile device of that kind and a never-profiled one."""

import pytest

from fleetfit.coordinator.answers import fit
from fleetfit.coordinator.predict import fleet_priors, scaling
from fleetfit.coordinator.service import ingest
from fleetfit.coordinator.service.store import Store
from fleetfit.models.catalogue import CATALOGUE
from fleetfit.v1 import fleetfit_pb2 as pb
from fleetfit.v1.words import PROVENANCE

from tests.coordinator.test_scaling import ladder

EPYC = "AMD EPYC 7B13 64-Core Processor"


def inventory(device_id: str, cpu: str, bandwidth_gb_s: float, gflop_s: float) -> pb.DeviceInventory:
    inv = pb.DeviceInventory(device_id=device_id, hostname=device_id, cpu_model=cpu, ram_total_bytes=32 << 30)
    inv.probes.bandwidth.add(target="cpu", gb_per_s=bandwidth_gb_s)
    inv.probes.matmul.add(target="cpu", precision="float32", gflop_per_s=gflop_s)
    return inv


def copied(results: list[pb.ProfileResult], device_id: str, speed: float) -> list[pb.ProfileResult]:
    """The ladder's results as another device would send them, `speed` times as fast."""
    out = []
    for r in results:
        c = pb.ProfileResult()
        c.CopyFrom(r)
        c.device_id, c.result_id = device_id, f"{device_id}-{r.result_id}"
        for stat in (c.decode_tokens_per_s, c.prefill_tokens_per_s):
            stat.mean *= speed
            stat.samples[:] = [s * speed for s in stat.samples]
            stat.stdev *= speed
        out.append(c)
    return out


@pytest.fixture
def store(tmp_path):
    results, real = ladder()
    bw, fl = real.probes.bandwidth[0].gb_per_s, real.probes.matmul[0].gflop_per_s
    inventories = [inventory("a", EPYC, bw, fl), inventory("b", EPYC, bw, fl),
                   inventory("hostile", EPYC, bw, fl),  # reports decode and prefill 1000 times its bandwidth allows
                   inventory("new", EPYC, bw * 1.1, fl * 1.1),  # only its probes
                   inventory("lone", "Intel(R) Xeon(R) Platinum 8375C CPU @ 2.90GHz", bw, fl)]
    with Store(tmp_path / "fleet.db") as s:
        for inv in inventories:
            ingest.check_inventory(inv)
            s.upsert_device(inv)
        for r in [*copied(results, "a", 1.0), *copied(results, "b", 1.2), *copied(results, "hostile", 1000.0)]:
            ingest.check_result(r)  # within the wire bounds: only its efficiency gives it away
            s.add_result(r)
        yield s


def calibration() -> tuple[float, float]:
    """The ladder device's own decode efficiency at Q4_0 (its fitted bandwidth ÷ its probe), and its decode cost
    per layer (seconds)."""
    results, real = ladder()
    dm = scaling.device_model(real, results)
    return dm.calibration.bandwidth["Q4_0"] / dm.bandwidth_probe, dm.calibration.decode_layer_s


def efficiency() -> float:
    return calibration()[0]


def test_kinds_go_from_model_to_family():
    assert fleet_priors.kinds(inventory("x", EPYC, 1, 1)) == [("CPU/SoC", EPYC), ("CPU family", "AMD EPYC")]
    xeon = fleet_priors.kinds(inventory("x", "Intel(R) Xeon(R) Platinum 8375C CPU @ 2.90GHz", 1, 1))
    assert xeon == [("CPU/SoC", "Intel Xeon Platinum 8375C"), ("CPU family", "Intel Xeon")]
    gpu = inventory("g", EPYC, 1, 1)
    gpu.gpus.add(name="NVIDIA H100 80GB HBM3")
    assert fleet_priors.kinds(gpu) == [("GPU", "NVIDIA H100 80GB HBM3"), ("GPU vendor", "NVIDIA")]
    assert fleet_priors.kinds(pb.DeviceInventory(device_id="blank")) == []


def test_a_never_profiled_device_is_estimated_from_its_kind_and_says_so(store):
    answers = {a.device_id: a for a in fit.respond(pb.FitRequest(model_name="llama-2-7b", quant="Q4_0"), store,
                                                       fit.AnswerCache(store)).answers}
    new = answers["new"]
    decode = new.decode_tokens_per_s
    assert PROVENANCE.word(decode.provenance_kind) == "estimated"
    assert "estimated from 2 calibrated llama.cpp devices of kind CPU/SoC 'AMD EPYC 7B13 64-Core Processor'" \
        in decode.method
    assert "1 device(s) outside 0.02..2 of their probe ignored" in decode.method  # the hostile one
    # a and b: the same probes, b 1.2 times as fast: efficiencies e and 1.2 e, median 1.1 e, band ±1/11
    e, layer_s = calibration()
    assert f"efficiency {1.1 * e:.2f} ± {0.1 * e:.2f}" in decode.method
    assert decode.error_fraction == pytest.approx(1 / 11, rel=1e-3)
    arch = CATALOGUE["llama-2-7b"]
    probe = store.devices("new")[0].inventory.probes.bandwidth[0].gb_per_s * 1e9
    # b's copy is 1.2 times as fast: its fitted cost per layer is a's / 1.2; the median of the two costs
    per_layer = (layer_s + layer_s / 1.2) / 2
    assert f"+ {per_layer * 1e3:.2f} ms per layer (median of theirs)" in decode.method
    positions = scaling.mean_decode_context(scaling.SPEED_SHAPE[1])  # the speed rule: a run shape's depth
    expected = 1 / (scaling.decode_bytes_per_token(arch, "Q4_0", positions) / (1.1 * e * probe)
                    + arch.n_layers * per_layer)
    assert decode.value == pytest.approx(expected, rel=1e-6)
    assert "estimated from 2 calibrated" in new.prefill_tokens_per_s.method
    # not the fixed default any more, and the hostile device did not drag it
    default = scaling.DEFAULT_BANDWIDTH_EFFICIENCY * probe / scaling.decode_bytes_per_token(arch, "Q4_0", positions)
    assert decode.value / default > 1.1  # with the hostile one in, the efficiency would be b's own 1.2 e
    # a kind with no calibrated devices: the fixed default, and why
    lone = answers["lone"].decode_tokens_per_s
    assert "default 60% of the bandwidth probe (fewer than 2 of its kind" in lone.method
    assert "0 calibrated CPU/SoC 'Intel Xeon Platinum 8375C'" in lone.method and not lone.HasField("error_fraction")
    # calibrated devices keep their own calibration
    assert PROVENANCE.word(answers["a"].decode_tokens_per_s.provenance_kind) == "measured"


def test_a_precision_nobody_measured_borrows_the_nearest_and_says_so(store):
    priors = fleet_priors.FleetPriors(store.devices(), lambda i: store.results(device_id=i))
    eff = priors.efficiency(store.devices("new")[0].inventory, "llama.cpp", "bandwidth", "Q4_K_M")
    assert "at Q4_K_M (nearest measured: " in eff.how and eff.band is not None


def test_a_new_calibrated_peer_changes_the_cached_answer(store):
    cache = fit.AnswerCache(store)
    ask = pb.FitRequest(model_name="llama-2-7b", quant="Q4_0", device="new")
    before = fit.respond(ask, store, cache).answers[0].decode_tokens_per_s.method
    results, _ = ladder()
    store.upsert_device(inventory("c", EPYC, 15.0, 280.0))
    for r in copied(results, "c", 0.9):
        store.add_result(r)
    after = fit.respond(ask, store, cache).answers[0].decode_tokens_per_s.method
    assert "from 2 calibrated" in before and "from 3 calibrated" in after


def test_an_odd_device_within_the_range_moves_the_median_little():
    results, real = ladder()
    bw, fl = real.probes.bandwidth[0].gb_per_s, real.probes.matmul[0].gflop_per_s
    peers = {"a": 1.0, "b": 1.2, "odd": 2.5}  # odd: 2.5 e, inside 0.02..2 of its probe, far from the others
    devices = [pb.Device(inventory=inventory(i, EPYC, bw, fl), results=len(results)) for i in peers]
    devices.append(pb.Device(inventory=inventory("new", EPYC, bw, fl)))
    fleet = [r for i, speed in peers.items() for r in copied(results, i, speed)]
    eff = fleet_priors.FleetPriors.of_results(devices, fleet).efficiency(devices[-1].inventory, "llama.cpp",
                                                                          "bandwidth", "Q4_0")
    assert eff.value == pytest.approx(1.2 * efficiency(), rel=1e-6)  # the median: b's; a mean would be 1.57 e
    assert "from 3 calibrated" in eff.how and eff.band == pytest.approx(1.3 / 1.2, rel=1e-3)  # the odd one widens it
