"""The isolated worker: runs one backend operation in its own process and writes the outcome as JSON.

    python -m fleetfit.agent.worker RESULT_FILE < request.json

A crash, abort or OOM inside the native backend kills only this process; the agent reads the exit
status and classifies it (see isolation.py). Handled errors are written as {"error", "failure"}.
"""

import json
import resource
import sys

HANDLED_ERROR_EXIT = 3


def _run_torch(request: dict) -> dict:
    from fleetfit.agent.backends import torch_backend  # imported only here, in the child

    op = request["op"]
    if op == "profile":
        from fleetfit.models.catalogue import architecture

        arch = architecture(request["arch"]) if request.get("arch") else None
        return torch_backend.profile(request.get("model_path"), arch, request["precision"], request.get("device", ""),
                                     request["n_prompt"], request["n_gen"], request["repetitions"], request["threads"])
    if op == "greedy":
        return {"tokens": torch_backend.greedy(request["model_path"], request["prompt_tokens"], request["n_gen"],
                                               request.get("precision", "fp32"), request.get("device", "cpu"),
                                               request["threads"])}
    if op == "capabilities":
        return {"capabilities": torch_backend.capabilities(), "version": torch_backend.torch.__version__}
    raise ValueError(f"unknown torch worker operation {op!r}")


def _run_onnx(request: dict) -> dict:
    from fleetfit.agent.backends import onnx_backend  # imported only here, in the child

    if request["op"] == "profile":
        return onnx_backend.profile(request["model_path"], request["precision"], request["cache_dir"],
                                    request["n_prompt"], request["n_gen"], request["repetitions"], request["threads"])
    if request["op"] == "greedy":
        return {"tokens": onnx_backend.greedy(request["model_path"], request["prompt_tokens"], request["n_gen"],
                                              request.get("precision", "fp32"), request["cache_dir"],
                                              request["threads"])}
    raise ValueError(f"unknown onnxruntime worker operation {request['op']!r}")


def _run(request: dict) -> dict:
    if request.get("backend") == "torch":
        return _run_torch(request)
    if request.get("backend") == "onnxruntime":
        return _run_onnx(request)
    from fleetfit.agent.backends import llama_cpp  # imported only here, in the child

    op = request["op"]
    if op == "profile":
        return llama_cpp.profile(
            request["model_path"], request["n_prompt"], request["n_gen"], request["repetitions"], request["threads"]
        )
    if op == "quantize":
        llama_cpp.quantize(request["src"], request["dst"], request["ftype"], request["threads"])
        return {}
    if op == "system_info":
        return {"system_info": llama_cpp.system_info(), "version": llama_cpp.version()}
    if op == "greedy":
        return llama_cpp.greedy(request["model_path"], request["prompt"], request["n_gen"], request["threads"])
    raise ValueError(f"unknown worker operation {op!r}")


def main() -> int:
    result_path = sys.argv[1]
    request = json.load(sys.stdin)
    if request.get("memory_limit_bytes"):
        # A cap on the address space: an allocation past it fails inside llama.cpp instead of pushing
        # the device into swap or the kernel's OOM killer.
        limit = int(request["memory_limit_bytes"])
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    try:
        outcome = {"ok": _run(request)}
        code = 0
    except MemoryError as exc:
        outcome, code = {"error": f"out of memory: {exc}", "failure": "oom"}, HANDLED_ERROR_EXIT
    except Exception as exc:
        message = " ".join(str(exc).split()) or type(exc).__name__
        outcome, code = {"error": message, "failure": "error"}, HANDLED_ERROR_EXIT
    with open(result_path, "w") as f:
        json.dump(outcome, f)
    return code


if __name__ == "__main__":
    sys.exit(main())
