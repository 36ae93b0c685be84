"""BitstreamDiffusionPipeline: golden trajectories, codec, inputs, prompts, infilling, callbacks, precision, saving."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from diffusers.callbacks import PipelineCallback

from bitstream_diffusion import (
    BitstreamDiffusionPipeline,
    EntropyRateScheduler,
    SDTModel,
)
from bitstream_diffusion.codecs import CodeTokenizer

SAMPLER_RUNS = {
    # name: (self-conditioning, gamma, model calls)
    "ddim_det_carry": ("carry", 0.0, 12),
    "ddim_stoch_carry": ("carry", 0.2, 12),
    "ddim_stoch_refined": ("refined", 0.2, 23),
}


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def lm1b_scheduler_config(entropy_tables_dir):
    return EntropyRateScheduler.from_entropy_tables(entropy_tables_dir / "lm1b", gamma=0.2).config


@pytest.fixture
def make_pipe(lm1b_scheduler_config, bert_tokenizer, tiny_sdt_factory):
    """A tiny LM1B-layout pipeline with the real BERT tokenizer; scheduler overrides as keyword arguments."""

    def make(model: SDTModel | None = None, **scheduler_overrides) -> BitstreamDiffusionPipeline:
        scheduler = EntropyRateScheduler.from_config(lm1b_scheduler_config, **scheduler_overrides)
        pipe = BitstreamDiffusionPipeline(
            model=model if model is not None else tiny_sdt_factory(),
            scheduler=scheduler,
            tokenizer=bert_tokenizer,
            codec_layout="lm1b",
            codec_clean_up_tokenization_spaces=False,
        )
        pipe.set_progress_bar_config(disable=True)
        return pipe

    return make


@pytest.fixture(scope="module")
def golden_lm1b_model(golden_dir):
    folder = golden_dir / "model" / "lm1b_tiny"
    return SDTModel.from_official_checkpoint(
        folder / "release.pt", config=json.loads((folder / "official_config.json").read_text())
    )


# ---------------------------------------------------------------------------------------------------------------------
# The official sampler, run by run (golden/sampler, golden/README §5)
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(SAMPLER_RUNS))
def test_golden_trajectory(name, golden_dir, entropy_tables_dir, golden_lm1b_model, bert_tokenizer):
    self_conditioning, gamma, model_calls = SAMPLER_RUNS[name]
    reference = torch.load(golden_dir / "sampler" / f"{name}.pt", map_location="cpu", weights_only=True)
    meta = json.loads((golden_dir / "sampler" / f"{name}.json").read_text())
    scheduler = EntropyRateScheduler.from_entropy_tables(
        entropy_tables_dir / "lm1b",
        self_conditioning=self_conditioning,
        gamma=gamma,
        s_noise=1.003 if gamma else 1.0,
    )
    pipe = BitstreamDiffusionPipeline(
        model=golden_lm1b_model, scheduler=scheduler, tokenizer=bert_tokenizer, codec_layout="lm1b"
    )
    pipe.set_progress_bar_config(disable=True)
    batch, num_bits = reference["final_bits"].shape
    steps = []

    def record(pipeline, i, sigma, tensors):
        steps.append((sigma.clone(), tensors["sample"].clone(), tensors["denoised"].clone()))
        return {}

    out = pipe(
        batch_size=batch,
        num_inference_steps=reference["grid"].numel(),
        sequence_length=num_bits // 15,
        generator=seeded(meta["seed"]),
        return_probs=True,
        callback_on_step_end=record,
        callback_on_step_end_tensor_inputs=["sample", "denoised"],
    )

    assert out.nfe == model_calls == meta["n_network_calls"]
    torch.testing.assert_close(out.probs, reference["final_probs"], atol=1e-4, rtol=0)
    assert torch.equal(out.bits, reference["final_bits"])
    assert torch.equal(out.token_ids, reference["final_code_ids"])
    assert out.texts == pipe.codec.decode_ids(reference["final_code_ids"])
    # the whole trajectory: churned sigma, state after every Euler step, every denoiser output
    assert len(steps) == reference["grid"].numel()
    for i, (sigma, sample, denoised) in enumerate(steps[:-1]):
        assert sigma.item() == reference["sigma_hat"][i].item()
        torch.testing.assert_close(sample, reference["x_after_step"][i], atol=1e-4, rtol=0)
        torch.testing.assert_close(denoised, reference["step_D"][i], atol=1e-4, rtol=0)


def test_golden_lm1b_codec_through_the_pipeline(golden_dir, golden_lm1b_model, make_pipe):
    pipe = make_pipe(golden_lm1b_model)
    codec = torch.load(golden_dir / "codec" / "lm1b" / "lm1b_codec.pt", map_location="cpu", weights_only=True)
    decoded = json.loads((golden_dir / "codec" / "lm1b" / "lm1b_decode.json").read_text())
    items = torch.cat([codec[f"dataset_items_{split}"] for split in ("train", "val", "test")])
    assert pipe.bits_to_text(items) == decoded["texts_rows"]
    assert pipe.bits_to_text(codec["random_bits"]) == decoded["random_texts"]  # invalid ids wrap modulo 30522
    assert pipe.bits_to_text(codec["prob_input"]) == decoded["prob_input_texts"]  # probabilities: > 0.5
    row = codec["train_rows"][0]
    bits = pipe.text_to_bits(pipe.codec.decode_ids(row)[0], sequence_length=128)
    assert bits.dtype == torch.uint8 and bits.shape == (1, 128 * 15)
    assert torch.equal(bits[0], codec["token_to_bits_table"][row].flatten())


# ---------------------------------------------------------------------------------------------------------------------
# Outputs, cost accounting, noise
# ---------------------------------------------------------------------------------------------------------------------


def test_outputs_and_output_types(make_pipe):
    pipe = make_pipe()
    out = pipe(batch_size=2, num_inference_steps=3, generator=seeded(0))
    assert len(out.texts) == 2 and all(isinstance(t, str) for t in out.texts)
    assert out.token_ids.shape == (2, 16) and out.token_ids.dtype == torch.long  # default length: max positions
    assert out.bits.shape == (2, 16 * 15) and out.bits.dtype == torch.uint8 and out.probs is None
    assert torch.equal(out.token_ids, pipe.codec.bits_to_ids(out.bits))
    assert out.texts == pipe.bits_to_text(out.bits)

    ids_only = pipe(batch_size=2, num_inference_steps=3, generator=seeded(0), output_type="token_ids")
    assert ids_only.texts is None and torch.equal(ids_only.bits, out.bits)
    with_probs = pipe(batch_size=2, num_inference_steps=3, generator=seeded(0), output_type="probs")
    assert with_probs.probs.dtype == torch.float32 and torch.equal(with_probs.probs > 0.5, out.bits.bool())
    texts, token_ids, bits, probs, nfe = pipe(
        batch_size=2, num_inference_steps=3, generator=seeded(0), return_dict=False, return_probs=True
    )
    assert texts == out.texts and torch.equal(bits, out.bits) and torch.equal(probs, with_probs.probs) and nfe == 3


@pytest.mark.parametrize(
    "solver, self_conditioning, expected",
    [("euler", "carry", "n"), ("euler", "none", "n"), ("euler", "refined", "2n-1"), ("heun", "carry", "2n-1"),
     ("heun", "refined", "3n-2")],
)
def test_nfe_counts_the_calls_made(make_pipe, solver, self_conditioning, expected):
    pipe = make_pipe(solver=solver, self_conditioning=self_conditioning)
    calls = []
    handle = pipe.model.register_forward_hook(lambda module, args, output: calls.append(args[2] is None))
    n = 4
    out = pipe(batch_size=2, num_inference_steps=n, sequence_length=3, generator=seeded(1))
    handle.remove()
    expected_calls = {"n": n, "2n-1": 2 * n - 1, "3n-2": 3 * n - 2}[expected]
    assert out.nfe == len(calls) == pipe.scheduler.num_model_calls(n) == expected_calls
    assert all(calls) == (self_conditioning == "none")  # no estimate is passed only without self-conditioning


def test_generator_list_makes_samples_independent_of_batch(make_pipe):
    pipe = make_pipe()
    kwargs = dict(num_inference_steps=5, sequence_length=6, output_type="probs")
    batched = pipe(batch_size=3, generator=[seeded(s) for s in (10, 11, 12)], **kwargs)
    alone = pipe(batch_size=1, generator=[seeded(11)], **kwargs)
    torch.testing.assert_close(batched.probs[1:2], alone.probs, atol=1e-5, rtol=0)
    decided = (alone.probs - 0.5).abs() > 1e-3
    assert torch.equal(batched.bits[1:2][decided], alone.bits[decided])
    # a single generator draws the whole batch at once: a different sample
    assert not torch.equal(pipe(batch_size=3, generator=seeded(10), **kwargs).bits[0], batched.bits[0])


def test_seeded_runs_repeat_and_gamma_changes_them(make_pipe):
    pipe = make_pipe()
    kwargs = dict(batch_size=2, num_inference_steps=4, sequence_length=5, output_type="probs")
    first = pipe(generator=seeded(3), **kwargs)
    assert torch.equal(first.probs, pipe(generator=seeded(3), **kwargs).probs)
    assert not torch.equal(first.probs, pipe(generator=seeded(3), gamma=0.0, **kwargs).probs)


# ---------------------------------------------------------------------------------------------------------------------
# Bad inputs
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(num_inference_steps=1), ValueError, "num_inference_steps"),
        (dict(num_inference_steps=0), ValueError, "num_inference_steps"),
        (dict(num_inference_steps=2.5), ValueError, "num_inference_steps"),
        (dict(gamma=-0.1), ValueError, "gamma"),
        (dict(gamma=float("nan")), ValueError, "gamma"),
        (dict(gamma=float("inf")), ValueError, "gamma"),
        (dict(batch_size=0), ValueError, "batch_size"),
        (dict(sequence_length=0), ValueError, "sequence_length"),
        (dict(output_type="pil"), ValueError, "output_type"),
        (dict(batch_size=2, generator=[torch.Generator()]), ValueError, "one generator per sample"),
        (dict(generator=0), TypeError, "generator"),
        (dict(batch_size=3, prompt=["a", "b"]), ValueError, "prompts"),
        (dict(prompt=3), TypeError, "prompt"),
        (dict(prompt="a", known_bits=torch.zeros(30), known_mask=torch.ones(30).bool()), ValueError, "not both"),
        (dict(known_bits=torch.zeros(30)), ValueError, "both"),
        (dict(known_bits=torch.zeros(30), known_mask=torch.ones(30)), TypeError, "bool"),
        (dict(known_bits=torch.full((30,), 0.5), known_mask=torch.ones(30, dtype=torch.bool)), ValueError, "0 or 1"),
        (dict(known_bits=torch.zeros(31), known_mask=torch.ones(31, dtype=torch.bool)), ValueError, "shape"),
        (dict(callback_on_step_end_tensor_inputs=["noise"]), ValueError, "noise"),  # "latents" is accepted
        (dict(autocast_dtype=torch.float64), ValueError, "autocast_dtype"),
    ],
)
def test_bad_inputs_raise_clear_errors(make_pipe, kwargs, error, match):
    pipe = make_pipe()
    kwargs = {"num_inference_steps": 2, "sequence_length": 2, **kwargs}
    with pytest.raises(error, match=match):
        pipe(**kwargs)


def _poison_call(model, call_to_poison: int):
    """Make model call `call_to_poison` return NaN logits (a forward hook)."""
    calls = []

    def poison(module, args, output):
        calls.append(len(calls))
        if calls[-1] == call_to_poison:
            output.logits.fill_(float("nan"))
        return output

    model.register_forward_hook(poison)


def _skips_value_checks(model) -> bool:
    """Whether the pipeline can switch off the model's per-call value checks (then the scheduler reports a NaN)."""
    import inspect

    return "check_values" in inspect.signature(model.forward).parameters


