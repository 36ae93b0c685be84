# Copyright 2026 The bitstream-diffusion authors. Licensed under the MIT License.
"""MAUVE: distance between generated and real text distributions, with a featuriser chosen like the GenPPL one."""

import datasets
import evaluate

from bitstream_diffusion.evaluation.mauve import DEFAULT_FEATURIZER, compute_mauve

_CITATION = """\
@inproceedings{pillutla2021mauve,
  title     = {MAUVE: Measuring the Gap Between Neural Text and Human Text using Divergence Frontiers},
  author    = {Pillutla, Krishna and Swayamdipta, Swabha and Zellers, Rowan and Thickstun, John and Welleck, Sean
               and Choi, Yejin and Harchaoui, Zaid},
  booktitle = {NeurIPS},
  year      = {2021}
}
@misc{batzolis2026bitstream,
  title         = {CoBit: Language Modeling with Bitstream Diffusion},
  author        = {Batzolis, Georgios and Girolami, Mark and Ambrogioni, Luca},
  year          = {2026},
  eprint        = {2605.07013},
  archivePrefix = {arXiv},
  primaryClass  = {cs.LG}
}
"""

_DESCRIPTION = """\
MAUVE compares the distribution of generated texts with that of real texts: both sets are embedded by a causal
language model (the final-layer hidden state at each text's last token), the embeddings are clustered jointly, and
the two cluster histograms are compared along a divergence frontier. The score is in (0, 1]; higher is closer.

The features are computed by `bitstream_diffusion` with transformers (any hub id or local folder, offline the
SmolLM2 folder of `bitstream_diffusion.offline.prepare_gguf_evaluator()`), and the `mauve-text` package does the
clustering and the frontier. The CoBit evaluation's settings are the featuriser GPT-2 Large, 25 buckets and a text
length equal to the sample length in tokens (128 for LM1B, 1024 for OWT).
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `str`): generated texts (empty texts are dropped).
    references (`list` of `str`): real texts. This module needs as many references as predictions (an `evaluate`
        rule); `bitstream_diffusion.evaluation.compute_mauve` accepts sets of different sizes.
    featurize_model_id (`str`): the featuriser, a hub id or a local folder. Defaults to `openai-community/gpt2-large`.
    max_text_length (`int`): tokens per text kept for the features. Defaults to 1024.
    num_buckets (`int` or `"auto"`): k-means clusters; "auto" is one per ten texts. Defaults to "auto".
    seed (`int`): seeds PCA and k-means. Defaults to 25.
    device (`str`): e.g. "cuda", "cpu". Defaults to CUDA when available.
    batch_size (`int`): texts per featuriser call. Defaults to 8.
    dtype (`str`): the featuriser's weights, "float32" (default) or "bfloat16".
Returns:
    mauve (`float`): the MAUVE score in (0, 1].
    frontier_integral (`float`): the frontier integral in [0, 1] (lower is closer).
    mauve_star, frontier_integral_star (`float`): the smoothed variants (better for small sets).
    num_buckets, num_predictions, num_references (`int`), p_hist, q_hist (`list` of `float`), and the settings.
Examples:
    >>> mauve = evaluate.load("metrics/mauve")  # doctest: +SKIP
    >>> out = mauve.compute(predictions=samples, references=real_texts, max_text_length=128)  # doctest: +SKIP
    >>> out["mauve"]  # doctest: +SKIP
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Mauve(evaluate.Metric):
    """MAUVE of generated against real texts (see the module description)."""

    def _info(self):
        return evaluate.MetricInfo(
            module_type="metric",
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("string"), "references": datasets.Value("string")}
            ),
            codebase_urls=["https://github.com/krishnap25/mauve"],
            reference_urls=["https://arxiv.org/abs/2102.01454", "https://arxiv.org/abs/2605.07013"],
        )

    def _compute(
        self,
        predictions,
        references,
        featurize_model_id=DEFAULT_FEATURIZER,
        max_text_length=1024,
        num_buckets="auto",
        seed=25,
        device=None,
        batch_size=8,
        dtype="float32",
    ):
        result = compute_mauve(
            list(predictions),
            list(references),
            featurize_model_id=featurize_model_id,
            max_text_length=max_text_length,
            num_buckets=num_buckets,
            seed=seed,
            device=device,
            batch_size=batch_size,
            dtype=dtype,
        )
        return result.to_dict()
