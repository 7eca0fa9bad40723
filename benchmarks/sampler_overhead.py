#!/usr/bin/env python3
"""What the power sampler costs: CPU time of its thread as % of one core, beside the 1 % target.

Runs the sampler at 20 Hz for 10 s per configuration while the main thread sleeps:
  this-machine   what discover_power_sources() finds here (on a VM: the utilization estimate only)
  + fixtures     the same plus the committed sysfs trees' readers (an INA226 hwmon sensor, three
                 Jetson Orin rails read as mV × mA, four Intel RAPL zones): eight more sources,
                 reading real files, as on a device with sensors.
The sampler thread's CPU time is read from its own CPU clock, which the main thread can query.
"""
import argparse
import pathlib
import time

import psutil

from fleetfit.agent.telemetry import PowerSampler, discover_power_sources
from fleetfit.agent.telemetry.hwmon import discover_hwmon
from fleetfit.agent.telemetry.jetson import discover_jetson
from fleetfit.agent.telemetry.rapl import discover_rapl

TARGET_PERCENT_OF_ONE_CORE = 1.0
FIXTURES = pathlib.Path(__file__).resolve().parents[1] / "tests/fixtures/sysfs"


def measure(sources, rate_hz: float, seconds: float) -> tuple[float, int, int]:
    """(% of one core used by the sampler thread, reads, skipped reads)."""
    sampler = PowerSampler(sources, rate_hz=rate_hz)
    sampler.start()
    # The thread's own CPU clock (CLOCK_THREAD_CPUTIME_ID), read from outside it: ns resolution.
    thread_clock = time.pthread_getcpuclockid(sampler.thread.ident)
    cpu_before, wall_before = time.clock_gettime(thread_clock), time.monotonic()
    time.sleep(seconds)
    cpu_used, wall = time.clock_gettime(thread_clock) - cpu_before, time.monotonic() - wall_before
    sampler.stop()
    reads = sum(len(track.read_ns) for track in sampler.tracks)
    skipped = sum(len(track.skipped_ns) for track in sampler.tracks)
    return 100 * cpu_used / wall, reads, skipped


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate-hz", type=float, default=20.0)
    parser.add_argument("--seconds", type=float, default=10.0, help="per configuration")
    args = parser.parse_args()

    here = discover_power_sources().sources
    fixtures = [
        *discover_hwmon(FIXTURES / "arm-board-ina226").sources,
        *discover_jetson(FIXTURES / "jetson-orin-nano-jp5").sources,
        *discover_rapl(FIXTURES / "intel-xeon-2s").sources,
    ]
    print(f"sampler at {args.rate_hz:g} Hz, {args.seconds:g} s per configuration, {psutil.cpu_count()} CPUs here")
    print(f"{'configuration':<16} {'sources':>7} {'reads':>6} {'skipped':>7} {'% of one core':>13} {'target':>7}")
    for label, sources in (("this-machine", here), ("+ fixtures", here + fixtures)):
        percent, reads, skipped = measure(sources, args.rate_hz, args.seconds)
        verdict = "ok" if percent <= TARGET_PERCENT_OF_ONE_CORE else "OVER"
        print(f"{label:<16} {len(sources):>7} {reads:>6} {skipped:>7} {percent:>12.3f}% {TARGET_PERCENT_OF_ONE_CORE:>6.1f}%  {verdict}")
    print("sources here: " + ", ".join(f"{s.name} ({s.method}, {s.provenance})" for s in here))


if __name__ == "__main__":
    main()
