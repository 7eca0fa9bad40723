"""The coordinator's gRPC server (grpc.aio). Servicers only translate between messages and the store."""

import asyncio
import concurrent.futures
import contextlib
import logging
import os
import pathlib
import threading

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from fleetfit.coordinator import auth, campaigns, pki, tables
from fleetfit.coordinator import fit as fit_answers
from fleetfit.coordinator.limits import limit_rows
from fleetfit.coordinator.store import (DEFAULT_LEASE_S, DEFAULT_MAX_ATTEMPTS, BadToken, ConflictingResult,
                                        ForeignJob, StaleLease, Store, UnknownDevice)
from fleetfit.models.catalogue import CATALOGUE
from fleetfit.models.errors import ModelError
from fleetfit.models.quants import parse_quant
from fleetfit.models.real_models import REAL_MODELS
from fleetfit.v1 import fleetfit_pb2 as pb
from fleetfit.v1 import fleetfit_pb2_grpc as pb_grpc
from fleetfit.v1.transport import SERVER_OPTIONS

log = logging.getLogger("fleetfit.coordinator")

SERVICE_NAMES = [d.full_name for d in pb.DESCRIPTOR.services_by_name.values()]
MAX_POLL_WAIT_S = 30.0
QUEUE_SWEEP_S = 0.5


class JobWaiters:
    """Where idle agents' long-polls wait, instead of each asking the database over and over.

    Jobs submitted through this coordinator wake their device at once; one sweep every QUEUE_SWEEP_S asks
    the database which waiting devices have queued jobs (submitted through another replica, or re-queued
    when a lease expired) and wakes those.
    """

    def __init__(self):
        self.events: dict[str, set[asyncio.Event]] = {}

    @contextlib.contextmanager
    def waiting(self, device_id: str):
        event = asyncio.Event()
        self.events.setdefault(device_id, set()).add(event)
        try:
            yield event
        finally:
            self.events[device_id].discard(event)
            if not self.events[device_id]:
                del self.events[device_id]

    def wake(self, device_ids) -> None:
        for device_id in device_ids:
            for event in self.events.get(device_id, ()):
                event.set()

    async def sweep(self, store: Store) -> None:
        while True:
            await asyncio.sleep(QUEUE_SWEEP_S)
            if self.events:
                try:
                    self.wake(store.devices_with_queued_jobs())
                except Exception:  # a database hiccup must not stop the sweeps
                    log.exception("looking for queued jobs failed")


class ResultBatcher:
    """Reports are written by one writer thread, each batch in one transaction (one commit for many).

    While a batch is being written the event loop goes on taking reports; they form the next batch. Each
    caller gets its own outcome (store.add_results).
    """

    def __init__(self, store: Store):
        self.store, self.pending, self.writing = store, [], False
        self.writer = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="fleetfit-results")

    async def add(self, result: pb.ProfileResult, job_id: str, fence: int) -> bool:
        future = asyncio.get_running_loop().create_future()
        self.pending.append(((result, job_id, fence), future))
        if not self.writing:
            self.writing = True
            asyncio.get_running_loop().create_task(self._write())
        outcome = await future
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    async def _write(self) -> None:
        try:
            while self.pending:
                batch, self.pending = self.pending, []
                try:
                    outcomes = await asyncio.get_running_loop().run_in_executor(
                        self.writer, self.store.add_results, [report for report, _ in batch])
                except Exception as exc:  # the database failed the whole transaction: every caller hears of it
                    outcomes = [exc] * len(batch)
                for (_, future), outcome in zip(batch, outcomes):
                    if not future.done():  # a caller that gave up (deadline) no longer waits
                        future.set_result(outcome)
        finally:
            self.writing = False


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
    """Callers are authenticated (auth.guard) and act only as themselves before a method runs."""

    def __init__(self, store: Store, waiters: JobWaiters, authority: pki.Authority | None = None,
                 lease_s: float = DEFAULT_LEASE_S):
        self.store, self.waiters, self.authority, self.lease_s = store, waiters, authority, lease_s
        self.results = ResultBatcher(store)

    async def Join(self, request, context):
        if not request.device_id:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "device_id is empty")
        if request.want_client_certificate and self.authority is None:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "this coordinator runs without TLS")
        try:
            secret = self.store.redeem_join_token(request.token, request.device_id)
        except BadToken as exc:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, str(exc))
        reply = pb.JoinResponse(device_id=request.device_id, secret=secret)
        if request.want_client_certificate:
            reply.client_certificate_pem, reply.client_key_pem = self.authority.issue_client(request.device_id)
        return reply

    async def Heartbeat(self, request, context):
        try:
            if request.job_id:
                self.store.renew_lease(request.device_id, request.job_id, request.fence, self.lease_s)
            else:
                self.store.touch_device(request.device_id)
        except UnknownDevice:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"device {request.device_id!r} has not registered")
        except StaleLease as exc:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(exc))
        return pb.HeartbeatResponse(lease_s=self.lease_s)

    async def ReleaseJob(self, request, context):
        try:
            self.store.release_job(request.device_id, request.job_id, request.fence)
        except StaleLease as exc:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(exc))
        return pb.ReleaseJobResponse()

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
        loop = asyncio.get_running_loop()
        deadline = loop.time() + min(max(request.wait_s, 0.0), MAX_POLL_WAIT_S)
        while True:
            job = self.store.claim_job(request.device_id, self.lease_s)
            if job is not None:
                return pb.PollJobResponse(job=job)
            if loop.time() >= deadline:
                return pb.PollJobResponse()
            with self.waiters.waiting(request.device_id) as queued:
                try:
                    await asyncio.wait_for(queued.wait(), deadline - loop.time())
                except TimeoutError:
                    return pb.PollJobResponse()

    async def ReportResult(self, request, context):
        result = request.result
        if not result.result_id or not result.device_id:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "result_id and device_id are required")
        try:
            duplicate = await self.results.add(result, request.job_id, request.fence)
        except UnknownDevice:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"device {result.device_id!r} has not registered")
        except ForeignJob as exc:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, str(exc))
        except ConflictingResult as exc:
            await context.abort(grpc.StatusCode.ALREADY_EXISTS, str(exc))
        except StaleLease as exc:  # the job was leased again after this agent's lease expired
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(exc))
        return pb.ReportResultResponse(duplicate=duplicate)


