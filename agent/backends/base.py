"""What every backend implements, and the records that cross the worker boundary.

A backend is one module in agent/backends/ holding a `Backend` subclass, listed in registry.py under its name in
the shared vocabulary (models/backends.py). The agent process uses only its cheap side (probe, models, resolve);
the heavy runtime is imported only by the worker side (`run`, `call`), which runs in the isolated worker.
Imports no runtime.
"""

import contextlib
import base64
import dataclasses
import importlib.metadata
import importlib.util
import os
import pathlib
from typing import ClassVar

from google.protobuf import json_format

from fleetfit.agent import model_cache
from fleetfit.agent.isolation import Deadline, run_worker
from fleetfit.models import backends as vocabulary
from fleetfit.models import catalogue, real_models
from fleetfit.models import roofline as rl
from fleetfit.models.errors import ModelError
from fleetfit.v1 import fleetfit_pb2 as pb


class ProfileInputError(ModelError):
    """A profile request that cannot be run as asked; the message is one line for users."""


# ---------------------------------------------------------------- the records that cross the worker boundary

def serving_phase(parallel: int) -> str:
    """The name of a serving point's decode windows (one per repetition), for its energy per token."""
    return f"serving_decode:{parallel}"


@dataclasses.dataclass(frozen=True)
class Measured:
    """What the worker answers for a run: the wire record's run part as the harness filled it (a ProfileResult
    holding only the run's figures and build, merged as is into the agent's result), and what only the agent's side
    reads: the phase windows for its power sampler, and a framework's decoded-token shape for the roofline."""
    run: pb.ProfileResult
    phase_windows_ns: tuple[tuple[str, int, int], ...]  # CLOCK_MONOTONIC; "warmup" windows are not measured phases
    decode_shape: rl.ModelShape | None = None  # None: the roofline reads the shape from the GGUF file

    def to_json(self) -> dict:
        return {"run": json_format.MessageToDict(self.run, preserving_proto_field_name=True),
                "phase_windows_ns": self.phase_windows_ns,
                "decode_shape": None if self.decode_shape is None else dataclasses.asdict(self.decode_shape)}

    @classmethod
    def from_json(cls, data: dict) -> "Measured":
        shape = data.get("decode_shape")
        return cls(json_format.ParseDict(data["run"], pb.ProfileResult()),
                   tuple((str(p), int(s), int(e)) for p, s, e in data["phase_windows_ns"]),
                   None if shape is None else rl.ModelShape(**shape))


@dataclasses.dataclass(frozen=True)
class RunTarget:
    """A request resolved on this device: the model to run and how it was obtained."""
    name: str  # what the result reports as the model's name
    origin: str  # "file" | "real" | "derived" | "cached" | "synthetic"
    precision: str | None  # canonical for the backend; None: the file's own GGUF type (llama.cpp)
    path: str | None = None  # a model file (already checked and resolved)
    arch: str | None = None  # a catalogue shape run with random weights, no file
    fd: int | None = None  # a job's file, opened once: `path` reads this descriptor (the worker is given it too)
    shown: str | None = None  # where that file was when it was opened: what the result reports


@dataclasses.dataclass(frozen=True)
class WorkerJob:
    """What the worker receives for a run: the request itself, and what the agent resolved it to."""
    request: pb.ProfileRequest
    target: RunTarget
    threads: int
    cache_dir: str

    def to_json(self) -> dict:
        return {"request": base64.b64encode(self.request.SerializeToString()).decode(),
                "target": dataclasses.asdict(self.target), "threads": self.threads, "cache_dir": self.cache_dir}

    @classmethod
    def from_json(cls, data: dict) -> "WorkerJob":
        return cls(pb.ProfileRequest.FromString(base64.b64decode(data["request"])), RunTarget(**data["target"]),
                   int(data["threads"]), data["cache_dir"])


# ---------------------------------------------------------------- the interface

