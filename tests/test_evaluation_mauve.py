"""MAUVE: real text scores high against other real text and low against word salad; features are mauve's."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from bitstream_diffusion.evaluation import MauveFeaturizer, compute_mauve, mauve_from_features


@pytest.fixture(scope="module")
def tiny_causal_lm(gpt2_tokenizer):
    """A small random Llama causal LM with the real GPT-2 tokenizer (features are checked, not their quality)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(gpt2_tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=128)
    return LlamaForCausalLM(config).eval()


def test_features_are_the_last_token_state_of_the_final_layer(tiny_causal_lm, gpt2_tokenizer, wiki_summaries):
    """Batched, right-padded features equal one-text-at-a-time final-layer states at the last token."""
    texts = [wiki_summaries[0][:40], wiki_summaries[1], "", wiki_summaries[2][:200]]
    featurizer = MauveFeaturizer(model=tiny_causal_lm, tokenizer=gpt2_tokenizer, device="cpu")
    features = featurizer.featurize(texts, max_text_length=24, batch_size=3)
    assert features.shape == (3, 32) and features.dtype == np.float32  # the empty text is dropped
    for row, text in zip(features, [t for t in texts if t]):
        ids = gpt2_tokenizer(text, truncation=True, max_length=24)["input_ids"]
        with torch.no_grad():
            states = tiny_causal_lm(torch.tensor([ids]), output_hidden_states=True).hidden_states[-1]
        np.testing.assert_allclose(row, states[0, -1].numpy(), rtol=1e-4, atol=1e-5)
    lengths = [len(ids) for ids in featurizer.tokenize(texts, 24)]
    assert max(lengths) == 24 and lengths[2] == 0


def test_result_fields_and_seed(tiny_causal_lm, gpt2_tokenizer, wiki_summaries):
    featurizer = MauveFeaturizer(model=tiny_causal_lm, tokenizer=gpt2_tokenizer, device="cpu")
    kwargs = dict(featurizer=featurizer, max_text_length=16, num_buckets=3, kmeans_num_redo=1)
    first = compute_mauve(wiki_summaries[:20], wiki_summaries[20:50], **kwargs)
    again = compute_mauve(wiki_summaries[:20], wiki_summaries[20:50], **kwargs)
    assert first == again
    assert 0 < first.mauve <= 1 and 0 <= first.frontier_integral <= 1
    assert (first.num_predictions, first.num_references, first.num_buckets) == (20, 30, 3)
    assert len(first.p_hist) == 3 and sum(first.p_hist) == pytest.approx(1.0)
    assert first.max_text_length == 16 and first.seed == 25
    features = featurizer.featurize(wiki_summaries[:20], max_text_length=16)
    reference = featurizer.featurize(wiki_summaries[20:50], max_text_length=16)
    direct = mauve_from_features(features, reference, num_buckets=3, kmeans_num_redo=1)
    assert direct.mauve == first.mauve


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"predictions": "one text"}, TypeError, "lists of texts"),
        ({"predictions": []}, ValueError, "texts on both sides"),
        ({"num_buckets": 1}, ValueError, "num_buckets"),
        ({"num_buckets": 50}, ValueError, "more than the smaller side"),
        ({"max_text_length": 0}, ValueError, "max_text_length"),
        ({"batch_size": 0}, ValueError, "batch_size"),
        ({"predictions": ["", ""]}, ValueError, "every text is empty"),
    ],
)
def test_bad_input_is_named(tiny_causal_lm, gpt2_tokenizer, wiki_summaries, kwargs, error, match):
    featurizer = MauveFeaturizer(model=tiny_causal_lm, tokenizer=gpt2_tokenizer, device="cpu")
    arguments = {"predictions": wiki_summaries[:5], "references": wiki_summaries[5:10], "featurizer": featurizer,
                 "max_text_length": 8, **kwargs}
    with pytest.raises(error, match=match):
        compute_mauve(arguments.pop("predictions"), arguments.pop("references"), **arguments)


def test_missing_featurizer_folder_is_named(tmp_path):
    with pytest.raises(OSError, match="prepare_gguf_evaluator"):
        compute_mauve(["a"], ["b"], featurize_model_id=str(tmp_path / "missing-evaluator"), device="cpu")


def _shuffle_words(text: str, rng: random.Random) -> str:
    words = text.split()
    rng.shuffle(words)
    return " ".join(words)


@pytest.mark.slow
def test_real_text_is_close_to_real_text_and_far_from_word_salad(wiki_summaries):
    """SmolLM2 features of 80 + 80 real Wikipedia summaries and the first 80 with their words shuffled.

    Sizes are chosen for a CPU: 3 x 80 texts of 32 tokens are about two minutes of SmolLM2 on two cores, and
    ``num_buckets="auto"`` gives 8 clusters. Measured: real vs real 0.968, shuffled vs real 0.293; the tolerances
    leave room for other kernels moving a few features to another cluster.
    """
    from bitstream_diffusion.offline import prepare_gguf_evaluator

    featurizer = MauveFeaturizer(prepare_gguf_evaluator(), device="cpu")
    rng = random.Random(0)
    references, other_real = wiki_summaries[:80], wiki_summaries[80:160]
    shuffled = [_shuffle_words(text, rng) for text in references]
    assert not set(references) & set(other_real)
    features = {
        name: featurizer.featurize(texts, max_text_length=32, batch_size=16)
        for name, texts in (("references", references), ("real", other_real), ("shuffled", shuffled))
    }
    real = mauve_from_features(features["real"], features["references"], seed=25)
    salad = mauve_from_features(features["shuffled"], features["references"], seed=25)
    assert real.num_buckets == 8
    assert real.mauve > 0.8, real.mauve
    assert salad.mauve < 0.4, salad.mauve
    assert real.mauve - salad.mauve > 0.5
    assert mauve_from_features(features["real"], features["references"], seed=25).mauve == real.mauve


def test_evaluate_module_loads_offline_and_calls_compute_mauve(tmp_path, tiny_causal_lm, gpt2_tokenizer,
                                                               wiki_summaries):
    import os
    from pathlib import Path

    import evaluate
    from evaluate.loading import get_imports

    folder = Path(__file__).resolve().parents[1] / "metrics" / "mauve"
    libraries = {name for kind, name, *_ in get_imports(str(folder / "mauve.py")) if kind == "library"}
    assert libraries == {"datasets", "evaluate", "bitstream_diffusion"}
    assert os.environ.get("HF_EVALUATE_OFFLINE") == "1"
    metric = evaluate.load(str(folder))
    assert sorted(metric.features) == ["predictions", "references"] and "pillutla2021mauve" in metric.citation

    tiny_causal_lm.save_pretrained(tmp_path / "featurizer")
    gpt2_tokenizer.save_pretrained(tmp_path / "featurizer")
    kwargs = dict(featurize_model_id=str(tmp_path / "featurizer"), max_text_length=16, num_buckets=3, device="cpu")
    out = metric.compute(predictions=wiki_summaries[:12], references=wiki_summaries[12:24], **kwargs)
    direct = compute_mauve(wiki_summaries[:12], wiki_summaries[12:24], **kwargs)
    assert out["mauve"] == direct.mauve and out["num_predictions"] == 12
