"""The agent's durable outbox: every result (a profiling result, or a quality result: KINDS) is written here
(SQLite, one transaction) before it is sent, and removed only when the coordinator acknowledged it — stored, or an acknowledged duplicate.

A result is kept and sent again later unless the coordinator said, with a status that means it, that it will
never accept it (NEVER_ACCEPTED: INVALID_ARGUMENT — bounds or shape refused; ALREADY_EXISTS — the result id is
stored with another payload; PERMISSION_DENIED — the job or device is another's; FAILED_PRECONDITION — the
lease is stale, the job was leased again). Even then it is not deleted: it moves to the dead letters (a table
in the same file) with the status, the coordinator's reason and the time, counted as "rejected";
`fleetfit-agent outbox` shows them. Every other status (UNAVAILABLE, UNKNOWN, INTERNAL, ABORTED,
RESOURCE_EXHAUSTED, UNAUTHENTICATED, ...) keeps the result. The file is created mode 0600.

Bounded: past `max_entries` the oldest entries (and dead letters) are dropped, counted and logged.

The file is checked when opened (`PRAGMA quick_check`): a corrupt outbox is refused with one line. A write
the disk refuses (full, read-only, I/O error) is retried a few times, then raises OutboxWriteError: `deliver`
then sends the result, still in memory, directly, and counts it as lost if that fails too. Counts that
cannot be written wait in memory and are saved with the next write that succeeds.
"""

import collections
import logging
import os
import pathlib
import random
import sqlite3
import threading
import time

import grpc

from fleetfit.v1 import fleetfit_pb2 as pb
from fleetfit.v1.transport import CALL_TIMEOUT_S

log = logging.getLogger("fleetfit.agent")

# The statuses that say "never": the only ones that take a result out of the outbox (into the dead letters).
NEVER_ACCEPTED = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.ALREADY_EXISTS, grpc.StatusCode.PERMISSION_DENIED,
                  grpc.StatusCode.FAILED_PRECONDITION}
# Kept, and the rest of the outbox waits too: the coordinator is away, or does not (yet) take this device's results.
# Other kept statuses (INTERNAL, UNKNOWN, ABORTED, ...) may be about that one result: the flush goes on past it.
COORDINATOR_WIDE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED,
                    grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.UNAUTHENTICATED}
DEFAULT_MAX_ENTRIES = 10_000
WRITE_ATTEMPTS = 3


class OutboxError(Exception):
    """The outbox cannot be opened; the message is one line for users."""


class OutboxWriteError(OutboxError):
    """The disk refused a write WRITE_ATTEMPTS times; the message says why in a few words."""


# What the outbox keeps: profiling results and quality results, each sent by its own AgentService call.
KINDS = {"result": pb.ReportResultRequest, "quality": pb.ReportQualityRequest}


def kind_of(request) -> str:
    return next(kind for kind, message in KINDS.items() if isinstance(request, message))


def reporter(stub):
    """The send call for every kind of entry (`report` of send, flush and deliver): ReportResult or ReportQuality."""
    calls = {"result": stub.ReportResult, "quality": stub.ReportQuality}
    return lambda request, timeout: calls[kind_of(request)](request, timeout=timeout)


def path_beside(identity_path: pathlib.Path) -> pathlib.Path:
    """The default outbox: next to the agent's credentials."""
    return identity_path.with_name(identity_path.stem + "-outbox.sqlite3")


def backoff_s(attempt: int, base_s: float = 0.5, cap_s: float = 30.0) -> float:
    """Exponential backoff with full jitter in [half, whole] of the step."""
    return min(cap_s, base_s * 2 ** min(attempt, 64)) * random.uniform(0.5, 1.0)  # 2**1024 overflows a float


def _why(exc: Exception) -> str:
    """A write or open failure in a few words: SQLite's message ("database or disk is full", "attempt to write a
    readonly database", "disk I/O error") or the OS's ("No space left on device")."""
    return (exc.strerror or str(exc)) if isinstance(exc, OSError) else str(exc)


