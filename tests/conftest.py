"""Shared fixtures: offline mode, the ``../shared`` golden data, and the packaged real-world assets."""

from __future__ import annotations

import os
import socket
import sys
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
    from bitstream_diffusion.offline.assets import load_bert_uncased_tokenizer

    return load_bert_uncased_tokenizer()


@pytest.fixture(scope="session")
def gpt2_tokenizer():
    from bitstream_diffusion.offline.assets import load_gpt2_tokenizer

    return load_gpt2_tokenizer()


@pytest.fixture(scope="session")
def wiki_summaries() -> list[str]:
    from bitstream_diffusion.offline.assets import load_wiki_summaries

    return load_wiki_summaries()


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "slow: real data, training runs, several processes or fresh interpreters (CI runs them; skip locally with "
        "`-m 'not slow'`)",
    )


TINY_SDT = dict(
    bits_per_token=15,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=64,
    content_dim=8,
    head_hidden_size=16,
    max_position_embeddings=16,
)


def make_tiny_sdt(seed: int = 0, scale: float = 0.1, **overrides):
    """A tiny SDT whose every weight is random (the zero-initialised adaLN layers too), so the network matters."""
    import torch

    from bitstream_diffusion import SDTModel

    model = SDTModel(make_tiny_sdt_config(**overrides)).eval()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * scale)
    return model


def make_tiny_sdt_config(**overrides):
    """The configuration of the tiny test SDT (hidden 32, 2 layers, 2 heads, 15 bits x 16 tokens), with overrides."""
    from bitstream_diffusion import SDTConfig

    return SDTConfig(**{**TINY_SDT, **overrides})


@pytest.fixture(scope="session")
def tiny_sdt_config():
    """`make_tiny_sdt_config(**config_overrides)`: an `SDTConfig` of the tiny test model."""
    return make_tiny_sdt_config


@pytest.fixture(scope="session")
def tiny_sdt_factory():
    """`make_tiny_sdt(seed=0, scale=0.1, **config_overrides)`."""
    return make_tiny_sdt


@pytest.fixture(scope="session")
def tiny_pipe_factory(entropy_tables_dir, bert_tokenizer, tiny_sdt_factory):
    """`make(pipeline_kwargs=None, **scheduler_kwargs)`: a pipeline of a fresh tiny SDT, the official LM1B entropy
    table (with `scheduler_kwargs`), bert-base-uncased and the LM1B layout, its progress bar off."""
    from bitstream_diffusion import BitstreamDiffusionPipeline, EntropyRateScheduler

    def make(pipeline_kwargs: dict | None = None, **scheduler_kwargs):
        scheduler = EntropyRateScheduler.from_entropy_tables(entropy_tables_dir / "lm1b", **scheduler_kwargs)
        pipe = BitstreamDiffusionPipeline(
            model=tiny_sdt_factory(),
            scheduler=scheduler,
            tokenizer=bert_tokenizer,
            codec_layout="lm1b",
            **(pipeline_kwargs or {}),
        )
        pipe.set_progress_bar_config(disable=True)
        return pipe

    return make


@pytest.fixture(scope="session")
def two_cpu_processes_launch():
    """`command(*target)`: the `accelerate launch` command line that runs `target` (a script path, or `"-m", module`,
    then its arguments) in two CPU processes (gloo) on a free port.

    `accelerate launch --cpu --num_processes 2` starts a single process in accelerate 1.15 (its simple launcher needs
    MPI for more), so the command launches torchrun-style with `--multi_gpu` on a machine without GPUs; the launched
    code then selects CPU/gloo itself.
    """

    def command(*target) -> list[str]:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        return [
            sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
            "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
            "--main_process_port", str(port), *map(str, target),
        ]  # fmt: skip

    return command
