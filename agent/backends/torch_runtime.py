"""PyTorch (CPU and CUDA) under the harness's protocol (harness.py), as every backend: profile, greedy decode,
capabilities.

Imported only in the isolated worker (the backend itself is torch_backend.py). Its runner feeds a prompt in one
batch and decodes from an empty cache; the device is synchronised before each clock read.
"""

import os

import torch

from fleetfit.agent.backends import torch_model as tm
from fleetfit.agent.backends import harness
from fleetfit.models import job_bounds
from fleetfit.models import roofline as rl
from fleetfit.models.backends import backend
from fleetfit.v1 import fleetfit_pb2 as pb

CPU_ONLY_REASON = {"fp16": "fp16 runs on CUDA only (torch has no fast fp16 CPU kernels; use bf16 or fp32 on CPU)"}
# int8/int4 weights meet bfloat16 activations: torch's CPU kernels for them are ~50x slower with float32
# activations (measured on a 2-core EPYC: 5.5 ms vs 0.1 ms for a 576x1536 int8 layer), and CUDA's int4 needs it.
QUANTIZED_ACTIVATIONS = torch.bfloat16
TINY = tm.Config(n_layers=1, hidden=256, n_heads=4, n_kv_heads=2, ffn=512, vocab=64, rope_theta=10000.0,
                 norm_eps=1e-5, tied_embeddings=True)