def test_nan_model_output_is_a_clear_error(make_pipe):
    pipe = make_pipe()
    _poison_call(pipe.model, 2)  # the final denoise of 3 levels: checked once, at the end of the run
    with pytest.raises(ValueError, match="model output at level 2 .* NaN or infinite"):
        pipe(num_inference_steps=3, sequence_length=2, generator=seeded(0))


def test_nan_in_the_refining_call_is_a_clear_error(make_pipe):
    pipe = make_pipe(self_conditioning="refined")
    _poison_call(pipe.model, 3)  # the second refining call (calls: 0, refine, 1, refine, final)
    # the next call takes the NaN as its self-conditioning input: a model with per-call checks stops there
    match = "refining call at sigma=.* NaN or infinite" if _skips_value_checks(pipe.model) else "NaN"
    with pytest.raises(ValueError, match=match):
        pipe(num_inference_steps=3, sequence_length=2, generator=seeded(0))


def test_codec_that_cannot_hold_the_vocabulary_fails_at_construction(
    lm1b_scheduler_config, bert_tokenizer, tiny_sdt_factory
):
    with pytest.raises(ValueError, match="bits"):
        BitstreamDiffusionPipeline(
            model=tiny_sdt_factory(bits_per_token=14),
            scheduler=EntropyRateScheduler.from_config(lm1b_scheduler_config),
            tokenizer=bert_tokenizer,
            codec_layout="lm1b",
        )


