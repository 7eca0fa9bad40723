"""Sample power sources on a thread, split the run into phases, and say what each phase cost.

Each source's readings become a series of covered segments with a power at each end: linear between
two power readings (the trapezoid rule), constant between two counter readings (the counter
difference over the time between). A segment exists only between two consecutive successful reads
(for counters: any two whose difference is known), so a failed read, a vanished file or a counter
that went backwards leaves a gap, and `coverage` says how much of a phase the segments cover.
"""

import bisect
import collections
import dataclasses
import math
import threading
import time
from collections.abc import Callable, Sequence

from fleetfit.agent.telemetry.source import EnergyReading, PowerReading, PowerSource, Reading, counter_delta

IDLE = "idle"
DEFAULT_RATE_HZ = 20.0
MW_NS_PER_MJ = 1e9  # 1 mW for 1 ns = 1e-12 J = 1e-9 mJ


@dataclasses.dataclass(frozen=True)
class Segment:
    start_ns: int
    end_ns: int
    start_mw: float
    end_mw: float

    def power_mw_at(self, t_ns: int) -> float:
        fraction = (t_ns - self.start_ns) / (self.end_ns - self.start_ns)
        return self.start_mw + (self.end_mw - self.start_mw) * fraction


@dataclasses.dataclass(frozen=True)
class WindowEnergy:
    """What one source's segments say about one time window."""

    window_ns: int
    covered_ns: int
    covered_energy_mj: float
    peak_mw: float | None
    samples: int
    skipped: int

    def __add__(self, other: "WindowEnergy") -> "WindowEnergy":
        peaks = [p for p in (self.peak_mw, other.peak_mw) if p is not None]
        return WindowEnergy(
            self.window_ns + other.window_ns, self.covered_ns + other.covered_ns,
            self.covered_energy_mj + other.covered_energy_mj, max(peaks, default=None),
            self.samples + other.samples, self.skipped + other.skipped,
        )

    @property
    def average_mw(self) -> float | None:
        return self.covered_energy_mj * MW_NS_PER_MJ / self.covered_ns if self.covered_ns else None


class EnergyTrack:
    """One source's readings turned into covered segments; skipped reads counted with their reason."""

    def __init__(self, counter_range_uj: int | None = None):
        self.counter_range_uj = counter_range_uj
        self.segments: list[Segment] = []
        self.read_ns: list[int] = []
        self.skipped_ns: list[int] = []
        self.skip_reasons: collections.Counter[str] = collections.Counter()
        self.last: Reading | None = None  # the last good reading, None after a failed one (for power)

    def skip(self, t_ns: int, reason: str) -> None:
        self.skipped_ns.append(t_ns)
        self.skip_reasons[reason] += 1
        if isinstance(self.last, PowerReading):
            self.last = None  # no trapezoid across a missing power sample

    def add(self, reading: Reading) -> None:
        last, self.last = self.last, reading
        if isinstance(reading, EnergyReading) and isinstance(last, EnergyReading):
            delta_uj = counter_delta(last.energy_uj, reading.energy_uj, self.counter_range_uj)
            if delta_uj is None:
                self.skip(reading.monotonic_ns, "energy counter went backwards")
                return
            if reading.monotonic_ns > last.monotonic_ns:
                power_mw = delta_uj * 1e6 / (reading.monotonic_ns - last.monotonic_ns)  # µJ/ns = 1e6 mW
                self.segments.append(Segment(last.monotonic_ns, reading.monotonic_ns, power_mw, power_mw))
        elif isinstance(reading, PowerReading) and isinstance(last, PowerReading):
            if reading.monotonic_ns > last.monotonic_ns:
                self.segments.append(Segment(last.monotonic_ns, reading.monotonic_ns, last.power_mw, reading.power_mw))
        self.read_ns.append(reading.monotonic_ns)

    def window(self, start_ns: int, end_ns: int) -> WindowEnergy:
        energy_mj, covered_ns, peak_mw = 0.0, 0, -math.inf
        first = bisect.bisect_right(self.segments, start_ns, key=lambda s: s.end_ns)
        for segment in self.segments[first:]:
            if segment.start_ns >= end_ns:
                break
            lo, hi = max(segment.start_ns, start_ns), min(segment.end_ns, end_ns)
            if hi <= lo:
                continue
            lo_mw, hi_mw = segment.power_mw_at(lo), segment.power_mw_at(hi)
            energy_mj += (lo_mw + hi_mw) / 2 * (hi - lo) / MW_NS_PER_MJ
            covered_ns += hi - lo
            peak_mw = max(peak_mw, lo_mw, hi_mw)
        return WindowEnergy(
            end_ns - start_ns, covered_ns, energy_mj, peak_mw if covered_ns else None,
            _count_between(self.read_ns, start_ns, end_ns), _count_between(self.skipped_ns, start_ns, end_ns),
        )


