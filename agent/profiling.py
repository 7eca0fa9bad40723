"""Profile one model on this device: validate the request, resolve the model, run it in an isolated worker."""

import os
import pathlib
import time
import uuid

import psutil

from fleetfit.agent import device_probe, energy, model_cache
from fleetfit.agent.isolation import WorkerFailure, run_worker
from fleetfit.models.errors import ModelError
from fleetfit.models.gguf_file import inspect_gguf, sha256_of
from fleetfit.models.quants import parse_quant
from fleetfit.v1 import fleetfit_pb2 as pb

SUPPORTED_BACKENDS = ("llama.cpp",)
DEFAULT_TIMEOUT_S = 900.0
FAILURE_KINDS = {
    "oom": pb.FAILURE_KIND_OOM,
    "signal": pb.FAILURE_KIND_SIGNAL,
    "timeout": pb.FAILURE_KIND_TIMEOUT,
    "error": pb.FAILURE_KIND_ERROR,
}
MEASURED = pb.Provenance(
    kind="measured",
    method="llama.cpp via llama-cpp-python; wall clock around llama_decode + llama_synchronize; "
           "harness-fed random tokens (llama-bench pp/tg); 1 warm-up",
    scope="worker process on this device",
)


class ProfileInputError(ValueError):
    """A profile request that cannot be run as asked; the message is one line for users."""


def default_threads() -> int:
    return psutil.cpu_count(logical=False) or os.cpu_count() or 1


def make_request(model: str, quant: str | None = None, backend: str = "llama.cpp", n_prompt: int = 512,
                 n_gen: int = 128, repetitions: int = 5, threads: int = 0, timeout_s: float = 0.0,
                 idle_baseline_s: float | None = None) -> pb.ProfileRequest:
    ref = pb.ModelRef(path=model) if model_cache.is_path(model) else pb.ModelRef(name=model)
    request = pb.ProfileRequest(model=ref, backend=backend, quant=quant or "", n_prompt=n_prompt, n_gen=n_gen,
                                repetitions=repetitions, threads=threads, timeout_s=timeout_s)
    if idle_baseline_s is not None:
        request.idle_baseline_s = idle_baseline_s
    return request


def validate(request: pb.ProfileRequest) -> None:
    if request.backend not in SUPPORTED_BACKENDS:
        raise ProfileInputError(f"unknown backend {request.backend!r} (supported: {', '.join(SUPPORTED_BACKENDS)})")
    for field in ("n_prompt", "n_gen", "repetitions"):
        if getattr(request, field) < 1:
            raise ProfileInputError(f"{field.replace('_', '-')} must be at least 1, got {getattr(request, field)}")
    if request.threads < 0:
        raise ProfileInputError(f"threads must be positive (or 0 for the default), got {request.threads}")
    if request.HasField("idle_baseline_s") and request.idle_baseline_s < 0:
        raise ProfileInputError(f"idle baseline must be positive (or 0 for none), got {request.idle_baseline_s}")
    if request.timeout_s < 0:
        raise ProfileInputError(f"timeout must be positive (or 0 for the default), got {request.timeout_s}")
    if request.quant:
        parse_quant(request.quant)
    if not (request.model.name or request.model.path):
        raise ProfileInputError("the request names no model")


def resolve_model(request: pb.ProfileRequest, cache_dir: pathlib.Path) -> model_cache.ResolvedModel:
    """Validate the request and find (fetching or deriving if needed) its model file."""
    validate(request)
    threads = request.threads or default_threads()
    return model_cache.resolve(request.model.path or request.model.name, request.quant or None, cache_dir, threads)


def profile(request: pb.ProfileRequest, device_id: str, cache_dir: pathlib.Path,
            memory_limit_bytes: int | None = None) -> pb.ProfileResult:
    """Run the request. Bad input raises ProfileInputError or ModelError; a backend failure is a result."""
    model = resolve_model(request, cache_dir)
    info = inspect_gguf(model.path)
    threads = request.threads or default_threads()
    result = pb.ProfileResult(
        result_id=str(uuid.uuid4()), device_id=device_id, request=request,
        model_name=model.name, model_file=str(model.path), model_sha256=sha256_of(model.path),
        model_file_bytes=info.file_bytes, model_n_params=info.n_params, model_arch=info.architecture,
        quant=info.quant, threads=threads, n_prompt=request.n_prompt, n_gen=request.n_gen,
        repetitions=request.repetitions, warmup=True, provenance=MEASURED, started_unix_s=time.time(),
        model_origin=model.origin, memory_limit_bytes=memory_limit_bytes,
    )
    probes = device_probe.probes(cache_dir)  # measured once per device, then cached
    start = time.monotonic()
    idle_s = energy.idle_baseline_s(request)
    sampler, declined = energy.start_sampler(idle_s)
    try:
        figures = run_worker({"op": "profile", "model_path": str(model.path), "n_prompt": request.n_prompt,
                              "n_gen": request.n_gen, "repetitions": request.repetitions, "threads": threads},
                             request.timeout_s or DEFAULT_TIMEOUT_S, memory_limit_bytes)
    except WorkerFailure as exc:
        sampler.close()
        result.failure = FAILURE_KINDS[exc.failure]
        result.error = exc.message
    else:
        tokens = {"prefill": request.n_prompt * request.repetitions, "decode": request.n_gen * request.repetitions}
        result.power.CopyFrom(energy.finish_sampler(sampler, declined, idle_s, figures["phase_windows_ns"], tokens))
        result.roofline.CopyFrom(energy.roofline_message(model.path, request.n_gen,
                                                         figures["decode_tokens_per_s"]["mean"], probes))
        for stat in ("prefill_tokens_per_s", "decode_tokens_per_s", "ttft_ms"):
            getattr(result, stat).CopyFrom(pb.Stat(**figures[stat]))
        for field in ("load_time_s", "peak_rss_bytes", "baseline_rss_bytes", "memory_method", "n_batch",
                      "n_ubatch", "n_ctx", "backend_version", "backend_build"):
            setattr(result, field, figures[field])
    result.wall_s = time.monotonic() - start
    return result


def failure_name(kind: int) -> str:
    return {v: k for k, v in FAILURE_KINDS.items()}.get(kind, "")


