"""Kill matrix of the conversion: the process dies at every filesystem step, then the conversion runs again.

The steps are found, not listed: a Python audit hook sees every filesystem change the conversion makes under the
test folder (file opens for writing, renames, the atomic exchange, mkdir, chmod, deletes, `shutil.rmtree`, temporary
files and folders). A run is stopped at its k-th change in one of two ways:

* "kill": the k-th change and every later one raise, so nothing the dying process would still do (its `finally`
  blocks included) reaches the disk: the disk is left exactly as a SIGKILL at that instant would leave it;
* "interrupt": only the k-th change raises `KeyboardInterrupt`; clean-up code runs as it would after Ctrl-C.

After each stop the output folder must be the complete old folder or the complete new one (or, without an atomic
exchange, absent with the complete old one under `.out.replaced`, which the next run puts back), and a second run
must succeed, leave no staging leftovers and write exactly the folder an uninterrupted conversion writes. Two slow
tests do the same with a real `os._exit(9)` in a separate process at the two critical instants of the swap.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch

from bitstream_diffusion import BitstreamDiffusionPipeline
from bitstream_diffusion.conversion.convert_cobit_checkpoint import convert_cobit_checkpoint
from bitstream_diffusion.utils import atomic_io

_EXCHANGE_EVENT = "bitstream_diffusion.atomic_io.exchange"
_MUTATIONS = {
    "open", "os.rename", "os.mkdir", "os.remove", "os.rmdir", "os.chmod", "os.truncate", "os.utime", "os.link",
    "os.symlink", "shutil.rmtree", "shutil.copyfile", "shutil.move", "tempfile.mkdtemp", "tempfile.mkstemp",
    _EXCHANGE_EVENT,
}
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND


class _Killed(BaseException):
    """The simulated death of the process (a BaseException: no `except Exception` swallows it)."""


def _fd_path(fd: int) -> str | None:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return None


def _event_paths(event: str, args: tuple) -> list[str]:
    """The absolute paths a filesystem audit event changes (empty when it changes nothing, e.g. a read)."""
    if event == "open":
        path, mode, flags = args
        writes = any(c in mode for c in "wax+") if mode is not None else bool(flags & _WRITE_FLAGS)
        paths = [path] if writes else []
    elif event in ("os.rename", "os.link", "os.symlink", "shutil.copyfile", "shutil.move", _EXCHANGE_EVENT):
        paths = [args[1]]
        if event in ("os.rename", "os.link") and args[3] is not None:
            paths = [os.path.join(_fd_path(args[3]) or "", args[1])]
    elif event in ("os.remove", "os.rmdir", "shutil.rmtree"):
        path, dir_fd = args
        paths = [os.path.join(_fd_path(dir_fd) or "", path) if dir_fd is not None else path]
    elif event == "os.mkdir":
        path, _, dir_fd = args
        paths = [os.path.join(_fd_path(dir_fd) or "", path) if dir_fd is not None else path]
    else:  # chmod, truncate, utime (a path or an open descriptor), mkdtemp, mkstemp
        paths = [args[0]]
    resolved = []
    for path in paths:
        if isinstance(path, int):
            path = _fd_path(path)
        if isinstance(path, (str, bytes, os.PathLike)):
            resolved.append(os.path.realpath(os.fsdecode(path)))
    return resolved


class _FilesystemSteps:
    """Counts the filesystem changes under `root` and stops the run at the k-th one. One instance per process:
    audit hooks cannot be removed, so it is installed once and armed per run."""

    def __init__(self):
        self.root: str | None = None
        self.steps: list[str] = []
        self.stop_at: int | None = None
        self.kind = "kill"
        self.dead = False

    def arm(self, root, stop_at: int | None = None, kind: str = "kill") -> None:
        self.root, self.steps, self.stop_at, self.kind, self.dead = os.path.realpath(root), [], stop_at, kind, False

    def disarm(self) -> None:
        self.root = None

    def __call__(self, event: str, args: tuple) -> None:
        if self.root is None or event not in _MUTATIONS:
            return
        paths = [p for p in _event_paths(event, args) if p == self.root or p.startswith(self.root + os.sep)]
        if not paths:
            return
        if self.dead:
            raise _Killed(f"dead since step {self.stop_at}; {event} {paths[0]} does not happen")
        self.steps.append(f"{event} {os.path.relpath(paths[0], self.root)}")
        if len(self.steps) == self.stop_at:
            if self.kind == "kill":
                self.dead = True
                raise _Killed(f"killed at step {self.stop_at}: {self.steps[-1]}")
            raise KeyboardInterrupt(f"interrupted at step {self.stop_at}: {self.steps[-1]}")


_STEPS = _FilesystemSteps()
sys.addaudithook(_STEPS)


def _digest(folder) -> dict[str, str] | None:
    """`{relative path: sha256}` of every file, or `None` when the folder does not exist."""
    if not folder.is_dir():
        return None
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def convert(golden_dir, entropy_tables_dir, bert_tokenizer):
    release = golden_dir / "model" / "lm1b_tiny" / "release.pt"

    def run(out, **kwargs):
        return convert_cobit_checkpoint(
            release, entropy_tables_dir / "lm1b", bert_tokenizer, out, num_attention_heads=2, overwrite=True, **kwargs
        )

    return run


@pytest.fixture(scope="module")
def references(convert, tmp_path_factory):
    """An uninterrupted conversion (the new folder) and a different one (the old folder a rerun replaces)."""
    root = tmp_path_factory.mktemp("references")
    new, old = root / "new" / "out", root / "old" / "out"
    convert(new)
    convert(old, gamma=0.1)
    assert _digest(new) != _digest(old)
    return new, old


def _run_matrix(convert, references, work_root, *, replace: bool, exchange: bool, kind: str, monkeypatch, caplog):
    new, old = references
    new_digest, old_digest = _digest(new), _digest(old)
    if not exchange:
        monkeypatch.setattr(atomic_io, "_exchange_paths", lambda first, second: False, raising=False)
    held_locks = getattr(atomic_io, "_HELD_LOCKS", {})

    def fresh_work(name):
        work = work_root / name
        work.mkdir()
        if replace:
            shutil.copytree(old, work / "out")
        return work

    counting = fresh_work("count")
    _STEPS.arm(counting)
    try:
        convert(counting / "out")
    finally:
        _STEPS.disarm()
    steps = list(_STEPS.steps)
    assert _digest(counting / "out") == new_digest
    if replace:
        assert any(s.startswith(_EXCHANGE_EVENT if exchange else "os.rename out") for s in steps), steps

    failures = []
    for k in range(1, len(steps) + 1):
        work = fresh_work(f"k{k}")
        _STEPS.arm(work, stop_at=k, kind=kind)
        try:
            convert(work / "out")
        except (_Killed, KeyboardInterrupt):
            pass
        else:
            failures.append(f"step {k} ({steps[k - 1]}): the run was not stopped")
        finally:
            _STEPS.disarm()
        held_locks.clear()  # a dead process holds no locks (the interrupted one released its own)

        # the instant of the stop: the old folder or the new one, complete
        state = _digest(work / "out")
        allowed = [new_digest] + ([old_digest] if replace else [])
        if state not in allowed and state is not None:
            failures.append(f"step {k} ({steps[k - 1]}): the output folder is half-written")
        if state is None:
            lost = replace and not (not exchange and _digest(work / ".out.replaced") == old_digest)
            if lost:
                failures.append(f"step {k} ({steps[k - 1]}): the old folder is gone")
        leftovers = sorted(p.name for p in work.iterdir() if p.name != "out")

        # the next run repairs, converts, and leaves nothing behind
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="bitstream_diffusion.utils.atomic_io"):
            convert(work / "out")
        if sorted(p.name for p in work.iterdir()) != ["out"]:
            failures.append(f"step {k} ({steps[k - 1]}): leftovers after the rerun: {list(work.iterdir())}")
        if _digest(work / "out") != new_digest:
            failures.append(f"step {k} ({steps[k - 1]}): the rerun's folder differs from an uninterrupted one")
        for name in leftovers:
            if name not in caplog.text:
                failures.append(f"step {k} ({steps[k - 1]}): the rerun did not say it repaired {name}")
        if held_locks:
            failures.append(f"step {k} ({steps[k - 1]}): staging locks still held: {held_locks}")
        shutil.rmtree(work)
    assert not failures, "\n".join(failures)
    return steps


@pytest.mark.parametrize("kind", ["kill", "interrupt"])
@pytest.mark.parametrize(
    "replace,exchange", [(False, True), (True, True), (True, False)], ids=["new-folder", "replace", "replace-2-renames"]
)
def test_conversion_kill_matrix(convert, references, tmp_path, monkeypatch, caplog, replace, exchange, kind):
    if exchange:
        renameat2 = getattr(atomic_io, "_renameat2", lambda: None)
        assert renameat2() is not None, "Linux with glibc >= 2.28 exchanges folders atomically"
    steps = _run_matrix(convert, references, tmp_path, replace=replace, exchange=exchange, kind=kind,
                        monkeypatch=monkeypatch, caplog=caplog)
    print(f"{len(steps)} filesystem steps, each stopped ({kind}) and recovered")


def test_rerun_result_loads_and_matches_an_uninterrupted_conversion(references, golden_dir):
    new, _ = references
    pipe = BitstreamDiffusionPipeline.from_pretrained(new)
    expected = torch.load(golden_dir / "model" / "lm1b_tiny" / "release.pt", weights_only=True)["model"]
    state = pipe.model.state_dict()
    assert sorted(state) == sorted(expected)
    for key, tensor in expected.items():
        assert torch.equal(state[key], tensor), key


# ------------------------------------------------------------------------------------------------ a real kill -9
_KILLER = """
import os, sys
from pathlib import Path
mode, out, release, tables = sys.argv[1:5]
root = os.path.realpath(os.path.dirname(out))
final, armed = os.path.realpath(out), [False]

