"""The autoregressive baseline (``--model_type ar``) and the likelihood the training script validates with.

* size matching: a Llama of the SDT's parameter count within 10% (the paper's three SDTs and the quickstart's), the
  count from the config equal to the instantiated model's, the SDT's own shape at the paper's sizes;
* the objective: ``[start] + row[:-1]`` predicts every token of the row, equal to transformers' own causal-LM loss;
* validation: the exact perplexity and the variational bound, gathered, reproducible, and leaving accelerate's
  loader state clean when they stop early;
* the OWT baseline's rows: the GPT-2 windows of the flat stream;
* the export: a transformers folder that ``AutoModelForCausalLM``/``AutoTokenizer`` load, generating whole rows;
* the AR configs: the CoBit configs' data, size and optimisation values;
* (slow) the script: an AR run learns, exports, records its tokens and resumes bit-identically; a CoBit run logs
  the bound (``val/vlb_bpd``) next to the EMA loss.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from torch.utils.data import DataLoader

from bitstream_diffusion import SDTConfig, SDTModel
from bitstream_diffusion.training import autoregressive as ar
from bitstream_diffusion.training import autoregressive_data, autoregressive_export, likelihood

REPO_ROOT = Path(__file__).resolve().parents[1]
EXAMPLE_DIR = REPO_ROOT / "examples" / "train_bitstream_diffusion"
SCRIPT = EXAMPLE_DIR / "train_bitstream_diffusion.py"
CONFIGS = EXAMPLE_DIR / "configs"

TINY_WIKI_SDT = dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=4, intermediate_size=344, dropout=0.0,
                     max_position_embeddings=32)


def _llama(**overrides):
    from transformers import LlamaConfig

    base = dict(vocab_size=97, hidden_size=24, intermediate_size=40, num_hidden_layers=2, num_attention_heads=3,
                num_key_value_heads=3, head_dim=8, max_position_embeddings=16, bos_token_id=1, pad_token_id=0,
                eos_token_id=None)
    return LlamaConfig(**{**base, **overrides})


# ----------------------------------------------------------------------------------------------------------------------
# Size matching
# ----------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides",
    [dict(), dict(attention_bias=True, mlp_bias=True), dict(num_key_value_heads=1), dict(tie_word_embeddings=True)],
)
def test_parameter_count_from_the_config_is_the_models(overrides):
    from transformers import LlamaForCausalLM

    config = _llama(**overrides)
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    assert ar.causal_lm_num_parameters(config) == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(
    "name, vocab, sdt_overrides, shape",
    [
        ("cobit-s-lm1b", 30522, {}, (768, 12, 64)),
        ("cobit-s-owt", 50257, {}, (768, 12, 64)),  # the OWT baseline reads GPT-2 windows
        ("cobit-m-owt", 50257, {}, (1088, 24, 64)),  # 24 x 1024 untied is 12% short
        ("cobit-s-lm1b", 30522, TINY_WIKI_SDT, None),  # the quickstart: the bert embedding is most of the budget
    ],
)
def test_matched_causal_lm_has_the_sdts_size_within_ten_percent(name, vocab, sdt_overrides, shape):
    from transformers import LlamaForCausalLM

    sdt = SDTConfig.from_preset(name, **sdt_overrides)
    config = ar.ar_config_matching_sdt(sdt, vocab, bos_token_id=101, pad_token_id=0)
    with torch.device("meta"):
        llama = LlamaForCausalLM(config)
        target = sum(p.numel() for p in SDTModel(sdt).parameters())
    params = sum(p.numel() for p in llama.parameters())
    assert params == ar.causal_lm_num_parameters(config)
    assert abs(params / target - 1) <= 0.10, (name, params, target)
    assert config.vocab_size == vocab and config.max_position_embeddings == sdt.max_position_embeddings
    assert config.rope_parameters["rope_theta"] == sdt.rope_theta and config.attention_dropout == sdt.dropout
    assert config.head_dim % 2 == 0 and config.hidden_size == config.num_attention_heads * config.head_dim
    if shape is not None:  # at the paper's sizes the baseline has the SDT's own shape
        assert (config.hidden_size, config.num_hidden_layers, config.head_dim) == shape


def test_quickstart_baseline_is_the_documented_shape():
    sdt = SDTConfig.from_preset("cobit-s-lm1b", **TINY_WIKI_SDT)
    config = ar.ar_config_matching_sdt(sdt, 30522)
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads, config.tie_word_embeddings) == (
        48, 2, 2, True)
    assert ar.causal_lm_num_parameters(config) == 1_520_880 and ar.sdt_num_parameters(sdt) == 1_494_049


def test_matching_fails_with_the_closest_shape_when_nothing_fits():
    sdt = SDTConfig.from_preset("cobit-s-lm1b", hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                intermediate_size=64, max_position_embeddings=8)
    with pytest.raises(ValueError, match=r"No Llama shape has .* within 1%.*the closest is \{'hidden_size'"):
        ar.ar_config_matching_sdt(sdt, 1_000_000, tolerance=0.01)
    with pytest.raises(ValueError, match="tolerance"):
        ar.ar_config_matching_sdt(sdt, 100, tolerance=1.5)
    with pytest.raises(ValueError, match="vocab_size"):
        ar.ar_config_matching_sdt(sdt, 1)


# ----------------------------------------------------------------------------------------------------------------------
# The objective
# ----------------------------------------------------------------------------------------------------------------------


def test_start_token_is_bos_else_cls_else_eos(bert_tokenizer, gpt2_tokenizer):
    assert ar.causal_lm_start_token_id(bert_tokenizer) == bert_tokenizer.cls_token_id
    assert ar.causal_lm_start_token_id(gpt2_tokenizer) == gpt2_tokenizer.eos_token_id
    ids = ar.causal_lm_token_ids(bert_tokenizer)
    assert ids == {"bos_token_id": 101, "eos_token_id": None, "pad_token_id": 0}

    class Bare:
        bos_token_id = cls_token_id = eos_token_id = None

    with pytest.raises(ValueError, match="no BOS, CLS or EOS"):
        ar.causal_lm_start_token_id(Bare())


def test_loss_predicts_every_token_of_the_row_after_the_start_token():
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(_llama()).eval()
    ids = torch.randint(2, 97, (3, 10))
    inputs = ar.causal_lm_inputs(ids, start_token_id=1)
    assert inputs[:, 0].eq(1).all() and torch.equal(inputs[:, 1:], ids[:, :-1])
    logits = model(input_ids=inputs).logits
    loss = ar.next_token_loss(logits, ids)
    # transformers' own causal-LM loss on [start] + row, which shifts internally: the same L predictions
    with_start = torch.cat([inputs[:, :1], ids], dim=1)
    reference = model(input_ids=with_start, labels=with_start).loss
    torch.testing.assert_close(loss, reference, rtol=1e-5, atol=1e-6)
    per_row = ar.next_token_nll(logits, ids)
    assert per_row.shape == (3,)
    torch.testing.assert_close(per_row.sum() / ids.numel(), loss)
    first_only = torch.zeros_like(logits)
    first_only[:, 0, 5] = 30.0  # certain of token 5 at position 0: the first token counts
    changed = ids.clone()
    changed[:, 0] = 5
    assert float(ar.next_token_nll(first_only, changed).sum()) < float(ar.next_token_nll(first_only, ids).sum())
    with pytest.raises(ValueError, match="causal_lm_inputs"):
        ar.next_token_nll(logits[:, :-1], ids)


# ----------------------------------------------------------------------------------------------------------------------
# Validation: exact perplexity and the variational bound
# ----------------------------------------------------------------------------------------------------------------------


@pytest.fixture()
def accelerator():
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    yield Accelerator(cpu=True)
    AcceleratorState._reset_state(True)
    GradientState._reset_state()


def test_validation_perplexity_is_the_exact_mean_over_all_rows(accelerator):
    from transformers import LlamaForCausalLM

    torch.manual_seed(1)
    model = LlamaForCausalLM(_llama()).eval()
    rows = torch.randint(2, 97, (10, 8))
    loader = accelerator.prepare(DataLoader(rows, batch_size=4))  # 4 + 4 + 2 rows
    metrics = likelihood.validation_perplexity(accelerator, model, loader, start_token_id=1)
    with torch.no_grad():
        nll = ar.next_token_nll(model(input_ids=ar.causal_lm_inputs(rows, 1)).logits, rows).double().sum()
    expected = float(nll) / rows.numel()
    assert metrics["num_scored_tokens"] == 80
    assert metrics["loss"] == pytest.approx(expected, rel=1e-6)
    assert metrics["bits_per_token"] == pytest.approx(expected / math.log(2), rel=1e-6)
    assert metrics["ppl"] == pytest.approx(math.exp(expected), rel=1e-6)
    two = likelihood.validation_perplexity(accelerator, model, loader, start_token_id=1, max_batches=2)
    assert two["num_scored_tokens"] == 64


def test_validation_vlb_is_compute_vlb_with_fixed_draws(accelerator, tiny_sdt_factory):
    from bitstream_diffusion.codecs import ids_to_bits
    from bitstream_diffusion.evaluation import compute_vlb
    from bitstream_diffusion.training.objective import step_seed

    model = tiny_sdt_factory(seed=2)
    rows = torch.randint(0, 30522, (12, 16))
    loader = accelerator.prepare(DataLoader(rows, batch_size=4))
    first = likelihood.validation_vlb(accelerator, model, loader, bits_per_token=15, num_batches=2, num_mc_samples=3,
                                      seed=7)
    again = likelihood.validation_vlb(accelerator, model, loader, bits_per_token=15, num_batches=2, num_mc_samples=3,
                                      seed=7)
    assert first == again and first["vlb_rows"] == 8  # the same draws at every validation
    per_row = []
    for index in range(2):
        generator = torch.Generator().manual_seed(step_seed(7, likelihood.VLB_STREAM, 0, index))
        out = compute_vlb(model, ids_to_bits(rows[4 * index : 4 * index + 4], 15), batch_size=4, num_mc_samples=3,
                          generator=generator, show_progress=False)
        per_row.append(out.vlb_bpd_per_row)
    per_row = torch.cat(per_row)
    assert first["vlb_bpd"] == pytest.approx(float(per_row.mean()), rel=1e-9)
    assert first["vlb_bpd_stderr"] == pytest.approx(float(per_row.std()) / math.sqrt(8), rel=1e-9)
    assert first["bits_per_token"] == pytest.approx(15 * first["vlb_bpd"])
    assert first["ppl_bound"] == pytest.approx(2 ** first["bits_per_token"])
    assert first["recon_bpd"] + first["diff_bpd"] == pytest.approx(first["vlb_bpd"])
    with pytest.raises(ValueError, match="num_batches"):
        likelihood.validation_vlb(accelerator, model, loader, bits_per_token=15, num_batches=0)


def test_stopping_early_leaves_no_active_validation_loader(accelerator, tiny_sdt_factory):
    # a loader left mid-way stays accelerate's "active" loader, and its end-of-data flag would then decide the
    # training loop's gradient synchronisation
    model = tiny_sdt_factory(seed=3)
    train = accelerator.prepare(DataLoader(torch.randint(0, 30522, (8, 16)), batch_size=4))
    val = accelerator.prepare(DataLoader(torch.randint(0, 30522, (12, 16)), batch_size=4))
    for _ in train:
        likelihood.validation_vlb(accelerator, model, val, bits_per_token=15, num_batches=1)
        assert accelerator.gradient_state.active_dataloader is train
        break


# ----------------------------------------------------------------------------------------------------------------------
# The OWT baseline's rows
# ----------------------------------------------------------------------------------------------------------------------


def test_owt_rows_are_the_gpt2_windows_of_the_flat_stream(gpt2_tokenizer, tmp_path):
    from bitstream_diffusion.codecs.owt import owt_windows
    from bitstream_diffusion.training.data import DataRecipe, TextSource, TokenRowsDataset, prepare_owt_flat_stream

    source = TextSource(dataset_name="builtin:wiki_summaries", max_documents=40)
    recipe = DataRecipe("owt", num_tokens=16, base_seq_len=24)
    rows = autoregressive_data.prepare_gpt2_windows(source, recipe, gpt2_tokenizer, cache_dir=tmp_path,
                                                    show_progress=False)
    flat = prepare_owt_flat_stream(source, gpt2_tokenizer, cache_dir=tmp_path, show_progress=False)
    expected = owt_windows(flat.ids.reshape(-1), base_seq_len=24)
    assert len(rows) == expected.shape[0] > 10 and rows.num_tokens == 24
    dataset = TokenRowsDataset(rows, 2, 6)
    assert torch.equal(torch.stack([dataset[i] for i in range(4)]), expected[2:6])
    codec = autoregressive_data.ar_row_codec("owt", gpt2_tokenizer, 24)
    text = codec.decode_ids(expected[:1])[0]
    assert not text.startswith("<|endoftext|>") and text == gpt2_tokenizer.decode(expected[0, 1:-1])
    with pytest.raises(ValueError, match="owt recipe"):
        autoregressive_data.prepare_gpt2_windows(source, DataRecipe("lm1b"), gpt2_tokenizer, cache_dir=tmp_path)


# ----------------------------------------------------------------------------------------------------------------------
# The exported folder
# ----------------------------------------------------------------------------------------------------------------------


def test_exported_folder_loads_with_the_auto_classes_and_generates_rows(accelerator, bert_tokenizer, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from bitstream_diffusion.training import ExponentialMovingAverage, TrainingState

    config = ar.ar_config_matching_sdt(SDTConfig.from_preset("cobit-s-lm1b", **TINY_WIKI_SDT), 30522,
                                       **ar.causal_lm_token_ids(bert_tokenizer))
    torch.manual_seed(0)
    model = accelerator.prepare(ar.build_causal_lm(config))
    ema = ExponentialMovingAverage(model, decay=0.5)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(1.0)  # the export must carry the EMA, not these weights
    state = TrainingState(global_step=3, tokens_seen=3072, validation_history=[{"step": 3, "loss": 9.0, "ppl": 8e3,
                                                                              "bits_per_token": 13.0}])
    record = autoregressive_export.folder_summary(model_type="ar", state=state, num_parameters=1, sdt_num_parameters=2,
                                                  data_recipe="lm1b", dataset="d", num_tokens=32)
    folder = autoregressive_export.export_causal_lm(
        accelerator, model, ema, tmp_path / "model", tokenizer=bert_tokenizer, num_tokens=32,
        model_card=autoregressive_export.model_card("t", recipe="lm1b", dataset="d", global_step=3, train_tokens=3072,
                                                    num_parameters=1, sdt_num_parameters=2,
                                                    validation=state.validation_history[-1]),
        training_config={"data_recipe": "lm1b", "num_tokens": 32}, folder_summary=record,
    )
    loaded = AutoModelForCausalLM.from_pretrained(folder)
    for name, tensor in loaded.state_dict().items():
        if name in ema.shadow:
            torch.testing.assert_close(tensor, ema.shadow[name])
    assert AutoTokenizer.from_pretrained(folder).cls_token_id == loaded.config.bos_token_id == 101
    summary = json.loads((folder / "train_summary.json").read_text())
    assert summary["train_tokens"] == summary["tokens_seen"] == 3072
    assert "3,072 training tokens" in (folder / "README.md").read_text()
    torch.manual_seed(0)
    assert loaded.generate(num_return_sequences=2).shape == (2, 33)  # the start token and a 32-token row

    baseline = autoregressive_export.load_causal_lm_folder(folder)
    texts, nfe = autoregressive_export.generate_texts(baseline.model, baseline.codec, 3,
                                                      start_token_id=baseline.start_token_id, seed=5)
    again, _ = autoregressive_export.generate_texts(baseline.model, baseline.codec, 3,
                                                    start_token_id=baseline.start_token_id, seed=5)
    assert nfe == 32 and len(texts) == 3 and texts == again
    assert baseline.summary["global_step"] == 3 and baseline.num_parameters == ar.causal_lm_num_parameters(config)
    with pytest.raises(FileNotFoundError, match="--model_type ar"):
        autoregressive_export.load_causal_lm_folder(tmp_path)


# ----------------------------------------------------------------------------------------------------------------------
# Configs
# ----------------------------------------------------------------------------------------------------------------------

# what only CoBit has: the diffusion, its sampler and its bound
_COBIT_ONLY = ("p_", "sigma_", "self_conditioning_prob", "loss_", "entropy_", "validation_inference_steps",
               "validation_gamma", "scheduler_gamma", "validation_vlb_")


@pytest.mark.parametrize("name", ["tiny-wiki", "cobit-s-lm1b", "cobit-s-owt"])
def test_ar_configs_hold_the_cobit_configs_data_size_and_optimisation(name):
    cobit = yaml.safe_load((CONFIGS / f"{name}.yaml").read_text())
    baseline = yaml.safe_load((CONFIGS / f"{name}-ar.yaml").read_text())
    assert baseline.pop("model_type") == "ar" and baseline.pop("output_dir") == cobit.pop("output_dir") + "-ar"
    shared = {k: v for k, v in cobit.items() if not k.startswith(_COBIT_ONLY)}
    assert baseline == shared


# ----------------------------------------------------------------------------------------------------------------------
# The script (subprocesses)
# ----------------------------------------------------------------------------------------------------------------------

MINI = {
    "data_recipe": "lm1b", "dataset_name": "builtin:wiki_summaries", "max_train_documents": 60,
    "tokenizer_name_or_path": "packaged:bert-base-uncased", "num_tokens": 16, "validation_fraction": 0.02,
    "model_preset": "cobit-s-lm1b", "hidden_size": 96, "num_hidden_layers": 2, "num_attention_heads": 3,
    "intermediate_size": 256, "dropout": 0.1, "entropy_warmup_steps": 10, "entropy_transition_steps": 10,
    "entropy_update_every": 5, "entropy_min_per_bin": 1, "entropy_buffer_size": 500, "train_batch_size": 8,
    "gradient_accumulation_steps": 2, "max_train_steps": 30, "learning_rate": 3.0e-3, "lr_warmup_steps": 5,
    "ema_decay": 0.5, "mixed_precision": "no", "seed": 3, "report_to": "tensorboard", "logging_steps": 5,
    "checkpointing_steps": 15, "validation_steps": 15, "max_validation_batches": 2, "validation_vlb_batches": 1,
    "validation_vlb_num_mc_samples": 2, "num_validation_samples": 1, "validation_inference_steps": 8,
}  # fmt: skip


def _run(config: dict, output_dir: Path, *extra: str) -> dict:
    path = output_dir.parent / f"{output_dir.name}.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    env = {**__import__("os").environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "2"}
    result = subprocess.run([sys.executable, str(SCRIPT), "--config", str(path), "--output_dir", str(output_dir),
                             *extra], env=env, capture_output=True, text=True, timeout=900, check=False)
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads((output_dir / "train_summary.json").read_text())


def _scalar_tags(output_dir: Path) -> set[str]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tags = set()
    for event_file in (output_dir / "logs").rglob("events.out.tfevents.*"):
        accumulator = EventAccumulator(str(event_file), size_guidance={"scalars": 0})
        accumulator.Reload()
        tags |= set(accumulator.Tags()["scalars"])
    return tags


@pytest.mark.slow
def test_script_trains_exports_and_resumes_the_baseline(tmp_path):
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    summary = _run({**MINI, "model_type": "ar"}, tmp_path / "ar")
    history = summary["validation_history"]
    assert [h["step"] for h in history] == [0, 15, 30]
    assert history[-1]["loss"] < history[0]["loss"] - 0.5  # the exact held-out NLL falls
    assert history[-1]["ppl"] == pytest.approx(math.exp(history[-1]["loss"]))
    # 45 batches of 8 rows per epoch, 2 per step: 23 steps per epoch (the last from one batch), so 30 steps are
    # 45 + 14 batches of 16-token rows, the same as a CoBit run of this config
    assert summary["micro_batches"] == 59 and summary["tokens_seen"] == 59 * 8 * 16
    folder = tmp_path / "ar" / "model"
    model = AutoModelForCausalLM.from_pretrained(folder)
    record = json.loads((folder / "train_summary.json").read_text())
    assert record["train_tokens"] == summary["tokens_seen"] and record["model_type"] == "ar"
    sdt = SDTConfig.from_preset("cobit-s-lm1b", hidden_size=96, num_hidden_layers=2, num_attention_heads=3,
                                intermediate_size=256, max_position_embeddings=16)
    assert record["sdt_num_parameters"] == ar.sdt_num_parameters(sdt)
    assert abs(record["num_parameters"] / record["sdt_num_parameters"] - 1) <= 0.1
    assert record["num_parameters"] == sum(p.numel() for p in model.parameters())
    assert {"train/loss", "val/loss", "val/ppl", "val/bits_per_token"} <= _scalar_tags(tmp_path / "ar")

    # resumed from the middle (tied embeddings in the checkpoint), it ends with the same weights
    first = load_file(str(folder / "model.safetensors"))
    resumed = _run({**MINI, "model_type": "ar"}, tmp_path / "ar", "--resume_from_checkpoint", "checkpoint-15")
    assert resumed["tokens_seen"] == summary["tokens_seen"]
    weights = load_file(str(folder / "model.safetensors"))
    assert weights.keys() == first.keys()
    for name, tensor in weights.items():
        torch.testing.assert_close(tensor, first[name], rtol=0, atol=0)


@pytest.mark.slow
def test_script_validation_reports_the_variational_bound(tmp_path):
    summary = _run({**MINI, "max_train_steps": 15}, tmp_path / "cobit")
    for entry in summary["validation_history"]:
        assert {"loss", "vlb_bpd", "vlb_bpd_stderr", "bits_per_token", "ppl_bound", "vlb_rows"} <= set(entry)
        assert entry["vlb_rows"] == 7  # all 7 validation rows, one batch
        assert entry["vlb_bpd"] > 0 and entry["vlb_bpd_stderr"] > 0
        assert entry["bits_per_token"] == pytest.approx(15 * entry["vlb_bpd"])
    assert {"val/loss", "val/vlb_bpd", "val/vlb_bpd_stderr", "val/ppl_bound"} <= _scalar_tags(tmp_path / "cobit")
    record = json.loads((tmp_path / "cobit" / "pipeline" / "train_summary.json").read_text())
    assert record["train_tokens"] == summary["tokens_seen"] and record["model_type"] == "cobit"
    assert record["num_parameters"] == record["sdt_num_parameters"]
    off = _run({**MINI, "max_train_steps": 5, "validation_vlb_batches": 0}, tmp_path / "off")
    assert "vlb_bpd" not in off["validation_history"][-1]
