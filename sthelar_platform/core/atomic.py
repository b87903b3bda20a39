"""Atomic outputs: write to a temporary sibling, then swap it into place.

A crashed or killed step leaves only a ``.tmp-*`` sibling (removed by a later run once it is older
than the configured age), never a half-written output under the final name, and never replaces a
good earlier output unless the new one is complete.

A folder is swapped over an existing one with Linux ``renameat2(RENAME_EXCHANGE)``: one system
call, so at every instant the final name holds the old or the new output. Where the filesystem
cannot exchange, a journaled three-rename swap is used (``.tmp-ready-`` marks a complete new
output, ``.tmp-old-`` the earlier one set aside) and :func:`recover_interrupted_swap` puts the
right one back if a kill lands between the renames.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
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


_READY, _OLD = f"{TMP_MARKER}ready-", f"{TMP_MARKER}old-"
_AT_FDCWD, _RENAME_EXCHANGE = -100, 2


def _exchange(a: Path, b: Path) -> bool:
    """Swap two existing paths in one system call; False where the OS or filesystem cannot."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return False
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def recover_interrupted_swap(final: str | Path) -> Path | None:
    """Put an output back under ``final`` if a kill left it between two renames; returns what was restored.

    A complete new output (``.tmp-ready-``) wins over the earlier one set aside (``.tmp-old-``).
    """
    final = Path(final)
    if final.exists() or not final.parent.is_dir():
        return None
    for marker in (_READY, _OLD):
        found = sorted(final.parent.glob(f"{glob_escape(final.name)}{marker}*"), key=lambda p: p.stat().st_mtime)
        if found:
            os.replace(found[-1], final)
            return found[-1]
    return None


def glob_escape(name: str) -> str:
    """``name`` with glob metacharacters escaped (slide ids cannot hold them, other names might)."""
    return "".join(f"[{c}]" if c in "*?[" else c for c in name)


def _newest_mtime(path: Path, newer_than: float) -> float:
    """The newest modification time in a tree (stops as soon as one is newer than ``newer_than``)."""
    newest = path.lstat().st_mtime
    if path.is_dir() and not path.is_symlink():
        for dirpath, dirnames, filenames in os.walk(path):
            for name in dirnames + filenames:
                with contextlib.suppress(FileNotFoundError):
                    newest = max(newest, os.lstat(os.path.join(dirpath, name)).st_mtime)
                if newest > newer_than:
                    return newest
    return newest


def clean_stale_siblings(final: str | Path, older_than_s: float) -> list[Path]:
    """Remove ``final``'s own ``.tmp-*`` siblings untouched for ``older_than_s`` (leftovers of killed runs).

    A sibling still being written by a concurrent run has recent files, so it is kept. An
    interrupted swap is recovered first, so the earlier good output is never among the removed.
    """
    final = Path(final)
    recover_interrupted_swap(final)
    if not final.parent.is_dir():
        return []
    cutoff = time.time() - older_than_s
    removed = []
    for p in final.parent.glob(f"{glob_escape(final.name)}{TMP_MARKER}*"):
        try:
            if _newest_mtime(p, cutoff) > cutoff:
                continue
            shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
        except FileNotFoundError:
            continue  # removed by another run meanwhile
        removed.append(p)
    return removed


@contextlib.contextmanager
def atomic_dir(final: str | Path, stale_after_s: float | None = None) -> Iterator[Path]:
    """Yield a fresh temporary directory that replaces ``final`` only on success.

    With ``stale_after_s``, this output's own stale ``.tmp-*`` siblings (killed earlier runs) are
    removed first.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    if stale_after_s is not None:
        clean_stale_siblings(final, stale_after_s)
    else:
        recover_interrupted_swap(final)
    tmp = _tmp_sibling(final)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _replace_dir(tmp, final)


def _replace_dir(tmp: Path, final: Path) -> None:
    if not final.exists():
        os.replace(tmp, final)
        return
    if _exchange(tmp, final):  # tmp now holds the earlier output
        shutil.rmtree(tmp, ignore_errors=True)
        return
    # No exchange here: journal the swap so recover_interrupted_swap can finish or undo it.
    token = uuid.uuid4().hex[:8]
    ready, old = final.with_name(f"{final.name}{_READY}{token}"), final.with_name(f"{final.name}{_OLD}{token}")
    os.replace(tmp, ready)
    os.replace(final, old)
    try:
        os.replace(ready, final)
    except BaseException:
        os.replace(old, final)
        raise
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


def link_or_copy(src: str | Path, dst: str | Path) -> str:
    """Hard-link ``src`` at ``dst`` (one stored copy); copy only across filesystems. Returns which it did."""
    try:
        os.link(src, dst)
        return "hard link"
    except OSError:
        shutil.copyfile(src, dst)
        return "copy (another filesystem)"


def write_text_atomic(final: str | Path, text: str) -> None:
    """Replace ``final`` with ``text`` atomically."""
    with atomic_file(final) as tmp:
        tmp.write_text(text)


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
