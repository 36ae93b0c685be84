"""The `bitstream-text-generation` task with transformers' `text-generation` keywords: per-prompt noise from `seed`,
`batch_size`, `max_new_tokens`, `return_full_text`, `num_return_sequences`, and a clear refusal of the rest."""

from __future__ import annotations

import json

import pytest
import torch
import transformers

from bitstream_diffusion import BitstreamDiffusionPipeline, EntropyRateScheduler, SDTModel
from bitstream_diffusion.codecs import CodeTokenizer
from bitstream_diffusion.pipelines import TASK_NAME, register_bitstream_text_generation_task
from bitstream_diffusion.pipelines.random_streams import sample_generators

SAMPLE = dict(num_inference_steps=3, sequence_length=6)


@pytest.fixture(scope="module")
def pipe(tiny_pipe_factory):
    return tiny_pipe_factory(gamma=0.2, pipeline_kwargs=dict(codec_clean_up_tokenization_spaces=False))


@pytest.fixture(scope="module")
def task(pipe):
    register_bitstream_text_generation_task()
    return transformers.pipeline(TASK_NAME, model=pipe, device="cpu")


def ids_of(records) -> list[list[int]]:
    return [record["generated_token_ids"] for record in records]


def test_seed_gives_every_prompt_its_own_noise(task, pipe):
    first = task(["a", "a"], seed=0, return_tensors=True, **SAMPLE)
    assert [len(records) for records in first] == [1, 1]
    assert ids_of(first[0]) != ids_of(first[1])  # the old task drew both from one seed: identical samples
    assert first == task(["a", "a"], seed=0, return_tensors=True, **SAMPLE)  # reproducible
    # sample j of input i draws from the stream (i, j) of the seed
    for index in (0, 1):
        reference = pipe(prompt="a", generator=sample_generators(0, [(index, 0)]), **SAMPLE)
        assert ids_of(first[index]) == reference.token_ids.tolist()
    assert task("a", seed=0, return_tensors=True, **SAMPLE) == first[0]  # a single input is input 0


def test_batch_size_does_not_change_the_samples(task, pipe):
    prompts = ["the cat", "a", "hello world", ""]
    kwargs = dict(seed=3, num_return_sequences=2, return_tensors=True, **SAMPLE)
    one_at_a_time = task(prompts, batch_size=1, **kwargs)
    assert [len(records) for records in one_at_a_time] == [2, 2, 2, 2]
    for batch_size in (2, 3, 4):
        assert task(prompts, batch_size=batch_size, **kwargs) == one_at_a_time
    batched_at_construction = transformers.pipeline(TASK_NAME, model=pipe, device="cpu", batch_size=3)
    assert batched_at_construction(prompts, **kwargs) == one_at_a_time
    # a generator of inputs streams its outputs lazily, in order
    assert list(task((p for p in prompts), batch_size=3, **kwargs)) == one_at_a_time
    # and max_batch_size (the diffusion pipeline's chunks) changes nothing either
    assert task(prompts, batch_size=4, max_batch_size=3, **kwargs) == one_at_a_time


def test_max_new_tokens_counts_the_tokens_after_the_prompt(task, bert_tokenizer):
    kwargs = dict(seed=1, num_inference_steps=3, return_tensors=True)
    prompted = task("the quick brown fox", max_new_tokens=3, num_return_sequences=2, **kwargs)
    prompt_ids = bert_tokenizer("the quick brown fox", add_special_tokens=False)["input_ids"]
    assert [len(ids) for ids in ids_of(prompted)] == [len(prompt_ids) + 3] * 2
    assert all(ids[: len(prompt_ids)] == prompt_ids for ids in ids_of(prompted))
    assert [len(ids) for ids in ids_of(task(max_new_tokens=4, **kwargs))] == [4]
    # prompts of different lengths in one batch: each gets its own length, and the batch changes nothing
    mixed = task(["the quick brown fox", "a"], max_new_tokens=2, batch_size=2, **kwargs)
    assert [len(ids_of(records)[0]) for records in mixed] == [len(prompt_ids) + 2, 1 + 2]
    assert mixed == task(["the quick brown fox", "a"], max_new_tokens=2, batch_size=1, **kwargs)
    with pytest.raises(ValueError, match="either `max_new_tokens`"):
        task("a", max_new_tokens=2, sequence_length=8, **kwargs)