# ---------------------------------------------------------------------------------------------------------------------
# The codec: built once, rebuilt when a component or a codec setting changes
# ---------------------------------------------------------------------------------------------------------------------


def test_codec_is_built_once(make_pipe, lm1b_scheduler_config):
    pipe = make_pipe()
    codec = pipe.codec
    pipe(prompt="hello", num_inference_steps=2, sequence_length=2, generator=seeded(0))
    pipe.text_to_bits("hello")
    pipe.scheduler = EntropyRateScheduler.from_config(lm1b_scheduler_config)  # not a codec input
    pipe.register_to_config(_name_or_path="elsewhere")
    assert pipe.codec is codec


def test_codec_follows_its_components_and_settings(make_pipe, bert_tokenizer, gpt2_tokenizer, tiny_sdt_factory):
    pipe = make_pipe()
    pipe.register_to_config(codec_layout="generic", codec_num_tokens=5)
    assert pipe.codec.layout == "generic" and pipe.codec.num_tokens == 5
    assert pipe(num_inference_steps=2, generator=seeded(0)).token_ids.shape == (1, 5)  # the new default length

    # GPT-2's 50257 ids need 16 bits and the model has 15: refused, and the pipeline is left as it was
    codec, config = pipe.codec, dict(pipe.config)
    with pytest.raises(ValueError, match="bits"):
        pipe.tokenizer = gpt2_tokenizer
    with pytest.raises(ValueError, match="bits"):
        pipe.register_modules(tokenizer=gpt2_tokenizer)
    assert pipe.tokenizer is bert_tokenizer and pipe.codec is codec and dict(pipe.config) == config

    # a 16-bit model with the GPT-2 tokenizer, replaced together (the tokenizer first would not fit the old model)
    pipe.register_modules(tokenizer=gpt2_tokenizer, model=tiny_sdt_factory(bits_per_token=16))
    assert pipe.codec.tokenizer is gpt2_tokenizer and pipe.codec.bits_per_token == pipe.bits_per_token == 16
    assert pipe.config.tokenizer[1] == type(gpt2_tokenizer).__name__
    assert pipe.text_to_bits("hello world").shape == (1, 5 * 16)
    out = pipe(num_inference_steps=2, generator=seeded(0))
    assert out.bits.shape == (1, 5 * 16) and out.texts == pipe.bits_to_text(out.bits)

    with pytest.raises(ValueError, match="SEP"):
        pipe.register_to_config(codec_layout="lm1b")  # GPT-2 has no [SEP]
    assert pipe.config.codec_layout == "generic" and pipe.codec.layout == "generic"


