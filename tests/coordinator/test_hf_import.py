"""hf:ORG/REPO/FILE.gguf[@REVISION] into the model store, through a local HTTP server that answers as the Hugging Face
hub does (tests/hub_server.py, the `hub` fixture), serving the SmolLM2 file; the coordinator's huggingface_hub finds it
through HF_ENDPOINT. No test leaves the machine."""

import hashlib

import grpc
import pytest

from fleetfit.v1 import fleetfit_pb2 as pb
from tests.conftest import assert_one_line_error, fleet_stub, run_cli
from tests.hub_server import COMMIT

pytest.importorskip("huggingface_hub", reason="huggingface_hub (the hf extra) is not installed")

def test_a_hub_file_is_pinned_to_its_commit_verified_stored_and_resumed(coordinator, hub, ladder):
    server = hub(cut_first=True)
    stub = fleet_stub(coordinator)
    request = pb.ImportModelRequest(ref="hf:test-org/smol/smollm2-Q4_1.gguf@main", added_by="tester@here")
    try:
        reply = stub.ImportModel(request, timeout=300)
    except grpc.RpcError:  # huggingface_hub gave up on the cut transfer: the next try resumes it with a Range
        reply = stub.ImportModel(request, timeout=300)
    digest = hashlib.sha256(ladder["Q4_1"].read_bytes()).hexdigest()
    assert reply.model.name == "smollm2-Q4_1" and reply.model.sha256 == digest
    assert reply.model.added_by == f"hf:test-org/smol/smollm2-Q4_1.gguf@{COMMIT[:12]} by tester@here"
    assert server.ranges and 0 < server.ranges[0] < len(ladder["Q4_1"].read_bytes())  # resumed, not restarted
    assert [m.name for m in stub.ListModels(pb.ListModelsRequest(), timeout=10).models] == ["smollm2-Q4_1"]
    assert not (coordinator.blob_dir / "hf-cache").exists()  # stored once, not twice


def test_hub_failures_are_one_line_and_store_nothing(coordinator, hub, tmp_path):
    hub(lie=True)
    env = {"FLEETFIT_INSECURE": "1", "FLEETFIT_TOKEN": coordinator.operator_token,
           "FLEETFIT_COORDINATOR": coordinator.address, "FLEETFIT_STATE_DIR": str(tmp_path / "none")}
    assert_one_line_error(run_cli("fleetfit", "models", "add", "hf:test-org/smol/smollm2-Q4_1.gguf", env=env),
                          "hash to sha256:")  # a mirror that claims another SHA-256
    assert_one_line_error(run_cli("fleetfit", "models", "add", "hf:test-org/smol/missing.gguf", env=env),
                          "cannot download hf:test-org/smol/missing.gguf")
    assert_one_line_error(run_cli("fleetfit", "models", "add", "hf:test-org/../x.gguf", env=env),
                          "is not a Hugging Face file")
    assert not fleet_stub(coordinator).ListModels(pb.ListModelsRequest(), timeout=10).models
