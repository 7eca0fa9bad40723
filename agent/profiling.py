"""Profile one model on this device, on any backend: validate the request, resolve its model through the
backend, run it in an isolated worker under one deadline, and merge the run part of the record it answers with into
the ProfileResult, with the power figures of its phase windows."""

import os
import pathlib
import threading
import time
import uuid


from fleetfit.agent import device_probe, energy, model_cache, resources
from fleetfit.agent.backends import registry
from fleetfit.agent.backends.base import Backend, Measured, ProfileInputError, RunTarget, WorkerJob, serving_phase
from fleetfit.agent.isolation import Deadline, WorkerFailure, run_worker
from fleetfit.models import catalogue, job_bounds, real_models, synth
from fleetfit.models.backends import DEFAULT_BACKEND
from fleetfit.models.errors import ModelError, NoRoomError
from fleetfit.models.gguf_file import sha256_of
from fleetfit.v1 import fleetfit_pb2 as pb

__all__ = ["ProfileInputError", "default_threads", "failure_name", "make_request", "profile", "validate"]

DEFAULT_TIMEOUT_S = 900.0
# The request's fields as the command line spells them, in its one-line errors (the bounds: models/job_bounds.py).
SHOWN = {"n_prompt": "n-prompt", "n_gen": "n-gen", "timeout_s": "timeout", "idle_baseline_s": "idle baseline",
         "gpu_layers": "gpu-layers"}
FAILURE_KINDS = {
    "oom": pb.FAILURE_KIND_OOM,
    "signal": pb.FAILURE_KIND_SIGNAL,
    "timeout": pb.FAILURE_KIND_TIMEOUT,
    "error": pb.FAILURE_KIND_ERROR,
    "stopped": pb.FAILURE_KIND_ERROR,  # the agent was asked to stop: the job ends, said so in its error
}
FAILURE_NAMES = {kind: name for name, kind in FAILURE_KINDS.items() if name != "stopped"}


def default_threads() -> int:
    """One per CPU this agent may use (cgroup quota, cpuset and affinity included)."""
    return resources.cpus().count


def make_request(model: str, quant: str | None = None, backend: str = DEFAULT_BACKEND, n_prompt: int = 512,
                 n_gen: int = 128, repetitions: int = 5, threads: int = 0, timeout_s: float = 0.0,
                 idle_baseline_s: float | None = None, device: str = "",
                 gpu_layers: int | None = None, parallel: list[int] = (), decode_depth: int = 0) -> pb.ProfileRequest:
    """A request as the device's owner types it: `model` is a file when it looks like one, else a model name.
    `parallel`: the stream counts of a concurrency sweep (empty: one stream only); `decode_depth`: tokens in the
    KV cache before each test."""
    ref = pb.ModelRef(path=model) if model_cache.is_path(model) else pb.ModelRef(name=model)
    request = pb.ProfileRequest(model=ref, backend=backend, quant=quant or "", n_prompt=n_prompt, n_gen=n_gen,
                                repetitions=repetitions, threads=threads, timeout_s=timeout_s, device=device,
                                parallel=parallel, decode_depth=decode_depth)
    if idle_baseline_s is not None:
        request.idle_baseline_s = idle_baseline_s
    if gpu_layers is not None:
        request.gpu_layers = gpu_layers
    return request


def validate(request: pb.ProfileRequest) -> tuple[Backend, str | None]:
    """The request's backend and its precision spelled canonically (None: the model file's own), or a one-line
    ProfileInputError."""
    try:
        backend = registry.get(request.backend or DEFAULT_BACKEND)
    except ModelError as exc:
        raise ProfileInputError(str(exc)) from None
    spec = backend.spec
    try:
        job_bounds.check_sizes(request, SHOWN)
        job_bounds.check_compute_device(request.device, spec.name)
    except ValueError as exc:
        raise ProfileInputError(str(exc)) from None
    if not (request.model.name or request.model.path):
        raise ProfileInputError("the request names no model")
    if request.model.name and request.model.path:
        raise ProfileInputError("the request names a model both by name and by path")
    try:
        precision = spec.canonical(request.quant) if request.quant else backend.DEFAULT_PRECISION
    except ModelError as exc:
        raise ProfileInputError(str(exc)) from None
    return backend, precision


