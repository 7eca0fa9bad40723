"""Terminal output for profile results, in llama-bench's markdown shape."""

from fleetfit.agent.profiling import failure_name
from fleetfit.v1 import fleetfit_pb2 as pb

MIB = 1024 * 1024


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
        lines.append(f"{r.repetitions} repetitions after 1 warm-up; {r.provenance.kind}: {r.provenance.method}. "
                     f"Memory: {r.memory_method or 'not measured'}.")
    return "\n".join(lines)
