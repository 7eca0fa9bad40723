"""The coordinator's gRPC server (grpc.aio). Servicers only translate between messages and the plain modules
(store, campaigns, fit, tables); every store call runs off the event loop, so a slow or locked database never
stalls unrelated RPCs (a heartbeat waits for nobody's table)."""

import asyncio
import base64
import concurrent.futures
import functools
import json
import logging
import os
import resource

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from fleetfit.coordinator.service import auth, campaigns, errors, ingest, model_store, pki
from fleetfit.coordinator.answers import devices, tables
from fleetfit.coordinator.answers import fit as fit_answers
from fleetfit.coordinator.service.dispatch import JobWaiters, ResultBatcher, expire_leases
from fleetfit.coordinator.answers.limits import limit_rows
from fleetfit.coordinator.service.model_store import ModelStore
from fleetfit.models import job_bounds
from fleetfit.coordinator.service.store import (ADVERTISE_EVERY_S, DEFAULT_LEASE_S, DEFAULT_MAX_ATTEMPTS, AlreadyEnrolled,
                                        BadToken,
                                        ConflictingResult, ForeignJob, QuotaExceeded, StaleLease, Store,
                                        UnknownCampaign, UnknownDevice)
from fleetfit.v1 import fleetfit_pb2 as pb
from fleetfit.v1 import fleetfit_pb2_grpc as pb_grpc
from fleetfit.v1.transport import MAX_MESSAGE_BYTES, SERVER_OPTIONS

log = logging.getLogger("fleetfit.coordinator")

SERVICE_NAMES = [d.full_name for d in pb.DESCRIPTOR.services_by_name.values()]
MAX_POLL_WAIT_S = 30.0
STORE_THREADS = 32  # store calls in flight at once; each thread keeps its own database connection


DEFAULT_PAGE_SIZE = 500
MAX_PAGE_SIZE = 10_000
# A page stops growing at this size (or page_size items), so no answer nears the message limit: ingest bounds
# each record to a MiB, so even one record more than this stays far below it.
PAGE_BYTES = MAX_MESSAGE_BYTES // 4
MAX_PAGE_TOKEN = 8192  # a page token carries one item's key (ids of at most 256 characters each)
MAX_JOB_IDS = 1000  # GetJobs looks up ids, not a list: 1,000 statuses (each error at most ~4 kB) stay far below it


async def off_loop(fn, *args, **kwargs):
    """`fn(*args, **kwargs)` on the store's thread pool (the loop's default executor, see start_server)."""
    return await asyncio.get_running_loop().run_in_executor(None, functools.partial(fn, *args, **kwargs))


