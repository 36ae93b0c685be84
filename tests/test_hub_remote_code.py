"""Pipeline folders that carry their code: loading without the package, the code in sync with the package, old folders.

The no-package tests run a fresh interpreter whose `sys.path` holds the standard library and site-packages only
(`python -I -S`: no `.pth` files, so not the editable install, and no `PYTHONPATH`), and check there that
`import bitstream_diffusion` fails.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

import pytest
import torch
from diffusers.utils.dynamic_modules_utils import get_relative_imports
from transformers.dynamic_module_utils import get_imports

from bitstream_diffusion import BitstreamDiffusionPipeline, EntropyRateScheduler, SDTModel
from bitstream_diffusion.codecs import CodeTokenizer
from bitstream_diffusion.pipelines.remote_code import check_remote_code, remote_code_files

SAMPLE = dict(batch_size=2, num_inference_steps=4, sequence_length=6, output_type="token_ids")
SEED = 7


def _save(pipe: BitstreamDiffusionPipeline, folder: Path) -> Path:
    pipe.set_progress_bar_config(disable=True)
    pipe.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def lm1b_folder(tmp_path_factory, entropy_tables_dir, bert_tokenizer, tiny_sdt_factory):
    scheduler = EntropyRateScheduler.from_entropy_tables(entropy_tables_dir / "lm1b", gamma=0.2)
    pipe = BitstreamDiffusionPipeline(
        model=tiny_sdt_factory(), scheduler=scheduler, tokenizer=bert_tokenizer, codec_layout="lm1b"
    )
    return _save(pipe, tmp_path_factory.mktemp("hub") / "lm1b")


@pytest.fixture(scope="module")
def owt_folder(tmp_path_factory, golden_dir, entropy_tables_dir, gpt2_tokenizer, tiny_sdt_factory):
    codec_dir = golden_dir / "codec" / "owt"
    code_tokenizer = CodeTokenizer.from_official_files(
        codec_dir / "tokenizer_gpt2id_bpe16_53248_base1024.json",
        codec_dir / "tokenizer_gpt2id_bpe16_53248_base1024.meta.json",
    )
    scheduler = EntropyRateScheduler.from_entropy_tables(entropy_tables_dir / "owt", gamma=0.2, solver="heun")
    pipe = BitstreamDiffusionPipeline(
        model=tiny_sdt_factory(seed=1, bits_per_token=16),
        scheduler=scheduler,
        tokenizer=gpt2_tokenizer,
        code_tokenizer=code_tokenizer,
    )
    return _save(pipe, tmp_path_factory.mktemp("hub") / "owt")


def _package_run(folder: Path) -> dict:
    pipe = BitstreamDiffusionPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    out = pipe(generator=torch.Generator().manual_seed(SEED), **SAMPLE)
    return {"token_ids": out.token_ids, "texts": pipe.codec.decode_ids(out.token_ids), "pipe": pipe}


# The script run without the package: every way a diffusers or transformers user loads a folder.
NO_PACKAGE_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import torch
    try:
        import bitstream_diffusion
    except ImportError:
        pass
    else:
        raise SystemExit(f"bitstream_diffusion is importable from {bitstream_diffusion.__file__}")
    from diffusers import DiffusionPipeline
    from transformers import AutoConfig, AutoModel

    lm1b, owt, resaved, result_file = sys.argv[1:5]
    seed, sample = int(sys.argv[5]), json.loads(sys.argv[6])
    results = {}
    for name, folder, kwargs in (
        ("lm1b", lm1b, {}),
        ("lm1b_custom_pipeline", lm1b, {"custom_pipeline": lm1b}),
        ("owt", owt, {}),
    ):
        pipe = DiffusionPipeline.from_pretrained(folder, trust_remote_code=True, **kwargs)
        pipe.set_progress_bar_config(disable=True)
        out = pipe(generator=torch.Generator().manual_seed(seed), **sample)
        results[name] = {
            "token_ids": out.token_ids,
            "texts": pipe.codec.decode_ids(out.token_ids),
            "classes": [type(pipe).__module__, type(pipe.model).__module__, type(pipe.scheduler).__module__],
        }
    pipe.save_pretrained(resaved)  # the OWT pipeline, saved from the folder's own code

    try:  # without trust_remote_code: a request to trust the folder's code (not "update transformers")
        AutoConfig.from_pretrained(lm1b)
    except ValueError as error:
        results["untrusted"] = str(error)
    denoiser = AutoModel.from_pretrained(lm1b, trust_remote_code=True)  # the root config.json's auto_map
    noisy = torch.linspace(-2, 3, 2 * 6 * 15).reshape(2, 6 * 15)
    results["automodel"] = {"logits": denoiser(noisy, torch.tensor([0.7, 3.0])).logits, "type": type(denoiser).__name__}
    torch.save(results, result_file)
    """
)


