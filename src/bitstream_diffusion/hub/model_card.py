"""The model card (`README.md`) of every pipeline folder the package writes: converted releases and trained exports.

One builder, [`build_model_card`], makes both kinds with `huggingface_hub.ModelCard` / `ModelCardData`, so the
metadata the hub reads (license, library, task, datasets, base model, tags) is always complete and valid YAML.

Every ```python block of a card runs as written: each one names the repository once, in a line
`repo_id = "..."` (:data:`REPO_ID_VARIABLE`), so a test can point it at a local folder and execute it. A block
whose first line is :data:`NO_PACKAGE_MARKER` is meant for a reader without this package and is run that way (a
fresh process in which `bitstream_diffusion` cannot be imported, the folder served from an offline hub cache).

`library_name` is `"bitstream-diffusion"`, not `"diffusers"`: the hub picks the "Use this model" snippet from the
library, and its diffusers snippet (`DiffusionPipeline.from_pretrained(...)` with an image prompt, reading
`.images[0]`, without `trust_remote_code`) cannot run on these folders. A library the hub does not know shows no
snippet at all, which leaves the card's own, tested snippets as the instructions. (Registering the library in
huggingface.js `model-libraries.ts`, with `countDownloads: path:"model_index.json"`, would add a snippet and
download counts.)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

__all__ = [
    "ARXIV_ID",
    "CITATION",
    "LIBRARY_NAME",
    "NO_PACKAGE_MARKER",
    "REPO_ID_VARIABLE",
    "build_model_card",
    "hub_dataset_id",
]

ARXIV_ID = "2605.07013"
LIBRARY_NAME = "bitstream-diffusion"
REPO_ID_VARIABLE = "repo_id"
"""The one name each snippet gives the repository, assigned in a line `repo_id = "..."`."""
NO_PACKAGE_MARKER = "# Without the bitstream-diffusion package:"
"""First line of a snippet meant for readers who only have transformers/diffusers installed."""

CITATION = """@misc{batzolis2026bitstream,
  title         = {CoBit: Language Modeling with Bitstream Diffusion},
  author        = {Batzolis, Georgios and Girolami, Mark and Ambrogioni, Luca},
  year          = {2026},
  eprint        = {2605.07013},
  archivePrefix = {arXiv},
  primaryClass  = {cs.LG}
}"""

_TAGS = ["bitstream-diffusion", "cobit", "diffusion", "text-diffusion", "bit-diffusion"]
# short dataset names (codec layouts, official config names) -> hub dataset ids
_HUB_DATASETS = {
    "lm1b": "billion-word-benchmark/lm1b",
    "owt": "Skylion007/openwebtext",
    "openwebtext": "Skylion007/openwebtext",
}
_PAPER_GENPPL = (
    "The paper reports GenPPL 59.76 on LM1B and 27.06 on OpenWebText at 256 NFE (GPT-2 Large, 1024 samples)."
)


def hub_dataset_id(name: str | None) -> str | None:
    """The hub id of a dataset given by its short name (`"lm1b"`, `"owt"`, `"openwebtext"`); other names as given."""
    if not name:
        return None
    return _HUB_DATASETS.get(str(name).lower(), str(name))


def _generate_snippet(repo_id: str, num_inference_steps: int) -> str:
    return "\n".join([
        "```python",
        "import torch",
        "from bitstream_diffusion import BitstreamDiffusionPipeline",
        "",
        f'{REPO_ID_VARIABLE} = "{repo_id}"  # a hub repo id or a local folder',
        f"pipe = BitstreamDiffusionPipeline.from_pretrained({REPO_ID_VARIABLE})",
        f"out = pipe(batch_size=2, num_inference_steps={num_inference_steps}, "
        "generator=torch.Generator().manual_seed(0))",
        "print(out.texts[0], out.nfe)",
        "```",
    ])


def _no_package_snippet(repo_id: str) -> str:
    return "\n".join([
        "```python",
        NO_PACKAGE_MARKER,
        "from huggingface_hub import snapshot_download",
        "from transformers import AutoModel",
        "",
        f'{REPO_ID_VARIABLE} = "{repo_id}"',
        f'folder = snapshot_download({REPO_ID_VARIABLE}, allow_patterns=["model/*"])',
        'model = AutoModel.from_pretrained(f"{folder}/model", trust_remote_code=True)  # the denoiser alone',
        "print(model.config.bits_per_token, sum(p.numel() for p in model.parameters()))",
        "```",
    ])


def _layout_note(layout: str) -> list[str]:
    if layout == "lm1b":
        return [
            "Decoded LM1B samples are BERT token strings, as the official decoder leaves them and as the paper "
            "scores them: lines joined by `[SEP]`, padding shown as `[PAD]`, and 15-bit ids beyond the vocabulary "
            "wrapped into it (so rare tokens such as `[unused12]` can appear). For plain sentences drop `[PAD]` and "
            "split at `[SEP]`.",
            "",
        ]
    if layout == "owt":
        return ["Decoded OWT samples are GPT-2 text; a sample ends at the code tokenizer's `[EOSEQ]` or `[PAD]`.", ""]
    return []


def _evaluation_section(repo_id: str, cells: Sequence[tuple[float, int]], *, official: bool) -> list[str]:
    if official:
        lines = ["## Reproduce the paper's numbers", ""]
        lead = "The official evaluation cells of this model:"
    else:
        lines = ["## Evaluate", ""]
        lead = "The paper's protocol at the cells below (GenPPL under GPT-2 Large, token entropy):"
    lines += [
        '"256 NFE" in the paper is 255 noise levels and 255 denoiser calls; the per-step churn is '
        f"`gamma_paper * (NFE - 1) / (NFE - 2)` (`EntropyRateScheduler.gamma_from_paper`). {lead}",
        "",
        "| paper gamma | NFE (paper) | num_inference_steps | per-step gamma |",
        "|---|---|---|---|",
    ]
    lines += [f"| {g} | {n} | {n - 1} | {g * (n - 1) / (n - 2):.5f} |" for g, n in cells]
    specs = " ".join(f"--spec gamma={g},nfe={n}" for g, n in cells)
    lines += [
        "",
        "```bash",
        f"python -m bitstream_diffusion.evaluation.run_protocol --pipeline {repo_id} {specs} \\",
        "    --num-samples 1024 --seeds 0 1 2 3 4 5 6 7 8 9 --evaluator openai-community/gpt2-large --output-dir eval",
        "```",
        "",
    ]
    return lines


def build_model_card(
    kind: Literal["converted", "trained"],
    *,
    repo_id: str,
    layout: str,
    num_parameters: int,
    title: str | None = None,
    weights: str = "EMA weights",
    source: str | None = None,
    dataset: str | None = None,
    base_model: str | None = None,
    gamma: float | None = None,
    num_inference_steps: int = 255,
    paper_cells: Sequence[tuple[float, int]] = (),
    official_release: bool = False,
    training: Mapping[str, Any] | None = None,
    license: str = "mit",
    extra_tags: Sequence[str] = (),
):
    """Build the model card of a pipeline folder.

    Args:
        kind: `"converted"` (an official release converted with `cobit-convert`) or `"trained"` (a training export).
        repo_id: what the snippets load: the hub repo id the folder is pushed to, else the folder's name or path.
        layout: the codec layout (`"lm1b"`, `"owt"` or `"generic"`).
        num_parameters: parameters of the denoiser.
        title: the card's heading (default: the last part of `repo_id`).
        weights: which weights the folder holds, in words (e.g. `"EMA weights"`).
        source: the file or run the weights come from, for the record.
        dataset: the training data, a short name (`"lm1b"`, `"owt"`) or a hub dataset id; listed in `datasets`.
        base_model: the hub id of the model these weights were fine-tuned from, when there is one.
        gamma: the per-step churn stored in the scheduler.
        num_inference_steps: the number of steps the Generate snippet uses (255 = the paper's "256 NFE").
        paper_cells: `(paper gamma, NFE)` pairs for the evaluation table and command (none: no such section).
        official_release: the weights are one of the paper's released models, so `paper_cells` are the official
            evaluation cells ("Reproduce the paper's numbers") and the paper's GenPPL is quoted.
        training: for `"trained"`: a summary such as `{"data_recipe": ..., "global_step": ...,
            "validation_loss": ...}` (any key: value pairs are listed).
        license: the weights' license id.
        extra_tags: tags besides the package's own.

    Returns:
        a `huggingface_hub.ModelCard`; write it with `write_text_atomic(folder / "README.md", str(card))`.
    """
    from huggingface_hub import ModelCard, ModelCardData

    if kind not in ("converted", "trained"):
        raise ValueError(f"kind must be 'converted' or 'trained', got {kind!r}.")
    if not repo_id or '"' in repo_id or "\n" in repo_id:
        raise ValueError(f"repo_id must be a hub repo id or a folder path without quotes, got {repo_id!r}.")
    dataset_id = hub_dataset_id(dataset)
    data = ModelCardData(
        language="en",
        license=license,
        library_name=LIBRARY_NAME,
        pipeline_tag="text-generation",
        tags=[*_TAGS, *(t for t in extra_tags if t not in _TAGS)],
        datasets=[dataset_id] if dataset_id else None,
        base_model=base_model,
    )
    heading = title or repo_id.rstrip("/").split("/")[-1]
    paper = f"[arXiv {ARXIV_ID}](https://arxiv.org/abs/{ARXIV_ID})"
    code = "[GBATZOLIS/BitstreamDiffusion](https://github.com/GBATZOLIS/BitstreamDiffusion)"
    if kind == "converted":
        intro = f"A CoBit continuous bitstream diffusion language model ({paper}), converted from {code}."
    else:
        intro = (
            f"A CoBit continuous bitstream diffusion language model ({paper}) trained with "
            "`examples/train_bitstream_diffusion/train_bitstream_diffusion.py` of `bitstream-diffusion`."
        )
    facts = [f"* parameters: {num_parameters:,}", f"* weights: {weights}" + (f"; source: `{source}`" if source else "")]
    facts.append(f"* codec layout: `{layout}`" + (f"; training data: `{dataset_id}`" if dataset_id else ""))
    if base_model:
        facts.append(f"* fine-tuned from [`{base_model}`](https://huggingface.co/{base_model})")
    if gamma is not None:
        facts.append(
            "* default sampler: entropy-rate grid, Euler, carried self-conditioning, EDM churn "
            f"gamma={gamma:.5f} per step"
        )
    for key, value in (training or {}).items():
        facts.append(f"* {str(key).replace('_', ' ')}: {value}")
    lines = [f"# {heading}", "", intro, "", *facts, ""]
    if official_release:
        lines += [_PAPER_GENPPL, ""]
    lines += [
        "## Generate",
        "",
        "Install the package (`pip install -e .` in a clone of the bitstream-diffusion repository), then:",
        "",
        _generate_snippet(repo_id, num_inference_steps),
        "",
        *_layout_note(layout),
        "The denoiser also loads without the package, from the code stored in `model/`:",
        "",
        _no_package_snippet(repo_id),
        "",
    ]
    if paper_cells:
        lines += _evaluation_section(repo_id, paper_cells, official=official_release)
    lines += ["## Citation", "", "```bibtex", CITATION, "```", ""]
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines))
