import pytest

from fleetfit.agent.telemetry.source import SampleSkipped, counter_delta, read_sysfs_int

RAPL_RANGE_UJ = 262143328850


def test_counter_delta_counts_a_rising_counter():
    assert counter_delta(1_000, 4_500, RAPL_RANGE_UJ) == 3_500


def test_counter_delta_unwraps_a_counter_that_passed_its_range():
    assert counter_delta(RAPL_RANGE_UJ - 1_000, 2_000, RAPL_RANGE_UJ) == 3_000


def test_counter_delta_rejects_a_step_back_that_is_no_wrap():
    # Unwrapping 5000 -> 4000 would claim ~262 kJ in one sample: a reset, not a wrap.
    assert counter_delta(5_000, 4_000, RAPL_RANGE_UJ) is None


def test_counter_delta_without_a_range_never_unwraps():
    assert counter_delta(5_000, 4_000, None) is None


@pytest.mark.parametrize("content", [b"", b"\n", b"garbage\n", b"12.5\n"])
def test_read_sysfs_int_skips_garbage_and_empty_files_rather_than_reading_zero(tmp_path, content):
    (tmp_path / "energy_uj").write_bytes(content)
    with pytest.raises(SampleSkipped, match="not an integer"):
        read_sysfs_int(tmp_path / "energy_uj")


def test_read_sysfs_int_skips_a_vanished_file(tmp_path):
    with pytest.raises(SampleSkipped, match="No such file"):
        read_sysfs_int(tmp_path / "power1_input")


def test_read_sysfs_int_reads_sysfs_formatting(tmp_path):
    (tmp_path / "power1_input").write_bytes(b"4150000\n")
    assert read_sysfs_int(tmp_path / "power1_input") == 4150000
