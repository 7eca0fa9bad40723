#!/usr/bin/env python3
"""One short prepared check for an NVIDIA machine: torch (eager and CUDA-graph decode) and llama.cpp (full and
partial offload) on CUDA for the TinyLlama-1.1B and Llama-2-7B shapes at fp16 / int8 / int4 (llama.cpp: F16 /
Q8_0 / Q4_0), decode and prefill tokens/s against the bandwidth roofline, and GPU memory in its meanings.

    python benchmarks/gpu_check.py [--shapes tinyllama-1.1b,llama-2-7b] [--n-prompt 128] [--n-gen 64]

roofline % = weight bytes read per token x decode tokens/s / measured device-to-device copy bandwidth.
torch runs random weights created on the GPU (no CPU copy); llama.cpp runs synthetic GGUFs of the same shape
(written once into the cache), offloaded whole and then half its layers, when its build has CUDA (else its
rows say so and are skipped). GPU memory: torch reserved peak or llama.cpp's own GPU buffers, NVML's
per-process bytes (with the CUDA context), and the bytes fit decisions use.
Exits 2 with one line when torch sees no CUDA device.
"""
import argparse
import os
import pathlib
import sys
import time

SHAPES = "tinyllama-1.1b,llama-2-7b"
# (backend, precision, variant): torch decode eager or captured; llama.cpp all layers or half of them on the GPU
ROWS = [("torch", "fp16", "eager"), ("torch", "fp16", "graph"), ("torch", "int8", "graph"), ("torch", "int4", "graph"),
        ("llama.cpp", "F16", "all layers"), ("llama.cpp", "Q8_0", "all layers"), ("llama.cpp", "Q4_0", "all layers"),
        ("llama.cpp", "Q4_0", "half the layers")]


def copy_bandwidth_gb_per_s(torch, n_bytes: int = 1 << 30, repeats: int = 10) -> float:
    """Best of `repeats` device-to-device copies of n_bytes; a copy reads and writes, so 2 x n_bytes move."""
    src = torch.empty(n_bytes, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    dst.copy_(src)
    best = float("inf")
    for _ in range(repeats):
        torch.cuda.synchronize()
        start = time.perf_counter()
        dst.copy_(src)
        torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    del src, dst
    torch.cuda.empty_cache()
    return 2 * n_bytes / best / 1e9


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default=SHAPES, help=f"catalogue shapes (default {SHAPES})")
    parser.add_argument("--n-prompt", type=int, default=128)
    parser.add_argument("--n-gen", type=int, default=64)
    parser.add_argument("--repetitions", type=int, default=3)
    parser.add_argument("--cache-dir", type=pathlib.Path, default=None)
    parser.add_argument("--backends", default="torch,llama.cpp", help="comma-separated: torch, llama.cpp")
    args = parser.parse_args()
    try:
        import torch
    except ImportError:
        print("error: torch is not installed (pip install 'fleetfit[torch]' with a CUDA build)", file=sys.stderr)
        return 2
    if not torch.cuda.is_available():
        print(f"error: torch {torch.__version__} sees no CUDA device; run this on an NVIDIA machine "
              f"with a CUDA build of torch", file=sys.stderr)
        return 2

    from fleetfit.agent import model_cache, profiling
    from fleetfit.agent.isolation import WorkerFailure, run_worker
    from fleetfit.models import catalogue, synth

    cache = args.cache_dir or model_cache.default_cache_dir()
    bandwidth = copy_bandwidth_gb_per_s(torch)
    backends = args.backends.split(",")
    try:
        llama_info = run_worker({"op": "system_info"}, 120)["system_info"] if "llama.cpp" in backends else ""
    except WorkerFailure as exc:
        llama_info = f"unavailable ({exc})"
    llama_cuda = "CUDA" in llama_info
    print(f"{torch.cuda.get_device_name(0)}; torch {torch.__version__} (CUDA {torch.version.cuda}); "
          f"copy bandwidth {bandwidth:.0f} GB/s")
    if "llama.cpp" in backends:
        print("llama.cpp: " + ("CUDA build" if llama_cuda else f"no CUDA build, its rows are skipped: {llama_info[:200]}"))
    print()
    print("| shape | backend | precision | decode | GPU layers | bytes/token MiB | decode t/s | achieved GB/s "
          "| % of copy bandwidth | prefill t/s | GPU memory MiB: torch reserved / llama.cpp buffers | NVML process MiB "
          "| fit MiB |")
    print("| --- | --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    mib = lambda gpu, field: f"{getattr(gpu, field) / 2**20:.0f}" if gpu.HasField(field) else "n/a"
    for shape in args.shapes.split(","):
        arch = catalogue.architecture(shape)
        embedding_bytes = arch.vocab * arch.hidden * 2  # untied: a lookup reads one row; fp16/bf16 table
        for backend, precision, variant in ROWS:
            if backend not in backends or (backend == "llama.cpp" and not llama_cuda):
                continue
            gpu_layers = arch.n_layers // 2 if variant == "half the layers" else None
            if backend == "llama.cpp":
                path = cache / "synthetic" / f"{shape}-{precision}.gguf"
                if not path.is_file():
                    synth.write_synthetic(shape, precision, path)
                request = profiling.make_request(str(path), precision, backend, args.n_prompt, args.n_gen,
                                                 args.repetitions, idle_baseline_s=0, gpu_layers=gpu_layers)
            else:
                request = profiling.make_request(shape, precision, backend, args.n_prompt, args.n_gen,
                                                 args.repetitions, idle_baseline_s=0, device="cuda")
            os.environ["FLEETFIT_TORCH_EAGER"] = "1" if variant == "eager" else "0"
            r = profiling.profile(request, "gpu-check", cache)
            label = f"| {shape} | {backend} | {precision} | {variant} |"
            if r.failure:
                print(f"{label} | | failed: {profiling.failure_name(r.failure)}: {r.error[:100]} | | | | | | | |",
                      flush=True)
                continue
            per_token = (r.weight_bytes if r.HasField("weight_bytes") else r.model_file_bytes) - embedding_bytes
            achieved = per_token * r.decode_tokens_per_s.mean / 1e9
            gpu = r.gpu_memory
            own = mib(gpu, "torch_reserved_peak_bytes") if backend == "torch" else mib(gpu, "backend_buffer_bytes")
            layers = r.gpu_layers if r.HasField("gpu_layers") else "all"
            print(f"{label} {layers} | {per_token / 2**20:.0f} | {r.decode_tokens_per_s.mean:.1f} | {achieved:.0f} "
                  f"| {100 * achieved / bandwidth:.0f}% | {r.prefill_tokens_per_s.mean:.0f} | {own} "
                  f"| {mib(gpu, 'nvml_process_used_bytes')} | {mib(gpu, 'fit_bytes')} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
