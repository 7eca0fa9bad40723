"""benchmarks/prediction_error.py --passes: each held-out error beside the same run's re-measurement error, and
issue 27's targets judged against them (on the committed ladder fixture, a second pass made from it)."""

import pathlib
import sys

from fleetfit.coordinator.predict import scaling
from fleetfit.v1 import fleetfit_pb2 as pb

sys.path.insert(0, str(pathlib.Path(__file__).parents[1] / "benchmarks"))
import prediction_error  # noqa: E402


def _again(r: pb.ProfileResult, factor: float) -> pb.ProfileResult:
    out = pb.ProfileResult()
    out.CopyFrom(r)
    for stat in (out.decode_tokens_per_s, out.prefill_tokens_per_s):
        stat.mean *= factor
        stat.samples[:] = [s * factor for s in stat.samples]
    return out


def test_errors_are_printed_beside_the_re_measurement_and_judged_against_it(capsys):
    results, devices = prediction_error.load_fixture()
    device_id = results[0].device_id
    ladder = {"distilgpt2", "llama-2-7b"}
    calibration = [r for r in results if r.model_name in ladder]
    dm = scaling.device_model(devices[0].inventory, calibration)
    held = [p for p in scaling.points(results, device_id) if p.model not in ladder]
    second = {(p.model, p.quant, p.depth): p for p in scaling.points([_again(r, 1.05) for r in results], device_id)}
    rows = prediction_error.compare(dm, held, second)
    assert rows and all(abs(row["decode"][5] - 0.05) < 1e-9 for row in rows)  # the second pass 5 % faster
    summary = prediction_error.print_table(rows)
    ok = prediction_error.against_repeatability(summary)
    out = capsys.readouterr().out
    assert "re-m" in out and "+5.0%" in out  # the noise-floor column
    assert "(target ≤ 10%)" in out and "re-measurement p90" in out and "(target ≥ 90%)" in out
    # the targets are judged, not assumed: a re-measurement of 5 % bounds p90 |error| at 6.25 %
    p90 = prediction_error.p90(summary["decode"]["errors"])
    assert ok is False or p90 <= 1.25 * 0.05 + 1e-9
    assert prediction_error.compare(dm, held)[0]["decode"][5] is None  # one pass: no re-measurement
