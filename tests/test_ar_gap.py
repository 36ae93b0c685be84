"""examples/ar_gap/ar_gap.py: CoBit against the autoregressive baseline in one command.

* the held-out reference holds only text no training row contains;
* the summary rows come from the protocol's summaries and the exported folders' training records;
* (slow) a smaller variant of ``--quick`` runs end to end: both models trained on the same tokens, both evaluated
  with the offline SmolLM2 evaluator, and ``summary.json`` / ``summary.md`` / the plot written.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
AR_GAP = REPO_ROOT / "examples" / "ar_gap" / "ar_gap.py"


@pytest.fixture(scope="module")
def ar_gap():
    spec = importlib.util.spec_from_file_location("ar_gap", AR_GAP)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_reference_is_text_the_training_never_saw(ar_gap, bert_tokenizer):
    from bitstream_diffusion.codecs.lm1b import pack_lm1b_lines
    from bitstream_diffusion.training.data import DataRecipe, TextSource, prepare_token_rows, split_train_validation

    texts = ar_gap.heldout_summaries(num_tokens=32, validation_fraction=0.01, max_validation_rows=256)
    reference = pack_lm1b_lines(texts, bert_tokenizer, seq_len=32).rows.reshape(-1)  # as the protocol packs it
    rows = prepare_token_rows(TextSource(dataset_name="builtin:wiki_summaries"), DataRecipe("lm1b", num_tokens=32),
                              bert_tokenizer, show_progress=False)
    (_, train_end), (val_start, val_end) = split_train_validation(len(rows), validation_fraction=0.01,
                                                                  max_validation_rows=256)
    assert val_end == len(rows) and val_end - val_start == 256 and reference.numel() >= 256 * 32
    unseen = torch.from_numpy(rows.ids[train_end:].astype("int64")).reshape(-1)
    # the reference stream is a stretch of the rows after the training rows, starting at a summary boundary
    starts = [i for i in range(2048) if torch.equal(unseen[i : i + 16], reference[:16])]
    assert len(starts) == 1 and starts[0] > 0 and unseen[starts[0] - 1] == bert_tokenizer.sep_token_id
    assert torch.equal(unseen[starts[0] :][: reference.numel()], reference)
    again = ar_gap.heldout_summaries(num_tokens=32, validation_fraction=0.01, max_validation_rows=256)
    assert again == texts and len(texts) > 50


def test_summary_rows_join_protocol_numbers_and_training_records(ar_gap):
    protocol = {"summary": [
        {"row_type": "samples", "model_kind": "ar", "spec": "temperature=0.9", "temperature": 0.9, "nfe": 32,
         "num_seeds": 2, "num_samples": 8, "gen_ppl_mean": 80.0, "gen_ppl_std": 4.0, "entropy_mean": 3.2,
         "entropy_std": 0.1},
        {"row_type": "model", "model_kind": "ar", "spec": None, "likelihood": "exact", "bits_per_token": 9.5,
         "ppl_bound": 724.1, "vlb_bpd": None},
        {"row_type": "reference", "model_kind": "reference", "spec": "reference", "num_samples": 8,
         "gen_ppl_mean": 40.0, "entropy_mean": 3.3},
    ]}  # fmt: skip
    record = {"num_parameters": 1520880, "train_tokens": 819200, "final_validation": {"ppl": 700.0}}
    rows, reference = ar_gap.gap_rows("ar", protocol, record)
    assert len(rows) == 1
    row = rows[0]
    assert row["model"] == "ar" and row["temperature"] == 0.9 and row["params"] == 1520880
    assert row["train_tokens"] == 819200 and row["nfe"] == 32 and row["gen_ppl"] == 80.0 and row["entropy"] == 3.2
    assert row["bits_per_token"] == 9.5 and row["likelihood"] == "exact" and "vlb_bpd" not in row
    assert reference["model"] == "reference" and reference["gen_ppl"] == 40.0 and reference["nfe"] is None
    table = ar_gap.format_table([*rows, reference])
    assert "| ar | temperature=0.9 | 1,520,880 | 819,200 | 32 | 80.00 ± 4.00 | 3.20 ± 0.10 | 9.50 (exact) |" in table


@pytest.mark.slow
def test_smaller_quick_variant_writes_the_summary(ar_gap, tmp_path):
    summary = ar_gap.main([
        "--output-dir", str(tmp_path), "--quick", "--max-train-steps", "20", "--num-samples", "8", "--seeds", "0", "1",
        "--gammas", "0.0", "0.2", "--inference-steps", "8", "--temperatures", "0.8", "1.0", "--evaluator", "smollm2",
        "--device", "cpu",
    ])  # fmt: skip
    written = json.loads((tmp_path / "summary.json").read_text())
    assert written == json.loads(json.dumps(summary))
    assert written["evaluator"] == "smollm2" and written["num_samples"] == 8 and written["seeds"] == [0, 1]
    by_model = {kind: [r for r in written["rows"] if r["model"] == kind] for kind in ("cobit", "ar", "reference")}
    assert [r["gamma"] for r in by_model["cobit"]] == [0.0, 0.2]
    assert [r["temperature"] for r in by_model["ar"]] == [0.8, 1.0]
    assert len(by_model["reference"]) == 1
    tokens = {r["train_tokens"] for r in by_model["cobit"] + by_model["ar"]}
    assert tokens == {20 * 32 * 32}  # the same budget: 20 steps of 32 rows of 32 tokens
    cobit_params, ar_params = by_model["cobit"][0]["params"], by_model["ar"][0]["params"]
    assert abs(ar_params / cobit_params - 1) <= 0.1
    for row in by_model["cobit"] + by_model["ar"]:
        assert isinstance(row["params"], int) and isinstance(row["nfe"], int) and row["num_seeds"] == 2
        assert row["gen_ppl"] > 1 and 0 < row["entropy"] < 10 and row["bits_per_token"] > 0
    assert {r["nfe"] for r in by_model["cobit"]} == {8} and {r["nfe"] for r in by_model["ar"]} == {32}
    assert {r["likelihood"] for r in by_model["cobit"]} == {"bound"} and by_model["cobit"][0]["vlb_bpd"] > 0
    assert {r["likelihood"] for r in by_model["ar"]} == {"exact"}
    assert "| reference | held-out rows |" in (tmp_path / "summary.md").read_text()
    assert (tmp_path / "genppl_vs_entropy.png").stat().st_size > 10_000
    assert set(written["times"]) == {"train cobit", "train ar", "evaluate cobit", "evaluate ar"}
    assert all(step["wall_s"] > 0 and step["cpu_s"] > 0 for step in written["times"].values())
    assert written["wall_s"] >= max(step["wall_s"] for step in written["times"].values())
