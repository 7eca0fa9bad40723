"""`fleetfit-agent run`: register with a coordinator, then run the profiles it asks for and report them.

Each job is leased: a heartbeat thread renews the lease while the profile runs, and the report carries
the lease's fencing token. Each result goes to the durable outbox before it is sent, so neither a
coordinator restart nor an agent crash loses it. Jobs are declarative: a job names a catalogue, real or cached
model, or a file that lies in a directory the device's owner allowed (--allow-dir). Each job has one deadline
(its timeout) over every phase, and a stop request (SIGTERM) ends the running job within a few seconds.
The agent runs one job at a time, under the device's run lock (a local `fleetfit-agent profile` takes it too, so
the two never compete for memory). A job whose campaign the operator cancels hears of it in its lease's heartbeat:
it is stopped like a SIGTERM stops it, the files it made in the cache are removed, and it is reported (cancelled).
After each job the cache is trimmed to its limit (model_cache.trim). A job that asks for a quality pass
(ProfileRequest.quality) has it after a successful run, under the same lock; its result goes to the outbox before the
job's.

The agent registers before its capability trials (so it is listed at once, as probing), stays in contact while
they run, and registers again with their results before it takes a job.

The coordinator's trouble is transient: unreachable at boot or later, slow, or answering any error, the agent
keeps trying with jittered backoff, forever, and logs at most one line per LOG_EVERY_S for each kind of failure.
Only refused credentials (UNAUTHENTICATED or PERMISSION_DENIED on Register or PollJob: revoked, or another
device's) end `run`, with exit status 2, which the systemd unit does not restart.
"""

import contextlib
import fcntl
import logging
import os
import pathlib
import threading
import time
import uuid

import grpc

from fleetfit.agent import device_probe, inventory, model_cache, model_fetch, profiling, quality
from fleetfit.agent.backends import registry
from fleetfit.agent.failover import Replicas
from fleetfit.agent.identity import Identity
from fleetfit.agent.outbox import Outbox, backoff_s, deliver, flush, reporter
from fleetfit.agent.isolation import Deadline, WorkerFailure, run_worker
from fleetfit.models.backends import DEFAULT_BACKEND
from fleetfit.models.errors import ModelError
from fleetfit.v1 import fleetfit_pb2 as pb
from fleetfit.v1.transport import CALL_TIMEOUT_S, CoordinatorUnreachable

log = logging.getLogger("fleetfit.agent")

# The agent is in touch with the coordinator at least this often (idle: long-polls; busy: lease heartbeats):
# the coordinator reports a device silent for three such periods as lost (store.LOST_AFTER_S).
CONTACT_S = 10.0
LOG_EVERY_S = 60.0  # at most one log line per kind of failure in this long
REFUSED_CREDENTIALS = {grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED}


class CredentialsRefused(Exception):
    """The coordinator refuses this agent's credentials (revoked, or another device's); one line for users."""


class QuietLog:
    """At most one warning per LOG_EVERY_S for each kind of failure, with how many there were since, and one line
    when it ends: an agent retrying all night through a coordinator outage writes a line a minute, not thousands."""

    def __init__(self, every_s: float = LOG_EVERY_S):
        self.every_s, self.last, self.count, self.since = every_s, {}, {}, {}
        self.lock = threading.Lock()

    def failed(self, kind: str, message: str) -> None:
        now = time.monotonic()
        with self.lock:
            self.count[kind] = self.count.get(kind, 0) + 1
            self.since.setdefault(kind, now)
            if now - self.last.get(kind, -self.every_s) < self.every_s:
                return
            self.last[kind] = now
            n = self.count[kind]
        log.warning("%s%s; retrying", message, f" ({n} failures in {now - self.since[kind]:.0f} s)" if n > 1 else "")

    def ended(self, kind: str) -> None:
        with self.lock:
            n, since = self.count.pop(kind, 0), self.since.pop(kind, None)
            self.last.pop(kind, None)
        if n:
            log.info("%s works again after %d failure(s) in %.0f s", kind, n, time.monotonic() - since)


def _failure(what: str, exc: grpc.RpcError) -> str:
    return f"{what} failed ({exc.code().name}: {(exc.details() or '').strip()[:300]})"


