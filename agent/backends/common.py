"""Helpers every backend shares: process memory readings, repetition statistics and the figures each reports.
Imports no runtime, so a backend can use them without loading another backend's libraries."""

import resource
import statistics
import sys

from fleetfit.agent.backends.base import GpuMemoryFigures, ServingFigures, StatFigures

SERVING_MEMORY = {True: "serving points: peak RSS per repetition, VmHWM reset (/proc/self/clear_refs) before each",
                  False: "serving points: peak RSS of the worker up to each repetition (VmHWM cannot be reset here)"}


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


def reset_peak_rss() -> bool:
    """Reset this process's VmHWM to its current RSS, so that the next max_rss_bytes() is the peak from now on
    (Linux >= 4.0: "5" written to /proc/self/clear_refs). False where that is not supported."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


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


def percentile(values: list[float], fraction: float) -> float:
    """Linear interpolation between the closest ranks (numpy's default): p50 of [1, 2, 3, 4] is 2.5."""
    ordered = sorted(values)
    rank = fraction * (len(ordered) - 1)
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def serving_figures(parallel: int, n_prompt: int, n_gen: int, prefill_s: list[float], decode_s: list[float],
                    ttft_s: list[list[float]], peak_bytes: list[int],
                    gpu_memory: GpuMemoryFigures | None = None) -> ServingFigures:
    """A serving point from its repetitions: seconds of the N prompts' prefill and of the n_gen decode steps, each
    stream's TTFT in seconds, and the peak memory of each repetition."""
    aggregate = [parallel * n_gen / s for s in decode_s]
    return ServingFigures(
        parallel=parallel, aggregate_decode_tokens_per_s=stat(aggregate),
        per_stream_decode_tokens_per_s=stat([a / parallel for a in aggregate]),
        prefill_tokens_per_s=stat([parallel * n_prompt / s for s in prefill_s]),
        ttft_ms_p50=stat([1000 * percentile(streams, 0.50) for streams in ttft_s]),
        ttft_ms_p99=stat([1000 * percentile(streams, 0.99) for streams in ttft_s]),
        peak_memory_bytes=stat([float(b) for b in peak_bytes]), gpu_memory=gpu_memory)
