"""Raspberry Pi 5 PMIC rails through `vcgencmd pmic_read_adc`.

The firmware prints one ADC channel a line, currents and voltages apart:
      VDD_CORE_A current(7)=2.63310000A
      VDD_CORE_V volt(15)=0.81200000V
Rails are paired by name (the channel numbers differ), power = Σ volts × amps over paired rails.
That sum covers the PMIC's rails only, not the 5 V input (USB devices, fan, conversion losses):
its scope says so. Each read costs about 23 ms, hence at most 10 Hz.
"""

import re
import subprocess
import time
from collections.abc import Callable, Sequence

from fleetfit.agent.telemetry.source import Declined, Discovery, PowerReading, PowerSource, SampleSkipped

METHOD = "rpi5_pmic"
COMMAND = ("vcgencmd", "pmic_read_adc")
LINE = re.compile(r"^\s*(\S+)_([AV]) (?:current|volt)\(\d+\)=([0-9.]+)[AV]\s*$")

CommandRunner = Callable[[Sequence[str]], str]


def run_command(command: Sequence[str]) -> str:
    """Run a command and return its stdout; OSError or CalledProcessError when it fails."""
    return subprocess.run(command, capture_output=True, text=True, check=True, timeout=2).stdout


def rail_powers_mw(output: str) -> dict[str, float]:
    """Power of each rail that has both a current and a voltage line, in mW."""
    amps: dict[str, float] = {}
    volts: dict[str, float] = {}
    for line in output.splitlines():
        if match := LINE.match(line):
            rail, unit, value = match.groups()
            (amps if unit == "A" else volts)[rail] = float(value)
    return {rail: amps[rail] * volts[rail] * 1000 for rail in amps if rail in volts}


class RaspberryPi5PmicSource(PowerSource):
    name = "rpi5 pmic rails"
    scope = "pmic-rails"
    method = METHOD
    max_rate_hz = 10.0

    def __init__(self, rails: Sequence[str], runner: CommandRunner):
        self.rails, self.runner = frozenset(rails), runner

    def read(self) -> PowerReading:
        before = time.monotonic_ns()
        try:
            output = self.runner(COMMAND)
        except (OSError, subprocess.SubprocessError) as exc:
            raise SampleSkipped(f"vcgencmd failed: {exc}") from exc
        # The read takes ~23 ms: stamp it in the middle.
        stamp = (before + time.monotonic_ns()) // 2
        powers = rail_powers_mw(output)
        if missing := self.rails - powers.keys():
            # A sum over fewer rails is not comparable with the others.
            raise SampleSkipped(f"vcgencmd output lacks rails {sorted(missing)}")
        return PowerReading(stamp, sum(powers[rail] for rail in self.rails))


def discover_rpi5(runner: CommandRunner = run_command) -> Discovery:
    try:
        output = runner(COMMAND)
    except (OSError, subprocess.SubprocessError) as exc:
        return Discovery(declined=[Declined(METHOD, f"`vcgencmd pmic_read_adc` unavailable: {exc}")])
    rails = rail_powers_mw(output)
    if not rails:
        return Discovery(declined=[Declined(METHOD, "`vcgencmd pmic_read_adc` printed no rail (not a Raspberry Pi 5?)")])
    return Discovery(sources=[RaspberryPi5PmicSource(rails, runner)])
