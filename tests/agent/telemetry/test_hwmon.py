import pytest

from fleetfit.agent.telemetry.hwmon import discover_hwmon
from fleetfit.agent.telemetry.source import PowerReading, SampleSkipped
from tests.agent.telemetry.conftest import SYSFS


def test_arm_board_ina226_power1_input_is_read_in_milliwatts():
    found = discover_hwmon(SYSFS / "arm-board-ina226")
    assert [(s.name, s.scope, s.method) for s in found.sources] == [("hwmon2 power1", "hwmon:ina226/power1", "hwmon_power")]
    reading = found.sources[0].read()
    assert isinstance(reading, PowerReading) and reading.power_mw == pytest.approx(4150.0)  # 4150000 µW


def test_polling_rate_never_exceeds_the_default_even_when_the_chip_updates_faster():
    (source,) = discover_hwmon(SYSFS / "arm-board-ina226").sources
    assert source.max_rate_hz == 50.0  # update_interval 2 ms would allow 500 Hz


def test_a_slow_chip_caps_the_rate_at_its_update_interval(sysfs_copy):
    root = sysfs_copy("arm-board-ina226")
    (root / "sys/class/hwmon/hwmon2/update_interval").write_text("100\n")
    (source,) = discover_hwmon(root).sources
    assert source.max_rate_hz == pytest.approx(10.0)


def test_power1_average_is_used_where_there_is_no_power1_input(sysfs_copy):
    root = sysfs_copy("arm-board-ina226")
    device = root / "sys/class/hwmon/hwmon2"
    (device / "power1_input").rename(device / "power1_average")
    (source,) = discover_hwmon(root).sources
    assert source.read().power_mw == pytest.approx(4150.0)


def test_temperature_only_hwmon_devices_decline():
    found = discover_hwmon(SYSFS / "intel-xeon-2s")
    assert found.sources == []
    assert "no power" in found.declined[0].reason


def test_the_jetson_ina3221_is_left_to_the_jetson_reader():
    found = discover_hwmon(SYSFS / "jetson-orin-nano-jp5")
    assert found.sources == []


def test_a_sensor_that_vanishes_mid_run_skips_the_sample_and_comes_back(sysfs_copy):
    root = sysfs_copy("arm-board-ina226")
    (source,) = discover_hwmon(root).sources
    power = root / "sys/class/hwmon/hwmon2/power1_input"
    power.unlink()
    with pytest.raises(SampleSkipped):
        source.read()
    power.write_text("3900000\n")
    assert source.read().power_mw == pytest.approx(3900.0)


def test_a_sensor_unreadable_at_discovery_is_declined_with_its_path(sysfs_copy):
    root = sysfs_copy("arm-board-ina226")
    (root / "sys/class/hwmon/hwmon2/power1_input").write_text("")
    found = discover_hwmon(root)
    assert found.sources == []
    assert "power1_input" in found.declined[0].reason and "not an integer" in found.declined[0].reason
