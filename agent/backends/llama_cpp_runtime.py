"""llama.cpp through llama-cpp-python's C bindings: profile, quantize, system info, capabilities.

This is the only module that imports `llama_cpp`; it runs inside the isolated worker process, never in the
agent itself (the backend itself is llama_cpp_backend.py). The measurement protocol is harness.py's; this module
supplies its runner: prompts fed in n_batch chunks through llama_batch_get_one, each step ended by
llama_synchronize, the depth kept by llama_memory_seq_rm; a serving point's N streams fed as llama-batched-bench
feeds them (_Streams).
"""

import ctypes
import importlib.metadata
import importlib.util
import json
import os
import pathlib
import re
import sys
import types

from fleetfit.agent.backends import harness
from fleetfit.agent.backends.base import Measured
from fleetfit.v1 import fleetfit_pb2 as pb


def _load_bindings():
    """llama-cpp-python's ctypes bindings alone, without the package's __init__: that pulls in numpy,
    jinja2 and the high-level API, about 37 MiB of RSS that would count in every footprint measured here."""
    if "llama_cpp" not in sys.modules:
        spec = importlib.util.find_spec("llama_cpp")
        package = types.ModuleType("llama_cpp")
        package.__spec__ = spec  # so that a later find_spec("llama_cpp") in this process still answers
        package.__path__ = list(spec.submodule_search_locations)
        sys.modules["llama_cpp"] = package
    return importlib.import_module("llama_cpp.llama_cpp")


C = _load_bindings()

DEFAULT_N_BATCH = 2048  # llama-bench's defaults
DEFAULT_N_UBATCH = 512


class BackendError(Exception):
    """llama.cpp refused the model or the parameters."""


# Written by scripts/install.sh: which of its builds this is, its flags, and what it fell back from.
BUILD_RECORD = pathlib.Path(sys.prefix) / "share" / "fleetfit" / "llama-cpp-build.json"
BUILD_RECORD_MAX_BYTES = 64 << 10


def version() -> str:
    return importlib.metadata.version("llama-cpp-python")


def _read_record(path: pathlib.Path) -> dict | str:
    """The install's build record, or one line saying why there is none."""
    try:
        with open(path, "rb") as f:
            record = json.loads(f.read(BUILD_RECORD_MAX_BYTES))
    except FileNotFoundError:
        return "build: not recorded (llama-cpp-python was not installed by scripts/install.sh)"
    except (OSError, ValueError) as exc:
        return f"build: record {path} unreadable ({type(exc).__name__})"
    return record if isinstance(record, dict) else f"build: record {path} is not a JSON object"


def build_commit(path: pathlib.Path = BUILD_RECORD) -> str:
    """The llama.cpp commit this llama-cpp-python vendors, as the install recorded it; "" when not recorded, or
    when the record was written for another llama-cpp-python than the one installed now (a later pip upgrade)."""
    record = _read_record(path)
    if isinstance(record, str) or record.get("llama_cpp_python") != version():
        return ""
    commit = str(record.get("llama_cpp_commit") or "")
    return commit if commit.isalnum() and len(commit) <= 40 else ""


def build_record(path: pathlib.Path = BUILD_RECORD) -> str:
    """One line: how scripts/install.sh built this llama.cpp, or why that is not known."""
    record = _read_record(path)
    if isinstance(record, str):
        return record
    field = lambda name: str(record.get(name) or "")[:300]
    text = f"build: {field('build') or '?'} ({field('cmake_args') or 'llama.cpp defaults'}"
    text += f", CFLAGS {field('cflags')})" if field("cflags") else ")"
    if field("checked"):
        text += f"; checked: {field('checked')}"
    if field("fell_back_from"):
        text += f"; fell back from {field('fell_back_from')}"
    if field("gpu"):
        text += f"; {field('gpu')}"
    if field("library"):  # a llama.cpp built elsewhere (install.sh's FLEETFIT_LLAMA_LIB_DIR)
        text += f"; library {field('library')}"
    return text


def system_info() -> str:
    """llama_print_system_info() (the CPU features and backends compiled in) and how it was built."""
    C.llama_backend_init()
    return f"{C.llama_print_system_info().decode(errors='replace').strip()} | {build_record()}"


