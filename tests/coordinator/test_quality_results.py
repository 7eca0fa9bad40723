"""Quality results from several devices (distinct ids, one hostname): checked at ingest, kept apart, tabled, and
the quality cost in fit answers."""

import csv
import io
import math
import uuid

import grpc
import pytest

from fleetfit.coordinator.answers.tables import render_table
from fleetfit.v1 import fleetfit_pb2 as pb
from tests.conftest import Agents, fleet_stub
from tests.coordinator.test_ingest import good_result


def quality(device_id: str, quant: str, kld: float, **change) -> pb.ReportQualityRequest:
    r = pb.QualityResult(result_id=str(uuid.uuid4()), device_id=device_id, model_name="smollm2-135m", quant=quant,
                         reference_quant="F16", context_tokens=512, n_positions=1275, kl_divergence_mean=kld,
                         kl_divergence_stderr=kld / 20, kl_divergence_p99=kld * 9, perplexity=23.4 + 10 * kld,
                         perplexity_stderr=2.0, same_top_token_fraction=1 - kld / 2, file_bytes=1 << 27,
                         provenance=pb.Provenance(provenance_kind=pb.PROVENANCE_KIND_MEASURED, method="test", scope="test"))
    for key, value in change.items():
        setattr(r, key, value)
    return pb.ReportQualityRequest(result=r)


@pytest.fixture()
def agents(coordinator):
    found = Agents(coordinator)
    for device_id in ("lab-1", "lab-2"):
        found.Register(pb.RegisterRequest(inventory=pb.DeviceInventory(device_id=device_id, hostname="lab",
                                                                       ram_total_bytes=8 << 30)))
    yield found
    found.close()


def test_quality_results_are_tabled_and_priced_into_fit_answers(coordinator, agents):
    for device_id, quant, kld in (("lab-1", "Q8_0", 0.0098), ("lab-1", "Q4_0", 0.70), ("lab-2", "Q4_0", 0.71)):
        assert agents.ReportQuality(quality(device_id, quant, kld), timeout=5).duplicate is False
    again = quality("lab-1", "Q8_0", 0.0098)
    agents.ReportQuality(again, timeout=5)
    assert agents.ReportQuality(again, timeout=5).duplicate is True

    fleet = fleet_stub(coordinator)
    table = fleet.GetTable(pb.GetTableRequest(name="quality"), timeout=10).table
    text = render_table(table, "md")
    assert text.count("| Q4_0 |") == 2 and "| 0.7 | 0.035 |" in text and "| 0.71 |" in text  # kept apart
    rows = list(csv.DictReader(io.StringIO(render_table(table, "csv"))))
    lab1 = next(r for r in rows if r["device"].startswith("lab (1)") and r["precision"] == "Q4_0")
    assert (float(lab1["mean_kld"]), float(lab1["kld_stderr"])) == (0.7, 0.035)  # numbers, not "0.7 ± 0.035"
    assert 0 <= float(lab1["same_top_token_pct"]) <= 100

    answers = {a.device_id: a for a in fleet.Fit(pb.FitRequest(model_name="smollm2-135m", quant="Q4_0"),
                                                 timeout=10).answers}
    assert answers["lab-2"].kl_divergence.value == pytest.approx(0.71)  # its own measurement
    assert "this device" in answers["lab-2"].kl_divergence.method
    q8 = {a.device_id: a for a in fleet.Fit(pb.FitRequest(model_name="smollm2-135m", quant="Q8_0"),
                                            timeout=10).answers}
    assert not q8["lab-2"].HasField("kl_divergence")  # lab-1's Q8_0 file is not known to be lab-2's


def ran(agents, device_id: str, sha256: str, quant: str = "Q8_0") -> None:
    """A result of a run of the file `sha256` on the device."""
    result = good_result(device_id)
    result.quant = result.request.quant = quant
    result.model_sha256 = sha256
    agents.ReportResult(pb.ReportResultRequest(result=result), timeout=5)


