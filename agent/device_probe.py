"""Once per device: sustained memory bandwidth and peak matrix-multiply throughput, cached with the inventory.

CPU bandwidth is a STREAM-like triad (a = b + s·c) run by one thread per usable CPU (agent/resources.py) at once
(numpy releases the GIL on big arrays) on arrays much larger than the last-level cache, best of
several runs; bytes are counted as STREAM does (3 arrays per pass, no write-allocate). The triad
goes through an L2-sized scratch chunk so that memory sees one pass over each array. Matmul is
numpy's BLAS, float32 and float64. GPU: a device-to-device copy and fp16/fp32 matmul through torch,
only where torch sees CUDA (torch is imported here and nowhere else in the agent).
"""

import json
import pathlib
import re
import socket
import threading
import time

import numpy as np

from fleetfit.agent import resources
from fleetfit.agent.inventory import cpu_model
from fleetfit.v1 import fleetfit_pb2 as pb

PROBE_VERSION = 1
CHUNK_ELEMENTS = 1 << 15  # 256 KiB of float64: the scratch stays in L2
MIN_ARRAY_BYTES = 64 << 20


def cache_key() -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", f"{socket.gethostname()}--{cpu_model()}")


def cache_path(cache_dir: pathlib.Path) -> pathlib.Path:
    return pathlib.Path(cache_dir) / "probes" / f"{cache_key()}.json"


def last_level_cache_bytes(sys_root: pathlib.Path = pathlib.Path("/sys")) -> int | None:
    sizes = []
    for path in (sys_root / "devices/system/cpu/cpu0/cache").glob("index*/size"):
        match = re.fullmatch(r"(\d+)([KMG]?)", path.read_text().strip())
        if match:
            sizes.append(int(match[1]) << {"": 0, "K": 10, "M": 20, "G": 30}[match[2]])
    return max(sizes, default=None)


