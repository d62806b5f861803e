"""Subject and scanner change, simulated: what differs between the Harvard atlas and a
user's scans.

* MRI contrast: T2-like inversion inside the head, gamma, a smooth multiplicative bias field.
* Functional intensity: global scale (dose, uptake time, normalisation) and resolution
  (Gaussian blur: PET/SPECT reconstructions differ widely in FWHM).
* Functional colour: the pseudo-colour palette the PET/SPECT image is rendered with (the
  DICOM standard palettes and the rainbow-type maps viewers and papers use).
* Noise.

The Harvard PET pairs are one subject in three orientations, so without these the network
sees one brain's uptake through one colour map. The functional image's scalar uptake is
approximated by its BT.601 Y (monotone for hot-type maps; for rainbow maps a proxy that
still gives new uptake-to-brightness relations). numpy + OpenCV only; images in [0, 1].
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import cv2
import numpy as np

from cminet.runtime.colour import colour_weight
from cminet.runtime.imaging import prepare_pair, rgb_to_ycbcr
from cminet.runtime.palettes import DICOM_PALETTES, palette_lut

__all__ = ["Augment", "palettes", "render_palette", "shifted_copies", "shifted_rgb_pair"]


@cache
def palettes() -> dict[str, np.ndarray]:
    """256×3 uint8 RGB palettes by name: the DICOM standard ones and OpenCV's rainbow-type
    maps (background index 0 forced to black, as in every standard palette)."""
    luts = {name: palette_lut(name) for name in DICOM_PALETTES}
    ramp = np.arange(256, dtype=np.uint8)[:, None]
    for name in ("JET", "HOT", "RAINBOW", "TURBO", "INFERNO"):
        lut = cv2.applyColorMap(ramp, getattr(cv2, f"COLORMAP_{name}"))[:, 0, ::-1].copy()  # BGR → RGB
        lut[0] = 0
        lut.setflags(write=False)
        luts[name.lower()] = lut
    return luts


def render_palette(uptake: np.ndarray, lut: np.ndarray) -> np.ndarray:
    """Scalar uptake in [0, 1] through a 256×3 palette → uint8 RGB."""
    return lut[np.clip(np.rint(uptake * 255), 0, 255).astype(np.uint8)]


@dataclass(frozen=True)
class Augment:
    """Random subject/scanner changes, each applied with its probability ``p_*``."""

    p_invert: float = 0.25  # T2-like MRI: contrast inverted inside the head
    p_gamma: float = 0.5
    gamma: tuple[float, float] = (0.6, 1.6)
    p_bias: float = 0.4
    bias: float = 0.3  # multiplicative field 1 ± bias, smooth over the image
    p_scale: float = 0.5
    scale: tuple[float, float] = (0.6, 1.25)  # functional intensity
    p_blur: float = 0.4
    blur_sigma: tuple[float, float] = (0.5, 2.5)  # functional resolution, pixels
    p_palette: float = 0.5
    p_noise: float = 0.3
    noise: float = 0.02  # largest noise σ

    def __call__(self, a: np.ndarray, b: np.ndarray, mask: np.ndarray, rng: np.random.Generator):
        """One training crop: MRI, functional Y (or CT), colour weight → the same,
        changed. A grey CT (empty weight) keeps its intensities and sharpness: CT numbers are
        calibrated (Hounsfield units) and CT is the sharpest source, so only the MRI changes
        and noise is added (blurring CT taught the network to trust bone edges less: CT
        Qabf on validation 0.609 → 0.575 after 3 epochs)."""
        a = self.mri(a, rng)
        coloured = bool(mask.any())
        if coloured:
            b = self.functional(b, rng)
        if coloured and rng.random() < self.p_palette:
            rgb = render_palette(b, palettes()[rng.choice(sorted(palettes()))])
            b, mask = rgb_to_ycbcr(rgb)[..., 0] / 255.0, colour_weight(rgb)
        elif coloured:  # same palette: the colour follows the (blurred) uptake
            mask = np.where(b > 0, mask, 0.0)
        if rng.random() < self.p_noise:
            a = a + rng.normal(0, self.noise * rng.random(), a.shape)
            b = b + rng.normal(0, self.noise * rng.random(), b.shape)
        return (np.clip(a, 0, 1).astype(np.float32), np.clip(b, 0, 1).astype(np.float32),
                np.asarray(mask, np.float32))

    def mri(self, a: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        if rng.random() < self.p_invert:
            head = np.clip(cv2.GaussianBlur((a > 0.05).astype(np.float32), (0, 0), 2.0) * 2 - 0.5, 0, 1)
            a = head * (1.0 - a) * rng.uniform(0.7, 1.0)
        if rng.random() < self.p_gamma:
            a = np.clip(a, 0, 1) ** rng.uniform(*self.gamma)
        if rng.random() < self.p_bias:
            coarse = rng.uniform(-1, 1, (3, 3)).astype(np.float32)
            field = cv2.resize(coarse, a.shape[::-1], interpolation=cv2.INTER_CUBIC)
            a = a * (1 + self.bias * field / max(1e-6, float(np.abs(field).max())))
        return np.clip(a, 0, 1).astype(np.float32)

    def functional(self, b: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        b = b.astype(np.float32)
        if rng.random() < self.p_scale:
            b = b * rng.uniform(*self.scale)
        if rng.random() < self.p_blur:
            b = cv2.GaussianBlur(b, (0, 0), rng.uniform(*self.blur_sigma))
        return np.clip(b, 0, 1)


# Validation / evaluation copies: every change at once, always a new palette, no noise.
SHIFT = Augment(p_invert=0.5, p_gamma=0.8, p_bias=0.6, p_scale=0.8, p_blur=0.7, p_palette=1.0, p_noise=0.0)


def shifted_copies(a: np.ndarray, b: np.ndarray, mask: np.ndarray, seed: int, copies: int = 1) -> list[tuple]:
    """Deterministic transformed copies (float MRI, functional Y, mask) of one colour pair."""
    rng = np.random.default_rng(seed)
    return [SHIFT(a, b, mask, rng) for _ in range(copies)]


def shifted_rgb_pair(mri: np.ndarray, other_rgb: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray, str]:
    """A uint8 (MRI, functional RGB) pair as another subject/scanner might give it, and the
    palette used: for ``cminet evaluate --shifted``, where the colour metric needs RGB."""
    rng = np.random.default_rng(seed)
    pair = prepare_pair(mri, other_rgb)
    a, b = SHIFT.mri(pair.mri, rng), SHIFT.functional(pair.other, rng)
    name = str(rng.choice(sorted(palettes())))
    return np.clip(np.rint(a * 255), 0, 255).astype(np.uint8), render_palette(b, palettes()[name]), name
