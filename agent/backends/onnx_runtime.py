"""ONNX Runtime: the torch model exported with explicit KV-cache inputs and outputs, quantized by
onnxruntime.quantization (dynamic INT8, 4-bit MatMulNBits), run on the CPU execution provider (CUDA's when
present) with IO binding, so the cache stays in ORT's memory between steps. Imported only in the worker (the
backend itself is onnx_backend.py).

Exported and quantized files are cached under <cache>/onnx/<content hash>/: the hash covers the GGUF file's
bytes, the precision and this module's export version.
"""

import hashlib
import pathlib

import numpy as np

from fleetfit.agent.backends import harness
from fleetfit.models.backends import backend

PRECISIONS = backend("onnxruntime").precisions

EXPORT_VERSION = "2"  # 2: a dynamic batch axis (serving sweeps run a batch of N sequences)
PROVIDER_DEVICES = {"CPUExecutionProvider": "cpu", "CUDAExecutionProvider": "cuda"}


def _export(gguf_path: str, out: pathlib.Path) -> None:
    import torch

    from fleetfit.agent.backends import torch_model as tm

    model = tm.load_gguf(gguf_path, "cpu", torch.float32)
    wrapper = _WithCache(model)
    c = model.c
    past = torch.zeros(c.n_layers, 2, c.n_kv_heads, 0, c.head_dim)
    torch.onnx.export(
        wrapper, (torch.tensor([[1, 2, 3], [4, 5, 6]]), past, past), str(out), dynamo=False, opset_version=17,
        input_names=["tokens", "past_k", "past_v"], output_names=["logits", "present_k", "present_v"],
        dynamic_axes={"tokens": {0: "batch", 1: "t"}, "past_k": {1: "batch", 3: "past"},
                      "past_v": {1: "batch", 3: "past"}, "logits": {0: "batch"},
                      "present_k": {1: "batch", 3: "total"}, "present_v": {1: "batch", 3: "total"}},
    )


def _WithCache(model):
    """The torch model with the cache as inputs and outputs (past -> present), positions from the past length."""
    import torch
    from torch.nn import functional as F

    from fleetfit.agent.backends.torch_model import apply_rope

    class WithCache(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.m = model

        def forward(self, tokens, past_k, past_v):
            m, c = self.m, self.m.c
            b, t, n_past = tokens.shape[0], tokens.shape[1], past_k.shape[3]
            pos = torch.arange(t) + n_past
            freqs = 1.0 / (c.rope_theta ** (torch.arange(0, c.head_dim, 2).float() / c.head_dim))
            angles = pos.float()[:, None] * freqs[None]
            rope = torch.stack([angles.cos(), angles.sin()], -1)
            mask = torch.arange(n_past + t)[None, :] <= pos[:, None]
            x = m.embed(tokens)
            ks, vs = [], []
            for i, layer in enumerate(m.layers):
                a, h = layer.attn, layer.attn_norm(x)
                q = apply_rope(a.wq(h).view(b, t, c.n_heads, c.head_dim), rope).transpose(1, 2)
                k = apply_rope(a.wk(h).view(b, t, c.n_kv_heads, c.head_dim), rope).transpose(1, 2)
                v = a.wv(h).view(b, t, c.n_kv_heads, c.head_dim).transpose(1, 2)
                k, v = torch.cat([past_k[i], k], 2), torch.cat([past_v[i], v], 2)
                ks.append(k)
                vs.append(v)
                rep = c.n_heads // c.n_kv_heads
                y = F.scaled_dot_product_attention(q, k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1),
                                                   attn_mask=mask)
                x = x + a.wo(y.transpose(1, 2).reshape(b, t, c.hidden))
                h = layer.ffn_norm(x)
                x = x + layer.down(F.silu(layer.gate(h)) * layer.up(h))
            return m.output(m.norm(x[:, -1:])), torch.stack(ks), torch.stack(vs)

    return WithCache().eval()