# llama.cpp reports its buffers in its log as it allocates them, e.g.
# "load_tensors:        CUDA0 model buffer size =   636.18 MiB" or "llama_kv_cache:   CPU KV buffer size = 6.00 MiB".
_BUFFER_LINE = re.compile(r"(\S+) (model|KV|compute|RS|output) buffer size =\s*([0-9.]+) MiB")
_OFFLOADED_LINE = re.compile(r"offloaded (\d+)/(\d+) layers to GPU")
_log_lines: list[str] = []  # the lines above, from the current load
_LOG_LINES_MAX = 2000


@C.llama_log_callback
def _log(level, text, user_data):
    line = (text or b"").decode(errors="replace")
    if ("buffer size" in line or "offloaded" in line) and len(_log_lines) < _LOG_LINES_MAX:
        _log_lines.append(line)
    sys.stderr.write(line)  # what llama.cpp's default logger does


def buffer_bytes(lines: list[str]) -> dict[tuple[str, str], int]:
    """{(buffer name, kind): bytes} from llama.cpp's log lines; kinds: model, KV, compute, RS, output."""
    sizes: dict[tuple[str, str], int] = {}
    for line in lines:
        for name, kind, mib in _BUFFER_LINE.findall(line):
            sizes[(name, kind)] = sizes.get((name, kind), 0) + round(float(mib) * (1 << 20))
    return sizes


def context_buffers(since: int) -> dict[tuple[str, str], int]:
    """The buffers of the context made after log line `since`: the model's (logged once, at load) and that
    context's own (KV, compute, output), not those of contexts made before it."""
    model = {key: n for key, n in buffer_bytes(_log_lines[:since]).items() if key[1] == "model"}
    return model | buffer_bytes(_log_lines[since:])


def is_gpu_buffer(name: str) -> bool:
    """CUDA0, Metal, Vulkan0 ...; not CPU, CPU_Mapped, CPU_REPACK, nor pinned host memory (CUDA_Host)."""
    return not name.startswith("CPU") and not name.endswith("_Host")


def _llama_gpu_memory(sizes: dict[tuple[str, str], int]) -> pb.GpuMemory:
    """llama.cpp's own GPU buffers, and NVML's per-process used bytes summed over the GPUs that list this process."""
    from fleetfit.agent import nvml

    gpu_buffers = sum(n for (name, _), n in sizes.items() if is_gpu_buffer(name))
    gpus, note = nvml.list_gpus()
    used_total, notes = None, [note] if note else []
    for gpu in gpus:
        used, why = nvml.process_used_bytes(gpu.index, os.getpid())
        if used is not None:
            used_total = (used_total or 0) + used
        elif why:
            notes.append(f"gpu {gpu.index}: {why}")
    if used_total is not None:
        fit, notes = used_total, []
    else:
        fit = gpu_buffers or None
        notes.append("fit uses llama.cpp's buffers alone: the CUDA context is not included")
    return pb.GpuMemory(device_name=", ".join(dict.fromkeys(g.name for g in gpus)),
                        nvml_process_used_bytes=used_total, backend_buffer_bytes=gpu_buffers or None,
                        cuda_context_bytes=None if used_total is None else max(used_total - gpu_buffers, 0),
                        fit_bytes=fit, note="; ".join(dict.fromkeys(notes))[:500])


def compute_devices() -> list[str]:
    """cpu, plus the GPU API this build offloads to (CUDA, or Metal on macOS)."""
    C.llama_backend_init()
    if not C.llama_supports_gpu_offload():
        return ["cpu"]
    return ["cpu", "metal" if sys.platform == "darwin" else "cuda"]


def quantize(src: str, dst: str, ftype: int, threads: int) -> None:
    C.llama_backend_init()
    params = C.llama_model_quantize_default_params()
    params.ftype = ftype
    params.nthread = threads
    params.allow_requantize = True  # the shipped file is already quantized (Q4_1)
    if C.llama_model_quantize(src.encode(), dst.encode(), ctypes.byref(params)) != 0:
        raise BackendError(f"llama_model_quantize failed for {src} -> {dst}")


