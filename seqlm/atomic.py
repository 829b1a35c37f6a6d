"""Writing files and directories whole or not at all: the one implementation every writer
uses (checkpoints, run files, prepared corpora).

A file is written to a temporary sibling, fsynced and renamed over its target. A directory is
filled in a temporary sibling ``.<name>.tmp-<random>``; then the old one (if any) is renamed to
``.<name>.old``, the new one renamed into place, and the old one deleted. A crash between the
two renames leaves ``.<name>.old``, which readers may fall back on (:func:`old_sibling`).
"""

from __future__ import annotations

import os
import secrets
import shutil
from pathlib import Path


def write_file(path: Path, data: bytes | str) -> None:
    """``path`` holds ``data`` whole, or keeps its previous content.

    Raises:
        OSError: the file cannot be written (the temporary file is removed).
    """
    tmp = path.with_name(f".{path.name}.tmp-{secrets.token_hex(4)}")
    try:
        write_durably(tmp, data)
        os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)
        raise


def write_durably(path: Path, data: bytes | str) -> None:
    """Writes ``path`` and fsyncs it (for files in a temporary directory about to be swapped)."""
    with open(path, "wb") as handle:
        handle.write(data.encode("utf-8") if isinstance(data, str) else data)
        handle.flush()
        os.fsync(handle.fileno())


def temp_sibling(target: Path) -> Path:
    """A new temporary directory beside ``target``, after removing ones a killed writer left.

    Raises:
        OSError: it cannot be created.
    """
    for stale in target.parent.glob(f".{target.name}.tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = target.parent / f".{target.name}.tmp-{secrets.token_hex(4)}"
    tmp.mkdir(parents=True)
    return tmp


def old_sibling(target: Path) -> Path:
    return target.parent / f".{target.name}.old"


def swap_into_place(tmp: Path, target: Path) -> None:
    """Makes the finished directory ``tmp`` the new ``target`` (see the module docstring)."""
    fsync_dir(tmp)
    old = old_sibling(target)
    if old.exists() and target.exists():
        shutil.rmtree(old)  # a leftover from an interrupted swap; target is the newer one
    if target.exists():
        os.replace(target, old)
    os.replace(tmp, target)
    fsync_dir(target.parent)
    shutil.rmtree(old, ignore_errors=True)


def write_directory(target: Path, files: dict[str, bytes | str]) -> None:
    """``target`` becomes a directory holding exactly ``files`` (name: content), whole or not
    at all (see the module docstring).

    Raises:
        OSError: it cannot be written; a previous ``target`` is left as it was.
    """
    tmp = None
    try:
        tmp = temp_sibling(target)
        for name, data in files.items():
            write_durably(tmp / name, data)
        swap_into_place(tmp, target)
    except OSError:
        if tmp is not None:
            abandon(tmp, target)
        raise


def abandon(tmp: Path, target: Path) -> None:
    """After a failed write: removes ``tmp`` and puts a moved-aside ``target`` back."""
    shutil.rmtree(tmp, ignore_errors=True)
    old = old_sibling(target)
    if not target.exists() and old.exists():
        os.replace(old, target)


def fsync_dir(path: Path) -> None:
    """Make renames and new entries in ``path`` durable (a no-op where unsupported)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems cannot fsync a directory; the data files are already synced
    finally:
        os.close(fd)
