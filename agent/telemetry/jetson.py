"""NVIDIA Jetson INA3221 power rails (NVML initialises on Jetson but every power query is NOT_SUPPORTED).

JetPack 5+ (mainline driver): /sys/bus/i2c/drivers/ina3221/<bus>-<addr>/hwmon/hwmonN/
    inN_label (rail name), inN_input (mV), currN_input (mA)
JetPack 4 (NVIDIA's iio driver): /sys/bus/i2c/drivers/ina3221x/<bus>-<addr>/iio:deviceN/
    rail_name_N, in_powerN_input (mW), in_currentN_input (mA), in_voltageN_input (mV)
`VDD_IN` / `POM_5V_IN` is the module's input, i.e. the board total: it gets scope "board" and the
sub-rails (CPU, GPU, SOC ...) are reported beside it with their own scope, never added to it.
"""

import pathlib

from fleetfit.agent.telemetry.hwmon import (
    DEFAULT_RATE_HZ,
    SysfsPowerSource,
    channel_numbers,
    hwmon_device_sources,
    readable,
)
from fleetfit.agent.telemetry.source import Declined, Discovery, PowerSource, read_sysfs_text

METHOD = "ina3221"
BOARD_TOTAL_RAILS = {"VDD_IN", "POM_5V_IN"}
DRIVERS = "sys/bus/i2c/drivers"


def rail_scope(rail: str) -> str:
    return "board" if rail in BOARD_TOTAL_RAILS else f"rail:{rail}"


def _iio_sources(device: pathlib.Path) -> list[PowerSource]:
    sources: list[PowerSource] = []
    for n in channel_numbers(device, r"rail_name_(\d+)"):
        rail = read_sysfs_text(device / f"rail_name_{n}") or f"channel{n}"
        sources.append(SysfsPowerSource(
            device / f"in_power{n}_input", 1.0, f"{device.parent.name} {rail}", rail_scope(rail), METHOD, DEFAULT_RATE_HZ,
        ))
    return sources


def discover_jetson(root: str | pathlib.Path = "/") -> Discovery:
    drivers = pathlib.Path(root) / DRIVERS
    candidates: list[PowerSource] = []
    for device in sorted(drivers.glob("ina3221/*/hwmon/hwmon*")):
        candidates += hwmon_device_sources(device, METHOD, METHOD, rail_scope)
    for device in sorted(drivers.glob("ina3221x/*/iio:device*")):
        candidates += _iio_sources(device)
    if not candidates:
        return Discovery(declined=[Declined(METHOD, f"no INA3221 under {drivers}/ina3221 (JetPack 5+) or ina3221x (JetPack 4)")])
    return readable(candidates, METHOD)
