"""Official checkpoints -> pipeline folders: golden parity after conversion, strictness, full-size smoke tests."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from bitstream_diffusion import BitstreamDiffusionPipeline, SDTModel
from bitstream_diffusion.conversion.convert_cobit_checkpoint import (
    convert_cobit_checkpoint,
    main,
)

LOGIT_ATOL, LOGIT_RTOL = 2e-5, 1e-5
SC_CASES = {"sc_none": None, "sc_zeros": "zeros", "sc_random": "x0_hat_random"}


def _self_cond(case, inputs):
    kind = SC_CASES[case]
    return None if kind is None else torch.zeros_like(inputs["x_t"]) if kind == "zeros" else inputs[kind]


def _official_config(golden_dir, name):
    return json.loads((golden_dir / "model" / name / "official_config.json").read_text())


@pytest.fixture(scope="module")
def lm1b_folder(tmp_path_factory, golden_dir, entropy_tables_dir):
    out = tmp_path_factory.mktemp("convert") / "lm1b_tiny"
    convert_cobit_checkpoint(
        golden_dir / "model" / "lm1b_tiny" / "release.pt", entropy_tables_dir / "lm1b", "bert-base-uncased", out,
        official_config=golden_dir / "model" / "lm1b_tiny" / "official_config.json",
    )
    return out


@pytest.fixture(scope="module")
def owt_folder(tmp_path_factory, golden_dir, entropy_tables_dir):
    out = tmp_path_factory.mktemp("convert") / "owt_tiny"
    code = golden_dir / "codec" / "owt" / "tokenizer_gpt2id_bpe16_53248_base1024.json"
    convert_cobit_checkpoint(
        golden_dir / "model" / "owt_tiny" / "release.pt", entropy_tables_dir / "owt", "gpt2", out,
        code_tokenizer=code, code_tokenizer_meta=code.with_suffix("").with_suffix(".meta.json"),
        official_config=_official_config(golden_dir, "owt_tiny"),
    )
    return out


def _check_model_cases(model: SDTModel, cases: dict, outputs_key: str = "outputs") -> float:
    inputs, worst = cases["inputs"], 0.0
    for case in SC_CASES:
        with torch.no_grad():
            logits = model(inputs["x_t"], inputs["sigma"], _self_cond(case, inputs)).logits
        expected = cases[outputs_key][case]["logits"]
        torch.testing.assert_close(logits, expected, atol=LOGIT_ATOL, rtol=LOGIT_RTOL)
        worst = max(worst, (logits - expected).abs().max().item())
    return worst


def test_converted_folder_layout(lm1b_folder):
    index = json.loads((lm1b_folder / "model_index.json").read_text())
    assert index["_class_name"] == ["pipeline_bitstream_diffusion", "BitstreamDiffusionPipeline"]
    assert index["codec_layout"] == "lm1b" and index["codec_clean_up_tokenization_spaces"] is False
    for item in ("model/model.safetensors", "model/config.json", "model/modeling_sdt.py",
                 "scheduler/scheduler_config.json", "tokenizer/tokenizer_config.json", "README.md"):
        assert (lm1b_folder / item).is_file(), item
    card = (lm1b_folder / "README.md").read_text()
    assert card.startswith("---\n") and "\nlicense: mit\n" in card.split("\n---\n")[0]
    assert "2605.07013" in card and "num_inference_steps" in card
    scheduler = json.loads((lm1b_folder / "scheduler" / "scheduler_config.json").read_text())
    assert len(scheduler["entropy_cdf"]) == 128 and len(scheduler["entropy_edges"]) == 129
    assert scheduler["gamma"] == pytest.approx(0.2 * 255 / 254) and scheduler["s_noise"] == 1.003


@pytest.mark.parametrize("name", ["lm1b_tiny", "owt_tiny"])
def test_converted_model_reproduces_golden_outputs(name, golden_dir, lm1b_folder, owt_folder):
    folder = {"lm1b_tiny": lm1b_folder, "owt_tiny": owt_folder}[name]
    pipe = BitstreamDiffusionPipeline.from_pretrained(folder)
    cases = torch.load(golden_dir / "model" / name / "cases.pt", weights_only=True)
    worst = _check_model_cases(pipe.model, cases)
    print(f"{name}: worst |logit error| after conversion {worst:.2e}")


@pytest.mark.parametrize("run,self_conditioning,gamma", [
    ("ddim_det_carry", "carry", 0.0), ("ddim_stoch_carry", "carry", 0.2), ("ddim_stoch_refined", "refined", 0.2),
])
def test_converted_pipeline_reproduces_golden_trajectories(lm1b_folder, golden_dir, run, self_conditioning, gamma):
    pipe = BitstreamDiffusionPipeline.from_pretrained(lm1b_folder)
    pipe.scheduler.register_to_config(self_conditioning=self_conditioning, s_noise=1.003 if gamma else 1.0)
    pipe.set_progress_bar_config(disable=True)
    golden = torch.load(golden_dir / "sampler" / f"{run}.pt", weights_only=True)
    meta = json.loads((golden_dir / "sampler" / f"{run}.json").read_text())
    out = pipe(batch_size=meta["B"], num_inference_steps=meta["num_steps_N (grid points)"], gamma=gamma,
               sequence_length=meta["n_tokens"], generator=torch.Generator().manual_seed(meta["seed"]),
               return_probs=True)
    assert out.nfe == meta["n_network_calls"]
    torch.testing.assert_close(out.probs, golden["final_probs"], atol=1e-4, rtol=0)
    assert torch.equal(out.bits, golden["final_bits"])
    assert torch.equal(out.token_ids, golden["final_code_ids"])


def test_training_checkpoint_converts_to_ema_weights(tmp_path, golden_dir, entropy_tables_dir):
    folder = golden_dir / "model" / "lm1b_tiny"
    cases = torch.load(folder / "train_ckpt_cases.pt", weights_only=True)
    for use_ema, key in ((True, "outputs_ema"), (False, "outputs_model_weights")):
        out = convert_cobit_checkpoint(folder / "train_ckpt.pt", entropy_tables_dir / "lm1b", "bert-base-uncased",
                                       tmp_path / key, num_attention_heads=2, use_ema=use_ema)
        _check_model_cases(SDTModel.from_pretrained(out / "model"), cases, outputs_key=key)


@pytest.mark.parametrize("table", ["lm1b", "owt", "owt_medium"])
def test_converted_scheduler_gives_golden_grids(tmp_path, golden_dir, entropy_tables_dir, table):
    out = convert_cobit_checkpoint(golden_dir / "model" / "lm1b_tiny" / "release.pt", entropy_tables_dir / table,
                                   "bert-base-uncased", tmp_path / table, num_attention_heads=2)
    scheduler = BitstreamDiffusionPipeline.from_pretrained(out).scheduler
    grids = json.loads((golden_dir / "schedule" / "schedule.json").read_text())["tables"][table]["entropic_grids"]
    for n, grid in grids.items():
        scheduler.set_timesteps(int(n))
        assert torch.equal(scheduler.sigmas[: int(n)], torch.tensor(grid, dtype=torch.float32)), n


def test_code_tokenizer_converts_and_decodes_identically(owt_folder, golden_dir):
    pipe = BitstreamDiffusionPipeline.from_pretrained(owt_folder)
    codec = torch.load(golden_dir / "codec" / "owt" / "owt_codec.pt", weights_only=True)
    expected = json.loads((golden_dir / "codec" / "owt" / "owt_decode.json").read_text())
    texts = pipe.bits_to_text(codec["dataset_bits_rows_0_1"])
    assert texts == expected["texts_from_dataset_bits_rows_0_1"]
    for window in expected["windows"][:3]:
        ids = codec["code_ids"][window["index"]][None]
        assert pipe.codec.decode_ids(ids) == [window["text"]]


# ------------------------------------------------------------------------------------------------ strictness
def _edited_release(tmp_path, golden_dir, edit):
    payload = torch.load(golden_dir / "model" / "lm1b_tiny" / "release.pt", weights_only=True)
    edit(payload)
    path = tmp_path / "edited.pt"
    torch.save(payload, path)
    return path


class _Opaque:
    pass


@pytest.mark.parametrize("edit,message", [
    (lambda p: p["model"].__setitem__("time_cond.renamed", p["model"].pop("time_cond.weight")),
     "unexpected keys (1): ['time_cond.renamed']"),
    (lambda p: p["model"].pop("head.mixer.3.bias"), "missing keys (1): ['head.mixer.3.bias']"),
    (lambda p: p["model"].__setitem__("head.mixer.3.bias", torch.zeros(3)), "head.mixer.3.bias: checkpoint (3,)"),
    (lambda p: p.__setitem__("extra", _Opaque()), "weights_only"),
])
def test_cli_rejects_bad_checkpoints_with_clear_messages(tmp_path, golden_dir, entropy_tables_dir, capsys, edit,
                                                         message):
    path = _edited_release(tmp_path, golden_dir, edit)
    out = tmp_path / "out"
    code = main(["--checkpoint", str(path), "--entropy-tables", str(entropy_tables_dir / "lm1b"),
                 "--tokenizer", "bert-base-uncased", "--num-attention-heads", "2", "--output-dir", str(out)])
    assert code == 2
    assert message in capsys.readouterr().err
    assert not out.exists() and not list(tmp_path.glob(".out.converting-*")), "nothing half-written"


def test_existing_output_needs_overwrite(tmp_path, golden_dir, entropy_tables_dir):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("user data")
    args = (golden_dir / "model" / "lm1b_tiny" / "release.pt", entropy_tables_dir / "lm1b", "bert-base-uncased", out)
    with pytest.raises(FileExistsError, match="--overwrite"):
        convert_cobit_checkpoint(*args, num_attention_heads=2)
    assert (out / "keep.txt").read_text() == "user data"
    convert_cobit_checkpoint(*args, num_attention_heads=2, overwrite=True)
    assert (out / "model_index.json").is_file() and not (out / "keep.txt").exists()


def test_owt_without_code_tokenizer_is_refused(tmp_path, golden_dir, entropy_tables_dir):
    official = _official_config(golden_dir, "owt_tiny")
    assert official["data"]["dataset"].lower() in ("owt", "openwebtext")
    with pytest.raises(ValueError, match="--code-tokenizer"):
        convert_cobit_checkpoint(golden_dir / "model" / "owt_tiny" / "release.pt", entropy_tables_dir / "owt", "gpt2",
                                 tmp_path / "o", official_config=official)
    assert not (tmp_path / "o").exists()


def test_tokenizer_too_wide_for_the_bit_width_is_refused(tmp_path, golden_dir, entropy_tables_dir):
    with pytest.raises(ValueError, match="bits"):
        convert_cobit_checkpoint(golden_dir / "model" / "lm1b_tiny" / "release.pt", entropy_tables_dir / "lm1b",
                                 "gpt2", tmp_path / "o", num_attention_heads=2)
    assert not (tmp_path / "o").exists()


def test_push_to_hub_uploads_the_folder(tmp_path, golden_dir, entropy_tables_dir, monkeypatch):
    calls = []

    class FakeApi:
        def create_repo(self, repo_id, private=False, exist_ok=False):
            calls.append(("create", repo_id, private))

        def upload_folder(self, repo_id, folder_path, commit_message):
            calls.append(("upload", repo_id, sorted(p.name for p in __import__("pathlib").Path(folder_path).iterdir())))

    monkeypatch.setattr("huggingface_hub.HfApi", FakeApi)
    convert_cobit_checkpoint(golden_dir / "model" / "lm1b_tiny" / "release.pt", entropy_tables_dir / "lm1b",
                             "bert-base-uncased", tmp_path / "out", num_attention_heads=2, push_to_hub="me/cobit-tiny")
    assert calls[0] == ("create", "me/cobit-tiny", False)
    assert calls[1][0] == "upload" and "model_index.json" in calls[1][2] and "README.md" in calls[1][2]
    assert "me/cobit-tiny" in (tmp_path / "out" / "README.md").read_text()


# ------------------------------------------------------------------------------------------------ full size
_SMOKE = """
import json, resource, sys, time, torch
from bitstream_diffusion.conversion.convert_cobit_checkpoint import convert_cobit_checkpoint
from bitstream_diffusion import BitstreamDiffusionPipeline
manifest, preset, workdir, tables, tokenizer = sys.argv[1:6]
manifest = json.load(open(manifest))
generator = torch.Generator().manual_seed(0)
state = {}
for key, shape in manifest["state_dict"].items():  # a random official-format state dict, built on the fly
    state[key] = torch.randn(shape, generator=generator) * 0.02 if key != "time_fn._freq" else None
