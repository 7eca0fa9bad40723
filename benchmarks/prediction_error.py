"""Leave-one-size-out errors of the scaling model (coordinator/scaling.py) on a measured ladder.

    python benchmarks/prediction_error.py                          # the committed fixture, tests/fixtures/ladder
    python benchmarks/prediction_error.py --db /tmp/ladder/fleet.sqlite3   # fresh results in a coordinator database
    python benchmarks/prediction_error.py --db DB --export tests/fixtures/ladder   # refresh the fixture

Every size is held out in turn (all its precisions); the model fitted on the other sizes of the same device
predicts its peak memory and decode tokens/s (best repetition), printed beside the measurement. Targets:
memory within ±10%, decode within ±20%.
"""

import argparse
import json
import pathlib
import socket
import sqlite3
import sys

from google.protobuf import json_format

from fleetfit.coordinator import scaling
from fleetfit.v1 import fleetfit_pb2 as pb
from fleetfit.v1.words import parse_dict

FIXTURE = pathlib.Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "ladder"
MEMORY_TARGET, DECODE_TARGET = 0.10, 0.20


def from_db(path: str) -> list[pb.ProfileResult]:
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)  # read-only: the coordinator may be writing
    return [pb.ProfileResult.FromString(bytes(p)) for (p,) in db.execute("SELECT payload FROM results ORDER BY received")]


def load_fixture(directory: pathlib.Path = FIXTURE) -> tuple[list[pb.ProfileResult], list[pb.Device]]:
    results = [parse_dict(json.loads(p.read_text()), pb.ProfileResult()) for p in sorted(directory.glob("result-*.json"))]
    results.sort(key=lambda r: r.started_unix_s)
    devices = [parse_dict(json.loads(p.read_text()), pb.Device()) for p in sorted(directory.glob("device-*.json"))]
    return results, devices


def device_of(results: list[pb.ProfileResult]) -> pb.Device:
    """The inventory the results imply: id, RAM of this machine, bandwidth and matmul probes from the roofline."""
    import psutil

    r = next(r for r in results if r.HasField("roofline"))
    inv = pb.DeviceInventory(device_id=r.device_id, hostname=socket.gethostname(),
                             ram_total_bytes=psutil.virtual_memory().total)
    if r.roofline.HasField("device_bandwidth_gb_per_s"):
        inv.probes.bandwidth.add(target="cpu", gb_per_s=r.roofline.device_bandwidth_gb_per_s)
    if r.roofline.HasField("device_peak_gflop_per_s"):
        inv.probes.matmul.add(target="cpu", precision="float32", gflop_per_s=r.roofline.device_peak_gflop_per_s)
    return pb.Device(inventory=inv)


def export(results: list[pb.ProfileResult], directory: pathlib.Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for r in results:
        r = pb.ProfileResult.FromString(r.SerializeToString())
        r.backend_build = r.backend_build[:200]  # llama.cpp's system info: long and not needed here
        name = f"result-{r.model_name}-{r.quant or r.request.quant}.json"
        (directory / name).write_text(json_format.MessageToJson(r, preserving_proto_field_name=True) + "\n")
    device = device_of(results)
    (directory / f"device-{device.inventory.device_id}.json").write_text(
        json_format.MessageToJson(device, preserving_proto_field_name=True) + "\n")


def errors(results: list[pb.ProfileResult]) -> list[tuple[str, scaling.Point, scaling.Prediction]]:
    out = []
    for device_id in sorted({r.device_id for r in results}):
        pts = scaling.points(results, device_id)
        out += [(device_id, p, pred) for p, pred in scaling.leave_one_size_out(pts)]
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", help="coordinator SQLite database (default: the committed fixture)")
    parser.add_argument("--export", type=pathlib.Path, help="write the results as a fixture directory")
    args = parser.parse_args()
    results = from_db(args.db) if args.db else load_fixture()[0]
    if args.export:
        export(results, args.export)
        print(f"exported {len(results)} results to {args.export}")
    rows = errors(results)
    if not rows:
        print("no device has two or more measured sizes: nothing to hold out")
        return 1
    print(f"{'device':<14} {'model':<15} {'quant':<5} {'peak MB':>9} {'pred MB':>9} {'err':>7}   "
          f"{'tg tok/s':>9} {'pred':>9} {'err':>7}")
    worst = {"memory": 0.0, "decode": 0.0}
    for device_id, p, pred in rows:
        mem_err = pred.memory_bytes.value / p.peak_bytes - 1
        dec_err = pred.decode_tps.value / p.decode_tps - 1
        worst = {"memory": max(worst["memory"], abs(mem_err)), "decode": max(worst["decode"], abs(dec_err))}
        print(f"{device_id:<14} {p.model:<15} {p.quant:<5} {p.peak_bytes / 1e6:9.1f} {pred.memory_bytes.value / 1e6:9.1f} "
              f"{mem_err:+7.1%}   {p.decode_tps:9.3f} {pred.decode_tps.value:9.3f} {dec_err:+7.1%}")
    ok = worst["memory"] <= MEMORY_TARGET and worst["decode"] <= DECODE_TARGET
    print(f"worst: memory {worst['memory']:.1%} (target {MEMORY_TARGET:.0%}), decode {worst['decode']:.1%} "
          f"(target {DECODE_TARGET:.0%}): {'within' if ok else 'OUTSIDE'} the targets")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
