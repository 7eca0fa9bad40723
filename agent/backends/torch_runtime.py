"""PyTorch (CPU and CUDA) under the same timed loops as llama_cpp_runtime.py: profile, greedy decode,
capabilities.

Imported only in the isolated worker (the backend itself is torch_backend.py). Timing mirrors llama-bench:
harness-fed random tokens, one warm-up, then per repetition a prefill of n_prompt tokens in one batch and,
from an empty cache, n_gen single-token decodes; the device is synchronised before each clock read.
"""

import dataclasses
import os
import random
import time

import torch

from fleetfit.agent.backends import torch_model as tm
from fleetfit.agent.backends.base import DecodeShape, GpuMemoryFigures, RunFigures, ServingFigures, serving_phase
from fleetfit.agent.backends.common import (SERVING_MEMORY, current_rss_bytes, max_rss_bytes, reset_peak_rss,
                                            run_figures, serving_figures)

CPU_ONLY_REASON = {"fp16": "fp16 runs on CUDA only (torch has no fast fp16 CPU kernels; use bf16 or fp32 on CPU)"}
# int8/int4 weights meet bfloat16 activations: torch's CPU kernels for them are ~50x slower with float32
# activations (measured on a 2-core EPYC: 5.5 ms vs 0.1 ms for a 576x1536 int8 layer), and CUDA's int4 needs it.
QUANTIZED_ACTIVATIONS = torch.bfloat16
TINY = tm.Config(n_layers=1, hidden=256, n_heads=4, n_kv_heads=2, ffn=512, vocab=64, rope_theta=10000.0,
                 norm_eps=1e-5, tied_embeddings=True)