@pytest.mark.slow
def test_folders_load_and_generate_without_the_package(lm1b_folder, owt_folder, tmp_path):
    result_file, resaved = tmp_path / "results.pt", tmp_path / "resaved"
    site_packages = sysconfig.get_paths()["purelib"]
    bootstrap = f"import sys; sys.path.append({site_packages!r}); exec(sys.argv.pop(1))"
    command = [sys.executable, "-I", "-S", "-c", bootstrap, NO_PACKAGE_SCRIPT]
    command += [str(lm1b_folder), str(owt_folder), str(resaved), str(result_file), str(SEED), json.dumps(SAMPLE)]
    env = {"HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(tmp_path / "modules"), "HF_HOME": str(tmp_path / "hf")}
    env.update({k: v for k, v in os.environ.items() if k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")})
    completed = subprocess.run(command, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
    assert completed.returncode == 0, completed.stderr[-4000:]
    results = torch.load(result_file, weights_only=True)

    for name, folder in (("lm1b", lm1b_folder), ("lm1b_custom_pipeline", lm1b_folder), ("owt", owt_folder)):
        expected = _package_run(folder)
        assert torch.equal(results[name]["token_ids"], expected["token_ids"]), name  # the same bits
        assert results[name]["texts"] == expected["texts"], name
        assert all(module.startswith("diffusers_modules.") for module in results[name]["classes"]), name
        assert type(expected["pipe"].scheduler).__module__.startswith("bitstream_diffusion.")  # the package's own

    assert "trust_remote_code=True" in results["untrusted"] and "update" not in results["untrusted"].lower()
    model = SDTModel.from_pretrained(lm1b_folder / "model")
    noisy = torch.linspace(-2, 3, 2 * 6 * 15).reshape(2, 6 * 15)
    assert results["automodel"]["type"] == "SDTModel"
    # the same code on the same weights (thread counts may change the float summation order, hence a tolerance)
    torch.testing.assert_close(results["automodel"]["logits"], model(noisy, torch.tensor([0.7, 3.0])).logits)

    # saved again by the folder's own code: the same code and index as the package writes
    assert check_remote_code(resaved) == []
    index = json.loads((resaved / "model_index.json").read_text())
    assert index.pop("_name_or_path") == str(owt_folder)  # where the saved pipeline came from
    assert index == json.loads((owt_folder / "model_index.json").read_text())


def test_model_index_points_at_the_code(lm1b_folder, owt_folder):
    lm1b = json.loads((lm1b_folder / "model_index.json").read_text())
    assert lm1b["_class_name"] == ["pipeline_bitstream_diffusion", "BitstreamDiffusionPipeline"]
    assert lm1b["model"] == ["modeling_sdt", "SDTModel"] and (lm1b_folder / "model" / "modeling_sdt.py").is_file()
    assert lm1b["scheduler"] == ["scheduling_entropy_rate", "EntropyRateScheduler"]
    assert lm1b["tokenizer"][0] == "transformers" and lm1b["code_tokenizer"] == [None, None]
    owt = json.loads((owt_folder / "model_index.json").read_text())
    assert owt["code_tokenizer"] == ["code_tokenizer", "CodeTokenizer"]
    assert (owt_folder / "code_tokenizer" / "code_tokenizer.py").is_file()
    root = json.loads((lm1b_folder / "config.json").read_text())
    assert root["auto_map"] == {
        "AutoConfig": "pipeline_folder.BitstreamPipelineFolderConfig",
        "AutoModel": "pipeline_folder.BitstreamPipelineDenoiserLoader",
    }


def test_the_code_is_what_the_package_writes_now(lm1b_folder, tmp_path):
    folder = shutil.copytree(lm1b_folder, tmp_path / "copy")
    files = remote_code_files(folder)  # no code_tokenizer/: not its code either
    assert check_remote_code(folder) == []
    on_disk = {p.relative_to(folder).as_posix() for p in folder.rglob("*.py") if p.parent.name != "model"}
    assert on_disk == set(files)
    assert {"pipeline_bitstream_diffusion.py", "scheduler/scheduling_entropy_rate.py"} <= set(files)
    # diffusers copies every folder's files into one namespace: a module carried twice is the same file
    every = remote_code_files()
    for path, text in every.items():
        assert all(text == other for p, other in every.items() if Path(p).name == Path(path).name), path
    sources = [text.split("\n", 1)[0] for text in files.values()]  # "# Written from `bitstream_diffusion.x.y` ..."
    # no training code; of the evaluation code only the variational bound (`pipe.log_likelihood` needs it)
    likelihood = (".evaluation.vlb`", ".evaluation.vlb_draws`", ".evaluation._inputs`")
    assert not any(".training." in line for line in sources)
    assert all(line.endswith(likelihood) or ".evaluation." not in line for line in (s.split(" ")[3] for s in sources))

    (folder / "bits.py").write_text((folder / "bits.py").read_text() + "\n# edited by hand\n")
    (folder / "scheduler" / "sigma_grids.py").unlink()
    problems = check_remote_code(folder)
    assert any(p.startswith("bits.py: differs") for p in problems)
    assert any(p.startswith("scheduler/sigma_grids.py: missing") for p in problems)


def test_every_import_of_the_code_is_carried(lm1b_folder):
    """What diffusers and transformers look at before running the files: relative imports they copy along, absolute
    imports they check are installed."""
    for location in (lm1b_folder, lm1b_folder / "scheduler"):
        names = {p.stem for p in location.glob("*.py")}
        entry = "pipeline_bitstream_diffusion" if location == lm1b_folder else "scheduling_entropy_rate"
        # a local folder's entry module is copied with its direct imports only: it names every module of its folder
        assert set(get_relative_imports(location / f"{entry}.py")) == names - {entry}, location
        for path in location.glob("*.py"):
            assert set(get_relative_imports(path)) <= names, path
            assert "bitstream_diffusion" not in get_imports(path), path  # transformers refuses missing packages


def test_package_loads_folders_with_its_own_classes_also_old_ones(lm1b_folder, tmp_path):
    expected = _package_run(lm1b_folder)
    pipe = expected["pipe"]
    assert type(pipe.model) is SDTModel and type(pipe.scheduler) is EntropyRateScheduler

    # a folder written before folders carried code: module paths in model_index.json, no .py files
    old = shutil.copytree(lm1b_folder, tmp_path / "old", ignore=shutil.ignore_patterns("*.py"))
    index = json.loads((old / "model_index.json").read_text())
    index.update(
        _class_name="BitstreamDiffusionPipeline",
        model=["bitstream_diffusion.modeling.modeling_sdt", "SDTModel"],
        scheduler=["bitstream_diffusion.schedulers.scheduling_entropy_rate", "EntropyRateScheduler"],
    )
    (old / "model_index.json").write_text(json.dumps(index))
    config = json.loads((old / "scheduler" / "scheduler_config.json").read_text())
    config["sigma_schedule"] = config.pop("noise_schedule")  # the old key name
    (old / "scheduler" / "scheduler_config.json").write_text(json.dumps(config))
    assert "model_index.json: model names bitstream_diffusion.modeling.modeling_sdt, which only loads with the " \
        "package installed" in check_remote_code(old)
    loaded = _package_run(old)
    assert torch.equal(loaded["token_ids"], expected["token_ids"])
    assert loaded["pipe"].scheduler.config.noise_schedule == "entropy"


def test_root_config_resolves_with_the_package(lm1b_folder):
    from transformers import AutoConfig

    from bitstream_diffusion.pipelines import BitstreamPipelineFolderConfig

    config = AutoConfig.from_pretrained(lm1b_folder)  # the package's class, no remote code needed
    assert type(config) is BitstreamPipelineFolderConfig and config.model_subfolder == "model"
