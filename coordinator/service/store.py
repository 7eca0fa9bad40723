"""The coordinator's store: devices, results, jobs with leases, campaigns and credentials — on SQLite or PostgreSQL.

Messages are stored as serialized protobuf beside the columns that queries need. Every write is one
transaction, so a crash never leaves half a result. Results are keyed by their agent-minted id and
ingested idempotently: the same id with the same payload is a duplicate (also when two replicas store it at the
same moment), with another payload an error; in a batch each result is written under its own savepoint.

Jobs are leased: a claim sets an expiry and bumps the job's fencing token; the agent renews the lease
with heartbeats and reports with the token it was given, so a report from an agent whose lease was
lost (and the job leased again) is refused. An expired lease puts the job back in the queue, or fails
it once it has used its attempts. A cancelled campaign's queued jobs are cancelled at once; its running ones are
'cancelling' (shown as running) until their agent, told by its next heartbeat, stops and reports them. On
PostgreSQL claims use `FOR UPDATE SKIP LOCKED`, so several coordinator replicas can serve one fleet.
"""

import dataclasses
import hashlib
import json
import logging
import pathlib
import secrets
import time
import uuid

from google.protobuf.message import DecodeError

from fleetfit.coordinator.service import ingest
from fleetfit.coordinator.service.db import Database
from fleetfit.v1 import fleetfit_pb2 as pb
from fleetfit.v1.words import JOB_STATE, upgrade

DEFAULT_LEASE_S = 60.0
DEFAULT_MAX_ATTEMPTS = 3
# Agents are in contact at least every 10 s (idle: PollJob long-polls; busy: lease heartbeats); a device
# silent for three such periods is reported lost.
LOST_AFTER_S = 30.0
# A replica re-advertises itself this often; one not heard from in REPLICA_FRESH_S is not offered to agents.
ADVERTISE_EVERY_S = 15.0
REPLICA_FRESH_S = 60.0
MAX_AS_STORED = 2_000_000  # result ids remembered by Store.results (~100 bytes each)
log = logging.getLogger("fleetfit.coordinator")


def decoded(kind, rows, what: str, keyed: bool = False):
    """The messages of (key, payload) rows, read as the contract reads them now; a payload that does not decode
    (corrupt bytes in the database) is skipped with one log line per key, so it cannot break an answer or an
    export. With `keyed`, (key, message) pairs."""
    for key, payload in rows:
        try:
            message = upgrade(kind.FromString(bytes(payload)))
        except DecodeError as exc:
            if (what, key) not in _undecodable and len(_undecodable) < 10_000:
                _undecodable.add((what, key))
                log.error("stored %s %r does not decode (%s): left out of every answer and export", what,
                          str(key)[:80], exc)
            continue
        yield (key, message) if keyed else message


_undecodable: set[tuple[str, str]] = set()  # logged once each


def same_payload(stored: bytes, message) -> bool:
    """Whether `message` is what `stored` holds: the same bytes, or the same once both are read as the contract
    reads them now (a result stored before the enums, resent by an agent's outbox, is the same result)."""
    if stored == message.SerializeToString(deterministic=True):
        return True
    a, b = type(message).FromString(stored), type(message).FromString(message.SerializeToString())
    for m in (a, b):
        upgrade(m).DiscardUnknownFields()
    return a.SerializeToString(deterministic=True) == b.SerializeToString(deterministic=True)


class ConflictingResult(Exception):
    """A result id that is already stored with a different payload."""


class UnknownDevice(Exception):
    """A device that has not registered."""


class ForeignJob(Exception):
    """A report for a job that belongs to another device (or does not exist)."""


class StaleLease(Exception):
    """A report or heartbeat for a job whose lease this agent no longer holds."""


class BadToken(Exception):
    """A join token that is unknown, expired or already used."""


class AlreadyEnrolled(Exception):
    """A join for a device id that is enrolled, with a token not bound to it (fleetfit token create --device)."""


class QuotaExceeded(Exception):
    """A device reported more than its quota allows; the message names the quota."""


class UnknownCampaign(Exception):
    """A campaign id that is not stored."""


# A running job whose campaign was cancelled: still leased to its device (its report is accepted) until the agent,
# told by its heartbeat, stops it and reports it; then (or when its lease expires) it is cancelled.
CANCELLING = "cancelling"
CANCEL_REQUESTED = "cancelled by the operator (fleetfit campaign cancel)"


