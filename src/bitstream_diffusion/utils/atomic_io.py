"""Atomic writes: a reader sees the old file or folder or the new one, never half of one, and a failed write loses
nothing the user had.

Every file the package writes goes through here: a temporary sibling in the same folder (same filesystem, so the
final rename is atomic), flushed and fsynced, then renamed into place. Folders are built in a staging sibling
(:func:`make_staging_dir`, ``.NAME.TAG-XXXXXXXX``) and swapped in with :func:`replace_directory`; where the kernel
can exchange two paths atomically (Linux ``renameat2(RENAME_EXCHANGE)``) the folder is present, old or new, at every
instant. Files and folders get the permissions the user's umask gives (unlike ``tempfile.mkstemp``/``mkdtemp``, which
always create them private).

A process killed while writing a folder leaves its staging sibling behind, and one killed between the two renames of
the fallback swap leaves the old folder only under ``.NAME.replaced``. :func:`recover_directory` repairs both, and
:func:`make_staging_dir` runs it before every write, so the next writer of the same folder cleans up. A staging folder
is locked (``flock``) by the process that builds it for as long as it lives, so a folder another running process is
still writing is never taken for a leftover.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import json
import logging
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

try:  # advisory locks mark the staging folders of live writers; without them every leftover counts as stale
    import fcntl
except ImportError:  # pragma: no cover - not POSIX
    fcntl = None

__all__ = [
    "atomic_write",
    "discard_staging_dir",
    "make_staging_dir",
    "recover_directory",
    "replace_directory",
    "staged_directory",
    "write_bytes_atomic",
    "write_json_atomic",
    "write_text_atomic",
]


logger = logging.getLogger(__name__)

_TAG = re.compile(r"[A-Za-z0-9_]+")
_BACKUP_SUFFIX = ".replaced"
# open file descriptors that hold the lock of this process's staging folders, by path
_HELD_LOCKS: dict[str, int] = {}


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


# -- folders ----------------------------------------------------------------------------------------------------------


def _staging_pattern(final: Path) -> re.Pattern:
    """Names of the staging siblings of `final`: `.NAME.TAG-XXXXXXXX` as `tempfile.mkdtemp` makes them (the tag has
    no dot or dash, so the staging folders of another output such as `NAME.x` never match)."""
    return re.compile(re.escape(f".{final.name}.") + r"[A-Za-z0-9_]+-[a-z0-9_]{8}")


def _lock_folder(path: Path) -> int | None:
    """Open the folder `path` and take its exclusive advisory lock without waiting.

    Returns the open descriptor (close it to release the lock), or `None` when another open descriptor, in this
    process or another, holds the lock. On a system or filesystem without `flock` the descriptor is returned
    unlocked (every folder then counts as unlocked). Raises `FileNotFoundError` when `path` is gone.
    """
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    if fcntl is None:
        return fd
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    except OSError:  # a filesystem without flock: nothing to learn from the lock
        pass
    return fd


def _names_folder(path: Path, fd: int) -> bool:
    """Whether `path` still names the folder open as `fd` (not removed or replaced since it was opened)."""
    try:
        return os.path.samestat(os.stat(path, follow_symlinks=False), os.fstat(fd))
    except FileNotFoundError:
        return False


def _release(path: Path) -> None:
    fd = _HELD_LOCKS.pop(str(path), None)
    if fd is not None:
        os.close(fd)


def _remove_leftover(path: Path, what: str) -> str:
    """Delete a leftover folder; one that cannot be deleted (permissions) is reported, not fatal to the new write."""
    try:
        shutil.rmtree(path)
    except OSError as error:
        return f"Could not remove {path}, {what}: {error}. Delete it by hand."
    return f"Removed {path}, {what}."


def recover_directory(final: str | os.PathLike) -> list[str]:
    """Repair what interrupted writes of the folder `final` left behind, and log what was done.

    * `final` missing and `.NAME.replaced` present (a kill between the two renames of the fallback swap of
      :func:`replace_directory`): the old folder is renamed back to `final`.
    * `.NAME.replaced` present next to `final` (a kill after the swap, before the old copy was deleted): deleted.
    * staging siblings `.NAME.TAG-XXXXXXXX` that no running process holds (see :func:`make_staging_dir`): deleted.

    Other files and folders, and staging folders that a running process is still writing, are never touched.
    :func:`make_staging_dir` calls this; call it yourself before deciding anything from whether `final` exists.

    Returns:
        one line per repair (each also logged as a warning); empty when there was nothing to repair.
    """
    final = Path(final)
    actions: list[str] = []
    backup = final.with_name(f".{final.name}{_BACKUP_SUFFIX}")
    if backup.is_dir() and not backup.is_symlink():
        if not os.path.lexists(final):
            os.replace(backup, final)
            actions.append(
                f"Restored {final} from {backup.name}: a previous write was interrupted while swapping the folders."
            )
        else:
            actions.append(_remove_leftover(backup, f"the old copy left by an interrupted replacement of {final}"))
    pattern = _staging_pattern(final)
    try:
        siblings = sorted(final.parent.iterdir())
    except OSError:  # no parent folder yet
        siblings = []
    for path in siblings:
        if not pattern.fullmatch(path.name) or path.is_symlink() or not path.is_dir():
            continue
        try:
            fd = _lock_folder(path)
        except FileNotFoundError:
            continue  # removed meanwhile
        if fd is None:
            continue  # a running process is writing it
        try:
            if _names_folder(path, fd):
                actions.append(_remove_leftover(path, f"a staging folder left by an interrupted write of {final}"))
        finally:
            os.close(fd)
    for line in actions:
        logger.warning(line)
    return actions


def make_staging_dir(final: str | os.PathLike, tag: str = "tmp") -> Path:
    """Create an empty hidden sibling folder of `final` (`.NAME.TAG-XXXXXXXX`) with the user's umask permissions.

    It first repairs the leftovers of interrupted writes of `final` (:func:`recover_directory`). The new folder is
    locked by this process until :func:`replace_directory` publishes it or :func:`discard_staging_dir` deletes it
    (or the process ends), so that no other writer takes it for a leftover. Build the new content there, then
    publish it with :func:`replace_directory`.

    Args:
        final: the folder the staging folder will become.
        tag: letters, digits and underscores that name the writer (e.g. `"converting"`).
    """
    if not _TAG.fullmatch(tag):
        raise ValueError(f"The staging tag must be letters, digits or underscores, got {tag!r}.")
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    for gone in [path for path in _HELD_LOCKS if not os.path.isdir(path)]:
        _release(Path(gone))  # staging folders deleted without discard_staging_dir
    recover_directory(final)
    for _ in range(100):
        staging = Path(tempfile.mkdtemp(prefix=f".{final.name}.{tag}-", dir=final.parent))
        # Until it is locked, another writer's recovery may take the new folder for a leftover: it then holds the
        # lock or has deleted the folder, and we start again with a fresh one.
        try:
            fd = _lock_folder(staging)
        except FileNotFoundError:
            continue
        if fd is None:
            continue
        try:
            if not _names_folder(staging, fd):
                os.close(fd)
                continue
            os.chmod(staging, 0o777 & ~_umask())
        except BaseException:
            os.close(fd)
            shutil.rmtree(staging, ignore_errors=True)
            raise
        _HELD_LOCKS[str(staging)] = fd
        return staging
    raise RuntimeError(f"Could not create a staging folder next to {final}: other processes keep deleting them.")


def discard_staging_dir(staging: str | os.PathLike) -> None:
    """Delete a staging folder of :func:`make_staging_dir` that will not be published, and release its lock."""
    staging = Path(staging)
    try:
        shutil.rmtree(staging, ignore_errors=True)
    finally:
        _release(staging)


@functools.cache
def _renameat2() -> Any:
    """libc's `renameat2`, or `None` (not Linux, or a libc older than glibc 2.28)."""
    if os.name != "posix":
        return None
    try:
        function = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    return function


