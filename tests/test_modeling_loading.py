"""Loading SDT folders strictly: no silent random weights, clear errors for damaged weight files and bad config.json."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from bitstream_diffusion import BitstreamDiffusionPipeline, EntropyRateScheduler, SDTModel
from bitstream_diffusion.modeling.official_checkpoint import StateDictMismatchError

WEIGHTS = "model.safetensors"


@pytest.fixture(scope="module")
def tiny_model(tiny_sdt_factory) -> SDTModel:
    return tiny_sdt_factory()


@pytest.fixture
def saved(tiny_model, tmp_path) -> Path:
    tiny_model.save_pretrained(tmp_path)
    return tmp_path


def edit_weights(path: Path, edit) -> None:
    tensors = load_file(path)
    edit(tensors)
    save_file(tensors, path, metadata={"format": "pt"})


def edit_config(folder: Path, **values) -> None:
    config = json.loads((folder / "config.json").read_text())
    config.update(values)
    (folder / "config.json").write_text(json.dumps(config))


def inputs(model: SDTModel):
    return model.dummy_inputs


# --------------------------------------------------------------------------------------------------- strict weights
def test_intact_folder_loads_exactly(tiny_model, saved):
    loaded = SDTModel.from_pretrained(saved)
    for key, value in tiny_model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


def test_missing_key_is_an_error_listing_it(saved):
    edit_weights(saved / WEIGHTS, lambda t: t.pop("blocks.1.ff.Wo.bias"))
    with pytest.raises(StateDictMismatchError, match=r"missing keys \(1\): \['blocks\.1\.ff\.Wo\.bias'\]") as error:
        SDTModel.from_pretrained(saved)
    assert "strict=False" in str(error.value)


def test_unexpected_key_is_an_error_listing_it(saved):
    edit_weights(saved / WEIGHTS, lambda t: t.__setitem__("head.extra.weight", torch.zeros(3)))
    with pytest.raises(StateDictMismatchError, match=r"unexpected keys \(1\): \['head\.extra\.weight'\]"):
        SDTModel.from_pretrained(saved)


def test_mis_shaped_tensor_is_an_error_naming_both_shapes(saved):
    edit_weights(saved / WEIGHTS, lambda t: t.__setitem__("blocks.0.attn.out_proj.bias", torch.zeros(7)))
    expected = r"blocks\.0\.attn\.out_proj\.bias: checkpoint \(7,\) vs model \(32,\)"
    with pytest.raises(StateDictMismatchError, match=expected):
        SDTModel.from_pretrained(saved)


def test_config_with_more_layers_than_the_weights_is_an_error(saved):
    edit_config(saved, num_hidden_layers=3)
    with pytest.raises(StateDictMismatchError, match=r"missing keys \(\d+\): \['blocks\.2\."):
        SDTModel.from_pretrained(saved)


def test_auto_model_is_strict_too(saved):
    from transformers import AutoModel

    edit_weights(saved / WEIGHTS, lambda t: t.pop("time_cond.bias"))
    with pytest.raises(StateDictMismatchError, match="time_cond.bias"):
        AutoModel.from_pretrained(saved)


def test_strict_false_is_the_explicit_opt_out(tiny_model, saved):
    edit_weights(saved / WEIGHTS, lambda t: t.pop("time_cond.bias"))
    model, info = SDTModel.from_pretrained(saved, strict=False, output_loading_info=True)
    assert info["missing_keys"] == {"time_cond.bias"} and not info["unexpected_keys"]
    assert torch.equal(model.time_cond.weight, tiny_model.time_cond.weight)
    with pytest.raises(ValueError, match="strict=False"):
        SDTModel.from_pretrained(saved, ignore_mismatched_sizes=True)


def test_output_loading_info_on_an_intact_folder(saved):
    model, info = SDTModel.from_pretrained(saved, output_loading_info=True)
    assert isinstance(model, SDTModel)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]


@pytest.fixture
def pipeline_folder(tmp_path, bert_tokenizer, tiny_sdt_factory) -> Path:
    pipe = BitstreamDiffusionPipeline(
        model=tiny_sdt_factory(),
        scheduler=EntropyRateScheduler(sigma_schedule="karras"),
        tokenizer=bert_tokenizer,
        codec_layout="lm1b",
    )
    pipe.save_pretrained(tmp_path)
    return tmp_path


def test_pipeline_loading_goes_through_strict_loading(pipeline_folder):
    loaded = BitstreamDiffusionPipeline.from_pretrained(pipeline_folder)  # the intact folder loads
    assert isinstance(loaded.model, SDTModel)
    edit_weights(pipeline_folder / "model" / WEIGHTS, lambda t: t.pop("patch_proj.weight"))
    with pytest.raises(StateDictMismatchError, match="patch_proj.weight"):
        BitstreamDiffusionPipeline.from_pretrained(pipeline_folder)


# --------------------------------------------------------------------------------------------------- damaged files
def test_truncated_safetensors_names_the_file_and_the_fix(saved):
    path = saved / WEIGHTS
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(OSError) as error:
        SDTModel.from_pretrained(saved)
    message = str(error.value)
    assert str(path) in message and "truncated or corrupted" in message and "save_pretrained" in message


def test_truncated_safetensors_in_a_pipeline_folder(pipeline_folder):
    path = pipeline_folder / "model" / WEIGHTS
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(OSError, match="truncated or corrupted") as error:
        BitstreamDiffusionPipeline.from_pretrained(pipeline_folder)
    assert str(path) in str(error.value)


@pytest.mark.parametrize(
    "field,value,expected",
    [
        ("hidden_size", "32", "expected int, got str"),
        ("num_hidden_layers", 1.5, "expected int, got float"),
        ("bits_per_token", None, "expected int, got NoneType"),
        ("self_conditioning", "true", "expected bool, got str"),
        ("layer_norm_eps", -1, "must be a finite number > 0, got -1"),
        ("rope_theta", 0, "must be a finite number > 1, got 0"),
    ],
)
def test_config_json_with_a_bad_value_names_the_field_and_the_file(saved, field, value, expected):
    edit_config(saved, **{field: value})
    with pytest.raises(ValueError) as error:
        SDTModel.from_pretrained(saved)
    message = str(error.value)
    assert f"field '{field}'" in message and expected in message
    assert str(saved / "config.json") in message


def test_loading_emits_no_future_warning(saved):
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        model = SDTModel.from_pretrained(saved)
        with torch.no_grad():
            model(**inputs(model))
