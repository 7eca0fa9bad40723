import pathlib

import pytest

from fleetfit.agent import inventory, nvml
from fleetfit.agent.telemetry.estimate import cpu_power_class
from tests.agent.fake_nvml import FakeNvml

PROC = pathlib.Path(__file__).resolve().parents[1] / "fixtures" / "proc"


def test_cpu_model_from_x86_cpuinfo():
    assert inventory.cpu_model(PROC / "x86_64") == "AMD EPYC 7B13"


def test_cpu_model_from_raspberry_pi_cpuinfo():
    assert inventory.cpu_model(PROC / "raspberry-pi-5") == "Raspberry Pi 5 Model B Rev 1.0"


@pytest.mark.parametrize("tree, name, power_class", [
    ("arm64-neoverse-n1", "ARM Neoverse-N1", "server"),  # a cloud arm64 server: cores only, no board Model
    ("rk3588", "ARM Cortex-A55 + Cortex-A76", "arm-board"),  # big.LITTLE, each kind of core once
    ("raspberry-pi-4-armv7", "Raspberry Pi 4 Model B Rev 1.4", "arm-board"),  # 32-bit: Model, not "ARMv7 Processor"
    ("raspberry-pi-5", "Raspberry Pi 5 Model B Rev 1.0", "arm-board"),
    ("x86_64", "AMD EPYC 7B13", "server"),
])
def test_cpu_model_on_arm_names_the_cores(tree, name, power_class):
    """arm64's cpuinfo has no 'model name': the name comes from the cores' implementer and part, and it is what the
    power estimate and the fleet's priors classify the device by."""
    assert inventory.cpu_model(PROC / tree) == name
    assert cpu_power_class(name).name == power_class


def test_cpu_model_of_unknown_arm_cores_says_what_they_are(tmp_path):
    (tmp_path / "cpuinfo").write_text("processor\t: 0\nCPU implementer\t: 0x41\nCPU part\t: 0xfff\n\n"
                                      "processor\t: 1\nCPU implementer\t: 0x99\nCPU part\t: zz\n")
    assert inventory.cpu_model(tmp_path) == "ARM part 0xfff"
    (tmp_path / "cpuinfo").write_text("processor\t: 0\nCPU implementer\t: 0x99\nCPU part\t: 0x001\n")
    assert inventory.cpu_model(tmp_path) == "implementer 0x99 part 0x001"
    (tmp_path / "cpuinfo").write_text("processor\t: 0\nmodel name\t: ARMv7 Processor rev 5 (v7l)\n")
    assert inventory.cpu_model(tmp_path) == "ARMv7 Processor rev 5 (v7l)"  # nothing better: the generic name


@pytest.mark.parametrize("tree, machine, name", [
    ("x86_64", "aarch64", "aarch64 emulated on AMD EPYC 7B13"),  # qemu-user: arm64 code sees the x86 host's cpuinfo
    ("rk3588", "x86_64", "x86_64 emulated on ARM Cortex-A55 + Cortex-A76"),  # FEX / box64 on an arm64 board
    ("x86_64", "x86_64", "AMD EPYC 7B13"),
    ("raspberry-pi-5", "aarch64", "Raspberry Pi 5 Model B Rev 1.0"),
    ("raspberry-pi-4-armv7", "armv7l", "Raspberry Pi 4 Model B Rev 1.4"),
])
def test_an_emulated_cpu_is_said_so(tree, machine, name):
    """A cpuinfo of another architecture than the process's is the host's, seen through an emulator: the device is
    not recorded as having the host's CPU."""
    assert inventory.cpu_model(PROC / tree, machine=machine) == name


def test_gpus_through_nvml():
    fake = FakeNvml(gpus=2)
    gpus, note = nvml.list_gpus(fake)
    assert [g.index for g in gpus] == [0, 1] and note == ""
    assert gpus[0].name == "NVIDIA H100 80GB HBM3" and gpus[0].memory_total_bytes == 85520809984
    assert gpus[1].uuid.endswith("1") and gpus[0].driver_version == "550.54.15"
    assert fake.initialised == 0  # shut down after use


def test_nvml_without_driver_says_why():
    gpus, note = nvml.list_gpus(FakeNvml(driver_loaded=False))
    assert gpus == [] and note == "NVML unavailable: Driver Not Loaded"


def test_this_machine():
    device = inventory.collect("dev-1")
    assert device.device_id == "dev-1" and device.ram_total_bytes > device.ram_available_bytes > 0
    assert device.cpu_cores_logical >= device.cpu_cores_physical >= 1
    backends = {b.name: b for b in device.backends}
    assert backends["llama.cpp"].available and backends["llama.cpp"].version == "0.3.36"
    assert not device.gpus and device.gpu_probe_note  # no GPU here, and the inventory says why


def test_process_gpu_memory_through_nvml():
    from tests.agent.fake_nvml import c_nvmlProcessInfo_t

    fake = FakeNvml(gpus=2)
    fake.processes[1] = [c_nvmlProcessInfo_t(pid=41, usedGpuMemory=3 << 30), c_nvmlProcessInfo_t(pid=42, usedGpuMemory=None)]
    assert nvml.process_used_bytes(1, 41, fake) == (3 << 30, "")
    used, note = nvml.process_used_bytes(1, 42, fake)  # NVML_VALUE_NOT_AVAILABLE for that pid
    assert used is None and "no memory for this process" in note
    assert nvml.process_used_bytes(0, 41, fake)[0] is None  # another GPU
    used, note = nvml.process_used_bytes(5, 41, fake)
    assert used is None and "Invalid Argument" in note
    assert fake.initialised == 0
    assert nvml.process_used_bytes(0, 41, FakeNvml(driver_loaded=False)) == (None, "NVML unavailable: Driver Not Loaded")