class FleetService(pb_grpc.FleetServiceServicer):
    def __init__(self, store: Store, waiters: JobWaiters):
        self.store, self.waiters = store, waiters
        self.answers = fit_answers.AnswerCache(store)

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
        job_ids = [self.store.enqueue(d, request.request) for d in targets]
        self.waiters.wake(targets)
        return pb.SubmitProfileResponse(job_ids=job_ids)

    async def GetJobs(self, request, context):
        return pb.GetJobsResponse(jobs=self.store.jobs(list(request.job_ids)))

    async def GetLimitTable(self, request, context):
        return pb.GetLimitTableResponse(rows=limit_rows(self.store.results(), self.store.devices()))

    async def Fit(self, request, context):
        backend = request.backend or "llama.cpp"
        limits = dict(min_decode_tps=request.min_decode_tokens_per_s if request.HasField("min_decode_tokens_per_s")
                      else None, context=request.context_tokens if request.HasField("context_tokens") else None,
                      max_watts=request.max_watts if request.HasField("max_watts") else None)
        bad = [f"{name} must be positive" for name, value in (("context_tokens", limits["context"]), ("min_decode_"
               "tokens_per_s", limits["min_decode_tps"]), ("max_watts", limits["max_watts"])) if value is not None and value <= 0]
        if bad:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "; ".join(bad))
        devices = self.store.devices(request.device or None)
        if request.device and not devices:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no device {request.device!r}")
        if not request.model_name and request.device:
            device = devices[0].inventory
            return pb.FitResponse(answers=fit_answers.largest_per_precision(
                device, backend, self.store.results(device_id=device.device_id), **limits))
        try:
            quant = parse_quant(request.quant)
            if request.model_name not in CATALOGUE and request.model_name not in REAL_MODELS:
                fit_answers.check_model_known(request.model_name, self.store.model_names() | set(REAL_MODELS) | set(CATALOGUE))
        except (ModelError, fit_answers.UnknownModel) as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        return pb.FitResponse(answers=[self.answers.answer(d, request.model_name, quant, backend, **limits)
                                       for d in devices])

    async def ListTables(self, request, context):
        return pb.ListTablesResponse(tables=[pb.Table(name=t.name, title=t.title) for t in tables.TABLES.values()])

    async def GetTable(self, request, context):
        fleet = tables.Fleet(results=self.store.results(), devices=self.store.devices())
        try:
            return tables.build(request.name, fleet, dict(request.options))
        except tables.TableError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))

    async def CreateCampaign(self, request, context):
        try:
            terms = campaigns.parse_selector(request.selector)
            campaigns.check_spec(request.spec)
        except ValueError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        jobs, matched, skipped = campaigns.expand(request.spec, terms, self.store.devices(),
                                                  self.store.device_labels())
        if not matched:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no device matches {request.selector!r}")
        campaign_id = self.store.create_campaign(request.selector, request.spec, jobs,
                                                 request.max_attempts or DEFAULT_MAX_ATTEMPTS)
        self.waiters.wake(matched)
        job_ids = [j.job_id for j in self.store.campaign_jobs(campaign_id)]
        return pb.CreateCampaignResponse(campaign_id=campaign_id, job_ids=job_ids, device_ids=matched,
                                         skipped=skipped)

    async def ListCampaigns(self, request, context):
        return pb.ListCampaignsResponse(campaigns=[campaigns.progress(*c, self.store.campaign_jobs(c[0]))
                                                   for c in self.store.campaigns()])

    async def GetCampaign(self, request, context):
        found = self.store.campaign(request.campaign_id)
        if found is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no campaign {request.campaign_id!r}")
        return campaigns.progress(*found, self.store.campaign_jobs(request.campaign_id))


