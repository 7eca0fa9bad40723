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


class Answers(pb_grpc.AgentServiceServicer):
    """A real gRPC server whose ReportResult answers `codes[result_id]` (or succeeds): each status as the agent
    sees it from a coordinator."""

    def __init__(self):
        self.codes: dict[str, grpc.StatusCode] = {}

    def ReportResult(self, request, context):
        code = self.codes.get(request.result.result_id)
        if code is not None:
            context.abort(code, f"answered {code.name} for {request.result.result_id}")
        return pb.ReportResultResponse()


@pytest.fixture()
def answering():
    import concurrent.futures

    servicer = Answers()
    server = grpc.server(concurrent.futures.ThreadPoolExecutor(4))
    pb_grpc.add_AgentServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    yield servicer, pb_grpc.AgentServiceStub(channel)
    channel.close()
    server.stop(0)


NEVER = {"INVALID_ARGUMENT", "ALREADY_EXISTS", "PERMISSION_DENIED", "FAILED_PRECONDITION"}


@pytest.mark.parametrize("code", [c for c in grpc.StatusCode if c != grpc.StatusCode.OK], ids=lambda c: c.name)
def test_a_result_is_kept_unless_the_coordinator_says_never_and_then_it_is_a_dead_letter(code, answering, tmp_path):
    servicer, stub = answering
    path = tmp_path / "outbox.sqlite3"
    box = Outbox(path)
    try:
        box.put(report("r-1"))
        servicer.codes["r-1"] = code
        before = time.time()
        flush(box, stub.ReportResult, threading.Event(), max_attempts=1)
        dead = box.dead_letters()
        if code.name in NEVER:
            assert (pending_ids(box), box.count("rejected")) == ([], 1)
            ((kept, status, reason, at),) = dead
            assert kept == report("r-1") and status == code.name and f"answered {code.name}" in reason
            assert before <= at <= time.time()
        else:
            assert (pending_ids(box), box.count("rejected"), dead) == (["r-1"], 0, [])
            servicer.codes.clear()  # the trouble passes: the same result goes through
            assert flush(box, stub.ReportResult, threading.Event(), max_attempts=1) is True
            assert (len(box), box.count("delivered")) == (0, 1)
    finally:
        box.close()
    reopened = Outbox(path)  # dead letters are kept across restarts
    try:
        assert len(reopened.dead_letters()) == (1 if code.name in NEVER else 0)
    finally:
        reopened.close()


@pytest.mark.parametrize("code", [grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.ABORTED,
                                  grpc.StatusCode.DATA_LOSS], ids=lambda c: c.name)
def test_a_result_the_coordinator_chokes_on_does_not_hold_back_the_others(code, answering, outbox):
    servicer, stub = answering
    for rid in ("r-bad", "r-1", "r-2"):
        outbox.put(report(rid))
    servicer.codes["r-bad"] = code
    assert flush(outbox, stub.ReportResult, threading.Event(), max_attempts=2) is False
    assert pending_ids(outbox) == ["r-bad"] and outbox.count("delivered") == 2 and not outbox.dead_letters()


@pytest.mark.parametrize("code", [grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.NOT_FOUND,
                                  grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.RESOURCE_EXHAUSTED],
                         ids=lambda c: c.name)
def test_a_status_about_the_coordinator_or_device_stops_the_flush_with_everything_kept(code, answering, outbox):
    servicer, stub = answering
    for rid in ("r-1", "r-2", "r-3"):
        outbox.put(report(rid))
        servicer.codes[rid] = code
    assert flush(outbox, stub.ReportResult, threading.Event(), max_attempts=2) is False
    assert pending_ids(outbox) == ["r-1", "r-2", "r-3"] and not outbox.dead_letters()


@pytest.mark.parametrize("existing_mode", [None, 0o644, 0o666])
def test_the_outbox_and_its_dead_letters_are_readable_by_this_user_only(existing_mode, tmp_path):
    import os
    import stat

    path = tmp_path / "outbox.sqlite3"
    if existing_mode is not None:  # an outbox made by an older agent
        Outbox(path).close()
        os.chmod(path, existing_mode)
    box = Outbox(path)
    try:
        box.put(report("r-1"))
        box.dead_letter(report("r-1"), "INVALID_ARGUMENT", "decode out of range")
        made = [p for p in tmp_path.iterdir() if p.name.startswith("outbox.sqlite3")]
        assert path in made
        for p in made:
            assert stat.S_IMODE(p.stat().st_mode) == 0o600, (p.name, oct(p.stat().st_mode))
    finally:
        box.close()


def test_the_cli_shows_dead_letters_with_status_reason_and_time(tmp_path):
    import json

    from tests.conftest import run_cli

    path = tmp_path / "outbox.sqlite3"
    box = Outbox(path)
    box.put(report("r-1"))
    box.put(report("r-2"))
    box.dead_letter(report("r-1"), "FAILED_PRECONDITION", "job j-1 is not leased to dev-1\u2028under fencing token 3")
    box.close()
    shown = run_cli("fleetfit-agent", "outbox", "--outbox", str(path))
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert "1 waiting" in lines[0] and "rejected 1" in lines[0]
    assert len(lines) == 2 and "r-1" in lines[1] and "FAILED_PRECONDITION" in lines[1] and "fencing token 3" in lines[1]
    as_json = json.loads(run_cli("fleetfit-agent", "outbox", "--outbox", str(path), "--json").stdout)
    assert as_json["waiting"] == 1 and [d["result_id"] for d in as_json["dead_letters"]] == ["r-1"]
    assert as_json["dead_letters"][0]["at_unix_s"] > 0


def test_quality_results_wait_in_the_same_outbox_beside_an_old_file(tmp_path):
    import sqlite3

    path = tmp_path / "old.sqlite3"
    with sqlite3.connect(path) as db:  # an outbox written before it kept quality results (no kind column)
        db.execute("CREATE TABLE outbox (seq INTEGER PRIMARY KEY AUTOINCREMENT, result_id TEXT UNIQUE NOT NULL, "
                   "request BLOB NOT NULL)")
        db.execute("INSERT INTO outbox (result_id, request) VALUES (?, ?)", ("r-old", report("r-old").SerializeToString()))
    box = Outbox(path)
    try:
        quality = pb.ReportQualityRequest(result=pb.QualityResult(result_id="q-1", device_id=DEVICE, quant="Q4_0"))
        box.put(quality)
        box.put(report("r-new"))
        kept = box.pending()
        assert [type(r) for r in kept] == [pb.ReportResultRequest, pb.ReportQualityRequest, pb.ReportResultRequest]
        assert pending_ids(box) == ["r-old", "q-1", "r-new"] and kept[1] == quality
        box.dead_letter(quality, "INVALID_ARGUMENT", "refused")
        assert [type(r) for r, _, _, _ in box.dead_letters()] == [pb.ReportQualityRequest]
    finally:
        box.close()
