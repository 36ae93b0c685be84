# Copyright 2026 The bitstream-diffusion authors. Licensed under the MIT License.
"""GenPPL: generative perplexity of generated text under an external causal LM (CoBit's scoring rules).

The scoring code lives in the `bitstream-diffusion` package; this module is its `evaluate` front end and needs the
package installed (see requirements.txt).
"""

import datasets
import evaluate

try:  # indented, so that evaluate's loader leaves the check (and its message) to this module
    from bitstream_diffusion.evaluation.gen_ppl import DEFAULT_EVALUATOR, compute_gen_ppl
except ImportError as error:
    if not (error.name or "").startswith("bitstream_diffusion"):
        raise
    raise ImportError(
        "The gen_ppl metric needs the bitstream-diffusion package, which holds its scoring code, and it is not "
        "installed: run `pip install -e .` in a clone of the bitstream-diffusion repository (requirements.txt next "
        "to this module lists the rest)."
    ) from error

_CITATION = """\
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
Generative perplexity (GenPPL) scores model samples with an external causal language model: the lower, the more
likely the evaluator finds the text. The rules are those of the official CoBit evaluation
(GBATZOLIS/BitstreamDiffusion, `evaluation/external_perplexity.py`), which produced the paper's numbers:

* evaluator `openai-community/gpt2-large` in bfloat16 (any local folder or hub id can be used instead);
* each text is tokenised without special tokens (no BOS) and its first token is never scored;
* empty texts and one-token texts are skipped;
* texts longer than the evaluator's context (`min(max_position_embeddings, tokenizer.model_max_length)`, 1024 for
  GPT-2) are scored in windows of that length with stride equal to it; a final partial window is right-aligned and
  scores only new targets;
* GenPPL = exp(total NLL / total scored tokens), weighted by tokens over all texts.

Windows of several texts are batched with right padding and an attention mask; the result equals one-at-a-time
scoring up to float rounding. With `dtype="float32"` it reproduces the official scorer to ~1e-7 (relative).
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `str`): the generated texts (empty strings are allowed and skipped).
    model_id (`str`): evaluator, a hub id or a local model folder. Defaults to `openai-community/gpt2-large`.
    batch_size (`int`): windows per evaluator call. Defaults to 8.
    dtype (`str`): "bfloat16" (the paper's setting) or "float32" (exact); "float16" is accepted too.
    device (`str`): e.g. "cuda", "cuda:1", "cpu". Defaults to CUDA when available.
    max_seq_len (`int`, optional): upper bound on the evaluator window (the model's own limit applies anyway).
    stride (`int`, optional): distance between window ends; defaults to the window length (the paper's setting).
    attn_implementation (`str`, optional): passed to `from_pretrained`. Defaults to "sdpa", as the official code.
    revision (`str`, optional), trust_remote_code (`bool`): passed to `from_pretrained`.
Returns:
    gen_ppl (`float`): exp(total NLL / total scored tokens); `inf` when nothing could be scored.
    bits_per_token (`float`): total NLL / total scored tokens / ln 2.
    nll_per_token (`float`): total NLL / total scored tokens, in nats.
    total_nll (`float`), total_scored_tokens (`int`): the totals.
    nll_sums (`list` of `float`): per text, the summed NLL in nats (0.0 if skipped).
    num_scored_tokens (`list` of `int`): per text, how many tokens were scored (0 if skipped).
    num_tokens (`list` of `int`): per text, its length in evaluator tokens.
    skipped (`list` of `bool`): per text, whether it was left out (empty or a single token).
    perplexities (`list` of `float`): per text, exp(nll_sum / num_scored), `inf` if skipped.
    model_id, dtype, max_seq_len, stride: the settings used.
Examples:
    >>> gen_ppl = evaluate.load("metrics/gen_ppl")  # doctest: +SKIP
    >>> texts = ["The cat sat on the mat.", ""]
    >>> out = gen_ppl.compute(predictions=texts, model_id="gpt2", dtype="float32")  # doctest: +SKIP
    >>> out["skipped"]  # doctest: +SKIP
    [False, True]
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class GenPPL(evaluate.Metric):
    """Generative perplexity with the official CoBit scoring rules (see the module description)."""

    def _info(self):
        return evaluate.MetricInfo(
            module_type="metric",
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Value("string")}),
            codebase_urls=["https://github.com/GBATZOLIS/BitstreamDiffusion"],
            reference_urls=["https://arxiv.org/abs/2605.07013"],
        )

    def add_batch(self, *, predictions=None, references=None, **kwargs):
        """Add a batch of generated texts; `predictions` must be a list of strings."""
        if isinstance(predictions, str):  # evaluate would store its characters as separate predictions
            raise TypeError(
                "`predictions` must be a list of strings, not a single string (it would be scored character by "
                "character). Pass predictions=[text]."
            )
        if predictions is not None and not all(isinstance(p, str) for p in predictions):
            kinds = sorted({type(p).__name__ for p in predictions if not isinstance(p, str)})
            raise TypeError(f"`predictions` must be a list of strings; found items of type {kinds}.")
        return super().add_batch(predictions=predictions, references=references, **kwargs)

    def _compute(
        self,
        predictions,
        model_id=DEFAULT_EVALUATOR,
        batch_size=8,
        dtype="bfloat16",
        device=None,
        max_seq_len=None,
        stride=None,
        attn_implementation="sdpa",
        revision=None,
        trust_remote_code=False,
    ):
        result = compute_gen_ppl(
            list(predictions),
            model_id=model_id,
            batch_size=batch_size,
            dtype=dtype,
            device=device,
            max_seq_len=max_seq_len,
            stride=stride,
            attn_implementation=attn_implementation,
            revision=revision,
            trust_remote_code=trust_remote_code,
        )
        return result.to_dict()
