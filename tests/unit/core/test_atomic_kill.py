"""A run killed (SIGKILL) at every step of an atomic folder swap never leaves the output missing or mixed.

The writer runs in a child process whose file operations are counted; the child kills itself before
or after the N-th rename / exchange, or in the middle of writing or of removing the earlier output.
Both swap strategies are exercised: the one-call exchange and the journaled three-rename fallback.
"""

import subprocess
import sys
import textwrap

import pytest

from sthelar_platform.core.atomic import TMP_MARKER, atomic_dir, clean_stale_siblings, recover_interrupted_swap

FILES = [f"part{i}.txt" for i in range(4)]

CHILD = textwrap.dedent("""
    import os, signal, sys
    from pathlib import Path
    from sthelar_platform.core import atomic

    final, kill_at, mode = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
    step = [0]

    def die():
        os.kill(os.getpid(), signal.SIGKILL)

    def counted(fn):
        def wrapper(*a, **k):
            if kill_at == f"before-{step[0]}":
                die()
            out = fn(*a, **k)
            if kill_at == f"after-{step[0]}":
                die()
            step[0] += 1
            return out
        return wrapper

    exchange = (lambda a, b: False) if mode == "fallback" else atomic._exchange
    atomic._exchange = counted(exchange)
    atomic.os.replace = counted(os.replace)

    def rmtree_then_die(path, *a, **k):  # remove one file of the earlier output, then die
        files = sorted(Path(path).iterdir())
        if files:
            files[0].unlink()
        die()

    if kill_at == "removing-old":
        atomic.shutil.rmtree = rmtree_then_die
    with atomic.atomic_dir(final) as tmp:
        for i, name in enumerate(sys.argv[4].split(',')):
            (tmp / name).write_text("new")
            if kill_at == "writing" and i == 1:
                die()
    print("steps", step[0])
""")


def _write_old(final):
    with atomic_dir(final) as tmp:
        for name in FILES:
            (tmp / name).write_text("old")


def _state(final) -> str:
    """'old' or 'new' when the folder is one complete output; anything else is a failure."""
    if not final.is_dir():
        return "missing"
    contents = {p.name: p.read_text() for p in final.iterdir()}
    values = set(contents.values())
    return values.pop() if sorted(contents) == FILES and len(values) == 1 else f"mixed {contents}"


def _run(final, kill_at, mode):
    return subprocess.run([sys.executable, "-c", CHILD, str(final), kill_at, mode, ",".join(FILES)], capture_output=True, text=True)


@pytest.mark.parametrize("mode", ["exchange", "fallback"])
def test_a_kill_at_each_step_of_the_swap_keeps_a_complete_output(tmp_path, mode):
    _write_old(tmp_path / "probe")  # how many renames a swap over an existing output takes
    full = _run(tmp_path / "probe", "never", mode)
    assert full.returncode == 0, full.stderr
    n_steps = int(full.stdout.split()[-1])
    assert n_steps == (1 if mode == "exchange" else 4)  # fallback: the refused exchange, then three renames
    kill_points = ["writing", "removing-old"] + [f"{w}-{i}" for i in range(n_steps) for w in ("before", "after")]
    seen = {}
    for kill_at in kill_points:
        final = tmp_path / kill_at / "out"
        _write_old(final)
        r = _run(final, kill_at, mode)
        assert r.returncode == -9, (kill_at, r.stderr)  # the child really died by SIGKILL
        state = _state(final)
        if mode == "fallback" and state == "missing":  # between two renames: the next run restores it
            recover_interrupted_swap(final)
            state = _state(final)
        assert state in ("old", "new"), (kill_at, state)
        seen[kill_at] = state
        # the next run of the asset removes the leftovers and writes a fresh output
        with atomic_dir(final, stale_after_s=0) as tmp:
            for name in FILES:
                (tmp / name).write_text("next")
        assert sorted(p.name for p in final.parent.iterdir()) == ["out"], kill_at
        assert _state(final) == "next"
    assert seen["writing"] == "old" and seen["removing-old"] == "new"
    assert seen["before-0"] == "old" and seen[f"after-{n_steps - 1}"] == "new"


def test_an_interrupted_fallback_swap_prefers_the_complete_new_output(tmp_path):
    final = tmp_path / "out"
    for name, text in ((f"out{TMP_MARKER}old-1", "old"), (f"out{TMP_MARKER}ready-1", "new")):
        (tmp_path / name).mkdir()
        for f in FILES:
            (tmp_path / name / f).write_text(text)
    assert clean_stale_siblings(final, older_than_s=0) == [tmp_path / f"out{TMP_MARKER}old-1"]
    assert _state(final) == "new"
