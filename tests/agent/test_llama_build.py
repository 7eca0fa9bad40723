"""The llama.cpp build fleetfit installs: its check (a child process per type), the record of how it was built,
offload parameters on a CPU-only build, the buffer sizes read from llama.cpp's log, and the CUDA limitation a
CPU-only build reports on a machine with an NVIDIA GPU (NVML faked at the hardware boundary)."""

import json
import os
import pathlib

import pytest

from fleetfit.agent import profiling
from fleetfit.agent.backends import llama_cpp_check
from fleetfit.agent.isolation import run_worker
from fleetfit.models.synth import write_synthetic
from fleetfit.v1 import fleetfit_pb2 as pb

ROOT = str(pathlib.Path(__file__).resolve().parents[2])
FAKE_PYNVML = """import sys
from tests.agent.fake_nvml import FakeNvml
sys.modules[__name__] = FakeNvml(gpus=1)
"""


def test_check_passes_on_this_build():
    assert llama_cpp_check.check() == []


def test_check_reports_a_child_killed_by_sigill(monkeypatch):
    monkeypatch.setattr(llama_cpp_check, "CHILD", "import os, signal\nos.kill(os.getpid(), signal.SIGILL)\n")
    failures = llama_cpp_check.check(("Q4_0", "F16"))
    assert failures == ["Q4_0: died with SIGILL (illegal instruction: the CPU or OS lacks an instruction set it "
                        "was built for)"] + ["F16: died with SIGILL (illegal instruction: the CPU or OS lacks an "
                                             "instruction set it was built for)"]


def test_check_reports_a_child_error_by_its_last_line(monkeypatch):
    monkeypatch.setattr(llama_cpp_check, "CHILD", "import sys\nsys.exit('llama.cpp could not load it')\n")
    assert llama_cpp_check.check(("Q8_0",)) == ["Q8_0: exited 1: llama.cpp could not load it"]


def test_build_record(tmp_path):
    from fleetfit.agent.backends import llama_cpp_runtime as runtime

    record = tmp_path / "llama-cpp-build.json"
    record.write_text(json.dumps({"build": "native-no-amx", "cmake_args": "-DGGML_NATIVE=ON",
                                  "cflags": "-mno-amx-tile", "checked": "Q4_0 ran", "gpu": "CPU-only build",
                                  "fell_back_from": "native: Q4_0: died with SIGILL"}))
    assert runtime.build_record(record) == ("build: native-no-amx (-DGGML_NATIVE=ON, CFLAGS -mno-amx-tile); "
                                            "checked: Q4_0 ran; fell back from native: Q4_0: died with SIGILL; "
                                            "CPU-only build")
    record.write_text(json.dumps({"build": "prebuilt", "cmake_args": "built with -DGGML_NATIVE=OFF",
                                  "library": "/opt/llama-lib/libllama.so sha256 0123456789ab"}))
    assert runtime.build_record(record) == ("build: prebuilt (built with -DGGML_NATIVE=OFF); "
                                            "library /opt/llama-lib/libllama.so sha256 0123456789ab")
    assert "not recorded" in runtime.build_record(tmp_path / "missing.json")
    record.write_bytes(b"\xff{not json")
    assert runtime.build_record(record) == f"build: record {record} unreadable (UnicodeDecodeError)"
    record.write_text("[1, 2]")
    assert runtime.build_record(record).endswith("is not a JSON object")
    record.write_text(json.dumps({"build": "x" * 10_000}))
    assert len(runtime.build_record(record)) < 400  # bounded, whatever the file holds


def test_build_commit_is_the_recorded_one_for_this_llama_cpp_python(tmp_path):
    from fleetfit.agent.backends import llama_cpp_runtime as runtime

    record = tmp_path / "llama-cpp-build.json"
    record.write_text(json.dumps({"build": "native", "llama_cpp_python": runtime.version(),
                                  "llama_cpp_commit": "0c1e57098"}))
    assert runtime.build_commit(record) == "0c1e57098"
    record.write_text(json.dumps({"llama_cpp_python": "0.0.1", "llama_cpp_commit": "0c1e57098"}))
    assert runtime.build_commit(record) == ""  # written for another release: a later pip upgrade
    record.write_text(json.dumps({"llama_cpp_python": runtime.version(), "llama_cpp_commit": "$(rm -rf ~) x"}))
    assert runtime.build_commit(record) == ""
    assert runtime.build_commit(tmp_path / "missing.json") == ""


def test_install_records_the_commit_its_llama_cpp_python_vendors():
    """scripts/install.sh wrote this environment's record: its commit names this llama-cpp-python's llama.cpp."""
    from fleetfit.agent.backends import llama_cpp_runtime as runtime

    env = (pathlib.Path(ROOT) / "scripts" / "llama-cpp-build.env").read_text()
    assert f'LLAMA_CPP_PYTHON="{runtime.version()}"' in env
    if not runtime.BUILD_RECORD.exists():
        pytest.skip("llama-cpp-python was not installed by scripts/install.sh here")
    commit = runtime.build_commit()
    assert commit and f'LLAMA_CPP_COMMIT="{commit}"' in env


def test_installed_build_is_named_in_system_info():
    info = run_worker({"backend": "llama.cpp", "op": "system_info"}, 60)["system_info"]
    assert "CPU :" in info and "| build: " in info


