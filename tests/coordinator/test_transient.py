"""The coordinator's trouble is transient (issue 26): every exception a servicer does not handle leaves as a
status that says what it is (coordinator/service/errors.py), never UNKNOWN; a dead database connection is replaced on
both backends; a database locked past the busy timeout answers UNAVAILABLE and recovers when released."""

import errno
import logging
import sqlite3
import time
import urllib.parse
import uuid

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
    "no buffer space": (_os(errno.ENOBUFS), U),
    "connection reset": (lambda _: ConnectionResetError(errno.ECONNRESET, "Connection reset by peer"), U),
    "connection timed out": (lambda _: TimeoutError(errno.ETIMEDOUT, "Connection timed out"), U),
    "broken pipe": (lambda _: BrokenPipeError(errno.EPIPE, "Broken pipe"), U),
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
    # a session on a standby (a failover to it, a primary made read-only): an InternalError, 25006
    with psycopg.connect(f"{POSTGRES_URL}?options=-cdefault_transaction_read_only%3Don", autocommit=True) as standby:
        try:
            standby.execute("CREATE TABLE never_made (x INT)")
        except psycopg.Error as exc:
            failures["read-only server"] = exc
    # an idle reaper ending a session inside its transaction: an InternalError too, 25P03
    with psycopg.connect(POSTGRES_URL) as reaped:
        reaped.execute("SET idle_in_transaction_session_timeout = '50ms'")
        reaped.commit()
        reaped.execute("SELECT 1")
        time.sleep(0.5)
        try:
            reaped.execute("SELECT 1")
        except psycopg.Error as exc:
            failures["idle in transaction, reaped"] = exc
    return failures


def test_postgresql_failures_have_statuses_that_say_what_they_are():
    if problem := _postgres_problem():
        pytest.skip(problem)
    found = {name: errors.status_for(exc)[0] for name, exc in _postgres_failures().items()}
    assert found == {"connection refused": U, "backend terminated": U, "connection closed": U,
                     "unique violation": A, "undefined table (a bug)": I, "read-only server": U,
                     "idle in transaction, reaped": U}


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


def test_a_value_error_while_answering_is_internal_not_a_bad_question(fleet, db_url, caplog):
    """Only a question that is wrong answers INVALID_ARGUMENT: a ValueError raised while answering a good one (a
    statistics or math domain error on stored figures) is the coordinator's, INTERNAL and logged with its traceback
    (it was answered as the caller's fault, unlogged)."""
    if db.is_postgres_url(db_url):
        pytest.skip("the same servicer on both backends")
    server, agents, stub = fleet
    _calls(agents, stub)
    caplog.set_level(logging.ERROR, "fleetfit.coordinator")
    question = pb.FitRequest(model_name="smollm2-135m", quant="Q4_0")
    stub.Fit(question, timeout=30)
    original = server.store.devices
    server.store.devices = lambda *a, **k: __import__("math").log(0.0)  # a bug, provoked: math domain error
    try:
        with pytest.raises(grpc.RpcError) as caught:
            stub.Fit(question, timeout=30)
    finally:
        server.store.devices = original
    assert caught.value.code() == I and "ValueError" in caught.value.details()
    assert [r for r in caplog.records if r.exc_info and r.exc_info[0] is ValueError]
    with pytest.raises(grpc.RpcError) as caught:  # a wrong question is still the caller's
        stub.Fit(pb.FitRequest(model_name="smollm2-135m", quant="Q4_0", max_watts=float("nan")), timeout=30)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "max_watts" in caught.value.details()


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