class LockError(Exception):
    """Another agent process holds this identity or outbox, or its lock cannot be made; one line for users."""


def hold_lock(path: pathlib.Path, what: str) -> int:
    """Take an exclusive lock on `path`.lock for the life of this process (the kernel drops it however the
    process ends) and return its descriptor; LockError when another process holds it."""
    lock_path = path.with_name(path.name + ".lock")
    try:
        lock_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise LockError(f"cannot create the lock {lock_path} ({exc.strerror})") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 20, 0).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise LockError(f"another fleetfit-agent (pid {holder}) is running with the {what} {path}; stop it "
                        f"first, or give this one its own --identity and --outbox") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def llama_system_info() -> str:
    """llama.cpp's llama_print_system_info() (build flags), from a worker; empty when llama.cpp is not installed."""
    if not registry.get(DEFAULT_BACKEND).probe().available:
        return ""
    try:
        return run_worker({"backend": DEFAULT_BACKEND, "op": "system_info"}, 60.0)["system_info"]
    except WorkerFailure as exc:
        return f"unavailable ({exc})"


def registration(device_id: str, cache_dir: pathlib.Path, trials: bool = True) -> pb.RegisterRequest:
    """What the coordinator learns about this device: its inventory with each backend's capabilities and the
    models it can obtain here, and its cached probes. Without `trials`, at once: the capability trials are left
    to run_trials and the inventory says they are pending."""
    device = inventory.collect(device_id, probes=device_probe.load_cached(cache_dir), cache_dir=cache_dir)
    if trials:
        run_trials(device)
    else:
        device.trials_pending = True
    return pb.RegisterRequest(inventory=device)


def run_trials(device: pb.DeviceInventory) -> None:
    """The capability trials, each in a worker process (seconds here, minutes on a small board with torch):
    llama.cpp's build flags and each available backend's capabilities. Clears trials_pending."""
    device.llama_system_info = llama_system_info()
    inventory.add_capabilities(device.backends)
    device.trials_pending = False


def _register_after_trials(stub, pending: pb.RegisterRequest, stop: threading.Event, quiet: QuietLog):
    """Run the capability trials in a thread while staying in contact (the pending registration again every
    CONTACT_S, so the device is listed as probing, not lost), then register with their results; that registration,
    or None once `stop` is set."""
    full = pb.RegisterRequest()
    full.CopyFrom(pending)
    done = threading.Event()

    def trials() -> None:
        began = time.monotonic()
        try:
            run_trials(full.inventory)
        except Exception:  # a bug must not leave the device probing for ever: report what the trials found
            log.exception("capability trials failed inside the agent")
            full.inventory.trials_pending = False
        finally:
            log.info("capability trials took %.1f s", time.monotonic() - began)
            done.set()

    threading.Thread(target=trials, name="capability-trials", daemon=True).start()
    contact = time.monotonic() + CONTACT_S
    while not done.wait(0.2):
        if stop.is_set():
            return None  # the trials' workers die with this process
        if time.monotonic() >= contact:
            contact = time.monotonic() + CONTACT_S
            try:
                stub.Register(pending, timeout=CALL_TIMEOUT_S)
                quiet.ended("registering")
            except grpc.RpcError as exc:
                if exc.code() in REFUSED_CREDENTIALS:
                    raise CredentialsRefused(f"the coordinator refused this agent ({exc.code().name}: "
                                             f"{exc.details()}): join again with a new token") from None
                quiet.failed("registering", _failure("registering", exc))
    return full if _until_answered(stub.Register, full, stop, quiet, "registering") is not None else None


