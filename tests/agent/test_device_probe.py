import pytest

from fleetfit.agent import device_probe
from fleetfit.v1.words import PROVENANCE

SMALL = dict(runs=2, array_bytes=8 << 20, matmul_n=128)


def test_cpu_probes_are_measured_and_say_how(tmp_path):
    probes = device_probe.probes(tmp_path, **SMALL)
    cpu, gpu = probes.bandwidth[0], probes.bandwidth[-1]
    assert cpu.target == "cpu" and cpu.gb_per_s == max(cpu.samples_gb_per_s) > 0 and len(cpu.samples_gb_per_s) == 2
    assert PROVENANCE.word(cpu.provenance.provenance_kind) == "measured" and "triad" in cpu.provenance.method and cpu.threads >= 1
    assert {m.precision for m in probes.matmul if m.target == "cpu"} == {"float32", "float64"}
    assert all("BLAS" in m.provenance.method and m.gflop_per_s > 0 for m in probes.matmul)
    # No CUDA here: the GPU probe is a row without a figure and with the reason, never 0 GB/s.
    assert gpu.target == "gpu" and not gpu.HasField("gb_per_s") and "no GPU probe" in gpu.note


def test_probes_are_cached_per_device_until_refreshed(tmp_path):
    first = device_probe.probes(tmp_path, **SMALL)
    assert device_probe.cache_path(tmp_path).is_file()
    assert device_probe.probes(tmp_path).probed_unix_s == first.probed_unix_s  # not measured again
    assert device_probe.probes(tmp_path, refresh=True, **SMALL).probed_unix_s > first.probed_unix_s
    device_probe.cache_path(tmp_path).write_text("{not json")
    assert device_probe.load_cached(tmp_path) is None  # a damaged cache is probed again, not an error


def test_last_level_cache_size_from_a_sysfs_tree(tmp_path):
    cache = tmp_path / "devices/system/cpu/cpu0/cache"
    for index, size in (("index0", "32K"), ("index2", "512K"), ("index3", "32768K")):
        (cache / index).mkdir(parents=True)
        (cache / index / "size").write_text(size + "\n")
    assert device_probe.last_level_cache_bytes(tmp_path) == 32 << 20
    assert device_probe.last_level_cache_bytes(tmp_path / "missing") is None



@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_matmul_probe_checks_its_product(dtype):
    """The matmul probe's product is checked, so a BLAS that leaves floating-point flags set (numpy's spurious
    overflow warnings on aarch64's OpenBLAS) neither warns nor goes unnoticed if it really computes wrong."""
    import warnings

    import numpy as np

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert all(g > 0 for g in device_probe.matmul_gflops(dtype, 96, runs=2))
    rng = np.random.default_rng(1)
    a, b = rng.random((64, 64), dtype=dtype), rng.random((64, 64), dtype=dtype)
    device_probe.check_product(a, b, a @ b)
    for wrong in (lambda c: c * 1.01, lambda c: np.zeros_like(c), lambda c: c.T):
        with pytest.raises(RuntimeError, match="wrong result"):
            device_probe.check_product(a, b, wrong(a @ b))


@pytest.mark.parametrize("budget_s, expected", [(1e-9, 128), (1e9, 2048)])
def test_matmul_size_keeps_a_slow_devices_probe_short(budget_s, expected):
    """n shrinks (in multiples of 128, never below 128) when a product would take longer than the budget: a board
    (or qemu's float64, 0.03 GFLOP/s) does not spend minutes on it; a fast CPU keeps the largest size."""
    assert device_probe.matmul_size("float64", 2048, budget_s) == expected
    n = device_probe.matmul_size("float32", 1000)
    assert (n == 1000 or n % 128 == 0) and 128 <= n <= 1000


def test_info_shows_a_slow_devices_probes_without_rounding_them_to_zero(capsys):
    from fleetfit.agent.cli import _echo_probes
    from fleetfit.v1 import fleetfit_pb2 as pb

    _echo_probes(pb.DeviceProbes(
        bandwidth=[pb.BandwidthProbe(target="cpu", gb_per_s=0.43), pb.BandwidthProbe(target="cpu", gb_per_s=42.04)],
        matmul=[pb.MatmulProbe(target="cpu", precision="float64", gflop_per_s=0.0085, n=128),
                pb.MatmulProbe(target="cpu", precision="float32", gflop_per_s=1234.56, n=2048)]))
    out = capsys.readouterr().out
    assert "0.43 GB/s" in out and "42.0 GB/s" in out
    assert "0.0085 GFLOP/s" in out and "1234.6 GFLOP/s" in out and " 0.0 " not in out
