"""The coordinator's trouble is transient (issue 26): every exception a servicer does not handle leaves as a
status that says what it is (coordinator/service/errors.py), never UNKNOWN; a dead database connection is replaced on
both backends; a database locked past the busy timeout answers UNAVAILABLE and recovers when released."""

import errno
import logging
import sqlite3

import grpc
import pytest

from fleetfit.coordinator.service import db, errors
from fleetfit.coordinator.service.db import DatabaseError
from fleetfit.coordinator.harness import BackgroundCoordinator
from fleetfit.v1 import fleetfit_pb2 as pb
from tests.conftest import POSTGRES_URL, Agents, _postgres_problem, assert_one_line_error, fleet_stub, run_cli

U, A, I = grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.ABORTED, grpc.StatusCode.INTERNAL


def _sqlite_busy(tmp_path):
    path = tmp_path / "busy.sqlite3"
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("CREATE TABLE t (x)")
    holder.execute("BEGIN IMMEDIATE")
    other = sqlite3.connect(path, isolation_level=None, timeout=0)
    try:
        other.execute("BEGIN IMMEDIATE")
    except sqlite3.Error as exc:
        return exc
    finally:
        holder.execute("ROLLBACK")


def _sqlite_full(tmp_path):
    conn = sqlite3.connect(tmp_path / "full.sqlite3")
    conn.execute("CREATE TABLE t (x BLOB)")
    conn.execute("PRAGMA max_page_count=3")
    try:
        conn.execute("INSERT INTO t VALUES (?)", (b"x" * 100_000,))
    except sqlite3.Error as exc:
        return exc


def _sqlite_readonly(tmp_path):
    path = tmp_path / "ro.sqlite3"
    sqlite3.connect(path).execute("CREATE TABLE t (x)")
    try:
        sqlite3.connect(f"file:{path}?mode=ro", uri=True).execute("INSERT INTO t VALUES (1)")
    except sqlite3.Error as exc:
        return exc


def _sqlite_statement(sql):
    def provoke(tmp_path):
        conn = sqlite3.connect(":memory:")
        conn.execute("CREATE TABLE t (k TEXT PRIMARY KEY, v TEXT NOT NULL)")
        conn.execute("INSERT INTO t VALUES ('a', 'b')")
        try:
            conn.execute(sql)
        except sqlite3.Error as exc:
            return exc
    return provoke


def _os(code):
    return lambda tmp_path: OSError(code, __import__("os").strerror(code))


# Real exceptions of each class (the OS's errno values made here: they are the hardware boundary) -> status.
CASES = {
    "sqlite locked past the busy timeout": (_sqlite_busy, U),
    "sqlite database or disk is full": (_sqlite_full, U),
    "sqlite read-only file": (_sqlite_readonly, U),
    "sqlite unique key race": (_sqlite_statement("INSERT INTO t VALUES ('a', 'c')"), A),
    "sqlite NOT NULL (a bug)": (_sqlite_statement("INSERT INTO t VALUES ('z', NULL)"), I),
    "sqlite no such table (a bug)": (_sqlite_statement("SELECT * FROM nothing"), I),
    "no space left on device": (_os(errno.ENOSPC), U),
    "too many open files": (_os(errno.EMFILE), U),
    "file table overflow": (_os(errno.ENFILE), U),
    "I/O error": (_os(errno.EIO), U),
    "file not found (a bug)": (_os(errno.ENOENT), I),
    "database cannot be reached": (lambda _: DatabaseError("cannot connect to postgresql://h/db: refused"), U),
    "out of memory": (lambda _: MemoryError(), U),
    "a bug": (lambda _: ZeroDivisionError("float division by zero"), I),
    "another bug": (lambda _: KeyError("x"), I),
}


@pytest.mark.parametrize("case", CASES)
def test_each_class_of_failure_has_a_status_that_says_what_it_is(case, tmp_path):
    provoke, expected = CASES[case]
    exc = provoke(tmp_path)
    assert exc is not None, "the failure was not provoked"
    code, message = errors.status_for(exc)
    assert (code, "\n" in message, len(message) < 300) == (expected, False, True), message


