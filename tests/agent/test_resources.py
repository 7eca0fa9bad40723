"""The memory and CPUs an agent may use, read against committed trees shaped like real cgroup v1 and v2 hosts and
containers (tests/fixtures/cgroup/*), and for real inside cgroup v1 groups made here."""

import json
import pathlib

import pytest

from fleetfit.agent import resources
from tests.cgroups import v1_cgroup
from tests.conftest import BIN, run_cli

TREES = pathlib.Path(__file__).resolve().parents[1] / "fixtures" / "cgroup"
HOST_TOTAL, HOST_AVAILABLE = 24684744 * 1024, 22334456 * 1024  # the trees' proc/meminfo
MIB, GIB = 1 << 20, 1 << 30


def in_use(mib: int, level: str, v1: bool = False) -> str:
    """The source's words for the room a limit leaves (usage net of inactive page cache at that level)."""
    files = "memory.usage_in_bytes less total_inactive_file" if v1 else "memory.current less inactive_file"
    return f"less {mib} MiB in use ({level}: {files})"


@pytest.mark.parametrize("tree, total, available, source", [
    # the slice's 1 GiB binds, not the service's looser memory.max / memory.high; 400 MiB in use after page cache
    ("v2-slice", GIB, GIB - 400 * MIB, "cgroup memory.max 1.0 GiB (/fleet.slice); host 23.5 GiB; "
                                       f"available: memory.max {in_use(400, '/fleet.slice')}"),
    ("v2-unlimited", HOST_TOTAL, HOST_AVAILABLE, "host 23.5 GiB, no cgroup limit"),  # "max" everywhere
    # memory.high under memory.max binds; 512 MiB in use after the cache
    ("v2-container", 3 * GIB, 3 * GIB - 512 * MIB, "cgroup memory.high 3.0 GiB (/); host 23.5 GiB; "
                                                   f"available: memory.high {in_use(512, '/')}"),
    # a cgroup namespace: /proc/self/cgroup says 0::/, its root holds the container's own files; a limit looser
    # than the host's RAM is named as such, not taken for none
    ("v2-cgroupns", HOST_TOTAL, HOST_AVAILABLE, "host 23.5 GiB, below cgroup memory.max 64.0 GiB (/)"),
    # its mountinfo lists two other memory mounts first: a string prefix of its path, and a shallower root
    ("v1-docker", 512 * MIB, 312 * MIB, "cgroup memory.limit_in_bytes 0.5 GiB (/docker/3f1c9b7e2a5d); host 23.5 GiB; "
     f"available: memory.limit_in_bytes {in_use(200, '/docker/3f1c9b7e2a5d', v1=True)}"),
    # the leaf and its parent unlimited (4 KiB- and 64 KiB-page LONG_MAX), the grandparent 2 GiB with 700 MiB in use
    ("v1-nested", 2 * GIB, 2 * GIB - 700 * MIB, "cgroup memory.limit_in_bytes 2.0 GiB (/process_api); host 23.5 GiB; "
     f"available: memory.limit_in_bytes {in_use(700, '/process_api', v1=True)}"),
    # the pod's limit is on an ancestor the container cannot see: v1's hierarchical limit tells it
    ("v1-pod", GIB, GIB - 100 * MIB,
     "cgroup memory.stat hierarchical_memory_limit 1.0 GiB (/kubepods/burstable/pod7c2a/4b1e); host 23.5 GiB; "
     f"available: memory.stat hierarchical_memory_limit {in_use(100, '/kubepods/burstable/pod7c2a/4b1e', v1=True)}"),
    ("jetson-orin", HOST_TOTAL, HOST_AVAILABLE, "host 23.5 GiB, no cgroup limit"),
    # JetPack 4 (cgroup v1) on a 4 GiB Nano: the agent's 2 GiB group binds, the root's LONG_MAX does not
    ("jetson-nano-v1", 2 * GIB, 2 * GIB - 100 * MIB, "cgroup memory.limit_in_bytes 2.0 GiB (/fleetfit); host 3.9 GiB; "
     f"available: memory.limit_in_bytes {in_use(100, '/fleetfit', v1=True)}"),
    # what cannot be read is not "no limit": the host's figures stand, and the source names what was unknown
    ("v2-unreadable", HOST_TOTAL, HOST_AVAILABLE,
     "host 23.5 GiB; unknown: cgroup /fleet.slice/fleetfit-agent.service not found under /sys/fs/cgroup, "
     "memory.max (/fleet.slice) unreadable, memory.high (/fleet.slice) reads 'lots'"),
    ("v1-unmounted", HOST_TOTAL, HOST_AVAILABLE, "host 23.5 GiB; unknown: cgroup /docker/9a8b7c (memory) not mounted here"),
    ("v2-unmounted", HOST_TOTAL, HOST_AVAILABLE, "host 23.5 GiB; unknown: cgroup / (memory) not mounted here"),
])
def test_memory_is_the_smallest_limit_on_the_path(tree, total, available, source):
    memory = resources.memory(TREES / tree)
    host_total, host_available = resources._meminfo(TREES / tree)
    assert (memory.total_bytes, memory.available_bytes, memory.source) == (total, available, source)
    assert (memory.host_total_bytes, memory.host_available_bytes) == (host_total, host_available)
    assert (memory.cgroup_available_bytes is None) == ("cgroup memory" not in source)
    if total < host_total:  # a binding limit: its room is the available figure
        assert memory.cgroup_available_bytes == available


