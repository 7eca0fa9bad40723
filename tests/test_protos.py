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
    from fleetfit.coordinator.service import server
    from fleetfit.v1 import fleetfit_pb2 as pb

    for service in pb.DESCRIPTOR.services_by_name.values():
        servicer = getattr(server, service.name)
        for method in service.methods:
            assert method.name in vars(servicer), f"{service.name}.{method.name} has no handler"


@pytest.mark.skipif(importlib.util.find_spec("grpc_tools") is None, reason="grpcio-tools (the dev extra) not installed")
def test_every_message_enum_and_rpc_has_a_comment(tmp_path):
    """A client in another language learns the contract from the .proto alone: each message, enum, service and RPC
    says what it is in a leading comment (buf lint's COMMENTS rules for those kinds)."""
    from google.protobuf import descriptor_pb2

    out = tmp_path / "set.pb"
    subprocess.run([sys.executable, "-m", "grpc_tools.protoc", f"-I{ROOT / 'protos'}", "--include_source_info",
                    f"--descriptor_set_out={out}", "fleetfit/v1/fleetfit.proto"], check=True)
    (proto,) = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes()).file
    commented = {tuple(loc.path) for loc in proto.source_code_info.location if loc.leading_comments.strip()}
    missing = []

    def messages(items, path):
        for i, message in enumerate(items):
            if path + (i,) not in commented and not message.options.map_entry:  # a map's entry is generated
                missing.append(message.name)
            messages(message.nested_type, path + (i, 3))  # DescriptorProto.nested_type = 3
            for j, enum in enumerate(message.enum_type):
                (missing.append(enum.name) if path + (i, 4, j) not in commented else None)

    messages(proto.message_type, (4,))  # FileDescriptorProto.message_type = 4
    missing += [e.name for i, e in enumerate(proto.enum_type) if (5, i) not in commented]
    for s, service in enumerate(proto.service):
        missing += [service.name] if (6, s) not in commented else []
        missing += [f"{service.name}.{m.name}" for i, m in enumerate(service.method) if (6, s, 2, i) not in commented]
    assert not missing, f"no leading comment: {', '.join(missing)}"
