"""Helpers every backend shares: process memory readings, repetition statistics and the figures each reports.
Imports no runtime, so a backend can use them without loading another backend's libraries."""

import resource
import statistics
import sys

from fleetfit.agent.backends.base import StatFigures


def max_rss_bytes() -> int:
    """This process's peak RSS (VmHWM: ru_maxrss carries the parent's peak over fork and exec on Linux)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return maxrss if sys.platform == "darwin" else maxrss * 1024


def current_rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def stat(samples: list[float]) -> StatFigures:
    return StatFigures(mean=statistics.fmean(samples), stdev=statistics.stdev(samples) if len(samples) > 1 else 0.0,
                       samples=tuple(samples))


def run_figures(load_time_s: float, prefill_tps: list[float], ttft_ms: list[float], decode_tps: list[float],
                baseline_rss: int, memory_method: str) -> dict:
    """The RunFigures fields every backend fills the same way; peak RSS is read now, after the runs."""
    return {"load_time_s": load_time_s, "prefill_tokens_per_s": stat(prefill_tps), "ttft_ms": stat(ttft_ms),
            "decode_tokens_per_s": stat(decode_tps), "peak_rss_bytes": max_rss_bytes(),
            "baseline_rss_bytes": baseline_rss, "memory_method": memory_method}
