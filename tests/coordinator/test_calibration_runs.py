"""A fit question never changes a device: about an architecture far from what a device calibrated on it says so and
names the explicit request that measures it (`fleetfit calibrate`), and queues nothing — on real SQLite and
PostgreSQL stores holding the real ladder."""

from fleetfit.coordinator.answers import fit
from fleetfit.coordinator.service import ingest
from fleetfit.coordinator.service.store import Store
from fleetfit.v1 import fleetfit_pb2 as pb

from tests.coordinator.test_scaling import ladder


def ask(store: Store, model: str, device: str, quant: str = "Q4_0") -> pb.FitAnswer:
    (answer,) = fit.respond(pb.FitRequest(model_name=model, quant=quant, device=device), store,
                            fit.AnswerCache(store)).answers
    return answer


def test_a_question_queues_no_work_and_names_the_request_that_would(db_url):
    results, device = ladder()
    with Store(db_url) as store:
        ingest.check_inventory(device)
        store.upsert_device(device)
        for r in results:
            store.add_result(r)
        near = ask(store, "mistral-7b", device.device_id)  # inside the ladder's range
        assert not near.outside_calibration and "fleetfit calibrate" not in near.reason
        far = [ask(store, model, device.device_id, quant) for model, quant in
               (("gemma-3-1b", "Q4_0"), ("qwen3-30b-a3b", "Q8_0"), ("gpt-oss-20b", "Q4_0"), ("gemma-3-4b", "Q4_0"))]
        for a in far + [ask(store, "gemma-3-1b", device.device_id)]:  # asked twice: still nothing
            assert a.outside_calibration, a.model_name
            assert f"fleetfit calibrate {device.device_id} {a.model_name} --quant {a.quant}" in a.reason
            assert "--calibrate" in a.reason and "queued" not in a.reason
        assert any("vocabulary 262,144" in w for w in far[0].outside_calibration)
        assert store.open_jobs(device.device_id) == [] and store.devices_with_queued_jobs() == set()
        assert store.campaigns() == []