# ---------------------------------------------------------------------------------------------------------------------
# The steps of a run: initial noise, known bits
# ---------------------------------------------------------------------------------------------------------------------


def test_prepare_latents_is_the_first_draw(make_pipe):
    pipe = make_pipe()
    pipe.scheduler.set_timesteps(4)
    sigma = pipe.scheduler.init_noise_sigma
    latents = pipe.prepare_latents(2, 30, torch.device("cpu"), seeded(3))
    assert torch.equal(latents, 0.5 + sigma * torch.randn(2, 30, generator=seeded(3)))
    per_sample = pipe.prepare_latents(2, 30, torch.device("cpu"), [seeded(3), seeded(4)])
    assert torch.equal(per_sample[1:], 0.5 + sigma * torch.randn(1, 30, generator=seeded(4)))


def test_prepare_known_bits(make_pipe):
    pipe = make_pipe()
    assert pipe.prepare_known_bits(2, 4) is None and pipe.prepare_known_bits(2, 4, prompt="") is None
    known = pipe.prepare_known_bits(2, 4, prompt="hello")  # one BERT token: 15 bits
    assert known.mask.shape == (2, 60) and known.mask[:, :15].all() and not known.mask[:, 15:].any()
    state = torch.full((2, 60), 0.25)
    clamped = known.clamp(state)
    assert torch.equal(clamped[:, 15:], state[:, 15:]) and torch.equal(clamped[:, :15], known.values[:, :15])
    assert pipe.bits_to_text(clamped[:, :15]) == ["hello", "hello"]


