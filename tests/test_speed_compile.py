"""`pipe.model.compile()` is the fast path: one graph for a whole run (sigma changes, churned and unchurned steps,
the zeros self-conditioning of the first call, Heun and refining calls), no graph break, and on the CPU in float32
the bits of the eager pipeline."""

from __future__ import annotations

import pytest
import torch
from torch._dynamo.testing import CompileCounter
from torch._dynamo.utils import counters

from bitstream_diffusion import BitstreamDiffusionPipeline

RUN = dict(batch_size=2, sequence_length=6, output_type="bits")


@pytest.fixture
def make_pipe(tiny_pipe_factory):
    return tiny_pipe_factory


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _sigmas_seen(pipe: BitstreamDiffusionPipeline, run) -> list[float]:
    seen = []
    handle = pipe.model.register_forward_pre_hook(lambda module, args: seen.append(float(args[1][0])))
    try:
        run()
    finally:
        handle.remove()
    return seen


@pytest.mark.parametrize(
    "scheduler_kwargs",
    [dict(gamma=0.2), dict(gamma=0.3, solver="heun", self_conditioning="refined"), dict(self_conditioning="none")],
)
def test_a_whole_run_is_one_graph(make_pipe, scheduler_kwargs):
    """`fullgraph=True` fails on any graph break; the counting backend sees every (re)compilation."""
    pipe = make_pipe(**scheduler_kwargs)
    steps = 7
    sigmas = _sigmas_seen(pipe, lambda: pipe(num_inference_steps=steps, **RUN))
    assert len(set(sigmas)) >= steps  # the model really is called at changing noise levels

    backend = CompileCounter()
    pipe.model.compile(backend=backend, fullgraph=True, dynamic=False)
    pipe(num_inference_steps=steps, generator=torch.Generator().manual_seed(0), **RUN)
    assert backend.frame_count == 1
    pipe(num_inference_steps=steps + 4, gamma=0.1, generator=torch.Generator().manual_seed(1), **RUN)
    pipe(num_inference_steps=3, generator=[torch.Generator().manual_seed(i) for i in range(2)], **RUN)
    assert backend.frame_count == 1  # other grids, churn and generators: still the one graph


def test_inductor_gives_the_eager_bits_without_recompiling(make_pipe):
    """The real compiler (inductor, float32, CPU): the same bits as eager and the probabilities to rounding, over runs
    with churn, compiled once."""
    pipe = make_pipe(gamma=0.2)
    kwargs = dict(num_inference_steps=6, return_probs=True, **RUN)
    eager = [pipe(generator=torch.Generator().manual_seed(seed), **kwargs) for seed in (0, 1)]

    before = counters["stats"]["unique_graphs"]  # the counters outlive `torch._dynamo.reset()`
    pipe.model.compile(fullgraph=True, dynamic=False)
    try:
        compiled = [pipe(generator=torch.Generator().manual_seed(seed), **kwargs) for seed in (0, 1)]
        graphs = counters["stats"]["unique_graphs"] - before
        again = pipe(generator=torch.Generator().manual_seed(0), **kwargs)
    finally:
        pipe.model._compiled_call_impl = None  # back to eager for anything that reuses the model
    assert graphs == 1 and counters["stats"]["unique_graphs"] - before == 1
    for want, got in zip(eager, compiled):
        assert torch.equal(want.bits, got.bits)
        # inductor may fuse a reduction in another order than eager: the probabilities agree to float32 rounding
        # (seen up to 6e-8), never bit-for-bit by promise; the sampled bits above must not move
        torch.testing.assert_close(got.probs, want.probs, rtol=1e-5, atol=1e-6)
    assert torch.equal(again.probs, compiled[0].probs)  # the compiled graph is deterministic run to run


def test_weight_freezing_gives_the_eager_bits(make_pipe):
    """The README's CPU fast path, inductor's weight freezing (`TORCHINDUCTOR_FREEZING=1`): the weights become graph
    constants prepacked for oneDNN; the sampled bits stay the eager ones, and the probabilities agree to rounding."""
    import torch._inductor.config as inductor_config

    pipe = make_pipe(gamma=0.2)
    kwargs = dict(num_inference_steps=6, return_probs=True, **RUN)
    eager = pipe(generator=torch.Generator().manual_seed(3), **kwargs)
    pipe.model.compile(fullgraph=True, dynamic=False)
    try:
        with inductor_config.patch(freezing=True):  # in force while the first call compiles
            frozen = pipe(generator=torch.Generator().manual_seed(3), **kwargs)
    finally:
        pipe.model._compiled_call_impl = None
    assert torch.equal(frozen.bits, eager.bits)
    torch.testing.assert_close(frozen.probs, eager.probs, rtol=1e-5, atol=1e-6)