from bitstream_diffusion.modeling.modeling_sdt import SDTSigmaEmbedding
state["time_fn._freq"] = SDTSigmaEmbedding.frequencies(manifest["state_dict"]["time_fn._freq"][1])
torch.save({"model": state, "global_step": 0}, workdir + "/release.pt")
del state
start = time.perf_counter()
code = {} if preset == "cobit-s-lm1b" else {"code_tokenizer": sys.argv[6], "code_tokenizer_meta": sys.argv[7]}
convert_cobit_checkpoint(workdir + "/release.pt", tables, tokenizer, workdir + "/out", preset=preset, **code)
seconds = time.perf_counter() - start
pipe = BitstreamDiffusionPipeline.from_pretrained(workdir + "/out")
count = sum(p.numel() for p in pipe.model.parameters())
bits = torch.randint(0, 2, (1, 4 * pipe.model.config.bits_per_token)).float()
with torch.no_grad():
    logits = pipe.model(bits + 0.5 * torch.randn(bits.shape), torch.tensor([0.5])).logits
assert torch.isfinite(logits).all()
print(json.dumps({"preset": preset, "parameters": count, "conversion_seconds": round(seconds, 1),
                  "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)}))
"""


@pytest.mark.slow
@pytest.mark.parametrize("preset,manifest,table", [
    ("cobit-s-lm1b", "S-LM1B", "lm1b"), ("cobit-s-owt", "S-OWT", "owt"), ("cobit-m-owt", "M-OWT", "owt_medium"),
])
def test_full_size_smoke(tmp_path, golden_dir, entropy_tables_dir, preset, manifest, table):
    expected = json.loads((golden_dir / "manifests" / f"{manifest}.json").read_text())["n_parameters"]
    code = golden_dir / "codec" / "owt" / "tokenizer_gpt2id_bpe16_53248_base1024.json"
    args = [sys.executable, "-c", _SMOKE, str(golden_dir / "manifests" / f"{manifest}.json"), preset, str(tmp_path),
            str(entropy_tables_dir / table), "bert-base-uncased" if table == "lm1b" else "gpt2",
            str(code), str(code.with_suffix("").with_suffix(".meta.json"))]
    result = subprocess.run(args, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    print(report)
    assert report["parameters"] == expected
