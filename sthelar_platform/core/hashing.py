"""Content hashes: the data version of files and output folders."""

from __future__ import annotations

import hashlib
from pathlib import Path

_CHUNK = 1 << 20
# Written into each output folder after it is hashed: the version a reader of the folder actually reads.
VERSION_MARKER = ".sthelar_version.json"


def sha256_file(path: str | Path) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(_CHUNK):
            h.update(block)
    return h.hexdigest()


def sha256_tree(path: str | Path) -> str:
    """Hash of a file, or of every file under a folder (relative names + contents, sorted).

    The folder's own version marker is left out, so the hash is the same before and after it is written.
    """
    path = Path(path)
    if path.is_file():
        return sha256_file(path)
    h = hashlib.sha256()
    for p in sorted(q for q in path.rglob("*") if q.is_file() and q != path / VERSION_MARKER):
        h.update(p.relative_to(path).as_posix().encode())
        h.update(b"\0")
        h.update(sha256_file(p).encode())
    return h.hexdigest()


def sha256_text(text: str) -> str:
    """Hex SHA-256 of a string."""
    return hashlib.sha256(text.encode()).hexdigest()