def test_a_coordinator_whose_database_turns_read_only_answers_unavailable_then_writes_again(tmp_path):
    """A failover to a standby (or a primary made read-only), then back: every write answers UNAVAILABLE meanwhile
    (an InternalError, 25006, answered INTERNAL before and kept on the same session for ever), and once the database
    takes writes again every call succeeds at once — the read-only sessions are replaced, not kept. The coordinator
    runs as a role of its own whose sessions are made read-only, so no other test's sessions are touched."""
    if problem := _postgres_problem():
        pytest.skip(problem)
    import psycopg

    role = f"fleetfit_ro_{uuid.uuid4().hex[:10]}"
    parts = urllib.parse.urlsplit(POSTGRES_URL)
    url = urllib.parse.urlunsplit(parts._replace(netloc=f"{role}@{parts.hostname}:{parts.port or 5432}",
                                                 query=f"options=-csearch_path%3D{role}"))
    with psycopg.connect(POSTGRES_URL, autocommit=True) as admin:
        admin.execute(f"CREATE ROLE {role} LOGIN")
        admin.execute(f"CREATE SCHEMA {role} AUTHORIZATION {role}")
        server = BackgroundCoordinator(url, state_dir=tmp_path / "state")
        server.start()
        agents = Agents(server)
        try:
            stub = fleet_stub(server)
            _calls(agents, stub)
            admin.execute(f"ALTER ROLE {role} SET default_transaction_read_only = on")
            admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s", (role,))
            writes = [lambda: agents.Heartbeat(pb.HeartbeatRequest(device_id="dev-1"), timeout=10),
                      lambda: agents.PollJob(pb.PollJobRequest(device_id="dev-1", wait_s=0), timeout=10),
                      lambda: stub.SubmitProfile(pb.SubmitProfileRequest(request=JOB), timeout=10)]
            for _ in range(3):
                for call in writes:
                    with pytest.raises(grpc.RpcError) as caught:
                        call()
                    assert caught.value.code() == U, caught.value.details()
                stub.ListDevices(pb.ListDevicesRequest(), timeout=10)  # reads go on meanwhile
            admin.execute(f"ALTER ROLE {role} RESET default_transaction_read_only")
            for _ in range(3):  # every call, on whichever store thread: none is left on a read-only session
                _calls(agents, stub)
        finally:
            agents.close()
            server.stop()
            admin.execute(f"DROP SCHEMA {role} CASCADE")
            admin.execute(f"DROP ROLE {role}")


def _every_rpc(server, agents, stub):
    """One call of every RPC of the contract, each as a caller makes it (a new result, a fresh join token, ...),
    so that it can be made again and again; name -> call. The set is checked against the contract."""
    from fleetfit.v1 import fleetfit_pb2_grpc as pb_grpc
    from fleetfit.v1.transport import connect
    from tests.coordinator.test_ingest import good_result
    from tests.coordinator.test_quality_results import quality

    public = pb_grpc.AgentServiceStub(connect(server.address, 5))
    agents.Register(pb.RegisterRequest(inventory=pb.DeviceInventory(device_id="dev-r", hostname="r")), timeout=10)
    spec = pb.CampaignSpec(models=["smollm2-135m"], quants=["Q4_0"], backends=["llama.cpp"],
                           template=pb.ProfileRequest(n_prompt=16, n_gen=4, repetitions=1))
    campaign = stub.CreateCampaign(pb.CreateCampaignRequest(spec=spec), timeout=10)
    joined = iter(range(10**6))
    tokens = iter([server.store.create_join_token({}, 600) for _ in range(10)])  # made before any trouble
    return {
        "Join": lambda: public.Join(pb.JoinRequest(token=next(tokens),
                                                   device_id=f"dev-j{next(joined)}"), timeout=10),
        "Register": lambda: agents.Register(pb.RegisterRequest(inventory=pb.DeviceInventory(
            device_id="dev-1", hostname="dev-1", ram_total_bytes=8 << 30)), timeout=10),
        "PollJob": lambda: agents.PollJob(pb.PollJobRequest(device_id="dev-1", wait_s=0), timeout=10),
        "ReportResult": lambda: agents.ReportResult(pb.ReportResultRequest(result=good_result("dev-1")), timeout=10),
        "Heartbeat": lambda: agents.Heartbeat(pb.HeartbeatRequest(device_id="dev-1"), timeout=10),
        "ReleaseJob": lambda: agents.ReleaseJob(pb.ReleaseJobRequest(device_id="dev-1", job_id="no-such-job"),
                                                timeout=10),
        "ReportQuality": lambda: agents.ReportQuality(quality("dev-1", "Q4_0", 0.05), timeout=10),
        "FetchModel": lambda: list(agents.FetchModel(pb.FetchModelRequest(device_id="dev-1", sha256="0" * 64),
                                                     timeout=10)),
        "ListDevices": lambda: stub.ListDevices(pb.ListDevicesRequest(), timeout=10),
        "SubmitProfile": lambda: stub.SubmitProfile(pb.SubmitProfileRequest(request=JOB, device_ids=["dev-1"]),
                                                    timeout=10),
        "GetJobs": lambda: stub.GetJobs(pb.GetJobsRequest(job_ids=list(campaign.job_ids)), timeout=10),
        "GetLimitTable": lambda: stub.GetLimitTable(pb.GetLimitTableRequest(), timeout=10),
        "Fit": lambda: stub.Fit(pb.FitRequest(model_name="smollm2-135m", quant="Q4_0"), timeout=30),
        "ListTables": lambda: stub.ListTables(pb.ListTablesRequest(), timeout=10),
        "GetTable": lambda: stub.GetTable(pb.GetTableRequest(name="measured"), timeout=30),
        "CreateCampaign": lambda: stub.CreateCampaign(pb.CreateCampaignRequest(spec=spec), timeout=10),
        "ListCampaigns": lambda: stub.ListCampaigns(pb.ListCampaignsRequest(), timeout=10),
        "GetCampaign": lambda: stub.GetCampaign(pb.GetCampaignRequest(campaign_id=campaign.campaign_id), timeout=10),
        "CancelCampaign": lambda: stub.CancelCampaign(pb.CancelCampaignRequest(campaign_id=campaign.campaign_id),
                                                      timeout=10),
        "RevokeDevice": lambda: stub.RevokeDevice(pb.RevokeDeviceRequest(device_id="dev-r"), timeout=10),
        "PutModel": lambda: stub.PutModel(pb.PutModelRequest(name="mine", sha256="0" * 64, size_bytes=10,
                                                             data=b"x" * 10), timeout=10),
        "ListModels": lambda: stub.ListModels(pb.ListModelsRequest(), timeout=10),
        "RemoveModel": lambda: stub.RemoveModel(pb.RemoveModelRequest(name="no-such-model"), timeout=10),
        "ImportModel": lambda: stub.ImportModel(pb.ImportModelRequest(ref="not-a-hub-file"), timeout=10),
    }


