"""SDTConfig validation: every field's type and range, checked when set, with messages naming field, value and range."""

from __future__ import annotations

import math

import pytest
import torch

from bitstream_diffusion import SDT_PRESETS, SDTConfig

# field -> (a bad value, the allowed range as the message words it). Each bad value gave NaN logits or nonsense before.
OUT_OF_RANGE = [
    ("layer_norm_eps", -1, "> 0"),
    ("layer_norm_eps", 0, "> 0"),
    ("rope_theta", 0, "> 1"),
    ("rope_theta", 1, "> 1"),
    ("rope_theta", -10000.0, "> 1"),
    ("matched_filter_clip", -1, "> 0"),
    ("matched_filter_clip", 0, "> 0"),
    ("matched_filter_scale", -1.0, ">= 0"),
    ("sigma_data", 0, "> 0"),
    ("sigma_data", -0.5, "> 0"),
    ("dropout", 1.0, ">= 0 and < 1"),
    ("dropout", -0.1, ">= 0 and < 1"),
    ("initializer_range", -0.02, ">= 0"),
    ("bits_per_token", 0, "an integer >= 1"),
    ("hidden_size", 0, "an integer >= 1"),
    ("num_hidden_layers", 0, "an integer >= 1"),
    ("num_attention_heads", 0, "an integer >= 1"),
    ("intermediate_size", -4, "an integer >= 1"),
    ("content_dim", 0, "an integer >= 1"),
    ("head_hidden_size", 0, "an integer >= 1"),
    ("max_position_embeddings", 0, "an integer >= 1"),
    ("num_global_fourier_features", -1, "an integer >= 0"),
    ("num_local_fourier_features", -1, "an integer >= 0"),
]
NOT_FINITE = ["layer_norm_eps", "rope_theta", "sigma_data", "data_center", "matched_filter_center",
              "matched_filter_scale", "matched_filter_clip", "dropout", "initializer_range"]


def test_every_field_has_a_check():
    checked = {field for field, _, _ in OUT_OF_RANGE} | set(NOT_FINITE) | {"self_conditioning"}
    assert checked == set(SDTConfig.__annotations__)  # the fields SDTConfig declares itself


@pytest.mark.parametrize("field,value,allowed", OUT_OF_RANGE)
def test_out_of_range_value_names_field_value_and_range(field, value, allowed):
    with pytest.raises(Exception) as error:
        SDTConfig(**{field: value})
    message = str(error.value)
    assert f"field '{field}'" in message and f"got {value!r}" in message and allowed in message


@pytest.mark.parametrize("field", NOT_FINITE)
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_non_finite_floats_are_refused(field, value):
    with pytest.raises(Exception, match=f"field '{field}'(.|\\n)*finite number"):
        SDTConfig(**{field: value})


@pytest.mark.parametrize(
    "field,value",
    [("hidden_size", "32"), ("num_hidden_layers", 1.5), ("bits_per_token", None), ("self_conditioning", 1),
     ("hidden_size", True), ("layer_norm_eps", "1e-5")],
)
def test_wrong_types_name_the_field(field, value):
    with pytest.raises(Exception, match=f"field '{field}'(.|\\n)*expected"):
        SDTConfig(**{field: value})


def test_assignment_after_construction_is_checked():
    config = SDTConfig()
    with pytest.raises(Exception, match="field 'layer_norm_eps'"):
        config.layer_norm_eps = -1
    assert config.layer_norm_eps == 1e-5


@pytest.mark.parametrize(
    "field,value",
    [("dropout", 0), ("num_global_fourier_features", 0), ("matched_filter_scale", 0), ("data_center", -3),
     ("layer_norm_eps", 1), ("rope_theta", 500000), ("initializer_range", 0.0)],
)
def test_edge_values_inside_the_range_are_accepted(field, value):
    assert getattr(SDTConfig(**{field: value}), field) == value


@pytest.mark.parametrize("preset", sorted(SDT_PRESETS))
def test_presets_are_valid(preset):
    config = SDTConfig.from_preset(preset)
    assert SDTConfig.from_dict(config.to_dict()).to_dict() == config.to_dict()


def test_odd_head_dim_is_refused():
    with pytest.raises(Exception, match="even head dimension"):
        SDTConfig(hidden_size=30, num_attention_heads=6)


# --------------------------------------------------------------------------------------------------- empty inputs
@pytest.mark.parametrize("shape", [(0, 30), (2, 0), (0, 0)])
def test_empty_batch_or_no_bits_is_a_clear_error(shape, tiny_sdt_factory):
    model = tiny_sdt_factory()
    with pytest.raises(ValueError, match="at least one row and one token"):
        model(torch.zeros(shape), torch.ones(shape[0]))
