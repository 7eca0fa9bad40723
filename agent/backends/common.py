"""Helpers the torch and ONNX Runtime backends share: process memory readings and repetition statistics.
Imports no runtime, so a backend can use them without loading another backend's libraries."""

import resource
import statistics
import sys


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


def stat(samples: list[float]) -> dict:
    return {"mean": statistics.fmean(samples), "stdev": statistics.stdev(samples) if len(samples) > 1 else 0.0,
            "samples": samples}

# Precisions of the torch backend, named here (no torch import) so the agent can validate requests.
TORCH_PRECISIONS = ("fp32", "bf16", "fp16", "int8", "int4")
ONNX_PRECISIONS = ("fp32", "int8", "int4")  # int8: dynamic quantization; int4: MatMulNBits, blocks of 32
