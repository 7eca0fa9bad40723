"""The measured limit table: device × backend × model × precision × run shape → memory, prefill, decode, TTFT.

Runs are comparable only within one shape (prompt and generated tokens, context, threads, batch sizes, compute
device), so the shape is part of each row's key. Failed runs are not measurements: they go to the failures
view (`failures`), never into these rows.
"""

from fleetfit.coordinator.answers.devices import display_names
from fleetfit.coordinator.predict.runs import backend_of, memory_figure, quant_of, run_shape
from fleetfit.v1 import fleetfit_pb2 as pb

DEFAULT_SHAPE = "pp512/tg128"  # llama-bench's default tests


def row_key(r: pb.ProfileResult) -> tuple:
    return (r.device_id, backend_of(r), r.model_name, quant_of(r), run_shape(r))


def limit_row(r: pb.ProfileResult, device_name: str = "", hostname: str = "") -> pb.LimitRow:
    row = pb.LimitRow(
        device_id=r.device_id, hostname=hostname, device_name=device_name or hostname or r.device_id,
        model_name=r.model_name, quant=quant_of(r), backend=backend_of(r), model_file_bytes=r.model_file_bytes,
        prefill_tokens_per_s=r.prefill_tokens_per_s, decode_tokens_per_s=r.decode_tokens_per_s, ttft_ms=r.ttft_ms,
        n_prompt=r.n_prompt, n_gen=r.n_gen, threads=r.threads, result_id=r.result_id, provenance=r.provenance,
        failure=r.failure, error=r.error, shape=run_shape(r), compute_device=r.compute_device or "cpu",
    )
    if r.HasField("model_n_params"):
        row.model_n_params = r.model_n_params
    if r.HasField("peak_rss_bytes"):
        row.peak_rss_bytes = r.peak_rss_bytes
    memory, how = memory_figure(r)
    if memory is not None:
        row.memory_bytes = memory
    row.memory_method = how
    return row


def latest(results: list[pb.ProfileResult], failures: bool = False) -> dict[tuple, pb.ProfileResult]:
    """The latest result per row key (results come oldest first): successes, or with `failures` failed runs."""
    found: dict[tuple, pb.ProfileResult] = {}
    for r in results:
        if bool(r.failure) == failures:
            found[row_key(r)] = r
    return found


def limit_rows(results: list[pb.ProfileResult], devices: list[pb.Device], failures: bool = False) -> list[pb.LimitRow]:
    """One row per device, backend, model, precision and shape: its latest successful run (or failed, with
    `failures`). Sorted by device id, then backend, model, precision and shape."""
    names = display_names(devices)
    hosts = {d.inventory.device_id: d.inventory.hostname for d in devices}
    return [limit_row(r, names.get(key[0], ""), hosts.get(key[0], ""))
            for key, r in sorted(latest(results, failures).items())]


def shape_matches(shape: str, wanted: str) -> bool:
    """Whether a full shape string matches `wanted`, given as its leading words (e.g. "pp512/tg128" or
    "pp512/tg128 ctx640 t2")."""
    return shape.split()[:len(wanted.split())] == wanted.split()


def chosen_shapes(rows: list[pb.LimitRow], wanted: str = DEFAULT_SHAPE) -> dict[tuple[str, str], str]:
    """Per (device, backend): the one shape its table cells come from — the shape matching `wanted` with the most
    rows, else (nothing measured at `wanted` there) the shape with the most rows."""
    counts: dict[tuple[str, str], dict[str, int]] = {}
    for r in rows:
        per = counts.setdefault((r.device_id, r.backend), {})
        per[r.shape] = per.get(r.shape, 0) + 1
    chosen = {}
    for key, per in counts.items():
        matching = {s: n for s, n in per.items() if shape_matches(s, wanted)}
        pool = matching or per
        chosen[key] = max(sorted(pool), key=pool.get)
    return chosen


def comparable(rows: list[pb.LimitRow], wanted: str = DEFAULT_SHAPE) -> list[pb.LimitRow]:
    """The rows of each device and backend that share its chosen shape (see chosen_shapes)."""
    chosen = chosen_shapes(rows, wanted)
    return [r for r in rows if chosen[(r.device_id, r.backend)] == r.shape]
