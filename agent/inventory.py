"""What this device is: OS, CPU, memory, NVIDIA GPUs and the inference backends that import here."""

import importlib.metadata
import os
import pathlib
import platform
import re
import socket

from fleetfit.agent import nvml, resources
from fleetfit.agent.backends import registry
from fleetfit.v1 import fleetfit_pb2 as pb
from fleetfit.v1.transport import default_device_id  # noqa: F401  (the agent's default id; quickstart's too)


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


# arm64's /proc/cpuinfo names no CPU: each core has "CPU implementer" and "CPU part" (decoded as lscpu does, for the
# cores boards and servers use); a board's kernel may add "Model" (Raspberry Pi), a 32-bit one a generic "model name".
ARM_PARTS = {
    0x41: ("ARM", {0xc07: "Cortex-A7", 0xc09: "Cortex-A9", 0xc0d: "Cortex-A12", 0xc0e: "Cortex-A17",
                   0xc0f: "Cortex-A15", 0xd03: "Cortex-A53", 0xd04: "Cortex-A35", 0xd05: "Cortex-A55",
                   0xd07: "Cortex-A57", 0xd08: "Cortex-A72", 0xd09: "Cortex-A73", 0xd0a: "Cortex-A75",
                   0xd0b: "Cortex-A76", 0xd0c: "Neoverse-N1", 0xd0d: "Cortex-A77", 0xd40: "Neoverse-V1",
                   0xd41: "Cortex-A78", 0xd42: "Cortex-A78AE", 0xd44: "Cortex-X1", 0xd46: "Cortex-A510",
                   0xd47: "Cortex-A710", 0xd48: "Cortex-X2", 0xd49: "Neoverse-N2", 0xd4b: "Cortex-A78C",
                   0xd4f: "Neoverse-V2", 0xd80: "Cortex-A520", 0xd81: "Cortex-A720", 0xd82: "Cortex-X4"}),
    0x4e: ("NVIDIA", {0x003: "Denver 2", 0x004: "Carmel"}),
    0x51: ("Qualcomm", {0x001: "Oryon"}),
    0x61: ("Apple", {}),
    0xc0: ("Ampere", {0xac3: "Ampere-1", 0xac4: "Ampere-1a"}),
}
_GENERIC_ARM = re.compile(r"ARMv\d+ Processor")  # "ARMv7 Processor rev 3 (v7l)": says nothing of the CPU


def _arm_cores(fields: list[tuple[str, str]]) -> str:
    """'ARM Cortex-A55 + Cortex-A76' from each core's implementer and part (in order of appearance), or ""."""
    names: list[str] = []
    vendor = implementer = None
    for key, value in fields:
        if key not in ("CPU implementer", "CPU part"):
            continue
        try:
            number = int(value, 16)
        except ValueError:
            continue
        if key == "CPU implementer":
            implementer = number
        elif implementer is not None:
            maker, parts = ARM_PARTS.get(implementer, (f"implementer 0x{implementer:02x}", {}))
            vendor = vendor or maker
            name = parts.get(number, f"part 0x{number:03x}")
            if name not in names:
                names.append(name)
    return f"{vendor} {' + '.join(names)}" if names else ""


_X86 = ("x86_64", "amd64", "i386", "i486", "i586", "i686")


def cpu_model(proc_root: pathlib.Path = pathlib.Path("/proc"), machine: str | None = None) -> str:
    """The CPU's name from /proc/cpuinfo: a board's 'Model', x86's 'model name', else arm64's cores by implementer and
    part, else 'Hardware' (a 32-bit ARM SoC) or MIPS' 'cpu model'. With `machine` (the process's architecture), a
    cpuinfo of another architecture (qemu-user shows aarch64 code the host's x86 cpuinfo; FEX or box64 show x86 code
    an arm64 one) says the CPU is emulated: 'aarch64 emulated on <the host's CPU>', never the host's name alone."""
    try:
        text = (proc_root / "cpuinfo").read_text()
    except OSError:
        return platform.processor() or "unknown"
    fields = [(k.strip(), v.strip()) for k, _, v in (line.partition(":") for line in text.splitlines()) if v.strip()]
    first = {}
    for key, value in fields:
        first.setdefault(key, value)
    model_name = first.get("model name", "")
    name = next((found for found in (first.get("Model"), None if _GENERIC_ARM.match(model_name) else model_name,
                                     _arm_cores(fields), first.get("Hardware"), model_name, first.get("cpu model"))
                 if found), platform.processor() or "unknown")
    if machine:
        x86_info, arm_info = "vendor_id" in first and "flags" in first, "CPU implementer" in first
        if (x86_info and machine.lower() not in _X86) or (arm_info and machine.lower() in _X86):
            return f"{machine} emulated on {name}"
    return name


def this_cpu() -> str:
    """This machine's CPU as the fleet records it (an emulated CPU said so)."""
    return cpu_model(machine=platform.machine())


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
        cpu_model=this_cpu(),
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