def model_file(gguf_path: str, precision: str, cache_dir: str) -> pathlib.Path:
    """The exported (and quantized) ONNX file for this GGUF and precision, made once and cached by content hash."""

    if precision not in PRECISIONS:
        raise ValueError(f"onnxruntime precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    from fleetfit.agent.model_cache import exclusive

    folder = cache_folder(gguf_path, cache_dir)
    folder.mkdir(parents=True, exist_ok=True)
    with exclusive(folder / "export"):  # agents sharing a cache export one at a time, never into each other's files
        return _made(gguf_path, precision, folder)


def _made(gguf_path: str, precision: str, folder: pathlib.Path) -> pathlib.Path:
    import onnx

    fp32, target = folder / "fp32.onnx", folder / f"{precision}.onnx"
    if not target.is_file() and not fp32.is_file():
        _export(gguf_path, folder / "partial.onnx")
        (folder / "partial.onnx").replace(fp32)
    if not target.is_file():
        partial = folder / f"partial-{precision}.onnx"
        if precision == "int8":
            from onnxruntime.quantization import QuantType, quantize_dynamic

            quantize_dynamic(str(fp32), str(partial), weight_type=QuantType.QInt8)
        else:
            from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

            quantizer = MatMulNBitsQuantizer(onnx.load(str(fp32)), block_size=32, is_symmetric=True)
            quantizer.process()
            quantizer.model.save_model_to_file(str(partial))
        partial.replace(target)
    try:
        onnx.checker.check_model(str(target))
    except Exception as exc:  # protobuf's DecodeError or onnx's ValidationError: either way, not runnable
        raise ValueError(f"{target} fails ONNX validation ({type(exc).__name__}: {exc}); delete it to re-export")
    return target


def cache_folder(gguf_path: str, cache_dir: str) -> pathlib.Path:
    """<cache>/onnx/<sha256 of the GGUF file>-v<export version>/"""
    digest = hashlib.sha256()
    with open(gguf_path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return pathlib.Path(cache_dir) / "onnx" / f"{digest.hexdigest()[:16]}-v{EXPORT_VERSION}"


def compute_devices() -> list[str]:
    """The compute devices of the execution providers this onnxruntime build has (of those fleetfit uses)."""
    import onnxruntime as ort

    return [device for provider, device in PROVIDER_DEVICES.items() if provider in ort.get_available_providers()]


def _session(path: pathlib.Path, threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in ort.get_available_providers()]
    return ort.InferenceSession(str(path), options, providers=providers)


class _Runner:
    """Feeds tokens with IO binding: each step's present cache (an OrtValue) is bound as the next step's past."""

    def __init__(self, session, n_layers: int, n_kv_heads: int, head_dim: int):
        import onnxruntime as ort

        self.ort, self.session = ort, session
        self.device = "cuda" if "CUDAExecutionProvider" in session.get_providers() else "cpu"
        self.cache_shape = (n_layers, n_kv_heads, head_dim)
        self.reset()

    def reset(self, batch: int = 1) -> None:
        """An empty cache for `batch` sequences."""
        n_layers, n_kv_heads, head_dim = self.cache_shape
        empty = np.zeros((n_layers, batch, n_kv_heads, 0, head_dim), dtype=np.float32)
        self.past = (self.ort.OrtValue.ortvalue_from_numpy(empty, self.device),) * 2

    def step(self, tokens: list[int] | list[list[int]]) -> np.ndarray:
        """Logits of the last position: tokens of one sequence, or one list per sequence (after reset(batch))."""
        binding = self.session.io_binding()
        batch = tokens if tokens and isinstance(tokens[0], list) else [tokens]
        binding.bind_cpu_input("tokens", np.array(batch, dtype=np.int64))
        binding.bind_ortvalue_input("past_k", self.past[0])
        binding.bind_ortvalue_input("past_v", self.past[1])
        binding.bind_output("logits", "cpu")
        binding.bind_output("present_k", self.device)
        binding.bind_output("present_v", self.device)
        binding.synchronize_inputs()
        self.session.run_with_iobinding(binding)
        binding.synchronize_outputs()
        logits, k, v = binding.get_outputs()
        self.past = (k, v)
        return logits.numpy()


def _open(gguf_path, precision, cache_dir, threads):
    from fleetfit.agent.backends.torch_model import config_from_gguf
    from fleetfit.models.gguf_file import open_gguf

    c = config_from_gguf(open_gguf(gguf_path))
    path = model_file(gguf_path, precision, cache_dir)
    return _Runner(_session(path, threads), c.n_layers, c.n_kv_heads, c.head_dim), c, path


def greedy(gguf_path: str, prompt_tokens: list[int], n_gen: int, precision: str, cache_dir: str,
           threads: int) -> list[int]:
    runner, _, _ = _open(gguf_path, precision, cache_dir, threads)
    out = [int(runner.step(prompt_tokens).argmax())]
    while len(out) < n_gen:
        out.append(int(runner.step([out[-1]]).argmax()))
    return out


class OnnxRunner(harness.Runner):
    """The exported model in an ONNX Runtime session: a prompt in one run (its logits come back to the host), then
    single-token runs, the cache growing in ORT memory; a serving point is a batch of N sequences (the export's
    dynamic batch axis). Export and quantization happen before the load clock."""

    memory_method = "peak RSS (VmHWM) of the worker process (ONNX Runtime session)"

    def __init__(self, gguf_path: str, precision: str, cache_dir: str, threads: int, n_prompt: int, n_gen: int):
        model_file(gguf_path, precision, cache_dir)
        self.args, self.n_prompt, self.n_ctx = (gguf_path, precision, cache_dir, threads), n_prompt, n_prompt + n_gen

    def load(self) -> None:
        self.feed, c, self.path = _open(*self.args)
        self.n_vocab = c.vocab

    def clear(self, keep: int = 0) -> None:
        if keep:
            raise ValueError("onnxruntime runs from an empty cache only (no decode depth)")
        self.feed.reset()

    def prefill(self, tokens: list[int]) -> None:
        self.logits = self.feed.step(tokens)

    def first_token(self) -> int:
        return int(self.logits.argmax())

    def decode(self, token: int) -> None:
        self.feed.step([token])

    def streams(self, n: int, n_prompt: int, n_gen: int) -> harness.Streams:
        return _Batch(self.feed, n)

    def describe(self) -> dict:
        import onnxruntime as ort

        return {"weight_bytes": self.path.stat().st_size, "n_batch": self.n_prompt, "n_ubatch": self.n_prompt,
                "n_ctx": self.n_ctx, "compute_device": self.feed.device, "backend_version": ort.__version__,
                "backend_build": f"onnxruntime {ort.__version__} ({', '.join(self.feed.session.get_providers())}); "
                                 f"{self.path.name}"}


class _Batch(harness.Streams):
    """N sequences as a batch: the N prompts in one run (every stream's first logits come back with it), then runs
    of N tokens."""

    def __init__(self, feed: _Runner, n: int):
        self.feed, self.n = feed, n

    def warm_up(self, tokens: list[int], step: list[int]) -> None:
        self.feed.reset(self.n)
        self.feed.step([[t] for t in step])

    def clear(self) -> None:
        self.feed.reset(self.n)

    def prefill(self, prompts, ready) -> None:
        self.logits = self.feed.step(prompts)
        ready(list(range(self.n)))

    def choose(self, seqs: list[int]) -> None:
        self.logits[seqs].argmax(-1)

    def steps(self, feeds: list[list[int]], start: int):
        return [[[t] for t in tokens] for tokens in feeds]

    def decode(self, step) -> None:
        self.feed.step(step)