def _count_between(sorted_ns: list[int], start_ns: int, end_ns: int) -> int:
    return bisect.bisect_right(sorted_ns, end_ns) - bisect.bisect_left(sorted_ns, start_ns)


@dataclasses.dataclass(frozen=True)
class PhaseSummary:
    """One phase as one source saw it. A figure that could not be measured is None, never 0; `note` says why.

    energy_mj is gross: the energy over the covered part of the phase, scaled to the whole phase
    (coverage says how much was covered). net_energy_mj subtracts the idle baseline's power over
    the phase's duration.
    """

    phase: str
    source: str
    scope: str
    method: str
    provenance: str  # "measured" or "estimated"
    rate_hz: float
    duration_s: float
    energy_mj: float | None
    net_energy_mj: float | None
    idle_power_w: float | None
    average_power_w: float | None
    peak_power_w: float | None
    samples: int
    samples_skipped: int
    coverage: float
    note: str = ""


def joules_per_token(energy_mj: float | None, tokens: int) -> float | None:
    """Pass a summary's energy_mj (gross) or net_energy_mj; None when either is unknown or not positive."""
    if energy_mj is None or energy_mj <= 0 or tokens <= 0:
        return None
    return energy_mj / 1000 / tokens


def tokens_per_joule(energy_mj: float | None, tokens: int) -> float | None:
    per_token = joules_per_token(energy_mj, tokens)
    return 1 / per_token if per_token is not None else None


