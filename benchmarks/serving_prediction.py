"""Leave-one-out errors of the serving model's predicted aggregate decode speed (coordinator/predict/serving.py).

    python benchmarks/serving_prediction.py                     # llama-batched-bench's sweeps (docs: measurement.md)
    python benchmarks/serving_prediction.py --db FLEET.sqlite3  # the sweeps in a coordinator database (or a
                                                                # postgresql://... URL)

Per sweep, each count above the smallest is held out and predicted from the sweep's other counts, printed beside
the measurement: t(N) = a + b·N (what serving.py fits) and, for comparison, the overlap form of the roofline,
t(N) = max(a, c·N) + k·N (fitted by a grid over a and c). Then each swept model is held out whole and predicted
as a model never swept (its one stream from the scaling model, its per-stream cost from the device's other
sweeps). Reference: ±15 % for the held-out counts (the band the tables print is the largest of these).
"""

import argparse
import pathlib
import sys

import numpy as np

from fleetfit.coordinator.predict import scaling, serving
from fleetfit.coordinator.service.db import is_postgres_url
from fleetfit.coordinator.service.store import Store
from fleetfit.v1 import fleetfit_pb2 as pb

TARGET = 0.15
# llama-batched-bench (npp 128, ntg 64) on the 2-core development machine: aggregate decode tok/s by streams
REFERENCE = {("smollm2-135m", "Q4_0"): {1: 175.0, 4: 268.0, 8: 335.0, 16: 359.0},
             ("tinyllama-1.1b", "Q4_0"): {1: 44.0, 4: 59.0, 8: 56.0, 16: 65.0}}


def reference_results() -> tuple[list[pb.ProfileResult], list[pb.DeviceInventory]]:
    """The reference sweeps as results of one device, the way the agent reports them."""
    device = pb.DeviceInventory(device_id="reference-2core", hostname="reference", ram_total_bytes=24 << 30)
    results = []
    for i, ((model, quant), sweep) in enumerate(REFERENCE.items()):
        r = pb.ProfileResult(result_id=f"ref-{model}", device_id=device.device_id, model_name=model, quant=quant,
                             request=pb.ProfileRequest(backend="llama.cpp", quant=quant, n_prompt=128, n_gen=64,
                                                       parallel=list(sweep)),
                             n_prompt=128, n_gen=64, n_ctx=192, threads=2, started_unix_s=i,
                             decode_tokens_per_s=pb.Stat(mean=sweep[1]))
        for n, aggregate in sweep.items():
            r.serving.add(parallel=n, aggregate_decode_tokens_per_s=pb.Stat(mean=aggregate))
        results.append(r)
    return results, [device]


def from_store(url: str) -> tuple[list[pb.ProfileResult], list[pb.DeviceInventory]]:
    if not is_postgres_url(url) and not pathlib.Path(url).is_file():
        sys.exit(f"error: no coordinator database at {url}")
    with Store(url) as store:  # results as answers read them (ingest.usable)
        return store.results(), [d.inventory for d in store.devices()]


def fit_overlap_form(points: list[tuple[int, float]]) -> tuple[float, float, float] | None:
    """(a, c, k) of t(N) = max(a, c·N) + k·N, least squares (relative) by a grid over a and c; k >= 0 in closed
    form for each."""
    counts, steps = np.array([n for n, _ in points], float), np.array([t for _, t in points], float)
    if len(set(counts)) < 2:
        return None
    best = None
    for a in np.geomspace(steps.min() / 20, steps.max(), 120):
        for c in np.geomspace(steps.min() / counts.max() / 20, steps.max() / counts.min(), 120):
            base = np.maximum(a, c * counts)
            k = max(float(np.sum((steps - base) * counts / steps**2) / np.sum((counts / steps) ** 2)), 0.0)
            error = float(np.sum(((base + k * counts) / steps - 1) ** 2))
            if best is None or error < best[0]:
                best = (error, a, c, k)
    return best[1:]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", help="a coordinator database: SQLite file or postgresql:// URL")
    args = parser.parse_args()
    results, inventories = from_store(args.db) if args.db else reference_results()
    source = args.db or "llama-batched-bench reference sweeps (measurement.md)"
    print(f"# serving prediction: leave-one-out on {source}\n")
    inventories = {i.device_id: i for i in inventories}
    worst, overlap_worst, model_worst = 0.0, 0.0, 0.0
    swept = serving.curves(results)
    if not swept:
        print("no sweeps found (run `fleetfit-agent profile --parallel 1,2,4,8` first)")
        return 1
    for device_id, backend in dict.fromkeys((c.device_id, c.backend) for c in swept):
        inventory = inventories.get(device_id, pb.DeviceInventory(device_id=device_id))
        dm = scaling.device_model(inventory, results, backend)
        mine = [c for c in swept if (c.device_id, c.backend) == (device_id, backend)]
        print(f"## {device_id} {backend}\n")
        print("| model | precision | held out | measured tok/s | a + b·N tok/s | error "
              "| max(a, c·N) + k·N tok/s | error |")
        print("|---|---|---|---|---|---|---|---|")
        errors = {(id(c), n): e for c, n, e in serving.leave_one_count_out(mine, dm)}
        for c in mine:
            for p in c.points[1:]:
                if (id(c), p.streams) not in errors:
                    continue
                e = errors[(id(c), p.streams)]
                worst = max(worst, abs(e))
                overlap = fit_overlap_form([(q.streams, q.step_s) for q in c.points if q.streams != p.streams])
                if overlap:
                    a, cc, k = overlap
                    predicted = p.streams / (max(a, cc * p.streams) + k * p.streams)
                    oe = predicted / p.aggregate_tps - 1
                    overlap_worst = max(overlap_worst, abs(oe))
                    overlap_text = f"{predicted:.1f} | {oe:+.1%}"
                else:
                    overlap_text = "n/a | n/a"
                print(f"| {c.model} | {c.quant} | {p.streams} | {p.aggregate_tps:.1f} | "
                      f"{p.aggregate_tps * (1 + e):.1f} | {e:+.1%} | {overlap_text} |")
        held = serving.leave_one_model_out(mine, dm)
        if held:
            print("\nwhole sweeps held out (predicted as models never swept here):\n")
            print("| model | precision | streams | measured tok/s | predicted tok/s | error |")
            print("|---|---|---|---|---|---|")
            for c, n, e in held:
                model_worst = max(model_worst, abs(e))
                measured = c.at(n).aggregate_tps
                print(f"| {c.model} | {c.quant} | {n} | {measured:.1f} | {measured * (1 + e):.1f} | {e:+.1%} |")
        print()
    print(f"largest |error|, held-out counts: a + b·N {worst:.1%}, max(a, c·N) + k·N {overlap_worst:.1%} "
          f"(reference ±{TARGET:.0%}); whole sweeps held out: "
          + (f"{model_worst:.1%}" if model_worst else "n/a (one swept model per device)"))
    return 0 if worst <= TARGET else 1


if __name__ == "__main__":
    sys.exit(main())
