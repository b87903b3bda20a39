"""The bad-input corpus: one good slide home is built once; every case breaks one input of a private
copy, runs the stage that reads it in real Dagster, and checks two things. The error is one line that
names the file, the problem and the fix. Every earlier output is byte-identical afterwards.

Cases live in one file per stage (ingest, registration, annotation, tiling, model, config and
storage); the helpers are in tests/support/case_homes.py. Run this folder alone (`pytest
tests/bad_inputs -p no:xdist`) to get the count of bad inputs tried and lost.
"""

from __future__ import annotations

import pytest
from case_homes import CORPUS, CaseHome, build_good_home, make_case


@pytest.fixture(scope="session")
def good_home(tmp_path_factory, tiny_cohort):
    return build_good_home(tmp_path_factory.mktemp("bad_inputs_baseline"), tiny_cohort)


@pytest.fixture
def case(good_home, tmp_path, monkeypatch) -> CaseHome:
    c = make_case(*good_home, tmp_path)
    monkeypatch.setenv("STHELAR_CONFIG_DIR", str(c.config_dir))  # empty: the packaged files, until a case writes one
    return c


def pytest_terminal_summary(terminalreporter):
    if CORPUS["tried"]:
        terminalreporter.write_line(f"bad-input corpus: {CORPUS['tried']} bad inputs tried, "
                                    f"{CORPUS['lost']} lost an earlier output")
