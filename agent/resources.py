"""The memory and CPUs this agent may use: the host's figures narrowed by every limit on the agent's cgroup path
(v1 and v2, walking up from the process's own cgroup) and by its CPU affinity. The one place that reads RAM and
CPU counts: inventory, default threads, room checks and probes all ask here, so that an agent in a 1 GiB / 1-CPU
container judges and runs as a 1 GiB / 1-CPU device, not as the host.

Every reader takes the filesystem root ("/" on a device, a fixture tree in tests) and says where each figure came
from ("cgroup memory.max 1.0 GiB (/system.slice); host 23.5 GiB").
"""

import dataclasses
import math
import os
import pathlib
import re

import psutil

ROOT = pathlib.Path("/")
GIB = 1 << 30
# cgroup v1 writes "no limit" as LONG_MAX rounded down to a page (9223372036854771712 with 4 KiB pages, less with
# 64 KiB pages on ARM); no real limit comes near 2^62 bytes.
V1_UNLIMITED = 1 << 62


@dataclasses.dataclass(frozen=True)
class Memory:
    total_bytes: int            # what the agent may use: the smallest of the host's RAM and every cgroup limit
    available_bytes: int        # free against that: the host's available, and each limit less its unreclaimable use
    host_total_bytes: int
    host_available_bytes: int
    source: str                 # e.g. "cgroup memory.max 1.0 GiB (/fleet.slice); host 23.5 GiB"
    cgroup_available_bytes: int | None = None  # the tightest limit's room, when a cgroup limits memory at all


@dataclasses.dataclass(frozen=True)
class Cpus:
    count: int                  # CPUs the agent may use, at least 1: the default thread count
    host_physical: int
    host_logical: int
    source: str                 # e.g. "1 CPU: cgroup cpu.cfs_quota_us 0.5 CPU; cpuset 1 CPU (0); host 2 cores"


@dataclasses.dataclass(frozen=True)
class Cgroup:
    """One hierarchy the process belongs to: its version, controllers and its directories, own first, up to the
    mount point (what this mount namespace can see of the path)."""
    version: int
    controllers: frozenset[str]
    path: str                   # the cgroup path as /proc/self/cgroup names it
    levels: tuple[pathlib.Path, ...]


def _read(path: pathlib.Path) -> str | None:
    try:
        return path.read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None


def _unescape(field: str) -> str:
    """mountinfo writes space, tab, newline and backslash as octal escapes."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), field)


def _mounts(root: pathlib.Path) -> list[tuple[str, str, str, frozenset[str]]]:
    """(fstype, mount root, mount point, controllers) of every cgroup and cgroup2 mount in root/proc/self/mountinfo."""
    mounts = []
    for line in (_read(root / "proc/self/mountinfo") or "").splitlines():
        left, sep, right = line.partition(" - ")
        fields, tail = left.split(), right.split()
        if not sep or len(fields) < 5 or len(tail) < 3 or tail[0] not in ("cgroup", "cgroup2"):
            continue
        options = frozenset(tail[2].split(",")) if tail[0] == "cgroup" else frozenset()
        mounts.append((tail[0], _unescape(fields[3]), _unescape(fields[4]), options))
    return mounts


def cgroups(root: pathlib.Path = ROOT) -> list[Cgroup]:
    """The process's cgroups (root/proc/self/cgroup) located through its mounts (root/proc/self/mountinfo)."""
    mounts = _mounts(root)
    found = []
    for line in (_read(root / "proc/self/cgroup") or "").splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        hierarchy, names, path = parts
        controllers = frozenset(n for n in names.split(",") if n)
        v2 = hierarchy == "0" and not controllers
        for fstype, mount_root, mount_point, options in mounts:
            if (fstype == "cgroup2") != v2 or (not v2 and not controllers <= options):
                continue
            # Outside a cgroup namespace the path starts with the mount's root (a container sees /docker/<id> mounted
            # as its /sys/fs/cgroup/<controller>); a path elsewhere (cgroupns: "/.."-prefixed) leaves only the mount.
            rel = os.path.relpath(path, mount_root) if path.startswith(mount_root) else "."
            top = root / mount_point.lstrip("/")
            leaf = top if rel.startswith("..") else top / rel
            levels = [leaf]
            while levels[-1] != top:
                levels.append(levels[-1].parent)
            found.append(Cgroup(2 if v2 else 1, controllers, path, tuple(levels)))
            break
    return found