def _context_params(n_ctx: int, n_batch: int, n_ubatch: int, threads: int, n_seq_max: int = 1):
    params = C.llama_context_default_params()
    params.n_ctx = n_ctx  # llama.cpp rounds it up to whole 256-token blocks per sequence
    params.n_seq_max = n_seq_max
    params.n_batch = n_batch
    params.n_ubatch = n_ubatch
    params.n_threads = threads
    params.n_threads_batch = threads
    params.no_perf = True
    params.swa_full = False  # as llama-bench and llama-server run: a sliding-window layer caches its window
    return params


class LlamaRunner(harness.Runner):
    """One model and one context on llama.cpp, fed as llama-bench feeds them: llama_batch_get_one in n_batch
    chunks, llama_synchronize after each step."""

    memory_method = "peak RSS (VmHWM) of the worker process; weights read without mmap (load_mode=none)"

    def __init__(self, model_path: str, n_prompt: int, n_gen: int, threads: int, device: str = "",
                 n_batch: int = DEFAULT_N_BATCH, n_ubatch: int = DEFAULT_N_UBATCH, gpu_layers: int | None = None,
                 n_depth: int = 0):
        C.llama_backend_init()
        C.llama_log_set(_log, None)
        del _log_lines[:]
        self.path, self.threads, self.n_batch, self.n_ubatch = model_path, threads, n_batch, n_ubatch
        self.n_ctx = n_depth + n_prompt + n_gen
        self.model = self.ctx = self.greedy = None
        self.params = C.llama_model_default_params()
        self.params.load_mode = C.LLAMA_LOAD_MODE_NONE  # read into memory: mmap'd pages would escape RSS
        can_offload = bool(C.llama_supports_gpu_offload())
        if gpu_layers and (device == "cpu" or not can_offload):
            raise BackendError(f"cannot offload {gpu_layers} layers: " + (
                "the job asks for the CPU" if device == "cpu" else
                "this llama.cpp build is CPU-only (scripts/install.sh builds CUDA where nvcc is found)"))
        if device == "cpu" or not can_offload:
            self.params.n_gpu_layers = 0
        elif gpu_layers is not None:
            self.params.n_gpu_layers = gpu_layers
        self.token_buffer = (C.llama_token * max(n_batch, 1))()

    def load(self) -> None:
        self.model = C.llama_model_load_from_file(self.path.encode(), self.params)
        if not self.model:
            raise BackendError(f"llama.cpp could not load {self.path}")
        trained = int(C.llama_model_n_ctx_train(self.model))
        if C.llama_model_rope_type(self.model) == C.LLAMA_ROPE_TYPE_NONE and self.n_ctx > trained:
            # learned absolute positions (GPT-2): a position past the table aborts llama.cpp (SIGABRT), not an error
            raise BackendError(f"{pathlib.Path(self.path).name} has learned position embeddings for {trained} "
                               f"positions; depth + prompt + generated tokens = {self.n_ctx} exceeds them")
        self.ctx = C.llama_init_from_model(self.model, _context_params(self.n_ctx, self.n_batch, self.n_ubatch,
                                                                       self.threads))
        if not self.ctx:
            raise BackendError(f"llama.cpp could not create a context (n_ctx={self.n_ctx}) for {self.path}")
        self.offloaded = _offloaded_layers(self.params.n_gpu_layers, int(C.llama_model_n_layer(self.model)))
        vocab = C.llama_model_get_vocab(self.model)
        self.n_vocab = C.llama_vocab_n_tokens(vocab)
        self.bos = C.llama_vocab_bos(vocab) if C.llama_vocab_get_add_bos(vocab) else None
        self.memory = C.llama_get_memory(self.ctx)
        self.greedy = C.llama_sampler_init_greedy()

    def _feed(self, tokens: list[int]) -> None:
        for i, tok in enumerate(tokens):
            self.token_buffer[i] = tok
        if C.llama_decode(self.ctx, C.llama_batch_get_one(self.token_buffer, len(tokens))) != 0:
            raise BackendError("llama_decode failed")

    def clear(self, keep: int = 0) -> None:
        if keep:
            C.llama_memory_seq_rm(self.memory, 0, keep, -1)  # drops the last test's tokens, keeps the depth
        else:
            C.llama_memory_clear(self.memory, False)

    def prefill(self, tokens: list[int]) -> None:
        for i in range(0, len(tokens), self.n_batch):
            self._feed(tokens[i:i + self.n_batch])
        C.llama_synchronize(self.ctx)

    def first_token(self) -> int:
        return C.llama_sampler_sample(self.greedy, self.ctx, -1)

    def decode(self, token: int) -> None:
        self._feed([token])
        C.llama_synchronize(self.ctx)

    def gpu_memory(self) -> pb.GpuMemory | None:
        return _llama_gpu_memory(buffer_bytes(_log_lines)) if self.offloaded else None

    def end_single(self) -> None:
        C.llama_free(self.ctx)  # before the sweep, whose points' memory is their own context's
        self.ctx = None

    def streams(self, n: int, n_prompt: int, n_gen: int) -> "harness.Streams | str":
        """A context of its own whose KV cache holds N sequences of n_prompt + n_gen tokens, or why there is none
        (memory, llama.cpp's limits)."""
        since = len(_log_lines)
        ctx = C.llama_init_from_model(self.model, _context_params(n * (n_prompt + n_gen), self.n_batch,
                                                                  self.n_ubatch, self.threads, n))
        if not ctx:
            return f"llama.cpp could not create a context for {n} sequences of {n_prompt + n_gen} tokens"
        return _ServingStreams(ctx, self.n_batch, max(n * n_prompt, harness.SERVING_WARMUP_TOKENS), n, since,
                               self.offloaded > 0)

    def describe(self) -> dict:
        return {"n_batch": self.n_batch, "n_ubatch": self.n_ubatch, "n_ctx": self.n_ctx, "backend_version": version(),
                "backend_build": system_info(), "backend_commit": build_commit(),
                "compute_device": compute_devices()[-1] if self.offloaded else "cpu", "gpu_layers": self.offloaded}

    def close(self) -> None:
        if self.greedy:
            C.llama_sampler_free(self.greedy)
        if self.ctx:
            C.llama_free(self.ctx)
        if self.model:
            C.llama_model_free(self.model)


