import pytest

from fleetfit.agent.telemetry import PowerSampler, joules_per_token, tokens_per_joule
from fleetfit.agent.telemetry.hwmon import discover_hwmon
from fleetfit.agent.telemetry.source import EnergyReading, PowerReading, PowerSource, SampleSkipped
from tests.conftest import wait_until


class Clock:
    """Monotonic nanoseconds that tests move by hand."""

    def __init__(self):
        self.ns = 5_000_000_000

    def __call__(self) -> int:
        return self.ns

    def advance(self, seconds: float) -> None:
        self.ns += round(seconds * 1e9)


class ScriptedSource(PowerSource):
    """Returns the next scripted value at the clock's time: mW for power, µJ for a counter; an exception fails the read."""

    scope, max_rate_hz = "board", 20.0

    def __init__(self, clock: Clock, counter: bool = False, counter_range_uj: int | None = None, max_rate_hz: float = 20.0):
        self.clock, self.counter, self.counter_range_uj, self.max_rate_hz = clock, counter, counter_range_uj, max_rate_hz
        self.name = "scripted counter" if counter else "scripted power"
        self.method = "rapl" if counter else "hwmon_power"
        self.script: list = []

    def read(self):
        value = self.script.pop(0)
        if isinstance(value, Exception):
            raise value
        return EnergyReading(self.clock(), value) if self.counter else PowerReading(self.clock(), value)


def run_script(clock, source, steps, phases=None):
    """steps: (seconds to advance, value) read in turn; phases: {step index: phase name marked before that read}."""
    sampler = PowerSampler([source], clock=clock)
    for index, (seconds, value) in enumerate(steps):
        clock.advance(seconds)
        if phases and index in phases:
            sampler.mark(phases[index])
        source.script.append(value)
        sampler.sample_once()
    sampler.stop()
    return sampler


def test_power_samples_are_integrated_by_the_trapezoid_rule():
    clock = Clock()
    source = ScriptedSource(clock)
    sampler = run_script(clock, source, [(0, 1000.0), (1, 3000.0), (1, 3000.0)], phases={0: "decode"})
    (row,) = sampler.summaries()
    assert row.energy_mj == pytest.approx(2000 + 3000)  # (1 + 3) / 2 W × 1 s + 3 W × 1 s
    assert (row.average_power_w, row.peak_power_w) == (pytest.approx(2.5), pytest.approx(3.0))
    assert (row.samples, row.samples_skipped, row.coverage) == (3, 0, 1.0)
    assert (row.scope, row.method, row.provenance, row.rate_hz) == ("board", "hwmon_power", "measured", 20.0)


def test_a_phase_boundary_splits_a_segment_along_its_trapezoid():
    clock = Clock()
    source = ScriptedSource(clock)
    sampler = PowerSampler([source], clock=clock)
    sampler.mark("prefill")
    source.script.append(1000.0)
    sampler.sample_once()
    clock.advance(0.5)
    sampler.mark("decode")
    clock.advance(0.5)
    source.script.append(3000.0)
    sampler.sample_once()
    sampler.stop()
    prefill, decode = sampler.summaries()
    assert (prefill.phase, decode.phase) == ("prefill", "decode")
    assert prefill.energy_mj == pytest.approx(750.0)  # 1 W -> 2 W over 0.5 s
    assert decode.energy_mj == pytest.approx(1250.0)  # 2 W -> 3 W over 0.5 s


def test_idle_baseline_gives_net_energy_beside_gross():
    clock = Clock()
    source = ScriptedSource(clock, counter=True, counter_range_uj=262143328850)
    steps = [(0, 0), (1, 500_000), (2, 5_500_000)]  # 0.5 W for 1 s idle, then 2.5 W for 2 s
    sampler = run_script(clock, source, steps, phases={0: "idle", 1: "decode"})
    (row,) = sampler.summaries()
    assert row.phase == "decode"
    assert row.energy_mj == pytest.approx(5000.0)
    assert row.idle_power_w == pytest.approx(0.5)
    assert row.net_energy_mj == pytest.approx(4000.0)
    assert joules_per_token(row.energy_mj, tokens=100) == pytest.approx(0.05)
    assert joules_per_token(row.net_energy_mj, tokens=100) == pytest.approx(0.04)
    assert tokens_per_joule(row.net_energy_mj, tokens=100) == pytest.approx(25.0)


def test_a_wrapping_counter_is_unwrapped_with_its_range():
    clock = Clock()
    source = ScriptedSource(clock, counter=True, counter_range_uj=1_000_000)
    sampler = run_script(clock, source, [(0, 900_000), (1, 100_000)], phases={0: "decode"})
    (row,) = sampler.summaries()
    assert row.energy_mj == pytest.approx(200.0)
    assert row.samples_skipped == 0


def test_a_counter_going_backwards_is_skipped_counted_and_leaves_a_gap():
    clock = Clock()
    source = ScriptedSource(clock, counter=True, counter_range_uj=262143328850)
    sampler = run_script(clock, source, [(0, 500_000), (1, 400_000), (1, 600_000)], phases={0: "decode"})
    (row,) = sampler.summaries()
    assert (row.samples, row.samples_skipped, row.coverage) == (2, 1, 0.5)
    assert row.average_power_w == pytest.approx(0.2)  # only the second second is known
    assert row.energy_mj == pytest.approx(400.0)  # ... scaled to the whole phase
    assert sampler.skip_reasons()["scripted counter"] == {"energy counter went backwards": 1}


