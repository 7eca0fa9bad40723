"""The issue-7 tables on the measured ladder: predictions marked `~`, options, bad options."""

import re

import pytest

from fleetfit.coordinator.answers import tables
from fleetfit.v1 import fleetfit_pb2 as pb
from tests.coordinator.test_scaling import ladder


@pytest.fixture(scope="module")
def fleet():
    results, device = ladder()
    return tables.Fleet(results, [pb.Device(inventory=device)])


def cells(fleet, name, options=None) -> list[dict]:
    table = tables.build(name, fleet, options or {})
    return [dict(zip(table.columns, (tables.cell_text(c) for c in row.cells))) for row in table.rows]


def test_memory_table_adds_the_seed_sizes_as_marked_predictions(fleet):
    rows = {r["model"]: r for r in cells(fleet, "memory")}
    assert rows["llama-2-70b"]["F16 GB"].startswith("~") and "(does not fit)" in rows["llama-2-70b"]["F16 GB"]
    assert not rows["tinyllama-1.1b"]["F16 GB"].startswith("~")  # measured


def test_capacity_speed_target_and_baseline(fleet):
    rows = cells(fleet, "capacity", {"min_tps": "1000"})
    assert all(r["largest at ≥1000 tok/s"] == "n/a" for r in rows)  # nothing is that fast here
    rows = cells(fleet, "capacity", {"min_tps": "2"})
    speeds = [float(re.search(r", ([0-9.]+) tok/s\)", r["largest at ≥2 tok/s"]).group(1)) for r in rows]
    assert len(speeds) == 3 and all(s >= 2 for s in speeds)  # one per precision, each meeting the target
    assert any(r["largest in catalogue (predicted)"].startswith("~") for r in rows)  # predictions are marked
    assert {r[next(c for c in r if c.startswith("llama-2-7b decode vs"))] for r in rows} <= {"1.00x", "~1.00x"}
    with pytest.raises(tables.TableError, match="option baseline: no device 'nope'"):
        tables.build("capacity", fleet, {"baseline": "nope"})
    with pytest.raises(tables.TableError, match="did you mean llama-2-7b"):
        tables.build("capacity", fleet, {"reference": "llama-2-7"})


def test_deployment_thresholds_are_options(fleet):
    strict = cells(fleet, "deployment", {"realtime_tps": "1e6", "interactive_tps": "1e6", "batch_tps": "1e6"})
    assert strict and all(r["real-time (≥1e+06 tok/s)"] == "n/a" for r in strict)
    loose = cells(fleet, "deployment", {"batch_tps": "0.01"})
    assert all(r["batch (≥0.01 tok/s)"] != "n/a" for r in loose)
    with pytest.raises(tables.TableError, match="must be a number"):
        tables.build("deployment", fleet, {"interactive_tps": "fast"})


def test_recommendations_scale_devices_with_users(fleet):
    rows = [r for r in cells(fleet, "recommendations") if r["model"] != "n/a"]
    by_scale = {r["scale"]: int(r["devices needed"]) for r in rows}
    assert by_scale["small"] <= by_scale["medium"] <= by_scale["large"] and by_scale["large"] > by_scale["small"]
    with pytest.raises(tables.TableError, match="active_fraction"):
        tables.build("recommendations", fleet, {"active_fraction": "2"})
