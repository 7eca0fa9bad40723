"""llama-bench's measurement protocol, written once for every backend; a backend supplies a small `Runner`.

The protocol (llama-bench pp/tg, and llama-batched-bench for the concurrency sweep):
- tokens: drawn by the harness from one seeded generator before each clock starts, the same draws for every
  backend of the same vocabulary: a prompt is random tokens with the first replaced by BOS where the vocabulary
  adds one; a decode feeds BOS (or a random token) then random tokens; no sampling in the timed loops.
- load: timed from the runner's `load` (weights and context) until it returns.
- warm-up: one full prefill and one generated token, then an empty cache; with a depth, the depth's tokens are
  then prefilled (untimed) and each test starts from them (llama-bench's -d).
- repetitions: each a prefill of n_prompt tokens and, from the depth again, n_gen single-token decodes; every
  step returns only once the device is done (the runner synchronises).
- TTFT, one definition: seconds from the start of the prefill until the first token is chosen greedily on the
  host from the prompt's last logits (per stream in a sweep: until that stream's token is chosen). Prefill
  seconds stop when the prefill's logits are ready, before any choice.
- memory: peak RSS (VmHWM) after the repetitions; each serving repetition's own peak, the peak reset before it
  where the kernel allows; GPU memory as the runner reads it.
- phase windows on CLOCK_MONOTONIC ("load", "warmup", "prefill", "decode", serving_phase(N)), which the
  agent's power sampler maps to its samples.
- the outcome: the wire record's run part (a ProfileResult holding the figures, the serving points and the
  runner's description of its build), which the agent merges into its result as is, with the windows beside it.
- the sweep: for each N, N streams in a cache of their own, a warm-up, then per repetition the N prompts'
  prefill and n_gen steps of N tokens; a point the runner cannot hold is unsupported, saying why.
Imports no runtime.
"""

import dataclasses
import random
import statistics
import time
from typing import Callable, Sequence

from fleetfit.agent.backends.base import Measured, serving_phase
from fleetfit.v1 import fleetfit_pb2 as pb

SERVING_WARMUP_TOKENS = 16  # llama-batched-bench's warm-up prompt


class Streams:
    """N sequences decoded together, in a cache of their own (one serving point). Untimed: `prompts`, `steps`."""

    def warm_up(self, tokens: list[int], step: list[int]) -> None:
        """A short prompt and one step of N tokens, untimed; the cache is cleared afterwards by the harness."""
        raise NotImplementedError

    def clear(self) -> None:
        raise NotImplementedError

    def prompts(self, prompts: list[list[int]]):
        """The N prompts made ready to feed (untimed)."""
        return prompts

    def prefill(self, prepared, ready: Callable[[list[int]], None]) -> None:
        """Feed the prompts; call `ready(seqs)` as soon as those sequences' first logits are ready (after a
        synchronisation), then `choose(seqs)` is what the harness calls. Returns when the device is done."""
        raise NotImplementedError

    def choose(self, seqs: list[int]) -> None:
        """Each of `seqs`'s first token, chosen greedily on the host from its logits."""
        raise NotImplementedError

    def steps(self, feeds: list[list[int]], start: int):
        """n_gen steps of N tokens (feeds[step][seq]) from position `start`, made ready to feed (untimed)."""
        return [(tokens, start + i) for i, tokens in enumerate(feeds)]

    def decode(self, step) -> None:
        """One token for each sequence, in one call; returns when the device is done."""
        raise NotImplementedError

    def check(self, held: int) -> None:
        """After a repetition: raise if a sequence does not hold `held` tokens (runners that can tell)."""

    def gpu_memory(self) -> pb.GpuMemory | None:
        return None

    def close(self) -> None:
        pass