def test_a_failed_power_read_breaks_the_trapezoid_and_lowers_coverage():
    clock = Clock()
    source = ScriptedSource(clock)
    steps = [(0, 1000.0), (1, SampleSkipped("power1_input: No such file")), (1, 1000.0), (1, 1000.0)]
    sampler = run_script(clock, source, steps, phases={0: "decode"})
    (row,) = sampler.summaries()
    assert (row.samples, row.samples_skipped) == (3, 1)
    assert row.coverage == pytest.approx(1 / 3)
    assert row.average_power_w == pytest.approx(1.0)


def test_a_counter_bridges_a_failed_read_exactly():
    clock = Clock()
    source = ScriptedSource(clock, counter=True)
    steps = [(0, 0), (1, SampleSkipped("energy_uj: garbage")), (1, 2_000_000)]
    sampler = run_script(clock, source, steps, phases={0: "decode"})
    (row,) = sampler.summaries()
    assert (row.coverage, row.samples_skipped) == (1.0, 1)
    assert row.energy_mj == pytest.approx(2000.0)


def test_a_phase_without_two_valid_samples_is_none_with_a_reason_never_zero():
    clock = Clock()
    source = ScriptedSource(clock)
    steps = [(0, 1000.0), (1, SampleSkipped("garbage")), (1, SampleSkipped("garbage"))]
    sampler = run_script(clock, source, steps, phases={1: "decode"})
    (row,) = sampler.summaries()
    assert row.energy_mj is None and row.net_energy_mj is None
    assert row.average_power_w is None and row.peak_power_w is None
    assert row.coverage == 0.0 and row.samples_skipped == 2
    assert "no two consecutive valid samples" in row.note and "no idle baseline" in row.note
    assert joules_per_token(row.energy_mj, tokens=100) is None


def test_windows_of_a_repeated_phase_are_added_up():
    clock = Clock()
    source = ScriptedSource(clock)
    steps = [(0, 1000.0), (1, 1000.0), (1, 1000.0), (1, 1000.0)]
    sampler = run_script(clock, source, steps, phases={0: "decode", 1: "prefill", 2: "decode"})
    decode, prefill = sampler.summaries()
    assert decode.duration_s == pytest.approx(2.0) and decode.energy_mj == pytest.approx(2000.0)
    assert prefill.duration_s == pytest.approx(1.0)


def test_windows_timed_by_another_process_select_their_part_of_the_samples():
    clock = Clock()
    source = ScriptedSource(clock)
    start = clock.ns
    sampler = run_script(clock, source, [(0, 1000.0), (1, 3000.0), (1, 3000.0), (1, 1000.0)])
    second = 1_000_000_000
    sampler.add_phase("decode", start + second // 2, start + 2 * second)   # 2 → 3 W, then 3 W
    sampler.add_phase("decode", start + 2 * second + second // 2, start + 3 * second)  # 2 → 1 W
    sampler.add_phase("warmup", start, start + second // 2)
    rows = {row.phase: row for row in sampler.summaries()}
    assert list(rows) == ["decode", "warmup"]
    assert rows["decode"].duration_s == pytest.approx(2.0)
    assert rows["decode"].energy_mj == pytest.approx(0.5 * 2500 + 3000 + 0.5 * 1500)
    with pytest.raises(ValueError, match="ends before it starts"):
        sampler.add_phase("decode", start + second, start)


def test_a_slow_source_is_read_every_nth_tick_and_reports_its_own_rate():
    clock = Clock()
    source = ScriptedSource(clock, max_rate_hz=10.0)
    sampler = PowerSampler([source], rate_hz=20.0, clock=clock)
    sampler.sample_once(tick=1)  # not due: the empty script would raise if read
    assert sampler.source_rate_hz(0) == 10.0


def test_measuring_idle_needs_a_running_sampler():
    with pytest.raises(RuntimeError, match="start the sampler"):
        PowerSampler([]).measure_idle(0.1)


class BrokenSource(PowerSource):
    name, scope, method, max_rate_hz = "broken", "board", "hwmon_power", 20.0

    def read(self):
        raise ZeroDivisionError("a bug in a reader")


def test_the_thread_survives_garbage_vanished_files_and_broken_readers(sysfs_copy):
    root = sysfs_copy("arm-board-ina226")
    (hwmon_source,) = discover_hwmon(root).sources
    power = root / "sys/class/hwmon/hwmon2/power1_input"
    sampler = PowerSampler([hwmon_source, BrokenSource()], rate_hz=50.0)
    with sampler:
        sampler.measure_idle(0.1)
        sampler.mark("decode")
        power.write_text("garbage\n")
        wait_until(lambda: sampler.skip_reasons()["hwmon2 power1"].total() >= 2, 10, "the sampler thread", 0.01)
        power.unlink()
        wait_until(lambda: sampler.skip_reasons()["hwmon2 power1"].total() >= 4, 10, "the sampler thread", 0.01)
        power.write_text("4150000\n")
        reads_before = len(sampler.tracks[0].read_ns)
        wait_until(lambda: len(sampler.tracks[0].read_ns) >= reads_before + 3, 10, "the sampler thread", 0.01)
    hwmon_row, broken_row = sampler.summaries()
    assert hwmon_row.samples_skipped >= 4 and 0 < hwmon_row.coverage < 1
    assert hwmon_row.average_power_w == pytest.approx(4.15)  # every valid sample read 4150000 µW
    assert broken_row.energy_mj is None and broken_row.samples_skipped > 0
    assert set(sampler.skip_reasons()["broken"]) == {"a bug in a reader"}
