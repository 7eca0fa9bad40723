"""The isolated worker: runs one backend operation in its own process and writes the outcome as JSON.

    python -m fleetfit.agent.worker RESULT_FILE AGENT_PID < request.json

The request is {"op", "backend", ...}: "profile" carries a WorkerJob (the serialized ProfileRequest and the model
the agent resolved it to) and answers with base.Measured: the wire record's run part (a ProfileResult in its JSON
form) and its phase windows; "synth" writes a synthetic GGUF; any other op is the backend's own (capabilities,
quantize, greedy, ...). A crash, abort or OOM inside the native backend kills only
this process; the agent reads the exit status and classifies it (see isolation.py). Handled errors are written
as {"error", "failure"}. The worker dies with the agent, however the agent ends (SIGKILL included).
"""

import json
import os
import resource
import signal
import sys

from fleetfit.agent.isolation import HANDLED_ERROR_EXIT


def _run(request: dict) -> dict:
    op = request["op"]
    if op == "synth":
        from fleetfit.agent import resources  # the room the agent may use, its cgroup's limit included
        from fleetfit.models import synth

        arch = request["arch"]
        if "shape" in request:  # a shape the catalogue does not know, as the agent checked it
            import base64

            from fleetfit.models.shapes import from_proto
            from fleetfit.v1 import fleetfit_pb2 as pb

            arch = from_proto(pb.Architecture.FromString(base64.b64decode(request["shape"])))
        synth.write_synthetic(arch, request["quant"], request["path"], seed=request.get("seed", 0),
                              force=request.get("force", False), available_ram_bytes=resources.memory().available_bytes)
        return {}
    from fleetfit.agent.backends import registry
    from fleetfit.agent.backends.base import WorkerJob
    from fleetfit.models.backends import DEFAULT_BACKEND

    backend = registry.get(request.get("backend") or DEFAULT_BACKEND)
    if op == "profile":
        return backend.run(WorkerJob.from_json(request["job"])).to_json()
    return backend.call(op, request)


def die_with_parent(parent: int) -> None:
    """SIGKILL this worker when the agent that started it dies, even by SIGKILL: a worker left behind would keep
    running a job, or writing a derived model into the cache, for nobody. (Linux; the kernel watches the thread
    that started the worker, which waits for it in run_worker until it ends.)"""
    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:  # the agent died before the line above took effect
        os._exit(1)


def main() -> int:
    result_path = sys.argv[1]
    if len(sys.argv) > 2:
        die_with_parent(int(sys.argv[2]))
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