class Runner:
    """What a backend supplies: load, clear, prefill, decode one step, decode N streams, describe its build."""

    n_vocab: int
    bos: int | None = None  # the token a prompt starts with, where the vocabulary adds one
    memory_method: str = "peak RSS (VmHWM) of the worker process"

    def load(self) -> None:
        """Weights and a context for depth + n_prompt + n_gen tokens; timed as the load."""
        raise NotImplementedError

    def clear(self, keep: int = 0) -> None:
        """Drop the cache's tokens past the first `keep` (the depth)."""
        raise NotImplementedError

    def prompt(self, tokens: list[int]):
        """Tokens made ready to prefill (untimed)."""
        return tokens

    def prefill(self, prepared) -> None:
        """Feed the prompt; returns when the device is done and the last position's logits are ready."""
        raise NotImplementedError

    def first_token(self) -> int:
        """The first token, chosen greedily on the host from the prefill's last logits."""
        raise NotImplementedError

    def steps(self, tokens: list[int]):
        """Single-token decode inputs continuing the cache, made ready to feed (untimed)."""
        return tokens

    def decode(self, step) -> None:
        """One token; returns when the device is done."""
        raise NotImplementedError

    def streams(self, n: int, n_prompt: int, n_gen: int) -> Streams | str:
        """A cache for N sequences of n_prompt + n_gen tokens, or why there can be none (an unsupported point)."""
        return f"{type(self).__name__} decodes one stream only"

    def unsupported(self, exc: Exception, n: int, n_prompt: int, n_gen: int) -> str | None:
        """Why a serving point that raised `exc` cannot run here (None: the error is a failure, raised)."""
        return None

    def gpu_memory(self) -> pb.GpuMemory | None:
        """After the repetitions: the run's GPU memory (None: not on a GPU)."""
        return None

    def failure(self, exc: Exception) -> BaseException | None:
        """What a run that raised `exc` reports instead (a MemoryError saying what did not fit; None: `exc`)."""
        return None

    def end_single(self) -> None:
        """After the single-stream tests, before the sweep (llama.cpp frees their context)."""

    def describe(self) -> dict:
        """The ProfileResult fields of the build and context: n_batch, n_ubatch, n_ctx, backend_version,
        backend_build, compute_device, and what else it knows (backend_commit, weight_bytes, gpu_layers); a framework
        adds "decode_shape", an rl.ModelShape of what one decoded token reads (its architecture left "")."""
        raise NotImplementedError

    def close(self) -> None:
        pass


@dataclasses.dataclass(frozen=True)
class Plan:
    n_prompt: int
    n_gen: int
    repetitions: int
    threads: int
    n_depth: int = 0
    parallel: tuple[int, ...] = ()
    seed: int = 1234


class _Tokens:
    """The harness's token draws, from one seeded generator."""

    def __init__(self, seed: int, n_vocab: int, bos: int | None):
        self.rng, self.n_vocab, self.bos = random.Random(seed), n_vocab, bos

    def random(self, n: int) -> list[int]:
        return [self.rng.randrange(self.n_vocab) for _ in range(n)]

    def prompt(self, n: int) -> list[int]:
        tokens = self.random(n)
        if self.bos is not None and tokens:
            tokens[0] = self.bos
        return tokens

    def decode(self, n: int) -> list[int]:
        first = self.bos if self.bos is not None else self.rng.randrange(self.n_vocab)
        return [first] + self.random(n - 1) if n else []


class _Clock:
    """perf_counter for durations, CLOCK_MONOTONIC for the power sampler's windows."""

    def __init__(self):
        self.windows: list[tuple[str, int, int]] = []

    def timed(self, phase: str, work: Callable[[], None]) -> float:
        start_ns, start = time.monotonic_ns(), time.perf_counter()
        work()
        elapsed = time.perf_counter() - start
        self.windows.append((phase, start_ns, time.monotonic_ns()))
        return elapsed


