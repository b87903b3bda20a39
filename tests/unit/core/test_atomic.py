import subprocess
import sys
import textwrap

import pytest

from sthelar_platform.core.atomic import TMP_MARKER, atomic_dir, atomic_file, clean_stale_siblings


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
    assert clean_stale_siblings(final, older_than_s=3600) == []  # could still be a live run's
    assert clean_stale_siblings(final, older_than_s=0) == leftovers
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
    assert (final / "data").read_text() == "good"


def test_stale_cleanup_touches_only_this_outputs_siblings(tmp_path):
    final, other = tmp_path / "s1", tmp_path / "s10"
    for d in (final.with_name(f"s1{TMP_MARKER}1-a"), other.with_name(f"s10{TMP_MARKER}1-b")):
        d.mkdir()
        (d / "x").write_text("x")
    with atomic_dir(final, stale_after_s=0) as tmp:
        (tmp / "data").write_text("new")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s1", f"s10{TMP_MARKER}1-b"]
