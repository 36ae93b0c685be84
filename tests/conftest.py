"""Shared fixtures: offline mode, the ``../shared`` golden data, and the packaged real-world assets."""

from __future__ import annotations

import os
from pathlib import Path

for _var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_EVALUATE_OFFLINE"):
    os.environ.setdefault(_var, "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DIR = Path(os.environ.get("BITSTREAM_SHARED_DIR", REPO_ROOT.parent / "shared")).resolve()


def _require(path: Path, what: str) -> Path:
    """Return ``path`` if it exists; fail under CI, skip with a reason elsewhere."""
    if path.exists():
        return path
    message = f"{what} not found at {path}; set BITSTREAM_SHARED_DIR or place the shared folder next to the repo."
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    return _require(SHARED_DIR, "shared data folder")


@pytest.fixture(scope="session")
def golden_dir(shared_dir: Path) -> Path:
    return _require(shared_dir / "golden", "golden data")


@pytest.fixture(scope="session")
def entropy_tables_dir(shared_dir: Path) -> Path:
    return _require(shared_dir / "entropy_tables", "official entropy tables")


@pytest.fixture(scope="session")
def bert_tokenizer():
    from bitstream_diffusion.utils.packaged_assets import load_bert_uncased_tokenizer

    return load_bert_uncased_tokenizer()


@pytest.fixture(scope="session")
def gpt2_tokenizer():
    from bitstream_diffusion.utils.packaged_assets import load_gpt2_tokenizer

    return load_gpt2_tokenizer()


@pytest.fixture(scope="session")
def wiki_summaries() -> list[str]:
    from bitstream_diffusion.utils.packaged_assets import load_wiki_summaries

    return load_wiki_summaries()


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: real-data or multi-process tests (run in CI too)")
