"""Folder writes: leftovers of interrupted writes are repaired by the next writer, live writers are left alone, and
published folders follow the user's umask."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap

import pytest

from bitstream_diffusion.utils import atomic_io
from bitstream_diffusion.utils.atomic_io import (
    discard_staging_dir,
    make_staging_dir,
    recover_directory,
    replace_directory,
    staged_directory,
)


def _tree(folder):
    return {str(p.relative_to(folder)): p.read_text() for p in sorted(folder.rglob("*")) if p.is_file()}


def _write(folder, **files):
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (folder / name).write_text(text)
    return folder


def test_a_lost_folder_is_restored_and_stale_staging_folders_removed(tmp_path, caplog):
    final = tmp_path / "out"
    _write(tmp_path / ".out.replaced", a="old")  # a kill between the two renames of the fallback swap
    _write(tmp_path / ".out.converting-abcd1234", half="written")  # a killed writer's staging folder
    _write(tmp_path / ".out.tmp-zz_09xyq", half="written")
    keep = [_write(tmp_path / name, x="user") for name in (".out.x.tmp-abcd1234", ".outer.tmp-abcd1234", "out2")]
    with caplog.at_level(logging.WARNING, logger="bitstream_diffusion.utils.atomic_io"):
        actions = recover_directory(final)
    assert _tree(final) == {"a": "old"}
    assert len(actions) == 3 and "Restored" in actions[0] and all(a in caplog.text for a in actions)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["out", *(k.name for k in keep)])
    assert recover_directory(final) == []


def test_an_old_copy_next_to_a_complete_folder_is_removed(tmp_path):
    final = _write(tmp_path / "out", a="new")
    _write(tmp_path / ".out.replaced", a="old")
    assert "Removed" in recover_directory(final)[0]
    assert _tree(final) == {"a": "new"} and sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_a_staging_folder_of_a_running_writer_is_kept(tmp_path):
    final = tmp_path / "out"
    mine = make_staging_dir(final, "converting")  # held by this process
    script = textwrap.dedent(f"""
        import sys, time
        from bitstream_diffusion.utils.atomic_io import make_staging_dir
        print(make_staging_dir({str(final)!r}, "tmp"), flush=True)
        sys.stdin.readline()
    """)
    writer = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        theirs = writer.stdout.readline().strip()
        assert theirs.startswith(str(tmp_path / ".out.tmp-")) and mine.is_dir(), "the other writer kept ours"
        assert recover_directory(final) == [] and os.path.isdir(theirs) and mine.is_dir()
    finally:
        writer.communicate("\n", timeout=60)
    assert writer.returncode == 0
    actions = recover_directory(final)  # the other process has ended: its folder is a leftover now
    assert actions == [f"Removed {theirs}, a staging folder left by an interrupted write of {final}."]
    assert mine.is_dir()
    discard_staging_dir(mine)
    assert list(tmp_path.iterdir()) == [] and atomic_io._HELD_LOCKS == {}


@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2-exchange", "two-renames"])
def test_replace_directory_swaps_and_cleans_up(tmp_path, monkeypatch, exchange):
    if not exchange:
        monkeypatch.setattr(atomic_io, "_exchange_paths", lambda first, second: False)
    else:
        assert atomic_io._renameat2() is not None, "Linux with glibc >= 2.28 provides renameat2"
    final = _write(tmp_path / "out", a="old", b="old")
    with staged_directory(final, "converting") as staging:
        _write(staging, a="new")
    assert _tree(final) == {"a": "new"} and sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert atomic_io._HELD_LOCKS == {}
    staging = make_staging_dir(final)
    _write(staging, c="newer")
    replace_directory(staging, final)
    assert _tree(final) == {"c": "newer"} and sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_a_failed_write_leaves_the_old_folder(tmp_path):
    final = _write(tmp_path / "out", a="old")
    with pytest.raises(KeyboardInterrupt):
        with staged_directory(final) as staging:
            _write(staging, a="new")
            raise KeyboardInterrupt
    assert _tree(final) == {"a": "old"} and sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_folders_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        with staged_directory(tmp_path / "out") as staging:
            _write(staging / "sub", a="x")
        mode = (tmp_path / "out").stat().st_mode & 0o777
    finally:
        os.umask(old)
    assert mode == 0o755


def test_staging_tags_cannot_reach_other_outputs(tmp_path):
    with pytest.raises(ValueError, match="letters, digits or underscores"):
        make_staging_dir(tmp_path / "out", "my.tag")