def page(items: list, key, request) -> tuple[list, str]:
    """The items (any order) of the page `request` asks for (page_size, page_token), ordered by `key` (a tuple
    of strings, unique per item), and the next page's token ("" on the last page). ValueError for a bad request."""
    if request.page_size < 0:
        raise ValueError("page_size must not be negative")
    size = min(request.page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
    after = _after(request.page_token) if request.page_token else None
    chosen, total = [], 0
    for item in sorted(items, key=key):
        if after is not None and key(item) <= after:
            continue
        if chosen and (len(chosen) >= size or total + item.ByteSize() > PAGE_BYTES):
            return chosen, base64.urlsafe_b64encode(json.dumps(key(chosen[-1])).encode()).decode()
        chosen.append(item)
        total += item.ByteSize()
    return chosen, ""


def _after(token: str) -> tuple[str, ...]:
    """The key a page token carries (a JSON list of strings, base64), or ValueError for anything else: a token is
    the caller's input, so a made-up one is a bad argument, never an internal error."""
    after = None
    if len(token) <= MAX_PAGE_TOKEN:
        try:
            after = json.loads(base64.urlsafe_b64decode(token.encode()))
        except (ValueError, RecursionError):  # not base64, not UTF-8, not JSON, or nested past the parser's depth
            pass
    if not isinstance(after, list) or not after or not all(isinstance(part, str) for part in after):
        raise ValueError("page_token is not one this coordinator gave (pass next_page_token back as it is)")
    return tuple(after)


class AgentService(pb_grpc.AgentServiceServicer):
    """Callers are authenticated (auth.guard) and act only as themselves before a method runs."""

    def __init__(self, store: Store, waiters: JobWaiters, authority: pki.Authority | None = None,
                 lease_s: float = DEFAULT_LEASE_S, proven: dict[str, float] | None = None,
                 models: ModelStore | None = None):
        self.store, self.waiters, self.authority, self.lease_s = store, waiters, authority, lease_s
        self.models = models
        self.results = ResultBatcher(store)
        self.proven = {} if proven is None else proven  # the guard's cache of proven agent credentials
        self.refusals = errors.QuietLog()

    async def _refuse(self, context, code: grpc.StatusCode, device_id: str, reason: str) -> None:
        """Count and log (rate-limited) a refused report from an authenticated device, then abort the call."""
        self.refusals.note(f"refused:{device_id}",
                           f"refused a report from device {device_id[:ingest.SHORT_TEXT]!r}: {reason}")
        await off_loop(self.store.count_refusal, device_id, reason)
        await context.abort(code, reason)

    async def Join(self, request, context):
        try:
            ingest.check_device_id(request.device_id)
        except ingest.Refused as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        if request.want_client_certificate and self.authority is None:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "this coordinator runs without TLS")
        try:
            secret = await off_loop(self.store.redeem_join_token, request.token, request.device_id)
        except BadToken as exc:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, str(exc))
        except AlreadyEnrolled as exc:
            await context.abort(grpc.StatusCode.ALREADY_EXISTS, str(exc))
        auth.forget(self.proven, request.device_id)  # re-enrolled: the old credential is revoked now
        reply = pb.JoinResponse(device_id=request.device_id, secret=secret,
                                coordinators=await off_loop(self.store.replicas))
        if request.want_client_certificate:
            reply.client_certificate_pem, reply.client_key_pem = self.authority.issue_client(request.device_id)
        return reply

    async def Heartbeat(self, request, context):
        cancelled = False
        try:
            if request.job_id:
                cancelled = await off_loop(self.store.renew_lease, request.device_id, request.job_id, request.fence,
                                           self.lease_s)
            else:
                await off_loop(self.store.touch_device, request.device_id)
        except UnknownDevice:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"device {request.device_id!r} has not registered")
        except StaleLease as exc:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(exc))
        return pb.HeartbeatResponse(lease_s=self.lease_s, cancelled=cancelled)

    async def ReleaseJob(self, request, context):
        try:
            await off_loop(self.store.release_job, request.device_id, request.job_id, request.fence)
        except StaleLease as exc:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(exc))
        return pb.ReleaseJobResponse()

    async def Register(self, request, context):
        try:
            ingest.check_inventory(request.inventory)
        except ingest.Refused as exc:
            await self._refuse(context, grpc.StatusCode.INVALID_ARGUMENT, request.inventory.device_id, str(exc))
        await off_loop(self.store.upsert_device, request.inventory)
        if not request.inventory.trials_pending:  # its trials are in: skip the campaign jobs they rule out
            await off_loop(campaigns.after_trials, self.store, request.inventory.device_id)
        return pb.RegisterResponse(device_id=request.inventory.device_id,
                                   coordinators=await off_loop(self.store.replicas))

    async def PollJob(self, request, context):
        try:
            await off_loop(self.store.touch_device, request.device_id)
        except UnknownDevice:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"device {request.device_id!r} has not registered")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + min(max(request.wait_s, 0.0), MAX_POLL_WAIT_S)
        while True:
            job = await off_loop(self.store.claim_job, request.device_id, self.lease_s)
            if job is not None:
                return pb.PollJobResponse(job=job)
            if loop.time() >= deadline:
                return pb.PollJobResponse()
            with self.waiters.waiting(request.device_id) as queued:
                try:
                    await asyncio.wait_for(queued.wait(), deadline - loop.time())
                except asyncio.TimeoutError:  # not the builtin TimeoutError before Python 3.11
                    return pb.PollJobResponse()

    async def ReportResult(self, request, context):
        result = request.result
        if not result.result_id or not result.device_id:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "result_id and device_id are required")
        try:
            ingest.check_result(result)
        except ingest.Refused as exc:
            await self._refuse(context, grpc.StatusCode.INVALID_ARGUMENT, result.device_id, str(exc))
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
        except QuotaExceeded as exc:  # the agent's outbox keeps it and retries later
            await self._refuse(context, grpc.StatusCode.RESOURCE_EXHAUSTED, result.device_id, str(exc))
        return pb.ReportResultResponse(duplicate=duplicate)

    async def ReportQuality(self, request, context):
        result = request.result
        try:
            ingest.check_quality(result)
        except ingest.Refused as exc:
            await self._refuse(context, grpc.StatusCode.INVALID_ARGUMENT, result.device_id, str(exc))
        try:
            duplicate = await off_loop(self.store.add_quality, result)
        except UnknownDevice:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"device {result.device_id!r} has not registered")
        except ConflictingResult as exc:
            await context.abort(grpc.StatusCode.ALREADY_EXISTS, str(exc))
        except QuotaExceeded as exc:
            await self._refuse(context, grpc.StatusCode.RESOURCE_EXHAUSTED, result.device_id, str(exc))
        return pb.ReportQualityResponse(duplicate=duplicate)

    async def FetchModel(self, request, context):
        """The stored file from request.offset, CHUNK_BYTES a message: one chunk read at a time (off the loop), and
        the next read only once gRPC's flow control has taken the last, so many devices fetching at once cost the
        coordinator a chunk each, never the file. An agent gets only a file that a job leased to it names; a request
        by name is answered with the file's sha256 and size, without data."""
        if self.models is None:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "this coordinator has no model store")
        try:
            digest = (await off_loop(self.models.find, request.name)).sha256 if request.name and not request.sha256 \
                else request.sha256
            if not auth.is_operator(context) and digest not in {
                    r.model.sha256 for _, r in await off_loop(self.store.leased_jobs, request.device_id)}:
                await context.abort(grpc.StatusCode.PERMISSION_DENIED,
                                    f"no job leased to device {request.device_id} names "
                                    f"{request.name[:80] or 'sha256:' + digest[:16] + '...'}: a device fetches the "
                                    "stored models its jobs run (the operator's token fetches any)")
            f, size = await off_loop(self.models.open_blob, digest)
        except model_store.StoreRefused as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except model_store.NotStored as exc:
            await context.abort(grpc.StatusCode.NOT_FOUND, str(exc))
        with f:
            if request.name and not request.sha256:
                await context.write(pb.ModelChunk(size_bytes=size, sha256=digest))
                return
            if request.offset > size:
                await context.abort(grpc.StatusCode.OUT_OF_RANGE, f"offset {request.offset} is past the file's "
                                                                  f"{size} bytes")
            offset = request.offset
            if offset == size:
                await context.write(pb.ModelChunk(offset=offset, size_bytes=size))
            while offset < size:
                data = await off_loop(os.pread, f.fileno(), model_store.CHUNK_BYTES, offset)
                if not data:
                    await context.abort(grpc.StatusCode.DATA_LOSS, "the stored file is shorter than it was")
                await context.write(pb.ModelChunk(offset=offset, data=data, size_bytes=size))
                offset += len(data)