def test_buffer_sizes_from_llama_cpp_log(tmp_path):
    """The KV buffer llama.cpp reports is exactly F16 K and V for every layer at its padded context."""
    from fleetfit.agent.backends import llama_cpp_runtime as runtime

    shape = llama_cpp_check.CHECK_SHAPE
    path = write_synthetic(shape, "Q8_0", tmp_path / "tiny-Q8_0.gguf", force=True)
    run = runtime.profile(str(path), 200, 8, 1, 2, "cpu").run
    sizes = runtime.buffer_bytes(runtime._log_lines)
    padded = -(-(200 + 8) // 256) * 256
    assert sizes[("CPU", "KV")] == 2 * shape.n_layers * shape.kv_dim * padded * 2
    assert sizes[("CPU", "compute")] > 0 and any(kind == "model" for _, kind in sizes)
    assert not any(runtime.is_gpu_buffer(name) for name, _ in sizes)
    assert run.HasField("gpu_layers") and run.gpu_layers == 0 and run.compute_device == "cpu"
    assert not run.HasField("gpu_memory")
    assert runtime.is_gpu_buffer("CUDA0") and not runtime.is_gpu_buffer("CUDA_Host")
    assert not runtime.is_gpu_buffer("CPU_REPACK")


def test_a_sweep_points_buffers_are_its_own_context(tmp_path):
    """A serving point's buffers: the model's, and the KV cache of its own context for N sequences, not the sum over
    the contexts made before it (what its GPU memory reports on an offloading build)."""
    from fleetfit.agent.backends import llama_cpp_runtime as runtime

    shape = llama_cpp_check.CHECK_SHAPE
    path = write_synthetic(shape, "Q8_0", tmp_path / "tiny-Q8_0.gguf", force=True)
    runtime.profile(str(path), 200, 8, 1, 2, "cpu")
    single_lines = len(runtime._log_lines)
    single = runtime.buffer_bytes(runtime._log_lines)
    runtime.profile(str(path), 200, 8, 1, 2, "cpu", parallel=(3,))
    point = runtime.context_buffers(single_lines)  # the same log up to the one-stream context, then the point's
    assert point[("CPU", "KV")] == 3 * single[("CPU", "KV")]  # 3 sequences of the same padded length
    assert {k: n for k, n in point.items() if k[1] == "model"} == {k: n for k, n in single.items() if k[1] == "model"}
    assert runtime.buffer_bytes(runtime._log_lines)[("CPU", "KV")] == 4 * single[("CPU", "KV")]  # both contexts


def test_offload_asked_of_a_cpu_only_build_fails_in_one_line(tmp_path, cache_dir):
    path = write_synthetic(llama_cpp_check.CHECK_SHAPE, "Q4_0", tmp_path / "tiny-Q4_0.gguf", force=True)
    cpu = profiling.profile(profiling.make_request(str(path), n_prompt=8, n_gen=2, repetitions=1, idle_baseline_s=0,
                                                   gpu_layers=0), "dev-1", cache_dir)
    assert not cpu.failure and cpu.HasField("gpu_layers") and cpu.gpu_layers == 0
    asked = profiling.profile(profiling.make_request(str(path), n_prompt=8, n_gen=2, repetitions=1,
                                                     idle_baseline_s=0, gpu_layers=8), "dev-1", cache_dir)
    assert asked.failure == pb.FAILURE_KIND_ERROR
    assert "cannot offload 8 layers: this llama.cpp build is CPU-only" in asked.error and "\n" not in asked.error


def test_cpu_only_build_on_a_gpu_machine_reports_the_limitation(tmp_path, monkeypatch):
    shim = tmp_path / "shim"
    shim.mkdir()
    (shim / "pynvml.py").write_text(FAKE_PYNVML)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(shim), ROOT]))
    rows = run_worker({"backend": "llama.cpp", "op": "capabilities"}, 60)["capabilities"]
    cuda = [r for r in rows if r["device"] == "cuda"]
    assert cuda and not any(r["supported"] for r in cuda)
    assert "CPU-only" in cuda[0]["reason"] and "scripts/install.sh" in cuda[0]["reason"]
    assert all(r["supported"] for r in rows if r["device"] == "cpu")


def test_no_limitation_without_a_gpu():
    rows = run_worker({"backend": "llama.cpp", "op": "capabilities"}, 60)["capabilities"]
    assert {r["device"] for r in rows} == {"cpu"}


@pytest.mark.parametrize("lib_dir", ["missing", "empty", "wrong-file"])
def test_install_refuses_a_prebuilt_dir_without_libllama(tmp_path, lib_dir):
    """FLEETFIT_LLAMA_LIB_DIR that holds no libllama.so: one line and exit 2, before pip touches anything."""
    import subprocess

    target = tmp_path / lib_dir
    if lib_dir != "missing":
        target.mkdir()
    if lib_dir == "wrong-file":
        (target / "libggml.so").write_bytes(b"\x7fELF")
    done = subprocess.run(["bash", "scripts/install.sh", "--agent"], cwd=ROOT, capture_output=True, text=True,
                          timeout=60, env={**os.environ, "FLEETFIT_LLAMA_LIB_DIR": str(target)})
    assert done.returncode == 2
    assert done.stderr.strip() == f"install.sh: FLEETFIT_LLAMA_LIB_DIR={target} has no libllama.so"
    assert "pip" not in done.stdout and "building" not in done.stdout