def profile(model_path: str, n_prompt: int, n_gen: int, repetitions: int, threads: int, device: str = "",
            n_batch: int = DEFAULT_N_BATCH, n_ubatch: int = DEFAULT_N_UBATCH, seed: int = 1234,
            gpu_layers: int | None = None, parallel: tuple[int, ...] = (), n_depth: int = 0) -> Measured:
    """The harness's protocol on llama.cpp. The model is loaded without mmap (so that the weights count in RSS);
    `device` "cpu" keeps every layer on the CPU; otherwise a build that offloads offloads `gpu_layers` layers
    (None: all, as llama.cpp's default parameters do; 0: none)."""
    runner = LlamaRunner(model_path, n_prompt, n_gen, threads, device, n_batch, n_ubatch, gpu_layers, n_depth)
    return harness.measure(runner, harness.Plan(n_prompt, n_gen, repetitions, threads, n_depth, parallel, seed))


def _offloaded_layers(requested: int, n_layer: int) -> int:
    """Layers llama.cpp put on the GPU, as its log says ("offloaded 23/23 layers to GPU"; the output layer counts
    as one); from the request when the log does not say (n_gpu_layers > n_layer also offloads the output)."""
    for line in reversed(_log_lines):
        found = _OFFLOADED_LINE.search(line)
        if found:
            return int(found.group(1))
    if requested == 0 or not C.llama_supports_gpu_offload():
        return 0
    return n_layer + 1 if requested < 0 else min(requested, n_layer + 1)  # -1: llama.cpp's default, all


