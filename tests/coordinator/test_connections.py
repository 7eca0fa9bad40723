"""Connections that never finish their TLS handshake cannot starve the coordinator: `fleetfit serve` raises its
open-file limit to the hard limit, bounds the connections it accepts below it (the rest is the store's), and
closes a stalled handshake after HANDSHAKE_TIMEOUT_MS. Real sockets on loopback against a real `serve` process
started with the usual soft limit of 1,024 open files."""

import pathlib
import resource
import selectors
import socket
import subprocess
import time

import grpc
import pytest

from fleetfit.v1 import fleetfit_pb2 as pb
from fleetfit.v1 import fleetfit_pb2_grpc as pb_grpc
from fleetfit.v1.transport import HANDSHAKE_TIMEOUT_MS, connect
from tests.conftest import BIN, run_cli, wait_until

STALLED = 1100  # more than a soft limit of 1,024 files


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(autouse=True)
def room_for_the_flood():
    """This process holds the stalled sockets: its own soft limit must allow them."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < STALLED + 200:
        pytest.skip(f"the hard open-file limit here ({hard}) is too low to hold {STALLED} sockets")
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def serve(tmp_path: pathlib.Path, hard: int):
    """`fleetfit serve` (TLS) started with a soft open-file limit of 1,024 and the given hard limit."""
    address, state = f"127.0.0.1:{free_port()}", tmp_path / "state"
    log = open(tmp_path / "serve.log", "wb")
    proc = subprocess.Popen([str(BIN / "fleetfit"), "serve", "--listen", address, "--db", str(tmp_path / "f.sqlite3"),
                             "--state-dir", str(state)], stdout=log, stderr=log,
                            preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (1024, hard)))
    wait_until(lambda: (state / "operator.token").exists() and (state / "tls" / "ca.pem").exists(), 60, "serve")
    channel = connect(address, 30, ca_pem=(state / "tls" / "ca.pem").read_bytes(),
                      token=(state / "operator.token").read_text().strip())
    return proc, address, state, pb_grpc.FleetServiceStub(channel)


def stall(address: str, n: int) -> list[socket.socket]:
    """`n` TCP connections that never send a byte of their TLS handshake."""
    host, port = address.rsplit(":", 1)
    return [socket.create_connection((host, int(port)), timeout=5) for _ in range(n)]


def closed_within(socks: list[socket.socket], timeout_s: float) -> float:
    """Seconds until the server closed every socket (pytest.fail past `timeout_s`)."""
    start, left = time.monotonic(), len(socks)
    with selectors.DefaultSelector() as sel:
        for s in socks:
            sel.register(s, selectors.EVENT_READ)
        while left:
            if time.monotonic() - start > timeout_s:
                pytest.fail(f"{left} of {len(socks)} stalled handshakes still open after {timeout_s:g} s")
            for key, _ in sel.select(0.5):
                try:
                    data = key.fileobj.recv(1)
                except OSError:
                    data = b""
                if not data:
                    sel.unregister(key.fileobj)
                    left -= 1
    return time.monotonic() - start


def soft_limit(pid: int) -> int:
    line = next(x for x in pathlib.Path(f"/proc/{pid}/limits").read_text().splitlines() if x.startswith("Max open"))
    return int(line.split()[3])


@pytest.mark.parametrize("hard", [4096, 1024])
def test_stalled_handshakes_are_closed_and_the_coordinator_keeps_answering(tmp_path, hard):
    """hard 4096: serve raises its soft limit, so 1,100 stalled handshakes leave room for everyone. hard 1024: it
    cannot; it accepts fewer connections than that, so the calls on existing channels are still answered and a new
    client is told it is overloaded, never that its CA is wrong. Either way every stalled handshake is closed
    within the handshake timeout, and then a new client gets answers."""
    proc, address, state, fleet = serve(tmp_path, hard)
    socks = []
    try:
        assert soft_limit(proc.pid) == hard
        assert fleet.ListDevices(pb.ListDevicesRequest(), timeout=10).devices == []
        socks = stall(address, STALLED)
        for _ in range(20):  # an existing channel (an agent's heartbeats, an operator's session) is unaffected
            assert fleet.ListDevices(pb.ListDevicesRequest(), timeout=10).devices == []
        done = run_cli("fleetfit", "devices", "--coordinator", address, "--state-dir", str(state), timeout=60)
        if hard >= 4096:
            assert done.returncode == 0, done.stderr
        else:
            assert done.returncode == 0 or "overloaded or at its connection limit" in done.stderr, done.stderr
            assert "CA" not in done.stderr and "Traceback" not in done.stderr, done.stderr
        took = closed_within(socks, HANDSHAKE_TIMEOUT_MS / 1000 + 20)
        assert took < HANDSHAKE_TIMEOUT_MS / 1000 + 20
        done = run_cli("fleetfit", "devices", "--coordinator", address, "--state-dir", str(state), timeout=60)
        assert done.returncode == 0, done.stderr
        assert proc.poll() is None
        with pytest.raises(grpc.RpcError) as caught:  # the coordinator still says what is wrong with a call
            fleet.GetCampaign(pb.GetCampaignRequest(campaign_id="none"), timeout=10)
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    finally:
        for s in socks:
            s.close()
        proc.terminate()
        proc.wait(timeout=30)
