"""One database interface for SQLite (embedded default) and PostgreSQL (by URL), and the one migration tool.

The schema is written once, in plain SQL, in the SQLite spelling. A tiny shim turns it into PostgreSQL:
`?` placeholders become `%s`, BLOB becomes BYTEA and REAL becomes DOUBLE PRECISION. Migrations are
numbered and applied in order inside a transaction; `schema_migrations` records what was applied, so
opening an older database brings it up to date and opening a current one changes nothing.
"""

import contextlib
import fcntl
import pathlib
import re
import sqlite3
import threading
import time
import urllib.parse

MIGRATIONS: list[str] = [
    # 1: the spine (devices, results, jobs). IF NOT EXISTS: databases made before migrations existed hold it.
    """
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
    """,
    # 2: fleet operation: leases, campaigns, enrollment.
    """
    ALTER TABLE jobs ADD COLUMN campaign_id TEXT;
    ALTER TABLE jobs ADD COLUMN attempts INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE jobs ADD COLUMN max_attempts INTEGER NOT NULL DEFAULT 3;
    ALTER TABLE jobs ADD COLUMN fence INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE jobs ADD COLUMN lease_expires REAL;
    CREATE INDEX jobs_by_lease ON jobs (state, lease_expires);
    CREATE INDEX jobs_by_campaign ON jobs (campaign_id, device_id);
    CREATE TABLE campaigns (
        campaign_id TEXT PRIMARY KEY,
        selector TEXT NOT NULL,
        created REAL NOT NULL,
        spec BLOB NOT NULL
    );
    CREATE TABLE join_tokens (
        token_hash TEXT PRIMARY KEY,
        labels TEXT NOT NULL,
        created REAL NOT NULL,
        expires REAL NOT NULL,
        used_by TEXT,
        used_at REAL
    );
    CREATE TABLE agents (
        device_id TEXT PRIMARY KEY,
        secret_hash TEXT NOT NULL,
        labels TEXT NOT NULL,
        created REAL NOT NULL
    );
    CREATE TABLE operator_tokens (
        token_hash TEXT PRIMARY KEY,
        created REAL NOT NULL
    );
    """,
    # 3: fleet scale: a device's results by index, and a per-device result counter (the version of what is
    # known about the device: answers computed from its results stay valid until it moves).
    """
    CREATE INDEX results_by_device ON results (device_id, received);
    ALTER TABLE devices ADD COLUMN result_count INTEGER NOT NULL DEFAULT 0;
    UPDATE devices SET result_count = (SELECT COUNT(*) FROM results r WHERE r.device_id = devices.device_id);
    """,
    # 4: a heterogeneous fleet: what a campaign did not queue on each device, and why (JSON {device: [reason]}).
    """
    ALTER TABLE campaigns ADD COLUMN skipped TEXT NOT NULL DEFAULT '{}';
    """,
    # 5: a hostile or buggy part cannot hurt the fleet: join tokens bound to a device id, revoked agents, and
    # per-device counts of refused reports.
    """
    ALTER TABLE join_tokens ADD COLUMN device_id TEXT;
    ALTER TABLE agents ADD COLUMN revoked REAL;
    ALTER TABLE devices ADD COLUMN refused INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE devices ADD COLUMN last_refusal TEXT;
    """,
    # 6: what each quantization costs in quality, per device (fleetfit-agent quality --report).
    """
    CREATE TABLE quality_results (
        result_id TEXT PRIMARY KEY,
        device_id TEXT NOT NULL,
        model_name TEXT NOT NULL,
        quant TEXT NOT NULL,
        received REAL NOT NULL,
        payload BLOB NOT NULL
    );
    CREATE INDEX quality_by_model ON quality_results (model_name, quant, device_id);
    """,
    # 7: coordinator replicas on one database advertise themselves (fleetfit serve --advertise), so an agent learns
    # every replica it may move to when the one it uses stops answering.
    """
    CREATE TABLE replicas (
        address TEXT PRIMARY KEY,
        seen REAL NOT NULL
    );
    """,
]


