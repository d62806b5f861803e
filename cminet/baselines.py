"""Classical fusion baselines for side-by-side tables.

Each works on float grey/Y images in [0, 1]; :class:`BaselineFuser` wraps one behind the
same ``fuse(mri_u8, other_u8) -> u8`` call as the model (``cminet.fusion.TorchFuser``),
with the same colour handling (PET/SPECT Y fused, source chroma restored).
"""

from __future__ import annotations

from collections.abc import Callable

import cv2
import numpy as np

from cminet.runtime.imaging import finish_output, prepare_pair


def average(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pixel average."""
    return (a + b) / 2


def maximum(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pixel maximum (copies source pixels: scores high MI and VIF)."""
    return np.maximum(a, b)


def _gaussian_pyramid(x: np.ndarray, levels: int) -> list[np.ndarray]:
    pyramid = [x]
    for _ in range(levels - 1):
        pyramid.append(cv2.pyrDown(pyramid[-1]))
    return pyramid


def _laplacian_pyramid(x: np.ndarray, levels: int) -> list[np.ndarray]:
    gauss = _gaussian_pyramid(x, levels)
    details = [g - cv2.pyrUp(n, dstsize=g.shape[::-1]) for g, n in zip(gauss[:-1], gauss[1:], strict=True)]
    return details + [gauss[-1]]


def laplacian_pyramid(a: np.ndarray, b: np.ndarray, levels: int = 4) -> np.ndarray:
    """Laplacian-pyramid fusion (Burt & Adelson, 1983): per level, keep the detail
    coefficient with the larger magnitude; average the coarsest (base) level."""
    levels = max(1, min(levels, int(np.log2(min(a.shape))) - 2))
    pa = _laplacian_pyramid(a.astype(np.float32), levels)
    pb = _laplacian_pyramid(b.astype(np.float32), levels)
    fused = [np.where(np.abs(da) >= np.abs(db), da, db) for da, db in zip(pa[:-1], pb[:-1], strict=True)]
    out = (pa[-1] + pb[-1]) / 2
    for detail in reversed(fused):
        out = cv2.pyrUp(out, dstsize=detail.shape[::-1]) + detail
    return np.clip(out, 0.0, 1.0)


BASELINES: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "average": average,
    "max": maximum,
    "laplacian": laplacian_pyramid,
}


class BaselineFuser:
    """A baseline behind the model's ``fuse(mri, other)`` interface."""

    def __init__(self, name: str):
        if name not in BASELINES:
            raise ValueError(f"unknown baseline {name!r}; choose from {', '.join(BASELINES)}")
        self.name, self.rule = name, BASELINES[name]

    def fuse(self, mri: np.ndarray, other: np.ndarray) -> np.ndarray:
        pair = prepare_pair(mri, other)
        return finish_output(self.rule(pair.mri, pair.other), pair.chroma)
