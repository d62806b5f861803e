"""Colour maps for scalar PET / SPECT volumes: the DICOM standard palettes (PS3.6 Annex B,
"Well-known Color Palettes") as pydicom ships them, plus ``gray``.

A palette here is a 256×3 uint8 lookup table: index = the windowed 8-bit value, row = RGB.
Every standard palette maps 0 to black, so air and the space outside the scan stay black.
"""

from __future__ import annotations

from functools import cache

import numpy as np

from .errors import CMINetError

GRAY = "gray"
DEFAULT_COLORMAP = "HOT_IRON"
# The DICOM names mapped to their well-known SOP Instance UIDs. pydicom.pixels.apply_color_lut
# accepts the names too, but its name table swaps FALL and WINTER and it warns that a name is
# "an invalid UI", so the UIDs are passed instead.
DICOM_PALETTES = {
    "HOT_IRON": "1.2.840.10008.1.5.1",
    "PET": "1.2.840.10008.1.5.2",
    "HOT_METAL_BLUE": "1.2.840.10008.1.5.3",
    "PET_20_STEP": "1.2.840.10008.1.5.4",
}
COLORMAPS = (*DICOM_PALETTES, GRAY)


def check_colormap(name: str) -> str:
    """The canonical spelling of ``name`` (case-insensitive), or a one-line error."""
    for known in COLORMAPS:
        if str(name).strip().upper() == known.upper():
            return known
    raise CMINetError(f"colormap: expected one of {', '.join(COLORMAPS)}, got {name!r}")


@cache
def palette_lut(name: str) -> np.ndarray:
    """256×3 uint8 RGB table for ``name`` (read-only; ``gray`` is R = G = B = index)."""
    name = check_colormap(name)
    if name == GRAY:
        lut = np.repeat(np.arange(256, dtype=np.uint8)[:, None], 3, axis=1)
    else:
        from pydicom.pixels import apply_color_lut

        lut = np.asarray(apply_color_lut(np.arange(256, dtype=np.uint8), palette=DICOM_PALETTES[name]))
        if lut.shape != (256, 3) or lut.dtype != np.uint8:  # the standard palettes are 8-bit, 256 entries
            raise CMINetError(f"colormap {name}: pydicom returned a {lut.dtype} table of shape {lut.shape}")
    lut.setflags(write=False)
    return lut


def apply_palette(values: np.ndarray, name: str) -> np.ndarray:
    """uint8 array of any shape → uint8 RGB of that shape + (3,)."""
    if values.dtype != np.uint8:
        raise CMINetError(f"palette input must be uint8 window indices, got {values.dtype}")
    return palette_lut(name)[values]