def is_postgres_url(url: str) -> bool:
    return url.startswith(("postgresql://", "postgres://"))


def to_postgres(sql: str) -> str:
    sql = sql.replace("?", "%s")
    sql = re.sub(r"\bBLOB\b", "BYTEA", sql)
    return re.sub(r"\bREAL\b", "DOUBLE PRECISION", sql)


class DatabaseError(Exception):
    """The database cannot be opened or migrated; the message is one line for users."""


def redact_url(url: str) -> str:
    """`url` with its password (in user:password@ or a password= parameter) replaced by ***: the one way a
    database URL is shown in banners, logs and errors. Never raises: a URL that does not parse is redacted by
    pattern."""
    if not is_postgres_url(url):
        return url
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:  # "Invalid IPv6 URL": hide whatever follows user: up to the last @
        return re.sub(r"(?i)(password=)[^&]*", r"\1***", re.sub(r"^([^:]+://[^:/@]*:)[^/]*@", r"\1***@", url))
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, host = netloc.rpartition("@")
        if ":" in userinfo:
            netloc = f"{userinfo.split(':', 1)[0]}:***@{host}"
    query = re.sub(r"(?i)(^|&)(password=)[^&]*", r"\1\2***", parts.query)
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc, query=query))


def _password(url: str) -> str | None:
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return None
    found = re.search(r"(?i)(?:^|&)password=([^&]*)", parts.query)
    secret = parts.password or (found.group(1) if found else None)
    return urllib.parse.unquote(secret) if secret else None


def check_postgres_url(url: str) -> None:
    """DatabaseError (one line, password hidden) when `url` does not parse as a URL at all."""
    try:
        parts = urllib.parse.urlsplit(url)
        if "," not in parts.netloc:  # several hosts (h1:5432,h2:5432) are libpq's to parse
            _ = parts.port  # raises on a port that is not a number
    except ValueError as exc:
        raise DatabaseError(f"malformed PostgreSQL URL {redact_url(url)}: {exc} "
                            "(postgresql://USER:PASSWORD@HOST:PORT/DB; an IPv6 host goes in [brackets])") from None


# A statement waits this long for another's lock, then fails (the RPC: UNAVAILABLE): SQLite's busy timeout, and
# PostgreSQL's lock_timeout, so a table locked by a backup, a VACUUM FULL or an operator's transaction answers the
# same on both (not a call stuck until the caller's deadline, holding a store thread).
BUSY_TIMEOUT_MS = 10_000
RECOVER = "restore it from a backup, or move it aside to start an empty fleet"


def check_sqlite_file(path: pathlib.Path) -> None:
    """DatabaseError (one line, naming the file and the way out) unless `path` is missing, empty or a SQLite
    database that passes `PRAGMA quick_check`: a corrupt page is found at start, not when a query hits it."""
    if not path.exists() or (path.is_file() and path.stat().st_size == 0):
        return
    if not path.is_file():
        raise DatabaseError(f"{path} is not a file: give a SQLite file or a postgresql:// URL")
    try:
        conn = sqlite3.connect(path)
        try:
            problems = [row[0] for row in conn.execute("PRAGMA quick_check(5)")]
        finally:
            conn.close()
    except sqlite3.DatabaseError as exc:
        raise DatabaseError(f"{path} is not a usable SQLite database ({exc}): {RECOVER}") from None
    if problems != ["ok"]:
        found = " ".join(" ".join(problems).replace("*** in database main ***", "").split())
        raise DatabaseError(f"{path} is corrupt (quick_check: {found[:160]}): {RECOVER}")