def _codes(calls) -> dict[str, str]:
    found = {}
    for name, call in calls.items():
        try:
            call()
            found[name] = "OK"
        except grpc.RpcError as exc:
            found[name] = exc.code().name
    return found


def test_every_rpc_meets_database_trouble_with_unavailable_or_its_own_answer(fleet, db_url, monkeypatch):
    """Every RPC of the contract (enrollment, registration, polls, reports, heartbeats, model fetches, campaigns,
    tables, the model store), not only ingest: with the database locked past the busy timeout (a backup, a VACUUM;
    on PostgreSQL every table, where calls waited until the caller's deadline), the call answers UNAVAILABLE or what
    it answers without the lock, and exactly that once the lock is released; on PostgreSQL with every coordinator
    session cut before each call (a restart, a failover, an idle reaper), the call answers what it answers without
    the cut. Never INTERNAL or UNKNOWN."""
    monkeypatch.setattr(db, "BUSY_TIMEOUT_MS", 200)
    server, agents, stub = fleet
    _calls(agents, stub)
    calls = _every_rpc(server, agents, stub)
    contract = {m.name for s in pb.DESCRIPTOR.services_by_name.values() for m in s.methods}
    assert set(calls) == contract
    baseline = _codes(calls)
    assert "INTERNAL" not in baseline.values() and "UNKNOWN" not in baseline.values(), baseline
    if db.is_postgres_url(db_url):
        import psycopg

        def cut_then(call):
            def made():
                pids = [c.info.backend_pid for c in server.store.db.connections if not c.closed]
                with psycopg.connect(POSTGRES_URL, autocommit=True) as admin:
                    admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE pid = ANY(%s)",
                                  (pids,))
                call()
            return made

        for _ in range(2):
            assert _codes({name: cut_then(call) for name, call in calls.items()}) == baseline
    server.store.db.close()  # the store's threads open new connections, with the short busy (lock) timeout
    if db.is_postgres_url(db_url):  # every table, as a VACUUM FULL or an operator's LOCK TABLE holds it
        from tests.test_chaos import TABLES

        holder = psycopg.connect(db_url)
        holder.execute(f"LOCK TABLE {', '.join(TABLES)} IN ACCESS EXCLUSIVE MODE")
    else:
        holder = sqlite3.connect(db_url, isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")
    try:
        locked = _codes(calls)
    finally:
        holder.rollback() if db.is_postgres_url(db_url) else holder.execute("ROLLBACK")
        holder.close()
    assert {n: c for n, c in locked.items() if c not in (baseline[n], "UNAVAILABLE")} == {}, (baseline, locked)
    writes = {"Join", "Register", "PollJob", "ReportResult", "Heartbeat", "ReleaseJob", "ReportQuality",
              "SubmitProfile", "CreateCampaign", "CancelCampaign", "RevokeDevice"}
    assert {n for n, c in locked.items() if c == "UNAVAILABLE"} >= writes, locked
    assert _codes(calls) == baseline