@pytest.mark.parametrize("tree, affinity, physical, logical, count, source", [
    # CPUQuota=50% rounds to one CPU, AllowedCPUs=0 is one; with the affinity mask already narrowed, it says so too
    ("v2-slice", {0, 1}, 2, 2, 1, "1 CPU: cgroup cpu.max 0.5 CPU (/fleet.slice/fleetfit-agent.service); "
                                  "cpuset 1 CPU (0); host 2 cores"),
    ("v2-slice", {0}, 2, 2, 1, "1 CPU: affinity 1 CPU; cgroup cpu.max 0.5 CPU (/fleet.slice/fleetfit-agent.service); "
                               "cpuset 1 CPU (0); host 2 cores"),
    ("v2-unlimited", set(range(8)), 4, 8, 4, "4 CPUs: host 4 cores"),
    ("v2-container", set(range(8)), 4, 8, 3, "3 CPUs: cgroup cpu.max 2.5 CPU (/); host 4 cores"),
    ("v1-docker", {2, 3}, 4, 8, 2, "2 CPUs: affinity 2 CPUs; cgroup cpu.cfs_quota_us 1.5 CPU (/docker/3f1c9b7e2a5d); "
                                   "cpuset 2 CPUs (2-3); host 4 cores"),
    ("v1-nested", {0, 1}, 2, 2, 2, "2 CPUs: host 2 cores"),  # quota -1, the cpuset is the whole host
    ("v1-pod", set(range(8)), 4, 8, 4, "4 CPUs: host 4 cores"),
    ("v1-docker", {3}, 4, 8, 1, "1 CPU: affinity 1 CPU; cgroup cpu.cfs_quota_us 1.5 CPU (/docker/3f1c9b7e2a5d); "
                                "cpuset 2 CPUs (2-3); host 4 cores"),  # taskset inside the container
    # cpu.max "150000 100000": 1.5 CPUs round to 2 (nearest, halves up); a split cpuset list counted whole
    ("v2-cgroupns", {0, 1, 2, 3, 8, 9, 10, 11}, 8, 16, 2, "2 CPUs: cgroup cpu.max 1.5 CPU (/); affinity 8 CPUs; "
                                                          "cpuset 8 CPUs (0-3,8-11); host 8 cores"),
    # a cpuset naming CPUs that are offline (/sys/devices/system/cpu/online 0-9): only the online ones count
    ("v1-offline", {0, 1, 2, 3, 8, 9}, 10, 10, 6, "6 CPUs: affinity 6 CPUs; cpuset 6 CPUs (0-3,8-11, 10-11 offline); "
                                                  "host 10 cores"),
    ("v1-unmounted", set(range(8)), 4, 8, 4, "4 CPUs: host 4 cores; unknown: cgroup /docker/9a8b7c (cpu) not mounted "
                                             "here, cgroup /docker/9a8b7c (cpuset) not mounted here"),
    ("v2-unmounted", {0, 1}, 2, 2, 2, "2 CPUs: host 2 cores; unknown: cgroup / (cpu) not mounted here, "
                                      "cgroup / (cpuset) not mounted here"),
    ("v2-unreadable", {0, 1}, 2, 2, 2, "2 CPUs: host 2 cores; unknown: cgroup /fleet.slice/fleetfit-agent.service not "
                                       "found under /sys/fs/cgroup, cpu.max (/fleet.slice) unreadable"),
])
def test_cpus_are_the_smallest_of_affinity_quota_and_cpuset(tree, affinity, physical, logical, count, source):
    cpus = resources.cpus(TREES / tree, affinity=affinity, host_physical=physical, host_logical=logical)
    assert (cpus.count, cpus.source, cpus.host_physical, cpus.host_logical) == (count, source, physical, logical)


def test_no_cgroup_files_leave_the_host_figures(tmp_path):
    """A root without /proc/self/cgroup (another OS, or cgroups not mounted): the host's own figures."""
    (tmp_path / "proc").mkdir()
    (tmp_path / "proc" / "meminfo").write_text("MemTotal: 1000 kB\nMemAvailable: 600 kB\n")
    assert resources.cgroups(tmp_path) == []
    memory = resources.memory(tmp_path)
    assert (memory.total_bytes, memory.available_bytes) == (1000 * 1024, 600 * 1024)
    assert resources.cpus(tmp_path, affinity={0, 1, 2}, host_physical=3, host_logical=3).count == 3