def test_another_devices_quality_reaches_an_answer_only_for_the_same_file(coordinator, agents):
    """A device's answer takes another device's KL divergence only for a file of the same sha256 that it ran
    itself: not for another file of the same model and quant, not from a result that names no file."""
    a, b = "a" * 64, "b" * 64
    for kld, sha256 in ((0.0098, a), (5e-324, ""), (1.9, b)):
        agents.ReportQuality(quality("lab-1", "Q8_0", kld, model_sha256=sha256), timeout=5)
    fleet = fleet_stub(coordinator)

    def kld_of_lab2():
        found = {x.device_id: x for x in fleet.Fit(pb.FitRequest(model_name="smollm2-135m", quant="Q8_0"),
                                                   timeout=10).answers}["lab-2"]
        return found.kl_divergence.value if found.HasField("kl_divergence") else None, found

    assert kld_of_lab2()[0] is None  # lab-2 ran nothing
    ran(agents, "lab-2", "c" * 64)
    assert kld_of_lab2()[0] is None  # another file of the same model and quant
    ran(agents, "lab-2", a)
    value, answer = kld_of_lab2()
    assert value == pytest.approx(0.0098)  # the one of the same file, not the latest (1.9, of file b)
    assert "quality on device lab (1) (the same file, sha256 aaaaaaaaaaaa)" in answer.kl_divergence.method
    assert "KLD" not in answer.reason  # once, in its own column: not again in the reason beside it
    agents.ReportQuality(quality("lab-2", "Q8_0", 0.02), timeout=5)
    assert kld_of_lab2()[0] == pytest.approx(0.02)  # its own, once it has one (a row naming no file: from before)
    agents.ReportQuality(quality("lab-2", "Q8_0", 1.5, model_sha256="d" * 64), timeout=5)
    assert kld_of_lab2()[0] == pytest.approx(0.02)  # its own row of a file it never ran is not its answer


@pytest.mark.parametrize("change, fragment", [
    ({"kl_divergence_mean": math.nan}, "quality.kl_divergence_mean is nan: every figure must be finite"),
    ({"kl_divergence_mean": -0.5}, "a KL divergence is not negative"),
    ({"same_top_token_fraction": 1.5}, "same_top_token_fraction is 1.5: above the ceiling of 1"),
    ({"perplexity": 0.5}, "perplexity is 0.5: below the floor of 1"),
    ({"perplexity": 0.0}, "perplexity is 0: at least 1"),
    ({"kl_divergence_mean": 1e14}, "kl_divergence_mean is 1e+14: above the ceiling of 100"),
    ({"model_name": "m" * 300}, "quality.model_name is 300 characters"),
    ({"n_positions": 0}, "n_positions and context_tokens must be positive"),
])
def test_bad_quality_results_are_refused_in_one_line(agents, change, fragment):
    with pytest.raises(grpc.RpcError) as err:
        agents.ReportQuality(quality("lab-1", "Q4_0", 0.7, **change), timeout=5)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and fragment in err.value.details()


def test_a_device_cannot_report_quality_for_another(agents):
    with pytest.raises(grpc.RpcError) as err:
        agents.stub("lab-1").ReportQuality(quality("lab-2", "Q4_0", 0.7), timeout=5)
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED


def test_the_store_keeps_quality_results_on_both_databases(db_url):
    from fleetfit.coordinator.service.store import ConflictingResult, Store, UnknownDevice

    with Store(db_url) as store:
        store.upsert_device(pb.DeviceInventory(device_id="lab-1"))
        first = quality("lab-1", "Q4_0", 0.7).result
        assert store.add_quality(first) is False and store.add_quality(first) is True
        changed = pb.QualityResult()
        changed.CopyFrom(first)
        changed.perplexity = 99.0
        with pytest.raises(ConflictingResult):
            store.add_quality(changed)
        with pytest.raises(UnknownDevice):
            store.add_quality(quality("nobody", "Q4_0", 0.7).result)
        assert [r.result_id for r in store.quality_results("smollm2-135m")] == [first.result_id]
        assert store.quality_results("other") == []
