import pytest

from fleetfit.models.errors import ModelError
from fleetfit.models.gguf_file import inspect_gguf, open_gguf


def test_inspects_the_real_model(ladder):
    info = inspect_gguf(ladder["Q4_1"])
    assert info.architecture == "llama"
    assert info.quant == "Q4_1"
    assert 130e6 < info.n_params < 140e6  # SmolLM2-135M
    assert info.file_bytes == ladder["Q4_1"].stat().st_size


@pytest.mark.parametrize("quant", ["F16", "Q8_0", "Q4_0"])
def test_derived_files_have_the_asked_type(ladder, quant):
    assert inspect_gguf(ladder[quant]).quant == quant


def test_missing_file(tmp_path):
    with pytest.raises(ModelError, match="model file not found"):
        inspect_gguf(tmp_path / "absent.gguf")


def test_not_gguf(tmp_path):
    path = tmp_path / "model.gguf"
    path.write_bytes(b"PK\x03\x04 this is a zip file")
    with pytest.raises(ModelError, match="not a GGUF file"):
        inspect_gguf(path)


@pytest.mark.parametrize("keep_bytes", [1000, 50_000_000])
def test_truncated(tmp_path, ladder, keep_bytes):
    path = tmp_path / "cut.gguf"
    with ladder["Q4_1"].open("rb") as src:
        path.write_bytes(src.read(keep_bytes))
    with pytest.raises(ModelError, match="truncated"):
        inspect_gguf(path)


def _same_as_gguf_reader(path):
    """open_gguf reads exactly what the gguf package's GGUFReader reads: every kept field, every tensor record
    and its mapped data."""
    import numpy as np
    from gguf import GGUFReader

    ours, theirs = open_gguf(path), GGUFReader(path)
    assert [t.name for t in ours.tensors] == [t.name for t in theirs.tensors]
    for a, b in zip(ours.tensors, theirs.tensors):
        assert (a.tensor_type, list(a.shape), a.n_elements, a.n_bytes, a.data_offset) == \
            (b.tensor_type, list(b.shape), b.n_elements, b.n_bytes, b.data_offset), a.name
        assert a.data.dtype == b.data.dtype and a.data.shape == b.data.shape
        assert np.array_equal(a.data[:2], b.data[:2])
    assert set(ours.fields) == {key for key in theirs.fields if not key.startswith("GGUF.")}
    kept = {key: f.contents() for key, f in ours.fields.items() if f.contents() is not None}
    assert kept == {key: theirs.fields[key].contents() for key in kept}
    assert "general.architecture" in kept and "tokenizer.ggml.tokens" not in kept  # arrays are skipped, not loaded
    return ours


@pytest.mark.parametrize("quant", ["Q4_1", "F16", "Q8_0", "Q4_0"])
def test_the_bounded_reader_agrees_with_gguf_on_the_real_ladder(ladder, quant):
    assert len(_same_as_gguf_reader(ladder[quant]).tensors) == 272


@pytest.mark.parametrize("quant", ["F32", "BF16", "Q4_K_M", "Q5_1", "Q6_K"])
def test_the_bounded_reader_agrees_with_gguf_on_synthetic_files(tmp_path, quant):
    from tests.models.test_synth import TINY_QWEN2, write

    _same_as_gguf_reader(write(TINY_QWEN2, quant, tmp_path / "tiny.gguf"))
