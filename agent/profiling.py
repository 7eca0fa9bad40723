"""Profile one model on this device: validate the request, resolve the model, run it in an isolated worker."""

import os
import pathlib
import time
import uuid

import psutil

from fleetfit.agent import device_probe, energy, model_cache
from fleetfit.agent.backends.common import ONNX_PRECISIONS, TORCH_PRECISIONS
from fleetfit.agent.isolation import WorkerFailure, run_worker
from fleetfit.models import catalogue, real_models
from fleetfit.models import roofline as rl
from fleetfit.models.gguf_file import inspect_gguf, sha256_of
from fleetfit.models.quants import parse_quant
from fleetfit.v1 import fleetfit_pb2 as pb

SUPPORTED_BACKENDS = ("llama.cpp", "torch", "onnxruntime")
PRECISIONS = {"torch": TORCH_PRECISIONS, "onnxruntime": ONNX_PRECISIONS}  # the others take GGUF quant types
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
FRAMEWORK_MEASURED = {
    name: pb.Provenance(kind="measured", method=f"{how}; wall clock with the device synchronised before each read; "
                                                "harness-fed random tokens (llama-bench pp/tg); 1 warm-up",
                        scope="worker process on this device")
    for name, how in (("torch", "PyTorch eager, static KV cache"),
                      ("onnxruntime", "ONNX Runtime session, KV cache kept in ORT memory by IO binding"))
}


class ProfileInputError(ValueError):
    """A profile request that cannot be run as asked; the message is one line for users."""


def default_threads() -> int:
    return psutil.cpu_count(logical=False) or os.cpu_count() or 1


def make_request(model: str, quant: str | None = None, backend: str = "llama.cpp", n_prompt: int = 512,
                 n_gen: int = 128, repetitions: int = 5, threads: int = 0, timeout_s: float = 0.0,
                 idle_baseline_s: float | None = None, device: str = "") -> pb.ProfileRequest:
    ref = pb.ModelRef(path=model) if model_cache.is_path(model) else pb.ModelRef(name=model)
    request = pb.ProfileRequest(model=ref, backend=backend, quant=quant or "", n_prompt=n_prompt, n_gen=n_gen,
                                repetitions=repetitions, threads=threads, timeout_s=timeout_s, device=device)
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
    if request.backend in PRECISIONS:
        if request.quant and request.quant not in PRECISIONS[request.backend]:
            raise ProfileInputError(f"{request.backend} precision must be one of "
                                    f"{', '.join(PRECISIONS[request.backend])}, got {request.quant!r}")
    elif request.quant:
        parse_quant(request.quant)
    if request.device and request.device not in ("auto", "cpu", "cuda") and not request.device.startswith("cuda:"):
        raise ProfileInputError(f"device must be cpu, cuda or cuda:N (or empty for the default), "
                                f"got {request.device!r}")
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
    if request.backend in PRECISIONS:
        return _profile_framework(request, device_id, cache_dir, memory_limit_bytes)
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
    figures = _measure(result, {"op": "profile", "model_path": str(model.path), "n_prompt": request.n_prompt,
                                "n_gen": request.n_gen, "repetitions": request.repetitions, "threads": threads},
                       memory_limit_bytes)
    if figures:
        result.roofline.CopyFrom(energy.roofline_message(model.path, request.n_gen,
                                                         figures["decode_tokens_per_s"]["mean"], probes))
    result.wall_s = time.monotonic() - start
    return result


def _measure(result: pb.ProfileResult, worker_request: dict, memory_limit_bytes: int | None) -> dict | None:
    """Run the worker under the power sampler and fill the result's figures; None (and the failure) when it failed."""
    request = result.request
    idle_s = energy.idle_baseline_s(request)
    sampler, declined = energy.start_sampler(idle_s)
    try:
        figures = run_worker(worker_request, request.timeout_s or DEFAULT_TIMEOUT_S, memory_limit_bytes)
    except WorkerFailure as exc:
        sampler.close()
        result.failure = FAILURE_KINDS[exc.failure]
        result.error = exc.message
        return None
    tokens = {"prefill": request.n_prompt * request.repetitions, "decode": request.n_gen * request.repetitions}
    result.power.CopyFrom(energy.finish_sampler(sampler, declined, idle_s, figures["phase_windows_ns"], tokens))
    for stat in ("prefill_tokens_per_s", "decode_tokens_per_s", "ttft_ms"):
        getattr(result, stat).CopyFrom(pb.Stat(**figures[stat]))
    for field in ("load_time_s", "peak_rss_bytes", "baseline_rss_bytes", "memory_method", "n_batch",
                  "n_ubatch", "n_ctx", "backend_version", "backend_build", "weight_bytes"):
        if field in figures:
            setattr(result, field, figures[field])
    return figures


