"""Not computing air: the network runs on the part of a slice that holds the head.

A third or more of a head slice is air, and an axial stack has whole slices above and below
the head. CMINet's max-residual head outputs ``max(MRI, OTHER) + correction``; where both
inputs are air there is nothing to correct. So the network runs on the slice's **content
box** (the MRI's head, or OTHER where it is bright, plus a margin) and the rest of the slice
is ``max(MRI, OTHER)``: OTHER's own image outside the MRI's head, black in the air. A slice
without content does not run the network at all.

The box starts and ends on the network's token grid (patch size × key/value pooling,
16 px for the shipped model) and is at least :data:`MIN_SIDE` px a side. Both matter: a box
off the grid gives the transformer other tokens (up to 94 of 255 levels of difference
measured on the 1 mm MNI152 T1 + SPM PET), and a box much smaller than the training crops
gives its global statistics too little image. On that volume, every 8th slice, boxes on the
grid with a 16 px margin stay ≥ 42.3 dB PSNR from whole-slice fusion (the tiled-vs-whole
tolerance is 38 dB; an 8 px margin left 38.2 dB) while the network sees 55 % of the pixels
(``benchmarks/experiments/volume_content_crop.py``).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .memory import NetworkShape
from .tiling import MIN_TILE

HEAD_LEVEL = 8 / 255  # MRI at or above this is head (the scanner's noise floor sits below)
BRIGHT_OTHER = 0.5  # OTHER at or above this (bone, strong uptake) is content even outside the MRI's head
MARGIN = 16  # px of context around the content
MIN_SIDE = MIN_TILE  # a box is never smaller than the smallest tile the runtime fuses
# Box sides for a backend that compiles each input shape (OpenVINO's static shapes, CUDA
# graphs): multiples of this, so a volume brings a handful of shapes, not one per slice.
COMPILED_SHAPE_STEP = 64


@dataclass(frozen=True)
class Box:
    top: int
    bottom: int
    left: int
    right: int

    @property
    def slices(self) -> tuple[slice, slice]:
        return slice(self.top, self.bottom), slice(self.left, self.right)

    @property
    def area(self) -> int:
        return (self.bottom - self.top) * (self.right - self.left)


def token_grid(config_json: str | None) -> int | None:
    """The alignment a content box needs for the model whose ``cminet.config`` metadata is
    ``config_json`` (patch size × key/value pooling), or None when the model is not known
    to be a max-residual CMINet (a foreign model, or another output head): then slices are
    fused whole, because outside the box only a max-residual network is known to give
    ``max(MRI, OTHER)``."""
    try:
        config = json.loads(config_json) if config_json and len(config_json) < 1 << 16 else None
    except (ValueError, RecursionError):
        return None
    if not isinstance(config, dict) or config.get("output") != "max-residual":
        return None
    shape = NetworkShape.from_config_json(config_json)
    return shape.patch_size * shape.kv_pool


def content_box(mri: np.ndarray, other: np.ndarray, grid: int, step: int | None = None) -> Box | None:
    """The box the network must see for float H×W ``mri``/``other`` in [0, 1], or None when
    there is no content. ``step``: box sides are whole multiples of it (or the image's side),
    so that few distinct shapes reach a backend that compiles each one."""
    content = (mri >= HEAD_LEVEL) | (other >= BRIGHT_OTHER)
    rows, columns = np.flatnonzero(content.any(axis=1)), np.flatnonzero(content.any(axis=0))
    if rows.size == 0:
        return None
    height, width = content.shape
    top, bottom = _span(rows[0], rows[-1] + 1, height, grid, step or grid)
    left, right = _span(columns[0], columns[-1] + 1, width, grid, step or grid)
    return Box(top, bottom, left, right)


def _span(first: int, end: int, length: int, grid: int, step: int) -> tuple[int, int]:
    """[first, end) widened by the margin and to the minimum side, starting on the token grid;
    its length a multiple of ``step`` unless it reaches the image's far edge."""
    low, high = max(first - MARGIN, 0), min(end + MARGIN, length)
    low = low // grid * grid  # outward onto the grid
    side = min(-(-max(high - low, MIN_SIDE) // step) * step, length)
    start = max(low - (side - (high - low)) // 2 // grid * grid, 0)  # grown around the content, on the grid
    if start + side > length:  # against the far edge: end there, starting on the grid
        return (length - side) // grid * grid, length
    return start, start + side


Network = Callable[[np.ndarray, np.ndarray], np.ndarray]  # float H×W (or N×H×W) pair → same shape


def union(boxes) -> Box | None:
    """The smallest box holding every box given (None among them: no content there)."""
    found = [b for b in boxes if b is not None]
    if not found:
        return None
    return Box(min(b.top for b in found), max(b.bottom for b in found), min(b.left for b in found),
               max(b.right for b in found))


def run_on_content(network: Network, mri: np.ndarray, other: np.ndarray, grid: int | None,
                   step: int | None = None, fixed: Box | None = None) -> np.ndarray:
    """``network`` on the content box of each image of ``mri``/``other`` (H×W or N×H×W),
    ``max(mri, other)`` around it; the input as given when ``grid`` is None. Images of a
    stack with the same box run as one batch, so a batch gives what one image at a time does.
    ``step``: as :func:`content_box` takes it. ``fixed``: every image with content runs on
    this box (a volume's union of boxes: one input shape for a backend that compiles each)."""
    if mri.ndim == 2:
        return run_on_content(network, mri[None], other[None], grid, step, fixed)[0]
    if grid is None:
        return network(mri, other)
    height, width = mri.shape[-2:]
    groups: dict[Box | None, list[int]] = {}
    for k in range(len(mri)):
        box = content_box(mri[k], other[k], grid, step)
        groups.setdefault(fixed if fixed is not None and box is not None else box, []).append(k)
    if list(groups) == [Box(0, height, 0, width)]:
        return network(mri, other)
    fused = np.maximum(mri, other).astype(np.float32)
    for box, members in groups.items():
        if box is None:
            continue
        rows, columns = box.slices
        fused[members, rows, columns] = network(mri[members, rows, columns], other[members, rows, columns])
    return fused
