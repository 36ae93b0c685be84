"""`import bitstream_diffusion` is cheap, and transformers' auto classes and `pipeline()` know our classes in every
import order (each case runs in a fresh interpreter)."""

from __future__ import annotations

import subprocess
import sys

import pytest

_SDT = (
    "AutoConfig.for_model('bitstream_sdt', hidden_size=32, num_hidden_layers=1, num_attention_heads=2, "
    "intermediate_size=64, content_dim=8, head_hidden_size=16, max_position_embeddings=8, bits_per_token=15)"
)
_TASK = (
    "from transformers.pipelines import PIPELINE_REGISTRY\n"
    "assert 'bitstream-text-generation' in PIPELINE_REGISTRY.supported_tasks"
)

IMPORT_ORDERS = {
    "package first, then AutoModel": f"import bitstream_diffusion\nfrom transformers import AutoConfig, AutoModel\n"
    f"assert type(AutoModel.from_config({_SDT})).__name__ == 'SDTModel'",
    "AutoModel first, then package": f"from transformers import AutoConfig, AutoModel\nimport bitstream_diffusion\n"
    f"assert type(AutoModel.from_config({_SDT})).__name__ == 'SDTModel'",
    "package, then transformers.pipeline": f"import bitstream_diffusion\nfrom transformers import pipeline\n{_TASK}",
    "transformers.pipeline, then package": f"from transformers import pipeline\nimport bitstream_diffusion\n{_TASK}",
    "model class first (transformers loads AutoModel while our model loads)": "import bitstream_diffusion as b\n"
    "model_class = b.SDTModel\nfrom transformers import AutoModel\n"
    "assert AutoModel._model_mapping[b.SDTConfig] is model_class",
    "diffusers first, then the pipeline class": "import diffusers\nimport bitstream_diffusion as b\n"
    "assert b.BitstreamDiffusionPipeline.__name__ == 'BitstreamDiffusionPipeline'\n"
    "from transformers import AutoConfig\n"
    "assert AutoConfig.for_model('bitstream_diffusion_pipeline').__class__.__name__ == 'BitstreamPipelineFolderConfig'",
}


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False)


def test_import_is_cheap():
    """The package imports without torch, transformers or diffusers, so command-line tools answer `--help` at once."""
    code = (
        "import sys, bitstream_diffusion, bitstream_diffusion.evaluation, bitstream_diffusion.modeling\n"
        "heavy = [m for m in ('torch', 'transformers', 'diffusers', 'accelerate', 'datasets') if m in sys.modules]\n"
        "assert not heavy, heavy"
    )
    result = _run(code)
    assert result.returncode == 0, result.stderr[-2000:]


@pytest.mark.slow
@pytest.mark.parametrize("order", list(IMPORT_ORDERS))
def test_registration_in_every_import_order(order):
    result = _run(IMPORT_ORDERS[order])
    assert result.returncode == 0, f"{order}:\n{result.stderr[-3000:]}"