# ---------------------------------------------------------------------------------------------------------------------
# Prompts and infilling (known bits clamped at every step)
# ---------------------------------------------------------------------------------------------------------------------


def test_prompt_bits_are_clamped_and_decode_back(make_pipe, bert_tokenizer):
    pipe = make_pipe()
    prompts = ["the quick brown fox", "hello"]
    seen = []
    out = pipe(
        prompt=prompts,
        num_inference_steps=4,
        sequence_length=10,
        generator=seeded(5),
        output_type="probs",
        callback_on_step_end=lambda p, i, s, t: seen.append(t["sample"].clone()) or {},
    )
    assert out.bits.shape[0] == 2  # batch size from the prompts
    for row, prompt in enumerate(prompts):
        ids = bert_tokenizer(prompt, add_special_tokens=False)["input_ids"]
        prefix = pipe.codec.ids_to_bits(torch.tensor([ids]))[0]
        assert torch.equal(out.token_ids[row, : len(ids)], torch.tensor(ids))
        assert torch.equal(out.bits[row, : prefix.numel()], prefix)
        assert torch.equal(out.probs[row, : prefix.numel()], prefix.float())
        for sample in seen:  # the state is clamped at every step, not only at the end
            assert torch.equal(sample[row, : prefix.numel()], prefix.float())
        assert pipe.bits_to_text(out.bits[row, : prefix.numel()])[0] == prompt
        assert pipe.bits_to_text(out.bits[row : row + 1])[0].startswith(prompt)
    # one string: the same prefix for every sample
    out = pipe(batch_size=3, prompt="hello", num_inference_steps=3, sequence_length=4, generator=seeded(0))
    assert all(text.startswith("hello") for text in out.texts)


def test_infill_keeps_the_known_bits(make_pipe):
    pipe = make_pipe()
    text_bits = pipe.text_to_bits(["a b c d e f g h"], sequence_length=8)[0]
    token_mask = torch.tensor([True, True, False, False, True, False, True, True])
    out = pipe(
        batch_size=2,
        known_bits=text_bits,
        known_mask=token_mask,  # per token
        num_inference_steps=4,
        sequence_length=8,
        generator=seeded(2),
    )
    bit_mask = token_mask.repeat_interleave(15)
    known_ids = pipe.codec.bits_to_ids(text_bits)[token_mask]
    for row in range(2):
        assert torch.equal(out.bits[row][bit_mask], text_bits[bit_mask])
        assert torch.equal(out.token_ids[row][token_mask], known_ids)
        assert pipe.codec.decode_ids(out.token_ids[row : row + 1, :2])[0] == "a b"
    # a bit-level mask, different per row
    mask = torch.rand(2, 8 * 15, generator=seeded(9)) < 0.5
    values = (torch.rand(2, 8 * 15, generator=seeded(8)) < 0.5).to(torch.uint8)
    out = pipe(known_bits=values, known_mask=mask, num_inference_steps=3, sequence_length=8, generator=seeded(1))
    assert out.bits.shape[0] == 2 and torch.equal(out.bits[mask], values[mask])


# ---------------------------------------------------------------------------------------------------------------------
# Callbacks and precision
# ---------------------------------------------------------------------------------------------------------------------