def _limit(text: str | None) -> int | None:
    """A memory limit file's bytes, or None when unlimited ("max", v1's page-rounded LONG_MAX) or unreadable."""
    if text is None or not text.isdigit():
        return None
    value = int(text)
    return value if value < V1_UNLIMITED else None


def _stat(path: pathlib.Path, key: str) -> int:
    for line in (_read(path) or "").splitlines():
        name, _, value = line.partition(" ")
        if name == key and value.strip().isdigit():
            return int(value)
    return 0


def _meminfo(root: pathlib.Path) -> tuple[int, int]:
    """(MemTotal, MemAvailable) in bytes from root/proc/meminfo, as psutil reads them."""
    found = {}
    for line in (_read(root / "proc/meminfo") or "").splitlines():
        name, _, value = line.partition(":")
        fields = value.split()
        if fields and fields[0].isdigit():
            found[name] = int(fields[0]) * 1024
    if "MemTotal" not in found:  # not Linux: psutil knows the platform's own way
        memory = psutil.virtual_memory()
        return memory.total, memory.available
    return found["MemTotal"], found.get("MemAvailable", found.get("MemFree", 0))


def _gib(value: int) -> str:
    return f"{value / GIB:.1f} GiB"


def _where(group: Cgroup, level: pathlib.Path) -> str:
    """The cgroup path of `level` as the process names it (its own path, or an ancestor of it)."""
    up = group.levels.index(level)
    path = group.path
    for _ in range(up):
        path = path.rsplit("/", 1)[0] or "/"
    return path


def memory(root: pathlib.Path = ROOT) -> Memory:
    """The host's RAM narrowed by every memory limit on the cgroup path: v2 memory.max and memory.high, v1
    memory.limit_in_bytes (and the hierarchical limit v1 reports for ancestors this namespace cannot see).
    Available = the smallest of the host's available and, at each limited level, the limit less what is used there
    and cannot be reclaimed (usage less inactive page cache, as `docker stats` counts it)."""
    host_total, host_available = _meminfo(root)
    total, binding, room = host_total, None, None
    for group in cgroups(root):
        if group.version == 2:
            names, usage_file, inactive = ("memory.max", "memory.high"), "memory.current", "inactive_file"
        elif "memory" in group.controllers:
            names, usage_file, inactive = ("memory.limit_in_bytes",), "memory.usage_in_bytes", "total_inactive_file"
        else:
            continue
        limits = [(level, name, _limit(_read(level / name))) for level in group.levels for name in names]
        if group.version == 1:
            leaf = group.levels[0]
            limits.append((leaf, "memory.stat hierarchical_memory_limit",
                           _limit(str(_stat(leaf / "memory.stat", "hierarchical_memory_limit") or ""))))
        for level, name, limit in limits:
            if limit is None:
                continue
            text = _read(level / usage_file) or ""
            usage = int(text) if text.isdigit() else 0
            in_use = max(usage - _stat(level / "memory.stat", inactive), 0)
            room = max(limit - in_use, 0) if room is None else min(room, max(limit - in_use, 0))
            if limit < total:
                total, binding = limit, f"cgroup {name} {_gib(limit)} ({_where(group, level)})"
    source = f"{binding}; host {_gib(host_total)}" if binding else f"host {_gib(host_total)}, no cgroup limit"
    available = min(host_available, total, room if room is not None else host_available)
    return Memory(total, available, host_total, host_available, source, room)


def parse_cpu_list(text: str) -> set[int]:
    """A kernel CPU list ("0-3,6,8-9") as a set; empty for an empty or malformed list."""
    cpus: set[int] = set()
    for part in text.split(","):
        low, _, high = part.strip().partition("-")
        if not low.isdigit() or (high and not high.isdigit()):
            return set()
        cpus.update(range(int(low), int(high or low) + 1))
    return cpus


