"""Predictions stay physical where a device measured little, and noise is measured, not absorbed (issue 27 items
2, 3 and 5): over fleets built from real stored results (tests/fixtures/ladder, coverage-ladder) — subsets, a
device that measured one model, one with a noisy point, one with an out-of-memory run."""

import random

import pytest

from fleetfit.coordinator.answers import fit
from fleetfit.coordinator.predict import scaling, serving, speed_model
from fleetfit.models.catalogue import CATALOGUE
from fleetfit.v1 import fleetfit_pb2 as pb
from tests.coordinator.test_scaling import COVERAGE_LADDER, LADDER, ladder

SIZES = ("tinyllama-1.1b", "qwen3-4b", "llama-2-7b", "llama-2-13b", "llama-2-70b")  # bytes per token rising


def _copy(r: pb.ProfileResult, **changes) -> pb.ProfileResult:
    out = pb.ProfileResult()
    out.CopyFrom(r)
    for k, v in changes.items():
        if isinstance(v, pb.Stat):
            getattr(out, k).CopyFrom(v)
        else:
            setattr(out, k, v)
    return out


def _noisy(r: pb.ProfileResult, spread: float = 0.95) -> pb.ProfileResult:
    """The run as a busy neighbour leaves it: the same median, repetitions scattered (the issue's 14.35 ± 13.67)."""
    out = _copy(r)
    for stat in (out.decode_tokens_per_s, out.prefill_tokens_per_s):
        m = stat.mean
        del stat.samples[:]
        stat.samples.extend([m * (1 - spread), m, m * (1 + spread)])
    return out


def fleets():
    """(name, device, results): the ladders whole, one model only (quiet and noisy), and seeded random subsets."""
    out = []
    for directory in (LADDER, COVERAGE_LADDER):
        results, device = ladder(directory)
        out.append((f"{directory.name} whole", device, results))
        rng = random.Random(27)
        for i in range(6):
            out.append((f"{directory.name} subset {i}", device, rng.sample(results, rng.randint(2, len(results)))))
    results, device = ladder(COVERAGE_LADDER)
    smollm2 = [r for r in results if r.model_name == "smollm2-135m" and r.n_depth == 0]
    out.append(("smollm2 only", device, smollm2))
    out.append(("smollm2 only, noisy", device, [_noisy(r) for r in smollm2]))
    # a busy CPU: Q8_0 measured as fast as Q4_0 (the reported ~11.89 tok/s for every size came from such a pair)
    out.append(("smollm2 only, Q8_0 as fast", device,
                [smollm2[0], _copy(smollm2[1], decode_tokens_per_s=smollm2[0].decode_tokens_per_s)]))
    out.append(("one noisy point", device, [_noisy(r) if r.model_name == "tinyllama-1.1b" else r for r in results]))
    return out


FLEETS = fleets()


@pytest.mark.parametrize("name, device, results", FLEETS, ids=[f[0] for f in FLEETS])
def test_predictions_fall_with_size_and_stay_under_the_physical_ceiling(name, device, results):
    dm = scaling.device_model(device, results)
    if dm.calibration is None or dm.calibration.decode is None:
        pytest.skip("nothing calibrated")
    bw, _ = dm.ceiling("decode")
    fl, _ = dm.ceiling("prefill")
    for quant in ("Q4_0", "Q8_0"):
        # from a nearly empty cache, as the runs measured were (a measured size among them keeps its figure)
        decode = [dm.predict(CATALOGUE[m], quant, 4096, decode_context=64).decode_tps for m in SIZES]
        values = [f.value for f in decode]
        assert all(a > b for a, b in zip(values, values[1:])), (name, quant, values)  # never a constant
        decode_at, prefill_at = dm.speed_positions()  # the speed rule: at the device's run shape, any context
        for arch in CATALOGUE.values():
            p = dm.predict(arch, quant, 4096)
            if p.decode_tps.provenance == "measured":
                continue
            if scaling._weights_read_per_token(arch, quant) >= scaling.CACHE_BYTES:
                ceiling = bw / scaling.decode_bytes_per_token(arch, quant, decode_at)
                assert p.decode_tps.value <= ceiling * (1 + 1e-9), (name, arch.name, quant, p.decode_tps)
            assert p.prefill_tps.value <= fl / scaling.flops_per_token(arch, prefill_at, prompt=True) * (1 + 1e-9)
            assert dm.predict(arch, quant, 512).decode_tps.value == p.decode_tps.value  # one speed per cell
            for phase, f in (("decode", p.decode_tps), ("prefill", p.prefill_tps)):
                assert f.error_fraction >= max(dm.noise[phase] or 0, scaling.MIN_BAND) - 1e-12, (name, arch.name, f)


