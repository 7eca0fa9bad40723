"""The ranges no real device's figure can leave, stated once: the coordinator refuses a report with a figure
outside them (coordinator/service/ingest.py check_result, check_quality, check_inventory) and drops such a figure where
answers read stored rows (ingest.usable), so a row stored before a bound existed cannot break an answer either.

A figure's range is found by its field's name: the unit suffix (first match wins, so "_unix_s" and "tokens_per_s"
come before "_s"), or the whole name. Each range is (floor, ceiling) for the figure's magnitude: zero stays a
figure's "none" (a field without presence, an absent Stat), but any other value is at least the floor, so nothing
that divides by a figure can meet a subnormal (5e-324 tok/s made every fleet-wide answer divide by zero). Net
energies are differences (gross minus the idle baseline) and may be negative or near zero: nothing divides by
them, so they have no floor.
"""

import functools

from fleetfit.models.job_bounds import BOUNDS, MAX_CONTEXT_TOKENS, MAX_PARALLEL, MAX_SWEEP_KV_TOKENS

DAY_S = BOUNDS["timeout_s"][1]  # the longest job deadline: no run of one job is measured for longer
CONTEXT_CEILING = MAX_SWEEP_KV_TOKENS + 256 * MAX_PARALLEL  # tokens of the largest run's context, rounded up

# (suffix or name, floor, ceiling), first match wins
RANGES: tuple[tuple[str, float, float], ...] = (
    # 1 s after 1970 (a board without a clock still counts from there) to the year 2286
    ("_unix_s", 1.0, 1e10),
    # floor: one token in the longest job deadline (a slower run cannot finish a job); ceiling: far above any
    # device (a 135M model's prefill on an H100 runs ~1e5..1e6 tok/s; 256 streams of it aggregate below 1e7)
    ("tokens_per_s", 1 / DAY_S, 1e7),
    # memory bandwidth: 1 MB/s is below an SD card; 100 TB/s is above an on-chip cache of any CPU or GPU today
    ("gb_per_s", 1e-3, 1e5),
    # compute: 1 MFLOP/s is below a microcontroller; 100 PFLOP/s is above any single accelerator
    ("gflop_per_s", 1e-3, 1e8),
    ("flops_per_token", 1.0, 1e15),          # 2 x 1e13 parameters plus attention, with room
    ("_flop_per_byte", 0.0, 1e6),            # arithmetic intensity and ridge: a ratio, not divided by
    ("_bytes", 1.0, 2.0**50),                # one byte to a pebibyte
    ("bytes_per_token", 1.0, 2.0**50),
    # times in ms (TTFT): a microsecond is below one graph evaluation; the longest job deadline
    ("_ms", 1e-3, DAY_S * 1e3), ("_ms_p50", 1e-3, DAY_S * 1e3), ("_ms_p99", 1e-3, DAY_S * 1e3),
    ("_s", 1e-6, DAY_S),                     # a microsecond (the clocks' resolution) to the job deadline
    ("net_energy_mj", 0.0, 1e12),            # net of the idle baseline: a difference (signed, no floor)
    ("_mj", 1e-6, 1e12),                     # a nanojoule to 10 kW for 27 hours
    ("_w", 1e-4, 1e5),                       # a tenth of a milliwatt (a sensor rail) to 100 kW (a rack)
    ("net_joules_per_token", 0.0, 1e6),      # a difference, as net_energy_mj
    ("joules_per_token", 1e-9, 1e6),         # a nanojoule per token to 10 kW for 100 s per token
    ("_per_token_j", 1e-9, 1e6),
    ("tokens_per_joule", 1e-6, 1e9),         # the reciprocal of the above
    ("_hz", 1e-3, 1e6),                      # sampling rates
    ("_params", 1.0, 1e13),
    ("coverage", 0.0, 1.0),                  # a fraction of the phase
    ("percent_of_bandwidth", 0.0, 1e4),      # above 100 % only when the weights sit in a cache
    ("mean_context_tokens", 0.0, 2.0 * MAX_CONTEXT_TOKENS),
    # a run's context, in tokens (scaling and serving size the KV cache by them): a prompt and a generation within
    # a job's bounds, a depth within one stream's context, and the context a run allocated (n_ctx; n_batch and
    # n_ubatch are at most it) within a sweep's KV cache for all its streams, each rounded up to 256-token blocks
    ("n_prompt", 1.0, BOUNDS["n_prompt"][1]), ("n_gen", 1.0, BOUNDS["n_gen"][1]),
    ("_depth", 1.0, BOUNDS["decode_depth"][1]),
    ("n_ctx", 1.0, CONTEXT_CEILING), ("n_batch", 1.0, CONTEXT_CEILING), ("n_ubatch", 1.0, CONTEXT_CEILING),
    ("context_tokens", 1.0, float(1 << 20)),  # a quality run's context (llama-perplexity -c)
    # quality: the mean KL divergence (nats) of a quant whose outputs bear no relation to its reference's is a few
    # to tens, one position's (p99) up to hundreds; a perplexity is at least 1 (the exponential of a mean negative
    # log-likelihood) and, for any model worth measuring, far below 1e7 (a uniform guess over 256k tokens: 2.6e5)
    ("kl_divergence_mean", 0.0, 100.0), ("kl_divergence_p99", 0.0, 1000.0), ("kl_divergence_stderr", 0.0, 100.0),
    ("perplexity", 1.0, 1e7), ("perplexity_stderr", 0.0, 1e7),
    ("same_top_token_fraction", 0.0, 1.0),
)
# a mean KL divergence this little below 0 is the rounding of a quant against itself (F32 sums), accepted as 0
KLD_ROUNDING = 1e-3
DEFAULT = (0.0, 1e15)  # counters and anything else (tokens, positions, threads, ...)


@functools.lru_cache(maxsize=4096)  # asked per figure of every stored result an answer reads; names are few
def bounds(name: str) -> tuple[float, float]:
    """(floor, ceiling) of a figure's magnitude, by its field's name."""
    return next(((low, high) for key, low, high in RANGES if name.endswith(key)), DEFAULT)


def outside(name: str, value: float) -> str | None:
    """Why `value` is no figure for the field `name` ("is 5e-324: below the floor of ..."), or None when it is
    zero or its magnitude lies within the field's range. Finiteness and sign are the caller's (ingest) rules."""
    low, high = bounds(name)
    magnitude = abs(value)
    if magnitude > high:
        return f"is {value:g}: above the ceiling of {high:g} for a {name} figure"
    if 0 < magnitude < low:
        return f"is {value:g}: below the floor of {low:g} for a {name} figure (no device measures that)"
    return None
