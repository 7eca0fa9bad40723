"""The agent's durable outbox (agent/outbox.py): what it keeps across restarts, how it stays bounded, and
how `flush` treats each answer of a real coordinator over real gRPC — delivered, duplicate, refused for
good, unknown device, unreachable."""

import random
import socket
import threading
import time

import grpc
import pytest

from fleetfit.agent import identity
from fleetfit.agent.outbox import Outbox, backoff_s, flush, path_beside
from fleetfit.v1 import fleetfit_pb2 as pb
from fleetfit.v1 import fleetfit_pb2_grpc as pb_grpc

DEVICE = "dev-1"


def report(result_id: str, n_prompt: int = 0) -> pb.ReportResultRequest:
    return pb.ReportResultRequest(result=pb.ProfileResult(
        result_id=result_id, device_id=DEVICE, model_name="smollm2-135m", quant="Q4_0",
        request=pb.ProfileRequest(backend="llama.cpp", quant="Q4_0", n_prompt=n_prompt)))


def pending_ids(outbox: Outbox) -> list[str]:
    return [r.result.result_id for r in outbox.pending()]


@pytest.fixture()
def outbox(tmp_path):
    box = Outbox(tmp_path / "outbox.sqlite3")
    yield box
    box.close()


@pytest.fixture()
def stub(coordinator):
    """An enrolled agent's AgentService stub (device not yet registered)."""
    agent = identity.join(coordinator.address, coordinator.join_token(), DEVICE, insecure=True)
    channel = agent.connect(5)
    yield pb_grpc.AgentServiceStub(channel)
    channel.close()


@pytest.fixture()
def registered(stub):
    stub.Register(pb.RegisterRequest(inventory=pb.DeviceInventory(device_id=DEVICE)), timeout=5)
    return stub


@pytest.fixture()
def unreachable_stub():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    yield pb_grpc.AgentServiceStub(channel)
    channel.close()


def test_entries_survive_reopening_the_file_in_order(tmp_path):
    path = tmp_path / "outbox.sqlite3"
    first = Outbox(path)
    for rid in ("r-3", "r-1", "r-2"):
        first.put(report(rid))
    first.close()

    reopened = Outbox(path)
    try:
        assert pending_ids(reopened) == ["r-3", "r-1", "r-2"]
        assert len(reopened) == 3
        assert reopened.pending()[0] == report("r-3")
    finally:
        reopened.close()


def test_putting_the_same_result_id_twice_keeps_one_entry(outbox):
    outbox.put(report("r-1"))
    outbox.put(report("r-1"))
    assert pending_ids(outbox) == ["r-1"]


def test_bounded_outbox_keeps_the_newest_and_counts_the_dropped(tmp_path):
    box = Outbox(tmp_path / "outbox.sqlite3", max_entries=3)
    try:
        for i in range(5):
            box.put(report(f"r-{i}"))
        assert pending_ids(box) == ["r-2", "r-3", "r-4"]
        assert box.count("dropped") == 2
    finally:
        box.close()


def test_flush_delivers_and_the_coordinator_stores_it_once(coordinator, registered, outbox):
    outbox.put(report("r-1"))
    assert flush(outbox, registered.ReportResult, threading.Event(), max_attempts=3) is True
    assert len(outbox) == 0
    assert outbox.count("delivered") == 1
    assert outbox.count("duplicates") == 0
    assert coordinator.store.result_count() == 1
    assert coordinator.store.results()[0] == report("r-1").result


def test_resending_a_stored_result_is_an_acknowledged_duplicate(coordinator, registered, outbox):
    outbox.put(report("r-1"))
    flush(outbox, registered.ReportResult, threading.Event(), max_attempts=3)
    outbox.put(report("r-1"))

    assert flush(outbox, registered.ReportResult, threading.Event(), max_attempts=3) is True
    assert len(outbox) == 0
    assert outbox.count("duplicates") == 1
    assert outbox.count("delivered") == 1
    assert coordinator.store.result_count() == 1


def test_same_result_id_with_another_payload_is_rejected_for_good(coordinator, registered, outbox):
    outbox.put(report("r-1", n_prompt=64))
    flush(outbox, registered.ReportResult, threading.Event(), max_attempts=3)
    outbox.put(report("r-1", n_prompt=512))

    assert flush(outbox, registered.ReportResult, threading.Event(), max_attempts=3) is True
    assert len(outbox) == 0
    assert outbox.count("rejected") == 1
    assert outbox.count("duplicates") == 0
    assert coordinator.store.result_count() == 1
    assert coordinator.store.results()[0].request.n_prompt == 64


def test_unregistered_device_stops_the_flush_and_keeps_everything(coordinator, stub, outbox):
    outbox.put(report("r-1"))
    outbox.put(report("r-2"))

    assert flush(outbox, stub.ReportResult, threading.Event(), max_attempts=3) is False
    assert pending_ids(outbox) == ["r-1", "r-2"]
    assert outbox.count("rejected") == 0
    assert coordinator.store.result_count() == 0


def test_unreachable_coordinator_is_transient_and_the_entry_is_kept(unreachable_stub, outbox):
    outbox.put(report("r-1"))
    assert flush(outbox, unreachable_stub.ReportResult, threading.Event(), max_attempts=2) is False
    assert pending_ids(outbox) == ["r-1"]
    assert outbox.count("rejected") == 0


def test_unreachable_coordinator_with_stop_set_returns_promptly(unreachable_stub, outbox):
    outbox.put(report("r-1"))
    stop = threading.Event()
    stop.set()
    started = time.monotonic()
    assert flush(outbox, unreachable_stub.ReportResult, stop) is False
    assert time.monotonic() - started < 0.5
    assert pending_ids(outbox) == ["r-1"]


def test_backoff_stays_within_the_jitter_band_and_under_the_cap():
    random.seed(7)
    for attempt in range(0, 64):
        for base, cap in ((0.5, 30.0), (0.1, 2.0), (1.0, 1.0)):
            step = min(cap, base * 2 ** attempt)
            delay = backoff_s(attempt, base, cap)
            assert 0.5 * step <= delay <= step <= cap


def test_backoff_jitters_rather_than_returning_one_value():
    assert len({backoff_s(3) for _ in range(20)}) > 1


def test_backoff_after_a_very_long_outage_is_still_capped():
    assert backoff_s(1100) <= 30.0


def test_path_beside_puts_the_outbox_next_to_the_identity_file(tmp_path):
    ident = tmp_path / "conf" / "agent-identity.json"
    identity.save(identity.Identity("127.0.0.1:1", DEVICE, "secret"), ident)
    path = path_beside(ident)
    assert path.parent == ident.parent
    assert path != ident
    assert path.name == "agent-identity-outbox.sqlite3"
    Outbox(path).close()
    assert path.exists()
    assert identity.load(ident).device_id == DEVICE
