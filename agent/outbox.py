"""The agent's durable outbox: every result is written here (SQLite, one transaction) before it is sent,
and removed only when the coordinator acknowledged it — stored, or an acknowledged duplicate.

Bounded: past `max_entries` the oldest entries are dropped and counted. Entries the coordinator refuses
for good (a stale lease, a conflicting payload) are removed and counted as rejected.
"""

import logging
import pathlib
import random
import sqlite3
import threading

import grpc

from fleetfit.v1 import fleetfit_pb2 as pb

log = logging.getLogger("fleetfit.agent")

TRANSIENT = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.RESOURCE_EXHAUSTED}
CALL_TIMEOUT_S = 15.0
DEFAULT_MAX_ENTRIES = 10_000


def path_beside(identity_path: pathlib.Path) -> pathlib.Path:
    """The default outbox: next to the agent's credentials."""
    return identity_path.with_name(identity_path.stem + "-outbox.sqlite3")


def backoff_s(attempt: int, base_s: float = 0.5, cap_s: float = 30.0) -> float:
    """Exponential backoff with full jitter in [half, whole] of the step."""
    return min(cap_s, base_s * 2 ** min(attempt, 64)) * random.uniform(0.5, 1.0)  # 2**1024 overflows a float


class Outbox:
    def __init__(self, path: pathlib.Path | str, max_entries: int = DEFAULT_MAX_ENTRIES):
        self.max_entries = max_entries
        pathlib.Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        self.lock = threading.Lock()
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.executescript("""
            CREATE TABLE IF NOT EXISTS outbox (seq INTEGER PRIMARY KEY AUTOINCREMENT, result_id TEXT UNIQUE NOT NULL,
                                               request BLOB NOT NULL);
            CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
        """)

    def close(self) -> None:
        self.db.close()

    def _bump(self, name: str, n: int = 1) -> None:
        self.db.execute("INSERT INTO counters (name, value) VALUES (?, ?) "
                        "ON CONFLICT (name) DO UPDATE SET value = value + excluded.value", (name, n))

    def put(self, request: pb.ReportResultRequest) -> None:
        """Keep a report durably (before any attempt to send it)."""
        with self.lock, self.db:
            self.db.execute("BEGIN IMMEDIATE")
            self.db.execute("INSERT OR IGNORE INTO outbox (result_id, request) VALUES (?, ?)",
                            (request.result.result_id, request.SerializeToString()))
            over = self.db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0] - self.max_entries
            if over > 0:
                self.db.execute("DELETE FROM outbox WHERE seq IN (SELECT seq FROM outbox ORDER BY seq LIMIT ?)", (over,))
                self._bump("dropped", over)
                log.warning("outbox full: dropped the %d oldest result(s)", over)

    def pending(self) -> list[pb.ReportResultRequest]:
        with self.lock:
            rows = self.db.execute("SELECT request FROM outbox ORDER BY seq").fetchall()
        return [pb.ReportResultRequest.FromString(r) for (r,) in rows]

    def remove(self, result_id: str, counter: str | None = None) -> None:
        with self.lock, self.db:
            self.db.execute("BEGIN IMMEDIATE")
            self.db.execute("DELETE FROM outbox WHERE result_id = ?", (result_id,))
            if counter:
                self._bump(counter)

    def count(self, name: str) -> int:
        with self.lock:
            row = self.db.execute("SELECT value FROM counters WHERE name = ?", (name,)).fetchone()
        return row[0] if row else 0

    def __len__(self) -> int:
        with self.lock:
            return self.db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]


def flush(outbox: Outbox, report, stop: threading.Event, max_attempts: int | None = None) -> bool:
    """Send what the outbox holds, oldest first, with `report` (AgentService.ReportResult).

    Transient failures are retried with jittered backoff (forever unless `max_attempts`, until `stop`); an
    unknown device stops the flush with everything kept (register, then flush again); other refusals
    remove the entry and count it as rejected. True when the outbox was emptied.
    """
    for request in outbox.pending():
        attempt = 0
        while True:
            try:
                reply = report(request, timeout=CALL_TIMEOUT_S)
            except grpc.RpcError as exc:
                if exc.code() == grpc.StatusCode.NOT_FOUND:
                    return False  # the coordinator does not know this device (yet): keep it, register, retry
                if exc.code() in TRANSIENT:
                    attempt += 1
                    if stop.is_set() or (max_attempts is not None and attempt >= max_attempts):
                        return False
                    stop.wait(backoff_s(attempt - 1))
                    continue
                log.warning("result %s refused for good (%s: %s); removed from the outbox",
                            request.result.result_id, exc.code().name, exc.details())
                outbox.remove(request.result.result_id, "rejected")
                break
            outbox.remove(request.result.result_id, "duplicates" if reply.duplicate else "delivered")
            break
    return True
