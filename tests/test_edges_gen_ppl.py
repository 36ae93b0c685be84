"""GenPPL edges: a single string is no list of predictions, CUDA without a GPU is a clear error, and the evaluate
module carries what a hub module needs (requirements, card, app) and says that it needs this package."""

from __future__ import annotations

import ast
import os
import runpy
import subprocess
import sys
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest
import torch

from bitstream_diffusion.evaluation.gen_ppl import GenPPLScorer, compute_gen_ppl

METRIC_DIR = Path(__file__).resolve().parents[1] / "metrics" / "gen_ppl"


@pytest.fixture(scope="module")
def tiny_gpt2(golden_dir):
    return str(golden_dir / "genppl" / "tiny_gpt2")


@pytest.fixture(scope="module")
def gen_ppl_metric():
    import evaluate

    assert os.environ.get("HF_EVALUATE_OFFLINE") == "1"
    return evaluate.load(str(METRIC_DIR))


@pytest.fixture
def no_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)


def test_a_single_string_is_not_a_list_of_predictions(gen_ppl_metric, tiny_gpt2):
    with pytest.raises(TypeError, match="must be a list of strings, not a single string"):
        gen_ppl_metric.compute(predictions="The cat sat on the mat.", model_id=tiny_gpt2, device="cpu")
    with pytest.raises(TypeError, match="list of strings; found items of type"):
        gen_ppl_metric.compute(predictions=[1, 2], model_id=tiny_gpt2, device="cpu")
    with pytest.raises(TypeError, match="not a single string"):
        compute_gen_ppl("The cat sat on the mat.", model_id=tiny_gpt2, device="cpu")
    scorer = GenPPLScorer.cached(tiny_gpt2, dtype="float32", device="cpu")
    with pytest.raises(TypeError, match="not a single string"):
        scorer.score_texts("The cat sat on the mat.")
    out = gen_ppl_metric.compute(predictions=["The cat sat on the mat."], model_id=tiny_gpt2, device="cpu",
                                 dtype="float32")
    assert out["num_tokens"][0] > 1 and not out["skipped"][0]


def test_cuda_without_a_gpu_says_to_use_the_cpu(no_cuda, gen_ppl_metric, tiny_gpt2):
    message = r'no CUDA device is available .*Pass device="cpu"'
    with pytest.raises(ValueError, match=message):
        compute_gen_ppl(["some text"], model_id=tiny_gpt2, device="cuda")
    with pytest.raises(ValueError, match=message):
        GenPPLScorer(tiny_gpt2, device="cuda:0")
    with pytest.raises(ValueError, match=message):
        gen_ppl_metric.compute(predictions=["some text"], model_id=tiny_gpt2, device="cuda")
    assert GenPPLScorer.cached(tiny_gpt2, dtype="float32").device == torch.device("cpu")  # unset: the CPU


def test_an_unknown_device_is_named(tiny_gpt2):
    with pytest.raises(ValueError, match="Unknown device 'gpu'"):
        compute_gen_ppl(["some text"], model_id=tiny_gpt2, device="gpu")


# ------------------------------------------------------------------------------------------------ the hub module
def _module_imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names.add(node.module.split(".")[0])
    return {name for name in names if name not in sys.stdlib_module_names}


def _requirement_names(path: Path) -> set[str]:
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    lines = [line.split("#")[0].strip() for line in path.read_text(encoding="utf-8").splitlines()]
    return {canonicalize_name(Requirement(line).name) for line in lines if line}


def test_requirements_list_every_import_of_the_module():
    from packaging.utils import canonicalize_name

    distributions = packages_distributions()
    required = _requirement_names(METRIC_DIR / "requirements.txt")
    imports = _module_imports(METRIC_DIR / "gen_ppl.py") | _module_imports(METRIC_DIR / "app.py")
    assert imports == {"bitstream_diffusion", "datasets", "evaluate"}
    for name in imports:
        dists = {canonicalize_name(d) for d in distributions.get(name, [name.replace("_", "-")])}
        assert dists & required, f"{name} is imported but none of {dists} is in requirements.txt"
    assert {"torch", "transformers"} <= required  # the evaluator model, through the package


def test_card_front_matter_is_an_evaluate_space():
    from huggingface_hub import RepoCard

    card = RepoCard.load(METRIC_DIR / "README.md")
    data = card.data.to_dict()
    assert data["sdk"] == "gradio" and data["app_file"] == "app.py" and (METRIC_DIR / "app.py").is_file()
    assert {"evaluate", "metric"} <= set(data["tags"]) and "bitstream-diffusion" in data["description"]
    assert "Requirements." in card.text and "pip install -e ." in card.text


def test_the_space_app_launches_the_widget_for_this_module(monkeypatch):
    import evaluate.utils

    launched = []
    monkeypatch.setattr(evaluate.utils, "launch_gradio_widget", launched.append)
    runpy.run_path(str(METRIC_DIR / "app.py"), run_name="__main__")
    assert [m.name for m in launched] == ["gen_ppl"]


def test_loading_without_the_package_says_what_to_install(tmp_path):
    script = (
        "import sys\n"
        "sys.modules['bitstream_diffusion'] = None  # not installed\n"
        "import evaluate\n"
        f"evaluate.load({str(METRIC_DIR)!r})\n"
    )
    env = {**os.environ, "HF_EVALUATE_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules")}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode != 0
    expected = "ImportError: The gen_ppl metric needs the bitstream-diffusion package"
    assert expected in result.stderr, result.stderr[-2000:]
