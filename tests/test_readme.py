"""Every Python snippet of the README's "Generate" and "On the Hub" sections runs as written, against a tiny pipeline
folder served from an offline hub cache under the README's repo id (the no-package snippet in a fresh interpreter
that cannot import `bitstream_diffusion`)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bitstream_diffusion import BitstreamDiffusionPipeline, EntropyRateScheduler

README = Path(__file__).resolve().parents[1] / "README.md"
REPO_ID = "you/cobit-s-lm1b"
QUICKSTART_FOLDER = "outputs/tiny-wiki/pipeline"


def _section(title: str) -> str:
    text = README.read_text(encoding="utf-8")
    start = text.index(f"## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else None]


def _python_blocks(section: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


@pytest.fixture(scope="module")
def hub_cache(tmp_path_factory, entropy_tables_dir, bert_tokenizer, tiny_sdt_factory) -> Path:
    """An offline hub cache holding a tiny LM1B pipeline under the README's repo id."""
    scheduler = EntropyRateScheduler.from_entropy_tables(entropy_tables_dir / "lm1b", gamma=0.2)
    pipe = BitstreamDiffusionPipeline(
        model=tiny_sdt_factory(max_position_embeddings=16), scheduler=scheduler, tokenizer=bert_tokenizer,
        codec_layout="lm1b", codec_num_tokens=16,
    )
    cache = tmp_path_factory.mktemp("readme") / "hub"
    commit = "0" * 40
    repo = cache / f"models--{REPO_ID.replace('/', '--')}"
    pipe.save_pretrained(repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    return cache


def _run(code: str, cache: Path, tmp_path: Path, *, without_package: bool = False) -> subprocess.CompletedProcess:
    if without_package:
        code = 'import sys\nsys.modules["bitstream_diffusion"] = None  # not installed\n' + code
    env = {**os.environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "m")}
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path, check=False
    )


def test_the_sections_have_their_snippets():
    hub = _python_blocks(_section("On the Hub"))
    assert len(hub) == 3 and all(f'repo_id = "{REPO_ID}"' in block for block in hub)
    assert any("bitstream_diffusion" not in block for block in hub)  # the snippet for users without the package
    generate = _python_blocks(_section("Generate"))
    assert len(generate) == 2 and "freezing = True" in generate[1]  # the snippet, then the CPU fast path


@pytest.mark.slow
@pytest.mark.parametrize("index", [0, 1, 2])
def test_hub_snippets_run_as_written(index, hub_cache, tmp_path):
    block = _python_blocks(_section("On the Hub"))[index]
    without_package = "bitstream_diffusion" not in block
    result = _run(block, hub_cache, tmp_path, without_package=without_package)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip(), "the snippet prints what it made"
    if without_package:
        assert "SDTModel 15" in result.stdout


@pytest.mark.slow
def test_generate_snippet_runs_on_a_pipeline_folder(hub_cache, tmp_path):
    """The "Generate" snippet, with the quickstart's folder replaced by a saved tiny pipeline."""
    folder = tmp_path / QUICKSTART_FOLDER
    snapshot = next((hub_cache / f"models--{REPO_ID.replace('/', '--')}" / "snapshots").iterdir())
    shutil.copytree(snapshot, folder)
    block = _python_blocks(_section("Generate"))[0]
    assert QUICKSTART_FOLDER in block
    result = _run(block, hub_cache, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().endswith(" 255"), result.stdout[-300:]  # the text, then `out.nfe`


@pytest.mark.slow
def test_the_fast_path_snippet_compiles_the_generate_pipeline(hub_cache, tmp_path):
    """The fast-path snippet of "Generate", run after the snippet itself: the compiled, frozen model samples."""
    folder = tmp_path / QUICKSTART_FOLDER
    snapshot = next((hub_cache / f"models--{REPO_ID.replace('/', '--')}" / "snapshots").iterdir())
    shutil.copytree(snapshot, folder)
    generate, fast_path = _python_blocks(_section("Generate"))
    check = (
        "\nbits = pipe(batch_size=2, num_inference_steps=8, output_type='bits',"
        " generator=torch.Generator().manual_seed(1)).bits"
        "\nprint('fast path', pipe.model._compiled_call_impl is not None, bits.shape[0])\n"
    )
    result = _run(generate + fast_path + check, hub_cache, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().endswith("fast path True 2"), result.stdout[-300:]