def test_a_device_that_measured_one_model_scales_by_bytes_and_says_so():
    """The issue's flow: smollm2-135m at Q4_0 and Q8_0 only. Every size is the measured figure scaled by bytes per
    token (within a factor of 2), labelled as the probe x an efficiency from the device's own runs, without the
    terms one architecture cannot support."""
    _, device, results = next(f for f in FLEETS if f[0] == "smollm2 only")
    dm = scaling.device_model(device, results)
    smollm2 = dm.measured("smollm2-135m", "Q4_0")
    scaled = smollm2.decode_tps * scaling.decode_bytes_per_token(smollm2.arch, "Q4_0", smollm2.decode_positions)
    for m in SIZES[:4]:
        f = dm.predict(CATALOGUE[m], "Q4_0", 4096).decode_tps
        expected = scaled / scaling.decode_bytes_per_token(CATALOGUE[m], "Q4_0", 4096)
        assert 0.5 <= f.value / expected <= 2, (m, f.value, expected)
        assert "efficiency" in f.method and "own runs" in f.method and "left out: per-token" in f.method
        # nothing held out validates an extrapolation from one model: its band is what held-out ones miss by, not
        # the ±1 % the device repeats to
        assert f.error_fraction >= scaling.UNVALIDATED_BAND["decode"] and "nothing measured here can be held out" \
            in f.method, (m, f)
        prefill = dm.predict(CATALOGUE[m], "Q4_0", 4096).prefill_tps
        assert prefill.error_fraction >= scaling.UNVALIDATED_BAND["prefill"]


def test_noise_is_flagged_down_weighted_and_widens_every_band():
    _, device, results = next(f for f in FLEETS if f[0] == "smollm2 only, noisy")
    dm = scaling.device_model(device, results)
    assert all(p.noisy and p.weight("decode") < 0.2 for p in dm.points)
    assert dm.noise["decode"] > job_bounds_noise()
    f = dm.predict(CATALOGUE["llama-2-7b"], "Q4_0", 4096).decode_tps
    assert f.error_fraction >= dm.noise["decode"] and "calibration too noisy" in f.method
    assert "down-weighted" in f.method
    quiet = scaling.device_model(device, next(f for f in FLEETS if f[0] == "smollm2 only")[2])
    assert not any(p.noisy for p in quiet.points)  # the same runs, repeating to a few percent
    # one noisy point among quiet ones: flagged and down-weighted, the others trusted
    _, device, results = next(f for f in FLEETS if f[0] == "one noisy point")
    dm = scaling.device_model(device, results)
    assert {p.model for p in dm.points if p.noisy} >= {"tinyllama-1.1b"}
    assert all(p.weight("decode") == 1 for p in dm.points if not p.noisy)


def job_bounds_noise() -> float:
    from fleetfit.models.job_bounds import NOISE_CV
    return NOISE_CV


def test_no_band_reads_zero():
    """Two identical points (no spread, no held-out family) still get a band: the floor."""
    results, device = ladder(COVERAGE_LADDER)
    one = [r for r in results if (r.model_name, r.quant, r.n_depth) == ("smollm2-135m", "Q4_0", 0)]
    for r in one:
        del r.decode_tokens_per_s.samples[:]
        del r.prefill_tokens_per_s.samples[:]
    dm = scaling.device_model(device, one)
    for m in SIZES:
        p = dm.predict(CATALOGUE[m], "Q4_0", 4096)
        assert p.decode_tps.error_fraction >= scaling.MIN_BAND and p.prefill_tps.error_fraction >= scaling.MIN_BAND