def run_job(job: pb.Job, device_id: str, cache_dir: pathlib.Path,
            allowed_dirs: list[pathlib.Path] = (), stop: threading.Event | None = None,
            cache_limit_bytes: int | None = None, stub=None) -> pb.ProfileResult:
    """Always a result: bad input inside a job is reported as a failed result, and the daemon stays up. Files the
    job names must lie inside `allowed_dirs`; `stop` (SIGTERM, or the job's cancellation) ends the job within a
    few seconds. A job naming a stored model (ModelRef.sha256) fetches it first over `stub` (model_fetch)."""
    try:
        if job.request.model.sha256 and stub is not None:
            limit = model_cache.cache_limit_bytes(cache_dir) if cache_limit_bytes is None else cache_limit_bytes
            model_fetch.fetch(stub, device_id, job.request.model, cache_dir,
                              Deadline.after(job.request.timeout_s or profiling.DEFAULT_TIMEOUT_S, stop), limit)
        return profiling.profile(job.request, device_id, cache_dir, allowed_dirs=list(allowed_dirs), stop=stop,
                                 cache_limit_bytes=cache_limit_bytes)
    except ModelError as exc:  # ProfileInputError included
        error = str(exc)
    except WorkerFailure as exc:  # the fetch of a stored model passed the job's limit, or was stopped
        return pb.ProfileResult(result_id=str(uuid.uuid4()), device_id=device_id, request=job.request,
                                failure=profiling.FAILURE_KINDS[exc.failure], error=exc.message,
                                started_unix_s=time.time())
    except Exception as exc:  # a bug must not take the daemon down: report it and keep serving
        log.exception("job %s failed inside the agent", job.job_id)
        error = f"agent error: {type(exc).__name__}: {exc}"
    return pb.ProfileResult(result_id=str(uuid.uuid4()), device_id=device_id, request=job.request,
                            failure=pb.FAILURE_KIND_ERROR, error=error, started_unix_s=time.time())


def run_quality(job: pb.Job, result: pb.ProfileResult, cache_dir: pathlib.Path,
                stop: threading.Event | None = None) -> list[pb.ReportQualityRequest]:
    """The job's quality pass (ProfileRequest.quality: fleetfit profile --quality) after its successful profile, as a
    report for the outbox; none when the job asks for none, its run failed, or the pass cannot be made here (logged:
    the profile's result stands without it). The pass has its own deadline, the job's timeout, as the fetch has."""
    if not job.request.HasField("quality") or result.failure:
        return []
    try:
        found = quality.for_job(job.request, result, cache_dir,
                                Deadline.after(job.request.timeout_s or profiling.DEFAULT_TIMEOUT_S, stop))
    except (ModelError, WorkerFailure) as exc:
        log.warning("job %s: no quality pass: %s", job.job_id, getattr(exc, "message", None) or exc)
        return []
    return [pb.ReportQualityRequest(result=found)] if found is not None else []


def _until_answered(call, request, stop: threading.Event, quiet: QuietLog, what: str):
    """`call(request)`'s reply, trying again after any failure with jittered backoff, forever; None once `stop` is
    set. CredentialsRefused when the coordinator refuses this agent's credentials."""
    attempt = 0
    while not stop.is_set():
        try:
            reply = call(request, timeout=CALL_TIMEOUT_S)
        except grpc.RpcError as exc:
            if exc.code() in REFUSED_CREDENTIALS:
                raise CredentialsRefused(f"the coordinator refused this agent ({exc.code().name}: {exc.details()}): "
                                         "join again with a new token (fleetfit-agent join)") from None
            quiet.failed(what, _failure(what, exc))
            stop.wait(backoff_s(attempt))
            attempt += 1
            continue
        quiet.ended(what)
        return reply
    return None


def _release(stub, device_id: str, job: pb.Job, stop: threading.Event, attempts: int = 3) -> None:
    """Give a leased job back (a few tries); if that fails the job returns to the queue when its lease expires."""
    request = pb.ReleaseJobRequest(device_id=device_id, job_id=job.job_id, fence=job.fence)
    for attempt in range(attempts):
        try:
            stub.ReleaseJob(request, timeout=CALL_TIMEOUT_S)
            return
        except grpc.RpcError as exc:
            if attempt == attempts - 1 or exc.code() == grpc.StatusCode.FAILED_PRECONDITION:
                log.warning("job %s not handed back (%s); it returns to the queue when its lease expires",
                            job.job_id, exc.code().name)
                return
            stop.wait(backoff_s(attempt))


def _connect(identity: Identity, stop: threading.Event, timeout_s: float, quiet: QuietLog) -> Replicas | None:
    """The coordinator's replicas, connected to the first that answers, trying again (jittered backoff) until one
    does; None once `stop` is set. Once made, gRPC reconnects the channel by itself (transport.CHANNEL_OPTIONS bounds
    its backoff), and a call that finds its replica gone moves to the next (agent/failover.py)."""
    replicas, attempt = Replicas(identity, timeout_s), 0
    while not stop.is_set():
        try:
            replicas.connect()
        except CoordinatorUnreachable as exc:
            quiet.failed("connecting", str(exc))
            stop.wait(backoff_s(attempt))
            attempt += 1
            continue
        quiet.ended("connecting")
        return replicas
    return None


