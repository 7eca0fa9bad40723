import os
import pathlib
import shutil
import tempfile

from fleetfit.agent.telemetry.rapl import discover_rapl
from fleetfit.agent.telemetry.source import EnergyReading
from tests.agent.telemetry.conftest import SYSFS


def test_intel_two_sockets_give_package_and_dram_per_socket():
    found = discover_rapl(SYSFS / "intel-xeon-2s")
    assert found.declined == []
    assert [(s.name, s.scope) for s in found.sources] == [
        ("intel-rapl:0 package-0", "cpu-package:0"),
        ("intel-rapl:0:0 dram", "dram:0"),
        ("intel-rapl:1 package-1", "cpu-package:1"),
        ("intel-rapl:1:0 dram", "dram:1"),
    ]
    assert [s.counter_range_uj for s in found.sources] == [262143328850, 65712999613] * 2
    assert {s.method for s in found.sources} == {"rapl"}
    reading = found.sources[1].read()
    assert isinstance(reading, EnergyReading) and reading.energy_uj == 21405532948


def test_amd_zen_has_the_package_domain_only():
    found = discover_rapl(SYSFS / "amd-zen")
    assert [(s.scope, s.counter_range_uj) for s in found.sources] == [("cpu-package:0", 65532610987)]
    assert found.sources[0].read().energy_uj == 30561987012


def test_no_powercap_tree_declines_naming_the_path(tmp_path):
    found = discover_rapl(tmp_path)
    assert found.sources == []
    assert "intel-rapl:0" in found.declined[0].reason


def test_an_unreadable_zone_is_declined_and_the_others_kept(sysfs_copy):
    root = sysfs_copy("intel-xeon-2s")
    energy = root / "sys/devices/virtual/powercap/intel-rapl/intel-rapl:1/energy_uj"
    energy.unlink()
    energy.mkdir()  # reading a directory fails like a broken attribute does
    found = discover_rapl(root)
    assert [s.scope for s in found.sources] == ["cpu-package:0", "dram:0", "dram:1"]
    assert len(found.declined) == 1 and "intel-rapl:1/energy_uj" in found.declined[0].reason


def _as_nobody(function) -> str:
    """Run `function` in a forked child that dropped root (root reads any file whatever its mode)."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        try:
            os.setgid(65534)
            os.setuid(65534)
            os.write(write_end, function().encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end) as pipe:
        output = pipe.read()
    os.waitpid(pid, 0)
    return output


def test_permission_denied_is_explained_with_how_to_grant_read_access():
    """A real EACCES: energy_uj is 0400 as on Linux >= 5.10, read by an unprivileged process."""
    workdir = pathlib.Path(tempfile.mkdtemp())
    try:
        os.chmod(workdir, 0o755)
        root = workdir / "amd-zen"
        shutil.copytree(SYSFS / "amd-zen", root, symlinks=True)
        os.chmod(root / "sys/devices/virtual/powercap/intel-rapl/intel-rapl:0/energy_uj", 0o400)
        decline = lambda: discover_rapl(root).declined[0].reason  # noqa: E731
        reason = _as_nobody(decline) if os.geteuid() == 0 else decline()
        assert reason.startswith("permission denied reading ")
        assert "chmod o+r /sys/class/powercap/intel-rapl:*/energy_uj" in reason
    finally:
        shutil.rmtree(workdir)
