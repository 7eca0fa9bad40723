#!/usr/bin/env python3
"""Answers at 100,000 stored results: the time of `fleetfit limits speed` (GetTable "speed"), of the measured
limit table and of a fleet-wide `fit`, with the coordinator's RSS, on SQLite.

    python benchmarks/table_scale.py [--results 100000] [--devices 1000] [--db PATH]

The results are realistic llama.cpp profiles (benchmarks/fleet_scale.py's a_result: 5 repetitions, power per
phase) of many devices × models × quants, written straight into the real Store's SQLite file (ingest is
bypassed for speed: fleet_scale.py measures ingest). The answers are built in this process as the server's
servicers build them (tables.build_from_store, limits.limit_rows, fit.respond), each asked twice: the first
pays for reading the results, the second shows what asking again costs. RSS is this process's; CPU time is
shown beside wall time because a shared machine's wall time says more about its neighbours.
"""
import argparse
import pathlib
import random
import sys
import tempfile
import time

import psutil

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from fleet_scale import a_result, device_inventory  # noqa: E402

from fleetfit.coordinator.answers import fit as fit_answers  # noqa: E402
from fleetfit.coordinator.answers import tables  # noqa: E402
from fleetfit.coordinator.answers.limits import limit_rows  # noqa: E402
from fleetfit.coordinator.service.store import Store  # noqa: E402
from fleetfit.v1 import fleetfit_pb2 as pb  # noqa: E402


def fill(store: Store, n_results: int, n_devices: int) -> None:
    """`n_devices` devices and `n_results` results spread over them, in a few large transactions."""
    ids = [f"dev-{n:04d}" for n in range(n_devices)]
    for n, _ in enumerate(ids):
        store.upsert_device(device_inventory(n))
    now = time.time()
    batch = 5000
    for start in range(0, n_results, batch):
        rows = []
        for i in range(start, min(start + batch, n_results)):
            r = a_result(random.choice(ids))
            rows.append((r.result_id, r.device_id, r.model_name, r.quant, r.request.backend, now - n_results + i,
                         r.SerializeToString(deterministic=True)))
        with store.db.transaction() as execute:
            for row in rows:
                execute("INSERT INTO results (result_id, device_id, job_id, model_name, quant, backend, failure, "
                        "received, payload) VALUES (?, ?, NULL, ?, ?, ?, 0, ?, ?)", row)
    with store.db.transaction() as execute:
        execute("UPDATE devices SET result_count = (SELECT COUNT(*) FROM results r "
                "WHERE r.device_id = devices.device_id)")


def timed(label: str, fn) -> None:
    for attempt in ("first", "again"):
        start, cpu = time.perf_counter(), time.process_time()
        fn()
        took, cpu = time.perf_counter() - start, time.process_time() - cpu
        rss = psutil.Process().memory_info().rss / 2**20
        print(f"{label:<34} {attempt:<6} {took:7.2f} s wall {cpu:7.2f} s CPU   RSS {rss:5.0f} MiB", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=int, default=100_000)
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--db", type=pathlib.Path, help="an existing file made by this script (skips the fill)")
    args = parser.parse_args()
    random.seed(26)
    with tempfile.TemporaryDirectory() as tmp:
        path = args.db or pathlib.Path(tmp) / "fleet.db"
        fresh = not path.exists()
        with Store(path) as store:
            if fresh:
                start = time.perf_counter()
                fill(store, args.results, args.devices)
                print(f"stored {args.results} results of {args.devices} devices in {time.perf_counter() - start:.1f} s")
        store = Store(path)  # a coordinator starting on the stored database
        print(f"{store.result_count()} results; RSS at start {psutil.Process().memory_info().rss / 2**20:.0f} MiB")
        timed("GetTable speed (limits speed)", lambda: tables.build_from_store("speed", store, {}))
        timed("GetTable measured", lambda: tables.build_from_store("measured", store, {}))
        timed("GetLimitTable", lambda: limit_rows(store.results(), store.devices()))
        cache = fit_answers.AnswerCache(store)
        request = pb.FitRequest(model_name="llama-2-7b", quant="Q4_0")
        timed("Fit llama-2-7b Q4_0, every device", lambda: fit_answers.respond(request, store, cache))
        store.close()


if __name__ == "__main__":
    main()