@pytest.mark.parametrize("text, cpus", [("0", {0}), ("0-3", {0, 1, 2, 3}), ("0-1,4,6-7", {0, 1, 4, 6, 7}),
                                        ("", set()), ("0-x", set()), ("garbage", set())])
def test_cpu_lists(text, cpus):
    assert resources.parse_cpu_list(text) == cpus


def test_only_tegra_boards_share_the_gpus_memory():
    assert resources.unified_memory(TREES / "jetson-orin") and resources.unified_memory(TREES / "jetson-nano-v1")
    assert not any(resources.unified_memory(TREES / t) for t in ("v2-slice", "v1-docker", "v2-unlimited"))


def test_a_shared_memory_gpu_is_judged_against_one_pool():
    from fleetfit.coordinator.predict.serving import memory_capacity
    from fleetfit.v1 import fleetfit_pb2 as pb

    device = pb.DeviceInventory(ram_total_bytes=4 * GIB, gpus=[pb.GpuInfo(index=0, memory_total_bytes=8 * GIB)])
    assert memory_capacity(device, "cuda:0") == 8 * GIB  # a discrete GPU: its own memory
    device.gpus[0].unified_memory = True  # the agent's cgroup allows 4 GiB of the board's shared 8 GiB
    assert memory_capacity(device, "cuda:0") == 4 * GIB and memory_capacity(device, "cpu") == 4 * GIB


@pytest.mark.parametrize("memory_bytes, cpus, quota_us, want_cpus, cpu_words", [
    (GIB, "0", 50000, 1, ("cpuset 1 CPU (0)", "cpu.cfs_quota_us 0.5 CPU")),
    (2 * GIB, None, 50000, 1, ("cpu.cfs_quota_us 0.5 CPU",)),
    (4 * GIB, None, None, None, ()),
])
def test_agent_info_inside_a_real_v1_cgroup(memory_bytes, cpus, quota_us, want_cpus, cpu_words, tmp_path):
    """`fleetfit-agent info` run inside a memory cgroup (and a cpuset / CPU quota) reports the limit, with its
    source, as the device's memory and CPUs."""
    with v1_cgroup(memory_bytes, cpus, quota_us) as inside:
        proc = run_cli(*inside, str(BIN / "fleetfit-agent"), "info", "--json", "--device-id", "board",
                       "--cache-dir", str(tmp_path), timeout=120)
    assert proc.returncode == 0, proc.stderr
    device = json.loads(proc.stdout)
    host = resources.memory()
    assert int(device["ram_total_bytes"]) == memory_bytes < host.host_total_bytes == int(device["host_ram_total_bytes"])
    assert 0 < int(device["ram_available_bytes"]) <= memory_bytes
    assert f"memory.limit_in_bytes {memory_bytes / GIB:.1f} GiB" in device["memory_source"]
    assert f"; host {host.host_total_bytes / GIB:.1f} GiB" in device["memory_source"]
    assert device["cpus_usable"] == (want_cpus or resources.cpus().count)
    assert all(word in device["cpu_source"] for word in cpu_words), device["cpu_source"]


@pytest.mark.parametrize("memory_bytes, cpus", [(GIB, "0"), (2 * GIB, None)])
def test_room_checks_inside_a_real_v1_cgroup(memory_bytes, cpus, tmp_path):
    """Inside a memory cgroup, `limits probe`'s memory cap, the default threads and the synthetic writer's RAM
    check go by the cgroup's limit, not the host's RAM."""
    from fleetfit.agent.probe import CGROUP_MARGIN_BYTES

    code = ("from fleetfit.agent import probe, profiling; "
            "print(probe.memory_cap_bytes(), profiling.default_threads())")
    with v1_cgroup(memory_bytes, cpus) as inside:
        figures = run_cli(*inside, str(BIN / "python"), "-c", code, timeout=60)
        synth = run_cli(*inside, str(BIN / "fleetfit-agent"), "models", "synth", "llama-3.2-1b", "--quant", "F16",
                        "--cache-dir", str(tmp_path), timeout=60)
    cap, threads = map(int, figures.stdout.split())
    assert memory_bytes - CGROUP_MARGIN_BYTES - 512 * MIB < cap < memory_bytes - CGROUP_MARGIN_BYTES, figures.stderr
    assert threads == (1 if cpus else resources.cpus().count)
    # llama-3.2-1b F16 needs ~2.9 GB to load: more than either limit, far less than the host's RAM
    assert synth.returncode != 0 and "Traceback" not in synth.stderr  # after its "writing ..." line, one error
    last = synth.stderr.splitlines()[-1]
    assert last.startswith("error: ") and "llama-3.2-1b F16 needs about" in last, synth.stderr
    available_gb = float(synth.stderr.split("only ")[1].split(" GB")[0])
    assert 0 < available_gb * 1e9 <= memory_bytes, synth.stderr
    assert not list(tmp_path.rglob("*.gguf"))