def test_return_full_text(task, pipe):
    kwargs = dict(seed=2, num_return_sequences=2, max_new_tokens=4, num_inference_steps=3)
    full = task("The Cat", **kwargs)
    new = task("The Cat", return_full_text=False, **kwargs)
    samples = task("The Cat", return_tensors=True, **kwargs)
    for full_record, new_record, sample in zip(full, new, samples, strict=True):
        decoded = pipe.codec.decode_ids([sample["generated_token_ids"]])[0]
        assert decoded.startswith("the cat") and full_record["generated_text"] == "The Cat" + decoded[len("the cat") :]
        assert new_record["generated_text"] == decoded[len("the cat") :] and new_record["generated_text"].strip()
    # nothing to strip without a prompt
    assert task(seed=2, return_full_text=False, **SAMPLE) == task(seed=2, **SAMPLE)


def test_generator_gives_the_seed_by_one_draw(task):
    generator = torch.Generator().manual_seed(11)
    seed = int(torch.randint(0, 2**63 - 1, (1,), generator=torch.Generator().manual_seed(11)).item())
    assert task(["a", "b"], generator=generator, **SAMPLE) == task(["a", "b"], seed=seed, **SAMPLE)
    # a list of generators is one per sample of a single input
    listed = task("a", generator=sample_generators(5, [(0, 0), (0, 1)]), num_return_sequences=2, **SAMPLE)
    assert listed == task("a", seed=5, num_return_sequences=2, **SAMPLE)


@pytest.mark.parametrize("keyword", ["temperature", "do_sample", "max_length", "top_k", "num_workers"])
def test_other_text_generation_keywords_are_refused_with_the_supported_list(task, keyword):
    with pytest.raises(TypeError, match=f"Unknown arguments \\['{keyword}'\\]") as error:
        task("a", **{keyword: 1})
    for supported in ("num_return_sequences", "max_new_tokens", "return_full_text", "batch_size", "seed"):
        assert supported in str(error.value)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(num_return_sequences=0), ValueError, "num_return_sequences"),
        (dict(max_new_tokens=0), ValueError, "max_new_tokens"),
        (dict(batch_size=0), ValueError, "batch_size"),
        (dict(seed=-1), ValueError, "seed"),
        (dict(seed=0, generator=torch.Generator()), ValueError, "either `seed` or `generator`"),
        (dict(generator=[torch.Generator()]), ValueError, "single input"),
        (dict(generator=3), TypeError, "generator"),
    ],
)
def test_bad_keywords(task, kwargs, error, match):
    with pytest.raises(error, match=match):
        task(["a", "b"], **kwargs, **SAMPLE)


def test_owt_prompt_counts_its_eos_and_keeps_the_text(golden_dir, entropy_tables_dir, gpt2_tokenizer):
    """OWT rows start with [EOS]: it is a prompt token, and the generated text still follows the prompt's text."""
    folder = golden_dir / "model" / "owt_tiny"
    model = SDTModel.from_official_checkpoint(
        folder / "release.pt", config=json.loads((folder / "official_config.json").read_text())
    )
    codec_dir = golden_dir / "codec" / "owt"
    code_tokenizer = CodeTokenizer.from_official_files(
        codec_dir / "tokenizer_gpt2id_bpe16_53248_base1024.json",
        codec_dir / "tokenizer_gpt2id_bpe16_53248_base1024.meta.json",
    )
    pipe = BitstreamDiffusionPipeline(
        model=model,
        scheduler=EntropyRateScheduler.from_entropy_tables(entropy_tables_dir / "owt", gamma=0.2),
        tokenizer=gpt2_tokenizer,
        code_tokenizer=code_tokenizer,
    )
    task = transformers.pipeline(TASK_NAME, model=pipe, device="cpu")
    kwargs = dict(seed=0, max_new_tokens=3, num_inference_steps=3, num_return_sequences=2)
    full = task("The city council", return_tensors=True, **kwargs)
    new = task("The city council", return_full_text=False, **kwargs)
    prompt_length = len(pipe.codec.prompt_ids("The city council")[0])  # [EOS] + the codes of the text
    for full_record, new_record in zip(full, new, strict=True):
        assert len(full_record["generated_token_ids"]) == prompt_length + 3
        assert full_record["generated_text"] == "The city council" + new_record["generated_text"]
        assert full_record["generated_text"] == pipe.codec.decode_ids([full_record["generated_token_ids"]])[0]