class Outbox:
    def __init__(self, path: pathlib.Path | str, max_entries: int = DEFAULT_MAX_ENTRIES):
        self.path, self.max_entries = pathlib.Path(path), max_entries
        self.lock = threading.Lock()
        self.unsaved = collections.Counter()  # counts the disk refused; saved with the next write that succeeds
        if self.path.exists() and not self.path.is_file():  # SQLite would block on a FIFO
            raise OutboxError(f"outbox {self.path} is not a regular file; give --outbox a file path")
        self.db = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            os.close(os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600))  # SQLite gives its -wal the same mode
            os.chmod(self.path, 0o600)  # results and dead letters are this device's own: one made 0644 before too
            self.db = sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False)
            check = self.db.execute("PRAGMA quick_check(1)").fetchone()[0]
            if check != "ok":
                raise sqlite3.DatabaseError(" ".join(check.replace("*** in database main ***", "").split())[:160])
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.executescript("""
                CREATE TABLE IF NOT EXISTS outbox (seq INTEGER PRIMARY KEY AUTOINCREMENT,
                                                   result_id TEXT UNIQUE NOT NULL, request BLOB NOT NULL,
                                                   kind TEXT NOT NULL DEFAULT 'result');
                CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
                CREATE TABLE IF NOT EXISTS dead_letters (seq INTEGER PRIMARY KEY AUTOINCREMENT, result_id TEXT NOT NULL,
                                                         request BLOB NOT NULL, status TEXT NOT NULL,
                                                         reason TEXT NOT NULL, at REAL NOT NULL,
                                                         kind TEXT NOT NULL DEFAULT 'result');
            """)
            for table in ("outbox", "dead_letters"):  # an outbox written before quality results were kept here
                if "kind" not in [row[1] for row in self.db.execute(f"PRAGMA table_info({table})")]:
                    self.db.execute(f"ALTER TABLE {table} ADD COLUMN kind TEXT NOT NULL DEFAULT 'result'")
        except (sqlite3.Error, OSError) as exc:
            if self.db is not None:
                self.db.close()
            if isinstance(exc, sqlite3.DatabaseError) and not isinstance(exc, sqlite3.OperationalError):
                raise OutboxError(f"outbox {self.path} is corrupt ({exc}); move it aside to start a new one "
                                  f"(results in it would be lost)") from None
            raise OutboxError(f"cannot open outbox {self.path} ({_why(exc)})") from None

    def close(self) -> None:
        self.db.close()

    def _bump(self, name: str, n: int = 1) -> None:
        self.db.execute("INSERT INTO counters (name, value) VALUES (?, ?) "
                        "ON CONFLICT (name) DO UPDATE SET value = value + excluded.value", (name, n))

    def _write(self, work) -> None:
        """Run `work` in one write transaction (with the unsaved counts); retried, then OutboxWriteError."""
        for attempt in range(WRITE_ATTEMPTS):
            try:
                with self.lock:
                    with self.db:
                        self.db.execute("BEGIN IMMEDIATE")
                        work()
                        for name, n in self.unsaved.items():
                            self._bump(name, n)
                    self.unsaved.clear()
                return
            except (sqlite3.OperationalError, OSError) as exc:  # full, read-only, I/O error, locked
                failure = exc
                if attempt < WRITE_ATTEMPTS - 1:
                    time.sleep(backoff_s(attempt, base_s=0.2))
        raise OutboxWriteError(_why(failure))

    def put(self, request: pb.ReportResultRequest | pb.ReportQualityRequest) -> None:
        """Keep a report durably (before any attempt to send it); OutboxWriteError when the disk refuses."""
        def work():
            self.db.execute("INSERT OR IGNORE INTO outbox (result_id, request, kind) VALUES (?, ?, ?)",
                            (request.result.result_id, request.SerializeToString(), kind_of(request)))
            over = self.db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0] - self.max_entries
            if over > 0:
                self.db.execute("DELETE FROM outbox WHERE seq IN (SELECT seq FROM outbox ORDER BY seq LIMIT ?)", (over,))
                self._bump("dropped", over)
                log.warning("outbox full: dropped the %d oldest result(s)", over)

        self._write(work)

    def pending(self) -> list[pb.ReportResultRequest | pb.ReportQualityRequest]:
        with self.lock:
            rows = self.db.execute("SELECT kind, request FROM outbox ORDER BY seq").fetchall()
        return [KINDS[kind].FromString(r) for kind, r in rows]

    def remove(self, result_id: str, counter: str | None = None) -> None:
        def work():
            self.db.execute("DELETE FROM outbox WHERE result_id = ?", (result_id,))
            if counter:
                self._bump(counter)

        self._write(work)

    def dead_letter(self, request: pb.ReportResultRequest, status: str, reason: str) -> None:
        """Move `request` from the outbox to the dead letters with the coordinator's status and reason; counted as
        "rejected". OutboxWriteError when the disk refuses (then it stays in the outbox)."""
        def work():
            self.db.execute("INSERT INTO dead_letters (result_id, request, status, reason, at, kind) "
                            "VALUES (?, ?, ?, ?, ?, ?)", (request.result.result_id, request.SerializeToString(),
                                                          status, reason[:1000], time.time(), kind_of(request)))
            self.db.execute("DELETE FROM outbox WHERE result_id = ?", (request.result.result_id,))
            self._bump("rejected")
            over = self.db.execute("SELECT COUNT(*) FROM dead_letters").fetchone()[0] - self.max_entries
            if over > 0:
                self.db.execute("DELETE FROM dead_letters WHERE seq IN "
                                "(SELECT seq FROM dead_letters ORDER BY seq LIMIT ?)", (over,))
                self._bump("dead_letters_dropped", over)
                log.warning("dead letters full: dropped the %d oldest", over)

        self._write(work)

    def dead_letters(self) -> list[tuple[pb.ReportResultRequest | pb.ReportQualityRequest, str, str, float]]:
        """The results the coordinator refused for good, oldest first: (request, status, reason, unix time)."""
        with self.lock:
            rows = self.db.execute("SELECT kind, request, status, reason, at FROM dead_letters ORDER BY seq").fetchall()
        return [(KINDS[kind].FromString(r), status, reason, at) for kind, r, status, reason, at in rows]

    def note(self, counter: str) -> None:
        """Count an event even when the disk is full (then the count waits in memory)."""
        self.unsaved[counter] += 1
        try:
            self._write(lambda: None)
        except OutboxWriteError:
            pass

    def count(self, name: str) -> int:
        with self.lock:
            row = self.db.execute("SELECT value FROM counters WHERE name = ?", (name,)).fetchone()
            return (row[0] if row else 0) + self.unsaved[name]

    def __len__(self) -> int:
        with self.lock:
            return self.db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]