def measure(runner: Runner, plan: Plan) -> Measured:
    """Run the protocol on `runner` and return the run part of its record; the runner is closed at the end."""
    clock = _Clock()
    baseline_rss = current_rss_bytes()
    try:
        load_s = clock.timed("load", runner.load)
        draws = _Tokens(plan.seed, runner.n_vocab, runner.bos)
        prefill_tps, ttft_ms, decode_tps = _single(runner, plan, draws, clock)
        run = pb.ProfileResult(load_time_s=load_s, prefill_tokens_per_s=stat(prefill_tps), ttft_ms=stat(ttft_ms),
                               decode_tokens_per_s=stat(decode_tps), peak_rss_bytes=max_rss_bytes(),
                               baseline_rss_bytes=baseline_rss, gpu_memory=runner.gpu_memory(), threads=plan.threads,
                               memory_method=runner.memory_method)
        described = runner.describe()
        decode_shape = described.pop("decode_shape", None)
        run.MergeFrom(pb.ProfileResult(**described))
        runner.end_single()
        if plan.parallel:
            run.memory_method += "; " + SERVING_MEMORY[reset_peak_rss()]
        run.serving.extend(_serving_point(runner, n, plan, draws, clock) for n in plan.parallel)
    except Exception as exc:
        instead = runner.failure(exc)
        if instead is None:
            raise
        raise instead from None
    finally:
        runner.close()
    return Measured(run, tuple(clock.windows), decode_shape)


def _prefill(runner: Runner, tokens: list[int], clock: _Clock, phase: str) -> tuple[float, float]:
    """Seconds of the prefill, and seconds until the first token is chosen (TTFT)."""
    prepared = runner.prompt(tokens)
    start = time.perf_counter()
    prefill_s = clock.timed(phase, lambda: runner.prefill(prepared))
    runner.first_token()
    return prefill_s, time.perf_counter() - start


def _decode(runner: Runner, tokens: list[int], clock: _Clock, phase: str) -> float:
    steps = runner.steps(tokens)

    def run() -> None:
        for step in steps:
            runner.decode(step)

    return clock.timed(phase, run)


def _single(runner: Runner, plan: Plan, draws: _Tokens, clock: _Clock) -> tuple[list[float], ...]:
    _prefill(runner, draws.prompt(plan.n_prompt), clock, "warmup")  # llama-bench's warm-up: a prefill, a token
    runner.clear()
    _decode(runner, draws.decode(1), clock, "warmup")
    runner.clear()
    if plan.n_depth:
        _prefill(runner, draws.prompt(plan.n_depth), clock, "warmup")  # the depth, untimed; each test starts there
    prefill_tps, ttft_ms, decode_tps = [], [], []
    for _ in range(plan.repetitions):
        runner.clear(plan.n_depth)
        prefill_s, ttft_s = _prefill(runner, draws.prompt(plan.n_prompt), clock, "prefill")
        prefill_tps.append(plan.n_prompt / prefill_s)
        ttft_ms.append(ttft_s * 1000.0)
        runner.clear(plan.n_depth)
        decode_tps.append(plan.n_gen / _decode(runner, draws.decode(plan.n_gen), clock, "decode"))
    return prefill_tps, ttft_ms, decode_tps


def _serving_point(runner: Runner, n: int, plan: Plan, draws: _Tokens, clock: _Clock) -> pb.ServingPoint:
    n_prompt, n_gen = plan.n_prompt, plan.n_gen
    try:
        streams = runner.streams(n, n_prompt, n_gen)
    except Exception as exc:
        streams = runner.unsupported(exc, n, n_prompt, n_gen)
        if streams is None:
            raise
    if isinstance(streams, str):
        return pb.ServingPoint(parallel=n, unsupported_reason=streams)
    prefill_s, decode_s, ttft_s, peak_bytes = [], [], [], []
    try:
        streams.warm_up(draws.random(SERVING_WARMUP_TOKENS), draws.random(n))
        for _ in range(plan.repetitions):
            streams.clear()
            prompts = streams.prompts([draws.prompt(n_prompt) for _ in range(n)])
            steps = streams.steps([draws.random(n) for _ in range(n_gen)], n_prompt)
            reset_peak_rss()
            seconds, ttft = _serving_prefill(streams, prompts, n)
            decode_s.append(clock.timed(serving_phase(n), lambda: [streams.decode(step) for step in steps]))
            peak_bytes.append(max_rss_bytes())
            prefill_s.append(seconds)
            ttft_s.append(ttft)
            streams.check(n_prompt + n_gen)
        gpu_memory = streams.gpu_memory()
    except Exception as exc:
        reason = runner.unsupported(exc, n, n_prompt, n_gen)
        if reason is None:
            raise
        return pb.ServingPoint(parallel=n, unsupported_reason=reason)
    finally:
        streams.close()
    return serving_figures(n, n_prompt, n_gen, prefill_s, decode_s, ttft_s, peak_bytes, gpu_memory)