class JobStop:
    """What ends a running job: the agent's stop request (SIGTERM) or the job's cancellation; read as an Event by
    the job's Deadline, whose messages give `reason`."""

    def __init__(self, stop: threading.Event, cancelled: threading.Event):
        self.stop, self.cancelled = stop, cancelled

    def is_set(self) -> bool:
        return self.stop.is_set() or self.cancelled.is_set()

    def wait(self, timeout: float) -> bool:
        end = time.monotonic() + timeout
        while not self.is_set() and (left := end - time.monotonic()) > 0:
            self.stop.wait(min(left, 0.1))
        return self.is_set()

    @property
    def reason(self) -> str:
        return CANCELLED if self.cancelled.is_set() else "the agent was asked to stop"


CANCELLED = "cancelled by the operator (fleetfit campaign cancel)"


class LeaseKeeper(threading.Thread):
    """Renews a job's lease every third of its length (at least every CONTACT_S) until stopped; notes when the
    lease was lost, and sets `cancelled` when the coordinator says the job was cancelled."""

    def __init__(self, stub, device_id: str, job: pb.Job, quiet: QuietLog):
        super().__init__(daemon=True)
        self.stub, self.job, self.quiet = stub, job, quiet
        self.request = pb.HeartbeatRequest(device_id=device_id, job_id=job.job_id, fence=job.fence)
        self.done, self.lost, self.cancelled = threading.Event(), False, threading.Event()

    def run(self) -> None:
        while not self.done.wait(max(min(self.job.lease_s / 3, CONTACT_S), 0.05)):
            try:
                reply = self.stub.Heartbeat(self.request, timeout=min(CALL_TIMEOUT_S, max(self.job.lease_s / 3, 1.0)))
            except grpc.RpcError as exc:
                if exc.code() == grpc.StatusCode.FAILED_PRECONDITION:
                    log.warning("lease on job %s lost: %s", self.job.job_id, exc.details())
                    self.lost = True
                    return
                self.quiet.failed("heartbeat", _failure("heartbeat", exc))
            else:
                self.quiet.ended("heartbeat")
                if reply.cancelled and not self.cancelled.is_set():
                    log.info("job %s was cancelled: stopping it", self.job.job_id)
                    self.cancelled.set()


def run_lock_path(identity_path: pathlib.Path) -> pathlib.Path:
    """The device's run lock (model_cache.busy): beside its credentials, so every process of this enrolled device
    (the agent's jobs, its owner's `profile`) takes the same one."""
    return identity_path.with_name(identity_path.name + ".busy")


def _run_leased(job: pb.Job, keeper: LeaseKeeper, device_id: str, cache_dir: pathlib.Path, stop: threading.Event,
                allowed_dirs, run_lock: pathlib.Path | None,
                cache_limit_bytes: int | None) -> tuple[pb.ProfileResult, list[pb.ReportQualityRequest]]:
    """Run a leased job (and its quality pass) under the device's run lock; a cancelled job's new cache files are
    removed."""
    job_stop = JobStop(stop, keeper.cancelled)
    before = {path for *_, path, _ in model_cache.cached_models(cache_dir)}
    what = f"job {job.job_id} ({job.request.model.name or 'a file'} {job.request.quant})"
    try:
        with model_cache.busy(run_lock, what, stop=job_stop,
                              waiting=lambda holder: log.info("job %s waits: %s", job.job_id, holder)) \
                if run_lock else contextlib.nullcontext():
            result = run_job(job, device_id, cache_dir, allowed_dirs, job_stop, cache_limit_bytes, keeper.stub)
            measured = run_quality(job, result, cache_dir, job_stop)
    except model_cache.BusyError as exc:  # stopped (or cancelled) while waiting for the owner's own run
        result = pb.ProfileResult(result_id=str(uuid.uuid4()), device_id=device_id, request=job.request,
                                  failure=pb.FAILURE_KIND_ERROR, error=f"{job_stop.reason} while waiting: {exc}",
                                  started_unix_s=time.time())
        measured = []
    if keeper.cancelled.is_set():
        made = [path for *_, path, _ in model_cache.cached_models(cache_dir) if path not in before]
        removed = [path.name for path in made if model_cache.remove(path)]
        log.info("job %s cancelled%s", job.job_id, f"; removed {', '.join(removed)}" if removed else "")
    return result, measured