class _Streams:
    """N sequences in one KV cache, fed as llama-batched-bench feeds them (is_pp_shared=false): the N prompts in one
    batch of tokens with distinct sequence ids, decoded in n_batch chunks, logits on each prompt's last token; then
    one token per sequence per step, all N in one llama_decode."""

    def __init__(self, ctx, n_batch: int, capacity: int):
        self.ctx, self.n_batch = ctx, n_batch
        self.batch = C.llama_batch_init(capacity, 0, 1)

    def close(self) -> None:
        C.llama_batch_free(self.batch)

    def _put(self, i: int, token: int, pos: int, seq: int, logits: bool) -> None:
        b = self.batch
        b.token[i], b.pos[i], b.n_seq_id[i], b.logits[i] = token, pos, 1, logits
        b.seq_id[i][0] = seq

    def _decode(self, start: int, count: int) -> None:
        """llama_decode of the batch's tokens [start, start + count), a view as llama-batched-bench's sub-batch."""
        b = self.batch
        view = C.llama_batch(n_tokens=count, token=_at(b.token, start), embd=None, pos=_at(b.pos, start),
                             n_seq_id=_at(b.n_seq_id, start), seq_id=_at(b.seq_id, start), logits=_at(b.logits, start))
        if C.llama_decode(self.ctx, view) != 0:
            raise BackendError(f"llama_decode failed on a batch of {count} tokens")

    def prefill(self, prompts: list[list[int]], on_logits) -> None:
        """Prefill every prompt; `on_logits({seq: index})` is called, after a synchronisation, for the sequences whose
        first logits the last chunk produced, with the index of each one's logits in that chunk."""
        last = []  # each sequence's last prompt token, as an index into the batch
        for seq, prompt in enumerate(prompts):
            base = last[-1] + 1 if last else 0
            for pos, token in enumerate(prompt):
                self._put(base + pos, token, pos, seq, pos == len(prompt) - 1)
            last.append(base + len(prompt) - 1)
        total = last[-1] + 1
        for chunk in range(0, total, self.n_batch):
            count = min(self.n_batch, total - chunk)
            self._decode(chunk, count)
            ended = {seq: index - chunk for seq, index in enumerate(last) if chunk <= index < chunk + count}
            if ended:
                C.llama_synchronize(self.ctx)
                on_logits(ended)
        C.llama_synchronize(self.ctx)

    def step(self, tokens: list[int], positions: list[int]) -> None:
        """One token for each sequence (sequence i gets tokens[i] at positions[i]), in one llama_decode."""
        for seq, (token, pos) in enumerate(zip(tokens, positions)):
            self._put(seq, token, pos, seq, True)
        self._decode(0, len(tokens))
        C.llama_synchronize(self.ctx)


def _at(pointer, start: int):
    """`pointer` + `start` elements, as the same ctypes pointer type."""
    kind = type(pointer)
    return ctypes.cast(ctypes.cast(pointer, ctypes.c_void_p).value + start * ctypes.sizeof(kind._type_), kind)


class _ServingStreams(harness.Streams):
    """A serving point's context (llama-batched-bench's pattern, with its warm-up of 16 tokens and one decode step
    of N). `on_gpu`: the model is offloaded, so the point also reports its GPU memory (the model's and its own
    context's buffers, NVML's per-process bytes)."""

    def __init__(self, ctx, n_batch: int, capacity: int, n: int, since: int, on_gpu: bool):
        self.ctx, self.n, self.since, self.on_gpu = ctx, n, since, on_gpu
        self.feed, self.memory = _Streams(ctx, n_batch, capacity), C.llama_get_memory(ctx)
        self.greedy, self.ready = C.llama_sampler_init_greedy(), {}

    def warm_up(self, tokens: list[int], step: list[int]) -> None:
        self.feed.prefill([tokens], lambda ended: None)
        self.clear()
        self.feed.step(step, [0] * self.n)

    def clear(self) -> None:
        C.llama_memory_clear(self.memory, False)

    def prefill(self, prompts, ready) -> None:
        def ended(indexes: dict) -> None:
            self.ready = indexes
            ready(list(indexes))

        self.feed.prefill(prompts, ended)

    def choose(self, seqs: list[int]) -> None:
        for seq in seqs:
            C.llama_sampler_sample(self.greedy, self.ctx, self.ready[seq])

    def steps(self, feeds: list[list[int]], start: int):
        return [(tokens, [start + i] * len(tokens)) for i, tokens in enumerate(feeds)]

    def decode(self, step) -> None:
        self.feed.step(*step)

    def check(self, held: int) -> None:
        found = [C.llama_memory_seq_pos_max(self.memory, seq) for seq in range(self.n)]
        if found != [held - 1] * self.n:  # each sequence holds its own tokens, none another's
            raise BackendError(f"the KV cache holds positions up to {found} for {self.n} sequences, not "
                               f"{held - 1} each")

    def gpu_memory(self) -> pb.GpuMemory | None:
        return _llama_gpu_memory(context_buffers(self.since)) if self.on_gpu else None

    def close(self) -> None:
        self.feed.close()
        C.llama_sampler_free(self.greedy)
        C.llama_free(self.ctx)


