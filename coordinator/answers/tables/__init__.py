"""The coordinator's tables, by name: each a plain function of one snapshot of the fleet's results and devices
(fit.Snapshot), registered with @table (registry.py) by family — measured rows and failures, the model-size tables
(memory, speed, capacity), power and energy, deployment and recommendations, serving, quality.

`fleetfit limits NAME` and the GetTable RPC serve every registered table; `limits all` and the report build theirs
from one snapshot (build_many). The family modules are imported here in the order the tables are listed.
"""

from fleetfit.coordinator.answers.tables import measured, sizes, power, deployment, serving, quality  # noqa: F401
from fleetfit.coordinator.answers.tables.registry import (TABLES, Fleet, TableData, TableError, TableSpec, build,
                                                          build_from_store, build_many, cell_text, checked_shapes,
                                                          render_table, table, typed_cell)
from fleetfit.coordinator.answers.tables.serving import serving_models

__all__ = ["TABLES", "Fleet", "TableData", "TableError", "TableSpec", "build", "build_from_store", "build_many",
           "cell_text", "checked_shapes", "render_table", "table", "typed_cell", "serving_models", "SEED_ORDER",
           "REPORT_ORDER"]


# `fleetfit limits all`: the seed's tables in the seed's order, then the raw measurements
SEED_ORDER = ("memory", "speed", "bandwidth", "capacity", "power", "energy-cost", "serving", "deployment",
              "recommendations", "measured", "serving-curves", "failures")
REPORT_ORDER = (*SEED_ORDER, "quality")  # `fleetfit report`: the seed's tables and the quality table
