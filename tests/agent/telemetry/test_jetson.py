import pytest

from fleetfit.agent.telemetry import discover_power_sources
from fleetfit.agent.telemetry.jetson import discover_jetson
from tests.agent.telemetry.conftest import SYSFS, no_vcgencmd
from tests.agent.telemetry.fake_pynvml import FakePowerNvml


def _by_scope(found):
    return {s.scope: s for s in found.sources}


def test_orin_jetpack5_reads_each_rail_as_bus_millivolts_times_milliamps():
    found = discover_jetson(SYSFS / "jetson-orin-nano-jp5")
    sources = _by_scope(found)
    assert list(sources) == ["board", "rail:VDD_CPU_GPU_CV", "rail:VDD_SOC"]
    assert {s.method for s in found.sources} == {"ina3221"}
    assert sources["board"].read().power_mw == pytest.approx(5072 * 1320 / 1000)
    assert sources["rail:VDD_SOC"].read().power_mw == pytest.approx(5064 * 624 / 1000)


def test_orin_board_total_is_vdd_in_alone_never_the_sum_of_rails():
    boards = [s for s in discover_jetson(SYSFS / "jetson-orin-nano-jp5").sources if s.scope == "board"]
    assert len(boards) == 1 and boards[0].name.endswith("VDD_IN")
    # VDD_IN alone is 6695 mW; adding VDD_CPU_GPU_CV and VDD_SOC would give 9072 mW.
    assert boards[0].read().power_mw == pytest.approx(6695.04)


def test_orin_sum_channels_are_not_paired_into_a_rail():
    # curr4_input is INA3221's sum of currents and in4_input a shunt voltage in µV: no rail.
    names = [s.name for s in discover_jetson(SYSFS / "jetson-orin-nano-jp5").sources]
    assert names == ["hwmon1 VDD_IN", "hwmon1 VDD_CPU_GPU_CV", "hwmon1 VDD_SOC"]


def test_nano_jetpack4_iio_reads_in_power_in_milliwatts():
    found = discover_jetson(SYSFS / "jetson-nano-jp4")
    sources = _by_scope(found)
    assert list(sources) == ["board", "rail:POM_5V_GPU", "rail:POM_5V_CPU"]
    assert sources["board"].name == "6-0040 POM_5V_IN"
    assert sources["board"].read().power_mw == pytest.approx(2418.0)
    assert sources["rail:POM_5V_CPU"].read().power_mw == pytest.approx(556.0)


def test_not_a_jetson_declines_naming_both_layouts(tmp_path):
    found = discover_jetson(tmp_path)
    assert found.sources == [] and "ina3221x" in found.declined[0].reason


def test_on_a_jetson_nvml_declines_and_each_rail_is_found_once():
    jetson_nvml = FakePowerNvml(energy_counter=False, power_usage=False)
    found = discover_power_sources(SYSFS / "jetson-orin-nano-jp5", nvml=jetson_nvml, runner=no_vcgencmd)
    assert sorted(s.scope for s in found.sources) == ["board", "rail:VDD_CPU_GPU_CV", "rail:VDD_SOC"]
    assert any("NOT_SUPPORTED" in d.reason for d in found.declined)
    assert all(s.provenance == "measured" for s in found.sources)
