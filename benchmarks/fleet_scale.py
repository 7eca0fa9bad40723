#!/usr/bin/env python3
"""Fleet scale on loopback: results ingested per second, 1,000 agents in contact every 10 s, and `fit`
latency with 1,000 devices and 100,000 stored results — on SQLite and on PostgreSQL.

    python benchmarks/fleet_scale.py [--db sqlite,postgresql] [--agents 1000] [--results 100000]
                                     [--contact-s 10] [--contact-phase-s 35] [--fit-queries 100]

The coordinator is `fleetfit serve --insecure` in its own process, as deployed. The simulated agents are
grpc.aio clients in this process, each enrolled with its own credentials (join tokens spent through the
store), calling the same RPCs as `fleetfit-agent run`:
- ingest: every agent reports its share of the results with ReportResult (64 calls in flight);
- contact: every agent does what an idle `fleetfit-agent run` does — PollJob long-polls of --contact-s,
  back to back, started at random offsets — for --contact-phase-s; then ListDevices must show none lost;
- fit: the operator asks Fit for one model and quant across the whole fleet, and for one device.
Both processes share this machine's cores, so the figures are a floor for a coordinator with its own host.
"""
import argparse
import asyncio
import os
import pathlib
import random
import statistics
import subprocess
import sys
import tempfile
import time
import uuid

import grpc
import psutil

from fleetfit.coordinator.service.store import Store
from fleetfit.v1 import fleetfit_pb2 as pb
from fleetfit.v1 import fleetfit_pb2_grpc as pb_grpc

