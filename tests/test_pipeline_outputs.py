"""BitstreamDiffusionPipeline outputs the diffusers way: element 0 is the `output_type`'s output in the dict and the
tuple alike, `output_type="latent"`, and callbacks that read and write `callback_kwargs["latents"]`."""

from __future__ import annotations

import pytest
import torch
from diffusers.callbacks import PipelineCallback

from bitstream_diffusion.pipelines import BitstreamDiffusionPipelineOutput

RUN = dict(batch_size=2, num_inference_steps=4, sequence_length=5)
FIELD_OF = {"text": "texts", "token_ids": "token_ids", "bits": "bits", "probs": "probs", "latent": "latents"}


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def pipe(tiny_pipe_factory):
    return tiny_pipe_factory(gamma=0.2, pipeline_kwargs=dict(codec_clean_up_tokenization_spaces=False))


def same(a, b) -> bool:
    return torch.equal(a, b) if isinstance(a, torch.Tensor) else a == b


@pytest.mark.parametrize("output_type", sorted(FIELD_OF))
def test_element_zero_is_the_output_type_in_dict_and_tuple(pipe, output_type):
    out = pipe(generator=seeded(0), output_type=output_type, **RUN)
    as_tuple = pipe(generator=seeded(0), output_type=output_type, return_dict=False, **RUN)
    primary = getattr(out, FIELD_OF[output_type])
    assert primary is not None and out.primary is primary
    assert same(out[0], primary) and same(as_tuple[0], primary)  # the old tuple had `None` first here
    # fixed positions: (primary, token_ids, bits, probs, nfe), the same as `to_tuple()`
    assert isinstance(as_tuple, tuple) and len(as_tuple) == len(out.to_tuple()) == 5
    assert all(same(a, b) for a, b in zip(as_tuple[1:], (out.token_ids, out.bits, out.probs, out.nfe), strict=True))
    assert (as_tuple[3] is None) == (output_type != "probs")


def test_output_keeps_names_and_none_positions():
    bits = torch.zeros(1, 15, dtype=torch.uint8)
    out = BitstreamDiffusionPipelineOutput(None, torch.zeros(1, 1, dtype=torch.long), bits, None, 3, None, "bits")
    assert out[0] is bits and out["bits"] is bits and out[3] is None and out[4] == 3
    with pytest.raises(ValueError, match="output_type"):
        BitstreamDiffusionPipelineOutput(None, None, bits, None, 3, output_type="pil")


def test_latent_output_is_the_final_state(pipe):
    reference = pipe(generator=seeded(1), output_type="probs", **RUN)
    out = pipe(generator=seeded(1), output_type="latent", **RUN)
    assert out.texts is None and out.probs is None
    assert out.latents.dtype == torch.float32 and out.latents.shape == reference.probs.shape
    assert out.latents.device == pipe.model.device
    # after the final denoise the state is D(x, terminal_sigma): the probabilities, and the same bits
    assert torch.equal(out.latents.cpu(), reference.probs) and torch.equal(out.bits, reference.bits)
    assert pipe.bits_to_text(out.latents) == pipe(generator=seeded(1), **RUN).texts


def test_latents_callback_reads_and_replaces_the_state(pipe):
    seen = []

    def diffusers_style(pipeline, step_index, timestep, callback_kwargs):  # the diffusers default: "latents"
        latents = callback_kwargs["latents"]
        seen.append(latents.clone())
        return {"latents": torch.ones_like(latents)} if step_index == 2 else {"latents": latents}

    with_latents = pipe(generator=seeded(2), callback_on_step_end=diffusers_style, **RUN)
    assert len(seen) == RUN["num_inference_steps"] and seen[0].shape == (2, 5 * 15)

    def replace_sample(pipeline, step_index, timestep, callback_kwargs):
        sample = callback_kwargs["sample"]
        return {"sample": torch.ones_like(sample)} if step_index == 2 else {}

    with_sample = pipe(generator=seeded(2), callback_on_step_end=replace_sample, **RUN)
    plain = pipe(generator=seeded(2), **RUN)
    assert torch.equal(with_latents.bits, with_sample.bits) and not torch.equal(with_latents.bits, plain.bits)

    class OnesAtStepTwo(PipelineCallback):  # a diffusers callback class over "latents"
        tensor_inputs = ["latents"]

        def callback_fn(self, pipeline, step_index, timestep, callback_kwargs):
            if step_index == 2:
                callback_kwargs["latents"] = torch.ones_like(callback_kwargs["latents"])
            return callback_kwargs

    assert torch.equal(pipe(generator=seeded(2), callback_on_step_end=OnesAtStepTwo(), **RUN).bits, with_sample.bits)


def test_conflicting_sample_and_latents_are_refused(pipe):
    def conflicting(pipeline, step_index, timestep, callback_kwargs):
        sample = callback_kwargs["sample"]
        return {"sample": torch.ones_like(sample), "latents": torch.zeros_like(sample)}

    with pytest.raises(ValueError, match="`sample` and `latents`"):
        pipe(generator=seeded(0), callback_on_step_end=conflicting, **RUN)