def serve_jobs(identity: Identity, cache_dir: pathlib.Path, stop: threading.Event, outbox: Outbox,
               connect_timeout_s: float = 10.0, poll_wait_s: float = 5.0,
               allowed_dirs: list[pathlib.Path] = (), run_lock: pathlib.Path | None = None,
               cache_limit_bytes: int | None = None, learned=None) -> int:
    """Run until `stop` is set, whatever the coordinator does (see the module's doc); returns the number of jobs
    run. CredentialsRefused when the coordinator refuses this agent's credentials. On stop, a job just leased is
    given back and a running one is ended (its worker killed) and reported as stopped. `run_lock`: the device's
    (run_lock_path); `cache_limit_bytes`: the cache's limit (None: model_cache's default); `learned(addresses)` is
    called when the replicas the coordinator advertises change (to keep them with the identity)."""
    device_id, quiet = identity.device_id, QuietLog()
    stub = _connect(identity, stop, connect_timeout_s, quiet)
    if stub is None:
        return 0
    register = registration(device_id, cache_dir, trials=False)  # visible at once: listed as probing
    jobs_run, failures = 0, 0
    with stub:
        if (reply := _until_answered(stub.Register, register, stop, quiet, "registering")) is None:
            return 0
        if (found := stub.learn(reply.coordinators)) is not None:
            log.info("coordinator replicas advertised: %s", ", ".join(found) or "none")
            if learned is not None:
                learned(found)
        log.info("registered %s with %s; capability trials running", device_id, stub.current)
        register = _register_after_trials(stub, register, stop, quiet)  # no jobs before: they may need them
        if register is None:
            return 0
        log.info("capability trials reported")
        while not stop.is_set():
            if len(outbox) and not flush(outbox, reporter(stub), stop, max_attempts=3):
                quiet.failed("delivering", f"{len(outbox)} result(s) wait in the outbox")
            try:
                reply = stub.PollJob(pb.PollJobRequest(device_id=device_id, wait_s=poll_wait_s),
                                     timeout=poll_wait_s + CALL_TIMEOUT_S)
            except grpc.RpcError as exc:
                if exc.code() == grpc.StatusCode.NOT_FOUND:  # the coordinator lost us (a new database)
                    log.warning("coordinator does not know this device; registering again")
                    _until_answered(stub.Register, register, stop, quiet, "registering")
                    continue
                if exc.code() in REFUSED_CREDENTIALS:
                    raise CredentialsRefused(f"the coordinator refused this agent ({exc.code().name}: "
                                             f"{exc.details()}): join again with a new token") from None
                quiet.failed("polling", _failure("polling for jobs", exc))
                stop.wait(backoff_s(failures))
                failures += 1
                continue
            failures = 0
            quiet.ended("polling")
            if not reply.HasField("job"):
                continue
            job = reply.job
            if stop.is_set():
                _release(stub, device_id, job, threading.Event())
                break
            log.info("job %s: %s %s", job.job_id, job.request.model.name or job.request.model.path, job.request.quant)
            keeper = LeaseKeeper(stub, device_id, job, quiet)
            keeper.start()
            try:
                result, measured = _run_leased(job, keeper, device_id, cache_dir, stop, allowed_dirs, run_lock,
                                               cache_limit_bytes)
            finally:
                keeper.done.set()
                keeper.join()
            for found in measured:  # before the job's result: the campaign ends with its quality rows stored
                deliver(outbox, reporter(stub), found, stop if not stop.is_set() else threading.Event())
            report = pb.ReportResultRequest(job_id=job.job_id, result=result, fence=job.fence)
            if not deliver(outbox, reporter(stub), report, stop if not stop.is_set() else threading.Event()):
                _release(stub, device_id, job, stop)  # lost (disk full, coordinator away): not an attempt burnt
            jobs_run += 1
    return jobs_run