def batched_greedy(model_path: str, prompts: list[list[int]], n_gen: int, threads: int) -> dict:
    """The prompts decoded together greedily, as the serving sweep feeds them (one KV cache, distinct sequence ids):
    {"tokens": n_gen tokens per prompt, "pos_max": the last position each sequence holds}. A check that sequences
    decoded together are independent: each must decode as it does alone."""
    C.llama_backend_init()
    model = C.llama_model_load_from_file(model_path.encode(), C.llama_model_default_params())
    if not model:
        raise BackendError(f"llama.cpp could not load {model_path}")
    n_ctx = len(prompts) * (max(map(len, prompts)) + n_gen)
    ctx = C.llama_init_from_model(model, _context_params(n_ctx, DEFAULT_N_BATCH, DEFAULT_N_UBATCH, threads,
                                                         len(prompts)))
    sampler = C.llama_sampler_init_greedy()
    streams = _Streams(ctx, DEFAULT_N_BATCH, sum(map(len, prompts)))
    tokens: list[list[int]] = [[] for _ in prompts]
    try:
        streams.prefill(prompts, lambda ended: [tokens[seq].append(int(C.llama_sampler_sample(sampler, ctx, index)))
                                                for seq, index in ended.items()])
        for step in range(n_gen - 1):
            streams.step([t[-1] for t in tokens], [len(p) + step for p in prompts])
            for seq, found in enumerate(tokens):
                found.append(int(C.llama_sampler_sample(sampler, ctx, seq)))
        pos_max = [int(C.llama_memory_seq_pos_max(C.llama_get_memory(ctx), seq)) for seq in range(len(prompts))]
    finally:
        streams.close()
        C.llama_sampler_free(sampler)
        C.llama_free(ctx)
        C.llama_model_free(model)
    return {"tokens": tokens, "pos_max": pos_max}


def greedy(model_path: str, prompt: str, n_gen: int, threads: int) -> dict:
    """Tokenize `prompt` with the model's own tokenizer and decode n_gen tokens greedily (a reference for
    other backends' correctness tests): {"prompt_tokens": [...], "tokens": [...]}."""
    C.llama_backend_init()
    model = C.llama_model_load_from_file(model_path.encode(), C.llama_model_default_params())
    if not model:
        raise BackendError(f"llama.cpp could not load {model_path}")
    vocab = C.llama_model_get_vocab(model)
    text = prompt.encode()
    buffer = (C.llama_token * (len(text) + 8))()
    n = C.llama_tokenize(vocab, text, len(text), buffer, len(buffer), True, False)
    prompt_tokens = list(buffer[:max(n, 0)])
    ctx_params = C.llama_context_default_params()
    ctx_params.n_ctx = len(prompt_tokens) + n_gen
    ctx_params.n_threads = ctx_params.n_threads_batch = threads
    ctx = C.llama_init_from_model(model, ctx_params)
    sampler = C.llama_sampler_init_greedy()
    tokens: list[int] = []
    try:
        batch = (C.llama_token * max(len(prompt_tokens), 1))(*prompt_tokens)
        count = len(prompt_tokens)
        for _ in range(n_gen):
            if C.llama_decode(ctx, C.llama_batch_get_one(batch, count)) != 0:
                raise BackendError("llama_decode failed")
            tokens.append(int(C.llama_sampler_sample(sampler, ctx, -1)))
            batch[0], count = tokens[-1], 1
    finally:
        C.llama_sampler_free(sampler)
        C.llama_free(ctx)
        C.llama_model_free(model)
    return {"prompt_tokens": prompt_tokens, "tokens": tokens}


