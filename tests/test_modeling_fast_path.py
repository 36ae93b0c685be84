"""The SDT inference fast path: folded input/head projections (exact, never stale, never saved), no host syncs with
`check_values=False`, `torch.compile` without graph breaks or recompiles, bf16 against float32 on the golden models."""

from __future__ import annotations

import contextlib
import copy
import json

import pytest
import torch
import torch._dynamo.testing

from bitstream_diffusion import SDTModel

LOGIT_ATOL, LOGIT_RTOL = 2e-5, 1e-5  # the golden tolerances of tests/test_modeling_sdt.py
SIGMAS = [0.002, 0.05, 0.7, 3.0, 80.0]


def inputs(model: SDTModel, sc: str = "random", batch: int = 3, tokens: int = 5, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    num_bits = tokens * model.config.bits_per_token
    bits = torch.randint(0, 2, (batch, num_bits), generator=generator).float()
    sigma = torch.tensor([0.05, 0.7, 20.0][:batch])
    noisy = bits + sigma[:, None] * torch.randn(bits.shape, generator=generator)
    self_cond = {"none": None, "zeros": torch.zeros_like(bits), "random": torch.rand(bits.shape, generator=generator)}
    return noisy, sigma, self_cond[sc]


def unfolded(model: SDTModel) -> SDTModel:
    reference = copy.deepcopy(model)
    reference.inference_folding = False
    return reference


class CallCounter:
    """Counts calls of a module's `forward` without registering a hook (a hook switches folding off)."""

    def __init__(self, module: torch.nn.Module):
        self.calls, self._forward = 0, module.forward

        def counted(*args, **kwargs):
            self.calls += 1
            return self._forward(*args, **kwargs)

        module.forward = counted


# --------------------------------------------------------------------------------------------------- folding
@pytest.mark.parametrize("self_conditioning,sc", [(True, "none"), (True, "zeros"), (True, "random"), (False, "none")])
def test_folded_forward_equals_the_unfolded_modules(self_conditioning, sc, tiny_sdt_factory):
    model = tiny_sdt_factory(self_conditioning=self_conditioning)
    noisy, sigma, self_cond = inputs(model, sc)
    with torch.no_grad():
        fast, reference = model(noisy, sigma, self_cond), unfolded(model)(noisy, sigma, self_cond)
    torch.testing.assert_close(fast.network_logits, reference.network_logits, atol=LOGIT_ATOL, rtol=LOGIT_RTOL)
    torch.testing.assert_close(fast.logits, reference.logits, atol=LOGIT_ATOL, rtol=LOGIT_RTOL)
    print(f"sc={sc}: max |folded - unfolded| = {(fast.logits - reference.logits).abs().max():.2e}")


def test_folding_runs_in_eval_only_and_steps_aside_for_hooks(tiny_sdt_factory):
    model = tiny_sdt_factory()
    noisy, sigma, self_cond = inputs(model)
    counter = CallCounter(model.patch_proj)
    with torch.no_grad():
        model(noisy, sigma, self_cond)
        assert counter.calls == 0  # eval: folded
        model.train()
        model(noisy, sigma, self_cond)
        assert counter.calls == 1  # training: the modules themselves
        model.eval()
        seen = []
        handle = model.head.input_adapter.register_forward_hook(lambda module, args, output: seen.append(output))
        model(noisy, sigma, self_cond)
        handle.remove()
        assert counter.calls == 2 and len(seen) == 1  # a hook sees its module run


class _ScaledLinear(torch.nn.Linear):
    """Stands in for an adapter (LoRA and the like) that replaces a folded module with its own forward."""

    def forward(self, x):
        return 2.0 * super().forward(x)


def test_a_replaced_module_is_honoured_not_folded(tiny_sdt_factory):
    model = tiny_sdt_factory()
    noisy, sigma, self_cond = inputs(model)
    with torch.no_grad():
        before = model(noisy, sigma, self_cond).logits
        replaced = _ScaledLinear(model.unpatch_proj_content.in_features, model.unpatch_proj_content.out_features)
        replaced.load_state_dict(model.unpatch_proj_content.state_dict())
        model.unpatch_proj_content = replaced
        after = model(noisy, sigma, self_cond).logits
        expected = unfolded(model)(noisy, sigma, self_cond).logits
    assert (after - before).abs().max() > 1e-3
    assert torch.equal(after, expected)


def test_folding_is_never_stale_even_after_writes_through_data(tiny_sdt_factory):
    model = tiny_sdt_factory()
    noisy, sigma, self_cond = inputs(model)
    with torch.no_grad():
        before = model(noisy, sigma, self_cond).logits
        model.patch_proj.weight.data.mul_(1.5)  # `.data` writes do not bump autograd's version counter
        model.head.input_adapter.bias.data.add_(0.3)
        after = model(noisy, sigma, self_cond).logits
        expected = unfolded(model)(noisy, sigma, self_cond).logits
    assert (after - before).abs().max() > 1e-3
    torch.testing.assert_close(after, expected, atol=LOGIT_ATOL, rtol=LOGIT_RTOL)


def test_gradients_through_the_folded_path_match(tiny_sdt_factory):
    model = tiny_sdt_factory()
    reference = unfolded(model)
    noisy, sigma, self_cond = inputs(model)
    grads = []
    for m in (model, reference):
        m(noisy, sigma, self_cond).logits.square().mean().backward()
        grads.append(torch.cat([p.grad.flatten() for p in m.parameters()]))
    torch.testing.assert_close(grads[0], grads[1], atol=1e-5, rtol=1e-4)


def test_saved_format_is_unchanged_by_folding(tmp_path, tiny_sdt_factory):
    model = tiny_sdt_factory()
    shapes = {key: tuple(value.shape) for key, value in model.state_dict().items()}
    noisy, sigma, self_cond = inputs(model)
    with torch.no_grad():
        expected = model(noisy, sigma, self_cond).logits
    assert {key: tuple(value.shape) for key, value in model.state_dict().items()} == shapes
    model.save_pretrained(tmp_path)
    loaded = SDTModel.from_pretrained(tmp_path)
    assert {key: tuple(value.shape) for key, value in loaded.state_dict().items()} == shapes
    with torch.no_grad():
        assert torch.equal(loaded(noisy, sigma, self_cond).logits, expected)


@pytest.mark.parametrize("name", ["lm1b_tiny", "owt_tiny"])
def test_folding_on_the_golden_models(golden_dir, name):
    folder = golden_dir / "model" / name
    model = SDTModel.from_official_checkpoint(
        folder / "release.pt", config=json.loads((folder / "official_config.json").read_text())
    )
    cases = torch.load(folder / "cases.pt", map_location="cpu", weights_only=True)
    x, sigma = cases["inputs"]["x_t"], cases["inputs"]["sigma"]
    with torch.no_grad():
        for self_cond in (None, torch.zeros_like(x), cases["inputs"]["x0_hat_random"]):
            fast, reference = model(x, sigma, self_cond), unfolded(model)(x, sigma, self_cond)
            torch.testing.assert_close(fast.network_logits, reference.network_logits, atol=LOGIT_ATOL, rtol=LOGIT_RTOL)


# --------------------------------------------------------------------------------------------------- host syncs
_SYNCING_METHODS = ["item", "tolist", "numpy", "cpu", "__bool__", "__float__", "__int__", "__index__"]


@contextlib.contextmanager
def count_host_reads():
    """CPU proxy for device syncs: counts every tensor -> Python conversion while active."""
    calls: list[str] = []
    saved = {name: getattr(torch.Tensor, name) for name in _SYNCING_METHODS}

    def counting(name, method):
        def wrapper(self, *args, **kwargs):
            calls.append(name)
            return method(self, *args, **kwargs)

        return wrapper

    for name, method in saved.items():
        setattr(torch.Tensor, name, counting(name, method))
    try:
        yield calls
    finally:
        for name, method in saved.items():
            setattr(torch.Tensor, name, method)


@pytest.mark.parametrize("sc", ["none", "random"])
def test_no_host_reads_without_value_checks(sc, tiny_sdt_factory):
    model = tiny_sdt_factory()
    noisy, sigma, self_cond = inputs(model, sc)
    with torch.no_grad():
        with count_host_reads() as checked:
            model(noisy, sigma, self_cond)
        with count_host_reads() as unchecked:
            out = model(noisy, sigma, self_cond, check_values=False)
    assert len(checked) >= 2  # the proxy sees the default checks' reads
    assert unchecked == []
    assert torch.equal(out.logits, model(noisy, sigma, self_cond).logits)


def test_value_checks_still_guard_direct_calls(tiny_sdt_factory):
    model = tiny_sdt_factory()
    noisy, sigma, _ = inputs(model)
    with pytest.raises(ValueError, match="finite and > 0"):
        model(noisy, torch.tensor([0.5, 0.0, 1.0]))


# --------------------------------------------------------------------------------------------------- torch.compile
@pytest.fixture
def fresh_dynamo():
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    yield torch._dynamo.utils.counters
    torch._dynamo.reset()


def test_compile_has_no_graph_break_and_no_recompile_over_sigmas(fresh_dynamo, tiny_sdt_factory):
    model = tiny_sdt_factory()
    noisy, _, self_cond = inputs(model)
    expected = {}
    with torch.no_grad():
        for s in SIGMAS:
            expected[s] = model(noisy, torch.full((3,), s), self_cond, check_values=False).logits
    counter = torch._dynamo.testing.CompileCounter()
    model.compile(backend=counter, fullgraph=True, dynamic=False)
    with torch.no_grad():
        for s in SIGMAS:
            out = model(noisy, torch.full((3,), s), self_cond, check_values=False).logits
            assert torch.equal(out, expected[s])
    assert counter.frame_count == 1, "sigma must not recompile"
    assert not fresh_dynamo["graph_break"]


def test_compile_without_fullgraph_finds_no_graph_break(fresh_dynamo, tiny_sdt_factory):
    model = tiny_sdt_factory()
    noisy, sigma, self_cond = inputs(model)
    explanation = torch._dynamo.explain(model)(noisy, sigma, self_cond)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1


@pytest.mark.slow
def test_inductor_compile_matches_eager(fresh_dynamo, tiny_sdt_factory):
    model = tiny_sdt_factory()
    noisy, _, self_cond = inputs(model)
    sigmas = [torch.full((3,), s) for s in SIGMAS[1:4]]
    with torch.no_grad():
        expected = [model(noisy, s, self_cond, check_values=False).logits for s in sigmas]
    counter = torch._dynamo.testing.CompileCounterWithBackend("inductor")
    model.compile(backend=counter, fullgraph=True, dynamic=False)
    with torch.no_grad():
        outputs = [model(noisy, s, self_cond, check_values=False).logits for s in sigmas]
    assert counter.frame_count == 1
    worst = max((o - e).abs().max().item() for o, e in zip(outputs, expected))
    print(f"inductor vs eager: max |logit difference| = {worst:.2e}")
    for out, reference in zip(outputs, expected):
        torch.testing.assert_close(out, reference, atol=LOGIT_ATOL, rtol=LOGIT_RTOL)


# --------------------------------------------------------------------------------------------------- bf16
@pytest.mark.parametrize("name", ["lm1b_tiny", "owt_tiny"])
@pytest.mark.parametrize("mode", ["autocast", "weights"])
def test_bf16_agrees_with_float32_on_the_golden_models(golden_dir, name, mode):
    folder = golden_dir / "model" / name
    model = SDTModel.from_official_checkpoint(
        folder / "release.pt", config=json.loads((folder / "official_config.json").read_text())
    )
    cases = torch.load(folder / "cases.pt", map_location="cpu", weights_only=True)
    x, sigma = cases["inputs"]["x_t"], cases["inputs"]["sigma"]
    half = copy.deepcopy(model).to(torch.bfloat16) if mode == "weights" else model
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if mode == "autocast" else contextlib.nullcontext()
    worst, agreeing, total = 0.0, 0, 0
    with torch.no_grad():
        for self_cond in (None, torch.zeros_like(x), cases["inputs"]["x0_hat_random"]):
            reference = model(x, sigma, self_cond).logits
            with autocast:
                out = half(x, sigma, self_cond).logits
            assert out.dtype == torch.float32
            worst = max(worst, (out - reference).abs().max().item())
            agreeing += ((out > 0) == (reference > 0)).sum().item()
            total += reference.numel()
            confident = reference.abs() > 1.0  # a bit the float32 model is sure about keeps its value
            assert torch.equal(out[confident] > 0, reference[confident] > 0)
    print(f"{name} bf16 {mode}: max |logit - float32| = {worst:.3f}, bits (sigmoid > 0.5) agreeing {agreeing}/{total}")
    assert worst < 0.5
    assert agreeing / total >= 0.98


def test_shape_only_forward_on_the_meta_device(tiny_sdt_config):
    config = tiny_sdt_config()
    with torch.device("meta"):
        model = SDTModel(config).eval()
        noisy, sigma = torch.zeros(2, 4 * config.bits_per_token), torch.ones(2)
    out = model(noisy, sigma, noisy, check_values=False)
    assert out.logits.shape == (2, 4 * config.bits_per_token) and out.logits.is_meta


def test_rope_tables_are_filled_on_every_loading_path(tmp_path, golden_dir, tiny_sdt_factory):
    from transformers import AutoModel

    model = tiny_sdt_factory()
    model.save_pretrained(tmp_path)
    folder = golden_dir / "model" / "lm1b_tiny"
    official = SDTModel.from_official_checkpoint(
        folder / "release.pt", config=json.loads((folder / "official_config.json").read_text())
    )
    for loaded in (model, SDTModel.from_pretrained(tmp_path), AutoModel.from_pretrained(tmp_path), official):
        rotary = loaded.rotary_emb
        cos, sin = rotary.compute_tables(loaded.config.max_position_embeddings)
        assert torch.equal(rotary.cos_table, cos) and torch.equal(rotary.sin_table, sin)
        assert not any("rotary" in key for key in loaded.state_dict())  # never part of the weights


def test_sequences_longer_than_the_tables_use_the_same_rope(tiny_sdt_factory):
    model = tiny_sdt_factory()
    rotary = model.rotary_emb
    num_tokens = model.config.max_position_embeddings + 5
    cos, sin = rotary(num_tokens, torch.device("cpu"), torch.float32)
    short_cos, short_sin = rotary(3, torch.device("cpu"), torch.float32)
    assert cos.shape == (num_tokens, 1, 1, model.config.head_dim)
    assert torch.equal(cos[:3], short_cos) and torch.equal(sin[:3], short_sin)
    noisy = torch.rand(2, num_tokens * model.config.bits_per_token)
    with torch.no_grad():
        assert torch.isfinite(model(noisy, torch.ones(2), noisy).logits).all()
