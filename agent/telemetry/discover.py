"""Find every power source this device offers; fall back to the utilization estimate only when none is readable."""

import pathlib

from fleetfit.agent.inventory import cpu_model
from fleetfit.agent.telemetry.estimate import UtilizationEstimateSource
from fleetfit.agent.telemetry.hwmon import discover_hwmon
from fleetfit.agent.telemetry.jetson import discover_jetson
from fleetfit.agent.telemetry.nvml_power import discover_nvml
from fleetfit.agent.telemetry.rapl import discover_rapl
from fleetfit.agent.telemetry.rpi import CommandRunner, discover_rpi5, run_command
from fleetfit.agent.telemetry.source import Discovery


def discover_power_sources(root: str | pathlib.Path = "/", nvml=None, runner: CommandRunner = run_command) -> Discovery:
    """Every readable source, and every reader that declined with its reason.

    root: where /sys and /proc are (tests pass a fixture tree); nvml: the pynvml module or a fake;
    runner: runs `vcgencmd` (tests pass recorded output).
    """
    found = Discovery()
    found.extend(discover_nvml(nvml))
    found.extend(discover_rapl(root))
    found.extend(discover_hwmon(root))
    found.extend(discover_jetson(root))
    found.extend(discover_rpi5(runner))
    if not found.sources:
        found.sources.append(UtilizationEstimateSource(cpu_model(pathlib.Path(root) / "proc")))
    return found
