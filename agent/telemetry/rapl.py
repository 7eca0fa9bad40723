"""Intel and AMD RAPL energy counters through the Linux powercap tree.

/sys/class/powercap/intel-rapl:N        a package domain (`name` = package-N, or psys)
/sys/class/powercap/intel-rapl:N:M      its subdomains (`name` = dram, core, uncore)
Each zone has `energy_uj` (a counter that wraps at `max_energy_range_uj`). AMD Zen exposes the same
tree with a package domain only. Since Linux 5.10 (CVE-2020-8694) `energy_uj` is readable by root only.
"""

import pathlib
import time

from fleetfit.agent.telemetry.source import (
    Declined,
    Discovery,
    EnergyReading,
    PowerSource,
    SampleSkipped,
    read_sysfs_int,
    read_sysfs_text,
)

METHOD = "rapl"
POWERCAP = "sys/class/powercap"
GRANT_READ = (
    "run `sudo chmod o+r /sys/class/powercap/intel-rapl:*/energy_uj /sys/class/powercap/intel-rapl:*:*/energy_uj`"
    " (or add a udev rule doing so at boot)"
)


def zone_scope(zone_id: str, name: str) -> str:
    """'intel-rapl:1', 'package-1' -> 'cpu-package:1'; 'intel-rapl:0:0', 'dram' -> 'dram:0'."""
    package = zone_id.split(":")[1]
    if name.startswith("package"):
        return f"cpu-package:{package}"
    if name == "psys":
        return "platform"
    return f"{name}:{package}"


class RaplSource(PowerSource):
    method = METHOD
    max_rate_hz = 1000.0  # the counters update about every millisecond

    def __init__(self, zone: pathlib.Path, name: str, range_uj: int):
        self.energy_path = zone / "energy_uj"
        self.name = f"{zone.name} {name}"
        self.scope = zone_scope(zone.name, name)
        self.counter_range_uj = range_uj

    def read(self) -> EnergyReading:
        energy_uj = read_sysfs_int(self.energy_path)
        return EnergyReading(time.monotonic_ns(), energy_uj)


def _open_zone(zone: pathlib.Path) -> RaplSource | Declined:
    name = read_sysfs_text(zone / "name") or zone.name
    try:
        read_sysfs_int(zone / "energy_uj")
        range_uj = read_sysfs_int(zone / "max_energy_range_uj")
    except SampleSkipped as exc:
        if isinstance(exc.__cause__, PermissionError):
            return Declined(METHOD, f"permission denied reading {zone / 'energy_uj'}: {GRANT_READ}")
        return Declined(METHOD, f"unreadable: {exc}")
    return RaplSource(zone, name, range_uj)


def discover_rapl(root: str | pathlib.Path = "/") -> Discovery:
    found = Discovery()
    powercap = pathlib.Path(root) / POWERCAP
    # Top-level and nested zones are both listed here (as symlinks), each exactly once.
    zones = sorted(powercap.glob("intel-rapl:*"))
    if not zones:
        found.declined.append(Declined(METHOD, f"no {powercap}/intel-rapl:0 (not Intel/AMD, a VM, or no rapl driver)"))
    for zone in zones:
        found.add(_open_zone(zone))
    return found
