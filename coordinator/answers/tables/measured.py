"""The raw measurements: the measured limit rows, one per run shape, and the failed runs."""


from fleetfit.coordinator.answers import render
from fleetfit.coordinator.answers.limits import limit_rows, shape_matches
from fleetfit.coordinator.answers.tables.registry import (Fleet, TableData, shape_option, table)


@table("measured", "Measured limits: device × backend × model × precision × run shape")
def measured(fleet: Fleet, options: dict[str, str]) -> TableData:
    rows = limit_rows(fleet.results, fleet.devices)
    if "shape" in options:
        rows = [r for r in rows if shape_matches(r.shape, shape_option(options))]
    header, body = render.limit_table(rows)
    return TableData(header, body, ["every row is measured on the device it names (pp/tg as llama-bench), one row "
                                    "per run shape; failed runs are in `fleetfit limits failures`",
                                    "memory: GPU memory for GPU runs, else the worker's peak RSS"])


@table("failures", "Failed runs: what did not run, where, and why")
def failures(fleet: Fleet, options: dict[str, str]) -> TableData:
    rows = [[r.device_name, r.backend, r.model_name or None, r.quant or None, r.shape,
             render.FAILURES.get(r.failure, "error"), r.error, r.result_id]
            for r in limit_rows(fleet.results, fleet.devices, failures=True)]
    return TableData(["device", "backend", "model", "precision", "shape", "failure", "error", "result"], rows,
                     ["the latest failed run per device, backend, model, precision and shape; failures are never rows "
                      "of the measurement tables (an out-of-memory run shows there as 'does not fit')"])