_AT_FDCWD, _RENAME_EXCHANGE = -100, 2
_EXCHANGE_UNSUPPORTED = (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP)


def _exchange_paths(first: Path, second: Path) -> bool:
    """Swap two existing paths in one atomic step; `False` (nothing changed) where the system cannot."""
    renameat2 = _renameat2()
    if renameat2 is None:
        return False
    sys.audit("bitstream_diffusion.atomic_io.exchange", str(first), str(second))  # like os.rename's own event
    if renameat2(_AT_FDCWD, os.fsencode(first), _AT_FDCWD, os.fsencode(second), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in _EXCHANGE_UNSUPPORTED:
        return False
    raise OSError(code, os.strerror(code), str(first), None, str(second))


def replace_directory(staging: str | os.PathLike, final: str | os.PathLike) -> Path:
    """Move the finished folder `staging` to `final`, replacing an existing `final` only once the new one is complete.

    `staging` must be a sibling of `final` (same filesystem, so each rename is atomic). Where the kernel supports it
    (Linux) the two folders are exchanged in one atomic step and the old one is then deleted, so `final` names a
    complete folder, old or new, at every instant. Elsewhere an existing `final` is first renamed to
    `.NAME.replaced`, then the new folder takes its place, then the old one is deleted; if the second rename fails the
    old folder is put back, and if the process dies in between, the next :func:`make_staging_dir` (through
    :func:`recover_directory`) puts it back.
    """
    staging, final = Path(staging), Path(final)
    try:
        if not final.exists():
            os.replace(staging, final)
            return final
        old = _lock_folder(final)  # after the exchange it sits under the staging name: keep other writers off it
        try:
            if _exchange_paths(staging, final):
                shutil.rmtree(staging)
                return final
        finally:
            if old is not None:
                os.close(old)
        backup = final.with_name(f".{final.name}{_BACKUP_SUFFIX}")
        shutil.rmtree(backup, ignore_errors=True)
        os.replace(final, backup)
        try:
            os.replace(staging, final)
        except BaseException:
            if backup.exists() and not os.path.lexists(final):
                os.replace(backup, final)
            raise
        shutil.rmtree(backup, ignore_errors=True)
        return final
    finally:
        _release(staging)


@contextlib.contextmanager
def staged_directory(final: str | os.PathLike, tag: str = "tmp") -> Iterator[Path]:
    """Yield a staging folder for `final` (:func:`make_staging_dir`); on success it replaces `final`
    (:func:`replace_directory`), on an exception it is deleted and `final` is left as it was."""
    staging = make_staging_dir(final, tag)
    try:
        yield staging
        replace_directory(staging, final)
    finally:
        discard_staging_dir(staging)