def test_callback_sees_every_step_and_can_replace_the_state(make_pipe):
    pipe = make_pipe(self_conditioning="refined")
    kwargs = dict(batch_size=2, num_inference_steps=4, sequence_length=3)
    calls = []

    def record(pipeline, i, sigma, tensors):
        assert pipeline is pipe and sigma.ndim == 0
        assert set(tensors) == {"sample", "denoised", "self_cond"}
        calls.append(i)
        return {}

    baseline = pipe(
        callback_on_step_end=record,
        callback_on_step_end_tensor_inputs=["sample", "denoised", "self_cond"],
        generator=seeded(4),
        **kwargs,
    )
    assert calls == [0, 1, 2, 3] and pipe.num_timesteps == 4

    def force_ones(pipeline, i, sigma, tensors):
        return {"sample": torch.ones_like(tensors["sample"])} if i == 2 else {}

    forced = pipe(callback_on_step_end=force_ones, generator=seeded(4), **kwargs)
    assert not torch.equal(forced.bits, baseline.bits)

    class CountDenoised(PipelineCallback):
        tensor_inputs = ["denoised"]

        def callback_fn(self, pipeline, step_index, timestep, callback_kwargs):
            self.seen = getattr(self, "seen", 0) + 1
            return callback_kwargs

    counter = CountDenoised()
    same = pipe(callback_on_step_end=counter, generator=seeded(4), **kwargs)
    assert counter.seen == 4 and torch.equal(same.bits, baseline.bits)


def test_bf16_autocast_runs(make_pipe):
    pipe = make_pipe()
    kwargs = dict(batch_size=2, num_inference_steps=4, sequence_length=4, output_type="probs")
    reference = pipe(generator=seeded(0), **kwargs)
    out = pipe(autocast_dtype=torch.bfloat16, generator=seeded(0), **kwargs)
    assert out.probs.dtype == torch.float32 and torch.isfinite(out.probs).all() and len(out.texts or []) == 0
    assert (out.bits == reference.bits).float().mean() > 0.8  # bf16 moves borderline bits only
    # bf16 weights: autocast follows the model's dtype
    half = make_pipe(copy.deepcopy(pipe.model).to(torch.bfloat16))
    assert torch.isfinite(half(generator=seeded(0), **kwargs).probs).all()


# ---------------------------------------------------------------------------------------------------------------------
# save_pretrained / from_pretrained
# ---------------------------------------------------------------------------------------------------------------------


def test_save_load_round_trip_lm1b(make_pipe, tmp_path):
    pipe = make_pipe()
    pipe.save_pretrained(tmp_path)
    names = sorted(p.name for p in tmp_path.iterdir() if p.suffix != ".py")  # the code it carries: tests/test_hub_*
    assert names == ["config.json", "model", "model_index.json", "scheduler", "tokenizer"]  # no code_tokenizer
    index = json.loads((tmp_path / "model_index.json").read_text())
    assert index["codec_layout"] == "lm1b" and index["codec_clean_up_tokenization_spaces"] is False

    loaded = BitstreamDiffusionPipeline.from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    assert loaded.code_tokenizer is None
    public = lambda config: {k: v for k, v in config.items() if not k.startswith("_")}  # noqa: E731
    assert public(loaded.scheduler.config) == public(pipe.scheduler.config)
    assert loaded.codec.to_config() == pipe.codec.to_config()
    kwargs = dict(batch_size=2, num_inference_steps=4, sequence_length=6, output_type="probs")
    expected, actual = pipe(generator=seeded(7), **kwargs), loaded(generator=seeded(7), **kwargs)
    assert torch.equal(actual.probs, expected.probs) and actual.texts is None
    assert loaded(generator=seeded(7), **{**kwargs, "output_type": "text"}).texts == pipe.bits_to_text(expected.bits)


@pytest.fixture(scope="module")
def owt_parts(golden_dir, entropy_tables_dir):
    folder = golden_dir / "model" / "owt_tiny"
    model = SDTModel.from_official_checkpoint(
        folder / "release.pt", config=json.loads((folder / "official_config.json").read_text())
    )
    code_tokenizer = CodeTokenizer.from_official_files(
        golden_dir / "codec" / "owt" / "tokenizer_gpt2id_bpe16_53248_base1024.json",
        golden_dir / "codec" / "owt" / "tokenizer_gpt2id_bpe16_53248_base1024.meta.json",
    )
    scheduler_config = EntropyRateScheduler.from_entropy_tables(entropy_tables_dir / "owt", gamma=0.2).config
    return model, code_tokenizer, scheduler_config


