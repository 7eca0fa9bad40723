"""The isolated worker: runs one backend operation in its own process and writes the outcome as JSON.

    python -m fleetfit.agent.worker RESULT_FILE < request.json

A crash, abort or OOM inside the native backend kills only this process; the agent reads the exit
status and classifies it (see isolation.py). Handled errors are written as {"error", "failure"}.
"""

import json
import resource
import sys

HANDLED_ERROR_EXIT = 3


def _run(request: dict) -> dict:
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
