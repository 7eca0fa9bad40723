"""The server certificate names what the coordinator serves on, so a standard TLS client (any language) connects
with the fleet's CA and the operator token alone; `serve --db FILE` keeps its state beside FILE."""

import os
import socket
import subprocess

import grpc
import pytest

from fleetfit.coordinator.service import pki
from fleetfit.coordinator.harness import BackgroundCoordinator
from fleetfit.v1 import fleetfit_pb2 as pb
from fleetfit.v1 import fleetfit_pb2_grpc as pb_grpc
from tests.conftest import BIN
from tests.test_reliability import free_port


def test_certificate_names_the_listen_host_and_more_and_keeps_its_ca(tmp_path):
    first = pki.load_or_create(tmp_path, pki.names_for("0.0.0.0", ["fleetfit.example"]))
    names = pki.certificate_names(first.server_cert_pem)
    assert {socket.gethostname(), "localhost", "127.0.0.1", "fleetfit.example", "fleetfit-coordinator"} <= names
    again = pki.load_or_create(tmp_path, ["10.1.2.3"])  # a new name: issued again by the same CA
    assert again.ca_pem == first.ca_pem and pki.certificate_names(again.server_cert_pem) == names | {"10.1.2.3"}
    assert pki.load_or_create(tmp_path) == again  # nothing asked: nothing changes


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1"])
def test_a_standard_client_connects_with_the_ca_and_token_alone(tmp_path, host):
    server = BackgroundCoordinator(tmp_path / "fleet.sqlite3", tls=True)
    port = server.start()
    try:
        plain_tls = grpc.ssl_channel_credentials(root_certificates=server.authority.ca_pem)  # no name override
        with grpc.secure_channel(f"{host}:{port}", plain_tls) as channel:
            reply = pb_grpc.FleetServiceStub(channel).ListDevices(
                pb.ListDevicesRequest(), metadata=[("authorization", f"Bearer {server.operator_token}")], timeout=10)
        assert list(reply.devices) == []
        other = pki.load_or_create(tmp_path / "other-ca")
        with grpc.secure_channel(f"{host}:{port}", grpc.ssl_channel_credentials(other.ca_pem)) as channel:
            with pytest.raises(grpc.RpcError) as refused:
                pb_grpc.FleetServiceStub(channel).ListDevices(pb.ListDevicesRequest(), timeout=3)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        server.stop()


def test_serve_keeps_its_state_beside_the_database(tmp_path):
    db = tmp_path / "fleet" / "f.sqlite3"
    db.parent.mkdir()
    env = {**os.environ, "XDG_DATA_HOME": str(tmp_path / "xdg")}
    env.pop("FLEETFIT_STATE_DIR", None)
    proc = subprocess.Popen([str(BIN / "fleetfit"), "serve", "--db", str(db), "--listen", f"127.0.0.1:{free_port()}"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        lines = [proc.stdout.readline() for _ in range(3)]
        assert f"operator token and CA in {db.parent}" in "".join(lines), lines
        assert (db.parent / "operator.token").is_file() and (db.parent / "tls" / "ca.pem").is_file()
        assert not (tmp_path / "xdg").exists()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