def _postgres_failures():
    import psycopg

    failures = {}
    try:
        psycopg.connect("postgresql://postgres@127.0.0.1:1/test", connect_timeout=3)
    except psycopg.Error as exc:
        failures["connection refused"] = exc
    with psycopg.connect(POSTGRES_URL, autocommit=True) as victim, psycopg.connect(POSTGRES_URL, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (victim.info.backend_pid,))
        try:
            victim.execute("SELECT 1")
        except psycopg.Error as exc:
            failures["backend terminated"] = exc
        try:
            victim.execute("SELECT 1")
        except psycopg.Error as exc:
            failures["connection closed"] = exc
        admin.execute("CREATE TEMP TABLE t (k TEXT PRIMARY KEY)")
        admin.execute("INSERT INTO t VALUES ('a')")
        try:
            admin.execute("INSERT INTO t VALUES ('a')")
        except psycopg.Error as exc:
            failures["unique violation"] = exc
        try:
            admin.execute("SELECT * FROM nothing_here")
        except psycopg.Error as exc:
            failures["undefined table (a bug)"] = exc
    return failures


def test_postgresql_failures_have_statuses_that_say_what_they_are():
    if problem := _postgres_problem():
        pytest.skip(problem)
    found = {name: errors.status_for(exc)[0] for name, exc in _postgres_failures().items()}
    assert found == {"connection refused": U, "backend terminated": U, "connection closed": U,
                     "unique violation": A, "undefined table (a bug)": I}


@pytest.fixture()
def fleet(db_url, tmp_path):
    server = BackgroundCoordinator(db_url, state_dir=tmp_path / "state")
    server.start()
    agents = Agents(server)
    yield server, agents, fleet_stub(server)
    agents.close()
    server.stop()


JOB = pb.ProfileRequest(model=pb.ModelRef(name="smollm2-135m"), backend="llama.cpp", quant="Q4_0", n_prompt=16,
                        n_gen=4, repetitions=1)


def _calls(agents, fleet, device_id="dev-1"):
    """One call of each kind that touches the database: agent writes, agent reads, operator reads and writes."""
    agents.Register(pb.RegisterRequest(inventory=pb.DeviceInventory(device_id=device_id, hostname=device_id,
                                                                    ram_total_bytes=8 << 30)), timeout=10)
    agents.Heartbeat(pb.HeartbeatRequest(device_id=device_id), timeout=10)
    agents.PollJob(pb.PollJobRequest(device_id=device_id, wait_s=0), timeout=10)
    fleet.ListDevices(pb.ListDevicesRequest(), timeout=10)
    fleet.GetLimitTable(pb.GetLimitTableRequest(), timeout=10)
    fleet.SubmitProfile(pb.SubmitProfileRequest(request=JOB, device_ids=[device_id]), timeout=10)


def test_calls_recover_at_once_after_the_database_cuts_every_connection(fleet, db_url):
    if not db.is_postgres_url(db_url):
        pytest.skip("connections cut by the server are a PostgreSQL matter")
    import psycopg

    server, agents, stub = fleet
    for round_ in range(3):  # an idle reaper, a failover, a restart: the same cut, again and again
        _calls(agents, stub)
        pids = [c.info.backend_pid for c in server.store.db.connections if not c.closed]
        assert pids
        with psycopg.connect(POSTGRES_URL, autocommit=True) as admin:
            cut = admin.execute("SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                "WHERE pid = ANY(%s)) AS t", (pids,)).fetchone()[0]
        assert cut > 0  # (a connection of an idle thread may have been cut in an earlier round, unnoticed)
        for _ in range(3):  # every call succeeds, whichever store thread (with a cut connection) takes it
            _calls(agents, stub)
        alive = [c.info.backend_pid for c in server.store.db.connections if not c.closed]
        assert set(alive) - set(pids), f"round {round_}: no cut connection was replaced"


