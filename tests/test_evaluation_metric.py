"""The ``metrics/gen_ppl`` evaluate module, loaded offline with ``evaluate.load`` from the repository folder."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

METRIC_DIR = Path(__file__).resolve().parents[1] / "metrics" / "gen_ppl"
LABELS = ("wiki_sentence", "empty_string", "one_token", "two_tokens", "literal_SEP_and_EOS")


@pytest.fixture(scope="module")
def gen_ppl_metric():
    import evaluate

    assert os.environ.get("HF_EVALUATE_OFFLINE") == "1"
    return evaluate.load(str(METRIC_DIR))


def test_module_imports_are_one_per_line():
    """The evaluate loader reads top-level imports line by line to find the libraries a module needs, and refuses to
    load it with a generic `pip install <import name>` hint when one is missing. The package import is indented (in
    a try block) so that the module itself says how to install bitstream-diffusion."""
    from evaluate.loading import get_imports

    libraries = {name for kind, name, *_ in get_imports(str(METRIC_DIR / "gen_ppl.py")) if kind == "library"}
    assert libraries == {"datasets", "evaluate"}
    assert "    from bitstream_diffusion.evaluation.gen_ppl import" in (METRIC_DIR / "gen_ppl.py").read_text()


def test_metric_info(gen_ppl_metric):
    assert gen_ppl_metric.name == "gen_ppl"
    assert list(gen_ppl_metric.features) == ["predictions"]
    assert "2605.07013" in gen_ppl_metric.citation and "first token" in gen_ppl_metric.description


def test_metric_matches_golden_float32(gen_ppl_metric, golden_dir):
    genppl = golden_dir / "genppl"
    texts = json.loads((genppl / "genppl_texts.json").read_text(encoding="utf-8"))["texts"]
    golden = json.loads((genppl / "genppl_results.json").read_text(encoding="utf-8"))["results"]["float32"]
    picked = [i for i, t in enumerate(texts) if t["label"] in LABELS]
    out = gen_ppl_metric.compute(
        predictions=[texts[i]["text"] for i in picked],
        model_id=str(genppl / "tiny_gpt2"),
        dtype="float32",
        batch_size=4,
        device="cpu",
    )
    expected = [golden["per_text"][i] for i in picked]
    assert out["skipped"] == [e["skipped"] for e in expected]
    assert out["num_scored_tokens"] == [e["n_scored"] for e in expected]
    assert out["num_tokens"] == [e["ids_len"] for e in expected]
    assert out["nll_sums"] == pytest.approx([e["nll_sum"] for e in expected], rel=1e-5)
    total_nll = sum(e["nll_sum"] for e in expected)
    total_scored = sum(e["n_scored"] for e in expected)
    assert out["total_scored_tokens"] == total_scored
    assert out["gen_ppl"] == pytest.approx(2.718281828459045 ** (total_nll / total_scored), rel=1e-4)


def test_metric_errors(gen_ppl_metric, golden_dir, tmp_path):
    model_id = str(golden_dir / "genppl" / "tiny_gpt2")
    with pytest.raises(ValueError, match="empty list"):
        gen_ppl_metric.compute(predictions=[], model_id=model_id, dtype="float32", device="cpu")
    with pytest.raises(ValueError, match="Unknown dtype"):
        gen_ppl_metric.compute(predictions=["some text"], model_id=model_id, dtype="int4", device="cpu")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        gen_ppl_metric.compute(predictions=["some text"], model_id=str(tmp_path / "nope"), device="cpu")