class PowerSampler:
    """Polls every source on one thread at `rate_hz` (each source at most at its own max_rate_hz).

    with PowerSampler(sources) as sampler:
        sampler.measure_idle(2.0)
        sampler.mark("load"); ...; sampler.mark("prefill"); ...; sampler.mark("decode"); ...
    sampler.summaries()
    """

    def __init__(self, sources: Sequence[PowerSource], rate_hz: float = DEFAULT_RATE_HZ, clock: Callable[[], int] = time.monotonic_ns):
        if rate_hz <= 0:
            raise ValueError(f"rate_hz must be positive, got {rate_hz}")
        self.sources, self.rate_hz, self.clock = list(sources), rate_hz, clock
        # A source slower than the sampler is read every n-th tick.
        self.every_ticks = [max(1, math.ceil(rate_hz / source.max_rate_hz)) for source in self.sources]
        self.tracks = [EnergyTrack(source.counter_range_uj) for source in self.sources]
        self.phases: list[tuple[str, int, int | None]] = []
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.thread: threading.Thread | None = None

    def source_rate_hz(self, index: int) -> float:
        return self.rate_hz / self.every_ticks[index]

    # -- sampling --------------------------------------------------------------------------

    def sample_once(self, tick: int = 0) -> None:
        """Read every source due at this tick (all of them at tick 0)."""
        for source, every, track in zip(self.sources, self.every_ticks, self.tracks):
            if tick % every:
                continue
            try:
                reading = source.read()
            except Exception as exc:  # noqa: BLE001 - a failing sensor must never end the measurement
                with self.lock:
                    track.skip(self.clock(), str(exc) or type(exc).__name__)
            else:
                with self.lock:
                    track.add(reading)

    def _run(self) -> None:
        interval_ns = round(1e9 / self.rate_hz)
        start_ns, tick = self.clock(), 0
        while True:
            self.sample_once(tick)
            # Deadlines from the start, not from the last read: no drift; ticks missed are skipped.
            tick = max(tick + 1, (self.clock() - start_ns) // interval_ns + 1)
            if self.stopping.wait(max(0, start_ns + tick * interval_ns - self.clock()) / 1e9):
                self.sample_once()  # a last reading so the final phase is covered up to stop()
                return

    def start(self) -> "PowerSampler":
        self.stopping.clear()
        self.thread = threading.Thread(target=self._run, name="fleetfit-power-sampler", daemon=True)
        self.thread.start()
        return self

    def stop(self) -> None:
        if self.thread is not None:
            self.stopping.set()
            self.thread.join()
            self.thread = None
        self.end_phase()

    def __enter__(self) -> "PowerSampler":
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    # -- phases ----------------------------------------------------------------------------

    def end_phase(self) -> None:
        with self.lock:
            if self.phases and self.phases[-1][2] is None:
                name, start_ns, _ = self.phases[-1]
                self.phases[-1] = (name, start_ns, self.clock())

    def mark(self, phase: str) -> None:
        """End the current phase, if any, and start `phase` (e.g. "load", "prefill", "decode")."""
        self.end_phase()
        with self.lock:
            self.phases.append((phase, self.clock(), None))

    def add_phase(self, phase: str, start_ns: int, end_ns: int) -> None:
        """Record a window timed elsewhere on the same clock (e.g. by a worker process, on CLOCK_MONOTONIC).

        A phase may have several windows (one per repetition): its figures are summed over them.
        """
        if end_ns < start_ns:
            raise ValueError(f"phase {phase!r} ends before it starts ({start_ns} > {end_ns})")
        with self.lock:
            self.phases.append((phase, start_ns, end_ns))

    def measure_idle(self, seconds: float) -> None:
        """Record the idle baseline: the sampler must be running and the device left alone."""
        if self.thread is None:
            raise RuntimeError("start the sampler before measuring the idle baseline")
        self.mark(IDLE)
        time.sleep(seconds)
        self.end_phase()

    # -- results ---------------------------------------------------------------------------

    def _phase_energy(self, track: EnergyTrack, phase: str) -> WindowEnergy | None:
        windows = [track.window(start, end) for name, start, end in self.phases if name == phase and end is not None]
        return sum(windows[1:], windows[0]) if windows else None

    def summaries(self) -> list[PhaseSummary]:
        """One row per (phase, source), phases in the order first marked; the idle baseline is in every row."""
        phase_names = list(dict.fromkeys(name for name, _, end in self.phases if name != IDLE and end is not None))
        rows = []
        with self.lock:
            for index, (source, track) in enumerate(zip(self.sources, self.tracks)):
                idle = self._phase_energy(track, IDLE)
                idle_mw = idle.average_mw if idle else None
                for phase in phase_names:
                    rows.append(self._summary(phase, source, self.source_rate_hz(index), self._phase_energy(track, phase), idle_mw))
        return rows

    @staticmethod
    def _summary(phase: str, source: PowerSource, rate_hz: float, seen: WindowEnergy, idle_mw: float | None) -> PhaseSummary:
        average_mw = seen.average_mw
        energy_mj = average_mw * seen.window_ns / MW_NS_PER_MJ if average_mw is not None else None
        net_mj = energy_mj - idle_mw * seen.window_ns / MW_NS_PER_MJ if energy_mj is not None and idle_mw is not None else None
        notes = []
        if energy_mj is None:
            notes.append(f"no two consecutive valid samples in this phase ({seen.skipped} skipped)")
        if idle_mw is None:
            notes.append("no idle baseline measured")
        return PhaseSummary(
            phase=phase, source=source.name, scope=source.scope, method=source.method, provenance=source.provenance,
            rate_hz=rate_hz, duration_s=seen.window_ns / 1e9,
            energy_mj=energy_mj, net_energy_mj=net_mj,
            idle_power_w=idle_mw / 1000 if idle_mw is not None else None,
            average_power_w=average_mw / 1000 if average_mw is not None else None,
            peak_power_w=seen.peak_mw / 1000 if seen.peak_mw is not None else None,
            samples=seen.samples, samples_skipped=seen.skipped,
            coverage=seen.covered_ns / seen.window_ns if seen.window_ns else 0.0,
            note="; ".join(notes),
        )

    def skip_reasons(self) -> dict[str, collections.Counter]:
        """Why reads were skipped, per source name: what a user needs to fix a sensor."""
        with self.lock:
            return {source.name: collections.Counter(track.skip_reasons) for source, track in zip(self.sources, self.tracks)}

    def close(self) -> None:
        """Stop and release every source (NVML references)."""
        self.stop()
        for source in self.sources:
            source.close()
