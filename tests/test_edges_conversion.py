"""Conversion edges: partial EMA shadows, unreadable files, wrong weights, bad tokenizers and tables, the folder's
permissions, and a model card whose every snippet runs."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch

from bitstream_diffusion.conversion.convert_cobit_checkpoint import convert_cobit_checkpoint, main
from bitstream_diffusion.hub import LIBRARY_NAME, NO_PACKAGE_MARKER, REPO_ID_VARIABLE, build_model_card
from bitstream_diffusion.modeling.official_checkpoint import StateDictMismatchError, load_official_checkpoint
from bitstream_diffusion.schedulers.entropy_tables import EntropyTables


@pytest.fixture(scope="module")
def release(golden_dir):
    return golden_dir / "model" / "lm1b_tiny" / "release.pt"


@pytest.fixture(scope="module")
def converted(release, entropy_tables_dir, bert_tokenizer, tmp_path_factory):
    out = tmp_path_factory.mktemp("converted") / "cobit-tiny"
    old = os.umask(0o022)
    try:
        convert_cobit_checkpoint(release, entropy_tables_dir / "lm1b", bert_tokenizer, out, num_attention_heads=2)
    finally:
        os.umask(old)
    return out


def _cli(tmp_path, entropy_tables_dir, checkpoint, *extra):
    return main(["--checkpoint", str(checkpoint), "--entropy-tables", str(entropy_tables_dir / "lm1b"),
                 "--tokenizer", "bert-base-uncased", "--num-attention-heads", "2",
                 "--output-dir", str(tmp_path / "out"), *extra])


# ------------------------------------------------------------------------------------------------ EMA shadows
def test_a_partial_ema_shadow_is_an_error_listing_the_keys(tmp_path, golden_dir, entropy_tables_dir, capsys):
    payload = torch.load(golden_dir / "model" / "lm1b_tiny" / "train_ckpt.pt", weights_only=False)
    payload["ema"]["shadow"].pop("head.mixer.3.bias")
    payload["ema"]["shadow"].pop("blocks.0.ff.Wa.weight")
    path = tmp_path / "partial_ema.pt"
    torch.save(payload, path)
    with pytest.raises(StateDictMismatchError) as error:
        load_official_checkpoint(path)
    message = str(error.value)
    assert "['blocks.0.ff.Wa.weight', 'head.mixer.3.bias']" in message and "--no-ema" in message
    assert _cli(tmp_path, entropy_tables_dir, path) == 2
    assert "lacks 2 parameter(s)" in capsys.readouterr().err and not (tmp_path / "out").exists()
    raw = load_official_checkpoint(path, use_ema=False)  # --no-ema: every tensor from the raw weights
    assert not raw.used_ema and torch.equal(raw.state_dict["head.mixer.3.bias"], payload["model"]["head.mixer.3.bias"])
    assert _cli(tmp_path, entropy_tables_dir, path, "--no-ema") == 0


def test_a_complete_ema_shadow_takes_only_buffers_from_the_raw_weights(golden_dir):
    path = golden_dir / "model" / "lm1b_tiny" / "train_ckpt.pt"
    payload = torch.load(path, weights_only=False)
    loaded = load_official_checkpoint(path)
    assert loaded.used_ema and sorted(loaded.state_dict) == sorted(payload["model"])
    for key, tensor in loaded.state_dict.items():
        expected = payload["ema"]["shadow"].get(key, payload["model"][key])
        assert torch.equal(tensor, expected), key
    assert set(payload["model"]) - set(payload["ema"]["shadow"]) == {"time_fn._freq"}


# ------------------------------------------------------------------------------------------------ unreadable files
@pytest.mark.parametrize("kind,expected", [
    ("empty", "is empty (0 bytes): it is not a PyTorch checkpoint"),
    ("text", "is not a PyTorch checkpoint (no zip archive or pickle; it starts with 'step,loss"),
    ("truncated", "is truncated ("),
    ("safetensors", "looks like a safetensors file"),
])
def test_unreadable_checkpoints_are_named_for_what_they_are(tmp_path, release, entropy_tables_dir, capsys, kind,
                                                            expected):
    path = tmp_path / f"{kind}.pt"
    if kind == "text":
        path.write_text("step,loss\n1,0.5\n")
    elif kind == "truncated":
        data = release.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif kind == "safetensors":
        from safetensors.torch import save_file

        save_file({"w": torch.zeros(2)}, str(path))
    else:
        path.write_bytes(b"")
    assert _cli(tmp_path, entropy_tables_dir, path) == 2
    err = capsys.readouterr().err
    assert expected in err and str(path) in err and "other pickled Python objects" not in err
    assert not (tmp_path / "out").exists()


def test_an_integer_weight_is_named_with_its_dtype(tmp_path, release, entropy_tables_dir, capsys):
    payload = torch.load(release, weights_only=True)
    payload["model"]["time_proj.weight"] = payload["model"]["time_proj.weight"].to(torch.int32)
    path = tmp_path / "int.pt"
    torch.save(payload, path)
    assert _cli(tmp_path, entropy_tables_dir, path) == 2
    err = capsys.readouterr().err
    assert "'time_proj.weight'" in err and "torch.int32" in err and "floating-point" in err


# ------------------------------------------------------------------------------------------------ other inputs
@pytest.mark.parametrize("tokenizer,expected", [
    ("no-such-org/no-such-tokenizer", "Could not load --tokenizer 'no-such-org/no-such-tokenizer'"),
    ("{tmp}/empty_folder", "holds no loadable tokenizer"),
    ("{tmp}/vocab.txt", "is a file; pass the folder"),
])
def test_a_bad_tokenizer_is_named_with_what_is_accepted(tmp_path, release, entropy_tables_dir, capsys, tokenizer,
                                                        expected):
    (tmp_path / "empty_folder").mkdir()
    (tmp_path / "vocab.txt").write_text("[PAD]\n")
    tokenizer = tokenizer.format(tmp=tmp_path)
    code = main(["--checkpoint", str(release), "--entropy-tables", str(entropy_tables_dir / "lm1b"),
                 "--tokenizer", tokenizer, "--num-attention-heads", "2", "--output-dir", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and expected in err and "'bert-base-uncased' (LM1B) or 'gpt2' (OWT)" in err


@pytest.mark.parametrize("damage", ["garbage", "empty", "truncated"])
def test_a_corrupt_table_file_is_named(tmp_path, release, entropy_tables_dir, capsys, damage):
    tables = tmp_path / "tables"
    shutil.copytree(entropy_tables_dir / "lm1b", tables)
    target = tables / "entropy_cdf.pt"
    data = target.read_bytes()
    target.write_bytes({"garbage": b"not a table", "empty": b"", "truncated": data[: len(data) // 2]}[damage])
    with pytest.raises(ValueError, match=re.escape(f"The entropy table file {target} cannot be read")):
        EntropyTables.from_folder(tables)
    code = main(["--checkpoint", str(release), "--entropy-tables", str(tables), "--tokenizer", "bert-base-uncased",
                 "--num-attention-heads", "2", "--output-dir", str(tmp_path / "out")])
    assert code == 2 and str(target) in capsys.readouterr().err


def test_a_bad_official_config_is_named(tmp_path, release, entropy_tables_dir):
    config = tmp_path / "config.json"
    config.write_text("model: {}\n")
    with pytest.raises(ValueError, match=re.escape(f"--official-config {config} is not a JSON file")):
        convert_cobit_checkpoint(release, entropy_tables_dir / "lm1b", "bert-base-uncased", tmp_path / "o",
                                 official_config=config)


def test_the_output_folder_follows_the_umask(converted):
    assert converted.stat().st_mode & 0o777 == 0o755
    assert (converted / "model").stat().st_mode & 0o777 == 0o755


# ------------------------------------------------------------------------------------------------ model card
def _python_blocks(card: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", card, flags=re.S)


def _set_repo_id(code: str, repo_id: str) -> str:
    code, count = re.subn(rf'^{REPO_ID_VARIABLE} = "[^"]*"', f"{REPO_ID_VARIABLE} = {repo_id!r}", code, flags=re.M)
    assert count == 1, f"each snippet names the repository in one `{REPO_ID_VARIABLE} = ...` line:\n{code}"
    return code


def test_card_metadata(converted):
    from huggingface_hub import ModelCard

    card = ModelCard.load(converted / "README.md")
    data = card.data.to_dict()
    assert data["library_name"] == LIBRARY_NAME and data["pipeline_tag"] == "text-generation"
    assert data["license"] == "mit" and data["language"] == "en"
    assert data["datasets"] == ["billion-word-benchmark/lm1b"] and {"cobit", "bitstream-diffusion"} <= set(data["tags"])
    assert "arxiv.org/abs/2605.07013" in card.text and "[PAD]" in card.text


@pytest.mark.slow  # 255 denoiser calls, as the card says
def test_card_snippets_with_the_package_run_as_written(converted, capsys):
    card = (converted / "README.md").read_text()
    blocks = [b for b in _python_blocks(card) if not b.startswith(NO_PACKAGE_MARKER)]
    assert blocks, card
    for block in blocks:
        exec(compile(_set_repo_id(block, str(converted)), "README.md", "exec"), {"__name__": "__card__"})
    printed = capsys.readouterr().out
    assert printed.strip().endswith(" 255"), printed[-200:]  # the texts, then `out.nfe`


def test_card_snippet_without_the_package_runs_from_a_hub_cache(converted, tmp_path):
    card = (converted / "README.md").read_text()
    blocks = [b for b in _python_blocks(card) if b.startswith(NO_PACKAGE_MARKER)]
    assert len(blocks) == 1
    repo_id, commit = "someone/cobit-tiny", "0" * 40
    repo = tmp_path / "hub" / "models--someone--cobit-tiny"
    shutil.copytree(converted, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    script = 'import sys\nsys.modules["bitstream_diffusion"] = None  # this package is not installed\n'
    script += _set_repo_id(blocks[0], repo_id)
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1",
           "HF_MODULES_CACHE": str(tmp_path / "modules")}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    config = json.loads((converted / "model" / "config.json").read_text())
    assert result.stdout.split()[0] == str(config["bits_per_token"])


def test_card_protocol_command_parses(converted):
    from bitstream_diffusion.evaluation.run_protocol import build_parser
    from bitstream_diffusion.evaluation.sampler_specs import SamplerSpec

    card = (converted / "README.md").read_text()
    commands = re.findall(r"```bash\n(.*?)```", card, flags=re.S)
    assert len(commands) == 1
    argv = shlex.split(commands[0].replace("\\\n", " "))
    assert argv[:3] == ["python", "-m", "bitstream_diffusion.evaluation.run_protocol"]
    args = build_parser().parse_args(argv[3:])
    assert args.pipeline == "cobit-tiny" and [SamplerSpec.parse(s).label for s in args.spec]


def test_trained_card_for_the_training_export():
    card = build_model_card(
        "trained", repo_id="me/cobit-owt-run", layout="owt", num_parameters=1234, dataset="owt",
        base_model="me/cobit-s-owt", gamma=0.2, num_inference_steps=128,
        training={"data_recipe": "owt", "global_step": 1000, "validation_loss": "0.1234"},
    )
    data = card.data.to_dict()
    assert data["datasets"] == ["Skylion007/openwebtext"] and data["base_model"] == "me/cobit-s-owt"
    assert "global step: 1000" in card.text and "train_bitstream_diffusion.py" in card.text
    assert 'repo_id = "me/cobit-owt-run"' in card.text and "num_inference_steps=128" in card.text
    assert "Reproduce the paper" not in card.text
    with pytest.raises(ValueError, match="kind must be"):
        build_model_card("finetuned", repo_id="x", layout="owt", num_parameters=1)


def test_card_of_an_official_release_quotes_the_paper():
    card = build_model_card("converted", repo_id="me/cobit-m-owt", layout="owt", num_parameters=1,
                            dataset="openwebtext", paper_cells=((0.21, 256), (0.24, 384)), official_release=True).text
    assert "## Reproduce the paper's numbers" in card and "27.06" in card
    assert "--spec gamma=0.21,nfe=256 --spec gamma=0.24,nfe=384" in card and "| 0.24 | 384 | 383 | 0.24063 |" in card
    generic = build_model_card("converted", repo_id="x/y", layout="generic", num_parameters=1,
                               paper_cells=((0.2, 256),))
    assert "## Evaluate" in generic.text and "27.06" not in generic.text and "datasets" not in generic.data.to_dict()


def test_card_of_the_cli_names_the_hub_repo(tmp_path, release, entropy_tables_dir, monkeypatch):
    calls = []

    class FakeApi:
        def create_repo(self, repo_id, private=False, exist_ok=False):
            calls.append(repo_id)

        def upload_folder(self, repo_id, folder_path, commit_message):
            calls.append(textwrap.shorten(commit_message, 40))

    monkeypatch.setattr("huggingface_hub.HfApi", FakeApi)
    out = convert_cobit_checkpoint(release, entropy_tables_dir / "lm1b", "bert-base-uncased", tmp_path / "o",
                                   num_attention_heads=2, push_to_hub="me/cobit-tiny")
    card = (out / "README.md").read_text()
    assert card.count('repo_id = "me/cobit-tiny"') == 2 and "--pipeline me/cobit-tiny" in card
    assert calls[0] == "me/cobit-tiny"
