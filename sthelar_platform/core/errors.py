"""Errors that tell a user which file is wrong, what is wrong with it and how to fix it."""

from __future__ import annotations

from pathlib import Path


class InputError(ValueError):
    """Bad user input: names the file, the problem and the fix.

    Every validation in the platform raises this (never a bare traceback from a
    third-party reader), so a failed Dagster step shows one readable sentence.
    """

    def __init__(self, file: str | Path, problem: str, fix: str) -> None:
        self.file = str(file)
        # one line, whatever a wrapped third-party message held (YAML and torch errors span several)
        self.problem = " ".join(str(problem).split())
        self.fix = " ".join(str(fix).split())
        where = f"{self.file}: " if self.file else ""
        super().__init__(f"{where}{self.problem}. Fix: {self.fix}")


class ConfigError(InputError):
    """A config file that is wrong: names the file and the dotted key (``registration.match_radius_um``)."""

    def __init__(self, file: str | Path, key: str | None, problem: str, fix: str) -> None:
        self.key = key
        named = key is None or f"`{key}`" in problem
        super().__init__(file, problem if named else f"`{key}`: {problem}", fix)


def require_stage_output(path: Path, stage: str) -> Path:
    """``path`` if it exists; otherwise the error every stage gives for a missing upstream output."""
    if not path.exists():
        raise InputError(path, f"missing output of the {stage} stage", f"materialize {stage} for this slide first")
    return path


def require_readable_parquet(path: Path, stage: str) -> Path:
    """``path`` if its parquet footer reads (a truncated or overwritten stage output is caught here, by name)."""
    import pyarrow.parquet as pq

    require_stage_output(path, stage)
    try:
        pq.ParquetFile(path).metadata  # noqa: B018 - reading the footer is the check
    except Exception as exc:  # noqa: BLE001 - pyarrow raises ArrowInvalid, OSError, ... for damaged files
        raise InputError(path, f"not a readable parquet file ({type(exc).__name__}: {exc})",
                         f"materialize {stage} for this slide again") from exc
    return path


_NO_SPACE = {"ENOSPC", "EDQUOT", "EFBIG"}


def out_of_space(exc: BaseException, output: Path) -> InputError | None:
    """An InputError for a write that failed for lack of space (anywhere in the chain), else None."""
    import errno
    import os

    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno is not None and errno.errorcode.get(seen.errno) in _NO_SPACE:
            return InputError(output, f"no space to write this output ({os.strerror(seen.errno)}); the earlier output "
                              "is kept and the partial one removed",
                              "free space (or raise the quota) on the volume holding STHELAR_HOME, then re-run")
        seen = seen.__cause__ or seen.__context__
    return None
