"""What this device is: OS, CPU, memory, NVIDIA GPUs and the inference backends that import here."""

import hashlib
import importlib.metadata
import importlib.util
import os
import pathlib
import platform
import socket

import psutil

from fleetfit.agent import nvml
from fleetfit.v1 import fleetfit_pb2 as pb

# Probed by import name (what Python loads), versioned by distribution name (what pip installs).
BACKENDS = {
    "llama.cpp": ("llama_cpp", "llama-cpp-python"),
    "torch": ("torch", "torch"),
    "onnxruntime": ("onnxruntime", "onnxruntime"),
}


def agent_version() -> str:
    try:
        return importlib.metadata.version("fleetfit")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def offered_backends() -> set[str] | None:
    """The backends this device's owner offers ($FLEETFIT_BACKENDS, comma-separated), or None for all installed."""
    text = os.environ.get("FLEETFIT_BACKENDS", "").strip()
    return {b.strip() for b in text.split(",") if b.strip()} if text else None


def probe_backends() -> list[pb.BackendInfo]:
    infos = []
    offered = offered_backends()
    for name, (module, distribution) in BACKENDS.items():
        if offered is not None and name not in offered:
            infos.append(pb.BackendInfo(name=name, available=False,
                                        reason="not offered on this device (FLEETFIT_BACKENDS)"))
            continue
        if importlib.util.find_spec(module) is None:
            infos.append(pb.BackendInfo(name=name, available=False, reason=f"module {module!r} is not installed"))
            continue
        try:
            version = importlib.metadata.version(distribution)
        except importlib.metadata.PackageNotFoundError:
            version = "unknown"
        infos.append(pb.BackendInfo(name=name, available=True, version=version))
    return infos


def add_capabilities(infos: list[pb.BackendInfo], timeout_s: float = 180.0) -> None:
    """Fill the torch backend's capabilities: which precision runs on which device, from a tiny trial of each
    in a worker process (torch is imported only there)."""
    from fleetfit.agent.isolation import WorkerFailure, run_worker

    for info in infos:
        if info.name != "torch" or not info.available:
            continue
        try:
            table = run_worker({"backend": "torch", "op": "capabilities"}, timeout_s)["capabilities"]
        except WorkerFailure as exc:
            info.reason = f"capability trial failed: {exc}"
            continue
        for device, row in table.items():
            for precision, state in row.items():
                info.capabilities.append(pb.BackendCapability(device=device, precision=precision,
                                                              supported=state == "ok",
                                                              reason="" if state == "ok" else state))


def cpu_model(proc_root: pathlib.Path = pathlib.Path("/proc")) -> str:
    """The CPU's marketing name from /proc/cpuinfo (x86 'model name', ARM 'Model' or 'Hardware')."""
    try:
        text = (proc_root / "cpuinfo").read_text()
    except OSError:
        return platform.processor() or "unknown"
    for key in ("model name", "Model", "Hardware", "cpu model"):
        for line in text.splitlines():
            if line.split(":")[0].strip() == key:
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def default_device_id() -> str:
    """Stable per machine: hostname plus a digest of /etc/machine-id when there is one."""
    host = socket.gethostname()
    try:
        machine_id = pathlib.Path("/etc/machine-id").read_text().strip()
    except OSError:
        return host
    return f"{host}-{hashlib.sha256(machine_id.encode()).hexdigest()[:8]}"


def collect(device_id: str, llama_system_info: str = "", probes: pb.DeviceProbes | None = None) -> pb.DeviceInventory:
    """This device now; `probes` are the cached bandwidth and matmul probes (device_probe.load_cached), if any."""
    memory = psutil.virtual_memory()
    gpus, gpu_note = nvml.list_gpus()
    return pb.DeviceInventory(
        device_id=device_id,
        hostname=socket.gethostname(),
        os=f"{platform.system()} {platform.release()}",
        arch=platform.machine(),
        cpu_model=cpu_model(),
        cpu_cores_physical=psutil.cpu_count(logical=False) or 0,
        cpu_cores_logical=psutil.cpu_count(logical=True) or 0,
        ram_total_bytes=memory.total,
        ram_available_bytes=memory.available,
        gpus=gpus,
        gpu_probe_note=gpu_note,
        backends=probe_backends(),
        llama_system_info=llama_system_info,
        agent_version=agent_version(),
        probes=probes,
    )