def scored_logits(model_path: str, n_ctx: int, threads: int, text: str | None = None,
                  tokens: list[int] | None = None, device: str = "", chunks: int = 0):
    """llama-perplexity's pass over a text: tokenize it (with BOS when the vocabulary adds one; special tokens
    not parsed), cut it into n_ctx-token chunks, evaluate each from an empty cache with its first token
    replaced by BOS, and keep the logits of positions n_ctx/2 .. n_ctx-2 (each predicts the next token).
    `chunks`: only the first N chunks (llama-perplexity --chunks), 0 all.
    Returns (tokens, n_vocab, a generator of (chunk index, float32 logits array [n_ctx-1-n_ctx/2, n_vocab]))."""
    import numpy as np

    C.llama_backend_init()
    model_params = C.llama_model_default_params()
    if device == "cpu":
        model_params.n_gpu_layers = 0
    model = C.llama_model_load_from_file(model_path.encode(), model_params)
    if not model:
        raise BackendError(f"llama.cpp could not load {model_path}")
    vocab = C.llama_model_get_vocab(model)
    n_vocab = C.llama_vocab_n_tokens(vocab)
    add_bos = C.llama_vocab_get_add_bos(vocab)
    if tokens is None:
        data = text.encode()
        buffer = (C.llama_token * (len(data) + 2))()
        n = C.llama_tokenize(vocab, data, len(data), buffer, len(buffer), True, False)
        if n < 0:  # more tokens than bytes (byte fallback): -n is the count, as common_tokenize retries
            buffer = (C.llama_token * -n)()
            n = C.llama_tokenize(vocab, data, len(data), buffer, len(buffer), True, False)
        if n < 0:
            C.llama_model_free(model)
            raise BackendError("tokenizing the text failed")
        tokens = list(buffer[:n])
    if len(tokens) < 2 * n_ctx:
        C.llama_model_free(model)
        raise BackendError(f"the text is {len(tokens)} tokens; a context of {n_ctx} needs at least {2 * n_ctx}")
    if chunks:
        tokens = tokens[:chunks * n_ctx]
    ctx_params = C.llama_context_default_params()
    ctx_params.n_ctx = ctx_params.n_batch = n_ctx  # one batch per chunk, as llama-perplexity -b N does
    ctx_params.n_ubatch = min(DEFAULT_N_UBATCH, n_ctx)
    ctx_params.n_threads = ctx_params.n_threads_batch = threads
    ctx_params.no_perf = True
    ctx = C.llama_init_from_model(model, ctx_params)
    if not ctx:
        C.llama_model_free(model)
        raise BackendError(f"llama.cpp could not create a context (n_ctx={n_ctx}) for {model_path}")
    first, bos = n_ctx // 2, C.llama_vocab_bos(vocab)

    def chunks():
        batch = C.llama_batch_init(n_ctx, 0, 1)
        try:
            for chunk in range(len(tokens) // n_ctx):
                C.llama_memory_clear(C.llama_get_memory(ctx), True)
                for pos in range(n_ctx):
                    token = tokens[chunk * n_ctx + pos]
                    batch.token[pos] = bos if add_bos and pos == 0 else token
                    batch.pos[pos], batch.n_seq_id[pos], batch.seq_id[pos][0] = pos, 1, 0
                    batch.logits[pos] = pos >= first
                batch.n_tokens = n_ctx
                if C.llama_decode(ctx, batch) != 0:
                    raise BackendError("llama_decode failed")
                logits = C.llama_get_logits(ctx)
                rows = np.ctypeslib.as_array(logits, shape=(n_ctx - first, n_vocab))
                yield chunk, rows[:n_ctx - 1 - first].copy()
        finally:
            C.llama_batch_free(batch)
            C.llama_free(ctx)
            C.llama_model_free(model)

    return tokens, n_vocab, chunks()
