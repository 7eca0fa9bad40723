import pytest

from fleetfit.coordinator.answers.fit import fit, largest_per_precision, memory_verdict
from fleetfit.coordinator.answers.limits import limit_rows
from fleetfit.v1 import fleetfit_pb2 as pb
from fleetfit.v1.words import PROVENANCE, VERDICT

MIB = 2**20


def device(device_id: str, ram_mib: int) -> pb.Device:
    return pb.Device(inventory=pb.DeviceInventory(device_id=device_id, hostname=device_id, ram_total_bytes=ram_mib * MIB))


def measured(result_id, device_id, quant, peak_mib, decode, failure=pb.FAILURE_KIND_UNSPECIFIED, error=""):
    r = pb.ProfileResult(result_id=result_id, device_id=device_id, model_name="smollm2-135m", quant=quant,
                         request=pb.ProfileRequest(backend="llama.cpp", quant=quant), failure=failure, error=error,
                         n_prompt=64, n_gen=16, n_ctx=80,
                         decode_tokens_per_s=pb.Stat(mean=decode, samples=[decode]))
    if not failure:
        r.peak_rss_bytes = peak_mib * MIB
    return r


def test_latest_result_per_device_model_quant_backend_wins():
    results = [measured("a", "pi", "Q4_0", 200, 10.0), measured("b", "pi", "Q4_0", 210, 12.0)]
    rows = limit_rows(results, [device("pi", 4096)])
    assert [(r.result_id, r.decode_tokens_per_s.mean) for r in rows] == [("b", 12.0)]


def test_verdicts():
    devices = [device("big", 8192), device("small", 100), device("slow", 8192), device("oom", 8192),
               device("new", 8192), device("snug", 400)]
    results = [measured("1", "big", "F16", 300, 50.0), measured("2", "small", "F16", 300, 50.0),
               measured("3", "slow", "F16", 300, 2.0),
               measured("4", "oom", "F16", 0, 0.0, pb.FAILURE_KIND_OOM, "killed by the OOM killer"),
               measured("5", "snug", "F16", 340, 50.0)]
    answers = {a.device_id: a for a in fit("smollm2-135m", "F16", "llama.cpp", devices, results, min_decode_tps=5.0,
                                           context=80)}  # the measurements' own context: every figure measured
    assert VERDICT.word(answers["big"].fit_verdict) == "fits_comfortably" and answers["big"].evidence.result_id == "1"
    assert PROVENANCE.word(answers["big"].provenance_kind) == "measured" and answers["big"].memory_fraction == pytest.approx(300 / 8192)
    assert answers["big"].context_tokens == 80
    assert VERDICT.word(answers["small"].fit_verdict) == "does_not_fit" and "exceeds" in answers["small"].reason
    assert VERDICT.word(answers["slow"].fit_verdict) == "does_not_fit" and "below" in answers["slow"].reason
    assert VERDICT.word(answers["oom"].fit_verdict) == "does_not_fit" and "out of memory" in answers["oom"].reason
    assert VERDICT.word(answers["snug"].fit_verdict) == "tight" and "(85%)" in answers["snug"].reason  # 70-95% of RAM
    new = answers["new"]  # nothing measured there: the catalogue formula, labelled as an estimate
    assert not new.HasField("evidence") and PROVENANCE.word(new.provenance_kind) == PROVENANCE.word(new.memory_bytes.provenance_kind) == "estimated"
    assert VERDICT.word(new.fit_verdict) == "fits_comfortably" and "nothing measured on this device" in new.reason


def test_without_a_context_fit_answers_for_4096_tokens_or_the_models_own_and_says_so():
    results = [measured("1", "big", "F16", 300, 50.0)]
    (a,) = fit("smollm2-135m", "F16", "llama.cpp", [device("big", 8192)], results)
    assert a.context_tokens == 4096  # SmolLM2 was trained for 8192: the default 4096 is smaller
    assert PROVENANCE.word(a.decode_tokens_per_s.provenance_kind) == "measured"  # the measured speed, at the shape it ran
    assert PROVENANCE.word(a.memory_bytes.provenance_kind) == "predicted" and a.memory_bytes.value > 300 * MIB  # KV cache grown to 4096
    assert "measured peak at n_ctx 80" in a.memory_bytes.method and "to ctx 4096" in a.memory_bytes.method
    (gpt2,) = fit("distilgpt2", "F16", "llama.cpp", [device("big", 8192)], results)
    assert gpt2.context_tokens == 1024  # distilgpt2's trained context is below 4096


def test_bands():
    assert [memory_verdict(f) for f in (0.5, 0.69, 0.7, 0.95, 0.951, 2.0)] == [
        "fits_comfortably", "fits_comfortably", "tight", "tight", "does_not_fit", "does_not_fit"]


def test_a_model_without_a_shape_or_a_measurement_is_unknown():
    answers = fit("my-finetune", "Q4_0", "llama.cpp", [device("big", 8192)], [])
    assert VERDICT.word(answers[0].fit_verdict) == "unknown" and "no catalogued shape" in answers[0].reason


def test_predicted_for_another_quant_and_context_and_the_power_limit():
    results = [measured("1", "big", "F16", 300, 50.0)]
    decode = results[0].power.phases.add(phase="decode", source="s", method="rapl",
                                        provenance_kind=pb.PROVENANCE_KIND_MEASURED)
    decode.average_power_w, results[0].power.headline_source = 12.0, "s"
    big = [device("big", 8192)]
    other = fit("smollm2-135m", "Q4_0", "llama.cpp", big, results)[0]
    assert PROVENANCE.word(other.provenance_kind) == "predicted" and not other.HasField("evidence")
    assert "smollm2-135m Q4_0 never measured on this device" in other.reason and other.calibration == ["smollm2-135m F16"]
    longer = fit("smollm2-135m", "F16", "llama.cpp", big, results, context=8192)[0]
    assert PROVENANCE.word(longer.memory_bytes.provenance_kind) == "predicted" and longer.memory_bytes.value > 300 * MIB
    assert longer.context_tokens == 8192
    same = fit("smollm2-135m", "F16", "llama.cpp", big, results)[0]
    assert same.joules_per_token.value == pytest.approx(12.0 / 50.0) and PROVENANCE.word(same.joules_per_token.provenance_kind) == "measured"
    capped = fit("smollm2-135m", "F16", "llama.cpp", big, results, max_watts=10)[0]
    assert VERDICT.word(capped.fit_verdict) == "does_not_fit" and "over the 10 W asked" in capped.reason


def test_largest_per_precision():
    results = [measured("1", "big", "F16", 300, 50.0)]
    found = {a.quant: a for a in largest_per_precision(device("big", 8192).inventory, "llama.cpp", results)}
    assert {"F16", "Q4_0"} <= set(found)
    assert all(VERDICT.word(a.fit_verdict) in ("fits_comfortably", "tight") for a in found.values())
    assert found["Q4_0"].memory_bytes.value < 0.95 * 8192 * MIB


def test_a_band_never_reads_plus_minus_zero():
    """Issue 27 item 3: a band under a percent keeps a decimal (fit's text and every table's cell share the rule)."""
    from fleetfit.coordinator.answers.render import Figure, band_text

    assert [band_text(x) for x in (0.0, 0.004, 0.37)] == ["±<0.1%", "±0.4%", "±37%"]
    assert Figure(10.0, band=0.003, provenance="predicted").text() == "~10 ±0.3%"
