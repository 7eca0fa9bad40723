"""Energy and roofline figures for one profile result, from the agent's side of the worker.

The sampler runs here, in the agent, never in the worker: the measured process stays clean. The
worker reports its phase windows on CLOCK_MONOTONIC (system-wide on Linux), which the sampler maps
onto its own samples; the idle baseline is taken just before the worker starts.
"""

import math
import os
import pathlib

from fleetfit.agent import device_probe
from fleetfit.agent.isolation import Deadline
from fleetfit.agent.telemetry import PhaseSummary, PowerSampler, discover_power_sources, joules_per_token
from fleetfit.agent.telemetry.sampler import IDLE
from fleetfit.models import roofline as rl
from fleetfit.v1 import fleetfit_pb2 as pb
from fleetfit.v1.words import BOTTLENECK, PROVENANCE

DEFAULT_IDLE_BASELINE_S = 2.0
MEASURED_PHASES = ("load", "prefill", "decode")  # the worker's "warmup" windows are left out


def idle_baseline_s(request: pb.ProfileRequest) -> float:
    """The request's, else FLEETFIT_IDLE_BASELINE_S, else 2 s."""
    if request.HasField("idle_baseline_s"):
        return request.idle_baseline_s
    return float(os.environ.get("FLEETFIT_IDLE_BASELINE_S", DEFAULT_IDLE_BASELINE_S))


def start_sampler(idle_s: float, deadline: Deadline | None = None) -> tuple[PowerSampler, list[str]]:
    """A running sampler over every readable source, its idle baseline already measured. The baseline is cut
    short (WorkerFailure, the sampler closed) when the job's deadline passes or the agent is asked to stop."""
    found = discover_power_sources()
    sampler = PowerSampler(found.sources).start()
    if idle_s > 0:
        try:
            sampler.mark(IDLE)  # as PowerSampler.measure_idle, with a wait that a stop request ends
            (deadline or Deadline.after(math.inf)).wait(idle_s, "idle baseline")
            sampler.end_phase()
        except BaseException:
            sampler.close()
            raise
    return sampler, [f"{d.method}: {d.reason}" for d in found.declined]


def phase_message(row: PhaseSummary, tokens: int) -> pb.PhaseEnergy:
    figures = {
        "energy_mj": row.energy_mj, "net_energy_mj": row.net_energy_mj, "idle_power_w": row.idle_power_w,
        "average_power_w": row.average_power_w, "peak_power_w": row.peak_power_w,
        "joules_per_token": joules_per_token(row.energy_mj, tokens),
        "net_joules_per_token": joules_per_token(row.net_energy_mj, tokens),
    }
    per_token = figures["joules_per_token"]
    figures["tokens_per_joule"] = 1 / per_token if per_token else None
    return pb.PhaseEnergy(
        phase=row.phase, source=row.source, scope=row.scope, method=row.method,
        provenance_kind=PROVENANCE.code(row.provenance),
        rate_hz=row.rate_hz, duration_s=row.duration_s, tokens=tokens, samples=row.samples,
        samples_skipped=row.samples_skipped, coverage=row.coverage, note=row.note,
        **{k: v for k, v in figures.items() if v is not None},  # absent, never 0
    )


def finish_sampler(sampler: PowerSampler, declined: list[str], idle_s: float, windows: list,
                   tokens: dict[str, int]) -> pb.PowerTelemetry:
    """Stop the sampler, map the worker's windows onto it, and summarise load, prefill and decode."""
    sampler.close()
    for phase, start_ns, end_ns in windows:
        if phase in MEASURED_PHASES:
            sampler.add_phase(phase, int(start_ns), int(end_ns))
    phases = [phase_message(row, tokens.get(row.phase, 0)) for row in sampler.summaries()]
    decode = [p for p in phases if p.phase == "decode" and p.HasField("energy_mj")]
    # The widest scope is the one that drew the most; sub-rails and domains are never added together.
    headline = max(decode, key=lambda p: p.energy_mj, default=phases[0] if phases else None)
    return pb.PowerTelemetry(
        phases=phases, headline_source=headline.source if headline else "",
        provenance_kind=headline.provenance_kind if headline else pb.PROVENANCE_KIND_UNSPECIFIED, idle_baseline_s=idle_s, rate_hz=sampler.rate_hz,
        declined=declined, warmup_excluded=True,
    )


def serving_energy(sampler: PowerSampler, power: pb.PowerTelemetry, windows: list,
                   tokens: dict[str, int]) -> dict[str, tuple[float, int]]:
    """Gross decode energy per token of each serving point, {phase: (J/token, ProvenanceKind)}, from the source the
    result's headline names (the same scope as its single-stream figures); `tokens`: the tokens each phase's
    windows decoded. A phase the source did not cover is left out. Call after finish_sampler."""
    for phase, start_ns, end_ns in windows:
        if phase in tokens:
            sampler.add_phase(phase, int(start_ns), int(end_ns))
    found = {}
    for row in sampler.summaries():
        if row.phase in tokens and row.source == power.headline_source:
            per_token = joules_per_token(row.energy_mj, tokens[row.phase])
            if per_token is not None:
                found[row.phase] = (per_token, PROVENANCE.code(row.provenance))
    return found


def roofline_message(model: pathlib.Path | rl.ModelShape, n_gen: int, decode_tokens_per_s: float | None,
                     probes: pb.DeviceProbes | None) -> pb.Roofline:
    """`model`: a GGUF path (its shape and bytes read from the file), or a shape (a backend's own weight bytes)."""
    shape = model if isinstance(model, rl.ModelShape) else rl.model_shape(model)
    context = rl.mean_decode_context(n_gen)
    bandwidth, peak = device_probe.cpu_bandwidth_and_peak(probes)
    point = rl.roofline(shape, context, decode_tokens_per_s, bandwidth.gb_per_s if bandwidth else None,
                        peak.gflop_per_s if peak else None)
    notes = []
    if bandwidth is None:
        notes.append("no measured CPU bandwidth (run fleetfit-agent probe)")
    if decode_tokens_per_s is None:
        notes.append("no decode measured")
    figures = {
        "achieved_gb_per_s": point.achieved_gb_per_s, "percent_of_bandwidth": point.percent_of_bandwidth,
        "device_bandwidth_gb_per_s": bandwidth.gb_per_s if bandwidth else None,
        "device_peak_gflop_per_s": peak.gflop_per_s if peak else None, "ridge_flop_per_byte": point.ridge_flop_per_byte,
    }
    return pb.Roofline(
        weight_bytes_per_token=point.weight_bytes_per_token, kv_cache_bytes_per_token=point.kv_cache_bytes_per_token,
        bytes_per_token=point.bytes_per_token, flops_per_token=point.flops_per_token,
        arithmetic_intensity_flop_per_byte=point.arithmetic_intensity, bottleneck_kind=BOTTLENECK.code(point.bottleneck or ""),
        mean_context_tokens=context, n_layers=shape.n_layers, n_kv_heads=shape.n_kv_heads, head_dim=shape.head_dim,
        method=rl.METHOD + (f"; bandwidth: {bandwidth.provenance.method}" if bandwidth else "")
               + (f"; compute roof: CPU float32 {peak.provenance.method}" if peak else ""),
        note="; ".join(notes), **{k: v for k, v in figures.items() if v is not None},
    )