TARGET_INGEST_PER_S, TARGET_FIT_P99_MS = 1000.0, 50.0
POSTGRES_URL = os.environ.get("FLEETFIT_BENCH_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
MODELS = [("smollm2-135m", 0.10e9), ("tinyllama-1.1b", 0.7e9), ("llama-3.2-3b", 2.0e9), ("llama-2-7b", 4.0e9)]
QUANTS = {"Q4_0": 1.0, "Q8_0": 1.85, "F16": 3.5}
IN_FLIGHT = 64
CHANNELS = 8


def device_inventory(n: int) -> pb.DeviceInventory:
    ram = random.choice([4, 8, 16, 32, 64]) << 30
    return pb.DeviceInventory(device_id=f"dev-{n:04d}", hostname=f"host-{n:04d}", arch=random.choice(["x86_64", "aarch64"]),
                              os="Linux", cpu_model="Simulated CPU", cpu_cores_physical=random.choice([4, 8, 16]),
                              ram_total_bytes=ram, ram_available_bytes=ram // 2)


def a_result(device_id: str) -> pb.ProfileResult:
    """A result the size and shape of a real llama.cpp profile (5 repetitions, power per phase)."""
    model, q4_bytes = random.choice(MODELS)
    quant = random.choice(list(QUANTS))
    size = q4_bytes * QUANTS[quant]
    decode = 2.5e10 / size * random.uniform(0.9, 1.1)
    samples = [decode * random.uniform(0.97, 1.03) for _ in range(5)]
    r = pb.ProfileResult(
        result_id=str(uuid.uuid4()), device_id=device_id, model_name=model, quant=quant, model_origin="derived",
        request=pb.ProfileRequest(model=pb.ModelRef(name=model), backend="llama.cpp", quant=quant, n_prompt=512,
                                  n_gen=128, repetitions=5),
        model_file=f"/var/cache/fleetfit/models/{model}-{quant}.gguf", model_sha256=uuid.uuid4().hex * 2,
        model_file_bytes=int(size), backend_version="0.3.36", backend_build="CPU : SSE3 = 1 | AVX2 = 1 | FMA = 1",
        threads=4, n_batch=2048, n_ubatch=512, n_ctx=640, n_prompt=512, n_gen=128, repetitions=5, warmup=True,
        load_time_s=0.4, peak_rss_bytes=int(size * 1.08 + 60e6), memory_method="VmHWM, no mmap",
        ttft_ms=pb.Stat(mean=512 / (decode * 8) * 1000, samples=[512 / (decode * 8) * 1000] * 5),
        prefill_tokens_per_s=pb.Stat(mean=decode * 8, samples=[s * 8 for s in samples]),
        decode_tokens_per_s=pb.Stat(mean=statistics.fmean(samples), samples=samples),
        provenance=pb.Provenance(provenance_kind=pb.PROVENANCE_KIND_MEASURED, method="llama.cpp via llama-cpp-python; wall clock",
                                 scope="worker process on this device"),
        started_unix_s=time.time(), wall_s=12.0)
    for phase, tokens in (("load", 0), ("prefill", 2560), ("decode", 640)):
        r.power.phases.append(pb.PhaseEnergy(phase=phase, source="intel-rapl:0 package-0", scope="cpu-package:0",
                                             method="rapl", provenance_kind=pb.PROVENANCE_KIND_MEASURED, rate_hz=20, duration_s=3.0,
                                             energy_mj=90_000, average_power_w=30.0, peak_power_w=41.0,
                                             tokens=tokens, samples=60, coverage=1.0))
    r.power.headline_source = "intel-rapl:0 package-0"
    return r


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class Coordinator:
    def __init__(self, db_url: str, state_dir: pathlib.Path):
        with Store(db_url):  # creates the schema before the server starts
            pass
        port = free_port()
        self.address = f"127.0.0.1:{port}"
        self.log = open(state_dir / "serve.log", "wb")
        self.proc = subprocess.Popen([str(pathlib.Path(sys.executable).parent / "fleetfit"), "serve", "--insecure",
                                      "--listen", self.address, "--db", db_url, "--state-dir", str(state_dir)],
                                     stdout=self.log, stderr=self.log)
        deadline = time.monotonic() + 60
        while not (state_dir / "operator.token").exists() or not self._ready():
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise SystemExit(f"error: the coordinator did not start; see {state_dir / 'serve.log'}")
            time.sleep(0.1)
        self.operator_token = (state_dir / "operator.token").read_text().strip()
        self.ps = psutil.Process(self.proc.pid)

    def _ready(self) -> bool:
        with grpc.insecure_channel(self.address) as channel:
            try:
                grpc.channel_ready_future(channel).result(timeout=0.5)
                return True
            except grpc.FutureTimeoutError:
                return False

    def cpu_s(self) -> float:
        t = self.ps.cpu_times()
        return t.user + t.system

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)
        self.log.close()


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def bearer(token: str) -> tuple:
    return (("authorization", f"Bearer {token}"),)


async def run_all(calls, limit: int) -> list[float]:
    """Await the coroutine factories with at most `limit` in flight; per-call latencies in seconds."""
    gate, latencies = asyncio.Semaphore(limit), []

    async def one(call):
        async with gate:
            start = time.perf_counter()
            await call()
            latencies.append(time.perf_counter() - start)

    await asyncio.gather(*(one(c) for c in calls))
    return latencies


async def bench(db_url: str, args, work: pathlib.Path) -> dict:
    random.seed(1)
    with Store(db_url) as store:
        agents = {}
        for n in range(args.agents):
            inventory = device_inventory(n)
            agents[inventory.device_id] = (inventory, store.redeem_join_token(store.create_join_token({}, 3600),
                                                                              inventory.device_id))
    coordinator = Coordinator(db_url, work)
    figures = {}
    try:
        channels = [grpc.aio.insecure_channel(coordinator.address) for _ in range(CHANNELS)]
        stubs = [pb_grpc.AgentServiceStub(c) for c in channels]
        fleet = pb_grpc.FleetServiceStub(channels[0])
        operator = bearer(coordinator.operator_token)

        def agent_call(n: int, rpc: str, request, timeout: float = 30.0):
            device_id = f"dev-{n:04d}"
            return getattr(stubs[n % CHANNELS], rpc)(request, timeout=timeout,
                                                     metadata=bearer(f"agent.{device_id}.{agents[device_id][1]}"))

        await run_all([lambda n=n: agent_call(n, "Register", pb.RegisterRequest(inventory=agents[f"dev-{n:04d}"][0]))
                       for n in range(args.agents)], IN_FLIGHT)

        # ingest
        reports = [(n % args.agents, pb.ReportResultRequest(result=a_result(f"dev-{n % args.agents:04d}")))
                   for n in range(args.results)]
        cpu0, start = coordinator.cpu_s(), time.perf_counter()
        latencies = await run_all([lambda n=n, r=r: agent_call(n, "ReportResult", r) for n, r in reports], IN_FLIGHT)
        elapsed = time.perf_counter() - start
        figures["ingest_per_s"] = args.results / elapsed
        figures["ingest_p50_ms"], figures["ingest_p99_ms"] = (1000 * percentile(latencies, q) for q in (0.5, 0.99))
        figures["ingest_server_cpu"] = (coordinator.cpu_s() - cpu0) / elapsed
        stored = await all_devices(fleet, operator)
        figures["stored"] = sum(d.results for d in stored)

        # contact: idle agents long-polling, as fleetfit-agent run does; counted once every agent is in its cycle
        starts, begin = [], time.monotonic()
        steady_from, stop_at = begin + args.contact_s, begin + args.contact_phase_s

        async def idle_agent(n: int) -> None:
            await asyncio.sleep(random.uniform(0, args.contact_s))
            while (now := time.monotonic()) < stop_at:
                starts.append(now)
                await agent_call(n, "PollJob", pb.PollJobRequest(device_id=f"dev-{n:04d}", wait_s=args.contact_s),
                                 timeout=args.contact_s + 30)

        cpu0 = coordinator.cpu_s()
        await asyncio.gather(*(idle_agent(n) for n in range(args.agents)))
        figures["contact_server_cpu"] = (coordinator.cpu_s() - cpu0) / (time.monotonic() - begin)
        figures["contacts_per_s"] = sum(1 for t in starts if t >= steady_from) / (stop_at - steady_from)
        devices = await all_devices(fleet, operator)
        figures["lost"] = sum(1 for d in devices if d.device_status != pb.DEVICE_STATUS_ONLINE)
        figures["max_silence_s"] = max(time.time() - d.last_seen_unix_s for d in devices)

        # fit
        for name, request in (("fit_fleet", lambda: pb.FitRequest(model_name="llama-2-7b", quant="Q4_0")),
                              ("fit_device", lambda: pb.FitRequest(model_name="llama-2-7b", quant="Q4_0",
                                                                   device=f"dev-{random.randrange(args.agents):04d}"))):
            start = time.perf_counter()
            await fleet.Fit(request(), timeout=300, metadata=operator)  # the first asks the database for everything
            figures[f"{name}_first_ms"] = 1000 * (time.perf_counter() - start)
            latencies = []
            for _ in range(args.fit_queries):
                start = time.perf_counter()
                await fleet.Fit(request(), timeout=120, metadata=operator)
                latencies.append(time.perf_counter() - start)
            figures[f"{name}_p50_ms"], figures[f"{name}_p99_ms"] = (1000 * percentile(latencies, q) for q in (0.5, 0.99))
        for c in channels:
            await c.close()
    finally:
        coordinator.stop()
    return figures


def postgres_schema_url() -> tuple[str, callable]:
    import psycopg

    schema = f"fleetfit_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")

    def drop():
        with psycopg.connect(POSTGRES_URL, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")

    return f"{POSTGRES_URL}?options=-csearch_path%3D{schema}", drop


async def all_devices(fleet, operator) -> list:
    """Every device, following ListDevices' pages."""
    request, found = pb.ListDevicesRequest(), []
    while True:
        reply = await fleet.ListDevices(request, timeout=60, metadata=operator)
        found += reply.devices
        if not reply.next_page_token:
            return found
        request.page_token = reply.next_page_token


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", default="sqlite,postgresql")
    parser.add_argument("--agents", type=int, default=1000)
    parser.add_argument("--results", type=int, default=100_000)
    parser.add_argument("--contact-s", type=float, default=10.0)
    parser.add_argument("--contact-phase-s", type=float, default=35.0)
    parser.add_argument("--fit-queries", type=int, default=100)
    args = parser.parse_args()
    rows = {}
    for kind in args.db.split(","):
        with tempfile.TemporaryDirectory(prefix="fleetfit-scale-") as tmp:
            if kind == "sqlite":
                url, cleanup = str(pathlib.Path(tmp) / "fleet.sqlite3"), (lambda: None)
            elif kind == "postgresql":
                url, cleanup = postgres_schema_url()
            else:
                raise SystemExit(f"error: unknown --db {kind!r} (sqlite, postgresql)")
            try:
                print(f"{kind}: {args.agents} agents, {args.results} results ...", file=sys.stderr, flush=True)
                rows[kind] = asyncio.run(bench(url, args, pathlib.Path(tmp)))
            finally:
                cleanup()
    kinds = list(rows)
    print(f"\n{args.agents} agents, {args.results} results, contact every {args.contact_s:g} s "
          f"for {args.contact_phase_s:g} s, {os.cpu_count()} CPUs shared by coordinator and agents\n")
    print("| figure | " + " | ".join(kinds) + " | target |")
    print("| --- | " + " | ".join("---:" for _ in kinds) + " | --- |")
    lines = [("results ingested /s", "ingest_per_s", "{:.0f}", f">= {TARGET_INGEST_PER_S:.0f}"),
             ("ReportResult latency p50 / p99 ms", ("ingest_p50_ms", "ingest_p99_ms"), "{:.1f} / {:.1f}", ""),
             ("coordinator CPU during ingest (cores)", "ingest_server_cpu", "{:.2f}", ""),
             ("results stored", "stored", "{:d}", f"= {args.results}"),
             ("agent contacts /s held", "contacts_per_s", "{:.0f}", f"{args.agents / args.contact_s:.0f}"),
             ("coordinator CPU during contact (cores)", "contact_server_cpu", "{:.2f}", ""),
             ("devices marked lost", "lost", "{:d}", "0"),
             ("longest silence, read after the last polls returned (s)", "max_silence_s", "{:.1f}", "< 30 (lost)"),
             ("fit, whole fleet: first query after start, ms", "fit_fleet_first_ms", "{:.0f}", ""),
             ("fit, whole fleet: p50 / p99 ms", ("fit_fleet_p50_ms", "fit_fleet_p99_ms"), "{:.1f} / {:.1f}",
              f"p99 <= {TARGET_FIT_P99_MS:.0f}"),
             ("fit, one device: p50 / p99 ms", ("fit_device_p50_ms", "fit_device_p99_ms"), "{:.1f} / {:.1f}",
              f"p99 <= {TARGET_FIT_P99_MS:.0f}")]
    for label, keys, fmt, target in lines:
        keys = keys if isinstance(keys, tuple) else (keys,)
        print(f"| {label} | " + " | ".join(fmt.format(*(rows[k][key] for key in keys)) for k in kinds) + f" | {target} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
