import collections
import shutil

import pytest

from fleetfit.agent.inventory import cpu_model
from fleetfit.agent.telemetry import discover_power_sources
from fleetfit.agent.telemetry.estimate import UtilizationEstimateSource, cpu_power_class
from fleetfit.agent.telemetry.source import SampleSkipped
from tests.agent.telemetry.conftest import FIXTURES, no_vcgencmd
from tests.agent.telemetry.fake_pynvml import FakePowerNvml

# The fields and order of psutil.cpu_times() on Linux.
scputimes = collections.namedtuple("scputimes", "user nice system idle iowait irq softirq steal guest guest_nice")


def cpu_times_series(*times):
    series = iter(times)
    return lambda: next(series)


@pytest.mark.parametrize(("model", "power_class"), [
    ("Intel(R) Xeon(R) Processor", "server"),
    ("Intel(R) Core(TM) i7-1165G7 @ 2.80GHz", "laptop"),
    ("AMD Ryzen 7 5800U with Radeon Graphics", "laptop"),
    ("13th Gen Intel(R) Core(TM) i9-13900K", "desktop"),
    ("Apple M2", "apple-silicon"),
    ("ARMv8 Processor rev 1 (v8l)", "arm-board"),
    ("RISC-V something", "unknown"),
])
def test_cpu_class_is_chosen_from_the_model_string(model, power_class):
    assert cpu_power_class(model).name == power_class


def test_cpu_class_from_committed_cpuinfo():
    assert cpu_power_class(cpu_model(FIXTURES / "proc/x86_64")).name == "server"
    assert cpu_power_class(cpu_model(FIXTURES / "proc/raspberry-pi-5")).name == "arm-board"


def test_power_follows_utilization_between_idle_and_busy_per_cpu():
    source = UtilizationEstimateSource("AMD EPYC 7B13", logical_cpus=2, cpu_times=cpu_times_series(
        scputimes(100, 0, 20, 500, 5, 0, 0, 0, 0, 0),
        # +1.0 s busy (user 0.8 of which 0.3 guest, system 0.2), +1.0 s idle: 50 % busy
        scputimes(100.8, 0, 20.2, 501, 5, 0, 0, 0, 0.3, 0),
    ))
    # 2 CPUs × (0.5 W idle + (3.0 − 0.5) W × 0.5)
    assert source.read().power_mw == pytest.approx(3500.0)
    assert source.provenance == "estimated" and source.method == "estimated_from_utilization"


def test_no_cpu_time_elapsed_skips_the_sample_rather_than_reading_idle():
    times = scputimes(100, 0, 20, 500, 5, 0, 0, 0, 0, 0)
    source = UtilizationEstimateSource("Apple M2", logical_cpus=8, cpu_times=cpu_times_series(times, times))
    with pytest.raises(SampleSkipped):
        source.read()


def test_the_estimate_is_used_only_when_nothing_is_readable(tmp_path):
    shutil.copytree(FIXTURES / "proc/raspberry-pi-5", tmp_path / "proc")
    found = discover_power_sources(tmp_path, nvml=FakePowerNvml(driver_loaded=False), runner=no_vcgencmd)
    (source,) = found.sources
    assert source.provenance == "estimated" and source.name.startswith("estimate arm-board")
    assert [d.method for d in found.declined] == ["nvml_energy_counter", "rapl", "hwmon_power", "ina3221", "rpi5_pmic"]


def test_no_estimate_where_a_sensor_is_readable():
    found = discover_power_sources(FIXTURES / "sysfs/amd-zen", nvml=FakePowerNvml(driver_loaded=False), runner=no_vcgencmd)
    assert [(s.scope, s.provenance) for s in found.sources] == [("cpu-package:0", "measured")]
