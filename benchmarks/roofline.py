#!/usr/bin/env python3
"""Decode on the SmolLM2 ladder as a roofline point: achieved GB/s and % of the triad, beside the reference.

Profiles F16, Q8_0 and Q4_0 (files from the agent's cache: `fleetfit-agent models list --json`) with
llama-bench's tg shape, and prints bytes/token, decode tok/s, achieved GB/s and % of this device's
measured triad bandwidth. Reference (docs/measurement.md): F16 decode on a 2-core EPYC VM ran at
roughly 80-90 % of a numpy add's bandwidth. Run it alone: flock /tmp/fleetfit-heavy.lock python benchmarks/roofline.py
"""
import argparse
import pathlib

from fleetfit.agent import device_probe, profiling
from fleetfit.agent.model_cache import cached_models, default_cache_dir

REFERENCE = {"F16": "80-90 %"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache-dir", type=pathlib.Path, default=None)
    parser.add_argument("--n-gen", type=int, default=128)
    parser.add_argument("--repetitions", type=int, default=3)
    parser.add_argument("--refresh-probe", action="store_true", help="measure the triad again")
    args = parser.parse_args()
    cache = args.cache_dir or default_cache_dir()
    files = {quant: path for name, quant, path, _ in cached_models(cache) if name == "smollm2-135m"}
    probes = device_probe.probes(cache, refresh=args.refresh_probe)
    bandwidth, peak = device_probe.cpu_bandwidth_and_peak(probes)
    print(f"triad {bandwidth.gb_per_s:.1f} GB/s (samples {', '.join(f'{s:.1f}' for s in bandwidth.samples_gb_per_s)}), "
          f"{bandwidth.threads} threads; float32 matmul {peak.gflop_per_s:.0f} GFLOP/s")
    print(f"{'quant':<6} {'MB/token':>9} {'decode t/s':>11} {'achieved GB/s':>14} {'% of triad':>11} {'reference':>10}")
    for quant in ("F16", "Q8_0", "Q4_0"):
        if quant not in files:
            print(f"{quant:<6} not cached (fleetfit-agent models quantize smollm2-135m --to {quant})")
            continue
        request = profiling.make_request(str(files[quant]), n_prompt=64, n_gen=args.n_gen,
                                         repetitions=args.repetitions, idle_baseline_s=0)
        r = profiling.profile(request, "benchmark", cache)
        if r.failure:
            print(f"{quant:<6} failed: {r.error}")
            continue
        rl = r.roofline
        print(f"{quant:<6} {rl.bytes_per_token / 1e6:>9.1f} {r.decode_tokens_per_s.mean:>11.1f} "
              f"{rl.achieved_gb_per_s:>14.2f} {rl.percent_of_bandwidth:>10.1f}% {REFERENCE.get(quant, ''):>10}")


if __name__ == "__main__":
    main()
