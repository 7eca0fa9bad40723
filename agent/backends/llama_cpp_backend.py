"""llama.cpp: GGUF files at their own type; real models derived to the requested type with llama.cpp's quantizer;
catalogue shapes as synthetic GGUFs written into the cache. The runtime is llama_cpp_runtime.py (worker only)."""

import pathlib

from fleetfit.agent import model_cache, nvml
from fleetfit.agent.backends.base import Backend, Measured, ProfileInputError, RunTarget, WorkerJob
from fleetfit.agent.isolation import Deadline
from fleetfit.models import catalogue, real_models
from fleetfit.models import roofline as rl
from fleetfit.models.quant_sizes import FILE_TYPES, supported_quant


CPU_ONLY_ON_GPU = ("this llama.cpp build is CPU-only on a machine with an NVIDIA GPU: install the CUDA toolkit "
                   "(nvcc) and rerun scripts/install.sh to build it with CUDA")


class LlamaCpp(Backend):
    NAME = "llama.cpp"
    IMPORT_NAME = "llama_cpp"
    DISTRIBUTION = "llama-cpp-python"
    METHOD = ("llama.cpp via llama-cpp-python; wall clock around llama_decode + llama_synchronize; "
              "harness-fed random tokens (llama-bench pp/tg); 1 warm-up")
    DEFAULT_PRECISION = None

    def cached_quant(self, precision: str | None) -> str | None:
        return precision

    def file_target(self, path: str, precision: str | None, name: str, origin: str, job: bool,
                    deadline: Deadline | None = None) -> RunTarget:
        info = model_cache.inspect(path, job, deadline)
        if precision is not None and precision != info.quant:
            shown = pathlib.Path(path).name
            raise ProfileInputError(f"{shown} is {info.quant}, not {precision}; derive it first with "
                                    f"`fleetfit-agent models quantize {path} --to {precision}`" if not job else
                                    f"the model file the job names is {info.quant}, not {precision}")
        return RunTarget(name=name, origin=origin, precision=info.quant, path=path)

    def real_target(self, model: real_models.RealModel, precision: str | None, cache_dir: pathlib.Path, threads: int,
                    deadline: Deadline) -> RunTarget:
        found = model_cache.resolve(model.name, precision, cache_dir, threads, deadline)
        return RunTarget(name=found.name, origin=found.origin, precision=precision or model.quant, path=str(found.path))

    def shape_target(self, arch: catalogue.Architecture, precision: str | None, cache_dir: pathlib.Path,
                     deadline: Deadline) -> RunTarget:
        if precision is None:
            raise ProfileInputError(f"{arch.name} is a catalogue shape: name a GGUF type to synthesize it at "
                                    f"(e.g. Q4_0)")
        known = catalogue.CATALOGUE.get(arch.name) == arch
        path = model_cache.synthesize(arch.name if known else arch, supported_quant(precision), cache_dir, deadline)
        return RunTarget(name=arch.name, origin="synthetic", precision=precision, path=str(path))

    def roofline_shape(self, target: RunTarget, measured: Measured, model_arch: str) -> rl.ModelShape | None:
        return rl.model_shape(pathlib.Path(target.path))  # the GGUF's own tensors and types

    # -- worker side

    def runner(self, job: WorkerJob):
        from fleetfit.agent.backends import llama_cpp_runtime as runtime

        request = job.request
        return runtime.LlamaRunner(job.target.path, request.n_prompt, request.n_gen, job.threads, request.device,
                                   gpu_layers=request.gpu_layers if request.HasField("gpu_layers") else None,
                                   n_depth=request.decode_depth)

    def call(self, op: str, args: dict) -> dict:
        from fleetfit.agent.backends import llama_cpp_runtime as runtime

        if op == "capabilities":
            devices = runtime.compute_devices()
            rows = [{"device": device, "precision": quant, "supported": True} for device in devices for quant in FILE_TYPES]
            if devices == ["cpu"] and nvml.list_gpus()[0]:  # a limitation to report, not a CPU build to use silently
                rows += [{"device": "cuda", "precision": quant, "supported": False, "reason": CPU_ONLY_ON_GPU}
                         for quant in FILE_TYPES]
            return {"capabilities": rows}
        if op == "system_info":
            return {"system_info": runtime.system_info(), "version": runtime.version()}
        if op == "quantize":
            runtime.quantize(args["src"], args["dst"], args["ftype"], args["threads"])
            return {}
        if op == "greedy":
            return runtime.greedy(args["model_path"], args["prompt"], args["n_gen"], args["threads"])
        if op in ("quality_reference", "quality_compare"):
            from fleetfit.agent import quality

            def score(n_ctx: int, text: str | None = None, tokens: list[int] | None = None):
                return runtime.scored_logits(args["model_path"], n_ctx, args["threads"], text=text, tokens=tokens,
                                             device=args.get("device", ""), chunks=args.get("chunks", 0))

            if op == "quality_reference":
                return quality.reference_pass(score, args["text"], args["n_ctx"], args["out"])
            return quality.quant_pass(score, args["reference"])
        if op == "batched_greedy":
            return runtime.batched_greedy(args["model_path"], args["prompts"], args["n_gen"], args["threads"])
        return super().call(op, args)


BACKEND = LlamaCpp()