def hook(event, args):
    if mode == "after-exchange":
        if event == "bitstream_diffusion.atomic_io.exchange":
            armed[0] = True
        elif armed[0] and event == "shutil.rmtree":
            os._exit(9)  # the folders are swapped; the old one was not deleted yet
    elif mode == "between-renames" and event == "os.rename":
        source, target = os.path.realpath(os.fsdecode(args[0])), os.path.realpath(os.fsdecode(args[1]))
        if target == final and os.path.basename(source).startswith(".out.converting-"):
            os._exit(9)  # the old folder is already renamed aside; the new one is not in place yet

import bitstream_diffusion.utils.atomic_io as atomic_io
from bitstream_diffusion.conversion.convert_cobit_checkpoint import convert_cobit_checkpoint
from bitstream_diffusion.offline.assets import load_bert_uncased_tokenizer

if mode == "between-renames":
    atomic_io._exchange_paths = lambda first, second: False
tokenizer = load_bert_uncased_tokenizer()
sys.addaudithook(hook)
convert_cobit_checkpoint(release, tables, tokenizer, out, num_attention_heads=2, overwrite=True)
sys.exit(3)  # not reached
"""


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["after-exchange", "between-renames"])
def test_a_real_kill_during_the_swap_is_recovered(mode, convert, references, tmp_path, golden_dir,
                                                  entropy_tables_dir, caplog):
    new, old = references
    out = tmp_path / "out"
    shutil.copytree(old, out)
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(_KILLER), mode, str(out),
         str(golden_dir / "model" / "lm1b_tiny" / "release.pt"), str(entropy_tables_dir / "lm1b")],
        capture_output=True, text=True, timeout=600, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    assert result.returncode == 9, result.stderr[-3000:]
    leftovers = sorted(p.name for p in tmp_path.iterdir() if p.name != "out")
    if mode == "after-exchange":  # the new folder is in place; the old one sits under the staging name
        assert _digest(out) == _digest(new)
        assert len(leftovers) == 1 and leftovers[0].startswith(".out.converting-")
        assert _digest(tmp_path / leftovers[0]) == _digest(old)
    else:  # the output is missing; the old folder waits under .out.replaced, the new one under the staging name
        assert not out.exists() and len(leftovers) == 2 and ".out.replaced" in leftovers
        assert _digest(tmp_path / ".out.replaced") == _digest(old)
        staging = next(name for name in leftovers if name.startswith(".out.converting-"))
        assert _digest(tmp_path / staging) == _digest(new)
    with caplog.at_level(logging.WARNING, logger="bitstream_diffusion.utils.atomic_io"):
        convert(out)
    assert all(name in caplog.text for name in leftovers), caplog.text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"] and _digest(out) == _digest(new)
    index = json.loads((out / "model_index.json").read_text())
    assert index["_class_name"] == ["pipeline_bitstream_diffusion", "BitstreamDiffusionPipeline"]
