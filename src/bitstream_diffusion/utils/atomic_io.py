"""Atomic writes: a reader sees the old file or folder or the new one, never half of one, and a failed write loses
nothing the user had.

Every file the package writes goes through here: a temporary sibling in the same folder (same filesystem, so the
final rename is atomic), flushed and fsynced, then renamed into place. Folders are built in a staging sibling and
swapped in with :func:`replace_directory`. Files and folders get the permissions the user's umask gives (unlike
``tempfile.mkstemp``/``mkdtemp``, which always create them private).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = [
    "atomic_write",
    "make_staging_dir",
    "replace_directory",
    "staged_directory",
    "write_bytes_atomic",
    "write_json_atomic",
    "write_text_atomic",
]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w", encoding: str | None = "utf-8") -> Iterator[Any]:
    """Open a temporary sibling of `path` for writing; on success it is fsynced and renamed to `path`.

    On an exception the temporary file is removed and `path` keeps its old content (or stays absent).

    Args:
        path: the final file.
        mode: `"w"` (text) or `"wb"` (bytes).
        encoding: text encoding (ignored in binary mode).
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_write mode must be 'w' or 'wb', got {mode!r}.")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~_umask())
        with os.fdopen(handle, mode, encoding=None if "b" in mode else encoding) as file:
            yield file
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write `text` (UTF-8) to `path` atomically and return `path`."""
    with atomic_write(path, "w") as file:
        file.write(text)
    return Path(path)


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> Path:
    """Write `data` to `path` atomically and return `path`."""
    with atomic_write(path, "wb") as file:
        file.write(data)
    return Path(path)


def write_json_atomic(path: str | os.PathLike, payload: Any, *, indent: int | None = 2) -> Path:
    """Write `payload` as JSON (a trailing newline; non-JSON values through `str`) to `path` atomically."""
    return write_text_atomic(path, json.dumps(payload, indent=indent, default=str) + "\n")


def make_staging_dir(final: str | os.PathLike, tag: str = "tmp") -> Path:
    """Create an empty hidden sibling folder of `final` (`.NAME.TAG-XXXX`) with the user's umask permissions.

    Build the new content there, then publish it with :func:`replace_directory`.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{final.name}.{tag}-", dir=final.parent))
    os.chmod(staging, 0o777 & ~_umask())
    return staging


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


@contextlib.contextmanager
def staged_directory(final: str | os.PathLike, tag: str = "tmp") -> Iterator[Path]:
    """Yield a staging folder for `final`; on success it replaces `final` (:func:`replace_directory`), on an
    exception it is deleted and `final` is left as it was."""
    staging = make_staging_dir(final, tag)
    try:
        yield staging
        replace_directory(staging, final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
