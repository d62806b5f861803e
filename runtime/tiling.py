"""Images too large for memory (or for an engine's profile) are fused in overlapping tiles
with blended seams: what a user with a 2048² or 4096² scan wants instead of a refusal.

Each tile is fused on its own; where tiles overlap, their outputs are averaged with weights
that ramp linearly from the tile's edge to its inside, so no seam shows and the borders of
a tile (where its convolutions saw padding) count least. The network's attention and its
global statistics see one tile at a time, so a tiled result is close to, not equal to, the
whole-image result (docs/bad-input.md gives the measured difference); an image that fits
is always fused whole.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from . import memory
from .contract import MIN_SIDE, ContractError
from .errors import SizeLimitError
from .memory import NetworkShape

DEFAULT_MAX_TILE = 1024  # larger tiles cost more (attention) than they add in context
MIN_TILE = 64  # the training crop: smaller tiles see too little to fuse well
TILE_CHOICES = "'auto' (tiles only when the image does not fit), 'off', or a side ≥ 64"


@dataclass(frozen=True)
class TilePlan:
    """Tile origins along each axis; every tile is ``tile_h × tile_w``."""

    height: int
    width: int
    tile_h: int
    tile_w: int
    overlap: int
    ys: tuple[int, ...]
    xs: tuple[int, ...]

    @property
    def count(self) -> int:
        return len(self.ys) * len(self.xs)

    def describe(self) -> str:
        return (f"{self.count} tiles of {self.tile_h}×{self.tile_w} with ≥ {self.overlap} px blended overlaps "
                f"for {self.height}×{self.width}")


def parse_tile(value) -> int | str:
    """'auto', 'off' / None / 0, or a whole number ≥ MIN_TILE → 'auto', 'off' or the side."""
    if value is None or value == 0 or (isinstance(value, str) and value.strip().lower() in ("off", "none", "0")):
        return "off"
    if isinstance(value, str) and value.strip().lower() == "auto":
        return "auto"
    try:
        side = int(value) if not isinstance(value, bool) and float(value) == int(value) else None
    except (TypeError, ValueError, OverflowError):
        side = None
    if side is None or side < MIN_TILE:
        raise ContractError(f"tile: expected {TILE_CHOICES}, got {value!r}")
    return side


def starts(length: int, tile: int, overlap: int) -> tuple[int, ...]:
    """Evenly spread tile origins covering ``length`` with neighbours overlapping ≥ ``overlap``."""
    if tile >= length:
        return (0,)
    count = math.ceil((length - overlap) / (tile - overlap))
    return tuple(round(i * (length - tile) / (count - 1)) for i in range(count))


def plan_tiles(height: int, width: int, tile: int) -> TilePlan:
    tile_h, tile_w = min(tile, height), min(tile, width)
    overlap = max(MIN_SIDE, tile // 8)
    return TilePlan(height, width, tile_h, tile_w, overlap, starts(height, tile_h, overlap),
                    starts(width, tile_w, overlap))


def ramp(length: int, overlap: int, before: bool, after: bool) -> np.ndarray:
    """1-D blending weights: linear from ~0 to 1 over ``overlap`` on each side that has a
    neighbour, 1 elsewhere (never 0, so every pixel has weight)."""
    weights = np.ones(length, np.float32)
    edge = (np.arange(overlap, dtype=np.float32) + 0.5) / overlap
    if before:
        weights[:overlap] = np.minimum(weights[:overlap], edge)
    if after:
        weights[length - overlap:] = np.minimum(weights[length - overlap:], edge[::-1])
    return weights


Infer = Callable[[np.ndarray, np.ndarray], np.ndarray]  # N×1×h×w float32 pair → N×1×h×w


def run_tiled(infer: Infer, mri: np.ndarray, other: np.ndarray, plan: TilePlan, batch: int = 1) -> np.ndarray:
    """Fuse float H×W ``mri``/``other`` tile by tile (``batch`` tiles per call); returns the
    blended float32 H×W output."""
    total = np.zeros((plan.height, plan.width), np.float32)
    weight = np.zeros((plan.height, plan.width), np.float32)
    origins = [(y, x) for y in plan.ys for x in plan.xs]
    for first in range(0, len(origins), max(1, batch)):
        chunk = origins[first:first + max(1, batch)]
        a = np.stack([mri[y:y + plan.tile_h, x:x + plan.tile_w] for y, x in chunk])[:, None]
        b = np.stack([other[y:y + plan.tile_h, x:x + plan.tile_w] for y, x in chunk])[:, None]
        out = infer(a, b)
        for k, (y, x) in enumerate(chunk):
            wy = ramp(plan.tile_h, plan.overlap, y > 0, y + plan.tile_h < plan.height)
            wx = ramp(plan.tile_w, plan.overlap, x > 0, x + plan.tile_w < plan.width)
            w = wy[:, None] * wx[None, :]
            total[y:y + plan.tile_h, x:x + plan.tile_w] += w * out[k, 0]
            weight[y:y + plan.tile_h, x:x + plan.tile_w] += w
    return total / weight


class SizePolicy:
    """Whether an N×H×W call fits on this machine, and how to fuse an image that does not:
    one policy for every backend. ``max_side`` is the largest side the backend accepts (an
    engine profile); memory is checked where :mod:`~cminet.runtime.memory` models the
    backend (the CPU backends), against the budget available when the policy is made."""

    def __init__(self, backend: str, precision: str, shape: NetworkShape | None = None,
                 max_side: int | None = None, max_batch: int = 1, budget: int | None = None, where: str = "here"):
        self.backend, self.precision, self.shape = backend, precision, shape or NetworkShape()
        self.max_side, self.max_batch = max_side, max_batch
        # The host's memory, or for a GPU backend the device's free memory (``where`` says which).
        self.budget = memory.budget_bytes() if budget is None else budget
        self.where = where

    def need(self, n: int, height: int, width: int) -> int | None:
        return memory.network_peak_bytes(n, height, width, self.backend, self.precision, self.shape)

    def fits(self, n: int, height: int, width: int) -> bool:
        if self.max_side is not None and max(height, width) > self.max_side:
            return False
        need = self.need(n, height, width)
        # A batch must fit twice: ONNX Runtime's arena grows in doublings, and a 4×1024² batch
        # was measured at 1.7× the estimate (one image per call stays below it).
        return need is None or self.budget is None or need * (2 if n > 1 else 1) <= self.budget

    def largest_square(self, n: int = 1) -> int:
        """The largest side of an N×side² call that :meth:`fits` (0: none)."""
        budget = (self.budget or 0) // (2 if n > 1 else 1)
        side = memory.largest_square(self.backend, self.precision, budget, self.shape, n=n)
        return min(side, self.max_side) if self.max_side is not None else side

    def explain(self, n: int, height: int, width: int) -> str:
        if self.max_side is not None and max(height, width) > self.max_side:
            return f"larger than the model's profile allows ({self.max_side} px per side)"
        batch = f" at batch {n}" if n > 1 else ""
        largest = self.largest_square(n)
        fits = (f"the largest square it fuses whole {self.where}{batch} is {largest}²" if largest else
                f"no image fits{batch}")
        return (f"{self.backend} {self.precision} needs about {memory.human(self.need(n, height, width) or 0)}, "
                f"{memory.human(self.budget or 0)} is available {self.where} ({fits})")

    def plan(self, height: int, width: int, tile="auto") -> TilePlan | None:
        """None: fuse whole; else the tiles. :class:`SizeLimitError` when neither fits."""
        tile = parse_tile(tile)
        if tile == "off" or (tile == "auto" and self.fits(1, height, width)):
            if not self.fits(1, height, width):
                raise SizeLimitError(f"{height}×{width} image: {self.explain(1, height, width)}; "
                                      "fuse it in tiles instead (tile='auto'; cminet fuse --tile auto)")
            return None
        if tile == "auto":
            tile = min(DEFAULT_MAX_TILE, self.max_side or DEFAULT_MAX_TILE)
            if tile < MIN_TILE:
                raise SizeLimitError(f"{height}×{width} image: {self.explain(1, height, width)}, and tiles "
                                      f"smaller than {MIN_TILE} px would fuse poorly")
            while tile > MIN_TILE and not self.fits(1, tile, tile):
                tile -= MIN_SIDE
        plan = plan_tiles(height, width, tile)
        if not self.fits(1, plan.tile_h, plan.tile_w):
            raise SizeLimitError(f"{plan.tile_h}×{plan.tile_w} tiles: "
                                  f"{self.explain(1, plan.tile_h, plan.tile_w)}")
        return plan

    def batch_for(self, plan: TilePlan) -> int:
        """How many tiles to run per call (up to ``max_batch``, within memory)."""
        n = max(1, self.max_batch)
        while n > 1 and not self.fits(n, plan.tile_h, plan.tile_w):
            n -= 1
        return n

    def check_whole(self, n: int, height: int, width: int) -> None:
        """Refuse one network call that does not fit (the raw ``infer`` API never tiles)."""
        if not self.fits(n, height, width):
            raise SizeLimitError(f"input {n}×1×{height}×{width}: {self.explain(n, height, width)}")
