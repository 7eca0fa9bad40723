"""Terminal output for profile results, in llama-bench's markdown shape."""

from fleetfit.agent.profiling import failure_name
from fleetfit.models.cli_common import clean
from fleetfit.v1 import fleetfit_pb2 as pb
from fleetfit.v1.words import BOTTLENECK, PROVENANCE

ESTIMATED = pb.PROVENANCE_KIND_ESTIMATED

MIB = 1024 * 1024


def _text(lines: list[str]) -> str:
    """The lines for a terminal: a file's name, a worker's error, a power source's words escaped (one rule for
    both command lines, cli_common.clean), so no cell splits a row or sends a control."""
    return "\n".join(clean(line) for line in lines)


def _stat(stat: pb.Stat, digits: int = 2) -> str:
    return f"{stat.mean:.{digits}f} ± {stat.stdev:.{digits}f}"


def markdown(results: list[pb.ProfileResult]) -> str:
    lines = [
        "| model | quant | size | params | backend | threads | test | t/s | TTFT ms | peak RSS | load s |",
        "| --- | --- | ---: | ---: | --- | ---: | --- | ---: | ---: | ---: | ---: |",
    ]
    for r in results:
        head = (f"| {r.model_name} | {r.quant} | {r.model_file_bytes / MIB:.1f} MiB | "
                f"{r.model_n_params / 1e6:.2f} M | {r.request.backend} | {r.threads} |")
        if r.failure:
            lines.append(f"{head} failed ({failure_name(r.failure)}) | {r.error} | | | |")
            continue
        peak = f"{r.peak_rss_bytes / MIB:.1f} MiB" if r.HasField("peak_rss_bytes") else "unsupported"
        lines.append(f"{head} pp{r.n_prompt} | {_stat(r.prefill_tokens_per_s)} | {_stat(r.ttft_ms, 1)} | "
                     f"{peak} | {r.load_time_s:.2f} |")
        lines.append(f"{head} tg{r.n_gen} | {_stat(r.decode_tokens_per_s)} | | | |")
    if results:
        r = results[0]
        lines.append("")
        lines.append(f"{r.repetitions} repetitions after 1 warm-up; {PROVENANCE.word(r.provenance.provenance_kind)}: {r.provenance.method}. "
                     f"Memory: {r.memory_method or 'not measured'}.")
    swept = [r for r in results if r.serving]
    if swept:
        lines += ["", serving_markdown(swept)]
    measured = [r for r in results if r.HasField("power") or r.HasField("roofline")]
    if measured:
        lines += ["", energy_markdown(measured), "", roofline_markdown(measured)]
    return _text(lines)


def serving_markdown(results: list[pb.ProfileResult]) -> str:
    """The concurrency sweep: one row per N streams decoded together."""
    lines = [
        "| model | quant | streams | aggregate t/s | per stream t/s | prefill t/s | TTFT p50 ms | TTFT p99 ms | "
        "peak RSS | J/token |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in results:
        for p in r.serving:
            head = f"| {r.model_name} | {r.quant} | {p.parallel} |"
            if p.unsupported_reason:
                lines.append(f"{head} unsupported: {p.unsupported_reason} | | | | | | |")
                continue
            energy = _num(p, "decode_energy_per_token_j", 4) + (" ESTIMATED" if p.energy_provenance_kind == ESTIMATED
                                                                else "")
            lines.append(f"{head} {_stat(p.aggregate_decode_tokens_per_s)} | {_stat(p.per_stream_decode_tokens_per_s)} | "
                         f"{_stat(p.prefill_tokens_per_s)} | {_stat(p.ttft_ms_p50, 1)} | {_stat(p.ttft_ms_p99, 1)} | "
                         f"{p.peak_memory_bytes.mean / MIB:.1f} MiB | {energy} |")
    lines.append("")
    lines.append(f"N streams decoded together after the single-stream run: N prompts of pp{results[0].n_prompt}, then "
                 f"tg{results[0].n_gen} steps of one token per stream (llama.cpp: one llama_decode per step, as "
                 "llama-batched-bench; torch, onnxruntime: a batch of N); TTFT across the streams; J/token: the "
                 "decode's gross energy over the tokens of all streams.")
    return _text(lines)


def _num(message, field: str, digits: int = 2) -> str:
    return f"{getattr(message, field):.{digits}f}" if message.HasField(field) else "n/a"


def energy_markdown(results: list[pb.ProfileResult]) -> str:
    """Energy per phase and source; an estimate says so in every row."""
    lines = [
        "| model | quant | phase | source | provenance | energy mJ | net mJ | avg W | peak W | idle W | J/token | "
        "tokens/J | coverage | samples (skipped) |",
        "| --- | --- | --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in results:
        for p in r.power.phases:
            provenance = PROVENANCE.word(p.provenance_kind)
            provenance = provenance.upper() if p.provenance_kind == ESTIMATED else provenance
            lines.append(
                f"| {r.model_name} | {r.quant} | {p.phase} | {p.source} | {provenance} ({p.method}, {p.rate_hz:g} Hz) | "
                f"{_num(p, 'energy_mj', 1)} | {_num(p, 'net_energy_mj', 1)} | {_num(p, 'average_power_w')} | "
                f"{_num(p, 'peak_power_w')} | {_num(p, 'idle_power_w')} | {_num(p, 'joules_per_token', 4)} | "
                f"{_num(p, 'tokens_per_joule')} | {100 * p.coverage:.0f}% | {p.samples} ({p.samples_skipped}) |")
    power = results[0].power
    lines.append("")
    lines.append(f"Idle baseline {power.idle_baseline_s:g} s before the run, net = gross minus idle power over the "
                 f"phase; warm-up excluded. Sources that declined: {'; '.join(power.declined) or 'none'}.")
    if any(r.power.provenance_kind == ESTIMATED for r in results):
        lines.append("ESTIMATED: no power sensor is readable here; watts are CPU utilization x a per-CPU-class "
                     "power model, not a measurement.")
    return _text(lines)


def roofline_markdown(results: list[pb.ProfileResult]) -> str:
    lines = [
        "| model | quant | MB/token | decode t/s | achieved GB/s | device GB/s | % of bandwidth | FLOP/byte | bottleneck |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in results:
        rl = r.roofline
        lines.append(
            f"| {r.model_name} | {r.quant} | {rl.bytes_per_token / 1e6:.1f} | {r.decode_tokens_per_s.mean:.2f} | "
            f"{_num(rl, 'achieved_gb_per_s')} | {_num(rl, 'device_bandwidth_gb_per_s')} | "
            f"{_num(rl, 'percent_of_bandwidth', 1)} | {_num(rl, 'arithmetic_intensity_flop_per_byte')} | "
            f"{BOTTLENECK.word(rl.bottleneck_kind) or 'n/a'} |")
    lines.append("")
    lines.append(f"Roofline: {results[0].roofline.method}." + (f" {results[0].roofline.note}." if results[0].roofline.note else ""))
    return _text(lines)
