"""A large batch split into chunks (`max_batch_size`): the bits of one big batch with per-sample generators, derived
per-sample streams for a single generator, one progress bar, callbacks per chunk, and the automatic chunk size."""

from __future__ import annotations

import pytest
import torch

from bitstream_diffusion import BitstreamDiffusionPipeline, EntropyRateScheduler, SDTConfig
from bitstream_diffusion.pipelines import batching, pipeline_bitstream_diffusion
from bitstream_diffusion.pipelines.batching import auto_max_batch_size, batch_chunks, estimate_sample_bytes
from bitstream_diffusion.pipelines.random_streams import derive_sample_generators, sample_generators, sample_seed

RUN = dict(num_inference_steps=4, sequence_length=6, output_type="probs")


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def generators(batch_size: int, offset: int = 100) -> list[torch.Generator]:
    return [seeded(offset + i) for i in range(batch_size)]


@pytest.fixture(scope="module")
def scheduler_config(entropy_tables_dir):
    return EntropyRateScheduler.from_entropy_tables(entropy_tables_dir / "lm1b", gamma=0.2).config


@pytest.fixture
def make_pipe(scheduler_config, bert_tokenizer, tiny_sdt_factory):
    def make(**scheduler_overrides) -> BitstreamDiffusionPipeline:
        pipe = BitstreamDiffusionPipeline(
            model=tiny_sdt_factory(),
            scheduler=EntropyRateScheduler.from_config(scheduler_config, **scheduler_overrides),
            tokenizer=bert_tokenizer,
            codec_layout="lm1b",
            codec_clean_up_tokenization_spaces=False,
        )
        pipe.set_progress_bar_config(disable=True)
        return pipe

    return make


def test_batch_chunks():
    assert batch_chunks(5, None) == [slice(0, 5)] and batch_chunks(5, 8) == [slice(0, 5)]
    assert batch_chunks(5, 2) == [slice(0, 2), slice(2, 4), slice(4, 5)]
    assert batch_chunks(4, 1) == [slice(i, i + 1) for i in range(4)]


@pytest.mark.parametrize("self_conditioning", ["carry", "refined"])
def test_chunks_with_per_sample_generators_give_the_bits_of_one_batch(make_pipe, self_conditioning):
    pipe = make_pipe(self_conditioning=self_conditioning)
    prompts = ["the cat", "a", "hello world", "", "dogs"]
    whole = pipe(prompt=prompts, generator=generators(5), **RUN)
    for max_batch_size in (1, 2, 3):
        chunked = pipe(prompt=prompts, generator=generators(5), max_batch_size=max_batch_size, **RUN)
        assert torch.equal(chunked.bits, whole.bits) and torch.equal(chunked.token_ids, whole.token_ids)
        torch.testing.assert_close(chunked.probs, whole.probs, atol=1e-6, rtol=0)
        assert chunked.nfe == whole.nfe == pipe.scheduler.num_model_calls(4)  # calls per sample
    texts = pipe(prompt=prompts, generator=generators(5), max_batch_size=2, output_type="text", **{
        k: v for k, v in RUN.items() if k != "output_type"
    }).texts
    assert texts == pipe.bits_to_text(whole.bits) and texts[0].startswith("the cat")


def test_chunked_latents_and_known_bits(make_pipe):
    pipe = make_pipe()
    known = (torch.rand(3, 6 * 15, generator=seeded(9)) < 0.5).to(torch.uint8)
    mask = torch.rand(3, 6 * 15, generator=seeded(8)) < 0.3
    kwargs = dict(known_bits=known, known_mask=mask, num_inference_steps=3, sequence_length=6, output_type="latent")
    whole = pipe(generator=generators(3), **kwargs)
    chunked = pipe(generator=generators(3), max_batch_size=2, **kwargs)
    assert chunked.latents.shape == (3, 6 * 15) and torch.equal(chunked.latents, whole.latents)
    assert torch.equal(chunked.bits[mask], known[mask])


def test_single_generator_is_split_into_derived_per_sample_streams(make_pipe):
    pipe = make_pipe()
    derived = pipe(batch_size=4, generator=derive_sample_generators(seeded(3), 4), **RUN)
    for max_batch_size in (4, 3, 1, "auto"):  # "auto" runs the whole batch on the CPU, with derived streams too
        out = pipe(batch_size=4, generator=seeded(3), max_batch_size=max_batch_size, **RUN)
        assert torch.equal(out.bits, derived.bits), max_batch_size
    # without max_batch_size, one generator draws the whole batch at once, as the official sampler does
    official = pipe(batch_size=4, generator=seeded(3), **RUN)
    assert not torch.equal(official.bits, derived.bits)
    assert torch.equal(official.bits, pipe(batch_size=4, generator=seeded(3), **RUN).bits)