@pytest.mark.parametrize("oom_model, context", [("tinyllama-1.1b", 96), ("llama-3.2-1b", 96), ("llama-2-7b", 96)])
def test_a_measured_oom_rules_out_every_larger_need(oom_model, context):
    results, device = ladder(COVERAGE_LADDER)
    base = next(r for r in results if (r.model_name, r.quant, r.n_depth) == (oom_model, "Q4_0", 0))
    oom = _copy(base, result_id="oom", failure=pb.FAILURE_KIND_OOM, error="killed: out of memory")
    need = scaling.memory_feature(CATALOGUE[oom_model], "Q4_0", scaling._context(oom), "llama.cpp")
    kept = [r for r in results  # what a device that ran out there measured: the smaller needs
            if scaling.memory_feature(CATALOGUE[r.model_name], r.quant, scaling._context(r), "llama.cpp") < need]
    dm = scaling.device_model(device, kept + [oom])
    for arch in CATALOGUE.values():
        for quant in ("Q4_0", "Q8_0"):
            for ctx in (scaling._context(oom), 4096):
                p = dm.predict(arch, quant, ctx)
                larger = scaling.memory_feature(arch, quant, ctx, "llama.cpp") >= need
                assert bool(p.ruled_out) == larger, (arch.name, quant, ctx, p.ruled_out)
    # a smaller context than the one that ran out is not ruled out by it
    assert dm.predict(CATALOGUE[oom_model], "Q4_0", 16).ruled_out is None
    a = fit.answer(device, fit.Cell("llama-2-13b", "Q4_0", "llama.cpp"), kept + [oom])
    assert a.fit_verdict == pb.VERDICT_DOES_NOT_FIT and "ran out of memory" in a.reason


def test_one_architecture_never_fits_a_constant():
    """Busy-CPU pairs of one model (Q8_0 as fast as Q4_0, or faster) used to put every second into the per-token
    term: every size then decoded alike."""
    arch = CATALOGUE["smollm2-135m"]
    for q4, q8 in ((180, 180), (120, 150), (12, 11.9)):
        model = speed_model.fit([speed_model.Sample(arch, "Q4_0", 48, q4), speed_model.Sample(arch, "Q8_0", 48, q8)])
        assert model.token_s == 0 and model.layer_s == 0 and model.left_out
        speeds = [model.tps(CATALOGUE[m], "Q4_0", 512) for m in SIZES]
        assert all(a > b for a, b in zip(speeds, speeds[1:])), speeds


def _point(n, aggregate, per_stream=None):
    return serving.SweepPoint(n, aggregate, per_stream or aggregate / n, None, None, None, None, None, "sweep")


@pytest.mark.parametrize("seed", range(20))
def test_a_noisy_sweep_is_fit_monotone(seed):
    rng = random.Random(seed)
    counts = [1, 2, 4, 8, 16][:rng.randint(2, 5)]
    raw = [_point(n, rng.uniform(5, 300), rng.uniform(1, 100)) for n in counts]
    fitted = serving.monotone(raw)
    assert [p.streams for p in fitted] == counts
    for a, b in zip(fitted, fitted[1:]):
        assert b.aggregate_tps >= a.aggregate_tps - 1e-9 and b.per_stream_tps <= a.per_stream_tps + 1e-9
    assert all(0 < p.per_stream_tps <= p.aggregate_tps for p in fitted)
    clean = serving.monotone([_point(1, 10), _point(2, 18), _point(4, 30)])
    assert [p.aggregate_tps for p in clean] == [10, 18, 30] and all(p.source == "sweep" for p in clean)


def test_an_unswept_model_at_one_stream_serves_its_decode():
    """Serving's one stream of a model never swept is the scaling model's decode for the same run: one answer."""
    results, device = ladder(COVERAGE_LADDER)
    swept = _copy(next(r for r in results if (r.model_name, r.quant, r.n_depth) == ("smollm2-135m", "Q4_0", 0)),
                  result_id="sweep", started_unix_s=2e9)
    for n, agg in ((1, 150.0), (2, 230.0), (4, 210.0), (8, 330.0)):  # a dip at 4: noise
        swept.serving.add(parallel=n, aggregate_decode_tokens_per_s=pb.Stat(mean=agg),
                          per_stream_decode_tokens_per_s=pb.Stat(mean=agg / n))
    dm = scaling.device_model(device, results + [swept])
    sm = serving.serving_model(dm, results + [swept])
    curve = sm.curve("smollm2-135m", "Q4_0")
    assert curve.points[0].aggregate_tps == swept.decode_tokens_per_s.mean  # one stream: the run's own decode
    assert not curve.monotonic and all(b.aggregate_tps >= a.aggregate_tps for a, b in zip(curve.points,
                                                                                           curve.points[1:]))
    for m in SIZES[:3]:
        cm = sm.curve_model(CATALOGUE[m], "Q4_0")
        one = dm.predict(CATALOGUE[m], "Q4_0").decode_tps.value  # the speed table's cell, at any context
        assert sm.aggregate(cm, 1).value == pytest.approx(one)
        aggregates = [sm.aggregate(cm, n).value for n in (1, 2, 4, 8)]
        assert all(v >= 0 for v in aggregates) and aggregates == sorted(aggregates)