def triad_array_bytes(threads: int) -> int:
    """Per array, so that the 3 · threads arrays together are at least 4x the last-level cache, within 1/4 of free RAM."""
    llc = last_level_cache_bytes() or 32 << 20
    wanted = max(MIN_ARRAY_BYTES, 4 * llc // (3 * threads))
    return int(min(wanted, resources.memory().available_bytes // (4 * 3 * threads)))


def _triad(a, b, c, scalar: float, start: threading.Barrier) -> None:
    scratch = np.empty(CHUNK_ELEMENTS)
    start.wait()
    for i in range(0, len(a), CHUNK_ELEMENTS):
        j = min(i + CHUNK_ELEMENTS, len(a))
        np.multiply(c[i:j], scalar, out=scratch[:j - i])
        np.add(b[i:j], scratch[:j - i], out=a[i:j])


def triad_bandwidth(threads: int, array_bytes: int, runs: int = 8) -> list[float]:
    """GB/s (1e9 bytes/s) of each run: all threads' bytes over the wall time of the slowest."""
    n = array_bytes // 8
    arrays = [(np.zeros(n), np.full(n, 1.0), np.full(n, 2.0)) for _ in range(threads)]
    samples = []
    for _ in range(runs):
        barrier = threading.Barrier(threads + 1)
        workers = [threading.Thread(target=_triad, args=(*abc, 3.0, barrier)) for abc in arrays]
        for worker in workers:
            worker.start()
        barrier.wait()
        start = time.perf_counter()
        for worker in workers:
            worker.join()
        samples.append(3 * 8 * n * threads / (time.perf_counter() - start) / 1e9)
    if not np.allclose(arrays[0][0][:CHUNK_ELEMENTS], 7.0):
        raise RuntimeError("the triad computed a wrong result")
    return samples


def blas_name() -> str:
    try:
        return np.show_config(mode="dicts")["Build Dependencies"]["blas"]["name"]
    except Exception:  # noqa: BLE001 - older numpy: the name is only cosmetic
        return "unknown BLAS"


def check_product(a: np.ndarray, b: np.ndarray, c: np.ndarray, samples: int = 16) -> None:
    """Raise unless c = a @ b at a few entries, summed in float64 without BLAS."""
    rows = np.linspace(0, a.shape[0] - 1, samples).astype(int)
    cols = np.linspace(b.shape[1] - 1, 0, samples).astype(int)  # off the diagonal: a transposed product differs
    expected = (a[rows].astype(np.float64) * b[:, cols].T.astype(np.float64)).sum(axis=1)
    if not np.allclose(c[rows, cols], expected, rtol=1e-3):
        raise RuntimeError("the matmul computed a wrong result")


MATMUL_BUDGET_S = 2.0  # per product: float64 at n=2048 takes seconds on a Pi, ~11 minutes under qemu-aarch64


def matmul_size(dtype: str, n_max: int, budget_s: float = MATMUL_BUDGET_S) -> int:
    """n_max, or the largest multiple of 128 (at least 128) whose n x n product takes at most about budget_s here,
    from the time of one n=256 product: a slow board's probe stays short, a fast one's size stays n_max."""
    rng = np.random.default_rng(0)
    a, b = rng.random((256, 256), dtype=dtype), rng.random((256, 256), dtype=dtype)
    with np.errstate(all="ignore"):
        a @ b  # BLAS thread pool start
        start = time.perf_counter()
        a @ b
    flop_per_s = 2 * 256 ** 3 / max(time.perf_counter() - start, 1e-9)
    n = int((budget_s * flop_per_s / 2) ** (1 / 3)) // 128 * 128
    return max(128, min(n_max, n))


def matmul_gflops(dtype: str, n: int, runs: int = 3) -> list[float]:
    rng = np.random.default_rng(0)
    a, b = rng.random((n, n), dtype=dtype), rng.random((n, n), dtype=dtype)
    # OpenBLAS's aarch64 kernels can leave floating-point status flags set (seen under qemu-aarch64), which numpy
    # reports as divide-by-zero/overflow warnings on inputs in [0, 1): the product is checked instead.
    with np.errstate(all="ignore"):
        check_product(a, b, a @ b)  # also the warm-up: BLAS thread pool start
        samples = []
        for _ in range(runs):
            start = time.perf_counter()
            a @ b
            samples.append(2 * n ** 3 / (time.perf_counter() - start) / 1e9)
    return samples


def probe_cpu(runs: int = 8, array_bytes: int | None = None, matmul_n: int = 2048) -> tuple[list, list]:
    threads = resources.cpus().count
    array_bytes = array_bytes or triad_array_bytes(threads)
    samples = triad_bandwidth(threads, array_bytes, runs)
    bandwidth = pb.BandwidthProbe(
        target="cpu", gb_per_s=max(samples), samples_gb_per_s=samples, bytes_per_array=array_bytes, threads=threads,
        provenance=pb.Provenance(provenance_kind=pb.PROVENANCE_KIND_MEASURED, method="stream_triad_numpy: a = b + s*c, one numpy thread per "
                                 "usable CPU, 3 arrays x 8 bytes per element counted, best of runs",
                                 scope="system memory from the CPU"))
    matmul = []
    for dtype in ("float32", "float64"):
        n = matmul_size(dtype, matmul_n)
        gflops = matmul_gflops(dtype, n)
        matmul.append(pb.MatmulProbe(
            target="cpu", precision=dtype, gflop_per_s=max(gflops), n=n,
            provenance=pb.Provenance(provenance_kind=pb.PROVENANCE_KIND_MEASURED, method=f"numpy_matmul ({blas_name()} BLAS, its own threads), "
                                     "2n^3 FLOPs, best of 3", scope="cpu")))
    return [bandwidth], matmul


def probe_gpus() -> tuple[list, list, str]:
    """Bandwidth and matmul probes for every CUDA device torch sees, or a note saying why there are none."""
    try:
        import torch
    except ImportError:
        return [], [], "torch is not installed: no GPU probe"
    if not torch.cuda.is_available():
        return [], [], "torch sees no CUDA device: no GPU probe"
    bandwidth, matmul = [], []
    for index in range(torch.cuda.device_count()):
        device, target = torch.device("cuda", index), f"gpu:{index}"
        src = torch.empty(256 << 20, dtype=torch.uint8, device=device)
        dst = torch.empty_like(src)
        samples = []
        for _ in range(5):
            torch.cuda.synchronize(device)
            start = time.perf_counter()
            dst.copy_(src)
            torch.cuda.synchronize(device)
            samples.append(2 * src.numel() / (time.perf_counter() - start) / 1e9)  # read + write
        bandwidth.append(pb.BandwidthProbe(
            target=target, gb_per_s=max(samples), samples_gb_per_s=samples, bytes_per_array=src.numel(), threads=1,
            provenance=pb.Provenance(provenance_kind=pb.PROVENANCE_KIND_MEASURED, method="torch_cuda_d2d_copy: read + write bytes, best of 5",
                                     scope=target)))
        for dtype in (torch.float16, torch.float32):
            n = 4096
            a, b = torch.randn(n, n, dtype=dtype, device=device), torch.randn(n, n, dtype=dtype, device=device)
            a @ b
            torch.cuda.synchronize(device)
            start = time.perf_counter()
            for _ in range(5):
                a @ b
            torch.cuda.synchronize(device)
            gflops = 5 * 2 * n ** 3 / (time.perf_counter() - start) / 1e9
            matmul.append(pb.MatmulProbe(
                target=target, precision=str(dtype).removeprefix("torch."), gflop_per_s=gflops, n=n,
                provenance=pb.Provenance(provenance_kind=pb.PROVENANCE_KIND_MEASURED, method="torch_cuda_matmul, mean of 5", scope=target)))
    return bandwidth, matmul, ""


def run_probes(**cpu_options) -> pb.DeviceProbes:
    bandwidth, matmul = probe_cpu(**cpu_options)
    gpu_bandwidth, gpu_matmul, gpu_note = probe_gpus()
    if gpu_note:
        bandwidth.append(pb.BandwidthProbe(target="gpu", note=gpu_note))
    return pb.DeviceProbes(bandwidth=bandwidth + gpu_bandwidth, matmul=matmul + gpu_matmul,
                           probed_unix_s=time.time(), cache_key=cache_key())


def load_cached(cache_dir: pathlib.Path) -> pb.DeviceProbes | None:
    from google.protobuf import json_format

    from fleetfit.v1.words import parse_dict

    try:
        data = json.loads(cache_path(cache_dir).read_text())
        if data.get("version") != PROBE_VERSION:
            return None
        return parse_dict(data["probes"], pb.DeviceProbes())  # caches written before the enums read the same
    except (OSError, ValueError, KeyError, json_format.ParseError):
        return None  # no cache, or one this agent cannot read: probe again


def probes(cache_dir: pathlib.Path, refresh: bool = False, **cpu_options) -> pb.DeviceProbes:
    """The cached probes of this device, measured now if there are none (or if refresh)."""
    from google.protobuf import json_format

    cached = None if refresh else load_cached(cache_dir)
    if cached is not None:
        return cached
    result = run_probes(**cpu_options)
    path = cache_path(cache_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"version": PROBE_VERSION, "probes": json_format.MessageToDict(result)}, indent=2))
    tmp.replace(path)
    return result


def cpu_bandwidth_and_peak(found: pb.DeviceProbes | None) -> tuple[pb.BandwidthProbe | None, pb.MatmulProbe | None]:
    """The CPU's measured bandwidth and float32 matmul peak (the roof for llama.cpp's CPU kernels)."""
    if found is None:
        return None, None
    bandwidth = next((b for b in found.bandwidth if b.target == "cpu" and b.HasField("gb_per_s")), None)
    peak = next((m for m in found.matmul if m.target == "cpu" and m.precision == "float32"
                 and m.HasField("gflop_per_s")), None)
    return bandwidth, peak