class FleetService(pb_grpc.FleetServiceServicer):
    def __init__(self, store: Store, waiters: JobWaiters, proven: dict[str, float] | None = None,
                 models: ModelStore | None = None):
        self.store, self.waiters, self.models = store, waiters, models
        self.answers = fit_answers.AnswerCache(store)
        self.proven = {} if proven is None else proven  # the guard's cache of proven agent credentials

    async def _page(self, items: list, key, request, context) -> tuple[list, str]:
        try:
            return page(items, key, request)
        except ValueError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))

    async def ListDevices(self, request, context):
        found, token = await self._page(devices.with_display_names(await off_loop(self.store.devices)),
                                        lambda d: (d.inventory.device_id,), request, context)
        return pb.ListDevicesResponse(devices=found, next_page_token=token)

    async def RevokeDevice(self, request, context):
        try:
            await off_loop(self.store.revoke_agent, request.device_id)
        except UnknownDevice:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no enrolled device {request.device_id!r}")
        auth.forget(self.proven, request.device_id)
        return pb.RevokeDeviceResponse()

    async def _model_store(self, context) -> ModelStore:
        if self.models is None:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "this coordinator has no model store")
        return self.models

    async def PutModel(self, request, context):
        models = await self._model_store(context)
        try:
            return await off_loop(models.put, request)
        except model_store.StoreRefused as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))

    async def ImportModel(self, request, context):
        from fleetfit.coordinator.service import hf_import

        models = await self._model_store(context)
        try:
            found = await off_loop(hf_import.import_file, models, request.ref, request.name, request.added_by)
        except model_store.StoreRefused as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        return pb.PutModelResponse(received_bytes=found.size_bytes, model=found)

    async def ListModels(self, request, context):
        found, token = await self._page(await off_loop((await self._model_store(context)).models),
                                        lambda m: (m.name,), request, context)
        return pb.ListModelsResponse(models=found, next_page_token=token)

    async def RemoveModel(self, request, context):
        models = await self._model_store(context)
        try:
            return pb.RemoveModelResponse(file_removed=await off_loop(models.remove, request.name))
        except model_store.NotStored as exc:
            await context.abort(grpc.StatusCode.NOT_FOUND, str(exc))

    async def SubmitProfile(self, request, context):
        known = await off_loop(self.store.devices)
        try:
            job = campaigns.check_request(request.request)
            targets = [devices.find(known, key).inventory.device_id for key in request.device_ids] or \
                [d.inventory.device_id for d in known]
        except (ValueError, devices.DeviceLookupError) as exc:
            code = grpc.StatusCode.NOT_FOUND if isinstance(exc, devices.DeviceLookupError) else \
                grpc.StatusCode.INVALID_ARGUMENT
            await context.abort(code, str(exc))
        job_ids = await off_loop(self.store.enqueue_many, [(d, job) for d in targets])
        self.waiters.wake(targets)
        return pb.SubmitProfileResponse(job_ids=job_ids)

    async def GetJobs(self, request, context):
        if len(request.job_ids) > MAX_JOB_IDS:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"at most {MAX_JOB_IDS} job_ids a call, got "
                                f"{len(request.job_ids)} (ask in parts, or GetCampaign for a campaign's jobs)")
        return pb.GetJobsResponse(jobs=await off_loop(self.store.jobs, list(request.job_ids)))

    async def GetLimitTable(self, request, context):
        results, known = await off_loop(self.store.results), await off_loop(self.store.devices)
        rows, token = await self._page(limit_rows(results, known),
                                       lambda r: (r.device_id, r.backend, r.model_name, r.quant, r.shape),
                                       request, context)
        return pb.GetLimitTableResponse(rows=rows, next_page_token=token)

    async def Fit(self, request, context):
        try:
            answers = (await off_loop(fit_answers.respond, request, self.store, self.answers)).answers
        except devices.DeviceLookupError as exc:
            await context.abort(grpc.StatusCode.NOT_FOUND, str(exc))
        except fit_answers.BadQuestion as exc:  # a bad question: fit_answers says which field
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        if not request.model_name:  # one device's largest model per precision: a few answers, in their order
            return pb.FitResponse(answers=answers)
        found, token = await self._page(list(answers), lambda a: (a.device_id,), request, context)
        return pb.FitResponse(answers=found, next_page_token=token)

    async def ListTables(self, request, context):
        return pb.ListTablesResponse(tables=[pb.Table(name=t.name, title=t.title) for t in tables.TABLES.values()])

    async def GetTable(self, request, context):
        try:
            shapes = tables.checked_shapes(request.shapes)
            if request.names:
                found = await off_loop(tables.build_many, list(request.names), self.store, dict(request.options), shapes)
                return pb.GetTableResponse(tables=found)
            table = await off_loop(tables.build_from_store, request.name, self.store, dict(request.options), shapes)
            return pb.GetTableResponse(table=table)
        except tables.TableError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))

    async def CreateCampaign(self, request, context):
        try:
            terms = campaigns.parse_selector(request.selector)
            request.spec.CopyFrom(await off_loop(model_store.attach, self.models, request.spec))
            campaigns.check_spec(request.spec)
            job_bounds.check_max_attempts(request.max_attempts)
        except ValueError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        devices = await off_loop(self.store.devices)
        plan = campaigns.expand(request.spec, terms, devices)
        if not plan.matched:
            await context.abort(grpc.StatusCode.NOT_FOUND, campaigns.no_match(request.selector, terms, devices))
        campaign_id = await off_loop(self.store.create_campaign, request.selector, request.spec, plan.jobs,
                                     request.max_attempts or DEFAULT_MAX_ATTEMPTS, plan.skipped)
        for device_id in plan.probing:  # trials reported while the campaign was being stored: judge its jobs now
            await off_loop(campaigns.after_trials, self.store, device_id)
        self.waiters.wake(plan.matched)
        job_ids = [j.job_id for j in await off_loop(self.store.campaign_jobs, campaign_id)]
        skipped = (await off_loop(self.store.campaign, campaign_id)).skipped if plan.probing else plan.skipped
        lines, held = [f"{d}: {line}" for d, lines in skipped.items() for line in lines], 0
        for n, line in enumerate(lines):  # each device's reasons are its own text: the reply keeps a page's worth
            held += len(line.encode())
            if held > PAGE_BYTES:
                lines[n:] = [f"... and {len(lines) - n} more devices' skipped combinations: fleetfit campaign status "
                             f"{campaign_id}"]
                break
        return pb.CreateCampaignResponse(campaign_id=campaign_id, job_ids=job_ids, device_ids=plan.matched,
                                         skipped=lines)

    async def ListCampaigns(self, request, context):
        found = await off_loop(campaigns.statuses, self.store, totals_only=True)
        chosen, token = await self._page(found, lambda c: (f"{c.created_unix_s:020.6f}", c.campaign_id), request,
                                         context)
        return pb.ListCampaignsResponse(campaigns=chosen, next_page_token=token)

    async def GetCampaign(self, request, context):
        found = await off_loop(campaigns.statuses, self.store, request.campaign_id)
        if not found:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no campaign {request.campaign_id!r}")
        campaign = found[0]
        chosen, token = await self._page(list(campaign.devices), lambda d: (d.device_id,), request, context)
        del campaign.devices[:]
        campaign.devices.extend(chosen)
        return pb.GetCampaignResponse(campaign=campaign, next_page_token=token)

    async def CancelCampaign(self, request, context):
        try:
            dropped, stopping = await off_loop(self.store.cancel_campaign, request.campaign_id)
        except UnknownCampaign:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no campaign {request.campaign_id[:80]!r}")
        (status,) = await off_loop(campaigns.statuses, self.store, request.campaign_id, True)  # totals: one message
        return pb.CancelCampaignResponse(dropped=dropped, stopping=stopping, campaign=status)


