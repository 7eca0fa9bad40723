"""PyTorch eager: real GGUF weights dequantized to the requested precision, or a catalogue shape with random
weights; CPU or CUDA. The runtime is torch_runtime.py and torch_model.py (worker only)."""

from fleetfit.agent.backends.base import Backend, WorkerJob


class Torch(Backend):
    NAME = "torch"
    IMPORT_NAME = "torch"
    DISTRIBUTION = "torch"
    METHOD = ("PyTorch eager, static KV cache; wall clock with the device synchronised before each read; "
              "harness-fed random tokens (llama-bench pp/tg); 1 warm-up")
    DEFAULT_PRECISION = "fp32"

    # -- worker side

    def runner(self, job: WorkerJob):
        from fleetfit.agent.backends import torch_runtime as runtime
        from fleetfit.models.catalogue import architecture

        request, target = job.request, job.target
        arch = architecture(target.arch) if target.arch else None
        return runtime.TorchRunner(target.path, arch, target.precision, request.device, job.threads, request.n_prompt,
                              request.n_gen)

    def call(self, op: str, args: dict) -> dict:
        from fleetfit.agent.backends import torch_runtime as runtime

        if op == "capabilities":  # a tiny trial of each precision on each device torch sees
            return {"capabilities": [{"device": device, "precision": precision, "supported": state == "ok",
                                      "reason": "" if state == "ok" else state}
                                     for device, row in runtime.capabilities().items()
                                     for precision, state in row.items()]}
        if op == "greedy":
            return {"tokens": runtime.greedy(args["model_path"], args["prompt_tokens"], args["n_gen"],
                                             args.get("precision", "fp32"), args.get("device", "cpu"),
                                             args["threads"])}
        return super().call(op, args)


BACKEND = Torch()
