"""SDTModel behaves like a transformers model: half-precision weights, extra outputs, strict kwargs, dummy inputs,
the transformers 5 activation-checkpointing API."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch

from bitstream_diffusion import SDTModel
from bitstream_diffusion.modeling import matched_filter_logits

HALF_DTYPES = [torch.float16, torch.bfloat16]


@pytest.fixture(scope="module")
def model(tiny_sdt_factory) -> SDTModel:
    return tiny_sdt_factory()


def run(model: SDTModel, **kwargs):
    with torch.no_grad():
        return model(**model.dummy_inputs, **kwargs)


# --------------------------------------------------------------------------------------------------- dtypes
@pytest.mark.parametrize("dtype", HALF_DTYPES)
@pytest.mark.parametrize("folding", [True, False])
def test_half_precision_weights_run_with_a_float32_matched_filter(model, dtype, folding):
    half = copy.deepcopy(model).to(dtype)
    half.inference_folding = folding
    inputs = model.dummy_inputs  # float32 inputs, as the sampler passes them
    with torch.no_grad():
        out = half(**inputs)
        reference = model(**inputs)
    assert out.logits.dtype == torch.float32 and out.network_logits.dtype == dtype
    # the matched filter is computed and added in float32 (in the half dtype, logits near +-30 move by ~0.1)
    expected_filter = matched_filter_logits(inputs["noisy_bits"], inputs["sigma"])
    assert torch.equal(out.logits, out.network_logits.float() + expected_filter)
    assert torch.isfinite(out.logits).all()
    error = (out.network_logits.float() - reference.network_logits).abs().max().item()
    print(f"{dtype} folding={folding}: max |network logit - float32| = {error:.2e}")
    assert error < (0.01 if dtype == torch.float16 else 0.05)


@pytest.mark.parametrize("dtype", HALF_DTYPES)
def test_from_pretrained_with_a_half_dtype_runs(model, dtype, tmp_path):
    model.save_pretrained(tmp_path)
    loaded = SDTModel.from_pretrained(tmp_path, dtype=dtype)
    assert loaded.dtype == dtype
    out = run(loaded)
    assert out.logits.dtype == torch.float32 and torch.isfinite(out.logits).all()


def test_half_inputs_to_a_float32_model(model):
    inputs = model.dummy_inputs
    with torch.no_grad():
        out = model(inputs["noisy_bits"].half(), inputs["sigma"].half(), inputs["self_cond"].bfloat16())
    assert out.logits.dtype == torch.float32 and torch.isfinite(out.logits).all()


# --------------------------------------------------------------------------------------------------- outputs
def test_output_hidden_states_are_the_token_states(model):
    captured = []
    model.blocks[-1].register_forward_hook(lambda module, args, output: captured.append(output[0]))
    try:
        out = run(model, output_hidden_states=True)
    finally:
        model.blocks[-1]._forward_hooks.clear()
    batch, num_bits = model.dummy_inputs["noisy_bits"].shape
    num_tokens = num_bits // model.config.bits_per_token
    assert len(out.hidden_states) == model.config.num_hidden_layers + 1
    assert all(h.shape == (batch, num_tokens, model.config.hidden_size) for h in out.hidden_states)
    assert torch.equal(out.hidden_states[-1], captured[0])
    assert not torch.equal(out.hidden_states[0], out.hidden_states[1])
    assert out.attentions is None and run(model).hidden_states is None


@pytest.mark.parametrize("implementation", ["eager", "sdpa"])
def test_output_attentions_are_probabilities(implementation, tiny_sdt_factory):
    model = tiny_sdt_factory()
    model.set_attn_implementation(implementation)
    plain = run(model)
    out = run(model, output_attentions=True)
    num_tokens = model.dummy_inputs["noisy_bits"].shape[1] // model.config.bits_per_token
    assert len(out.attentions) == model.config.num_hidden_layers
    for weights in out.attentions:
        assert weights.shape == (2, model.config.num_attention_heads, num_tokens, num_tokens)
        torch.testing.assert_close(weights.sum(-1), torch.ones(weights.shape[:-1]))
    torch.testing.assert_close(out.logits, plain.logits, atol=1e-5, rtol=1e-5)


def test_config_defaults_for_outputs_and_tuple_return(model):
    tuple_out = run(model, return_dict=False, output_hidden_states=True)
    dict_out = run(model, output_hidden_states=True)
    assert len(tuple_out) == 3 and torch.equal(tuple_out[0], dict_out.logits)
    assert len(tuple_out[2]) == model.config.num_hidden_layers + 1
    configured = copy.deepcopy(model)
    configured.config.output_hidden_states = True
    assert len(run(configured).hidden_states) == model.config.num_hidden_layers + 1


def test_unknown_keyword_arguments_are_refused(model):
    with pytest.raises(TypeError, match="unexpected keyword argument 'attention_mask'"):
        model(**model.dummy_inputs, attention_mask=torch.ones(2, 4))
    with pytest.raises(TypeError, match="unexpected keyword argument 'selfcond'"):
        model(model.dummy_inputs["noisy_bits"], 1.0, selfcond=None)


def test_dummy_inputs_are_the_real_inputs(model):
    inputs = model.dummy_inputs
    assert set(inputs) == {"noisy_bits", "sigma", "self_cond"}
    assert inputs["noisy_bits"].shape[1] % model.config.bits_per_token == 0
    assert model.main_input_name in inputs
    out = run(model)
    assert out.logits.shape == inputs["noisy_bits"].shape


# --------------------------------------------------------------------------------------------------- checkpointing
def test_activation_checkpointing_uses_the_current_api_without_future_warnings(tiny_sdt_factory):
    noisy, sigma, sc = tiny_sdt_factory().dummy_inputs.values()
    grads = []
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        for checkpointing in (False, True):
            model = tiny_sdt_factory(dropout=0.0).train()
            if checkpointing:
                model.activation_checkpointing_enable()
                assert model.is_activation_checkpointing
            model(noisy, sigma, sc).logits.square().mean().backward()
            grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    torch.testing.assert_close(grads[0], grads[1])
    assert grads[0].abs().sum() > 0
