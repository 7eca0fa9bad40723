"""What every power source offers, whatever the vendor: one interface, two kinds of reading.

A source either reports a cumulative energy counter (RAPL, NVML's total-energy counter) or an
instantaneous power (hwmon, INA3221, PMIC rails, the utilization estimate). The sampler turns both
into energy. A read that fails raises `SampleSkipped`; the sampler counts it and carries on.
"""

import abc
import dataclasses
import os
import pathlib

ESTIMATED_METHODS = frozenset({"estimated_from_utilization"})


@dataclasses.dataclass(frozen=True)
class EnergyReading:
    """A cumulative energy counter, read at `monotonic_ns`."""

    monotonic_ns: int
    energy_uj: int


@dataclasses.dataclass(frozen=True)
class PowerReading:
    """Instantaneous (or sensor-averaged) power, read at `monotonic_ns`."""

    monotonic_ns: int
    power_mw: float


Reading = EnergyReading | PowerReading


@dataclasses.dataclass(frozen=True)
class Declined:
    """A reader that found nothing usable, and why (in words a user can act on)."""

    method: str
    reason: str


class SampleSkipped(Exception):
    """One read failed (file vanished, garbage, permission, vendor error); the run goes on."""


class PowerSource(abc.ABC):
    """One readable power or energy figure of one scope of the device.

    name:  unique and human readable, e.g. "intel-rapl:0 package-0", "nvml gpu:0"
    scope: what it covers, e.g. "gpu:0", "cpu-package:0", "dram:0", "board", "rail:VDD_SOC"
    method: how it is read, e.g. "rapl", "nvml_energy_counter", "ina3221"
    max_rate_hz: the fastest useful polling rate (the sampler never polls faster)
    counter_range_uj: for energy counters, the value at which the counter wraps to 0 (None: never)
    """

    name: str
    scope: str
    method: str
    max_rate_hz: float
    counter_range_uj: int | None = None

    @property
    def provenance(self) -> str:
        return "estimated" if self.method in ESTIMATED_METHODS else "measured"

    @abc.abstractmethod
    def read(self) -> Reading:
        """Read once; raise SampleSkipped when the figure cannot be read right now."""

    def close(self) -> None:
        """Release what discovery acquired (e.g. an NVML handle); the default holds nothing."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r} scope={self.scope} method={self.method}>"


@dataclasses.dataclass
class Discovery:
    """What one or several readers found: usable sources, and the readers that declined."""

    sources: list[PowerSource] = dataclasses.field(default_factory=list)
    declined: list[Declined] = dataclasses.field(default_factory=list)

    def add(self, found: PowerSource | Declined) -> None:
        (self.declined if isinstance(found, Declined) else self.sources).append(found)

    def extend(self, other: "Discovery") -> None:
        self.sources.extend(other.sources)
        self.declined.extend(other.declined)


def read_sysfs_int(path: pathlib.Path) -> int:
    """An integer sysfs attribute; SampleSkipped (never 0) when it is missing, unreadable or garbage."""
    # os.open/read/close rather than open(): the sampler's cost is mostly this, and it is 2x cheaper.
    # Opened anew each time so that a sensor that went away is noticed.
    try:
        fd = os.open(path, os.O_RDONLY)
        try:
            raw = os.read(fd, 64)
        finally:
            os.close(fd)
    except OSError as exc:
        raise SampleSkipped(f"{path}: {exc.strerror or exc}") from exc
    try:
        return int(raw)
    except ValueError:
        raise SampleSkipped(f"{path}: not an integer: {raw[:24]!r}") from None


def read_sysfs_text(path: pathlib.Path) -> str | None:
    """A text attribute such as `name` or `in1_label`, or None when there is none."""
    try:
        return path.read_text().strip() or None
    except (OSError, UnicodeDecodeError):
        return None


def counter_delta(previous_uj: int, current_uj: int, range_uj: int | None) -> int | None:
    """How much a cumulative counter rose between two reads, or None when that cannot be known.

    A counter that wraps (RAPL: at `max_energy_range_uj`) goes from near its range back to near 0.
    Any other step backwards (a reset, a driver bug) is not a wrap: a wrap implying more than half
    the range between two reads is rejected rather than reported as hundreds of kilojoules.
    """
    if current_uj >= previous_uj:
        return current_uj - previous_uj
    if range_uj is None:
        return None
    wrapped = range_uj - previous_uj + current_uj
    return wrapped if 0 <= wrapped < range_uj // 2 else None