def test_owt_layout_round_trip_keeps_the_code_tokenizer(owt_parts, gpt2_tokenizer, golden_dir, tmp_path):
    model, code_tokenizer, scheduler_config = owt_parts
    pipe = BitstreamDiffusionPipeline(
        model=model,
        scheduler=EntropyRateScheduler.from_config(scheduler_config),
        tokenizer=gpt2_tokenizer,
        code_tokenizer=code_tokenizer,
    )
    pipe.set_progress_bar_config(disable=True)
    assert pipe.config.codec_layout == "owt" and pipe.codec.bits_per_token == 16
    owt = torch.load(golden_dir / "codec" / "owt" / "owt_codec.pt", map_location="cpu", weights_only=True)
    decoded = json.loads((golden_dir / "codec" / "owt" / "owt_decode.json").read_text())
    assert pipe.bits_to_text(owt["dataset_bits_rows_0_1"]) == decoded["texts_from_dataset_bits_rows_0_1"]
    text = "Bitstream diffusion writes text one bit at a time.\nA second line."
    assert pipe.bits_to_text(pipe.text_to_bits(text, sequence_length=64)) == [text]

    pipe.save_pretrained(tmp_path)
    assert (tmp_path / "code_tokenizer" / "tokenizer_config.json").is_file()
    loaded = BitstreamDiffusionPipeline.from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    assert isinstance(loaded.code_tokenizer, CodeTokenizer)
    assert loaded.code_tokenizer.meta.to_dict() == code_tokenizer.meta.to_dict()
    assert loaded.codec.to_config() == pipe.codec.to_config()
    assert loaded.bits_to_text(owt["dataset_bits_rows_0_1"]) == decoded["texts_from_dataset_bits_rows_0_1"]
    kwargs = dict(batch_size=2, num_inference_steps=3, generator=seeded(0))
    expected, actual = pipe(**kwargs), loaded(**{**kwargs, "generator": seeded(0)})
    assert actual.texts == expected.texts and torch.equal(actual.bits, expected.bits)
    # an OWT prompt is [EOS] + its GPT-2 ids as codes: the text comes back as the start of every sample
    prompted = loaded(batch_size=2, prompt="The city council", num_inference_steps=3, generator=seeded(1))
    assert all(t.startswith("The city council") for t in prompted.texts)


def test_owt_folder_saved_by_version_0_1_loads(owt_parts, gpt2_tokenizer, golden_dir, tmp_path):
    """Version 0.1 saved the code tokenizer as a plain fast tokenizer with its meta under `code_tokenizer_meta`."""
    import shutil

    from transformers import PreTrainedTokenizerFast

    model, code_tokenizer, scheduler_config = owt_parts
    scheduler = EntropyRateScheduler.from_config(scheduler_config)
    BitstreamDiffusionPipeline(model=model, scheduler=scheduler, tokenizer=gpt2_tokenizer,
                               code_tokenizer=code_tokenizer).save_pretrained(tmp_path)  # fmt: skip
    shutil.rmtree(tmp_path / "code_tokenizer")
    old = PreTrainedTokenizerFast(
        tokenizer_object=code_tokenizer.backend_tokenizer, pad_token="[PAD]", eos_token="[EOSEQ]", unk_token="[UNK]",
        code_tokenizer_meta=code_tokenizer.meta.to_dict(),
    )  # fmt: skip
    old.save_pretrained(tmp_path / "code_tokenizer")
    index = json.loads((tmp_path / "model_index.json").read_text())
    index["code_tokenizer"] = ["transformers", type(old).__name__]
    (tmp_path / "model_index.json").write_text(json.dumps(index))
    loaded = BitstreamDiffusionPipeline.from_pretrained(tmp_path)
    assert isinstance(loaded.code_tokenizer, CodeTokenizer)
    assert loaded.code_tokenizer.meta.to_dict() == code_tokenizer.meta.to_dict()
    owt = torch.load(golden_dir / "codec" / "owt" / "owt_codec.pt", map_location="cpu", weights_only=True)
    decoded = json.loads((golden_dir / "codec" / "owt" / "owt_decode.json").read_text())
    assert loaded.bits_to_text(owt["dataset_bits_rows_0_1"]) == decoded["texts_from_dataset_bits_rows_0_1"]