class ListenError(Exception):
    """The server could not bind its address."""


async def _expire_leases(store: Store, every_s: float) -> None:
    while True:
        await asyncio.sleep(every_s)
        try:
            if n := store.expire_leases():
                log.info("%d expired lease(s): jobs re-queued or failed", n)
        except Exception:  # a database hiccup must not stop the sweeps
            log.exception("expiring leases failed")


async def start_server(store: Store, listen: str, authority: pki.Authority | None = None,
                       require_client_cert: bool = False, lease_s: float = DEFAULT_LEASE_S,
                       ) -> tuple[grpc.aio.Server, health.aio.HealthServicer, int]:
    """Serve on `listen`: TLS with `authority`'s server certificate (mutual with `require_client_cert`),
    plaintext without one. Every RPC is authenticated (auth.POLICY); reflection is not served."""
    server = grpc.aio.server(options=SERVER_OPTIONS)
    services = pb.DESCRIPTOR.services_by_name
    waiters = JobWaiters()
    pb_grpc.add_AgentServiceServicer_to_server(
        auth.guard(AgentService(store, waiters, authority, lease_s), services["AgentService"], store), server)
    pb_grpc.add_FleetServiceServicer_to_server(
        auth.guard(FleetService(store, waiters), services["FleetService"], store), server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    try:
        if authority is None:
            port = server.add_insecure_port(listen)
        else:
            credentials = grpc.ssl_server_credentials(
                [(authority.server_key_pem, authority.server_chain_pem)], root_certificates=authority.ca_pem,
                require_client_auth=require_client_cert)
            port = server.add_secure_port(listen, credentials)
    except RuntimeError as exc:
        raise ListenError(f"cannot listen on {listen}: {exc}") from None
    await server.start()
    for name in ["", *SERVICE_NAMES]:
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    loop = asyncio.get_running_loop()
    server.fleetfit_sweepers = [loop.create_task(_expire_leases(store, max(lease_s / 4, 0.05))),
                                loop.create_task(waiters.sweep(store))]
    return server, health_servicer, port


async def stop_server(server: grpc.aio.Server, health_servicer, grace_s: float = 5.0) -> None:
    """Graceful: report NOT_SERVING, refuse new calls, let running ones finish within the grace period."""
    for task in server.fleetfit_sweepers:
        task.cancel()
    await health_servicer.enter_graceful_shutdown()
    await server.stop(grace_s)


def operator_token(store: Store, state_dir: pathlib.Path) -> str:
    """The operator token kept (mode 0600) in `state_dir/operator.token`, made on first start."""
    path = state_dir / "operator.token"
    if path.exists():
        token = path.read_text().strip()
        if store.is_operator_token(token.removeprefix("operator.")):
            return token
    token = "operator." + store.add_operator_token()
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    return token


class BackgroundCoordinator:
    """A coordinator on its own event-loop thread (quickstart, tests): start() returns the bound port.

    Plaintext unless `tls`; `operator_token` authenticates operator calls, `join_token()` enrolls agents.
    """

    def __init__(self, db_path: pathlib.Path | str, listen: str = "127.0.0.1:0", state_dir: pathlib.Path | None = None,
                 tls: bool = False, require_client_cert: bool = False, lease_s: float = DEFAULT_LEASE_S):
        self.db_path, self.listen, self.lease_s = db_path, listen, lease_s
        self.state_dir = state_dir or pathlib.Path(str(db_path) + ".d")
        self.tls, self.require_client_cert = tls, require_client_cert
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.port = 0

    def start(self) -> int:
        self.thread.start()
        self.store = Store(self.db_path)
        self.operator_token = operator_token(self.store, self.state_dir)
        self.authority = pki.load_or_create(self.state_dir / "tls") if self.tls else None
        self.server, self.health, self.port = asyncio.run_coroutine_threadsafe(
            start_server(self.store, self.listen, self.authority, self.require_client_cert, self.lease_s),
            self.loop).result()
        return self.port

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def join_token(self, labels: dict[str, str] | None = None, expires_s: float = 3600) -> str:
        return join_token_text(self.store, self.authority, labels or {}, expires_s)

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(stop_server(self.server, self.health, 1.0), self.loop).result()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join()
        self.store.close()


def join_token_text(store: Store, authority: pki.Authority | None, labels: dict[str, str], expires_s: float) -> str:
    """A join token as the operator hands it out: the secret, then (with TLS) the CA's fingerprint to pin."""
    secret = store.create_join_token(labels, expires_s)
    return f"{secret}.{authority.fingerprint}" if authority else secret
