import numpy as np
import pytest
from spatialdata_io.readers.xenium import cell_id_str_from_prefix_suffix_uint32

from sthelar_platform.core.errors import InputError
from sthelar_platform.core.ids import cell_ids_to_mask_ints, decode_cell_ids, encode_cell_ids, validate_slide_id


@pytest.mark.parametrize("good", ["breast_s1", "s01", "a", "tissue-2_b"])
def test_valid_slide_ids_pass(good):
    assert validate_slide_id(good) == good


@pytest.mark.parametrize("bad", ["../x", "a b", "Breast", "", "-lead", "x/y", "a;drop table", "é", "a" * 65])
def test_invalid_slide_ids_name_problem_and_fix(bad):
    with pytest.raises(InputError) as err:
        validate_slide_id(bad, "manifest.yaml")
    msg = str(err.value)
    assert "manifest.yaml" in msg and "invalid slide id" in msg and "Fix:" in msg


def test_cell_id_codec_matches_spatialdata_io_and_design_example():
    prefixes = np.array([0, 1, 10000, 2**32 - 1, 123456789], dtype=np.uint32)
    ours = encode_cell_ids(prefixes, 1)
    assert list(ours) == list(cell_id_str_from_prefix_suffix_uint32(prefixes, np.ones(5, int)))
    assert encode_cell_ids(np.array([10000], np.uint32))[0] == "aaaachba-1"
    np.testing.assert_array_equal(decode_cell_ids(ours), prefixes)
    # masks store prefix + 1 so that 0 stays background
    assert cell_ids_to_mask_ints(["aaaachba-1"])[0] == 10001
    assert cell_ids_to_mask_ints(["aaaaaaaa-1"])[0] == 1


@pytest.mark.parametrize("bad", ["aaaaqaaa-1", "abc-1", "UNASSIGNED"])
def test_malformed_cell_ids_raise(bad):
    with pytest.raises(ValueError, match="malformed Xenium cell id"):
        decode_cell_ids([bad])


def test_reserved_slide_id_is_refused():
    with pytest.raises(InputError, match="reserved.*Fix: rename the slide"):
        validate_slide_id("dataset")
