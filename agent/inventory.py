"""What this device is: OS, CPU, memory, NVIDIA GPUs and the inference backends that import here."""

import hashlib
import importlib.metadata
import os
import pathlib
import platform
import re
import socket

from fleetfit.agent import nvml, resources
from fleetfit.agent.backends import registry
from fleetfit.v1 import fleetfit_pb2 as pb


def agent_version() -> str:
    try:
        return importlib.metadata.version("fleetfit")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def offered_backends() -> set[str] | None:
    """The backends this device's owner offers ($FLEETFIT_BACKENDS, comma-separated), or None for all installed."""
    text = os.environ.get("FLEETFIT_BACKENDS", "").strip()
    return {b.strip() for b in text.split(",") if b.strip()} if text else None


def probe_backends(cache_dir: pathlib.Path | None = None) -> list[pb.BackendInfo]:
    """Every registered backend: whether it imports here (and why not) and whether the owner offers it, and with a
    cache directory the models it can obtain on this device."""
    infos = []
    offered = offered_backends()
    for backend in registry.all_backends():
        if offered is not None and backend.NAME not in offered:
            infos.append(pb.BackendInfo(name=backend.NAME, available=False,
                                        reason="not offered on this device (FLEETFIT_BACKENDS)"))
            continue
        info = backend.probe()
        if info.available and cache_dir is not None:
            info.models.extend(backend.models(cache_dir))
        infos.append(info)
    return infos


def add_capabilities(infos: list[pb.BackendInfo], timeout_s: float = 180.0) -> None:
    """Fill each available backend's capabilities (which precision runs on which compute device), found by its
    worker side in a worker process: the runtimes are imported only there."""
    from fleetfit.agent.isolation import WorkerFailure

    for info in infos:
        if not info.available:
            continue
        try:
            info.capabilities.extend(registry.get(info.name).capabilities(timeout_s))
        except WorkerFailure as exc:
            info.reason = f"capability trial failed: {exc}"


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
    """Stable per machine: hostname plus a digest of /etc/machine-id when there is one; a character of the
    hostname that a credential cannot carry (non-ASCII, space: transport.DEVICE_ID) becomes "_"."""
    host = re.sub(r"[^!-~]", "_", socket.gethostname())[:200] or "device"
    try:
        machine_id = pathlib.Path("/etc/machine-id").read_text().strip()
    except OSError:
        return host
    return f"{host}-{hashlib.sha256(machine_id.encode()).hexdigest()[:8]}"


def collect(device_id: str, llama_system_info: str = "", probes: pb.DeviceProbes | None = None,
            cache_dir: pathlib.Path | None = None) -> pb.DeviceInventory:
    """This device now, without running anything (quick: the capability trials are add_capabilities'); `probes`
    are the cached bandwidth and matmul probes (device_probe.load_cached), if any; with `cache_dir`, each backend
    lists the models it can obtain here."""
    memory, cpus = resources.memory(), resources.cpus()
    gpus, gpu_note = nvml.list_gpus()
    if resources.unified_memory():
        for gpu in gpus:
            gpu.unified_memory = True
    return pb.DeviceInventory(
        device_id=device_id,
        hostname=socket.gethostname(),
        os=f"{platform.system()} {platform.release()}",
        arch=platform.machine(),
        cpu_model=cpu_model(),
        cpu_cores_physical=cpus.host_physical,
        cpu_cores_logical=cpus.host_logical,
        ram_total_bytes=memory.total_bytes,
        ram_available_bytes=memory.available_bytes,
        host_ram_total_bytes=memory.host_total_bytes,
        memory_source=memory.source,
        cpus_usable=cpus.count,
        cpu_source=cpus.source,
        gpus=gpus,
        gpu_probe_note=gpu_note,
        backends=probe_backends(cache_dir),
        llama_system_info=llama_system_info,
        agent_version=agent_version(),
        probes=probes,
    )
