"""End to end on CPU: a tiny SDT with the real BERT tokenizer, saved as a pipeline folder, generating text through
`BitstreamDiffusionPipeline.from_pretrained` and `transformers.pipeline("bitstream-text-generation")`, in this process
and in fresh ones."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
import transformers

from bitstream_diffusion import BitstreamDiffusionPipeline
from bitstream_diffusion.pipelines import (
    TASK_NAME,
    BitstreamPipelineFolderConfig,
    BitstreamTextGenerationPipeline,
    register_bitstream_text_generation_task,
)
from bitstream_diffusion.pipelines.random_streams import sample_generators

SAMPLE = dict(num_inference_steps=4, sequence_length=6)


@pytest.fixture(scope="module")
def pipe(tiny_pipe_factory):
    return tiny_pipe_factory(gamma=0.2, pipeline_kwargs=dict(codec_clean_up_tokenization_spaces=False))


@pytest.fixture(scope="module")
def folder(pipe, tmp_path_factory):
    path = tmp_path_factory.mktemp("cobit_tiny_pipeline")
    pipe.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def expected(pipe):
    """Two samples of seed 0, the reference for every loading route."""
    return pipe(batch_size=2, generator=torch.Generator().manual_seed(0), return_probs=True, **SAMPLE)


@pytest.fixture(scope="module")
def expected_task(pipe):
    """What the task's `seed=0` samples for one input and two return sequences: one stream per sample."""
    return pipe(batch_size=2, generator=sample_generators(0, [(0, 0), (0, 1)]), **SAMPLE)


def test_folder_layout(folder):
    expected = ["config.json", "model", "model_index.json", "scheduler", "tokenizer"]
    assert sorted(p.name for p in folder.iterdir() if p.suffix != ".py") == expected  # code: tests/test_hub_*
    entry = json.loads((folder / "config.json").read_text())
    assert entry["model_type"] == BitstreamPipelineFolderConfig.model_type and entry["model_subfolder"] == "model"
    assert json.loads((folder / "model" / "config.json").read_text())["model_type"] == "bitstream_sdt"


def test_from_pretrained_generates_the_same_text(folder, expected):
    loaded = BitstreamDiffusionPipeline.from_pretrained(folder)
    loaded.set_progress_bar_config(disable=True)
    out = loaded(batch_size=2, generator=torch.Generator().manual_seed(0), **SAMPLE)
    assert out.texts == expected.texts and all(isinstance(t, str) and t for t in out.texts)
    assert torch.equal(out.bits, expected.bits)


def test_transformers_pipeline_task(folder, pipe, expected_task):
    register_bitstream_text_generation_task()
    register_bitstream_text_generation_task()  # idempotent
    generator = transformers.pipeline(TASK_NAME, model=str(folder), device="cpu")
    assert isinstance(generator, BitstreamTextGenerationPipeline)
    assert generator.diffusion_pipeline.config.codec_layout == "lm1b"

    outputs = generator(num_return_sequences=2, seed=0, **SAMPLE)
    assert [o["generated_text"] for o in outputs] == expected_task.texts

    prompted = generator("the cat", seed=1, return_tensors=True, **SAMPLE)
    assert len(prompted) == 1 and prompted[0]["generated_text"].startswith("the cat")
    assert prompted[0]["generated_token_ids"][:2] == [1996, 4937]  # "the", "cat"

    several = generator(["the cat", "a dog"], seed=1, **SAMPLE)
    assert [len(o) for o in several] == [1, 1] and several[1][0]["generated_text"].startswith("a dog")

    # the SDT subfolder and a pipeline object resolve the same pipeline
    for model in (str(folder / "model"), pipe):
        other = transformers.pipeline(TASK_NAME, model=model, device="cpu")
        assert [o["generated_text"] for o in other(num_return_sequences=2, seed=0, **SAMPLE)] == expected_task.texts

    with pytest.raises(TypeError, match="Unknown arguments"):
        generator(temperature=0.7)


def test_public_names_resolve():
    import bitstream_diffusion.pipelines as pipelines
    from bitstream_diffusion.pipelines import bitstream_text_generation, pipeline_folder

    assert sorted(pipelines.__all__) == sorted(pipelines._LAZY_ATTRIBUTES)
    assert all(getattr(pipelines, name) is not None for name in pipelines.__all__)
    # the folder-config names live in `pipeline_folder` and stay importable from the task module
    assert bitstream_text_generation.BitstreamPipelineFolderConfig is pipeline_folder.BitstreamPipelineFolderConfig
    assert bitstream_text_generation.write_transformers_entry_point is pipeline_folder.write_transformers_entry_point


def _run(code: str, cwd) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return result


@pytest.mark.slow
def test_fresh_process_from_pretrained_gives_the_same_samples(folder, expected, tmp_path):
    _run(
        f"""
        import torch
        from bitstream_diffusion import BitstreamDiffusionPipeline

        pipe = BitstreamDiffusionPipeline.from_pretrained({str(folder)!r})
        pipe.set_progress_bar_config(disable=True)
        out = pipe(batch_size=2, num_inference_steps={SAMPLE['num_inference_steps']},
                   sequence_length={SAMPLE['sequence_length']}, generator=torch.Generator().manual_seed(0),
                   return_probs=True)
        torch.save({{"bits": out.bits, "probs": out.probs, "texts": out.texts}}, {str(tmp_path / 'out.pt')!r})
        """,
        tmp_path,
    )
    fresh = torch.load(tmp_path / "out.pt", weights_only=True)
    assert torch.equal(fresh["bits"], expected.bits) and fresh["texts"] == expected.texts
    torch.testing.assert_close(fresh["probs"], expected.probs, atol=1e-6, rtol=0)


@pytest.mark.slow
def test_fresh_process_transformers_pipeline_after_import(folder, expected_task, tmp_path):
    """`import bitstream_diffusion` alone must make the task available (the package registers it)."""
    result = _run(
        f"""
        import json
        import bitstream_diffusion
        from transformers import pipeline

        generator = pipeline("bitstream-text-generation", model={str(folder)!r}, device="cpu")
        outputs = generator(num_return_sequences=2, seed=0, num_inference_steps={SAMPLE['num_inference_steps']},
                            sequence_length={SAMPLE['sequence_length']})
        print(json.dumps([o["generated_text"] for o in outputs]))
        """,
        tmp_path,
    )
    assert json.loads(result.stdout.strip().splitlines()[-1]) == expected_task.texts


@pytest.mark.slow
def test_import_registers_the_task_without_diffusers(tmp_path):
    """The task module and the folder config import no diffusers and not the diffusers pipeline (no import loop)."""
    _run(
        """
        import sys
        import bitstream_diffusion
        from transformers.pipelines import PIPELINE_REGISTRY
        from bitstream_diffusion.pipelines import BitstreamPipelineFolderConfig, write_transformers_entry_point

        assert "bitstream-text-generation" in PIPELINE_REGISTRY.supported_tasks
        loaded = {name for name in sys.modules if name.startswith(("diffusers", "bitstream_diffusion.pipelines"))}
        pipeline_module = "bitstream_diffusion.pipelines.pipeline_bitstream_diffusion"
        assert "diffusers" not in loaded and pipeline_module not in loaded, sorted(loaded)
        """,
        tmp_path,
    )
