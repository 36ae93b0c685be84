"""The evaluation protocol on a causal-LM folder: an autoregressive baseline measured under the CoBit rules.

A randomly initialised tiny ``LlamaForCausalLM`` with the packaged bert-base-uncased tokenizer, saved with
``save_pretrained`` into ``<run>/model`` with ``train_summary.json`` and ``training_config.yaml`` (the LM1B recipe,
8-token rows) one level up, as a training run leaves them; the golden tiny GPT-2 scores the texts.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
from pathlib import Path

import pytest
import torch

from bitstream_diffusion.evaluation.run_protocol import main
from bitstream_diffusion.evaluation.sampler_specs import ARSamplerSpec, parse_spec, sample_seed

NUM_TOKENS = 8
NUM_SAMPLES = 5
SPECS = ("temperature=1", "temperature=0.8,top_p=0.9")
TRAIN_TOKENS = 123_456


@pytest.fixture(scope="module", autouse=True)
def _fresh_accelerate_state():
    yield
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)


def _tiny_llama(tokenizer, seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=NUM_TOKENS, pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.cls_token_id, eos_token_id=tokenizer.sep_token_id,
    )  # fmt: skip
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():  # sharper than the default init, so that the distributions are far from uniform
        model.lm_head.weight.normal_(0.0, 2.0)
    return model


@pytest.fixture(scope="module")
def ar_dir(tmp_path_factory, bert_tokenizer) -> Path:
    run = tmp_path_factory.mktemp("ar-run")
    folder = run / "model"
    _tiny_llama(bert_tokenizer).save_pretrained(folder)
    bert_tokenizer.save_pretrained(folder)
    (run / "train_summary.json").write_text(json.dumps({"status": "completed", "tokens_seen": TRAIN_TOKENS}))
    (run / "training_config.yaml").write_text(f"data_recipe: lm1b\nnum_tokens: {NUM_TOKENS}\n")
    return folder


@pytest.fixture(scope="module")
def ar_model(ar_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(ar_dir, dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def reference_file(tmp_path_factory, wiki_summaries) -> Path:
    path = tmp_path_factory.mktemp("reference") / "reference.jsonl"
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in wiki_summaries[:40]), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def evaluator_dir(golden_dir) -> Path:
    return golden_dir / "genppl" / "tiny_gpt2"


def _argv(model_dir, output_dir, evaluator_dir, reference_file=None, *, specs=SPECS, batch_size=2, seeds=(0, 1)):
    argv = ["--pipeline", str(model_dir), "--num-samples", str(NUM_SAMPLES), "--batch-size", str(batch_size)]
    for spec in specs:
        argv += ["--spec", spec]
    argv += ["--seeds", *map(str, seeds), "--evaluator", str(evaluator_dir), "--evaluator-dtype", "float32"]
    argv += ["--device", "cpu", "--output-dir", str(output_dir)]
    if reference_file is not None:
        argv += ["--reference-texts", str(reference_file), "--vlb", "--vlb-batch-size", "2"]
    return argv


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _cached_token_ids(output_dir: Path, spec_key: str, seed: int) -> list[list[int]]:
    records = [json.loads(p.read_text()) for p in (output_dir / "cache").rglob("*.json")]
    records = sorted((r for r in records if (r["key"]["spec_key"], r["key"]["seed"]) == (spec_key, seed)),
                     key=lambda r: r["key"]["start"])  # fmt: skip
    return [ids for r in records for ids in r["token_ids"]]


@pytest.fixture(scope="module")
def ar_run(tmp_path_factory, ar_dir, evaluator_dir, reference_file):
    output_dir = tmp_path_factory.mktemp("ar-out") / "out"
    assert main(_argv(ar_dir, output_dir, evaluator_dir, reference_file)) == 0
    return output_dir


# ---------------------------------------------------------------------------------------------------- specs, sampling


def test_autoregressive_specs_parse_and_are_told_from_cobit_specs():
    assert parse_spec("temperature=0.9,top_p=0.95") == ARSamplerSpec(0.9, 0.95)
    assert parse_spec("top_p=0.5") == ARSamplerSpec(1.0, 0.5)
    assert parse_spec("gamma=0.2,nfe=256").nfe == 256
    resolved = ARSamplerSpec(1.0, 1.0).resolve(128)
    assert resolved.key == ARSamplerSpec().resolve(128).key == "ar,temperature=1.0,top_p=none"  # top_p=1: no cut
    assert resolved.expected_nfe == 128 and resolved.label == "temperature=1.0,top_p=1.0"
    for text, message in [("temperature=-1", ">= 0"), ("top_p=0", r"\(0, 1\]"), ("temperature=1,gamma=0.2", "Unknown"),
                          ("temperature=x", "Bad number"), ("temperature=1,temperature=2", "twice")]:  # fmt: skip
        with pytest.raises(ValueError, match=message):
            parse_spec(text)


def test_next_token_rule_greedy_nucleus_and_inverse_cdf():
    from bitstream_diffusion.evaluation.causal_lm_sampling import _next_tokens

    logits = torch.log(torch.tensor([[0.2, 0.5, 0.3, 0.0]])).expand(1000, 4)
    uniforms = (torch.arange(1000, dtype=torch.float64) + 0.5) / 1000  # evenly spread, off the CDF steps
    full = _next_tokens(logits, uniforms, 1.0, None)
    assert torch.equal(torch.bincount(full, minlength=4), torch.tensor([200, 500, 300, 0]))  # u in [0.2, 0.7) -> 1
    nucleus = _next_tokens(logits, uniforms, 1.0, 0.6)  # 0.5 then 0.3 reach 0.6: tokens 1 and 2, renormalised
    assert torch.equal(torch.bincount(nucleus, minlength=4), torch.tensor([0, 625, 375, 0]))
    assert set(_next_tokens(logits, uniforms, 0.0, None).tolist()) == {1}
    hot = _next_tokens(logits, uniforms, 100.0, None)  # a high temperature flattens the three tokens
    assert torch.bincount(hot, minlength=4)[:3].min() > 300
    assert int(_next_tokens(logits[:1], torch.tensor([1.0 - 1e-17]), 1.0, 0.6)) == 2  # the top end: last kept token


def test_samples_do_not_depend_on_the_batch_they_run_in(ar_model, bert_tokenizer):
    from bitstream_diffusion.evaluation.causal_lm_sampling import sample_causal_lm

    def generators(indices):
        return [torch.Generator().manual_seed(1000 + i) for i in indices]

    options = {"start_token_id": bert_tokenizer.cls_token_id, "num_tokens": NUM_TOKENS, "temperature": 0.9,
               "top_p": 0.95}  # fmt: skip
    together = sample_causal_lm(ar_model, generators=generators(range(5)), **options)
    parts = ([0, 1], [2, 3, 4])
    apart = torch.cat([sample_causal_lm(ar_model, generators=generators(part), **options) for part in parts])
    assert together.shape == (5, NUM_TOKENS) and torch.equal(together, apart)
    assert len({tuple(row) for row in together.tolist()}) == 5
    again = sample_causal_lm(ar_model, generators=generators(range(5)), **options)
    assert torch.equal(again, together)


# ---------------------------------------------------------------------------------------------------- the protocol


def test_the_protocol_generates_rows_of_the_reference_length_from_the_start_token(
    ar_run, ar_dir, ar_model, evaluator_dir
):
    from transformers import AutoTokenizer

    from bitstream_diffusion.evaluation import GenPPLScorer, token_entropy
    from bitstream_diffusion.evaluation.causal_lm_sampling import sample_causal_lm
    from bitstream_diffusion.evaluation.causal_lm_text import causal_lm_text_rules

    rows = _read_jsonl(ar_run / "results.jsonl")
    assert [r["row_type"] for r in rows] == ["samples"] * 4 + ["model", "reference"]
    samples = _read_jsonl(ar_run / "samples.jsonl")
    assert len(samples) == len(SPECS) * 2 * NUM_SAMPLES
    tokenizer = AutoTokenizer.from_pretrained(ar_dir)
    rules = causal_lm_text_rules(tokenizer, "auto", NUM_TOKENS, recorded_recipe="lm1b")
    assert rules.layout == "lm1b"
    num_parameters = sum(p.numel() for p in ar_model.parameters())
    scorer = GenPPLScorer(evaluator_dir, dtype="float32", device="cpu")
    for row in rows[:4]:
        assert (row["model_kind"], row["num_parameters"], row["train_tokens"]) == ("ar", num_parameters, TRAIN_TOKENS)
        assert row["nfe"] == NUM_TOKENS and row["num_inference_steps"] is None  # one forward pass per token
        assert row["temperature"] == ARSamplerSpec.parse(row["spec"]).temperature
        texts = [s["text"] for s in samples if (s["spec"], s["seed"]) == (row["spec"], row["seed"])]
        ids = _cached_token_ids(ar_run, row["spec_key"], row["seed"])
        assert len(ids) == NUM_SAMPLES and all(len(r) == NUM_TOKENS for r in ids)
        assert texts == rules.decode_ids(torch.tensor(ids))  # decoded like the LM1B codec ([SEP] etc. kept)
        assert row["entropy"] == pytest.approx(token_entropy(ids)[0], rel=1e-6)
        assert row["gen_ppl"] == pytest.approx(scorer.score_texts(texts, batch_size=16).gen_ppl, rel=1e-6)
    # sample 3 of (seed 1, the nucleus spec), drawn alone from its own generator
    row = rows[3]
    alone = sample_causal_lm(
        ar_model, start_token_id=tokenizer.cls_token_id, num_tokens=NUM_TOKENS, temperature=0.8, top_p=0.9,
        generators=[torch.Generator().manual_seed(sample_seed(1, row["spec_key"], 3))],
    )  # fmt: skip
    assert alone.tolist() == [_cached_token_ids(ar_run, row["spec_key"], 1)[3]]
    summary = (ar_run / "summary.md").read_text()
    assert f"| temperature=1.0 | ar | {num_parameters:,} | {TRAIN_TOKENS:,} |  | {NUM_TOKENS} |" in summary


def test_the_exact_perplexity_is_the_direct_nll_of_the_reference_rows(ar_run, ar_model, bert_tokenizer, reference_file):
    from bitstream_diffusion.codecs.lm1b import pack_lm1b_lines
    from bitstream_diffusion.evaluation.reference import read_reference_texts

    model = _read_jsonl(ar_run / "results.jsonl")[-2]
    assert model["likelihood"] == "exact" and model["vlb_bpd"] is None and model["heldout_loss"] is None
    rows = pack_lm1b_lines(read_reference_texts(reference_file), bert_tokenizer, seq_len=NUM_TOKENS).rows
    rows = rows[:NUM_SAMPLES]
    nll = []
    with torch.no_grad():
        for row in rows:  # one row at a time, log-softmax written out
            inputs = torch.cat([torch.tensor([bert_tokenizer.cls_token_id]), row[:-1]])[None]
            log_probs = torch.log_softmax(ar_model(input_ids=inputs).logits[0].double(), dim=-1)
            nll.append(-log_probs[torch.arange(NUM_TOKENS), row].sum())
    nll = torch.stack(nll)
    nll_per_token = float(nll.sum()) / (NUM_SAMPLES * NUM_TOKENS)
    assert model["likelihood_rows"] == NUM_SAMPLES
    assert model["nll_per_token"] == pytest.approx(nll_per_token, rel=1e-5)
    assert model["bits_per_token"] == pytest.approx(nll_per_token / math.log(2), rel=1e-5)
    assert model["ppl_bound"] == pytest.approx(math.exp(nll_per_token), rel=1e-5)
    per_row_bits = nll / NUM_TOKENS / math.log(2)
    assert model["bits_per_token_stderr"] == pytest.approx(float(per_row_bits.std() / NUM_SAMPLES**0.5), rel=1e-4)
    assert "perplexity (exact)" in (ar_run / "summary.md").read_text()
    reference = [r["text"] for r in _read_jsonl(ar_run / "reference.jsonl")]
    assert reference[0] == bert_tokenizer.decode(rows[0].tolist(), clean_up_tokenization_spaces=False)


def test_batch_size_chunks_and_cache_do_not_change_the_samples(ar_run, ar_dir, evaluator_dir, tmp_path, monkeypatch):
    from bitstream_diffusion.evaluation import causal_lm_sampling

    calls = []
    original = causal_lm_sampling.sample_causal_lm

    def counted(model, **kwargs):
        calls.append(len(kwargs["generators"]))
        return original(model, **kwargs)

    monkeypatch.setattr(causal_lm_sampling, "sample_causal_lm", counted)
    argv = _argv(ar_dir, tmp_path, evaluator_dir, specs=SPECS[1:], batch_size=3, seeds=(1,))
    assert main([*argv, "--max-batch-size", "2"]) == 0
    assert calls == [2, 1, 2]  # batches [0, 3) and [3, 5), in chunks of at most 2
    run = ("temperature=0.8,top_p=0.9", 1)
    expected = [s["text"] for s in _read_jsonl(ar_run / "samples.jsonl") if (s["spec"], s["seed"]) == run]
    assert [s["text"] for s in _read_jsonl(tmp_path / "samples.jsonl")] == expected
    calls.clear()
    assert main(argv) == 0  # rerun: every batch from the cache
    assert calls == []


def test_defaults_and_errors(ar_dir, evaluator_dir, tmp_path, capsys, reference_file):
    assert main(_argv(ar_dir, tmp_path / "a", evaluator_dir, specs=(), seeds=(0,))) == 0  # no spec: ancestral
    assert [r["spec"] for r in _read_jsonl(tmp_path / "a" / "results.jsonl")] == ["temperature=1.0"]
    assert main(_argv(ar_dir, tmp_path / "b", evaluator_dir, specs=("gamma=0.2,nfe=6",))) == 2
    assert "are for CoBit pipelines" in capsys.readouterr().err

    bare = tmp_path / "bare"  # the model without its training record: the row length must be given
    bare.mkdir()
    for path in ar_dir.iterdir():
        (bare / path.name).write_bytes(path.read_bytes())
    assert main(_argv(bare, tmp_path / "c", evaluator_dir, seeds=(0,))) == 2
    assert "pass --num-tokens" in capsys.readouterr().err
    assert main([*_argv(bare, tmp_path / "c", evaluator_dir, seeds=(0,), specs=SPECS[:1]), "--num-tokens", "4"]) == 0
    row = _read_jsonl(tmp_path / "c" / "results.jsonl")[0]
    assert row["nfe"] == 4 and row["train_tokens"] is None
    assert main([*_argv(bare, tmp_path / "d", evaluator_dir), "--num-tokens", "9"]) == 2  # > max positions
    assert "reads at most 8 positions" in capsys.readouterr().err

    (tmp_path / "neither").mkdir()
    (tmp_path / "neither" / "config.json").write_text(json.dumps({"architectures": ["BertModel"]}))
    assert main(_argv(tmp_path / "neither", tmp_path / "e", evaluator_dir)) == 2
    assert "neither a CoBit pipeline folder" in capsys.readouterr().err


def test_gpt2_windows_are_packed_and_decoded_like_the_owt_codec(gpt2_tokenizer, wiki_summaries):
    """The ``owt`` layout: reference rows are the OWT windows in GPT-2 tokens; one EOS stripped at each end."""
    from bitstream_diffusion.codecs.owt import pack_owt_windows
    from bitstream_diffusion.evaluation.causal_lm_text import causal_lm_text_rules, start_token_id
    from bitstream_diffusion.evaluation.reference import build_reference_data

    rules = causal_lm_text_rules(gpt2_tokenizer, "auto", 16, recorded_recipe="owt")
    assert rules.layout == "owt" and start_token_id(gpt2_tokenizer) == 50256  # <|endoftext|>
    data = build_reference_data(rules, iter(wiki_summaries[:5]), 3)
    assert torch.equal(data.token_ids, pack_owt_windows(wiki_summaries[:5], gpt2_tokenizer, base_seq_len=16)[:3])
    assert data.texts[0] == gpt2_tokenizer.decode(data.token_ids[0, 1:-1].tolist())
    assert data.entropy_ids[0] == data.token_ids[0, 1:-1].tolist()
    assert rules.decode_ids(torch.tensor([[50256, 464, 50256, 3797, 50256]])) == ["The<|endoftext|> cat"]
    assert causal_lm_text_rules(gpt2_tokenizer, "auto", 16).layout == "generic"  # nothing recorded: generic


@pytest.mark.slow
def test_two_processes_give_the_same_samples_and_exact_perplexity(
    ar_run, ar_dir, evaluator_dir, reference_file, tmp_path, two_cpu_processes_launch
):
    command = two_cpu_processes_launch(
        "-m", "bitstream_diffusion.evaluation.run_protocol", *_argv(ar_dir, tmp_path, evaluator_dir, reference_file)
    )
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
    result = subprocess.run(command, check=False, capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    assert (tmp_path / "samples.jsonl").read_text() == (ar_run / "samples.jsonl").read_text()
    one, two = _read_jsonl(ar_run / "results.jsonl"), _read_jsonl(tmp_path / "results.jsonl")
    for a, b in zip(one, two, strict=True):
        assert b["num_processes"] == 2
        for column in ("row_type", "spec", "seed", "gen_ppl", "entropy", "nll_per_token", "bits_per_token",
                       "bits_per_token_stderr", "ppl_bound"):  # fmt: skip
            assert a[column] == b[column], column


def test_model_kind_and_training_record_are_read_from_the_folder(tmp_path):
    from bitstream_diffusion.evaluation.protocol_models import detect_model_kind, read_training_record

    run = tmp_path / "run"
    folder = run / "export"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"architectures": ["GPT2LMHeadModel"]}))
    assert detect_model_kind(folder) == "ar"
    (folder / "model_index.json").write_text("{}")
    assert detect_model_kind(folder) == "cobit"  # a pipeline folder also has a root config.json

    assert read_training_record(folder) == read_training_record(folder, {})
    assert read_training_record(folder).num_tokens is None
    fields = read_training_record(folder, {"train_tokens": 5, "num_tokens": 7})
    assert (fields.train_tokens, fields.num_tokens, fields.data_recipe) == (5, 7, None)
    (run / "train_summary.json").write_text(json.dumps({"tokens_seen": 640}))
    (run / "training_config.yaml").write_text("data_recipe: owt\nnum_tokens: 1024\nowt_base_seq_len: 256\n")
    record = read_training_record(folder, {"train_tokens": 5, "num_tokens": 7})
    assert (record.train_tokens, record.num_tokens, record.data_recipe) == (640, 256, "owt")  # OWT rows: GPT-2 windows
