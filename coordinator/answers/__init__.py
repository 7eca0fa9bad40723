"""The coordinator's answers: fit's verdicts, the measured limit rows, the tables by family, the report and how
cells render — each a plain function of one snapshot of results and devices (fit.Snapshot). Answers read the
store only through what they are handed, never import service/, and never queue work (tests/test_layers.py)."""