def lock_sqlite_file(path: pathlib.Path):
    """An exclusive lock on `path`.lock, held while the returned file stays open; DatabaseError (one line) when
    another coordinator holds it. Two coordinators on one SQLite file would each hand out the same jobs."""
    lock_path = pathlib.Path(f"{path}.lock")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    handle = open(lock_path, "a")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise DatabaseError(f"another fleetfit coordinator is serving {path} (it holds {lock_path}): stop it, or "
                            "use PostgreSQL for several replicas") from None
    return handle


class Database:
    """SQLite (a file path) or PostgreSQL (a postgresql:// URL), used by one process from many threads.

    `transaction()` yields an `execute(sql, params)` function; statements use `?` placeholders in both
    dialects. Each thread has its own connection, so a reader is never queued behind another thread's write
    (SQLite's WAL lets readers run beside a writer; PostgreSQL's MVCC likewise).
    """

    def __init__(self, url: str | pathlib.Path):
        self.url = str(url)
        self.postgres = is_postgres_url(self.url)
        if self.url == ":memory:":
            raise DatabaseError("an in-memory SQLite database cannot be shared between threads: give a file")
        self.local = threading.local()
        self.lock = threading.Lock()
        self.connections: list = []
        self.display = redact_url(self.url)
        if self.postgres:
            check_postgres_url(self.url)
        else:
            check_sqlite_file(pathlib.Path(self.url))
            pathlib.Path(self.url).parent.mkdir(parents=True, exist_ok=True)
        self.migrate()

    def _connect(self):
        if self.postgres:
            try:
                import psycopg
            except ImportError:
                raise DatabaseError("PostgreSQL needs the psycopg package: pip install 'fleetfit[postgres]'") from None
            try:
                conn = psycopg.connect(self.url, autocommit=True, connect_timeout=10)
                try:
                    conn.execute(f"SET lock_timeout = {int(BUSY_TIMEOUT_MS)}")
                except BaseException:
                    conn.close()
                    raise
            except psycopg.Error as exc:
                why, password = str(exc).strip().splitlines()[0], _password(self.url)
                raise DatabaseError(f"cannot connect to {self.display}: "
                                    f"{why.replace(password, '***') if password else why}") from None
        else:
            conn = sqlite3.connect(self.url, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")  # with WAL: durable across process crashes
            conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        with self.lock:
            self.connections.append(conn)
        return conn

    @property
    def conn(self):
        """This thread's connection, made on first use (and again after _discard)."""
        conn = getattr(self.local, "conn", None)
        if conn is None:
            conn = self.local.conn = self._connect()
        return conn

    def close(self) -> None:
        with self.lock:
            for conn in self.connections:
                conn.close()
            self.connections.clear()
        self.local = threading.local()

    def _discard(self) -> None:
        """Close and forget this thread's connection; the next use makes a new one."""
        conn, self.local.conn = getattr(self.local, "conn", None), None
        if conn is None:
            return
        with self.lock:
            if conn in self.connections:
                self.connections.remove(conn)
        try:
            conn.close()
        except Exception:  # already gone
            pass

    def _dead(self, exc: BaseException) -> bool:
        """Whether this thread's connection is beyond use after `exc`: PostgreSQL's cut (a restart, a failover,
        pg_terminate_backend, an idle reaper) or read-only (25006: a session on a server that became a standby, or
        was made read-only, stays so: a new connection finds the primary), SQLite's closed or failing with an I/O
        error."""
        conn = getattr(self.local, "conn", None)
        if conn is None:
            return False
        if self.postgres:
            return conn.closed or conn.broken or getattr(exc, "sqlstate", None) == "25006"
        if isinstance(exc, sqlite3.ProgrammingError):  # "Cannot operate on a closed database."
            return True
        return (getattr(exc, "sqlite_errorcode", 0) or 0) & 0xFF == sqlite3.SQLITE_IOERR

    def _read_only(self, conn) -> bool:
        """Whether a PostgreSQL session says (its reported parameters: no round trip) that it is on a standby or
        read-only: it stays so, while a new connection may find the primary (a failover) or a server made writable
        again. Writes (transaction()) start only on a new connection then."""
        return self.postgres and "on" in (conn.info.parameter_status("in_hot_standby"),
                                          conn.info.parameter_status("default_transaction_read_only"))

    def _execute(self, sql: str, params=()):
        return self.conn.execute(to_postgres(sql) if self.postgres else sql, params)

    def _begin(self):
        """This thread's connection inside a new transaction. A connection found dead at BEGIN (nothing of ours
        ran on it yet, so trying again is safe) is replaced once; one left inside a transaction is rolled back."""
        begin = "BEGIN" if self.postgres else "BEGIN IMMEDIATE"
        for attempt in (0, 1):
            conn = self.conn
            if not attempt and self._read_only(conn):  # a write would fail here: try a new connection first
                self._discard()
                conn = self.conn
            try:
                if self._in_transaction(conn):
                    conn.execute("ROLLBACK")
                conn.execute(begin)
                return conn
            except Exception as exc:
                if attempt or not self._dead(exc):
                    raise
                self._discard()

    def _in_transaction(self, conn) -> bool:
        if self.postgres:
            import psycopg

            return conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE
        return conn.in_transaction

    def _rollback(self, exc: BaseException) -> None:
        """End this thread's failed transaction; a connection that cannot roll back (or is dead) is replaced."""
        conn = self.local.conn
        try:
            if not self._dead(exc) and self._in_transaction(conn):
                conn.execute("ROLLBACK")
                return
        except Exception:
            pass
        if self._dead(exc) or self._in_transaction(conn):
            self._discard()

    @contextlib.contextmanager
    def transaction(self):
        """One transaction on this thread's connection (BEGIN IMMEDIATE on SQLite: the write lock up front)."""
        conn = self._begin()
        try:
            yield self._execute
            conn.execute("COMMIT")
        except BaseException as exc:
            self._rollback(exc)
            raise

    @contextlib.contextmanager
    def savepoint(self):
        """Inside transaction(): what the block writes is undone alone when it raises (the transaction goes on),
        so one statement the database refuses does not fail the others in the transaction. The same SQL on both."""
        self._execute("SAVEPOINT one")
        try:
            yield
        except BaseException:
            self._execute("ROLLBACK TO SAVEPOINT one")
            self._execute("RELEASE SAVEPOINT one")
            raise
        self._execute("RELEASE SAVEPOINT one")

    def in_transaction(self) -> bool:
        """Whether this thread's transaction is still open and usable (a failed savepoint leaves it so; a lost
        connection, or SQLite rolling back on a full disk, does not)."""
        if self.postgres:
            from psycopg import pq
            return self.conn.info.transaction_status == pq.TransactionStatus.INTRANS
        return self.conn.in_transaction

    def query(self, sql: str, params=()) -> list[tuple]:
        """A read (only reads come here): on a connection found dead it is asked again, once, on a new one."""
        for attempt in (0, 1):
            try:
                return [tuple(row) for row in self._execute(sql, params).fetchall()]
            except Exception as exc:
                if attempt or not self._dead(exc):
                    raise
                self._discard()

    def migrate(self) -> int:
        """Apply the migrations this database lacks; returns the schema version."""
        with self.transaction() as execute:
            if self.postgres:  # one migrator at a time when several coordinator replicas start together (the
                execute("SET LOCAL lock_timeout = 0")  # others wait for it, however long it takes)
                execute("SELECT pg_advisory_xact_lock(7426001)")
            execute("CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied REAL NOT NULL)")
            done = {v for (v,) in execute("SELECT version FROM schema_migrations").fetchall()}
            for version, script in enumerate(MIGRATIONS, start=1):
                if version in done:
                    continue
                for statement in (s.strip() for s in script.split(";")):
                    if statement:
                        execute(statement)
                execute("INSERT INTO schema_migrations (version, applied) VALUES (?, ?)", (version, time.time()))
        return len(MIGRATIONS)
