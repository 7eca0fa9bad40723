"""Fixtures the coordinator's tests share."""

import pytest

from fleetfit.v1 import fleetfit_pb2 as pb
from tests.conftest import Agents
from tests.coordinator.test_scaling import ladder


@pytest.fixture()
def ladder_fleet(coordinator):
    results, device = ladder()
    agents = Agents(coordinator)
    agents.Register(pb.RegisterRequest(inventory=device), timeout=5)
    for r in results:
        agents.ReportResult(pb.ReportResultRequest(result=r), timeout=5)
    agents.close()
    yield results, {"FLEETFIT_TOKEN": coordinator.operator_token, "FLEETFIT_INSECURE": "1",
                    "FLEETFIT_COORDINATOR": coordinator.address}
