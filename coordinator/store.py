"""The coordinator's store: devices, profile results and jobs, in SQLite (embedded default).

Messages are stored as serialized protobuf beside the columns that queries need. Every write is one
transaction, so a crash never leaves half a result. Results are keyed by their agent-minted id and
ingested idempotently: the same id with the same payload is a duplicate, with another payload an error.
"""

import pathlib
import sqlite3
import time
import uuid

from fleetfit.v1 import fleetfit_pb2 as pb

SCHEMA = """
CREATE TABLE IF NOT EXISTS devices (
    device_id TEXT PRIMARY KEY,
    inventory BLOB NOT NULL,
    first_seen REAL NOT NULL,
    last_seen REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS results (
    result_id TEXT PRIMARY KEY,
    device_id TEXT NOT NULL,
    job_id TEXT,
    model_name TEXT NOT NULL,
    quant TEXT NOT NULL,
    backend TEXT NOT NULL,
    failure INTEGER NOT NULL,
    received REAL NOT NULL,
    payload BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS results_by_model ON results (model_name, quant, backend, device_id);
CREATE TABLE IF NOT EXISTS jobs (
    job_id TEXT PRIMARY KEY,
    device_id TEXT NOT NULL,
    request BLOB NOT NULL,
    state TEXT NOT NULL,
    created REAL NOT NULL,
    updated REAL NOT NULL,
    result_id TEXT,
    error TEXT
);
CREATE INDEX IF NOT EXISTS jobs_by_device ON jobs (device_id, state, created);
"""


class ConflictingResult(Exception):
    """A result id that is already stored with a different payload."""


class UnknownDevice(Exception):
    """A device that has not registered."""


class Store:
    def __init__(self, path: pathlib.Path | str):
        self.path = str(path)
        if self.path != ":memory:":
            pathlib.Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA busy_timeout=5000")
        self.db.executescript(SCHEMA)

    def close(self) -> None:
        self.db.close()

    # -- devices

    def upsert_device(self, inventory: pb.DeviceInventory) -> None:
        now = time.time()
        with self.db:
            self.db.execute(
                "INSERT INTO devices (device_id, inventory, first_seen, last_seen) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (device_id) DO UPDATE SET inventory = excluded.inventory, last_seen = excluded.last_seen",
                (inventory.device_id, inventory.SerializeToString(), now, now),
            )

    def touch_device(self, device_id: str) -> None:
        with self.db:
            cur = self.db.execute("UPDATE devices SET last_seen = ? WHERE device_id = ?", (time.time(), device_id))
        if cur.rowcount == 0:
            raise UnknownDevice(device_id)

    def devices(self) -> list[pb.Device]:
        rows = self.db.execute(
            "SELECT d.inventory, d.first_seen, d.last_seen, "
            "(SELECT COUNT(*) FROM results r WHERE r.device_id = d.device_id) "
            "FROM devices d ORDER BY d.device_id"
        ).fetchall()
        return [pb.Device(inventory=pb.DeviceInventory.FromString(inv), first_seen_unix_s=first,
                          last_seen_unix_s=last, results=count) for inv, first, last, count in rows]

    # -- results

    def add_result(self, result: pb.ProfileResult, job_id: str = "") -> bool:
        """Store a result; True when it was already stored (an acknowledged duplicate)."""
        payload = result.SerializeToString(deterministic=True)
        with self.db:
            row = self.db.execute("SELECT payload FROM results WHERE result_id = ?", (result.result_id,)).fetchone()
            if row is not None:
                if bytes(row[0]) != payload:
                    raise ConflictingResult(f"result {result.result_id} is already stored with another payload")
                return True
            self.db.execute(
                "INSERT INTO results (result_id, device_id, job_id, model_name, quant, backend, failure, received, "
                "payload) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (result.result_id, result.device_id, job_id or None, result.model_name,
                 result.quant or result.request.quant, result.request.backend, int(result.failure), time.time(),
                 payload),
            )
            if job_id:
                state = "failed" if result.failure else "done"
                self.db.execute("UPDATE jobs SET state = ?, result_id = ?, error = ?, updated = ? WHERE job_id = ?",
                                (state, result.result_id, result.error or None, time.time(), job_id))
        return False

    def results(self) -> list[pb.ProfileResult]:
        rows = self.db.execute("SELECT payload FROM results ORDER BY received").fetchall()
        return [pb.ProfileResult.FromString(payload) for (payload,) in rows]

    def model_names(self) -> set[str]:
        return {name for (name,) in self.db.execute("SELECT DISTINCT model_name FROM results")}

    # -- jobs

    def enqueue(self, device_id: str, request: pb.ProfileRequest) -> str:
        job_id = str(uuid.uuid4())
        now = time.time()
        with self.db:
            self.db.execute(
                "INSERT INTO jobs (job_id, device_id, request, state, created, updated) VALUES (?, ?, ?, 'queued', ?, ?)",
                (job_id, device_id, request.SerializeToString(), now, now),
            )
        return job_id

    def claim_job(self, device_id: str) -> pb.Job | None:
        """Hand the device its oldest queued job, marking it running."""
        with self.db:
            row = self.db.execute(
                "UPDATE jobs SET state = 'running', updated = ? WHERE job_id = ("
                "SELECT job_id FROM jobs WHERE device_id = ? AND state = 'queued' ORDER BY created LIMIT 1) "
                "RETURNING job_id, request",
                (time.time(), device_id),
            ).fetchone()
        return None if row is None else pb.Job(job_id=row[0], request=pb.ProfileRequest.FromString(row[1]))

    def job_device(self, job_id: str) -> str | None:
        row = self.db.execute("SELECT device_id FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
        return None if row is None else row[0]

    def jobs(self, job_ids: list[str]) -> list[pb.JobStatus]:
        marks = ",".join("?" * len(job_ids))
        rows = self.db.execute(
            f"SELECT job_id, device_id, state, result_id, error FROM jobs WHERE job_id IN ({marks}) ORDER BY created",
            job_ids,
        ).fetchall()
        return [pb.JobStatus(job_id=j, device_id=d, state=s, result_id=r or "", error=e or "") for j, d, s, r, e in rows]
