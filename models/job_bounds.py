"""The bounds of a profiling job's parameters: the coordinator refuses a job outside them at submit, and the
agent enforces the same numbers before it runs one. Kept here so both sides read one table."""

import math
import re
import statistics

# field -> (lowest, highest) allowed, inclusive
BOUNDS: dict[str, tuple[float, float]] = {
    "n_prompt": (1, 65536),
    "n_gen": (1, 65536),
    "repetitions": (1, 100),
    "threads": (0, 1024),          # 0: the agent's default (physical cores)
    "timeout_s": (0, 86400),       # 0: the agent's default
    "idle_baseline_s": (0, 600),
    "gpu_layers": (0, 10000),      # llama.cpp layers to offload; absent: all the build can offload
    "decode_depth": (0, 131072),   # llama.cpp: tokens in the KV cache before each test (llama-bench's -d)
}
OPTIONAL_FIELDS = ("idle_baseline_s", "gpu_layers")  # checked only when set
# Leases a campaign's job may take before it is failed (CreateCampaignRequest.max_attempts; 0: the coordinator's
# default). Each attempt is a lease an agent lost or a worker that died: past a few, retrying only hides the fault.
MAX_ATTEMPTS = (1, 20)
# A concurrency sweep (ProfileRequest.parallel): N sequences decoded together, for each N listed. N is bounded by
# llama.cpp's own LLAMA_MAX_SEQ; the KV cache of the largest point holds N * (n_prompt + n_gen) tokens.
MAX_PARALLEL = 256
MAX_PARALLEL_POINTS = 16
MAX_SWEEP_KV_TOKENS = 262_144  # e.g. 256 streams of 1024 tokens, or 8 of 32768
# The run shape of a calibration run (fleetfit-agent limits probe, and `fleetfit calibrate` campaigns that extend a
# device's calibration): short, so that a ladder of models takes minutes; (n_prompt, n_gen, repetitions). Three
# repetitions of 32 tokens: two of 16 spread ±5..38 % on a shared 2-core VM, as large as the errors being fitted.
CALIBRATION_RUN = (64, 32, 3)
# A calibration run whose repetitions spread more than this (coefficient of variation) is noisy: `limits probe`
# measures it again, and the coordinator's scaling model down-weights it and widens bands (coordinator/predict/scaling.py).
NOISE_CV = 0.10

# A quality pass (ProfileRequest.quality, fleetfit-agent quality): tokens per chunk, and how many chunks of the text
QUALITY_CONTEXT = (16, 32768)
QUALITY_DEFAULT_CONTEXT = 512  # llama-perplexity's usual -c for KL divergence
QUALITY_CHUNKS = (0, 100_000)  # 0: the whole text

MAX_CONTEXT_TOKENS = 131_072  # one stream's context: decode_depth + n_prompt + n_gen
DEPTH_BACKENDS = ("llama.cpp",)  # the backends that run a test at depth
INDEX = re.compile(r"\d{1,3}")  # of a GPU among several: cuda:N
# A model is named, never located: a catalogue, real or cached model's name; no path separators, no leading dot,
# no "..". The coordinator checks a job's name by it, the agent every name a request gives (agent/model_cache.py).
MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def spread_of(stats) -> float | None:
    """How widely the repetitions of every run given (Stat messages) spread: their coefficient of variation (sample
    standard deviation / mean), or None with fewer than two repetitions. The agent's probe and the coordinator's fit
    judge a point noisy by it against NOISE_CV."""
    samples = [x for s in stats for x in s.samples if x > 0]
    return statistics.stdev(samples) / statistics.fmean(samples) if len(samples) >= 2 else None


def check_value(field: str, value: float, shown: str = "") -> None:
    """ValueError (one line) when `value` is not a finite number within BOUNDS[field]; `shown`: the field as the
    asker spells it (a command line's option), the field's own name by default."""
    low, high = BOUNDS[field]
    shown = shown or field
    if not (isinstance(value, (int, float)) and math.isfinite(value)):
        raise ValueError(f"{shown} must be a finite number, got {value!r}")
    if value < low:
        raise ValueError(f"{shown} must be at least {low:g} (and at most {high:g}), got {value:g}")
    if value > high:
        raise ValueError(f"{shown} must be at most {high:g}, got {value:g}")


def check_max_attempts(value: int, shown: str = "max_attempts", default: bool = True) -> None:
    """ValueError (one line) unless `value` is within MAX_ATTEMPTS, or 0 where `default` (a request's: the
    coordinator's default; a command line names a count)."""
    low, high = MAX_ATTEMPTS
    if not (low <= value <= high or (default and value == 0)):
        zero = " (0: the coordinator's default)" if default else ""
        raise ValueError(f"{shown} must be {low} to {high}{zero}, got {value}")


def is_model_name(name: str) -> bool:
    return bool(MODEL_NAME.fullmatch(name)) and ".." not in name


def check_model_name(name: str) -> None:
    if not is_model_name(name):
        raise ValueError(f"model name {name[:80]!r} is not a model name (letters, digits, '.', '_', '-'; at most "
                         "128; jobs name catalogue models, never files)")


def compute_devices(backend: str = "") -> tuple[str, ...]:
    """The kinds of compute device `backend` uses (its BackendSpec); every backend's when it names none we know."""
    from fleetfit.models import backends
    from fleetfit.models.errors import ModelError

    try:
        return backends.backend(backend).compute_devices if backend else backends.all_compute_devices()
    except ModelError:
        return backends.all_compute_devices()