def _serving_prefill(streams: Streams, prompts, n: int) -> tuple[float, list[float]]:
    """Seconds of the N prompts' prefill (the choices of first tokens left out), and each stream's TTFT."""
    ttft, choosing = [0.0] * n, 0.0
    start = time.perf_counter()

    def ready(seqs: Sequence[int]) -> None:
        nonlocal choosing
        began = time.perf_counter()
        streams.choose(list(seqs))
        now = time.perf_counter()
        choosing += now - began
        for seq in seqs:
            ttft[seq] = now - start

    streams.prefill(prompts, ready)
    return time.perf_counter() - start - choosing, ttft


# ---------------------------------------------------------------- memory readings and statistics

SERVING_MEMORY = {True: "serving points: peak RSS per repetition, VmHWM reset (/proc/self/clear_refs) before each",
                  False: "serving points: peak RSS of the worker up to each repetition (VmHWM cannot be reset here)"}


def _status_bytes(key: str) -> int:
    """A kB line of /proc/self/status in bytes: where every memory figure of the harness is read, the kernel's own
    (VmRSS now, VmHWM the peak; ru_maxrss would carry the parent's peak over fork and exec). Linux only: elsewhere
    the run fails saying so, rather than reporting another figure."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise OSError(f"/proc/self/status has no {key} line")


def max_rss_bytes() -> int:
    """This process's peak RSS (VmHWM), since it started or since the last reset_peak_rss()."""
    return _status_bytes("VmHWM")


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
    return _status_bytes("VmRSS")


def stat(samples: list[float]) -> pb.Stat:
    return pb.Stat(mean=statistics.fmean(samples), stdev=statistics.stdev(samples) if len(samples) > 1 else 0.0,
                   samples=samples)


def percentile(values: list[float], fraction: float) -> float:
    """Linear interpolation between the closest ranks (numpy's default): p50 of [1, 2, 3, 4] is 2.5."""
    ordered = sorted(values)
    rank = fraction * (len(ordered) - 1)
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def serving_figures(parallel: int, n_prompt: int, n_gen: int, prefill_s: list[float], decode_s: list[float],
                    ttft_s: list[list[float]], peak_bytes: list[int],
                    gpu_memory: pb.GpuMemory | None = None) -> pb.ServingPoint:
    """A serving point from its repetitions: seconds of the N prompts' prefill and of the n_gen decode steps, each
    stream's TTFT in seconds, and the peak memory of each repetition."""
    aggregate = [parallel * n_gen / s for s in decode_s]
    return pb.ServingPoint(
        parallel=parallel, aggregate_decode_tokens_per_s=stat(aggregate),
        per_stream_decode_tokens_per_s=stat([a / parallel for a in aggregate]),
        prefill_tokens_per_s=stat([parallel * n_prompt / s for s in prefill_s]),
        ttft_ms_p50=stat([1000 * percentile(streams, 0.50) for streams in ttft_s]),
        ttft_ms_p99=stat([1000 * percentile(streams, 0.99) for streams in ttft_s]),
        peak_memory_bytes=stat([float(b) for b in peak_bytes]), gpu_memory=gpu_memory)
