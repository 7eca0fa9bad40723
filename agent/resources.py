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
    mount point (what this mount namespace can see of the path); no directories where it is not mounted here."""
    version: int
    controllers: frozenset[str]
    path: str                   # the cgroup path as /proc/self/cgroup names it
    levels: tuple[pathlib.Path, ...]
    mount_point: str = ""       # where it is mounted ("/sys/fs/cgroup/memory"); "" where it is not


def _read(path: pathlib.Path) -> str | None:
    try:
        return path.read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None


def _text(path: pathlib.Path, label: str, unknown: list[str]) -> str | None:
    """A cgroup file's text; None where it is absent (no such limit at that level) or unreadable, and an unreadable
    one is named in `unknown`: a limit that cannot be read is not the same as none, and the source says so."""
    text = _read(path)
    if text is None and os.path.lexists(path):
        unknown.append(f"{label} unreadable")
    return text


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
        candidates = [(mount_root, mount_point) for fstype, mount_root, mount_point, options in mounts
                      if (fstype == "cgroup2") == v2 and (v2 or controllers <= options)]
        if not candidates:
            found.append(Cgroup(2 if v2 else 1, controllers, path, ()))
            continue
        # Outside a cgroup namespace the path starts with the mount's root (a container sees /docker/<id> mounted as
        # its /sys/fs/cgroup/<controller>): the deepest such mount. A path under none (cgroupns: the mount's root
        # shown as "/.."; a bind mount of another group) leaves the first mount's own directory.
        inside = sorted((len(r), r, m) for r, m in candidates if r == "/" or path == r or path.startswith(r + "/"))
        mount_root, mount_point = inside[-1][1:] if inside else candidates[0]
        top = root / mount_point.lstrip("/")
        leaf = top / os.path.relpath(path, mount_root) if inside else top
        levels = [leaf]
        while levels[-1] != top:
            levels.append(levels[-1].parent)
        found.append(Cgroup(2 if v2 else 1, controllers, path, tuple(levels), mount_point))
    return found


def _readable(groups: list[Cgroup], controller: str, unknown: list[str]) -> list[Cgroup]:
    """The groups that govern `controller`: its v1 hierarchy where /proc/self/cgroup lists one, else the v2 one.
    What this mount namespace cannot read (the hierarchy not mounted, the process's own directory absent) is named
    in `unknown`: those limits exist but are not known here."""
    v1 = [g for g in groups if g.version == 1 and controller in g.controllers]
    readable = []
    for group in v1 or [g for g in groups if g.version == 2]:
        if not group.levels:  # v2 unmounted beside v1 hierarchies (legacy layout): it holds no controller here
            if v1 or not any(g.version == 1 for g in groups):
                unknown.append(f"cgroup {group.path} ({controller}) not mounted here")
            continue
        if len(group.levels) > 1 and not group.levels[0].is_dir():  # its ancestors that are there still count
            unknown.append(f"cgroup {group.path} not found under {group.mount_point}")
        readable.append(group)
    return readable


def _cgroups_unreadable(root: pathlib.Path, unknown: list[str]) -> None:
    """/proc/self/cgroup present but unreadable: every limit is unknown (absent: not Linux, no cgroups)."""
    _text(root / "proc/self/cgroup", "/proc/self/cgroup", unknown)


def _limit(text: str | None) -> int | None:
    """A memory limit file's bytes, or None when unlimited ("max", v1's page-rounded LONG_MAX) or absent."""
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


def _source(figures: list[str], unknown: list[str]) -> str:
    """Where the figures came from, then what could not be read (the host's figures stand in for it)."""
    return "; ".join(figures + ([f"unknown: {', '.join(dict.fromkeys(unknown))}"] if unknown else []))


def memory(root: pathlib.Path = ROOT) -> Memory:
    """The host's RAM narrowed by every memory limit on the cgroup path: v2 memory.max and memory.high, v1
    memory.limit_in_bytes (and the hierarchical limit v1 reports for ancestors this namespace cannot see).
    Available = the smallest of the host's available and, at each limited level, the limit less what is used there
    and cannot be reclaimed (usage less inactive page cache, as `docker stats` counts it). A limit that cannot be
    read leaves the host's figure, and the source names it."""
    host_total, host_available = _meminfo(root)
    smallest, room, tightest, unknown = None, None, "", []
    _cgroups_unreadable(root, unknown)
    for group in _readable(cgroups(root), "memory", unknown):
        if group.version == 2:
            names, usage_file, inactive = ("memory.max", "memory.high"), "memory.current", "inactive_file"
        else:
            names, usage_file, inactive = ("memory.limit_in_bytes",), "memory.usage_in_bytes", "total_inactive_file"
        limits = []
        for level in group.levels:
            for name in names:
                text = _text(level / name, f"{name} ({_where(group, level)})", unknown)
                if text is not None and text != "max" and not text.isdigit():
                    unknown.append(f"{name} ({_where(group, level)}) reads {text[:20]!r}")
                limits.append((level, name, _limit(text)))
        if group.version == 1:
            leaf = group.levels[0]
            limits.append((leaf, "memory.stat hierarchical_memory_limit",
                           _limit(str(_stat(leaf / "memory.stat", "hierarchical_memory_limit") or ""))))
        for level, name, limit in limits:
            if limit is None:
                continue
            where = _where(group, level)
            text = _text(level / usage_file, f"{usage_file} ({where})", unknown) or ""
            usage = int(text) if text.isdigit() else 0
            in_use = max(usage - _stat(level / "memory.stat", inactive), 0)
            if room is None or limit - in_use < room:
                room = max(limit - in_use, 0)
                tightest = f"{name} less {in_use / (1 << 20):.0f} MiB in use ({where}: {usage_file} less {inactive})"
            if smallest is None or limit < smallest[0]:
                smallest = (limit, f"cgroup {name} {_gib(limit)} ({where})")
    total = min(host_total, smallest[0]) if smallest else host_total
    binding = smallest[1] if smallest and smallest[0] < host_total else None
    available = min(host_available, total, room if room is not None else host_available)
    figures = [binding] if binding else []
    # a limit looser than the host's RAM is still a limit: "no cgroup limit" only where there is none
    below = f", below {smallest[1]}" if smallest and not binding else "" if smallest or unknown else ", no cgroup limit"
    figures.append(f"host {_gib(host_total)}{below}")
    if room is not None and room < host_available:
        figures.append(f"available: {tightest}")
    return Memory(total, available, host_total, host_available, _source(figures, unknown), room)


def parse_cpu_list(text: str) -> set[int]:
    """A kernel CPU list ("0-3,6,8-9") as a set; empty for an empty or malformed list."""
    cpus: set[int] = set()
    for part in text.split(","):
        low, _, high = part.strip().partition("-")
        if not low.isdigit() or (high and not high.isdigit()):
            return set()
        cpus.update(range(int(low), int(high or low) + 1))
    return cpus


def _quotas(group: Cgroup, unknown: list[str]) -> list[tuple[float, str]]:
    """(CPUs, file) of every CPU bandwidth limit on the path: v2 cpu.max "quota period", v1 cpu.cfs_quota_us / period
    (-1 or "max": none)."""
    found = []
    for level in group.levels:
        where = _where(group, level)
        if group.version == 2:
            name = "cpu.max"
            quota, _, period = (_text(level / name, f"{name} ({where})", unknown) or "").partition(" ")
        else:
            name = "cpu.cfs_quota_us"
            quota = _text(level / name, f"{name} ({where})", unknown) or ""
            period = _text(level / "cpu.cfs_period_us", f"cpu.cfs_period_us ({where})", unknown) or ""
        if quota.isdigit() and period.strip().isdigit() and int(period) > 0:
            found.append((int(quota) / int(period), f"{name} {int(quota) / int(period):g} CPU ({where})"))
    return found


def _cpuset(group: Cgroup, unknown: list[str]) -> set[int]:
    """The CPUs the cgroup's cpuset allows: the first effective list found walking up (empty: no cpuset here)."""
    for level in group.levels:
        for name in ("cpuset.cpus.effective", "cpuset.effective_cpus", "cpuset.cpus"):
            cpus = parse_cpu_list(_text(level / name, f"{name} ({_where(group, level)})", unknown) or "")
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


def _plural(count: int, word: str) -> str:
    return f"{count} {word}{'s' * (count != 1)}"


def cpus(root: pathlib.Path = ROOT, affinity: set[int] | None = None, host_physical: int | None = None,
         host_logical: int | None = None) -> Cpus:
    """The CPUs the agent may use: the smallest of the host's physical cores, the affinity mask, the cpuset (its
    online CPUs: a list may name CPUs that are offline) and every cgroup CPU quota on the path. A quota is rounded to
    the nearest whole CPU, halves up, at least 1: 0.5 CPU runs one thread, 1.5 two, 2.5 three. A thread count above
    the quota is throttled each period (llama.cpp's threads wait for the slowest), one below leaves the rest of the
    quota unused; nearest loses least either way. Defaults ask this machine (os.sched_getaffinity, psutil); tests
    pass them."""
    host_logical = host_logical or psutil.cpu_count(logical=True) or os.cpu_count() or 1
    host_physical = host_physical or psutil.cpu_count(logical=False) or host_logical
    if affinity is None:
        affinity = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set(range(host_logical))
    online = parse_cpu_list(_read(root / "sys/devices/system/cpu/online") or "")
    unknown: list[str] = []
    _cgroups_unreadable(root, unknown)
    groups = cgroups(root)
    # (CPUs, rank, words): the rank orders ties in the source the same way whatever order the cgroups come in
    limits = [(host_physical, 3, f"host {_plural(host_physical, 'core')}")]
    if affinity and len(affinity) < host_logical:
        limits.append((len(affinity), 0, f"affinity {_plural(len(affinity), 'CPU')}"))
    for group in _readable(groups, "cpu", unknown):
        for quota, text in _quotas(group, unknown):
            limits.append((max(1, math.floor(quota + 0.5)), 1, f"cgroup {text}"))
    for group in _readable(groups, "cpuset", unknown):
        listed = _cpuset(group, unknown)
        usable = listed & online if online and listed & online else listed
        if usable and len(usable) < host_logical:
            offline = f", {_cpu_list_text(listed - usable)} offline" if listed - usable else ""
            limits.append((len(usable), 2, f"cpuset {_plural(len(usable), 'CPU')} ({_cpu_list_text(listed)}{offline})"))
    limits.sort()
    count = limits[0][0]
    return Cpus(count, host_physical, host_logical,
                f"{_plural(count, 'CPU')}: " + _source(list(dict.fromkeys(text for _, _, text in limits)), unknown))


def unified_memory(root: pathlib.Path = ROOT) -> bool:
    """Whether the GPU shares the CPU's RAM (NVIDIA Jetson / Tegra): one pool, judged once, not twice."""
    compatible = root / "proc/device-tree/compatible"
    try:
        if b"nvidia,tegra" in compatible.read_bytes():
            return True
    except OSError:
        pass
    return (root / "etc/nv_tegra_release").exists()
