"""The measured limit table: device × model × quant × backend → peak memory, prefill, decode, TTFT."""

from fleetfit.v1 import fleetfit_pb2 as pb


def limit_rows(results: list[pb.ProfileResult], devices: list[pb.Device]) -> list[pb.LimitRow]:
    """One row per device, model, quant and backend: its latest result (a failure is a row too)."""
    hostnames = {d.inventory.device_id: d.inventory.hostname for d in devices}
    latest: dict[tuple, pb.ProfileResult] = {}
    for result in results:  # oldest first, so later results replace earlier ones
        key = (result.device_id, result.model_name, result.quant or result.request.quant, result.request.backend)
        latest[key] = result
    rows = []
    for (device_id, model_name, quant, backend), r in sorted(latest.items()):
        row = pb.LimitRow(
            device_id=device_id, hostname=hostnames.get(device_id, ""), model_name=model_name, quant=quant,
            backend=backend, model_file_bytes=r.model_file_bytes, prefill_tokens_per_s=r.prefill_tokens_per_s,
            decode_tokens_per_s=r.decode_tokens_per_s, ttft_ms=r.ttft_ms, n_prompt=r.n_prompt, n_gen=r.n_gen,
            threads=r.threads, result_id=r.result_id, provenance=r.provenance, failure=r.failure, error=r.error,
        )
        if r.HasField("model_n_params"):
            row.model_n_params = r.model_n_params
        if r.HasField("peak_rss_bytes"):
            row.peak_rss_bytes = r.peak_rss_bytes
        rows.append(row)
    return rows
