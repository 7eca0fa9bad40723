"""Table answers at fleet scale do bounded work: a stored result is walked (upgraded and cleaned) once per
coordinator, not once per request, and a device's scaling model is calibrated again only when its results or
inventory change. Counted, not timed (benchmarks/table_scale.py times 100,000 results)."""

import sys
import pathlib
import random

import pytest

from fleetfit.coordinator.service import ingest
from fleetfit.coordinator.predict import scaling
from fleetfit.coordinator.answers import tables
from fleetfit.coordinator.service.store import Store
from fleetfit.v1 import fleetfit_pb2 as pb

sys.path.insert(0, str(pathlib.Path(__file__).parents[2] / "benchmarks"))
from table_scale import a_result, fill  # noqa: E402


@pytest.fixture()
def counted(monkeypatch):
    """How many results were walked by ingest.usable and how many device models were calibrated."""
    counts = {"walked": 0, "calibrated": 0}
    usable, device_model = ingest.usable, scaling.device_model

    def walk(message):
        counts["walked"] += isinstance(message, pb.ProfileResult)  # inventories are walked too, per request
        return usable(message)

    def calibrate(*args, **kwargs):
        counts["calibrated"] += 1
        return device_model(*args, **kwargs)

    monkeypatch.setattr(ingest, "usable", walk)
    monkeypatch.setattr(scaling, "device_model", calibrate)
    return counts


def test_asking_again_walks_no_result_and_recalibrates_only_what_changed(db_url, counted):
    random.seed(5)
    with Store(db_url) as store:
        fill(store, 600, 30)
        for name in ("speed", "measured", "memory"):
            tables.build_from_store(name, store, {})
        assert counted["walked"] == 600  # each result once, by the first table
        calibrated = counted["calibrated"]
        assert 0 < calibrated <= 30
        for name in ("speed", "measured", "memory", "speed"):
            first = tables.build_from_store(name, store, {})
        assert (counted["walked"], counted["calibrated"]) == (600, calibrated)

        new = a_result("dev-0007")  # one device reports one more result
        store.add_result(new)
        again = tables.build_from_store("speed", store, {})
        assert (counted["walked"], counted["calibrated"]) == (601, calibrated + 1)
        assert again.rows and first.rows


def test_a_result_that_needed_cleaning_is_walked_every_time(db_url, counted):
    """Only results stored as answers may use them are remembered; an old poisoned one is cleaned on every read."""
    random.seed(6)
    with Store(db_url) as store:
        fill(store, 20, 2)
        bad = a_result("dev-0001")
        bad.decode_tokens_per_s.samples[0] = float("nan")
        with store.db.transaction() as execute:  # stored before ingest checked it
            execute("INSERT INTO results (result_id, device_id, job_id, model_name, quant, backend, failure, received, "
                    "payload) VALUES (?, ?, NULL, ?, ?, ?, 0, 1, ?)", (bad.result_id, bad.device_id, bad.model_name,
                                                                      bad.quant, "llama.cpp", bad.SerializeToString()))
        for _ in range(3):
            found = [r for r in store.results() if r.result_id == bad.result_id]
            assert len(found) == 1 and not found[0].HasField("decode_tokens_per_s")
        assert counted["walked"] == 21 + 1 + 1
