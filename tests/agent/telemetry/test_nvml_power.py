import pytest

from fleetfit.agent.telemetry.nvml_power import NvmlEnergySource, NvmlPowerSource, discover_nvml
from fleetfit.agent.telemetry.source import EnergyReading, PowerReading, SampleSkipped
from tests.agent.telemetry.fake_pynvml import FakePowerNvml


def test_the_energy_counter_is_preferred_and_read_in_microjoules():
    nvml = FakePowerNvml(gpus=2)
    found = discover_nvml(nvml)
    assert [type(s) for s in found.sources] == [NvmlEnergySource, NvmlEnergySource]
    assert [(s.scope, s.method) for s in found.sources] == [("gpu:0", "nvml_energy_counter"), ("gpu:1", "nvml_energy_counter")]
    nvml.energy_mj[1] = 12_000_000
    reading = found.sources[1].read()
    assert isinstance(reading, EnergyReading) and reading.energy_uj == 12_000_000_000


def test_without_an_energy_counter_power_usage_is_polled_in_milliwatts():
    found = discover_nvml(FakePowerNvml(energy_counter=False))
    (source,) = found.sources
    assert isinstance(source, NvmlPowerSource) and source.method == "nvml_power_usage"
    reading = source.read()
    assert isinstance(reading, PowerReading) and reading.power_mw == 71_250.0


def test_jetson_nvml_declines_with_not_supported():
    found = discover_nvml(FakePowerNvml(energy_counter=False, power_usage=False))
    assert found.sources == []
    assert "gpu:0" in found.declined[0].reason and "NOT_SUPPORTED" in found.declined[0].reason


def test_no_driver_declines():
    found = discover_nvml(FakePowerNvml(driver_loaded=False))
    assert found.sources == [] and found.declined[0].reason.startswith("NVML unavailable")


def test_each_source_holds_one_nvml_reference_until_closed():
    nvml = FakePowerNvml(gpus=2)
    found = discover_nvml(nvml)
    assert nvml.initialised == 2
    for source in found.sources:
        source.close()
    assert nvml.initialised == 0


def test_a_gpu_lost_mid_run_skips_the_sample():
    nvml = FakePowerNvml()
    (source,) = discover_nvml(nvml).sources
    nvml.lost.add(0)
    with pytest.raises(SampleSkipped, match="NVML error 15"):
        source.read()