def test_a_lock_held_past_the_busy_timeout_is_unavailable_then_calls_succeed(fleet, db_url, monkeypatch, caplog):
    if db.is_postgres_url(db_url):
        pytest.skip("SQLite's write lock")
    monkeypatch.setattr(db, "BUSY_TIMEOUT_MS", 200)
    server, agents, stub = fleet
    _calls(agents, stub)
    server.store.db.close()  # the store's threads open new connections, with the short busy timeout
    holder = sqlite3.connect(db_url, isolation_level=None)  # a backup, a VACUUM, an import into the live file
    holder.execute("BEGIN IMMEDIATE")
    caplog.set_level(logging.WARNING, "fleetfit.coordinator")
    writes = [lambda: agents.Heartbeat(pb.HeartbeatRequest(device_id="dev-1"), timeout=10),
              lambda: agents.PollJob(pb.PollJobRequest(device_id="dev-1", wait_s=0), timeout=10),
              lambda: agents.ReportResult(pb.ReportResultRequest(result=pb.ProfileResult(
                  result_id="r-1", device_id="dev-1", model_name="m", quant="Q4_0")), timeout=10),
              lambda: stub.SubmitProfile(pb.SubmitProfileRequest(request=JOB), timeout=10)]
    try:
        for _ in range(3):
            for call in writes:
                with pytest.raises(grpc.RpcError) as caught:
                    call()
                assert caught.value.code() == U, caught.value.details()
                assert "database unavailable" in caught.value.details()
        assert len([r for r in caplog.records if "UNAVAILABLE" in r.getMessage()]) <= 4  # one per kind, not 12
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    _calls(agents, stub)
    for call in writes:
        call()


def test_an_unexpected_exception_is_internal_and_logged_once_with_its_traceback(fleet, db_url, caplog):
    if db.is_postgres_url(db_url):
        pytest.skip("the same wrapper on both backends")
    server, agents, stub = fleet
    _calls(agents, stub)
    caplog.set_level(logging.ERROR, "fleetfit.coordinator")
    for rpc, call in [("touch_device", lambda: agents.Heartbeat(pb.HeartbeatRequest(device_id="dev-1"), timeout=10)),
                      ("devices", lambda: stub.ListDevices(pb.ListDevicesRequest(), timeout=10))]:
        original = getattr(server.store, rpc)
        setattr(server.store, rpc, lambda *a, **k: 1 / 0)  # a bug, provoked
        try:
            with pytest.raises(grpc.RpcError) as caught:
                call()
        finally:
            setattr(server.store, rpc, original)
        assert caught.value.code() == I and "ZeroDivisionError" in caught.value.details()
        logged = [r for r in caplog.records if r.exc_info and r.exc_info[0] is ZeroDivisionError]
        assert len(logged) == 1
        caplog.clear()
        call()


def test_an_abort_passes_through_the_mapping_untouched(fleet, db_url):
    if db.is_postgres_url(db_url):
        pytest.skip("the same wrapper on both backends")
    _, agents, stub = fleet
    with pytest.raises(grpc.RpcError) as caught:
        agents.Heartbeat(pb.HeartbeatRequest(device_id="dev-never-registered"), timeout=10)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as caught:
        stub.GetCampaign(pb.GetCampaignRequest(campaign_id="nope"), timeout=10)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize("url", ["postgresql://x:secret@:notaport/db", "postgresql://[::1",
                                 "postgresql://u:secret@[::1/db", "postgres://u:secret@h:99999/db"])
def test_a_malformed_postgresql_url_is_one_line_without_the_password(url, tmp_path):
    for command in (["fleetfit", "serve", "--db", url], ["fleetfit", "token", "create", "--db", url]):
        proc = run_cli(*command, env={"FLEETFIT_STATE_DIR": str(tmp_path)}, timeout=60)
        assert_one_line_error(proc, "")
        assert "secret" not in proc.stderr
