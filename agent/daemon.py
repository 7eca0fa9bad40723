"""`fleetfit-agent run`: register with a coordinator, then run the profiles it asks for and report them.

Each job is leased: a heartbeat thread renews the lease while the profile runs, and the report carries
the lease's fencing token. Each result goes to the durable outbox before it is sent, so neither a
coordinator restart nor an agent crash loses it. Jobs are declarative: a job names a catalogue, real or cached
model, or a file that lies in a directory the device's owner allowed (--allow-dir). Each job has one deadline
(its timeout) over every phase, and a stop request (SIGTERM) ends the running job within a few seconds.
"""

import fcntl
import logging
import os
import pathlib
import threading
import time
import uuid

import grpc

from fleetfit.agent import device_probe, inventory, profiling
from fleetfit.agent.backends import registry
from fleetfit.agent.identity import Identity
from fleetfit.agent.outbox import TRANSIENT, Outbox, backoff_s, deliver, flush
from fleetfit.agent.isolation import WorkerFailure, run_worker
from fleetfit.models.backends import DEFAULT_BACKEND
from fleetfit.models.errors import ModelError
from fleetfit.v1 import fleetfit_pb2 as pb
from fleetfit.v1 import fleetfit_pb2_grpc as pb_grpc

log = logging.getLogger("fleetfit.agent")

CALL_TIMEOUT_S = 15.0
# The agent is in touch with the coordinator at least this often (idle: long-polls; busy: lease heartbeats):
# the coordinator reports a device silent for three such periods as lost (store.LOST_AFTER_S).
CONTACT_S = 10.0


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


def registration(device_id: str, cache_dir: pathlib.Path) -> pb.RegisterRequest:
    """What the coordinator learns about this device: its inventory with each backend's capabilities and the
    models it can obtain here, and its cached probes."""
    device = inventory.collect(device_id, llama_system_info(), probes=device_probe.load_cached(cache_dir),
                               cache_dir=cache_dir)
    inventory.add_capabilities(device.backends)
    return pb.RegisterRequest(inventory=device)


def run_job(job: pb.Job, device_id: str, cache_dir: pathlib.Path,
            allowed_dirs: list[pathlib.Path] = (), stop: threading.Event | None = None) -> pb.ProfileResult:
    """Always a result: bad input inside a job is reported as a failed result, and the daemon stays up. Files the
    job names must lie inside `allowed_dirs`; `stop` (SIGTERM) ends the job within a few seconds."""
    try:
        return profiling.profile(job.request, device_id, cache_dir, allowed_dirs=list(allowed_dirs), stop=stop)
    except ModelError as exc:  # ProfileInputError included
        error = str(exc)
    except Exception as exc:  # a bug must not take the daemon down: report it and keep serving
        log.exception("job %s failed inside the agent", job.job_id)
        error = f"agent error: {type(exc).__name__}: {exc}"
    return pb.ProfileResult(result_id=str(uuid.uuid4()), device_id=device_id, request=job.request,
                            failure=pb.FAILURE_KIND_ERROR, error=error, started_unix_s=time.time())


def _call_with_retry(call, request, stop: threading.Event, attempts: int = 8):
    """Retry transient gRPC failures with jittered exponential backoff."""
    for attempt in range(attempts):
        try:
            return call(request, timeout=CALL_TIMEOUT_S)
        except grpc.RpcError as exc:
            if exc.code() not in TRANSIENT or attempt == attempts - 1 or stop.is_set():
                raise
            delay = backoff_s(attempt)
            log.warning("coordinator call failed (%s); retrying in %.1f s", exc.code().name, delay)
            stop.wait(delay)


class LeaseKeeper(threading.Thread):
    """Renews a job's lease every third of its length (at least every CONTACT_S) until stopped; notes when the
    lease was lost."""

    def __init__(self, stub, device_id: str, job: pb.Job):
        super().__init__(daemon=True)
        self.stub, self.job = stub, job
        self.request = pb.HeartbeatRequest(device_id=device_id, job_id=job.job_id, fence=job.fence)
        self.done, self.lost = threading.Event(), False

    def run(self) -> None:
        while not self.done.wait(max(min(self.job.lease_s / 3, CONTACT_S), 0.05)):
            try:
                self.stub.Heartbeat(self.request, timeout=min(CALL_TIMEOUT_S, max(self.job.lease_s / 3, 1.0)))
            except grpc.RpcError as exc:
                if exc.code() == grpc.StatusCode.FAILED_PRECONDITION:
                    log.warning("lease on job %s lost: %s", self.job.job_id, exc.details())
                    self.lost = True
                    return
                log.warning("heartbeat failed (%s); retrying", exc.code().name)


def serve_jobs(identity: Identity, cache_dir: pathlib.Path, stop: threading.Event, outbox: Outbox,
               connect_timeout_s: float = 10.0, poll_wait_s: float = 5.0,
               allowed_dirs: list[pathlib.Path] = ()) -> int:
    """Run until `stop` is set; returns the number of jobs run. On stop, a job just leased is given back
    and a running one is ended (its worker killed) and reported as stopped."""
    device_id = identity.device_id
    channel = identity.connect(connect_timeout_s)
    stub = pb_grpc.AgentServiceStub(channel)
    register = registration(device_id, cache_dir)
    _call_with_retry(stub.Register, register, stop)
    log.info("registered %s with %s", device_id, identity.coordinator)
    jobs_run = 0
    with channel:
        while not stop.is_set():
            if len(outbox):  # kept results first; if the coordinator is away (or lost us) the poll below says so
                flush(outbox, stub.ReportResult, stop, max_attempts=3)
            try:
                reply = stub.PollJob(pb.PollJobRequest(device_id=device_id, wait_s=poll_wait_s),
                                     timeout=poll_wait_s + CALL_TIMEOUT_S)
            except grpc.RpcError as exc:
                if exc.code() == grpc.StatusCode.NOT_FOUND:  # the coordinator lost us (a new database)
                    log.warning("coordinator does not know this device; registering again")
                    _call_with_retry(stub.Register, register, stop)
                    continue
                if exc.code() not in TRANSIENT:
                    raise
                log.warning("coordinator unavailable (%s); retrying", exc.code().name)
                stop.wait(1.0)
                continue
            if not reply.HasField("job"):
                continue
            job = reply.job
            if stop.is_set():
                _call_with_retry(stub.ReleaseJob, pb.ReleaseJobRequest(device_id=device_id, job_id=job.job_id,
                                                                       fence=job.fence), threading.Event(), 3)
                break
            log.info("job %s: %s %s", job.job_id, job.request.model.name or job.request.model.path, job.request.quant)
            keeper = LeaseKeeper(stub, device_id, job)
            keeper.start()
            try:
                result = run_job(job, device_id, cache_dir, allowed_dirs, stop)
            finally:
                keeper.done.set()
                keeper.join()
            report = pb.ReportResultRequest(job_id=job.job_id, result=result, fence=job.fence)
            if not deliver(outbox, stub.ReportResult, report, stop if not stop.is_set() else threading.Event()):
                try:  # the result is lost (disk full, coordinator away): give the job back, not an attempt burnt
                    _call_with_retry(stub.ReleaseJob, pb.ReleaseJobRequest(device_id=device_id, job_id=job.job_id,
                                                                           fence=job.fence), stop, 3)
                except grpc.RpcError as exc:
                    log.warning("job %s not handed back (%s); it returns to the queue when its lease expires",
                                job.job_id, exc.code().name)
            jobs_run += 1
    return jobs_run