@dataclasses.dataclass(frozen=True)
class Campaign:
    campaign_id: str
    selector: str
    created_unix_s: float
    spec: pb.CampaignSpec
    skipped: dict[str, list[str]]  # device id -> "what: why" for each combination not queued there


def device_status(inventory: pb.DeviceInventory, silent_s: float) -> int:
    """The one rule for a device's status word. Online: in contact within LOST_AFTER_S (a last contact later than
    that from now is no contact: a date an import or a clock carried in, so nothing shows online until a future
    date); probing: online, its capability trials not yet reported (inventory.trials_pending); else lost."""
    if abs(silent_s) > LOST_AFTER_S:
        return pb.DEVICE_STATUS_LOST
    return pb.DEVICE_STATUS_PROBING if inventory.trials_pending else pb.DEVICE_STATUS_ONLINE


def token_hash(secret: str) -> str:
    """Secrets are long random strings, so one SHA-256 is enough to keep them out of the database."""
    return hashlib.sha256(secret.encode()).hexdigest()


class Store:
    def __init__(self, url: pathlib.Path | str, quotas: ingest.Quotas = ingest.Quotas()):
        self.db = Database(url)
        self.path = self.db.url
        self.quotas = quotas
        self._as_stored: set[str] = set()  # ids of results answers may use as stored (see results)

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- devices

    def upsert_device(self, inventory: pb.DeviceInventory) -> None:
        now = time.time()
        with self.db.transaction() as execute:
            execute(
                "INSERT INTO devices (device_id, inventory, first_seen, last_seen) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (device_id) DO UPDATE SET inventory = excluded.inventory, last_seen = excluded.last_seen",
                (inventory.device_id, inventory.SerializeToString(), now, now),
            )

    def touch_device(self, device_id: str) -> None:
        with self.db.transaction() as execute:
            cur = execute("UPDATE devices SET last_seen = ? WHERE device_id = ?", (time.time(), device_id))
            if cur.rowcount == 0:
                raise UnknownDevice(device_id)

    def devices(self, device_id: str | None = None, now: float | None = None) -> list[pb.Device]:
        """Every device, or the one with `device_id`, each with its status (device_status) and labels.
        Devices are keyed by id only: coordinator/answers/devices.py finds one by hostname for people."""
        sql = "SELECT d.device_id, d.inventory, d.first_seen, d.last_seen, d.result_count, a.labels, d.refused, " \
              "d.last_refusal FROM devices d LEFT JOIN agents a ON a.device_id = d.device_id"
        rows = (self.db.query(sql + " WHERE d.device_id = ?", (device_id,)) if device_id
                else self.db.query(sql + " ORDER BY d.device_id"))
        now = now or time.time()
        # an inventory that does not decode leaves the device known by its id alone (answers need nothing else)
        inventories = {key: ingest.usable(inv) for key, inv in
                       decoded(pb.DeviceInventory, [(row[0], row[1]) for row in rows], "device inventory", keyed=True)}
        found = []
        for key, _, first, last, count, labels, refused, why in rows:
            inventory = inventories.get(key) or pb.DeviceInventory(device_id=key)
            found.append(pb.Device(inventory=inventory, first_seen_unix_s=first, last_seen_unix_s=last, results=count,
                                   device_status=device_status(inventory, now - last),
                                   labels=json.loads(labels) if labels else {}, refused=refused,
                                   last_refusal=why or ""))
        return found

    def set_seen(self, device_id: str, first_unix_s: float, last_unix_s: float) -> None:
        """When the device was first and last in contact (an imported device was never in contact here: its
        results' starts)."""
        with self.db.transaction() as execute:
            execute("UPDATE devices SET first_seen = ?, last_seen = ? WHERE device_id = ?",
                    (first_unix_s, last_unix_s, device_id))

    def count_refusal(self, device_id: str, reason: str) -> None:
        """One more refused report (or registration) from the device; the reason of the latest is kept."""
        with self.db.transaction() as execute:
            execute("UPDATE devices SET refused = refused + 1, last_refusal = ? WHERE device_id = ?",
                    (reason[:ingest.MAX_TEXT], device_id))

    def device_labels(self) -> dict[str, dict[str, str]]:
        """Labels each enrolled device was given by its join token."""
        return {d: json.loads(labels) for d, labels in self.db.query("SELECT device_id, labels FROM agents")}

    # -- results

    def add_result(self, result: pb.ProfileResult, job_id: str = "", fence: int = 0) -> bool:
        """Store one result (see add_results); raises what add_results would return for it."""
        (outcome,) = self.add_results([(result, job_id, fence)])
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    def add_results(self, reports: list[tuple[pb.ProfileResult, str, int]]) -> list[bool | Exception]:
        """Store results, each with the device's contact, in one transaction (one commit for many reports).

        Per report (result, job_id, fence): True when it was already stored (an acknowledged duplicate, also when
        another coordinator replica stores it at the same moment), False when stored now, or the refusal:
        ConflictingResult, ForeignJob, StaleLease (with a job, `fence` must be the token of the job's current lease
        held by the result's device), UnknownDevice, QuotaExceeded (self.quotas; a duplicate is never refused for
        quota) — or the database's own error for that report (text it cannot hold, a deadlock between replicas).
        Each report is written under a savepoint: one refused or failed leaves nothing and never fails the others.
        Only an error that ends the transaction (a lost connection, a full disk) fails the whole batch, raised.
        Reports are written in result-id order, so replicas writing overlapping batches lock rows in one order.
        """
        outcomes: list[bool | Exception] = [False] * len(reports)
        with self.db.transaction() as execute:
            for i in sorted(range(len(reports)), key=lambda i: reports[i][0].result_id):
                try:
                    with self.db.savepoint():
                        outcomes[i] = self._add_result(execute, *reports[i])
                except Exception as exc:  # that report's alone, unless the database ended the transaction
                    if not self.db.in_transaction():
                        raise
                    outcomes[i] = exc
        return outcomes

    def _add_result(self, execute, result: pb.ProfileResult, job_id: str, fence: int) -> bool:
        payload = result.SerializeToString(deterministic=True)
        now = time.time()
        row = execute("SELECT payload FROM results WHERE result_id = ?", (result.result_id,)).fetchone()
        if row is None:
            self._check_quotas(execute, result, now, len(payload))
            # A replica storing this id at this moment makes the insert wait for its commit and then do nothing: the
            # result is then a duplicate like any other (compared below), never a unique-key violation.
            if execute("INSERT INTO results (result_id, device_id, job_id, model_name, quant, backend, failure, "
                       "received, payload) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (result_id) DO NOTHING",
                       (result.result_id, result.device_id, job_id or None, result.model_name,
                        result.quant or result.request.quant, result.request.backend, int(result.failure), now,
                        payload)).rowcount == 1:
                self._finish_job(execute, result, job_id, fence, now)
                self._seen(execute, result.device_id, now, 1)
                return False
            row = execute("SELECT payload FROM results WHERE result_id = ?", (result.result_id,)).fetchone()
        if not same_payload(bytes(row[0]), result):
            raise ConflictingResult(f"result {result.result_id} is already stored with another payload")
        self._seen(execute, result.device_id, now, 0)
        return True

    @staticmethod
    def _finish_job(execute, result: pb.ProfileResult, job_id: str, fence: int, now: float) -> None:
        """The job (if any) done or failed by `result`: only the job's own device under its current lease."""
        if not job_id:
            return
        # a cancelled job's run that was stopped is cancelled; one that finished first is measured: done
        cur = execute(
            "UPDATE jobs SET state = CASE WHEN state = ? AND ? THEN 'cancelled' ELSE ? END, result_id = ?, error = ?, "
            "updated = ?, lease_expires = NULL WHERE job_id = ? AND device_id = ? AND state IN ('running', ?) "
            "AND fence = ?",
            (CANCELLING, bool(result.failure), "failed" if result.failure else "done", result.result_id,
             result.error or None, now, job_id, result.device_id, CANCELLING, fence))
        if cur.rowcount == 0:
            owner = execute("SELECT device_id FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
            if owner is None or owner[0] != result.device_id:
                raise ForeignJob(f"job {job_id} does not belong to device {result.device_id}")
            raise StaleLease(f"job {job_id} is not leased to {result.device_id} under fencing token {fence}")

    @staticmethod
    def _seen(execute, device_id: str, now: float, new_results: int) -> None:
        cur = execute("UPDATE devices SET last_seen = ?, result_count = result_count + ? WHERE device_id = ?",
                      (now, new_results, device_id))
        if cur.rowcount == 0:  # a job is leased only to a registered device: no job was updated either
            raise UnknownDevice(device_id)

    def _check_hourly(self, execute, table: str, device_id: str, now: float, size: int) -> None:
        """QuotaExceeded when one more record of `size` bytes would pass the device's results or bytes per hour."""
        count, held = execute(f"SELECT COUNT(*), COALESCE(SUM(LENGTH(payload)), 0) FROM {table} "
                              "WHERE device_id = ? AND received > ?", (device_id, now - 3600)).fetchone()
        if count >= self.quotas.results_per_hour:
            raise QuotaExceeded(f"quota of {self.quotas.results_per_hour} results per hour per device reached")
        if held + size > self.quotas.bytes_per_hour:
            raise QuotaExceeded(f"quota of {self.quotas.bytes_per_hour} bytes of results per hour per device reached "
                                f"({held} held, this one {size})")

    def _check_quotas(self, execute, result: pb.ProfileResult, now: float, size: int) -> None:
        self._check_hourly(execute, "results", result.device_id, now, size)
        day = (result.device_id, now - 86400)
        if execute("SELECT 1 FROM results WHERE device_id = ? AND received > ? AND model_name = ? LIMIT 1",
                   (*day, result.model_name)).fetchone() is None:
            (models,) = execute("SELECT COUNT(DISTINCT model_name) FROM results WHERE device_id = ? AND received > ?",
                                day).fetchone()
            if models >= self.quotas.models_per_day:
                raise QuotaExceeded(f"quota of {self.quotas.models_per_day} distinct models per day per device reached")

    def results(self, model_name: str | None = None, device_id: str | None = None) -> list[pb.ProfileResult]:
        """All results oldest first, or those of one model or one device (each by its index), as answers may use
        them: this is where every answer (tables, fit, the limit table, the report) reads results, so a figure
        that is not finite, or not positive where it must be, is dropped here (ingest.usable), once — results
        stored before ingest checked them cannot break an answer. Upgrading and cleaning walk the whole message in
        Python (~20x the decode); a stored payload never changes (its id is refused with other contents), so a
        result that needed neither is remembered by id and from then on only decoded."""
        where, params = [], []
        for column, value in (("model_name", model_name), ("device_id", device_id)):
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        sql = "SELECT result_id, payload FROM results" + (" WHERE " + " AND ".join(where) if where else "") + \
            " ORDER BY received"
        found = []
        for result_id, payload in self.db.query(sql, params):
            payload = bytes(payload)
            if result_id in self._as_stored:  # upgraded and cleaned once already, and needed neither
                found.append(pb.ProfileResult.FromString(payload))
                continue
            for result in decoded(pb.ProfileResult, [(result_id, payload)], "result"):  # none if it does not decode
                result = ingest.usable(result)
                if len(self._as_stored) < MAX_AS_STORED and result.SerializeToString(deterministic=True) == payload:
                    self._as_stored.add(result_id)
                found.append(result)
        return found

    def add_quality(self, result: pb.QualityResult) -> bool:
        """Store a quality result (checked by ingest.check_quality); True when it was already stored (the same
        id and payload), ConflictingResult for the same id with other contents, UnknownDevice, QuotaExceeded."""
        payload = result.SerializeToString(deterministic=True)
        with self.db.transaction() as execute:
            if execute("SELECT 1 FROM devices WHERE device_id = ?", (result.device_id,)).fetchone() is None:
                raise UnknownDevice(result.device_id)
            stored = "SELECT payload FROM quality_results WHERE result_id = ?"
            found = execute(stored, (result.result_id,)).fetchone()
            if found is None:
                self._check_hourly(execute, "quality_results", result.device_id, time.time(), len(payload))
                # as in _add_result: a replica storing this id at this moment makes it a duplicate, not a violation
                if execute("INSERT INTO quality_results (result_id, device_id, model_name, quant, received, payload) "
                           "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (result_id) DO NOTHING",
                           (result.result_id, result.device_id, result.model_name, result.quant, time.time(),
                            payload)).rowcount == 1:
                    return False
                found = execute(stored, (result.result_id,)).fetchone()
            if not same_payload(bytes(found[0]), result):
                raise ConflictingResult(f"quality result {result.result_id!r} was stored with other contents")
        return True

    def quality_results(self, model_name: str | None = None) -> list[pb.QualityResult]:
        """Every quality result oldest first (or one model's), as answers may use them: one that ingest would
        refuse today (stored before a bound existed) is left out (ingest.usable_quality)."""
        sql, params = "SELECT result_id, payload FROM quality_results", ()
        if model_name is not None:
            sql, params = sql + " WHERE model_name = ?", (model_name,)
        return [q for q in decoded(pb.QualityResult, self.db.query(sql + " ORDER BY received", params), "quality result")
                if ingest.usable_quality(q)]

    def result_count(self) -> int:
        return self.db.query("SELECT COUNT(*) FROM results")[0][0]

    def model_names(self) -> set[str]:
        return {name for (name,) in self.db.query("SELECT DISTINCT model_name FROM results")}

    # -- jobs and leases

    def enqueue(self, device_id: str, request: pb.ProfileRequest, campaign_id: str | None = None,
                max_attempts: int = DEFAULT_MAX_ATTEMPTS) -> str:
        return self.enqueue_many([(device_id, request)], campaign_id, max_attempts)[0]

    def enqueue_many(self, jobs: list[tuple[str, pb.ProfileRequest]], campaign_id: str | None = None,
                     max_attempts: int = DEFAULT_MAX_ATTEMPTS) -> list[str]:
        with self.db.transaction() as execute:
            return self._enqueue(execute, jobs, campaign_id, max_attempts)

    @staticmethod
    def _enqueue(execute, jobs, campaign_id, max_attempts) -> list[str]:
        ids = [str(uuid.uuid4()) for _ in jobs]
        now = time.time()
        for n, (job_id, (device_id, request)) in enumerate(zip(ids, jobs)):
            execute(
                "INSERT INTO jobs (job_id, device_id, campaign_id, request, state, created, updated, max_attempts) "
                "VALUES (?, ?, ?, ?, 'queued', ?, ?, ?)",
                (job_id, device_id, campaign_id, request.SerializeToString(), now + n * 1e-6, now, max_attempts),
            )
        return ids

    def open_jobs(self, device_id: str) -> list[tuple[str, pb.ProfileRequest]]:
        """(job id, request) of the device's jobs still to run or running, oldest first."""
        return [(j, pb.ProfileRequest.FromString(bytes(r))) for j, r in self.db.query(
            "SELECT job_id, request FROM jobs WHERE device_id = ? AND state IN ('queued', 'running') ORDER BY created",
            (device_id,))]

    def leased_jobs(self, device_id: str) -> list[tuple[str, pb.ProfileRequest]]:
        """(job id, request) of the jobs leased to the device now (running; not those being cancelled)."""
        return [(j, pb.ProfileRequest.FromString(bytes(r))) for j, r in self.db.query(
            "SELECT job_id, request FROM jobs WHERE device_id = ? AND state = 'running'", (device_id,))]

    def queued_campaign_jobs(self, device_id: str) -> list[tuple[str, pb.ProfileRequest]]:
        """(job id, request) of the device's campaign jobs still waiting to be leased."""
        return [(j, pb.ProfileRequest.FromString(bytes(r))) for j, r in self.db.query(
            "SELECT job_id, request FROM jobs WHERE device_id = ? AND state = 'queued' AND campaign_id IS NOT NULL",
            (device_id,))]

    def skip_queued(self, device_id: str, reasons: dict[str, str]) -> int:
        """Take the device's queued campaign jobs named in `reasons` (job id -> "what: why") off the queue and list
        each with its campaign's skipped combinations, in one transaction: what the device's capability trials,
        reported after the campaign queued them, rule out. A job leased meanwhile stays. Returns how many."""
        lock = " FOR UPDATE" if self.db.postgres else ""  # two devices' trials may end at once in one campaign
        skipped = 0
        with self.db.transaction() as execute:
            for job_id, reason in reasons.items():
                row = execute("DELETE FROM jobs WHERE job_id = ? AND device_id = ? AND state = 'queued' "
                              "AND campaign_id IS NOT NULL RETURNING campaign_id", (job_id, device_id)).fetchone()
                if row is None:
                    continue
                (text,) = execute(f"SELECT skipped FROM campaigns WHERE campaign_id = ?{lock}", (row[0],)).fetchone()
                found = json.loads(text)
                found.setdefault(device_id, []).append(reason)
                execute("UPDATE campaigns SET skipped = ? WHERE campaign_id = ?",
                        (json.dumps(found, sort_keys=True), row[0]))
                skipped += 1
        return skipped

    def devices_with_queued_jobs(self) -> set[str]:
        return {d for (d,) in self.db.query("SELECT DISTINCT device_id FROM jobs WHERE state = 'queued'")}

    def expire_leases(self, now: float | None = None) -> int:
        """Re-queue the jobs whose lease expired, or fail those that used all their attempts (cancel those being
        cancelled)."""
        now = now or time.time()
        with self.db.transaction() as execute:
            cur = execute(
                "UPDATE jobs SET updated = ?, lease_expires = NULL, "
                "state = CASE WHEN state = ? THEN 'cancelled' WHEN attempts >= max_attempts THEN 'failed' "
                "ELSE 'queued' END, "
                "error = CASE WHEN state = ? THEN ? "
                "WHEN attempts >= max_attempts "
                "THEN 'lease expired on each of ' || attempts || ' attempts (agent lost or stuck)' "
                "ELSE 'lease expired on attempt ' || attempts END "
                "WHERE state IN ('running', ?) AND lease_expires < ?",
                (now, CANCELLING, CANCELLING, CANCEL_REQUESTED + "; its device did not report it before its lease expired",
                 CANCELLING, now))
            return cur.rowcount

    def claim_job(self, device_id: str, lease_s: float = DEFAULT_LEASE_S) -> pb.Job | None:
        """Lease the device its oldest queued job: state running, a new fencing token, one more attempt."""
        now = time.time()
        skip_locked = " FOR UPDATE SKIP LOCKED" if self.db.postgres else ""
        with self.db.transaction() as execute:
            row = execute(
                "UPDATE jobs SET state = 'running', updated = ?, lease_expires = ?, fence = fence + 1, "
                "attempts = attempts + 1 WHERE job_id = ("
                "SELECT job_id FROM jobs WHERE device_id = ? AND state = 'queued' ORDER BY created LIMIT 1"
                f"{skip_locked}) RETURNING job_id, request, fence",
                (now, now + lease_s, device_id),
            ).fetchone()
        if row is None:
            return None
        return pb.Job(job_id=row[0], request=pb.ProfileRequest.FromString(bytes(row[1])), fence=row[2],
                      lease_s=lease_s)

    def renew_lease(self, device_id: str, job_id: str, fence: int, lease_s: float = DEFAULT_LEASE_S) -> bool:
        """Renew the lease; True when the job was cancelled (its agent stops it and reports it)."""
        now = time.time()
        with self.db.transaction() as execute:
            execute("UPDATE devices SET last_seen = ? WHERE device_id = ?", (now, device_id))
            row = execute("UPDATE jobs SET lease_expires = ?, updated = ? WHERE job_id = ? AND device_id = ? "
                          "AND state IN ('running', ?) AND fence = ? RETURNING state",
                          (now + lease_s, now, job_id, device_id, CANCELLING, fence)).fetchone()
            if row is None:
                raise StaleLease(f"job {job_id} is not leased to {device_id} under fencing token {fence}")
        return row[0] == CANCELLING

    def release_job(self, device_id: str, job_id: str, fence: int) -> None:
        """The agent gives the job back unrun (it is stopping): queued again, the attempt not counted (cancelled,
        when its campaign was)."""
        with self.db.transaction() as execute:
            cur = execute("UPDATE jobs SET state = CASE WHEN state = ? THEN 'cancelled' ELSE 'queued' END, "
                          "lease_expires = NULL, attempts = attempts - 1, updated = ? WHERE job_id = ? AND "
                          "device_id = ? AND state IN ('running', ?) AND fence = ?",
                          (CANCELLING, time.time(), job_id, device_id, CANCELLING, fence))
            if cur.rowcount == 0:
                raise StaleLease(f"job {job_id} is not leased to {device_id} under fencing token {fence}")

    def jobs(self, job_ids: list[str]) -> list[pb.JobStatus]:
        if not job_ids:
            return []
        marks = ",".join("?" * len(job_ids))
        return self._job_statuses(f"WHERE job_id IN ({marks})", job_ids)

    def campaign_jobs(self, campaign_id: str) -> list[pb.JobStatus]:
        return self._job_statuses("WHERE campaign_id = ?", [campaign_id])

    def _job_statuses(self, where: str, params: list) -> list[pb.JobStatus]:
        rows = self.db.query(f"SELECT job_id, device_id, state, result_id, error, attempts FROM jobs {where} "
                             "ORDER BY created", params)
        # a job being cancelled still runs on its device until the agent stops it: shown running, saying so
        return [pb.JobStatus(job_id=j, device_id=d, job_state=JOB_STATE.code("running" if s == CANCELLING else s),
                             result_id=r or "", error=(CANCEL_REQUESTED + ": its device is stopping it"
                                                       if s == CANCELLING else e or ""), attempts=a)
                for j, d, s, r, e, a in rows]

    # -- campaigns

    def create_campaign(self, selector: str, spec: pb.CampaignSpec, jobs: list[tuple[str, pb.ProfileRequest]],
                        max_attempts: int = DEFAULT_MAX_ATTEMPTS, skipped: dict[str, list[str]] | None = None) -> str:
        """The campaign, its jobs and what it skipped on each device, in one transaction."""
        campaign_id = uuid.uuid4().hex[:12]
        with self.db.transaction() as execute:
            execute("INSERT INTO campaigns (campaign_id, selector, created, spec, skipped) VALUES (?, ?, ?, ?, ?)",
                    (campaign_id, selector, time.time(), spec.SerializeToString(),
                     json.dumps(skipped or {}, sort_keys=True)))
            self._enqueue(execute, jobs, campaign_id, max_attempts)
        return campaign_id

    def campaigns(self, campaign_id: str | None = None) -> list[Campaign]:
        sql = "SELECT campaign_id, selector, created, spec, skipped FROM campaigns"
        rows = (self.db.query(sql + " WHERE campaign_id = ?", (campaign_id,)) if campaign_id is not None
                else self.db.query(sql + " ORDER BY created"))
        return [Campaign(c, s, t, pb.CampaignSpec.FromString(bytes(spec)), json.loads(skipped))
                for c, s, t, spec, skipped in rows]

    def cancel_campaign(self, campaign_id: str) -> tuple[int, int]:
        """Cancel a campaign: its queued jobs now, its running ones once their agents stop them (see CANCELLING).
        (dropped, stopping): the jobs this call changed (0, 0 again: idempotent); UnknownCampaign."""
        now = time.time()
        with self.db.transaction() as execute:
            if execute("SELECT 1 FROM campaigns WHERE campaign_id = ?", (campaign_id,)).fetchone() is None:
                raise UnknownCampaign(campaign_id)
            dropped = execute("UPDATE jobs SET state = 'cancelled', error = ?, updated = ? WHERE campaign_id = ? "
                              "AND state = 'queued'", (CANCEL_REQUESTED, now, campaign_id)).rowcount
            stopping = execute("UPDATE jobs SET state = ?, updated = ? WHERE campaign_id = ? AND state = 'running'",
                               (CANCELLING, now, campaign_id)).rowcount
        return dropped, stopping

    def campaign(self, campaign_id: str) -> "Campaign | None":
        found = self.campaigns(campaign_id)
        return found[0] if found else None

    # -- enrollment

    def create_join_token(self, labels: dict[str, str], expires_s: float, device_id: str | None = None) -> str:
        """A one-time join token; with `device_id`, only that device may spend it, and when it is enrolled already
        spending it re-enrolls it (its old credential revoked): the one way to take over an enrolled id."""
        secret = secrets.token_urlsafe(24)
        now = time.time()
        with self.db.transaction() as execute:
            execute("INSERT INTO join_tokens (token_hash, labels, created, expires, device_id) VALUES (?, ?, ?, ?, ?)",
                    (token_hash(secret), json.dumps(labels, sort_keys=True), now, now + expires_s, device_id))
        return secret

    def redeem_join_token(self, secret: str, device_id: str) -> str:
        """Spend a join token for `device_id` and return the agent's new secret (once per token).

        An enrolled device id is refused (AlreadyEnrolled) unless the token is bound to it; then its secret is
        replaced and a revocation lifted. Nothing is written for a refused join: the token stays unspent."""
        now = time.time()
        agent_secret = secrets.token_urlsafe(32)
        with self.db.transaction() as execute:
            row = execute("SELECT labels, expires, used_by, device_id FROM join_tokens WHERE token_hash = ?",
                          (token_hash(secret),)).fetchone()
            if row is None:
                raise BadToken("unknown join token")
            labels, expires, used_by, bound_to = row
            if used_by is not None:
                raise BadToken("join token was already used")
            if expires < now:
                raise BadToken("join token has expired")
            if bound_to is not None and bound_to != device_id:
                raise BadToken(f"this join token is for device {bound_to!r}")
            enrolled = execute("SELECT labels FROM agents WHERE device_id = ?", (device_id,)).fetchone()
            if enrolled is not None and bound_to is None:
                raise AlreadyEnrolled(f"device {device_id!r} is already enrolled: to re-enroll it, an operator makes "
                                      f"a token with fleetfit token create --device {device_id} (its old credential "
                                      "is revoked when that token is spent)")
            if enrolled is not None and labels == "{}":
                labels = enrolled[0]  # re-enrolled without new labels: it keeps its own
            # Concurrent joins all read the token unused above; the conditional writes decide: the first to spend
            # the token (the others wait for its commit, then find it used), the first to enroll an unbound id.
            if execute("UPDATE join_tokens SET used_by = ?, used_at = ? WHERE token_hash = ? AND used_by IS NULL",
                       (device_id, now, token_hash(secret))).rowcount == 0:
                raise BadToken("join token was already used")
            enroll = ("DO UPDATE SET secret_hash = excluded.secret_hash, labels = excluded.labels, revoked = NULL"
                      if bound_to is not None else "DO NOTHING")
            if execute("INSERT INTO agents (device_id, secret_hash, labels, created) VALUES (?, ?, ?, ?) "
                       f"ON CONFLICT (device_id) {enroll}",
                       (device_id, token_hash(agent_secret), labels, now)).rowcount == 0:
                raise AlreadyEnrolled(f"device {device_id!r} was enrolled by another join at the same moment")
        return agent_secret

    def revoke_agent(self, device_id: str) -> None:
        """The enrolled agent's credential stops working (UnknownDevice when it never enrolled); it joins again
        only with a token bound to its id."""
        with self.db.transaction() as execute:
            if execute("UPDATE agents SET revoked = ? WHERE device_id = ?", (time.time(), device_id)).rowcount == 0:
                raise UnknownDevice(device_id)

    def agent_secret_hash(self, device_id: str) -> str | None:
        """The hash of an enrolled agent's secret; None when it never enrolled or was revoked."""
        rows = self.db.query("SELECT secret_hash FROM agents WHERE device_id = ? AND revoked IS NULL", (device_id,))
        return rows[0][0] if rows else None

    def add_operator_token(self) -> str:
        secret = secrets.token_urlsafe(32)
        with self.db.transaction() as execute:
            execute("INSERT INTO operator_tokens (token_hash, created) VALUES (?, ?)", (token_hash(secret), time.time()))
        return secret

    def has_operator_tokens(self) -> bool:
        return bool(self.db.query("SELECT 1 FROM operator_tokens LIMIT 1"))

    def is_operator_token(self, secret: str) -> bool:
        return bool(self.db.query("SELECT 1 FROM operator_tokens WHERE token_hash = ?", (token_hash(secret),)))

    # -- replicas

    def advertise(self, address: str, now: float | None = None) -> None:
        """Say that the replica serving agents at `address` is up (again every ADVERTISE_EVERY_S)."""
        with self.db.transaction() as execute:
            execute("INSERT INTO replicas (address, seen) VALUES (?, ?) "
                    "ON CONFLICT (address) DO UPDATE SET seen = excluded.seen", (address, now or time.time()))

    def withdraw(self, address: str) -> None:
        """A replica stopping gracefully is no longer advertised."""
        with self.db.transaction() as execute:
            execute("DELETE FROM replicas WHERE address = ?", (address,))

    def replicas(self, now: float | None = None) -> list[str]:
        """The addresses of the replicas that advertised themselves within REPLICA_FRESH_S, sorted."""
        since = (now or time.time()) - REPLICA_FRESH_S
        return [a for (a,) in self.db.query("SELECT address FROM replicas WHERE seen >= ? ORDER BY address",
                                            (since,))]
