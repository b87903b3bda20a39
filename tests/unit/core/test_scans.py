"""The reader a scan gets: formats no reader here is tested on are refused by extension, naming the converters."""

import pytest

from sthelar_platform.core.errors import InputError
from sthelar_platform.core.scans import open_slide


@pytest.mark.parametrize("suffix", [".vsi", ".vms", ".czi", ".isyntax"])
def test_formats_read_by_no_reader_here_name_the_converter(tmp_path, suffix):
    scan = tmp_path / f"slide{suffix}"
    scan.write_text("[GENERAL]\n")
    with pytest.raises(InputError, match="is not read here") as error:
        open_slide(scan)
    assert "bfconvert" in str(error.value) and "\n" not in str(error.value)
