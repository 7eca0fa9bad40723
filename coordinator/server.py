"""The coordinator's gRPC server (grpc.aio). Servicers only translate between messages and the store."""

import asyncio
import logging
import pathlib
import threading

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from fleetfit.coordinator import fit as fit_answers
from fleetfit.coordinator import tables
from fleetfit.coordinator.limits import limit_rows
from fleetfit.coordinator.store import ConflictingResult, Store, UnknownDevice
from fleetfit.models.errors import ModelError
from fleetfit.models.quants import parse_quant
from fleetfit.models.real_models import REAL_MODELS
from fleetfit.v1 import fleetfit_pb2 as pb
from fleetfit.v1 import fleetfit_pb2_grpc as pb_grpc
from fleetfit.v1.transport import SERVER_OPTIONS

log = logging.getLogger("fleetfit.coordinator")

SERVICE_NAMES = [d.full_name for d in pb.DESCRIPTOR.services_by_name.values()]
MAX_POLL_WAIT_S = 30.0
POLL_INTERVAL_S = 0.2


def check_profile_request(request: pb.ProfileRequest) -> str | None:
    """Why a profile request cannot be queued, or None."""
    if not (request.model.name or request.model.path):
        return "the request names no model"
    for field in ("n_prompt", "n_gen", "repetitions"):
        if getattr(request, field) < 1:
            return f"{field} must be at least 1"
    if request.threads < 0:
        return "threads must not be negative"
    if request.quant:
        try:
            parse_quant(request.quant)
        except ModelError as exc:
            return str(exc)
    return None


class AgentService(pb_grpc.AgentServiceServicer):
    def __init__(self, store: Store):
        self.store = store

    async def Register(self, request, context):
        if not request.inventory.device_id:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "inventory.device_id is empty")
        self.store.upsert_device(request.inventory)
        return pb.RegisterResponse(device_id=request.inventory.device_id)

    async def PollJob(self, request, context):
        try:
            self.store.touch_device(request.device_id)
        except UnknownDevice:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"device {request.device_id!r} has not registered")
        deadline = asyncio.get_running_loop().time() + min(max(request.wait_s, 0.0), MAX_POLL_WAIT_S)
        while True:
            job = self.store.claim_job(request.device_id)
            if job is not None:
                return pb.PollJobResponse(job=job)
            if asyncio.get_running_loop().time() >= deadline:
                return pb.PollJobResponse()
            await asyncio.sleep(POLL_INTERVAL_S)

    async def ReportResult(self, request, context):
        result = request.result
        if not result.result_id or not result.device_id:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "result_id and device_id are required")
        try:
            self.store.touch_device(result.device_id)
        except UnknownDevice:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"device {result.device_id!r} has not registered")
        if request.job_id and self.store.job_device(request.job_id) != result.device_id:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED,
                                f"job {request.job_id} does not belong to device {result.device_id}")
        try:
            duplicate = self.store.add_result(result, request.job_id)
        except ConflictingResult as exc:
            await context.abort(grpc.StatusCode.ALREADY_EXISTS, str(exc))
        return pb.ReportResultResponse(duplicate=duplicate)


class FleetService(pb_grpc.FleetServiceServicer):
    def __init__(self, store: Store):
        self.store = store

    async def ListDevices(self, request, context):
        return pb.ListDevicesResponse(devices=self.store.devices())

    async def SubmitProfile(self, request, context):
        problem = check_profile_request(request.request)
        if problem:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, problem)
        known = [d.inventory.device_id for d in self.store.devices()]
        targets = list(request.device_ids) or known
        missing = sorted(set(targets) - set(known))
        if missing:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"unknown devices: {', '.join(missing)}")
        return pb.SubmitProfileResponse(job_ids=[self.store.enqueue(d, request.request) for d in targets])

    async def GetJobs(self, request, context):
        return pb.GetJobsResponse(jobs=self.store.jobs(list(request.job_ids)))

    async def GetLimitTable(self, request, context):
        return pb.GetLimitTableResponse(rows=limit_rows(self.store.results(), self.store.devices()))

    async def Fit(self, request, context):
        try:
            quant = parse_quant(request.quant)
            fit_answers.check_model_known(request.model_name, self.store.model_names() | set(REAL_MODELS))
        except (ModelError, fit_answers.UnknownModel) as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        devices = self.store.devices()
        rows = limit_rows(self.store.results(), devices)
        min_tps = request.min_decode_tokens_per_s if request.HasField("min_decode_tokens_per_s") else None
        answers = fit_answers.fit(request.model_name, quant, request.backend or "llama.cpp", devices, rows, min_tps)
        return pb.FitResponse(answers=answers)

    async def ListTables(self, request, context):
        return pb.ListTablesResponse(tables=[pb.Table(name=t.name, title=t.title) for t in tables.TABLES.values()])

    async def GetTable(self, request, context):
        fleet = tables.Fleet(results=self.store.results(), devices=self.store.devices())
        try:
            return tables.build(request.name, fleet, dict(request.options))
        except tables.TableError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))


class ListenError(Exception):
    """The server could not bind its address."""


async def start_server(store: Store, listen: str) -> tuple[grpc.aio.Server, health.aio.HealthServicer, int]:
    server = grpc.aio.server(options=SERVER_OPTIONS)
    pb_grpc.add_AgentServiceServicer_to_server(AgentService(store), server)
    pb_grpc.add_FleetServiceServicer_to_server(FleetService(store), server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    try:
        port = server.add_insecure_port(listen)
    except RuntimeError as exc:
        raise ListenError(f"cannot listen on {listen}: {exc}") from None
    await server.start()
    for name in ["", *SERVICE_NAMES]:
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    return server, health_servicer, port


async def stop_server(server: grpc.aio.Server, health_servicer, grace_s: float = 5.0) -> None:
    """Graceful: report NOT_SERVING, refuse new calls, let running ones finish within the grace period."""
    await health_servicer.enter_graceful_shutdown()
    await server.stop(grace_s)


class BackgroundCoordinator:
    """A coordinator on its own event-loop thread (quickstart, tests): start() returns the bound port."""

    def __init__(self, db_path: pathlib.Path | str, listen: str = "127.0.0.1:0"):
        self.db_path, self.listen = db_path, listen
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.port = 0

    def start(self) -> int:
        self.thread.start()
        self.store = Store(self.db_path)
        self.server, self.health, self.port = asyncio.run_coroutine_threadsafe(
            start_server(self.store, self.listen), self.loop).result()
        return self.port

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(stop_server(self.server, self.health, 1.0), self.loop).result()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join()
        self.store.close()