class Refused(str):
    """send's outcome for a result the coordinator will never accept: "rejected", with the status and reason."""

    def __new__(cls, code: grpc.StatusCode, reason: str):
        refused = super().__new__(cls, "rejected")
        refused.code, refused.reason = code, reason
        return refused


class Kept(str):
    """send's outcome for a result to keep and send later, with the last status (`code`)."""

    def __new__(cls, code: grpc.StatusCode):
        kept = super().__new__(cls, "kept")
        kept.code = code
        return kept


def send(report, request: pb.ReportResultRequest, stop: threading.Event, max_attempts: int | None = None) -> str:
    """Send one report with `report` (AgentService.ReportResult): "delivered", "duplicates" (acknowledged before),
    a Refused ("rejected": the coordinator will never accept it, NEVER_ACCEPTED) or a Kept ("kept": send it
    later — an unknown device or revoked credentials at once; any other status after `max_attempts` tries with
    jittered backoff, or at `stop`)."""
    attempt = 0
    while True:
        try:
            reply = report(request, timeout=CALL_TIMEOUT_S)
        except grpc.RpcError as exc:
            code = exc.code()
            if code in NEVER_ACCEPTED:
                log.warning("result %s refused for good (%s: %s); moved to the dead letters", request.result.result_id,
                            code.name, exc.details())
                return Refused(code, exc.details() or "")
            attempt += 1
            if code in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.UNAUTHENTICATED) or stop.is_set() or (
                    max_attempts is not None and attempt >= max_attempts):
                return Kept(code)
            stop.wait(backoff_s(attempt - 1))
            continue
        return "duplicates" if reply.duplicate else "delivered"


# A flush stops after this many results in a row were kept for a status about one result (INTERNAL, UNKNOWN, ...).
MAX_KEPT_IN_A_ROW = 3


def flush(outbox: Outbox, report, stop: threading.Event, max_attempts: int | None = None) -> bool:
    """Send what the outbox holds, oldest first; each entry is removed once acknowledged, or moved to the dead
    letters once refused for good.

    Failures are retried with jittered backoff (forever unless `max_attempts`, until `stop`). A status about the
    coordinator or this device (COORDINATOR_WIDE: away, an unknown device — register, then flush again) stops
    the flush with everything kept; one about a single result (INTERNAL, ...) keeps it and goes on with the next,
    up to MAX_KEPT_IN_A_ROW in a row. A removal the disk refuses stops it too (the entry is sent again later; the
    coordinator ignores duplicates). True when the outbox was emptied.
    """
    kept_in_a_row = 0
    for request in outbox.pending():
        outcome = send(report, request, stop, max_attempts)
        if isinstance(outcome, Kept):
            kept_in_a_row += 1
            if outcome.code in COORDINATOR_WIDE or kept_in_a_row >= MAX_KEPT_IN_A_ROW or stop.is_set():
                return False
            continue
        kept_in_a_row = 0
        try:
            if isinstance(outcome, Refused):
                outbox.dead_letter(request, outcome.code.name, outcome.reason)
            else:
                outbox.remove(request.result.result_id, outcome)
        except OutboxWriteError as exc:
            log.warning("outbox write failed (%s): result %s was answered but stays in the outbox", exc,
                        request.result.result_id)
            return False
    return len(outbox) == 0


def deliver(outbox: Outbox, report, request: pb.ReportResultRequest, stop: threading.Event,
            max_attempts: int | None = 8) -> bool:
    """Keep `request` in the outbox, then flush it. When the disk refuses the write, send the result (still in
    memory) directly. False when it is lost — neither kept nor delivered — and counted as "lost"."""
    try:
        outbox.put(request)
    except OutboxWriteError as exc:
        result_id = request.result.result_id
        outcome = send(report, request, stop, max_attempts)
        outbox.note("lost" if isinstance(outcome, Kept) else outcome)
        if isinstance(outcome, Kept):
            log.error("outbox write failed (%s): result %s lost (not delivered either); counted, %d lost so far",
                      exc, result_id, outbox.count("lost"))
            return False
        if isinstance(outcome, Refused):  # nowhere to keep it as a dead letter: counted and logged with the reason
            log.error("outbox write failed (%s): result %s refused for good when sent directly (%s: %s)", exc,
                      result_id, outcome.code.name, outcome.reason)
        else:
            log.error("outbox write failed (%s): result %s delivered directly", exc, result_id)
        return True
    flush(outbox, report, stop, max_attempts)
    return True
