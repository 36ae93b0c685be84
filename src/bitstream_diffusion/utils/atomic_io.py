"""Writing folders so that a reader never sees a half-written one and nothing a user had is lost on failure."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

__all__ = ["replace_directory"]


def replace_directory(staging: str | os.PathLike, final: str | os.PathLike) -> Path:
    """Move the finished folder `staging` to `final`, replacing an existing `final` only once the new one is complete.

    `staging` must be a sibling of `final` (same filesystem, so each rename is atomic). An existing `final` is first
    renamed aside, then the new folder takes its place, then the old one is deleted; if the second rename fails, the
    old folder is put back.
    """
    staging, final = Path(staging), Path(final)
    if not final.exists():
        os.replace(staging, final)
        return final
    backup = final.with_name(f".{final.name}.replaced")
    shutil.rmtree(backup, ignore_errors=True)
    os.replace(final, backup)
    try:
        os.replace(staging, final)
    except BaseException:
        os.replace(backup, final)
        raise
    shutil.rmtree(backup, ignore_errors=True)
    return final