def profile(request: pb.ProfileRequest, device_id: str, cache_dir: pathlib.Path,
            memory_limit_bytes: int | None = None, allowed_dirs: list[pathlib.Path] | None = None,
            stop: threading.Event | None = None, cache_limit_bytes: int | None = None) -> pb.ProfileResult:
    """Run the request. Bad input raises ProfileInputError or ModelError; a run that fails, passes the request's
    timeout (in any phase: baseline, fetch, derive, synthesis, load, run) or is stopped is a failed result.
    `allowed_dirs`: a job's, where only files inside them may be named; None: the owner's own command. Once its
    model file is made, the cache is trimmed to `cache_limit_bytes` (None: the default limit), never evicting that
    file, which is held in use while it runs."""
    backend, precision = validate(request)
    probes = device_probe.probes(cache_dir)  # once per device (then cached), of fixed size: before the job's clock
    deadline = Deadline.after(request.timeout_s or DEFAULT_TIMEOUT_S, stop)
    threads = request.threads or default_threads()
    result = pb.ProfileResult(
        result_id=str(uuid.uuid4()), device_id=device_id, request=request, threads=threads,
        n_prompt=request.n_prompt, n_gen=request.n_gen, n_depth=request.decode_depth, repetitions=request.repetitions, warmup=True,
        provenance=pb.Provenance(provenance_kind=pb.PROVENANCE_KIND_MEASURED, method=backend.METHOD, scope="worker process on this device"),
        started_unix_s=time.time(), memory_limit_bytes=memory_limit_bytes,
    )
    start = time.monotonic()
    target = None
    limit = model_cache.cache_limit_bytes(cache_dir) if cache_limit_bytes is None else cache_limit_bytes
    try:
        planned, need = _planned_synthetic(request, precision, backend, cache_dir)
        model_cache.check_under_limit(need, limit, "the synthetic file")
        model_cache.trim(cache_dir, max(limit - need, 0), keep={planned} if planned else set())  # room for it first
        target = backend.resolve(request, precision, cache_dir, threads, deadline, allowed_dirs)
        with model_cache.in_use(cache_dir, target.path if target.fd is None else None):
            model_cache.trim(cache_dir, limit, keep={pathlib.Path(target.path)} if target.path else set())
            _describe_model(result, target, allowed_dirs, deadline)
            _measure(result, backend, target, WorkerJob(request, target, threads, str(cache_dir)), deadline, probes)
    except (WorkerFailure, NoRoomError) as exc:
        # NoRoomError: too little memory here for the model, found before loading it: out of memory, not an error
        result.failure = FAILURE_KINDS[exc.failure] if isinstance(exc, WorkerFailure) else pb.FAILURE_KIND_OOM
        result.error = exc.message if isinstance(exc, WorkerFailure) else str(exc)
        # failed before the model was described (its synthesis refused for lack of memory): still name it
        result.model_name = result.model_name or request.model.name
        result.quant = result.quant or precision
    finally:
        if target is not None and target.fd is not None:  # a job's file, read through this descriptor until now
            os.close(target.fd)
    result.wall_s = time.monotonic() - start
    return result


def _planned_synthetic(request: pb.ProfileRequest, precision: str | None, backend: Backend,
                       cache_dir: pathlib.Path) -> tuple[pathlib.Path | None, int]:
    """The synthetic file a catalogue shape's job will write into the cache, and its size when it is not there yet
    (known before writing it: the cache makes room for it first); (None, 0) for any other model."""
    name = request.model.name
    if (not name or request.model.HasField("shape") or name not in catalogue.CATALOGUE or precision is None
            or name.lower() in real_models.REAL_MODELS or not backend.spec.takes_gguf_types()):
        return None, 0
    try:
        quant = synth.supported_quant(precision)
        path = model_cache.synthetic_file(cache_dir, name, quant)
        return path, 0 if path.exists() else synth.plan_file(name, quant).file_bytes
    except ModelError:  # not a precision synthesis writes: resolve says so
        return None, 0


def _describe_model(result: pb.ProfileResult, target: RunTarget, allowed_dirs: list[pathlib.Path] | None,
                    deadline: Deadline) -> None:
    result.model_name, result.model_origin, result.quant = target.name, target.origin, target.precision or ""
    if target.path is None:  # a catalogue shape with random weights
        arch = catalogue.architecture(target.arch)
        result.model_n_params, result.model_arch = catalogue.n_params(arch), arch.family
        return
    info = model_cache.inspect(target.path, allowed_dirs is not None, deadline)
    # read in full (minutes for a terabyte, sparse or not): inside the job's deadline and stop request
    digest = sha256_of(pathlib.Path(target.path), check=deadline.checker("hashing of the model file"))
    result.model_file, result.model_sha256 = target.shown or target.path, digest
    result.model_file_bytes, result.model_n_params = info.file_bytes, info.n_params
    result.model_arch = info.architecture


def _measure(result: pb.ProfileResult, backend: Backend, target: RunTarget, job: WorkerJob, deadline: Deadline,
             probes: pb.DeviceProbes) -> None:
    """Run the worker under the power sampler and fill the result's figures (WorkerFailure when it failed)."""
    request = result.request
    idle_s = energy.idle_baseline_s(request)
    sampler, declined = energy.start_sampler(idle_s, deadline)
    try:
        with backend.preparing(target, job.cache_dir):
            measured = Measured.from_json(run_worker({"backend": backend.NAME, "op": "profile", "job": job.to_json()},
                                                     deadline, result.memory_limit_bytes or None,
                                                     pass_fds=() if target.fd is None else (target.fd,)))
    except BaseException:
        sampler.close()
        raise
    run, windows = measured.run, measured.phase_windows_ns
    tokens = {"prefill": request.n_prompt * request.repetitions, "decode": request.n_gen * request.repetitions}
    result.power.CopyFrom(energy.finish_sampler(sampler, declined, idle_s, windows, tokens))
    serving_tokens = {serving_phase(p.parallel): p.parallel * request.n_gen * request.repetitions
                      for p in run.serving if not p.unsupported_reason}
    per_token = energy.serving_energy(sampler, result.power, windows, serving_tokens)
    for point in run.serving:
        if serving_phase(point.parallel) in per_token:
            point.decode_energy_per_token_j, point.energy_provenance_kind = per_token[serving_phase(point.parallel)]
    result.MergeFrom(run)
    shape = backend.roofline_shape(target, measured, result.model_arch)
    if shape is not None:
        result.roofline.CopyFrom(energy.roofline_message(shape, request.n_gen, run.decode_tokens_per_s.mean, probes))


def failure_name(kind: int) -> str:
    return FAILURE_NAMES.get(kind, "")
