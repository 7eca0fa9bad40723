"""`fleetfit serve` on a bad database: a corrupt, truncated or non-SQLite file, an empty database beside a fleet's
state, a second coordinator on one SQLite file — each refused with one line; PostgreSQL replicas are allowed."""

import pathlib
import subprocess

import pytest

from fleetfit.coordinator.service.db import DatabaseError, redact_url
from fleetfit.coordinator.service.store import Store
from fleetfit.v1 import fleetfit_pb2 as pb
from tests.conftest import assert_one_line_error, run_cli
from tests.test_reliability import ServeProcess, free_port


def serve(db: str, state: pathlib.Path, *extra: str) -> subprocess.CompletedProcess:
    return run_cli("fleetfit", "serve", "--insecure", "--listen", f"127.0.0.1:{free_port()}", "--db", db,
                   "--state-dir", str(state), *extra, timeout=60)


def a_fleet_database(path: pathlib.Path) -> None:
    with Store(path) as store:
        for n in range(200):  # a few pages' worth, so damage lands inside the data
            store.upsert_device(pb.DeviceInventory(device_id=f"dev-{n}", hostname="h" * 200,
                                                   llama_system_info="x" * 2000))


def test_a_file_that_is_not_sqlite_is_refused_naming_it_and_the_way_out(tmp_path):
    db = tmp_path / "fleet.sqlite3"
    db.write_bytes(b"this is a text file, not a database\n" * 100)
    done = serve(str(db), tmp_path / "state")
    assert_one_line_error(done, f"{db} is not a usable SQLite database")
    assert "restore it from a backup, or move it aside" in done.stderr
    assert db.read_bytes().startswith(b"this is a text file")  # nothing was written to it


@pytest.mark.parametrize("damage", ["truncate", "overwrite"])
def test_a_damaged_database_is_refused_at_start(tmp_path, damage):
    db = tmp_path / "fleet.sqlite3"
    a_fleet_database(db)
    data = bytearray(db.read_bytes())
    if damage == "truncate":
        data = data[: len(data) // 2]
    else:  # garbage over pages in the middle of the file, header intact
        data[len(data) // 3: len(data) // 3 + 20_000] = b"\xa5" * 20_000
    db.write_bytes(bytes(data))
    done = serve(str(db), tmp_path / "state")
    assert_one_line_error(done, str(db))
    assert "restore it from a backup, or move it aside to start an empty fleet" in done.stderr
    with pytest.raises(DatabaseError):
        Store(db)


def test_an_empty_database_beside_a_fleet_state_is_refused_unless_asked(tmp_path):
    db, state = tmp_path / "fleet.sqlite3", tmp_path / "state"
    first = ServeProcess(str(db), tmp_path)  # a fleet: the operator token is written to tmp_path/state
    first.start()
    first.stop()
    assert (state / "operator.token").exists()
    for fresh in ("missing", "empty"):
        db.unlink()
        pathlib.Path(f"{db}-wal").unlink(missing_ok=True)
        if fresh == "empty":
            db.write_bytes(b"")
        done = serve(str(db), state)
        assert_one_line_error(done, "holds no fleet, but")
        assert "operator.token" in done.stderr and "--new-database" in done.stderr
    started = ServeProcess(str(db), tmp_path)
    started.args.append("--new-database")
    started.start()  # serving: an empty fleet, as asked
    started.stop()


def test_a_second_coordinator_on_one_sqlite_file_is_refused(tmp_path):
    db = tmp_path / "fleet.sqlite3"
    first = ServeProcess(str(db), tmp_path)
    first.start()
    try:
        done = serve(str(db), tmp_path / "state")
        assert_one_line_error(done, f"another fleetfit coordinator is serving {db}")
        assert first.serving()
    finally:
        first.stop()
    second = ServeProcess(str(db), tmp_path)  # the lock goes with the process
    second.start()
    second.stop()


def test_postgresql_replicas_may_share_a_database(db_url, tmp_path):
    if not db_url.startswith("postgresql"):
        pytest.skip("replicas are a PostgreSQL matter; SQLite is locked (above)")
    one, two = ServeProcess(db_url, tmp_path), ServeProcess(db_url, tmp_path)
    one.start()
    try:
        two.start()
        assert one.serving() and two.serving()
    finally:
        two.stop()
        one.stop()


def test_passwords_never_appear_in_connection_errors_or_the_banner(db_url, tmp_path):
    refused = run_cli("fleetfit", "serve", "--insecure", "--db", "postgresql://fleet:hunter2@127.0.0.1:1/fleet",
                      "--state-dir", str(tmp_path / "s1"), timeout=60)
    assert_one_line_error(refused, "cannot connect to postgresql://fleet:***@127.0.0.1:1/fleet")
    assert "hunter2" not in refused.stderr + refused.stdout
    assert redact_url("postgresql://u@h/db?password=hunter2&sslmode=require") == \
        "postgresql://u@h/db?password=***&sslmode=require"
    if not db_url.startswith("postgresql"):
        return
    with_password = db_url.replace("postgresql://postgres@", "postgresql://postgres:hunter2@")  # trust: ignored
    server = ServeProcess(with_password, tmp_path)
    server.start()
    server.stop()
    log = (tmp_path / "serve.log").read_text()
    assert "listening on" in log and "postgres:***@" in log and "hunter2" not in log
