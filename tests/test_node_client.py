"""A client in another language, from the .proto alone, reaches a TLS coordinator with its CA and the operator
token, without overriding the TLS name (the server certificate names the listen host)."""

import json
import os
import pathlib
import shutil
import subprocess

import pytest

from fleetfit.coordinator.service import pki
from tests.conftest import BIN
from tests.test_reliability import free_port

ROOT = pathlib.Path(__file__).resolve().parents[1]
# Where @grpc/grpc-js and @grpc/proto-loader are installed (npm install them there); the test needs no network.
NODE_PATH = os.environ.get("FLEETFIT_TEST_NODE_MODULES", "")


def _node_problem() -> str | None:
    if shutil.which("node") is None:
        return "node is not installed"
    found = subprocess.run(["node", "-e", "require.resolve('@grpc/grpc-js'); require.resolve('@grpc/proto-loader')"],
                           env={**os.environ, "NODE_PATH": NODE_PATH}, capture_output=True)
    return None if found.returncode == 0 else ("@grpc/grpc-js and @grpc/proto-loader not found: npm install them and "
                                               "set FLEETFIT_TEST_NODE_MODULES to their node_modules")


@pytest.mark.skipif(_node_problem() is not None, reason=str(_node_problem()))
def test_node_client_from_the_proto_alone(tmp_path):
    db, port = tmp_path / "fleet.sqlite3", free_port()
    serve = subprocess.Popen([str(BIN / "fleetfit"), "serve", "--db", str(db), "--listen", f"127.0.0.1:{port}"],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert "listening" in serve.stdout.readline()
        other_ca = tmp_path / "other" / "tls"
        pki.load_or_create(other_ca)

        def client(host: str, ca: pathlib.Path) -> subprocess.CompletedProcess:
            return subprocess.run(["node", str(ROOT / "tests" / "clients" / "list_devices.js"),
                                   str(ROOT / "protos" / "fleetfit" / "v1" / "fleetfit.proto"), f"{host}:{port}",
                                   str(ca), str(tmp_path / "operator.token")],
                                  env={**os.environ, "NODE_PATH": NODE_PATH, "NODE_NO_WARNINGS": "1"},
                                  capture_output=True, text=True, timeout=60)

        for host in ("localhost", "127.0.0.1"):
            done = client(host, tmp_path / "tls" / "ca.pem")
            assert done.returncode == 0, done.stderr
            answer = json.loads(done.stdout)
            assert answer["devices"] == [] and answer["columns"][:3] == ["device", "backend", "model"]
        refused = client("localhost", other_ca / "ca.pem")  # TLS is really checked
        assert refused.returncode == 1 and refused.stderr.startswith("error: 14 ")
    finally:
        serve.terminate()
        serve.wait(timeout=30)
