"""Quality beside speed: fleetfit-agent quality's results with the device's measured decode."""


from fleetfit.coordinator.answers.tables.registry import (Fleet, TableData, table)


@table("quality", "Quality beside speed: KL divergence from F16, perplexity and same top token, per precision")
def quality(fleet: Fleet, options: dict[str, str]) -> TableData:
    """The latest quality result per device, model and precision, with that device's measured decode speed of the
    same file (by sha256; of any file of that name for a row from before quality results named theirs)."""
    latest = {(q.device_id, q.model_name, q.quant): q for q in fleet.quality}
    decode = {(r.device_id, r.model_name, r.quant, digest): r.decode_tokens_per_s.mean
              for r in fleet.results if not r.failure and r.decode_tokens_per_s.mean for digest in ("", r.model_sha256)}
    rows = []
    for (device_id, model, quant), q in sorted(latest.items(), key=lambda kv: (kv[0][0], kv[0][1],
                                                                              -kv[1].kl_divergence_mean)):
        rows.append([fleet.name(device_id), model, quant, q.reference_quant,
                     round(q.kl_divergence_mean, 6), round(q.kl_divergence_stderr, 6), round(q.kl_divergence_p99, 5),
                     round(q.perplexity, 3), round(q.perplexity_stderr, 3), round(100 * q.same_top_token_fraction, 1),
                     q.context_tokens, q.n_positions, decode.get((device_id, model, quant, q.model_sha256)), q.result_id])
    return TableData(["device", "model", "precision", "reference", "mean KLD", "KLD stderr", "KLD p99", "perplexity",
                      "perplexity stderr", "same top token %", "context", "positions", "decode tok/s", "result"], rows,
                     ["measured by fleetfit-agent quality on the device it names: llama-perplexity --kl-divergence's "
                      "method (context-sized chunks, second half scored) against the reference precision; stderr: "
                      "the standard error of the mean over the scored positions",
                      "decode tok/s: the device's measured llama-bench-style decode of that file, when it has one"])
