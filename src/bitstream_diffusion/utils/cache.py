"""Where the package keeps what it can rebuild: one rule for every cache.

* `$BITSTREAM_DIFFUSION_CACHE`, when set, is the root of every cache of this package.
* Otherwise prepared token rows live under the `datasets` cache (`HF_DATASETS_CACHE`, itself under `HF_HOME`),
  beside the datasets they come from, and everything else (offline evaluator folders) under
  `HF_HOME/bitstream_diffusion`.

Each cache sits in its own subfolder named by its kind. Everything in these folders can be deleted at any time; it
is rebuilt on the next use.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

__all__ = ["CacheKind", "cache_dir"]

CacheKind = Literal["token_rows", "evaluators"]
_KINDS = ("token_rows", "evaluators")


def cache_dir(kind: CacheKind) -> Path:
    """The folder of one cache kind (not created here).

    Args:
        kind: `"token_rows"` (prepared training and reference rows) or `"evaluators"` (evaluator model folders built
            offline from GGUF files).
    """
    if kind not in _KINDS:
        raise ValueError(f"Unknown cache kind {kind!r}; choose one of {list(_KINDS)}.")
    root = os.environ.get("BITSTREAM_DIFFUSION_CACHE")
    if root:
        return Path(root).expanduser() / kind
    if kind == "token_rows":
        from datasets import config as datasets_config

        return Path(datasets_config.HF_DATASETS_CACHE) / "bitstream_diffusion" / kind
    from huggingface_hub import constants

    return Path(constants.HF_HOME) / "bitstream_diffusion" / kind