def test_progress_bar_and_callbacks_across_chunks(make_pipe):
    pipe = make_pipe(self_conditioning="refined")
    totals, updates = [], []

    class Bar:
        def __init__(self, total):
            totals.append(total)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def update(self, n=1):
            updates.append(n)

    pipe.progress_bar = lambda total=None, iterable=None: Bar(total)
    seen = []

    def record(pipeline, step_index, sigma, tensors):
        seen.append((step_index, pipeline.chunk_rows, tensors["sample"].shape[0]))
        return {}

    model_rows = []
    handle = pipe.model.register_forward_hook(lambda module, args, output: model_rows.append(args[0].shape[0]))
    pipe(batch_size=5, generator=generators(5), max_batch_size=2, callback_on_step_end=record, **RUN)
    handle.remove()
    calls = pipe.scheduler.num_model_calls(4)
    assert model_rows == [2] * calls + [2] * calls + [1] * calls  # the model never sees more than a chunk
    assert totals == [3 * calls] and sum(updates) == 3 * calls  # one bar over the three chunks
    assert [s[0] for s in seen] == [0, 1, 2, 3] * 3 and pipe.num_timesteps == 4  # steps restart per chunk
    assert [(s[1], s[2]) for s in seen[::4]] == [(slice(0, 2), 2), (slice(2, 4), 2), (slice(4, 5), 1)]


@pytest.mark.parametrize("value", [0, -1, 2.5, "big", True])
def test_bad_max_batch_size(make_pipe, value):
    with pytest.raises(ValueError, match="max_batch_size"):
        make_pipe()(batch_size=2, max_batch_size=value, **RUN)


def test_auto_chunk_size_from_free_memory(monkeypatch):
    config = SDTConfig.from_preset("cobit-s-owt")
    per_sample = estimate_sample_bytes(config, 1024, materialized_attention=False)
    assert 100 * 2**20 < per_sample < estimate_sample_bytes(config, 1024) < 400 * 2**20  # measured: 108/211 MiB
    assert auto_max_batch_size(config, 1024, torch.device("cpu")) is None  # host memory is not measured
    config._attn_implementation = "sdpa"
    free = 10 * per_sample
    assert auto_max_batch_size(config, 1024, torch.device("cpu"), free_bytes=free, memory_fraction=1.0) == 10
    assert auto_max_batch_size(config, 1024, torch.device("cpu"), free_bytes=free, memory_fraction=0.5) == 5
    assert auto_max_batch_size(config, 1024, torch.device("cpu"), free_bytes=1) == 1  # never 0
    config._attn_implementation = "eager"
    assert auto_max_batch_size(config, 1024, torch.device("cpu"), free_bytes=free, memory_fraction=1.0) < 10
    # on CUDA the free memory comes from torch.cuda.mem_get_info (a 140 GB device: OWT x 1024 needs chunks)
    config._attn_implementation = "sdpa"
    asked = []
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: asked.append(device) or (140 * 10**9, 141 * 10**9))
    chunk = auto_max_batch_size(config, 1024, torch.device("cuda", 0))
    assert asked == [torch.device("cuda", 0)]
    assert chunk == int(140 * 10**9 * batching.AUTO_MEMORY_FRACTION) // per_sample
    assert 1 <= chunk < 1024


def test_auto_chunk_size_is_used_by_the_pipeline(make_pipe, monkeypatch):
    pipe = make_pipe()
    asked = []

    def fake_auto(config, num_tokens, device):
        asked.append((num_tokens, device.type))
        return 2

    monkeypatch.setattr(pipeline_bitstream_diffusion, "auto_max_batch_size", fake_auto)
    rows = []
    out = pipe(
        batch_size=3,
        generator=generators(3),
        max_batch_size="auto",
        callback_on_step_end=lambda p, i, s, t: rows.append(p.chunk_rows) or {},
        **RUN,
    )
    assert asked == [(6, "cpu")] and rows == [slice(0, 2)] * 4 + [slice(2, 3)] * 4
    assert torch.equal(out.bits, pipe(batch_size=3, generator=generators(3), **RUN).bits)


def test_random_streams():
    assert sample_seed(0, (0, 1)) == sample_seed(0, (0, 1))
    seeds = {sample_seed(s, key) for s in (0, 1) for key in [(0,), (1,), (0, 0), (0, 1), (1, 0)]}
    assert len(seeds) == 10  # every (seed, key) its own stream
    first, second = sample_generators(5, [(0,), (1,)])
    assert not torch.equal(torch.randn(4, generator=first), torch.randn(4, generator=second))
    with pytest.raises(ValueError, match="seed"):
        sample_seed(-1, (0,))
    # derived streams: one draw from the generator, deterministic
    generator = seeded(7)
    derived = derive_sample_generators(generator, 3)
    assert len(derived) == 3
    after = torch.randn(2, generator=generator)
    reference = seeded(7)
    torch.randint(0, 2**63 - 1, (1,), generator=reference)
    assert torch.equal(after, torch.randn(2, generator=reference))
    again = derive_sample_generators(seeded(7), 3)
    assert all(torch.equal(torch.randn(3, generator=a), torch.randn(3, generator=b)) for a, b in zip(derived, again))
