"""The committed generated code must be exactly what the .proto files generate."""

import filecmp
import importlib.util
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
GENERATED = ROOT / "protos" / "fleetfit" / "v1"


@pytest.mark.skipif(importlib.util.find_spec("grpc_tools") is None, reason="grpcio-tools (the dev extra) not installed")
def test_generated_code_matches_proto_files(tmp_path):
    subprocess.run([sys.executable, str(ROOT / "protos" / "generate.py"), "--out", str(tmp_path)], check=True)
    fresh = sorted(p.name for p in (tmp_path / "fleetfit" / "v1").iterdir())
    committed = sorted(p.name for p in GENERATED.glob("*_pb2*"))
    assert fresh == committed
    for name in fresh:
        assert filecmp.cmp(tmp_path / "fleetfit" / "v1" / name, GENERATED / name, shallow=False), (
            f"{name} differs from what protos/generate.py makes: run it and commit the result")


def test_every_rpc_is_served():
    """Each RPC in the contract has a servicer method (a new RPC cannot be added without one)."""
    from fleetfit.coordinator import server
    from fleetfit.v1 import fleetfit_pb2 as pb

    for service in pb.DESCRIPTOR.services_by_name.values():
        servicer = getattr(server, service.name)
        for method in service.methods:
            assert method.name in vars(servicer), f"{service.name}.{method.name} has no handler"
