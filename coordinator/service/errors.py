"""The one place where an exception a servicer did not handle becomes a gRPC status (auth.guard wraps every RPC).

What agents do with each status (agent/outbox.py, agent/daemon.py) depends on it saying what happened:
- UNAVAILABLE: the coordinator's trouble, gone by itself later — a database lock held past the busy timeout, a
  lost or refused database connection (restart, failover, an idle reaper), a full or failing disk, no file
  descriptors or memory left. Agents keep what they send and try again.
- ABORTED: a concurrent write won a race (a unique key taken by another replica between our read and our write);
  sent again, the same request is answered from what is stored now (an acknowledged duplicate, or the refusal
  that says why not).
- INTERNAL: anything else, i.e. a bug: logged once here with its traceback; agents keep and retry.
A call's own refusals (INVALID_ARGUMENT for input that will never be accepted, ALREADY_EXISTS for a conflicting
payload, ...) are decided by the servicers, and context.abort's AbortError passes through untouched.
"""

import errno
import logging
import sqlite3
import time

import grpc

from fleetfit.coordinator.service.db import DatabaseError

log = logging.getLogger("fleetfit.coordinator")

# SQLite primary result codes that mean "the environment, not the request": busy/locked past the timeout, out
# of memory, read-only file, I/O error, disk full, cannot open, lock protocol.
_SQLITE_TRANSIENT = {sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED, sqlite3.SQLITE_NOMEM, sqlite3.SQLITE_READONLY,
                     sqlite3.SQLITE_IOERR, sqlite3.SQLITE_FULL, sqlite3.SQLITE_CANTOPEN, sqlite3.SQLITE_PROTOCOL}
_SQLITE_UNIQUE = {sqlite3.SQLITE_CONSTRAINT_UNIQUE, sqlite3.SQLITE_CONSTRAINT_PRIMARYKEY}
_OS_TRANSIENT = {errno.ENOSPC, errno.EDQUOT, errno.EMFILE, errno.ENFILE, errno.EIO, errno.ENOMEM, errno.EROFS,
                 errno.EAGAIN, errno.ENOBUFS,  # and a connection (to a database, a mirror) lost, refused or timed out
                 errno.ECONNRESET, errno.ECONNREFUSED, errno.ECONNABORTED, errno.EPIPE, errno.ETIMEDOUT,
                 errno.EHOSTUNREACH, errno.ENETUNREACH, errno.ENETDOWN}
QUIET_S = 60.0  # a transient failure of one kind is logged at most once per this many seconds


# PostgreSQL's SQLSTATEs that mean "the environment, not the request", whatever psycopg class they come as:
# connection exceptions (08), transaction rollbacks (40: deadlock, serialization), insufficient resources (53: disk
# full, out of memory, too many connections), lock not available (55P03), operator intervention (57: admin or
# crash shutdown, cannot connect now, idle session timeout), system errors (58: I/O), and two InternalErrors: a
# read-only transaction (25006: connected to a standby after a failover) and an idle-in-transaction timeout (25P03).
PG_TRANSIENT_CLASSES = ("08", "40", "53", "57", "58")
PG_TRANSIENT_STATES = {"55P03", "25006", "25P03"}


def pg_transient(sqlstate: str | None) -> bool:
    return bool(sqlstate) and (sqlstate[:2] in PG_TRANSIENT_CLASSES or sqlstate in PG_TRANSIENT_STATES)


def _psycopg_status(exc: Exception) -> tuple[grpc.StatusCode, str] | None:
    try:
        import psycopg
    except ImportError:
        return None
    if isinstance(exc, psycopg.errors.UniqueViolation):
        return grpc.StatusCode.ABORTED, "a concurrent write took the same key; send it again"
    if isinstance(exc, (psycopg.OperationalError, psycopg.InterfaceError)) or \
            (isinstance(exc, psycopg.Error) and pg_transient(exc.sqlstate)):  # connection lost or refused, disk full,
        return grpc.StatusCode.UNAVAILABLE, "database unavailable"  # serialization, admin shutdown, a standby
    return None


def status_for(exc: Exception) -> tuple[grpc.StatusCode, str]:
    """The status and a one-line message for an exception no servicer handled."""
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
    if isinstance(exc, sqlite3.Error):
        code = getattr(exc, "sqlite_errorcode", None)
        if code is not None and code & 0xFF in _SQLITE_TRANSIENT:
            return grpc.StatusCode.UNAVAILABLE, f"database unavailable ({first}); try again later"
        if code in _SQLITE_UNIQUE:
            return grpc.StatusCode.ABORTED, "a concurrent write took the same key; send it again"
    if isinstance(exc, DatabaseError):  # a connection could not be made (again)
        return grpc.StatusCode.UNAVAILABLE, f"database unavailable ({first}); try again later"
    if (found := _psycopg_status(exc)) is not None:
        return found[0], f"{found[1]} ({first}); try again later"
    if isinstance(exc, OSError) and exc.errno in _OS_TRANSIENT:
        return grpc.StatusCode.UNAVAILABLE, f"coordinator out of resources ({exc.strerror}); try again later"
    if isinstance(exc, MemoryError):
        return grpc.StatusCode.UNAVAILABLE, "coordinator out of memory; try again later"
    return grpc.StatusCode.INTERNAL, f"internal error in the coordinator ({type(exc).__name__}; logged there)"


MAX_KINDS = 100_000  # kinds remembered (a kind may be a device id): past this the memory starts afresh


class QuietLog:
    """Logs each kind of event at most once per QUIET_S, with how many there were since: a locked database under
    3,000 polling agents is one line a minute, not 3,000 a second, and a buggy agent retrying a refused report in
    a loop cannot flood the log (the store keeps the exact count of refusals)."""

    def __init__(self, every_s: float = QUIET_S):
        self.every_s, self.last, self.quiet = every_s, {}, {}

    def note(self, kind: str, message: str) -> None:
        now = time.monotonic()
        if now - self.last.get(kind, -self.every_s) < self.every_s:
            self.quiet[kind] = self.quiet.get(kind, 0) + 1
            return
        if len(self.last) > MAX_KINDS:
            self.last.clear()
            self.quiet.clear()
        self.last[kind] = now
        more = self.quiet.pop(kind, 0)
        log.warning("%s%s", message, f" (and {more} more such since the last such line)" if more else "")


def answer(exc: Exception, method: str, quiet: QuietLog) -> tuple[grpc.StatusCode, str]:
    """The status for `exc` raised by RPC `method`, logged: a bug once with its traceback, a transient failure at
    most once per QUIET_S per kind."""
    code, message = status_for(exc)
    if code == grpc.StatusCode.INTERNAL:
        log.error("%s failed", method, exc_info=exc)
    else:
        quiet.note(f"{code.name}:{type(exc).__name__}", f"{method}: {code.name}: {message}")
    return code, message