def resolve_device(device: str) -> str:
    """"" or "auto": CUDA when torch sees a GPU, else CPU. A device outside torch's spec, or unavailable, is
    refused."""
    try:
        job_bounds.check_compute_device(device, "torch")
    except ValueError as exc:
        raise tm.UnsupportedPrecision(str(exc)) from None
    if device in ("", "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise tm.UnsupportedPrecision(f"device {device!r}: this torch build ({torch.__version__}) sees no CUDA GPU")
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
    per_weight = backend("torch").matrix_bytes_per_weight(precision)
    kv_bytes = 2 * c.n_layers * c.n_kv_heads * c.head_dim * n_ctx * (4 if precision == "fp32" else 2)
    return int(n_params * per_weight + kv_bytes)


def _gpu_memory(device: str) -> pb.GpuMemory:
    """torch's peak allocated and reserved bytes, and NVML's per-process used bytes (None when unreadable)."""
    from fleetfit.agent import nvml

    index = torch.cuda.current_device() if device == "cuda" else int(device.split(":")[1])
    used, note = nvml.process_used_bytes(index, os.getpid())
    reserved_peak = torch.cuda.max_memory_reserved(device)
    context = None if used is None else max(used - torch.cuda.memory_reserved(device), 0)
    return pb.GpuMemory(device_name=torch.cuda.get_device_name(device),
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


class TorchRunner(harness.Runner):
    """The torch model on one device: a prompt in one forward, single-token steps (captured in a CUDA graph where
    that works), the device synchronised before each clock read; a serving point is a batch of N sequences."""

    memory_method = "peak RSS (VmHWM) of the worker process (weights dequantized into torch tensors)"

    def __init__(self, model_path: str | None, arch, precision: str, device: str, threads: int, n_prompt: int,
                 n_gen: int):
        self.device = resolve_device(device)
        check(precision, self.device)
        torch.set_num_threads(threads)
        self.path, self.arch, self.precision = model_path, arch, precision
        self.n_prompt, self.n_ctx = n_prompt, n_prompt + n_gen
        self.step, self.decode_mode = None, "eager"
        self.grad = torch.is_grad_enabled()
        torch.set_grad_enabled(False)  # until close: nothing here trains

    def load(self) -> None:
        self.model = build(self.precision, self.device, self.path, self.arch)
        self.model.setup_cache(self.n_ctx)
        _sync(self.device)
        self.n_vocab = self.model.c.vocab

    def clear(self, keep: int = 0) -> None:
        if keep:
            raise ValueError("torch runs from an empty cache only (no decode depth)")
        self.model.clear_cache()

    def prompt(self, tokens: list[int]):
        prepared = torch.tensor([tokens], device=self.device), torch.arange(len(tokens), device=self.device)
        _sync(self.device)
        return prepared

    def prefill(self, prepared) -> None:
        self.logits = self.model(*prepared)
        _sync(self.device)

    def first_token(self) -> int:
        return int(self.logits.argmax())  # a host read

    def steps(self, tokens: list[int]):
        if self.step is None:  # made once, before the first timed step (a CUDA graph is captured here)
            self.step, self.decode_mode = decode_step(self.model, self.device)
        prepared = [(torch.tensor([[t]], device=self.device), torch.tensor([i], device=self.device))
                    for i, t in enumerate(tokens)]
        _sync(self.device)
        return prepared

    def decode(self, step) -> None:
        self.step(*step)
        _sync(self.device)

    def streams(self, n: int, n_prompt: int, n_gen: int) -> harness.Streams:
        if self.device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats(self.device)
        self.model.setup_cache(n_prompt + n_gen, n)
        return _Batch(self.model, self.device)

    def unsupported(self, exc: Exception, n: int, n_prompt: int, n_gen: int) -> str | None:
        if not _out_of_memory(exc):
            return None
        self.model.setup_cache(1)  # let the failed batch's cache go
        return f"out of memory on {self.device} with a batch of {n} sequences of {n_prompt + n_gen} tokens"

    def gpu_memory(self) -> pb.GpuMemory | None:
        return _gpu_memory(self.device) if self.device.startswith("cuda") else None

    def failure(self, exc: Exception) -> BaseException | None:
        if not _out_of_memory(exc):
            return None
        size = _attempted_bytes(self.precision, self.path, self.arch, self.n_ctx)
        return MemoryError(f"does not fit: out of memory on {self.device} at {self.precision} "
                           f"(attempted about {size / 2**30:.2f} GiB of weights and KV cache): "
                           f"{str(exc).splitlines()[0][:200]}")

    def close(self) -> None:
        torch.set_grad_enabled(self.grad)

    def describe(self) -> dict:
        model, device = self.model, self.device
        where = (f" ({torch.cuda.get_device_name(device)}, CUDA {torch.version.cuda})" if device.startswith("cuda")
                 else f" ({torch.backends.cpu.get_cpu_capability()})")
        return {"n_batch": self.n_prompt, "n_ubatch": self.n_prompt, "n_ctx": self.n_ctx, "backend_version": torch.__version__,
                "backend_build": f"torch {torch.__version__} on {device}{where}; decode: {self.decode_mode}",
                "compute_device": device, "weight_bytes": tm.weight_bytes(model),
                "decode_shape": rl.ModelShape(architecture="", n_layers=model.c.n_layers, n_heads=model.c.n_heads,
                                              n_kv_heads=model.c.n_kv_heads, head_dim=model.c.head_dim,
                                              weight_bytes_per_token=tm.weight_bytes(model, per_token=True),
                                              matmul_params_per_token=_matmul_params(model.c))}


class _Batch(harness.Streams):
    """N sequences as a batch: the N prompts in one forward (every stream's first logits come with it), then
    steps of N tokens."""

    def __init__(self, model, device: str):
        self.model, self.device = model, device

    def warm_up(self, tokens: list[int], step: list[int]) -> None:
        self.model(torch.tensor([[t] for t in step], device=self.device), torch.tensor([0], device=self.device))

    def clear(self) -> None:
        self.model.clear_cache()

    def prompts(self, prompts: list[list[int]]):
        return torch.tensor(prompts, device=self.device), torch.arange(len(prompts[0]), device=self.device)

    def prefill(self, prepared, ready) -> None:
        self.logits = self.model(*prepared)
        _sync(self.device)
        ready(list(range(prepared[0].shape[0])))

    def choose(self, seqs: list[int]) -> None:
        self.logits[seqs].argmax(-1).tolist()  # a host read

    def steps(self, feeds: list[list[int]], start: int):
        prepared = [(torch.tensor([[t] for t in tokens], device=self.device),
                     torch.tensor([start + i], device=self.device)) for i, tokens in enumerate(feeds)]
        _sync(self.device)
        return prepared

    def decode(self, step) -> None:
        self.model(*step)
        _sync(self.device)

    def gpu_memory(self) -> pb.GpuMemory | None:
        return _gpu_memory(self.device) if self.device.startswith("cuda") else None


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