def _framework_model(request: pb.ProfileRequest, cache_dir: pathlib.Path) -> tuple[model_cache.ResolvedModel | None,
                                                                                  catalogue.Architecture | None]:
    """Real weights (a GGUF path, or a real model's shipped file), or else (torch) a catalogue shape, random weights."""
    ref = request.model.path or request.model.name
    if model_cache.is_path(ref) or ref.lower() in real_models.REAL_MODELS:
        return model_cache.resolve(ref, None, cache_dir, request.threads or default_threads()), None
    arch = catalogue.architecture(ref)
    if request.backend == "onnxruntime":
        raise ProfileInputError(f"onnxruntime runs real models (a GGUF path or {', '.join(real_models.REAL_MODELS)}), "
                                f"not catalogue shapes like {arch.name}")
    if arch.family not in ("llama", "qwen2"):
        raise ProfileInputError(f"the torch backend runs Llama-family shapes; {arch.name} is {arch.family}")
    return None, arch


def _profile_framework(request: pb.ProfileRequest, device_id: str, cache_dir: pathlib.Path,
                   memory_limit_bytes: int | None) -> pb.ProfileResult:
    validate(request)
    precision = request.quant or "fp32"
    model, arch = _framework_model(request, cache_dir)
    threads = request.threads or default_threads()
    result = pb.ProfileResult(
        result_id=str(uuid.uuid4()), device_id=device_id, request=request, quant=precision, threads=threads,
        n_prompt=request.n_prompt, n_gen=request.n_gen, repetitions=request.repetitions, warmup=True,
        provenance=FRAMEWORK_MEASURED[request.backend], started_unix_s=time.time(),
        memory_limit_bytes=memory_limit_bytes,
    )
    if model is not None:
        info = inspect_gguf(model.path)
        result.MergeFrom(pb.ProfileResult(
            model_name=model.name, model_file=str(model.path), model_sha256=sha256_of(model.path),
            model_file_bytes=info.file_bytes, model_n_params=info.n_params, model_arch=info.architecture,
            model_origin=model.origin))
    else:
        result.MergeFrom(pb.ProfileResult(model_name=arch.name, model_n_params=catalogue.n_params(arch),
                                          model_arch=arch.family, model_origin="synthetic"))
    start = time.monotonic()
    figures = _measure(result, {"backend": request.backend, "op": "profile", "precision": precision,
                                "model_path": str(model.path) if model else None, "arch": arch.name if arch else None,
                                "device": request.device, "cache_dir": str(cache_dir), "n_prompt": request.n_prompt,
                                "n_gen": request.n_gen, "repetitions": request.repetitions, "threads": threads},
                       memory_limit_bytes)
    if figures:
        result.compute_device = figures["device"]
        if figures["device"] == "cpu" and "shape" in figures:  # against the CPU's measured bandwidth
            shape = rl.ModelShape(architecture=result.model_arch, **figures["shape"],
                                  weight_bytes_per_token=figures["decode_weight_bytes"])
            result.roofline.CopyFrom(energy.roofline_message(shape, request.n_gen,
                                                             figures["decode_tokens_per_s"]["mean"],
                                                             device_probe.probes(cache_dir)))
        if "gpu_memory" in figures:
            result.gpu_memory.CopyFrom(pb.GpuMemory(**{k: v for k, v in figures["gpu_memory"].items()
                                                       if v is not None}))
    result.wall_s = time.monotonic() - start
    return result


def failure_name(kind: int) -> str:
    return {v: k for k, v in FAILURE_KINDS.items()}.get(kind, "")


