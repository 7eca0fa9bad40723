"""Dispatch of jobs and results on the coordinator's event loop: where idle agents' long-polls wait, the one
writer thread that stores reports in batches, and the sweep that expires leases."""

import asyncio
import concurrent.futures
import contextlib
import logging

from fleetfit.coordinator.service.store import Store
from fleetfit.v1 import fleetfit_pb2 as pb

log = logging.getLogger("fleetfit.coordinator")

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
                    self.wake(await asyncio.get_running_loop().run_in_executor(None, store.devices_with_queued_jobs))
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


async def expire_leases(store: Store, every_s: float) -> None:
    while True:
        await asyncio.sleep(every_s)
        try:
            if n := await asyncio.get_running_loop().run_in_executor(None, store.expire_leases):
                log.info("%d expired lease(s): jobs re-queued or failed", n)
        except Exception:  # a database hiccup must not stop the sweeps
            log.exception("expiring leases failed")
