"""The modality table is the one place CT / PET / SPECT are defined: folders, volumes, the
CLI and evaluation read it."""

import pytest

from cminet.runtime import folders
from cminet.runtime.errors import CMINetError
from cminet.runtime.modality import MODALITIES, PAIR_TYPES, from_dicom, from_pair_type, modality

pytestmark = pytest.mark.torch_free


def test_each_row_is_found_by_every_name_it_has():
    for row in MODALITIES.values():
        assert modality(row.key.upper()) is row and from_dicom(row.dicom) is row
        assert from_pair_type(row.pair_type) is row
        assert row.functional == (row.palette is not None)  # functional images are coloured, grey ones not
    assert from_dicom("MR") is None and from_pair_type("xray_mri") is None
    with pytest.raises(CMINetError, match="modality: expected one of ct, pet, spect"):
        modality("mri")


def test_folders_volumes_and_the_cli_use_the_table():
    from cminet.cli import fuse_volume
    from cminet.runtime.volume import CT_WINDOW, resolve_modality
    from cminet.runtime.volume import MODALITIES as VOLUME_MODALITIES

    assert folders.PAIR_TYPES == PAIR_TYPES == ("ct_mri", "pet_mri", "spect_mri")
    assert VOLUME_MODALITIES == tuple(MODALITIES) and CT_WINDOW == MODALITIES["ct"].window
    choice = next(p for p in fuse_volume.params if p.name == "modality")
    assert tuple(choice.type.choices) == tuple(MODALITIES)

    class Other:
        modality, source = "NM", "spect/"

    assert resolve_modality(None, Other()) == "spect"
