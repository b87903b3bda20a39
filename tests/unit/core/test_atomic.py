import subprocess
import sys
import textwrap

import pytest

from sthelar_platform.core.atomic import TMP_MARKER, atomic_dir, atomic_file, clean_stale_tmp


def test_atomic_dir_replaces_only_on_success(tmp_path):
    final = tmp_path / "out"
    with atomic_dir(final) as tmp:
        (tmp / "a.txt").write_text("v1")
    assert (final / "a.txt").read_text() == "v1"
    with pytest.raises(RuntimeError):
        with atomic_dir(final) as tmp:
            (tmp / "a.txt").write_text("half")
            raise RuntimeError("boom")
    assert (final / "a.txt").read_text() == "v1"
    assert not [p for p in tmp_path.iterdir() if TMP_MARKER in p.name]
    with atomic_dir(final) as tmp:
        (tmp / "b.txt").write_text("v2")
    assert sorted(p.name for p in final.iterdir()) == ["b.txt"]


def test_atomic_file_keeps_old_on_failure(tmp_path):
    f = tmp_path / "x.json"
    with atomic_file(f) as tmp:
        tmp.write_text("good")
    with pytest.raises(ValueError):
        with atomic_file(f) as tmp:
            tmp.write_text("bad")
            raise ValueError
    assert f.read_text() == "good"
    assert [p.name for p in tmp_path.iterdir()] == ["x.json"]


def test_killed_process_leaves_old_output_and_only_tmp_leftovers(tmp_path):
    final = tmp_path / "out"
    with atomic_dir(final) as tmp:
        (tmp / "data").write_text("good")
    script = textwrap.dedent(f"""
        import os
        from sthelar_platform.core.atomic import atomic_dir
        with atomic_dir({str(final)!r}) as tmp:
            (tmp / "data").write_text("partial")
            os._exit(9)  # killed mid-write: no cleanup runs
    """)
    assert subprocess.run([sys.executable, "-c", script]).returncode == 9
    assert (final / "data").read_text() == "good"
    leftovers = [p for p in tmp_path.iterdir() if TMP_MARKER in p.name]
    assert len(leftovers) == 1
    assert clean_stale_tmp(tmp_path) == leftovers
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
