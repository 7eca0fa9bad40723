"""ONNX Runtime: a model exported from real GGUF weights (no catalogue shapes), quantized by
onnxruntime.quantization, on the CPU execution provider (CUDA's when present). The runtime is onnx_runtime.py
(worker only)."""

import contextlib

from fleetfit.agent.backends.base import Backend, RunTarget, WorkerJob


class OnnxRuntime(Backend):
    NAME = "onnxruntime"
    IMPORT_NAME = "onnxruntime"
    DISTRIBUTION = "onnxruntime"
    METHOD = ("ONNX Runtime session, KV cache kept in ORT memory by IO binding; wall clock with the device "
              "synchronised before each read; harness-fed random tokens (llama-bench pp/tg); 1 warm-up")
    DEFAULT_PRECISION = "fp32"

    def preparing(self, target: RunTarget, cache_dir: str):
        """The first run of a GGUF file exports it to ONNX (a minute or more) and quantizes it: a two-step bar
        while the worker does that, read from the files it leaves in the cache folder."""
        from fleetfit.agent.backends import onnx_runtime as runtime
        from fleetfit.models import progress

        folder = runtime.cache_folder(target.path, cache_dir)
        made = folder / f"{target.precision}.onnx"
        if made.is_file():
            return contextlib.nullcontext()
        return progress.polled(f"exporting {target.name} to ONNX {target.precision} (first run of this file only)",
                               lambda: (folder / "fp32.onnx").is_file() + made.is_file(), total=2)

    # -- worker side

    def runner(self, job: WorkerJob):
        from fleetfit.agent.backends import onnx_runtime as runtime

        request = job.request
        return runtime.OnnxRunner(job.target.path, job.target.precision, job.cache_dir, job.threads, request.n_prompt,
                              request.n_gen)

    def call(self, op: str, args: dict) -> dict:
        from fleetfit.agent.backends import onnx_runtime as runtime

        if op == "capabilities":  # one row per precision on each execution provider this build has
            return {"capabilities": [{"device": device, "precision": precision, "supported": True}
                                     for device in runtime.compute_devices() for precision in runtime.PRECISIONS]}
        if op == "greedy":
            return {"tokens": runtime.greedy(args["model_path"], args["prompt_tokens"], args["n_gen"],
                                             args.get("precision", "fp32"), args["cache_dir"], args["threads"])}
        return super().call(op, args)


BACKEND = OnnxRuntime()
