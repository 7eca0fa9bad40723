"""`fleetfit-agent run`: register with a coordinator, then run the profiles it asks for and report them."""

import logging
import pathlib
import random
import threading
import time
import uuid

import grpc

from fleetfit.agent import inventory, profiling
from fleetfit.agent.isolation import WorkerFailure, run_worker
from fleetfit.models.errors import ModelError
from fleetfit.v1 import fleetfit_pb2 as pb
from fleetfit.v1 import fleetfit_pb2_grpc as pb_grpc
from fleetfit.v1.transport import connect

log = logging.getLogger("fleetfit.agent")

CALL_TIMEOUT_S = 15.0
TRANSIENT = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.RESOURCE_EXHAUSTED}


def llama_system_info() -> str:
    try:
        return run_worker({"op": "system_info"}, 60.0)["system_info"]
    except WorkerFailure as exc:
        return f"unavailable ({exc})"


def run_job(job: pb.Job, device_id: str, cache_dir: pathlib.Path) -> pb.ProfileResult:
    """Always a result: bad input inside a job is reported as a failed result, and the daemon stays up."""
    try:
        return profiling.profile(job.request, device_id, cache_dir)
    except (ModelError, profiling.ProfileInputError) as exc:
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
            delay = min(30.0, 0.5 * 2 ** attempt) * random.uniform(0.5, 1.0)
            log.warning("coordinator call failed (%s); retrying in %.1f s", exc.code().name, delay)
            stop.wait(delay)


def serve_jobs(address: str, device_id: str, cache_dir: pathlib.Path, stop: threading.Event,
               connect_timeout_s: float = 10.0, poll_wait_s: float = 5.0) -> int:
    """Run until `stop` is set; returns the number of jobs run. The current job finishes before stopping."""
    channel = connect(address, connect_timeout_s)
    stub = pb_grpc.AgentServiceStub(channel)
    register = pb.RegisterRequest(inventory=inventory.collect(device_id, llama_system_info()))
    _call_with_retry(stub.Register, register, stop)
    log.info("registered %s with %s", device_id, address)
    jobs_run = 0
    with channel:
        while not stop.is_set():
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
            log.info("job %s: %s %s", reply.job.job_id, reply.job.request.model.name or reply.job.request.model.path,
                     reply.job.request.quant)
            result = run_job(reply.job, device_id, cache_dir)
            _call_with_retry(stub.ReportResult, pb.ReportResultRequest(job_id=reply.job.job_id, result=result), stop)
            jobs_run += 1
    return jobs_run
