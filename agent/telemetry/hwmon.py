"""hwmon power sensors (ARM boards' INA2xx, AMD GPUs), and the sysfs power readers others reuse.

/sys/class/hwmon/hwmonN/name, power1_input or power1_average (µW), power1_label;
where a chip has no power attribute: inN_input (mV) × currN_input (mA) of each rail named by inN_label.
"""

import pathlib
import re
import time
from collections.abc import Callable

from fleetfit.agent.telemetry.source import (
    Declined,
    Discovery,
    PowerReading,
    PowerSource,
    SampleSkipped,
    read_sysfs_int,
    read_sysfs_text,
)

METHOD_POWER = "hwmon_power"
METHOD_VOLTAGE_CURRENT = "hwmon_voltage_current"
DEFAULT_RATE_HZ = 50.0
MW_PER_UW = 0.001
# The Jetson reader owns INA3221 chips: it knows which rail is the board total.
LEFT_TO_OTHER_READERS = {"ina3221"}
# A channel wired to nothing ("not connected") reads noise or zero.
UNCONNECTED_LABELS = {"NC"}


class SysfsPowerSource(PowerSource):
    """One sysfs attribute holding power; `mw_per_unit` converts it (hwmon µW: 0.001, iio mW: 1)."""

    def __init__(self, path: pathlib.Path, mw_per_unit: float, name: str, scope: str, method: str, max_rate_hz: float):
        self.path, self.mw_per_unit = path, mw_per_unit
        self.name, self.scope, self.method, self.max_rate_hz = name, scope, method, max_rate_hz

    def read(self) -> PowerReading:
        return PowerReading(time.monotonic_ns(), read_sysfs_int(self.path) * self.mw_per_unit)


class SysfsVoltageCurrentSource(PowerSource):
    """Power as bus voltage (mV) × current (mA) from two sysfs attributes of one channel."""

    def __init__(self, volt_path: pathlib.Path, curr_path: pathlib.Path, name: str, scope: str, method: str, max_rate_hz: float):
        self.volt_path, self.curr_path = volt_path, curr_path
        self.name, self.scope, self.method, self.max_rate_hz = name, scope, method, max_rate_hz

    def read(self) -> PowerReading:
        power_mw = read_sysfs_int(self.volt_path) * read_sysfs_int(self.curr_path) / 1000
        return PowerReading(time.monotonic_ns(), power_mw)


def channel_numbers(device: pathlib.Path, pattern: str) -> list[int]:
    """The N of every attribute matching e.g. 'power(\\d+)_input', in order."""
    regex = re.compile(pattern)
    return sorted({int(m.group(1)) for path in device.iterdir() if (m := regex.fullmatch(path.name))})


def device_rate_hz(device: pathlib.Path) -> float:
    """The chip's own update interval (ms) when it states one: polling faster reads the same value."""
    try:
        interval_ms = read_sysfs_int(device / "update_interval")
    except SampleSkipped:
        return DEFAULT_RATE_HZ
    return min(DEFAULT_RATE_HZ, 1000 / interval_ms) if interval_ms > 0 else DEFAULT_RATE_HZ


def hwmon_device_sources(
    device: pathlib.Path, method_power: str, method_voltage_current: str, scope_of: Callable[[str], str]
) -> list[PowerSource]:
    """Every power channel of one hwmon device: power attributes, else voltage × current pairs."""
    rate_hz = device_rate_hz(device)
    sources: list[PowerSource] = []
    for n in channel_numbers(device, r"power(\d+)_(?:input|average)"):
        path = device / f"power{n}_input"
        if not path.exists():
            path = device / f"power{n}_average"
        label = read_sysfs_text(device / f"power{n}_label") or f"power{n}"
        sources.append(SysfsPowerSource(path, MW_PER_UW, f"{device.name} {label}", scope_of(label), method_power, rate_hz))
    if sources:
        return sources
    # Pair only channels whose voltage input names its rail: unlabelled inN are often shunt
    # voltages or sums (INA3221's in4..in7), and pairing those would invent a power.
    for n in channel_numbers(device, r"curr(\d+)_input"):
        label = read_sysfs_text(device / f"in{n}_label")
        if label and label not in UNCONNECTED_LABELS and (device / f"in{n}_input").exists():
            sources.append(SysfsVoltageCurrentSource(
                device / f"in{n}_input", device / f"curr{n}_input", f"{device.name} {label}", scope_of(label),
                method_voltage_current, rate_hz,
            ))
    return sources


def readable(sources: list[PowerSource], method: str) -> Discovery:
    """Keep the sources that read now; explain the others."""
    found = Discovery()
    for source in sources:
        try:
            source.read()
        except SampleSkipped as exc:
            found.declined.append(Declined(method, f"{source.name}: {exc}"))
        else:
            found.sources.append(source)
    return found


def discover_hwmon(root: str | pathlib.Path = "/") -> Discovery:
    hwmon = pathlib.Path(root) / "sys/class/hwmon"
    candidates: list[PowerSource] = []
    for device in sorted(hwmon.glob("hwmon*")):
        chip = read_sysfs_text(device / "name") or device.name
        if chip in LEFT_TO_OTHER_READERS:
            continue
        candidates += hwmon_device_sources(device, METHOD_POWER, METHOD_VOLTAGE_CURRENT, lambda label, chip=chip: f"hwmon:{chip}/{label}")
    if not candidates:
        return Discovery(declined=[Declined(METHOD_POWER, f"no power, or voltage and current, sensor under {hwmon}")])
    return readable(candidates, METHOD_POWER)
