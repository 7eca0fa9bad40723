"""Fit answers: for every known device, does MODEL at QUANT fit, with the measured evidence.

Until predictions exist, a device with no measurement of the model gets the honest answer "unknown".
"""

import difflib

from fleetfit.v1 import fleetfit_pb2 as pb

MIB = 1024 * 1024


class UnknownModel(ValueError):
    """A model name that no device has measured and no catalogue knows."""


def check_model_known(model_name: str, known: set[str]) -> None:
    if model_name in known:
        return
    near = difflib.get_close_matches(model_name, sorted(known), n=3, cutoff=0.4)
    hint = f"; did you mean {', '.join(near)}?" if near else (f"; known: {', '.join(sorted(known))}" if known else "")
    raise UnknownModel(f"unknown model {model_name!r}{hint}")


def answer(device: pb.DeviceInventory, row: pb.LimitRow | None, min_decode_tps: float | None) -> pb.FitAnswer:
    out = pb.FitAnswer(device_id=device.device_id, hostname=device.hostname, ram_total_bytes=device.ram_total_bytes)
    if row is None:
        out.verdict, out.reason = "unknown", "never measured on this device (predictions are not available yet)"
        return out
    out.evidence.CopyFrom(row)
    if row.failure == pb.FAILURE_KIND_OOM:
        out.verdict, out.reason = "does_not_fit", f"measured: ran out of memory ({row.error})"
    elif row.failure:
        out.verdict, out.reason = "unknown", f"the measurement failed: {row.error}"
    elif row.peak_rss_bytes > device.ram_total_bytes:
        out.verdict = "does_not_fit"
        out.reason = (f"measured peak memory {row.peak_rss_bytes / MIB:.0f} MiB exceeds "
                      f"{device.ram_total_bytes / MIB:.0f} MiB of RAM")
    elif min_decode_tps is not None and row.decode_tokens_per_s.mean < min_decode_tps:
        out.verdict = "does_not_fit"
        out.reason = f"measured decode {row.decode_tokens_per_s.mean:.1f} tok/s is below the {min_decode_tps:g} asked"
    else:
        out.verdict = "fits"
        out.reason = (f"measured: peak {row.peak_rss_bytes / MIB:.0f} MiB of {device.ram_total_bytes / MIB:.0f} MiB "
                      f"RAM, decode {row.decode_tokens_per_s.mean:.1f} tok/s")
    return out


def fit(model_name: str, quant: str, backend: str, devices: list[pb.Device], rows: list[pb.LimitRow],
        min_decode_tps: float | None) -> list[pb.FitAnswer]:
    by_device = {r.device_id: r for r in rows if (r.model_name, r.quant, r.backend) == (model_name, quant, backend)}
    return [answer(d.inventory, by_device.get(d.inventory.device_id), min_decode_tps) for d in devices]
