import subprocess

import pytest

from fleetfit.agent.telemetry.rpi import COMMAND, discover_rpi5, rail_powers_mw
from fleetfit.agent.telemetry.source import SampleSkipped
from tests.agent.telemetry.conftest import FIXTURES, no_vcgencmd

RECORDED = (FIXTURES / "vcgencmd/raspberry-pi-5/pmic_read_adc.txt").read_text()


def recorded(command):
    assert tuple(command) == COMMAND
    return RECORDED


def test_rails_are_paired_by_name_not_by_channel_number():
    rails = rail_powers_mw(RECORDED)
    assert len(rails) == 12
    assert rails["VDD_CORE"] == pytest.approx(2.63310000 * 0.81200000 * 1000)  # current(7) with volt(15)
    assert rails["DDR_VDDQ"] == 0.0  # a rail drawing nothing reads 0 A: a real zero, kept
    assert "EXT5V" not in rails and "BATT" not in rails  # voltage only: no power to pair


def test_the_source_sums_the_pmic_rails_at_10_hz_at_most():
    (source,) = discover_rpi5(recorded).sources
    assert (source.scope, source.method, source.max_rate_hz) == ("pmic-rails", "rpi5_pmic", 10.0)
    assert source.read().power_mw == pytest.approx(3513.431, abs=1e-3)


def test_a_read_missing_a_rail_is_skipped_not_summed_short():
    outputs = iter([RECORDED, RECORDED.replace("VDD_CORE_A current(7)=2.63310000A\n", "")])
    (source,) = discover_rpi5(lambda command: next(outputs)).sources
    with pytest.raises(SampleSkipped, match="VDD_CORE"):
        source.read()


def test_a_failing_vcgencmd_mid_run_skips_the_sample():
    outputs = iter([RECORDED])

    def runner(command):
        try:
            return next(outputs)
        except StopIteration:
            raise subprocess.CalledProcessError(1, command) from None

    (source,) = discover_rpi5(runner).sources
    with pytest.raises(SampleSkipped, match="vcgencmd failed"):
        source.read()


def test_no_vcgencmd_declines():
    found = discover_rpi5(no_vcgencmd)
    assert found.sources == [] and "vcgencmd" in found.declined[0].reason


def test_output_without_rails_declines():
    found = discover_rpi5(lambda command: 'error=2 error_msg="Invalid arguments"\n')
    assert found.sources == [] and "no rail" in found.declined[0].reason