class Backend:
    NAME: ClassVar[str]  # as in models/backends.py
    IMPORT_NAME: ClassVar[str]  # what Python imports (probed: a distribution name would miss renamed packages)
    DISTRIBUTION: ClassVar[str]  # what pip installs (for the version)
    METHOD: ClassVar[str]  # how it times a run, for the result's provenance
    DEFAULT_PRECISION: ClassVar[str | None]  # when the request names none (None: the model file's own)

    @property
    def spec(self) -> vocabulary.BackendSpec:
        return vocabulary.backend(self.NAME)

    # -- agent side: cheap, no runtime import

    def probe(self) -> pb.BackendInfo:
        """Whether the runtime imports here, found by import name, with the reason when it does not."""
        if importlib.util.find_spec(self.IMPORT_NAME) is None:
            return pb.BackendInfo(name=self.NAME, available=False,
                                  reason=f"module {self.IMPORT_NAME!r} is not installed")
        try:
            version = importlib.metadata.version(self.DISTRIBUTION)
        except importlib.metadata.PackageNotFoundError:
            version = "unknown"
        return pb.BackendInfo(name=self.NAME, available=True, version=version)

    def capabilities(self, timeout_s: float) -> list[pb.BackendCapability]:
        """Which precision runs on which compute device here, from the worker side's `capabilities` call."""
        rows = run_worker({"backend": self.NAME, "op": "capabilities"}, timeout_s)["capabilities"]
        return [pb.BackendCapability(**row) for row in rows]

    def models(self, cache_dir: pathlib.Path) -> list[str]:
        """The model names this backend can obtain here: real models, catalogue shapes of the families it runs, and
        other models in the cache (real weights someone put there)."""
        names = {a.name for a in catalogue.CATALOGUE.values() if a.family in self.spec.shape_families}
        if self.spec.runs_real_models:
            names |= set(real_models.REAL_MODELS)
            names |= {name for name, _, _, _ in model_cache.cached_models(cache_dir) if name not in catalogue.CATALOGUE}
        return sorted(names)

    def preparing(self, target: RunTarget, cache_dir: str) -> contextlib.AbstractContextManager:
        """A progress bar for what the worker does before it measures, when that is slow (nothing by default)."""
        return contextlib.nullcontext()

    def resolve(self, request: pb.ProfileRequest, precision: str | None, cache_dir: pathlib.Path, threads: int,
                deadline: Deadline, allowed_dirs: list[pathlib.Path] | None) -> RunTarget:
        """The model the request names, fetched, derived or synthesized if needed. A path is allowed only
        inside `allowed_dirs` (None: the device's owner at their terminal, any file they can read)."""
        job = allowed_dirs is not None
        if request.model.path and not job:  # the owner's own file, as typed
            path = request.model.path
            return self.file_target(path, precision, pathlib.Path(path).stem, "file", job, deadline)
        if request.model.path:
            fd, real = model_cache.open_job_file(request.model.path, allowed_dirs)
            try:
                target = self.file_target(model_cache.fd_path(fd), precision, pathlib.Path(real).stem, "file", job,
                                          deadline)
            except BaseException:
                os.close(fd)
                raise
            return dataclasses.replace(target, fd=fd, shown=real)
        name = model_cache.checked_name(request.model.name)
        if request.model.sha256:  # the coordinator's stored file (fetched by the daemon before the job runs)
            return self.stored_target(name, request.model.sha256, precision, cache_dir, threads, deadline)
        if request.model.HasField("shape"):
            return self.shape_target(self.sent_shape(request.model), precision, cache_dir, deadline)
        if name.lower() in real_models.REAL_MODELS:
            if not self.spec.runs_real_models:
                raise ProfileInputError(f"{self.NAME} runs catalogue shapes only, not real models")
            return self.real_target(real_models.real_model(name), precision, cache_dir, threads, deadline)
        if name in catalogue.CATALOGUE:
            refusal = vocabulary.obtainable(self.spec, name, set(real_models.REAL_MODELS), catalogue.CATALOGUE)
            if refusal:
                raise ProfileInputError(refusal)
            return self.shape_target(catalogue.architecture(name), precision, cache_dir, deadline)
        cached = model_cache.cached_file(cache_dir, name, self.cached_quant(precision))
        if cached is None or not self.spec.runs_real_models:
            raise ProfileInputError(f"unknown model {name!r} (known here: {', '.join(self.models(cache_dir))})")
        return self.file_target(str(cached), precision, name, "cached", job, deadline)

    def sent_shape(self, model: pb.ModelRef) -> catalogue.Architecture:
        """The shape a job carries (a model the catalogue does not know, read from a file by the operator), checked
        here again as any catalogue entry is; a name it shares with the catalogue must be that entry."""
        from fleetfit.models.shapes import from_proto

        if not self.spec.takes_gguf_types():
            raise ProfileInputError(f"{self.NAME} runs catalogue shapes only; a sent shape is synthesized as GGUF")
        shape = from_proto(model.shape)  # ModelError (one line) for anything out of bounds
        if shape.name != model.name or (shape.name in catalogue.CATALOGUE and shape != catalogue.CATALOGUE[shape.name]):
            raise ProfileInputError(f"the job's shape {shape.name[:40]!r} does not match its model {model.name!r}")
        refusal = vocabulary.obtainable(self.spec, shape.name, set(), {shape.name: shape})
        if refusal:
            raise ProfileInputError(refusal)
        return shape

    def stored_target(self, name: str, digest: str, precision: str | None, cache_dir: pathlib.Path, threads: int,
                      deadline: Deadline) -> RunTarget:
        """A file of the coordinator's model store, verified in this device's cache (agent/model_fetch.py): at its own
        type, or derived from an F32/F16/BF16 file to `precision` with llama.cpp's quantizer (GGUF backends)."""
        from fleetfit.agent import model_fetch

        stored = model_fetch.stored_file(cache_dir, digest)
        if stored is None:
            raise ProfileInputError(f"stored model {name} (sha256:{digest[:16]}...) is not in this device's cache: "
                                    "the agent fetches it from its coordinator when a job names it")
        info = model_cache.inspect(stored, True, deadline)
        if precision is None or precision == info.quant or not self.spec.takes_gguf_types():  # a framework converts
            return self.file_target(str(stored), precision, name, "stored", True, deadline)
        if info.quant not in model_fetch.HIGH_PRECISIONS:
            raise ProfileInputError(f"stored model {name} is {info.quant}: other precisions are derived only from an "
                                    f"{'/'.join(model_fetch.HIGH_PRECISIONS)} file")
        derived = model_cache.derive(stored, precision, model_fetch.derived_file(stored, precision), threads, deadline)
        return self.file_target(str(derived), precision, name, "derived", True, deadline)

    def cached_quant(self, precision: str | None) -> str | None:
        """Which cached file of a name to run: its GGUF type for llama.cpp; frameworks read any (None)."""
        return None

    def file_target(self, path: str, precision: str | None, name: str, origin: str, job: bool,
                    deadline: Deadline | None = None) -> RunTarget:
        """A GGUF file's real weights; a damaged file is refused here, before a worker starts."""
        model_cache.inspect(path, job, deadline)
        return RunTarget(name=name, origin=origin, precision=precision, path=path)

    def real_target(self, model: real_models.RealModel, precision: str, cache_dir: pathlib.Path, threads: int,
                    deadline: Deadline) -> RunTarget:
        """A framework reads the shipped file's weights and converts them to `precision` itself."""
        path = model_cache.pull(model.name, cache_dir, deadline)
        return RunTarget(name=model.name, origin="real", precision=precision, path=str(path))

    def shape_target(self, arch: catalogue.Architecture, precision: str, cache_dir: pathlib.Path,
                     deadline: Deadline) -> RunTarget:
        """A catalogue shape: random weights made by the worker side, no file."""
        return RunTarget(name=arch.name, origin="synthetic", precision=precision, arch=arch.name)

    def roofline_shape(self, target: RunTarget, measured: Measured, model_arch: str) -> rl.ModelShape | None:
        """What a decoded token reads, for the roofline against the CPU's measured bandwidth (None: no roofline)."""
        if measured.decode_shape is None or measured.run.compute_device != "cpu":
            return None
        return dataclasses.replace(measured.decode_shape, architecture=model_arch)

    # -- worker side: only the isolated worker calls these; they import the runtime

    def run(self, job: WorkerJob) -> Measured:
        """The job measured by the harness's protocol (harness.py) on this backend's runner."""
        from fleetfit.agent.backends import harness

        request = job.request
        plan = harness.Plan(request.n_prompt, request.n_gen, request.repetitions, job.threads, request.decode_depth,
                            tuple(request.parallel))
        return harness.measure(self.runner(job), plan)

    def runner(self, job: WorkerJob):
        """The backend's harness.Runner for this job (it imports the runtime)."""
        raise NotImplementedError

    def call(self, op: str, args: dict) -> dict:
        """Other operations (capabilities, greedy decoding, ...): a JSON-able dict."""
        raise ValueError(f"{self.NAME} has no worker operation {op!r}")

