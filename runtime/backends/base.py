"""The interface every inference backend implements (Polygraphy-style runners)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import CMINetError


class BackendUnavailable(CMINetError):
    """The requested backend cannot run here (missing package, provider or GPU)."""


@dataclass(frozen=True)
class ShapeProfile:
    """Allowed N×H×W range (inclusive). ``None`` bounds mean unlimited."""

    min: tuple[int, int, int] = (1, 16, 16)
    max: tuple[int, int, int] | None = None

    def check(self, shape: tuple[int, ...]) -> None:
        n, _, h, w = shape
        lo_ok = n >= self.min[0] and h >= self.min[1] and w >= self.min[2]
        hi_ok = self.max is None or (n <= self.max[0] and h <= self.max[1] and w <= self.max[2])
        if not (lo_ok and hi_ok):
            top = "∞" if self.max is None else "×".join(map(str, self.max))
            raise CMINetError(f"input N×H×W {n}×{h}×{w} is outside the model's profile "
                              f"{'×'.join(map(str, self.min))} … {top}")


class Backend:
    """Runs the fusion network: ``run(mri, other)`` on N×1×H×W arrays of ``input_dtype``,
    returns float32 N×1×H×W."""

    name = "abstract"
    precision = "fp32"
    input_dtype = np.dtype(np.float32)
    profile = ShapeProfile()

    def run(self, mri: np.ndarray, other: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def info(self) -> dict:
        return {}

    def close(self) -> None:
        pass