class ListenError(Exception):
    """The server could not bind its address."""


# File descriptors kept for what is not a client connection: the store's connections (one per thread), the
# SQLite file and its journal, logs, the state directory's files.
RESERVED_FDS = 4 * STORE_THREADS + 64


def connection_limit() -> int:
    """Raise this process's open-file soft limit to its hard limit (a usual soft limit of 1,024 is a few hundred
    stalled handshakes from running out) and answer how many client connections to accept at once: the rest of
    the limit is kept for the store, so that a flood of connections refuses new connections, never a database
    open or the calls on existing ones. gRPC has no per-peer connection limit; this one is for all peers."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):  # e.g. macOS refuses above OPEN_MAX: keep the soft limit
            pass
    if soft == resource.RLIM_INFINITY:
        return 1 << 20
    return max(soft - RESERVED_FDS, 16)


async def advertise(store: Store, address: str, every_s: float = ADVERTISE_EVERY_S) -> None:
    """Say again that this replica is up at `address` (start_server said it first), every `every_s`, until
    cancelled; a failure (the database away) is tried again next time."""
    while True:
        await asyncio.sleep(every_s)
        try:
            await off_loop(store.advertise, address)
        except Exception as exc:  # the database's trouble: the next round tries again
            log.warning("advertising this replica at %s failed (%s); trying again", address, type(exc).__name__)


async def start_server(store: Store, listen: str, authority: pki.Authority | None = None,
                       require_client_cert: bool = False, lease_s: float = DEFAULT_LEASE_S,
                       models: ModelStore | None = None, advertised: str | None = None,
                       ) -> tuple[grpc.aio.Server, health.aio.HealthServicer, int]:
    """Serve on `listen`: TLS with `authority`'s server certificate (mutual with `require_client_cert`),
    plaintext without one. Every RPC is authenticated (auth.POLICY); reflection is not served. `models`: the
    model store (None: the model RPCs answer FAILED_PRECONDITION). With `advertised` (HOST:PORT agents reach this
    replica at; port 0: the one bound), the replica advertises itself to agents through the database."""
    asyncio.get_running_loop().set_default_executor(
        concurrent.futures.ThreadPoolExecutor(STORE_THREADS, thread_name_prefix="fleetfit-store"))
    server = grpc.aio.server(options=[*SERVER_OPTIONS, ("grpc.max_allowed_incoming_connections", connection_limit())])
    services = pb.DESCRIPTOR.services_by_name
    waiters, proven = JobWaiters(), {}
    pb_grpc.add_AgentServiceServicer_to_server(
        auth.guard(AgentService(store, waiters, authority, lease_s, proven, models), services["AgentService"], store,
                   proven),
        server)
    pb_grpc.add_FleetServiceServicer_to_server(
        auth.guard(FleetService(store, waiters, proven, models), services["FleetService"], store, proven), server)
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
    server.fleetfit_sweepers = [loop.create_task(expire_leases(store, max(lease_s / 4, 0.05))),
                                loop.create_task(waiters.sweep(store))]
    if advertised and advertised.endswith(":0"):  # --listen's port 0: the port bound
        advertised = f"{advertised[:-2]}:{port}"
    if advertised:
        await off_loop(store.advertise, advertised)  # listed before the first agent registers
        server.fleetfit_sweepers.append(loop.create_task(advertise(store, advertised)))
    server.fleetfit_withdraw = functools.partial(store.withdraw, advertised) if advertised else None
    return server, health_servicer, port


async def stop_server(server: grpc.aio.Server, health_servicer, grace_s: float = 5.0) -> None:
    """Graceful: report NOT_SERVING, refuse new calls, let running ones finish within the grace period."""
    for task in server.fleetfit_sweepers:
        task.cancel()
    if server.fleetfit_withdraw:
        try:
            await off_loop(server.fleetfit_withdraw)
        except Exception:  # the database away: the entry ages out (REPLICA_FRESH_S)
            pass
    await health_servicer.enter_graceful_shutdown()
    await server.stop(grace_s)


