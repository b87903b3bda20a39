"""Typed config: each packaged file validates, and a broken override names the file and the dotted key."""

import shutil

import pytest
import yaml

from sthelar_platform.core.config import (
    CONFIG_NAMES,
    PACKAGED_CONFIG_DIR,
    RegistrationConfig,
    config_version,
    load_categories,
    load_config,
    overrides_dir,
)
from sthelar_platform.core.errors import ConfigError, InputError


@pytest.mark.parametrize("name", CONFIG_NAMES)
def test_packaged_config_validates(name):
    cfg = load_config(name)
    assert cfg.version == 1


def _override(tmp_path, monkeypatch, name, edit):
    data = yaml.safe_load((PACKAGED_CONFIG_DIR / f"{name}.yaml").read_text())
    edit(data)
    (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(data))
    monkeypatch.setenv("STHELAR_CONFIG_DIR", str(tmp_path))
    return tmp_path / f"{name}.yaml"


def test_unknown_key_names_file_and_key(tmp_path, monkeypatch):
    path = _override(tmp_path, monkeypatch, "pipeline", lambda d: d["registration"].update(match_radius=3.0))
    with pytest.raises(ConfigError) as err:
        load_config("pipeline")
    assert str(path) in str(err.value)
    assert "`registration.match_radius`: unknown key" in str(err.value)
    assert err.value.key == "registration.match_radius" and err.value.file == str(path)


def test_missing_key_names_it(tmp_path, monkeypatch):
    _override(tmp_path, monkeypatch, "tiling", lambda d: d["patches"].pop("overlap_px"))
    with pytest.raises(InputError, match=r"`patches.overlap_px`: missing key"):
        load_config("tiling")


def test_wrong_type_names_key(tmp_path, monkeypatch):
    _override(tmp_path, monkeypatch, "training", lambda d: d["dataset"].update(split="random"))
    with pytest.raises(InputError, match=r"`dataset.split`"):
        load_config("training")


def test_a_schedule_training_on_unexported_patches_is_refused(tmp_path, monkeypatch):
    _override(tmp_path, monkeypatch, "training", lambda d: d["dataset"].update(magnifications=["40x"]))
    with pytest.raises(InputError, match=r"training.schedules.cpu.magnification '20x' is not among dataset.magnifications"):
        load_config("training")


def test_out_of_range_threshold_is_refused(tmp_path, monkeypatch):
    _override(tmp_path, monkeypatch, "annotation", lambda d: d["checks"].update(max_frac_unknown=1.5))
    with pytest.raises(InputError, match=r"`checks.max_frac_unknown`"):
        load_config("annotation")


def test_not_a_mapping_is_refused(tmp_path, monkeypatch):
    (tmp_path / "tiling.yaml").write_text("- just\n- a list\n")
    monkeypatch.setenv("STHELAR_CONFIG_DIR", str(tmp_path))
    with pytest.raises(InputError, match="mapping at the top level"):
        load_config("tiling")


def test_override_folder_falls_back_to_packaged_files(tmp_path, monkeypatch):
    _override(tmp_path, monkeypatch, "tiling", lambda d: d["patches"].update(overlap_px=32))
    assert load_config("tiling").patches.overlap_px == 32
    assert load_config("pipeline").registration.match_radius_um == 3.0  # not overridden: packaged
    assert overrides_dir() == tmp_path / "overrides"


def test_config_version_follows_content(tmp_path, monkeypatch):
    before = config_version("tiling")
    monkeypatch.setenv("STHELAR_CONFIG_DIR", str(tmp_path))
    shutil.copy(PACKAGED_CONFIG_DIR / "tiling.yaml", tmp_path / "tiling.yaml")
    assert config_version("tiling") == before
    _override(tmp_path, monkeypatch, "tiling", lambda d: d["agreement"].update(flag_below_jaccard=0.5))
    assert config_version("tiling") != before


def test_sections_are_typed_immutable_and_read_by_attribute_only():
    reg = load_config("pipeline").registration
    assert isinstance(reg, RegistrationConfig)
    assert isinstance(reg.ransac_iterations, int)  # YAML ints stay ints
    with pytest.raises(TypeError):  # no mapping reads: a section is not a dict
        reg["match_radius_um"]
    assert not hasattr(reg, "get") and not hasattr(reg, "keys")
    with pytest.raises(Exception):  # frozen
        reg.match_radius_um = 1.0


def test_a_config_error_is_an_input_error_naming_file_and_key():
    err = ConfigError("/x/tiling.yaml", "patches.size_px", "must be positive", "set it to 256")
    assert isinstance(err, InputError)
    assert str(err) == "/x/tiling.yaml: `patches.size_px`: must be positive. Fix: set it to 256"


def test_the_categories_build_the_category_system():
    cats = load_categories()
    assert cats.groupings["detailed"].class_index("Stem_like") == len(cats.groupings["detailed"].classes)
    assert cats.less10_max_transcripts == 10
