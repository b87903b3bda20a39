"""Bad checkpoints and training datasets: the model stages refuse with one line; earlier outputs stay.

`cellvit_detailed` starts from `training.init_checkpoint` when it is set; a bad file must stop it
before any training.
"""

import pickle

import pytest
import torch
import yaml
from case_homes import assert_refused, outputs_digest, replace_file, the_one_error

from sthelar_platform.core.config import PACKAGED_CONFIG_DIR


class NotWeights:
    """An object a `weights_only` load must refuse (a checkpoint could run code through it)."""


def _with_init_checkpoint(case, name: str):
    cfg = yaml.safe_load((PACKAGED_CONFIG_DIR / "training.yaml").read_text())
    cfg["training"]["init_checkpoint"] = f"imports/{name}"
    cfg["training"]["schedules"]["cpu"]["magnification"] = "40x"  # the tiny slide has too few 20x patches to split
    (case.config_dir / "training.yaml").write_text(yaml.safe_dump(cfg))
    path = case.home / "imports" / name
    path.parent.mkdir(exist_ok=True)
    return path


def _truncated_checkpoint(path):
    torch.save({"model": {"w": torch.zeros(64, 64)}}, path)
    return replace_file(path, path.read_bytes()[:300])


def _code_in_checkpoint(path):
    torch.save({"model": {}, "hook": NotWeights()}, path, pickle_protocol=pickle.HIGHEST_PROTOCOL)
    return path


def _foreign_checkpoint(path):
    torch.save({"model": {"encoder.blocks.0.attn.qkv.weight": torch.zeros(3, 3)}}, path)
    return path


CASES = {
    "checkpoint_truncated": (_truncated_checkpoint, "not a readable checkpoint"),
    "checkpoint_with_code": (_code_in_checkpoint, "not a readable checkpoint"),
    "checkpoint_of_another_model": (_foreign_checkpoint, "does not fit this model"),
    "checkpoint_missing": (lambda p: p, "does not exist"),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_init_checkpoint_stops_training_before_it_starts(case, name):
    make, problem = CASES[name]
    before = outputs_digest(case.home)
    path = make(_with_init_checkpoint(case, f"{name}.pt"))
    error = the_one_error(case, "cellvit_detailed", cohort=True)
    assert_refused(error, path, problem, before, case.home)
    assert not (case.home / "work" / "training").exists() or not list((case.home / "work" / "training").rglob("*.pt"))


def test_damaged_export_stops_the_training_dataset_with_its_name(case):
    before = outputs_digest(case.home)
    target = case.home / "exports" / "tiny" / "cellvit" / "40x" / "detailed" / "patches.csv"
    assert target.exists(), sorted(p.name for p in target.parent.iterdir())
    replace_file(target, "slide_id;patch\n")
    error = the_one_error(case, "training_dataset", cohort=True)
    assert_refused(error, target, "lacks columns", before, case.home, changed=("exports/tiny/",))
