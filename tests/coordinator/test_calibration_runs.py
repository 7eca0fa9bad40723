"""A fit question about an architecture far from what a device calibrated on queues one calibration run of it
there (coordinator/fit.py extend_calibration), on a real SQLite store holding the real ladder."""

from fleetfit.coordinator import fit, ingest
from fleetfit.coordinator.store import Store
from fleetfit.models import job_bounds
from fleetfit.v1 import fleetfit_pb2 as pb

from tests.coordinator.test_scaling import ladder


def ask(store: Store, model: str, device: str) -> pb.FitAnswer:
    (answer,) = fit.respond(pb.FitRequest(model_name=model, quant="Q4_0", device=device), store,
                            fit.AnswerCache(store)).answers
    return answer


def test_a_far_architecture_queues_one_calibration_run(tmp_path):
    results, device = ladder()
    with Store(tmp_path / "fleet.db") as store:
        ingest.check_inventory(device)
        store.upsert_device(device)
        for r in results:
            store.add_result(r)
        near = ask(store, "mistral-7b", device.device_id)  # inside the ladder's range: nothing queued
        assert not near.outside_calibration and not near.calibration_job_id and store.open_jobs(device.device_id) == []
        far = ask(store, "gemma-3-1b", device.device_id)  # vocabulary 262k, sliding window: outside it
        assert any("vocabulary 262,144" in w for w in far.outside_calibration)
        assert "outside what this device calibrated on" in far.reason and far.calibration_job_id in far.reason
        (job_id, request), = store.open_jobs(device.device_id)
        assert job_id == far.calibration_job_id
        assert (request.model.name, request.quant, request.backend, request.n_prompt, request.n_gen,
                request.repetitions) == ("gemma-3-1b", "Q4_0", "llama.cpp", *job_bounds.CALIBRATION_RUN)
        again = ask(store, "gemma-3-1b", device.device_id)  # asked again: the same job, not a second one
        assert again.calibration_job_id == job_id and len(store.open_jobs(device.device_id)) == 1
        for model in ("qwen3-30b-a3b", "gpt-oss-20b", "gemma-3-4b", "qwen2.5-0.5b"):  # a cap on what questions queue
            ask(store, model, device.device_id)
        assert len(store.open_jobs(device.device_id)) == fit.MAX_OPEN_JOBS
        capped = ask(store, "qwen3-0.6b", device.device_id)
        assert not capped.calibration_job_id and "no calibration run queued" in capped.reason
