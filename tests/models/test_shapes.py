import dataclasses
import json
import pathlib

import pytest

from fleetfit.models import shapes, synth
from fleetfit.models.catalogue import CATALOGUE, architecture
from fleetfit.models.errors import ModelError
from tests.models.test_synth import PLENTY, TINY_FAMILIES

CONFIGS = pathlib.Path(__file__).parent.parent / "fixtures" / "configs"


def test_a_published_config_is_its_catalogue_entry():
    assert shapes.architecture_of(str(CONFIGS / "qwen3-1.7b.json")) is CATALOGUE["qwen3-1.7b"]
    assert shapes.architecture_of(str(CONFIGS / "gpt-oss-20b.json")) is CATALOGUE["gpt-oss-20b"]  # layer_types too


def test_a_changed_config_is_a_new_shape_named_after_its_folder(tmp_path):
    config = json.loads((CONFIGS / "qwen3-1.7b.json").read_text()) | {"num_hidden_layers": 20}
    (tmp_path / "qwen3-1.7b").mkdir()
    path = tmp_path / "qwen3-1.7b" / "config.json"
    path.write_text(json.dumps(config))
    arch = shapes.architecture_of(str(path))
    assert arch.name == "qwen3-1.7b-custom"  # never a catalogue name for another shape
    assert dataclasses.replace(arch, name="qwen3-1.7b", n_layers=28, source="", explicit_head_dim=128) == \
        dataclasses.replace(CATALOGUE["qwen3-1.7b"], source="")


@pytest.mark.parametrize("change, message", [
    ({"head_dim": None}, "config.json lacks head_dim (needed for a qwen3 shape)"),
    ({"num_hidden_layers": None}, "config.json lacks num_hidden_layers"),
    ({"model_type": "mamba"}, "unsupported architecture ('mamba'; fleetfit reads"),
    ({"num_hidden_layers": "28"}, "n_layers must be a positive integer, got '28'"),
    ({"vocab_size": 10**12}, "vocab 1,000,000,000,000 is over the limit"),
    ({"rope_theta": "fast"}, "a shape field has a value of the wrong type"),
    ({"hidden_size": {"a": 1}}, "hidden must be a positive integer"),
])
def test_a_config_it_does_not_understand_is_one_line_naming_the_field(tmp_path, change, message):
    config = json.loads((CONFIGS / "qwen3-1.7b.json").read_text())
    for key, value in change.items():
        if value is None:
            config.pop(key)
        else:
            config[key] = value
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    with pytest.raises(ModelError, match=message.replace("(", r"\(").replace(")", r"\)")):
        shapes.architecture_of(str(path))


def test_a_file_that_is_neither_is_refused(tmp_path):
    for name, data in (("big.json", b" " * (shapes.MAX_CONFIG_BYTES + 1)), ("list.json", b"[1, 2]"),
                       ("junk.json", b"\xff\xfe not json")):
        (tmp_path / name).write_bytes(data)
    with pytest.raises(ModelError, match="too large for a config.json"):
        shapes.architecture_of(str(tmp_path / "big.json"))
    with pytest.raises(ModelError, match="holds one JSON object"):
        shapes.architecture_of(str(tmp_path / "list.json"))
    with pytest.raises(ModelError, match="neither a GGUF file nor a JSON config.json"):
        shapes.architecture_of(str(tmp_path / "junk.json"))
    with pytest.raises(ModelError, match="not found"):
        shapes.architecture_of(str(tmp_path / "absent.gguf"))
    with pytest.raises(ModelError, match=r"unknown architecture 'qwen3-1.8b' \(did you mean qwen3-1.7b"):
        shapes.architecture_of("qwen3-1.8b")


@pytest.mark.parametrize("arch, quant", TINY_FAMILIES, ids=lambda value: getattr(value, "name", value))
def test_a_gguf_header_gives_back_the_shape_it_was_written_from(tmp_path, arch, quant):
    path = synth.write_synthetic(arch, quant, tmp_path / f"{arch.name}.gguf", free_disk_bytes=PLENTY,
                                 available_ram_bytes=PLENTY)
    read = shapes.architecture_of(str(path))
    assert shapes._structure(read) == shapes._structure(arch) and read.name == arch.name
    assert shapes.file_quant(str(path)) == quant
    assert shapes.from_proto(shapes.to_proto(read)) == read  # and the wire keeps it


def test_the_real_smollm2_gguf_is_the_catalogued_shape(ladder):
    assert shapes.architecture_of(str(ladder["Q4_0"])) is architecture("smollm2-135m")


def test_a_gguf_whose_tensors_do_not_fit_its_metadata_is_refused(tmp_path):
    from gguf import GGUFWriter
    import numpy as np

    writer = GGUFWriter(str(tmp_path / "odd.gguf"), arch="qwen3")
    for key, value in (("block_count", 1), ("embedding_length", 64), ("feed_forward_length", 128),
                       ("attention.head_count", 2), ("context_length", 128)):
        (writer.add_uint32 if isinstance(value, int) else writer.add_float32)(f"qwen3.{key}", value)
    writer.add_tensor("token_embd.weight", np.zeros((300, 64), np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(ModelError, match="the file lacks tensor blk.0.attn_k.weight for a qwen3 shape"):
        shapes.architecture_of(str(tmp_path / "odd.gguf"))


def test_models_synth_copies_the_shape_of_a_config(tmp_path):
    from fleetfit.models.gguf_file import inspect_gguf
    from tests.conftest import run_cli

    config = {"model_type": "qwen3", "num_hidden_layers": 2, "hidden_size": 256, "num_attention_heads": 4,
              "num_key_value_heads": 2, "head_dim": 128, "intermediate_size": 512, "vocab_size": 512,
              "max_position_embeddings": 256, "tie_word_embeddings": True}
    (tmp_path / "config.json").write_text(json.dumps(config))
    done = run_cli("fleetfit-agent", "models", "synth", str(tmp_path / "config.json"), "--quant", "Q4_0",
                   "--out", str(tmp_path / "copy.gguf"))
    assert done.returncode == 0, done.stderr
    info = inspect_gguf(tmp_path / "copy.gguf")
    assert (info.architecture, info.quant) == ("qwen3", "Q4_0")
    assert shapes._structure(shapes.architecture_of(str(tmp_path / "copy.gguf"))) == \
        shapes._structure(shapes.architecture_of(str(tmp_path / "config.json")))
