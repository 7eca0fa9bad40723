"""Efficiencies learned across the fleet, for devices that have only their probes.

A calibrated device's efficiency is its fitted effective rate (coordinator/predict/scaling.py: bandwidth B_q for decode,
FLOP rate F_q for prefill) divided by its own probe (triad bandwidth, matmul peak). A device never profiled
borrows the median efficiency of the calibrated devices of its kind, narrowest kind first:
- GPU model (the first GPU's name), then GPU vendor (the name's first word);
- without a GPU: CPU / SoC model (cpu_model: x86 'model name', an ARM board's 'Model'), then its family (vendor
  and line, e.g. 'AMD EPYC', 'Intel Xeon'),
and falls back to scaling's fixed defaults when no kind has MIN_DEVICES such devices. Efficiencies outside
EFFICIENCY_RANGE are ignored (a device reporting absurd figures must not drag the others' estimates), and the
median keeps one odd device within the range from moving the value far. The estimate's band is how far the
devices it rests on spread from that median (largest relative deviation), never narrower than their median
repeatability (scaling.DeviceModel.noise) nor scaling.MIN_BAND. Their fitted cost per layer and token
(graph ops, thread barriers: what makes small models slower per byte) comes along, as the median of theirs.
"""

import dataclasses
import re
import statistics
from collections.abc import Callable

from fleetfit.coordinator.predict import scaling
from fleetfit.v1 import fleetfit_pb2 as pb

MIN_DEVICES = 2  # calibrated devices of a kind needed before their efficiency is trusted
EFFICIENCY_RANGE = (0.02, 2.0)  # of the probe; outside it a device's figures are not believed
RATES = {"bandwidth": "the bandwidth probe", "compute": "the matmul probe"}


def _clean(text: str) -> str:
    return " ".join(re.sub(r"\((R|TM|tm|r)\)|\bCPU\b|@.*$", " ", text).split())


def kinds(device: pb.DeviceInventory) -> list[tuple[str, str]]:
    """The device's kinds, narrowest first, as (what, name): ('GPU', 'NVIDIA H100 80GB HBM3'), ('GPU vendor',
    'NVIDIA'), or ('CPU/SoC', 'AMD EPYC 7B13 64-Core Processor'), ('CPU family', 'AMD EPYC'). Empty names are
    left out: an inventory that says nothing has no kind."""
    if device.gpus and device.gpus[0].name.strip():
        name = " ".join(device.gpus[0].name.split())
        return [("GPU", name), ("GPU vendor", name.split()[0])]
    model = _clean(device.cpu_model)
    if not model or model.lower() == "unknown":
        return []
    words = model.split()
    return [("CPU/SoC", model)] + ([("CPU family", " ".join(words[:2]))] if len(words) > 2 else [])


