"""The ONNX Runtime backend: the exported model agrees with llama.cpp, quantized runs go through the agent's
harness, and a damaged ONNX file is a clear failure."""

import pytest

from fleetfit.agent import profiling
from fleetfit.agent.isolation import run_worker
from fleetfit.v1 import fleetfit_pb2 as pb

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")
pytest.importorskip("torch")


def test_exported_fp32_model_decodes_like_llama_cpp(ladder, cache_dir):
    reference = run_worker({"op": "greedy", "model_path": str(ladder["F16"]), "prompt": "The capital of France is",
                            "n_gen": 32, "threads": 2}, 300)
    ours = run_worker({"backend": "onnxruntime", "op": "greedy", "model_path": str(ladder["F16"]),
                       "prompt_tokens": reference["prompt_tokens"], "n_gen": 32, "cache_dir": str(cache_dir),
                       "threads": 2}, 600)
    agree = sum(a == b for a, b in zip(ours["tokens"], reference["tokens"]))
    assert agree >= 30, (agree, ours["tokens"], reference["tokens"])


def test_int8_profile_end_to_end_with_a_cached_quantized_file(ladder, cache_dir):
    request = profiling.make_request(str(ladder["F16"]), "int8", "onnxruntime", n_prompt=16, n_gen=4,
                                     repetitions=1, threads=2, idle_baseline_s=0, parallel=[2])
    result = profiling.profile(request, "dev-onnx", cache_dir)
    assert result.failure == pb.FAILURE_KIND_UNSPECIFIED, result.error
    assert result.quant == "int8" and result.decode_tokens_per_s.mean > 0 and result.prefill_tokens_per_s.mean > 0
    assert result.weight_bytes < result.model_n_params * 2  # int8 weights: about a byte per weight
    assert "int8.onnx" in result.backend_build
    (point,) = result.serving  # a batch of 2 through the export's dynamic batch axis
    assert point.parallel == 2 and not point.unsupported_reason and point.aggregate_decode_tokens_per_s.mean > 0


def test_the_export_runs_a_batch_whose_sequences_decode_as_each_does_alone(ladder, cache_dir):
    from fleetfit.agent.backends.onnx_runtime import _open

    runner, _, _ = _open(str(ladder["F16"]), "fp32", str(cache_dir), 2)
    prompts = [[1, 504, 3458, 282], [1, 260, 1466, 314]]
    runner.reset(2)
    together = [runner.step(prompts), runner.step([[30], [33]])]
    runner.reset()
    alone = [runner.step(prompts[1]), runner.step([33])]
    for batched, single in zip(together, alone):
        assert batched.shape[0] == 2 and abs(batched[1] - single[0]).max() < 1e-3
        assert abs(batched[0] - single[0]).max() > 1e-2  # another prompt: other logits


def test_a_damaged_onnx_file_is_a_failed_result_that_says_so(ladder, cache_dir):
    from fleetfit.agent.backends.onnx_runtime import cache_folder

    folder = cache_folder(str(ladder["F16"]), str(cache_dir))
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "int4.onnx").write_bytes(b"not an onnx model")
    try:
        request = profiling.make_request(str(ladder["F16"]), "int4", "onnxruntime", n_prompt=8, n_gen=2,
                                         repetitions=1, threads=2, idle_baseline_s=0)
        result = profiling.profile(request, "dev-onnx", cache_dir)
    finally:
        (folder / "int4.onnx").unlink()
    assert result.failure == pb.FAILURE_KIND_ERROR
    assert "fails ONNX validation" in result.error


def test_onnxruntime_refuses_torch_only_precisions_and_random_shapes(cache_dir):
    with pytest.raises(profiling.ProfileInputError, match="onnxruntime does not take precision 'bf16'"):
        profiling.profile(profiling.make_request("smollm2-135m", "bf16", "onnxruntime"), "d", cache_dir)
    with pytest.raises(profiling.ProfileInputError, match="real models"):
        profiling.profile(profiling.make_request("tinyllama-1.1b", "fp32", "onnxruntime"), "d", cache_dir)


def test_the_first_export_shows_its_two_steps_on_a_terminal(ladder, tmp_path):
    """A file never exported gets a steps bar (export, then quantize) read from the files the worker leaves; a
    file already exported gets none. The bar goes to a terminal's stderr only."""
    import os
    import subprocess
    import sys
    import threading

    from fleetfit.agent.backends.base import RunTarget
    from tests.agent.test_cli import _drain
    from fleetfit.agent.backends.onnx_backend import BACKEND
    from fleetfit.agent.backends.onnx_runtime import cache_folder

    target = RunTarget("smollm2-135m", "file", "int8", path=str(ladder["F16"]))
    folder = cache_folder(target.path, str(tmp_path))
    script = f"""
import pathlib, time
from fleetfit.agent.backends.base import RunTarget
from fleetfit.agent.backends.onnx_backend import BACKEND
folder = pathlib.Path({str(folder)!r})
folder.mkdir(parents=True, exist_ok=True)
with BACKEND.preparing(RunTarget(**{target.__dict__!r}), {str(tmp_path)!r}):
    for name in ("fp32.onnx", "int8.onnx"):  # what the worker writes, in its order
        time.sleep(1.5)
        (folder / name).write_bytes(b"x")
    time.sleep(1)
"""
    master, slave = os.openpty()
    chunks = []
    reader = threading.Thread(target=lambda: _drain(master, chunks), daemon=True)  # a full pty would block it
    reader.start()
    proc = subprocess.run([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=slave, timeout=60,
                          env=os.environ | {"COLUMNS": "160"})  # a pty's width is 0: rich would cut the text
    os.close(slave)
    reader.join(timeout=10)
    assert proc.returncode == 0 and proc.stdout == b""
    shown = b"".join(chunks).decode(errors="replace")
    assert "exporting smollm2-135m to ONNX int8" in shown and "0/2" in shown and "1/2" in shown and "eta" in shown
    assert BACKEND.preparing(target, str(tmp_path)).__class__.__name__ == "nullcontext"  # exported: no bar
