"""The pipeline's sampling loop: no host syncs per step, the same bits as a generic diffusers loop, and a scheduler it
cannot drive refused when it is set."""

from __future__ import annotations

import inspect

import pytest
import torch
from diffusers import EDMEulerScheduler
from diffusers.utils.torch_utils import randn_tensor

from bitstream_diffusion import BitstreamDiffusionPipeline, EntropyRateScheduler

#: The tensor -> Python conversions that wait for the device (a host sync on an accelerator); counted on the CPU.
HOST_READS = ("item", "tolist", "__bool__", "__float__", "__int__", "__index__")


@pytest.fixture
def make_pipe(tiny_pipe_factory):
    return tiny_pipe_factory


@pytest.mark.parametrize("kwargs", [dict(gamma=0.2), dict(gamma=0.2, self_conditioning="refined", solver="heun")])
def test_the_loop_reads_nothing_back_from_the_device(make_pipe, monkeypatch, kwargs):
    """Counts every tensor -> Python conversion while the loop runs: none in any scheduler call but the run's final
    step (its one read checks every model output of the run), none in the model calls when the model can skip its
    per-call value checks (`check_values=False`)."""
    pipe = make_pipe(**kwargs)
    reads, where = [], ["outside"]  # `where`: a stack of the parts of the loop running now
    for name in HOST_READS:
        original = getattr(torch.Tensor, name)

        def counting(self, *args, _original=original, **kw):
            reads.append(where[-1])
            return _original(self, *args, **kw)

        monkeypatch.setattr(torch.Tensor, name, counting)

    def track(label, method):
        def wrapper(*args, **kw):
            where.append(label() if callable(label) else label)
            try:
                return method(*args, **kw)
            finally:
                where.pop()

        return wrapper

    scheduler, steps = pipe.scheduler, []
    monkeypatch.setattr(scheduler, "churn", track("churn", scheduler.churn))
    step_label = lambda: steps.append(len(steps)) or f"step {steps[-1]}"  # noqa: E731
    monkeypatch.setattr(scheduler, "step", track(step_label, scheduler.step))
    monkeypatch.setattr(scheduler, "record_model_output", track("record", scheduler.record_model_output))
    monkeypatch.setattr(pipe, "_denoising_loop", track("loop", pipe._denoising_loop))
    pipe.model.register_forward_pre_hook(lambda module, args: where.append("model"))
    pipe.model.register_forward_hook(lambda module, args, output: where.pop() and None)  # keeps the output

    pipe(batch_size=2, num_inference_steps=5, sequence_length=4, generator=torch.Generator().manual_seed(0))
    assert len(steps) == (9 if kwargs.get("solver") == "heun" else 5)
    in_loop = [label for label in reads if label != "outside"]
    assert [label for label in in_loop if label != "model"] == [f"step {len(steps) - 1}"]
    if "check_values" in inspect.signature(type(pipe.model).forward).parameters:
        assert "model" not in in_loop


@pytest.mark.parametrize("solver", ["euler", "heun"])
def test_a_generic_diffusers_loop_gives_the_pipeline_bits(make_pipe, solver):
    """The loop of any diffusers pipeline (`scale_model_input`, model call, `step(..., generator=g)` over `timesteps`)
    reproduces the pipeline bit for bit when the first level does not churn (then the draws line up)."""
    pipe = make_pipe(gamma=0.3, churn_window_mode="sigma", churn_window=(0.05, 50.0), solver=solver)
    batch, tokens, levels = 2, 5, 6
    out = pipe(
        batch_size=batch, num_inference_steps=levels, sequence_length=tokens, generator=torch.Generator().manual_seed(3)
    )

    scheduler, model = pipe.scheduler, pipe.model
    scheduler.set_timesteps(levels)
    generator = torch.Generator().manual_seed(3)
    x = randn_tensor((batch, tokens * 15), generator=generator) * scheduler.init_noise_sigma + 0.5
    self_cond = torch.zeros_like(x)  # the official first self-conditioning input
    with torch.no_grad():
        for t in scheduler.timesteps:
            logits = model(scheduler.scale_model_input(x, t), t.expand(batch), self_cond).logits
            step = scheduler.step(torch.sigmoid(logits), t, x, generator=generator)
            x, self_cond = step.prev_sample, step.self_cond
    assert torch.equal((x > 0.5).to(torch.uint8), out.bits)


def test_a_scheduler_it_cannot_drive_is_refused_when_set(make_pipe):
    pipe = make_pipe()
    scheduler, config = pipe.scheduler, dict(pipe.config)
    edm = EDMEulerScheduler()
    with pytest.raises(TypeError, match="cannot drive a EDMEulerScheduler: it lacks \\['churn'"):
        pipe.scheduler = edm
    with pytest.raises(TypeError, match="EntropyRateScheduler"):
        pipe.register_modules(scheduler=edm)
    assert pipe.scheduler is scheduler and dict(pipe.config) == config  # nothing changed
    with pytest.raises(TypeError, match="cannot drive"):
        BitstreamDiffusionPipeline(model=pipe.model, scheduler=edm, tokenizer=pipe.tokenizer, codec_layout="lm1b")
    object.__setattr__(pipe, "scheduler", edm)  # bypassing the check: `check_inputs` still refuses it
    with pytest.raises(TypeError, match="cannot drive"):
        pipe(num_inference_steps=2, sequence_length=2)
    heun = EntropyRateScheduler.from_config(scheduler.config, solver="heun")
    object.__setattr__(pipe, "scheduler", scheduler)
    pipe.scheduler = heun  # one it can drive
    assert pipe.scheduler is heun