@dataclasses.dataclass
class FleetPriors:
    """The fleet's devices (with their result counts) and a way to read one device's results. Device models of
    peers are built only when a never-profiled device of their kind asks, then kept."""
    devices: list[pb.Device]
    results_of: Callable[[str], list[pb.ProfileResult]]

    def __post_init__(self):
        self._models: dict[tuple[str, str], scaling.DeviceModel] = {}
        self._of_kind: dict[tuple[str, str], list[pb.Device]] = {}
        for d in self.devices:
            if d.inventory.probes.ListFields():
                for kind in kinds(d.inventory):
                    self._of_kind.setdefault(kind, []).append(d)

    @classmethod
    def of_results(cls, devices: list[pb.Device], results: list[pb.ProfileResult]) -> "FleetPriors":
        by_device: dict[str, list[pb.ProfileResult]] = {}
        for r in results:
            by_device.setdefault(r.device_id, []).append(r)
        return cls(devices, lambda i: by_device.get(i, []))

    def _peers(self, device: pb.DeviceInventory, kind: tuple[str, str]) -> list[pb.Device]:
        return [d for d in self._of_kind.get(kind, []) if d.inventory.device_id != device.device_id]

    def version(self, device: pb.DeviceInventory) -> tuple:
        """What the device's priors depend on (its peers and their result counts): a cache key."""
        found = {d.inventory.device_id: d.results for k in kinds(device) for d in self._peers(device, k)}
        return tuple(sorted(found.items()))

    def _model(self, peer: pb.Device, backend: str) -> scaling.DeviceModel:
        key = (peer.inventory.device_id, backend)
        if key not in self._models:
            self._models[key] = scaling.device_model(peer.inventory, self.results_of(key[0]), backend)
        return self._models[key]

    def _efficiencies(self, device: pb.DeviceInventory, kind: tuple[str, str], backend: str, rate: str,
                      quant: str) -> tuple[list[float], list[float], int, set[str], list[float]]:
        """The peers' efficiencies in range, their costs per layer, how many were out of range, the precisions
        they came from, and their noise floors (0 where unknown)."""
        found, layer_s, outside, used, noise = [], [], 0, set(), []
        for peer in self._peers(device, kind):
            dm = self._model(peer, backend)
            if dm.calibration is None:
                continue
            probe = dm.bandwidth_probe if rate == "bandwidth" else dm.matmul_probe
            value, q = dm.calibration.rate(getattr(dm.calibration, rate), quant, backend)
            if not probe or not value:
                continue
            if EFFICIENCY_RANGE[0] <= value / probe <= EFFICIENCY_RANGE[1]:
                found.append(value / probe)
                noise.append(dm.noise["decode" if rate == "bandwidth" else "prefill"] or 0.0)
                layer_s.append(dm.calibration.decode_layer_s if rate == "bandwidth" else dm.calibration.prefill_layer_s)
                used.add(q)
            else:
                outside += 1
        return found, layer_s, outside, used, noise

    def efficiency(self, device: pb.DeviceInventory, backend: str, rate: str, quant: str) -> scaling.Efficiency:
        """The efficiency (fraction of the device's `rate` probe) a never-profiled device is estimated to reach
        with `backend` at `quant`, learned from its kind, or the fixed default; it says which."""
        tried = []
        for kind in kinds(device):
            found, layer_s, outside, used, noise = self._efficiencies(device, kind, backend, rate, quant)
            if len(found) < MIN_DEVICES:
                tried.append(f"{len(found)} calibrated {kind[0]} {kind[1]!r}")
                continue
            median = statistics.median(found)
            # how far they spread, but never narrower than their own repeatability (two devices agreeing is no ±0 %)
            spread = max(max(abs(e - median) for e in found),
                         median * max(statistics.median(noise), scaling.MIN_BAND))
            precision = quant if used == {quant} else f"{quant} (nearest measured: {', '.join(sorted(used))})"
            ignored = (f"; {outside} device(s) outside {EFFICIENCY_RANGE[0]:g}..{EFFICIENCY_RANGE[1]:g} of their "
                       f"probe ignored" if outside else "")
            per_layer = statistics.median(layer_s)
            return scaling.Efficiency(
                median, f"estimated from {len(found)} calibrated {backend} devices of kind {kind[0]} {kind[1]!r}, "
                        f"efficiency {median:.2f} ± {spread:.2f} of {RATES[rate]} at {precision} + "
                        f"{per_layer * 1e3:.2f} ms per layer (median of theirs){ignored}",
                spread / median, per_layer)
        default = scaling.default_efficiency(rate)
        why = f"fewer than {MIN_DEVICES} of its kind ({'; '.join(tried)})" if tried else "its kind unknown"
        return dataclasses.replace(default, how=f"{default.how} ({why})")

    def for_device(self, device: pb.DeviceInventory, backend: str) -> Callable[[str, str], scaling.Efficiency]:
        """scaling.device_model's `priors`: (rate, quant) -> Efficiency for this device and backend."""
        return lambda rate, quant: self.efficiency(device, backend, rate, quant)