def _quotas(group: Cgroup) -> list[tuple[float, str]]:
    """(CPUs, file) of every CPU bandwidth limit on the path: v2 cpu.max "quota period", v1 cpu.cfs_quota_us / period
    (-1 or "max": none)."""
    found = []
    for level in group.levels:
        if group.version == 2:
            quota, _, period = (_read(level / "cpu.max") or "").partition(" ")
            name = "cpu.max"
        elif "cpu" in group.controllers:
            quota, period = _read(level / "cpu.cfs_quota_us") or "", _read(level / "cpu.cfs_period_us") or ""
            name = "cpu.cfs_quota_us"
        else:
            return found
        if quota.isdigit() and period.strip().isdigit() and int(period) > 0:
            found.append((int(quota) / int(period), f"{name} {int(quota) / int(period):g} CPU ({_where(group, level)})"))
    return found


def _cpuset(group: Cgroup) -> set[int]:
    """The CPUs the cgroup's cpuset allows: the first effective list found walking up (empty: no cpuset here)."""
    if group.version == 1 and "cpuset" not in group.controllers:
        return set()
    for level in group.levels:
        for name in ("cpuset.cpus.effective", "cpuset.effective_cpus", "cpuset.cpus"):
            cpus = parse_cpu_list(_read(level / name) or "")
            if cpus:
                return cpus
    return set()


def _cpu_list_text(cpus: set[int]) -> str:
    ranges: list[list[int]] = []
    for cpu in sorted(cpus):
        if ranges and ranges[-1][1] == cpu - 1:
            ranges[-1][1] = cpu
        else:
            ranges.append([cpu, cpu])
    return ",".join(f"{a}-{b}" if b > a else f"{a}" for a, b in ranges)


def cpus(root: pathlib.Path = ROOT, affinity: set[int] | None = None, host_physical: int | None = None,
         host_logical: int | None = None) -> Cpus:
    """The CPUs the agent may use: the smallest of the host's physical cores, the affinity mask, the cpuset and
    every cgroup CPU quota on the path. A quota is rounded to the nearest whole CPU (at least 1): 0.5 CPU runs one
    thread, 1.5 two; a thread count above the quota is throttled each period, and llama.cpp's threads wait for
    the slowest. Defaults ask this machine (os.sched_getaffinity, psutil); tests pass them."""
    host_logical = host_logical or psutil.cpu_count(logical=True) or os.cpu_count() or 1
    host_physical = host_physical or psutil.cpu_count(logical=False) or host_logical
    if affinity is None:
        affinity = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set(range(host_logical))
    # (CPUs, rank, words): the rank orders ties in the source the same way whatever order the cgroups come in
    limits = [(host_physical, 3, f"host {host_physical} core{'s' * (host_physical != 1)}")]
    if affinity and len(affinity) < host_logical:
        limits.append((len(affinity), 0, f"affinity {len(affinity)} CPU{'s' * (len(affinity) != 1)}"))
    for group in cgroups(root):
        if group.version == 2 or "cpu" in group.controllers:
            for quota, text in _quotas(group):
                limits.append((max(1, math.floor(quota + 0.5)), 1, f"cgroup {text}"))
        cpuset = _cpuset(group)
        if cpuset and len(cpuset) < host_logical:
            limits.append((len(cpuset), 2, f"cpuset {len(cpuset)} CPU{'s' * (len(cpuset) != 1)} "
                                           f"({_cpu_list_text(cpuset)})"))
    limits.sort()
    count = limits[0][0]
    return Cpus(count, host_physical, host_logical,
                f"{count} CPU{'s' * (count != 1)}: " + "; ".join(dict.fromkeys(text for _, _, text in limits)))


def unified_memory(root: pathlib.Path = ROOT) -> bool:
    """Whether the GPU shares the CPU's RAM (NVIDIA Jetson / Tegra): one pool, judged once, not twice."""
    compatible = root / "proc/device-tree/compatible"
    try:
        if b"nvidia,tegra" in compatible.read_bytes():
            return True
    except OSError:
        pass
    return (root / "etc/nv_tegra_release").exists()