def check_compute_device(device: str, backend: str = "") -> None:
    """ValueError (one line) unless `device` is '' or auto (the default), a kind of compute device the backend uses,
    or such a kind with an index for one of several GPUs (cuda:N)."""
    kinds = compute_devices(backend)
    kind, colon, index = device.partition(":")
    if device in ("", "auto") or (kind in kinds and (not colon or (kind != "cpu" and INDEX.fullmatch(index)))):
        return
    raise ValueError(f"device {device[:40]!r} must be one of '', auto, {', '.join(kinds)} (cuda:N for one GPU)")


def parse_stream_counts(text: str) -> list[int]:
    """'1,2,4,8' (a --parallel option) as integers; ValueError (one line) for anything else. Their bounds are the
    request's (check_parallel)."""
    counts = [part.strip() for part in text.split(",") if part.strip()]
    if not all(part.isdigit() and len(part) < 10 for part in counts):
        raise ValueError(f"--parallel takes stream counts separated by commas, e.g. 1,2,4,8; got {text[:40]!r}")
    return [int(part) for part in counts]


def check_parallel(parallel, n_prompt: int, n_gen: int) -> None:
    """ValueError (one line) for a sweep with too many points, an N out of 1..MAX_PARALLEL, an N listed twice, or
    a point whose KV cache (N * (n_prompt + n_gen) tokens) is past MAX_SWEEP_KV_TOKENS."""
    values = list(parallel)
    if len(values) > MAX_PARALLEL_POINTS:
        raise ValueError(f"parallel lists {len(values)} values: at most {MAX_PARALLEL_POINTS}")
    for n in values:
        if not 1 <= n <= MAX_PARALLEL:
            raise ValueError(f"parallel values must be 1..{MAX_PARALLEL} sequences, got {n}")
    if len(set(values)) != len(values):
        twice = next(n for n in values if values.count(n) > 1)
        raise ValueError(f"parallel lists {twice} more than once")
    if values and (tokens := max(values) * (n_prompt + n_gen)) > MAX_SWEEP_KV_TOKENS:
        raise ValueError(f"parallel {max(values)} x (n_prompt {n_prompt} + n_gen {n_gen}) = {tokens} tokens of KV "
                         f"cache: at most {MAX_SWEEP_KV_TOKENS}")


def check_depth(decode_depth: int, n_prompt: int, n_gen: int, backend: str) -> None:
    """ValueError (one line) for a depth a backend cannot run, or a context past MAX_CONTEXT_TOKENS."""
    if decode_depth and (backend or DEPTH_BACKENDS[0]) not in DEPTH_BACKENDS:
        raise ValueError(f"decode depth is run by {', '.join(DEPTH_BACKENDS)} only, not {backend}")
    if (tokens := decode_depth + n_prompt + n_gen) > MAX_CONTEXT_TOKENS:
        raise ValueError(f"decode depth {decode_depth} + n_prompt {n_prompt} + n_gen {n_gen} = {tokens} tokens of "
                         f"context: at most {MAX_CONTEXT_TOKENS}")


def check_job(request) -> None:
    """ValueError (one line) for a fleetfit.v1.ProfileRequest outside the bounds: a model given by name only,
    and its parameters (check_parameters)."""
    check_parameters(request)
    check_model_name(request.model.name)


def check_parameters(request) -> None:
    """ValueError (one line) for a ProfileRequest's sizes, repetitions, threads, timeout, idle baseline, compute
    device or concurrency sweep outside the bounds, or one that locates a model file (model.path)."""
    if request.model.path:
        raise ValueError("model.path is refused: jobs name catalogue models (model.name), never files")
    check_compute_device(request.device, request.backend)
    check_sizes(request)


def check_sizes(request, shown: dict[str, str] | None = None) -> None:
    """ValueError (one line) for a ProfileRequest's numbers outside BOUNDS, its concurrency sweep or its depth: the
    bounds a job meets at submit and any run meets on the device (the agent's own command too). `shown`: fields as
    the asker spells them."""
    for field in BOUNDS:
        if field not in OPTIONAL_FIELDS or request.HasField(field):
            check_value(field, getattr(request, field), (shown or {}).get(field, field))
    check_parallel(request.parallel, request.n_prompt, request.n_gen)
    check_depth(request.decode_depth, request.n_prompt, request.n_gen, request.backend)
    if request.HasField("quality"):
        check_quality(request.quality.context_tokens or QUALITY_DEFAULT_CONTEXT, request.quality.chunks)


def check_quality(context_tokens: int, chunks: int = 0, shown: tuple[str, str] = ("quality context", "quality chunks")
                  ) -> None:
    """ValueError (one line) for a quality pass's context (tokens per chunk) or chunk count outside their bounds;
    `shown`: the two as the asker spells them."""
    low, high = QUALITY_CONTEXT
    if not low <= context_tokens <= high:
        raise ValueError(f"{shown[0]} must be {low} to {high} tokens, got {context_tokens}")
    if not QUALITY_CHUNKS[0] <= chunks <= QUALITY_CHUNKS[1]:
        raise ValueError(f"{shown[1]} must be 0 (the whole text) to {QUALITY_CHUNKS[1]}, got {chunks}")