def resolve_device(device: str) -> str:
    """"" or "auto": CUDA when torch sees a GPU, else CPU. An unavailable device is refused."""
    if device in ("", "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise tm.UnsupportedPrecision(f"device {device!r}: this torch build ({torch.__version__}) sees no CUDA GPU")
    if device.split(":")[0] not in ("cpu", "cuda"):
        raise tm.UnsupportedPrecision(f"unknown torch device {device!r} (cpu, cuda, cuda:N)")
    return device


def check(precision: str, device: str) -> None:
    """Refuse a precision this device cannot run, before anything large is allocated."""
    if precision not in tm.PRECISIONS:
        raise tm.UnsupportedPrecision(f"unknown torch precision {precision!r} (known: {', '.join(tm.PRECISIONS)})")
    if device == "cpu" and precision in CPU_ONLY_REASON:
        raise tm.UnsupportedPrecision(CPU_ONLY_REASON[precision])
    if device.startswith("cuda") and precision in ("bf16", "int4") and not torch.cuda.is_bf16_supported():
        name = torch.cuda.get_device_name(device)
        raise tm.UnsupportedPrecision(f"{precision} needs bfloat16 support, which {name} lacks")


def build(precision: str, device: str, model_path: str | None = None, arch=None) -> tm.Transformer:
    """The model at `precision` on `device`: real weights from a GGUF file, or random ones for a catalogue shape."""
    check(precision, device)
    dtype = tm.FLOAT_DTYPES.get(precision, QUANTIZED_ACTIVATIONS)
    if model_path:
        model = tm.load_gguf(model_path, device, dtype)
    else:
        model = tm.random_model(tm.Config.of(arch), device, dtype)
    return tm.quantize_(model, precision) if precision in ("int8", "int4") else model


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


def _attempted_bytes(precision: str, model_path: str | None, arch, n_ctx: int) -> int:
    """What the run tries to place on the device: weights at `precision` plus the KV cache (for OOM messages)."""
    if arch is None:
        from fleetfit.models.gguf_file import open_gguf

        reader = open_gguf(model_path)
        c = tm.config_from_gguf(reader)
        n_params = sum(int(t.n_elements) for t in reader.tensors)
    else:
        from fleetfit.models.catalogue import n_params as count

        c, n_params = tm.Config.of(arch), count(arch)
    per_weight = {"fp32": 4, "bf16": 2, "fp16": 2, "int8": 1, "int4": 0.5}[precision]
    kv_bytes = 2 * c.n_layers * c.n_kv_heads * c.head_dim * n_ctx * (4 if precision == "fp32" else 2)
    return int(n_params * per_weight + kv_bytes)


def _gpu_memory(device: str) -> GpuMemoryFigures:
    """torch's peak allocated and reserved bytes, and NVML's per-process used bytes (None when unreadable)."""
    from fleetfit.agent import nvml

    index = torch.cuda.current_device() if device == "cuda" else int(device.split(":")[1])
    used, note = nvml.process_used_bytes(index, os.getpid())
    reserved_peak = torch.cuda.max_memory_reserved(device)
    context = None if used is None else max(used - torch.cuda.memory_reserved(device), 0)
    return GpuMemoryFigures(device_name=torch.cuda.get_device_name(device),
                            torch_allocated_peak_bytes=torch.cuda.max_memory_allocated(device),
                            torch_reserved_peak_bytes=reserved_peak, nvml_process_used_bytes=used,
                            cuda_context_bytes=context, fit_bytes=None if context is None else reserved_peak + context,
                            note=note)


def _matmul_params(c: tm.Config) -> int:
    """Weights that take part in a matrix product for one token (all linear layers, the output included)."""
    kv = c.n_kv_heads * c.head_dim
    return c.n_layers * (c.hidden * (2 * c.hidden + 2 * kv) + 3 * c.hidden * c.ffn) + c.vocab * c.hidden


def _out_of_memory(exc: BaseException) -> bool:
    # CUDA's allocator raises OutOfMemoryError; the CPU allocator a RuntimeError ("can't allocate memory").
    return isinstance(exc, torch.OutOfMemoryError) or "can't allocate memory" in str(exc)


def profile(model_path: str | None, arch, precision: str, device: str, n_prompt: int, n_gen: int,
            repetitions: int, threads: int, seed: int = 1234, parallel: tuple[int, ...] = ()) -> RunFigures:
    """Load (or create) the model and time prefill and decode; the same figures as llama_cpp.profile. Then, for
    each N in `parallel`, a serving point: a batch of N sequences."""
    device = resolve_device(device)
    check(precision, device)
    torch.set_num_threads(threads)
    baseline_rss = current_rss_bytes()
    n_ctx = n_prompt + n_gen
    windows: list[tuple[str, int, int]] = []
    try:
        load_start_ns, t0 = time.monotonic_ns(), time.perf_counter()
        model = build(precision, device, model_path, arch)
        model.setup_cache(n_ctx)
        _sync(device)
        load_time_s = time.perf_counter() - t0
        windows.append(("load", load_start_ns, time.monotonic_ns()))
        figures = _timed(model, device, precision, n_prompt, n_gen, repetitions, threads, seed, windows,
                         load_time_s, baseline_rss)
    except (torch.OutOfMemoryError, RuntimeError) as exc:
        if not _out_of_memory(exc):
            raise
        size = _attempted_bytes(precision, model_path, arch, n_ctx)
        raise MemoryError(f"does not fit: out of memory on {device} at {precision} "
                          f"(attempted about {size / 2**30:.2f} GiB of weights and KV cache): "
                          f"{str(exc).splitlines()[0][:200]}") from None
    if not parallel:
        return figures
    memory_method = figures.memory_method + "; " + SERVING_MEMORY[reset_peak_rss()]
    rng = random.Random(seed + 1)
    serving = tuple(_serving_point(model, device, n, n_prompt, n_gen, repetitions, rng, windows) for n in parallel)
    return dataclasses.replace(figures, serving=serving, memory_method=memory_method,
                               phase_windows_ns=tuple(windows))


@torch.no_grad()
def _serving_point(model, device: str, n: int, n_prompt: int, n_gen: int, repetitions: int, rng: random.Random,
                   windows: list) -> ServingFigures:
    """A batch of N sequences: a cache for N, one warm-up step, then per repetition the N prompts in one forward
    (every stream's first logits come with it) and n_gen steps of N tokens. Out of memory: an unsupported point."""
    vocab = model.c.vocab
    prefill_s, decode_s, ttft_s, peak_bytes = [], [], [], []
    try:
        if device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats(device)
        model.setup_cache(n_prompt + n_gen, n)
        model(torch.zeros((n, 1), dtype=torch.long, device=device), torch.tensor([0], device=device))  # warm-up
        for _ in range(repetitions):
            model.clear_cache()
            prompts = torch.tensor([[rng.randrange(vocab) for _ in range(n_prompt)] for _ in range(n)], device=device)
            feeds = [torch.tensor([[rng.randrange(vocab)] for _ in range(n)], device=device) for _ in range(n_gen)]
            positions = [torch.tensor([n_prompt + i], device=device) for i in range(n_gen)]
            _sync(device)
            reset_peak_rss()
            start = time.perf_counter()
            logits = model(prompts, torch.arange(n_prompt, device=device))
            _sync(device)
            prefill_s.append(time.perf_counter() - start)
            logits.argmax(-1).tolist()  # each stream's first token, chosen greedily (a host read)
            ttft_s.append([time.perf_counter() - start] * n)
            start_ns, start = time.monotonic_ns(), time.perf_counter()
            for token, pos in zip(feeds, positions):
                model(token, pos)
                _sync(device)
            decode_s.append(time.perf_counter() - start)
            windows.append((serving_phase(n), start_ns, time.monotonic_ns()))
            peak_bytes.append(max_rss_bytes())
    except (torch.OutOfMemoryError, RuntimeError) as exc:
        if not _out_of_memory(exc):
            raise
        model.setup_cache(1)  # let the failed batch's cache go
        return ServingFigures(parallel=n, unsupported_reason=f"out of memory on {device} with a batch of {n} "
                                                             f"sequences of {n_prompt + n_gen} tokens")
    gpu = _gpu_memory(device) if device.startswith("cuda") else None
    return serving_figures(n, n_prompt, n_gen, prefill_s, decode_s, ttft_s, peak_bytes, gpu)


class CapturedDecode:
    """One decode step captured in a CUDA graph, as gpt-fast does ("reduce-overhead"): the model's static KV cache
    and static token/position inputs let each token replay the recorded kernels, so a step costs the kernels'
    time instead of Python's dispatch of a few hundred of them. Capture happens before timing (warm-up)."""

    def __init__(self, model, device: str):
        self.token = torch.zeros((1, 1), dtype=torch.long, device=device)
        self.pos = torch.zeros((1,), dtype=torch.long, device=device)
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):  # warm-up off the capture: cuBLAS handles, allocator pools
            for _ in range(3):
                model(self.token, self.pos)
        torch.cuda.current_stream(device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.logits = model(self.token, self.pos)

    def __call__(self, token: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        self.token.copy_(token)
        self.pos.copy_(pos)
        self.graph.replay()
        return self.logits


def decode_step(model, device: str):
    """(step, how): the captured step on CUDA, the eager model elsewhere or where capture fails (and why)."""
    if not device.startswith("cuda") or os.environ.get("FLEETFIT_TORCH_EAGER") == "1":
        return model, "eager"
    try:
        return CapturedDecode(model, device), "CUDA graph (static KV cache)"
    except RuntimeError as exc:  # an op that cannot be captured on this build or device
        return model, f"eager (CUDA graph capture failed: {str(exc).splitlines()[0][:120]})"


@torch.no_grad()
def _timed(model, device, precision, n_prompt, n_gen, repetitions, threads, seed, windows, load_time_s,
           baseline_rss) -> RunFigures:
    rng = random.Random(seed)
    vocab = model.c.vocab
    step, decode_mode = decode_step(model, device)

    def tokens(n: int) -> torch.Tensor:
        return torch.tensor([[rng.randrange(vocab) for _ in range(n)]], device=device)

    def run_prefill(phase: str = "prefill") -> tuple[float, float]:
        batch, pos = tokens(n_prompt), torch.arange(n_prompt, device=device)
        _sync(device)
        start_ns, start = time.monotonic_ns(), time.perf_counter()
        logits = model(batch, pos)
        _sync(device)
        prefill_s = time.perf_counter() - start
        windows.append((phase, start_ns, time.monotonic_ns()))
        int(logits.argmax())  # the first token, chosen greedily (a host read, so it waits for the device)
        return prefill_s, time.perf_counter() - start

    def run_decode(n: int, phase: str = "decode") -> float:
        feed = [tokens(1) for _ in range(n)]
        positions = [torch.tensor([i], device=device) for i in range(n)]
        _sync(device)
        start_ns, start = time.monotonic_ns(), time.perf_counter()
        for token, pos in zip(feed, positions):
            step(token, pos)
            _sync(device)
        elapsed_s = time.perf_counter() - start
        windows.append((phase, start_ns, time.monotonic_ns()))
        return elapsed_s

    run_prefill("warmup")
    model.clear_cache()
    run_decode(1, "warmup")
    prefill_tps, ttft_ms, decode_tps = [], [], []
    for _ in range(repetitions):
        model.clear_cache()
        prefill_s, ttft_s = run_prefill()
        prefill_tps.append(n_prompt / prefill_s)
        ttft_ms.append(ttft_s * 1000.0)
        model.clear_cache()
        decode_tps.append(n_gen / run_decode(n_gen))
    return RunFigures(
        **run_figures(load_time_s, prefill_tps, ttft_ms, decode_tps, baseline_rss,
                      "peak RSS (VmHWM) of the worker process (weights dequantized into torch tensors)"),
        n_batch=n_prompt, n_ubatch=n_prompt, n_ctx=n_prompt + n_gen, threads=threads,
        backend_version=torch.__version__,
        backend_build=f"torch {torch.__version__} on {device}"
                      + (f" ({torch.cuda.get_device_name(device)}, CUDA {torch.version.cuda})"
                         if device.startswith("cuda") else f" ({torch.backends.cpu.get_cpu_capability()})")
                      + f"; decode: {decode_mode}",
        phase_windows_ns=tuple(windows), compute_device=device, weight_bytes=tm.weight_bytes(model),
        model_n_params=sum(p.numel() for p in model.parameters()),
        decode_shape=DecodeShape(n_layers=model.c.n_layers, n_heads=model.c.n_heads,
                                 n_kv_heads=model.c.n_kv_heads, head_dim=model.c.head_dim,
                                 weight_bytes_per_token=tm.weight_bytes(model, per_token=True),
                                 matmul_params_per_token=_matmul_params(model.c)),
        gpu_memory=_gpu_memory(device) if device.startswith("cuda") else None,
    )


@torch.no_grad()
def greedy(model_path: str, prompt_tokens: list[int], n_gen: int, precision: str = "fp32", device: str = "cpu",
           threads: int = 1) -> list[int]:
    """n_gen tokens decoded greedily after `prompt_tokens` (a correctness check against llama.cpp)."""
    device = resolve_device(device)
    torch.set_num_threads(threads)
    model = build(precision, device, model_path)
    model.setup_cache(len(prompt_tokens) + n_gen)
    logits = model(torch.tensor([prompt_tokens], device=device), torch.arange(len(prompt_tokens), device=device))
    out = []
    for pos in range(len(prompt_tokens), len(prompt_tokens) + n_gen):
        out.append(int(logits.argmax()))
        logits = model(torch.tensor([[out[-1]]], device=device), torch.tensor([pos], device=device))
    return out


@torch.no_grad()
def capabilities() -> dict[str, dict[str, str]]:
    """For each device torch sees and each precision: "ok", or the reason it cannot run (from a tiny trial)."""
    devices = ["cpu"] + ([f"cuda:{i}" for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else [])
    table = {}
    for device in devices:
        row = {}
        for precision in tm.PRECISIONS:
            try:
                check(precision, device)
                dtype = tm.FLOAT_DTYPES.get(precision, QUANTIZED_ACTIVATIONS)
                model = tm.random_model(TINY, device, dtype)
                if precision in ("int8", "int4"):
                    tm.quantize_(model, precision)
                model.setup_cache(4)
                model(torch.tensor([[1, 2]], device=device), torch.arange(2, device=device))
                row[precision] = "ok"
            except Exception as exc:  # any kernel refusal is the answer, not a failure
                row[precision] = " ".join(str(exc).split())[:200] or type(exc).__name__
        name = "cpu" if device == "cpu" else f"{device} ({torch.cuda.get_device_name(device)})"
        table[name] = row
    return table
