"""Atomic outputs: write to a temporary sibling, then rename into place.

A crashed or killed step leaves only a ``.tmp-*`` sibling (ignored and cleaned
later), never a half-written output under the final name, and never replaces a
good earlier output unless the new one is complete.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import random
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

TMP_MARKER = ".tmp-"


def _tmp_sibling(final: Path) -> Path:
    return final.with_name(f"{final.name}{TMP_MARKER}{os.getpid()}-{uuid.uuid4().hex[:8]}")


@contextlib.contextmanager
def atomic_dir(final: str | Path) -> Iterator[Path]:
    """Yield a fresh temporary directory that replaces ``final`` only on success."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_sibling(final)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _replace_dir(tmp, final)


def _replace_dir(tmp: Path, final: Path) -> None:
    # A directory cannot be swapped atomically over a non-empty one; move the old one
    # aside first so that at every instant either the old or the new output is complete.
    old = None
    if final.exists():
        old = final.with_name(f"{final.name}{TMP_MARKER}old-{uuid.uuid4().hex[:8]}")
        os.replace(final, old)
    try:
        os.replace(tmp, final)
    except BaseException:
        if old is not None:
            os.replace(old, final)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def atomic_file(final: str | Path) -> Iterator[Path]:
    """Yield a temporary path in the same directory; rename it over ``final`` on success."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_sibling(final)
    try:
        yield tmp
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            tmp.unlink() if tmp.is_file() else shutil.rmtree(tmp, ignore_errors=True)


def write_text_atomic(final: str | Path, text: str) -> None:
    """Replace ``final`` with ``text`` atomically."""
    with atomic_file(final) as tmp:
        tmp.write_text(text)


def clean_stale_tmp(directory: str | Path) -> list[Path]:
    """Remove leftovers of killed runs (``*.tmp-*``) under ``directory``; return what was removed."""
    directory = Path(directory)
    removed = []
    if not directory.exists():
        return removed
    for p in directory.rglob(f"*{TMP_MARKER}*"):
        if p.exists():
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
            removed.append(p)
    return removed


@contextlib.contextmanager
def file_lock(lock_path: str | Path, timeout_s: float) -> Iterator[bool]:
    """An exclusive OS lock on ``lock_path`` (flock), polled until ``timeout_s``; yields whether it was got.

    For read-modify-write files several processes share (lineage.duckdb, catalog.yaml): the lock file
    itself holds nothing, so a crashed holder never leaves a stale lock (the OS drops it).
    """
    deadline = time.monotonic() + timeout_s
    with open(lock_path, "a+") as fh:
        while True:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    yield False
                    return
                time.sleep(random.uniform(0.01, 0.05))
        try:
            yield True
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
