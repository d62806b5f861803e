"""Functional colour: CIELAB, and the colour hold that keeps a PET/SPECT colour scale true.

numpy + OpenCV only: part of the torch-free runtime.

Why a hold. The fused image takes its colour (Cb/Cr) from the PET/SPECT and its brightness
(Y) from the network. Where the network darkens the functional image's hot regions, yellow
reads olive and red dims: the colour scale, which is what a nuclear-medicine reader reads, no
longer tells the uptake. A loss term that asks the network to keep the functional image's
local brightness made it bistable inside the SPECT colour (all-MRI for some weights,
all-SPECT for others) and let a crop flip it (docs/colour-experiments.md). So the network's
output goes through a fixed base/detail step instead: on the functional source's coloured
pixels the fused Y takes its low-pass *base* from the functional image and keeps the
network's *detail* (everything finer than ``HOLD_SIGMA``, where the MRI's structure lives):

    y = f + w · G_σ ∗ (b − f)

with ``f`` the network output, ``b`` the functional Y, ``G_σ`` a Gaussian low-pass and ``w``
the hold weight, the product of two maps:

* colour (:func:`colour_weight`): 0 where the source is grey or dark (there the MRI shows as
  the network fused it), 1 from the colourfulness the colour metric counts as coloured
  (CIELAB chroma C*ab ≥ 20), linear in between so the step leaves no seam;
* structure (``1 −`` :func:`edge_release`): 0 on the MRI's edges, so anatomy stays visible
  inside the colour at the contrast the network gives it, 1 on the flat tissue between them,
  where the colour scale is read. Without it the hold replaced the MRI's edges inside SPECT
  by the SPECT's blur (validation SPECT Qabf 0.54 against the max rule's 0.66).

The step is local (a few px) and runs once on the whole fused image, after any tiling, so
the output does not depend on the field of view. CT and grey inputs have no weight map and
are left as the network made them. ``cminet train --colour-hold`` runs the same step in torch
(:func:`cminet.losses.colour_hold`), so the network learns to give the detail; the shipped
weights were trained through it, with ``--w-fov`` keeping their own output independent of
the field of view (docs/colour-experiments.md).

Colour space: CIE 1976 L*a*b* from sRGB (IEC 61966-2-1 transfer function and sRGB→XYZ
matrix, D65 white) with the CIE 15:2004 (§8.2.1) Lab formula.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from .errors import CMINetError

COLOURED_CHROMA = 20.0  # C*ab above which a functional pixel counts as coloured (metric and hold)
HOLD_FROM_CHROMA = 5.0  # C*ab at and below which the hold weight is 0 (grey, black, near-white)
HOLD_SIGMA = 2.0  # px: the Gaussian σ of the base the functional image keeps (chosen on validation)
HOLD_STRENGTH = 1.0  # share of the functional base the hold puts in (1: all of it where w = 1)
EDGE_TAU = 0.4  # MRI edge strength (3×3 Sobel magnitude, image in 0..1) released in full (validation)
EDGE_SIGMA = 1.0  # px: the edge map's smoothing, so the release has no hard rim
SOBEL_X = np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], dtype=np.float32)  # OpenCV's 3×3 Sobel

_SRGB_TO_XYZ = np.array([[0.4124564, 0.3575761, 0.1804375],
                         [0.2126729, 0.7151522, 0.0721750],
                         [0.0193339, 0.1191920, 0.9503041]])
_D65_WHITE = np.array([0.950456, 1.0, 1.088754])  # XYZ of the sRGB white, Y = 1


def srgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """uint8 (or 0–255 float) sRGB …×3 → CIE L*a*b* …×3 float64 (L in 0–100), D65."""
    c = np.asarray(rgb, dtype=np.float64) / 255.0
    linear = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    xyz = linear @ _SRGB_TO_XYZ.T / _D65_WHITE
    eps, kappa = (6 / 29) ** 3, (29 / 6) ** 2 / 3
    f = np.where(xyz > eps, np.cbrt(xyz), kappa * xyz + 4 / 29)
    lightness = 116 * f[..., 1] - 16
    return np.stack([lightness, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])], axis=-1)


def chroma(rgb: np.ndarray) -> np.ndarray:
    """CIELAB chroma C*ab = √(a*² + b*²) of sRGB …×3 (0 for grey)."""
    lab = srgb_to_lab(rgb)
    return np.hypot(lab[..., 1], lab[..., 2])


def colour_weight(rgb: np.ndarray) -> np.ndarray:
    """float32 …×H×W in [0, 1]: how coloured a PET/SPECT pixel is for the hold (0 at
    C*ab ≤ ``HOLD_FROM_CHROMA``, 1 at C*ab ≥ ``COLOURED_CHROMA``)."""
    ramp = (chroma(rgb) - HOLD_FROM_CHROMA) / (COLOURED_CHROMA - HOLD_FROM_CHROMA)
    return np.clip(ramp, 0.0, 1.0).astype(np.float32)


def edge_release(mri: np.ndarray) -> np.ndarray:
    """float32 H×W (or N×H×W) in [0, 1]: 1 on the MRI's edges (smoothed 3×3 Sobel magnitude
    ≥ ``EDGE_TAU``), 0 on flat tissue; ``mri`` float in [0, 1]."""
    mri = np.asarray(mri, dtype=np.float32)
    if mri.ndim == 3:
        return np.stack([edge_release(s) for s in mri])
    gx = cv2.filter2D(mri, cv2.CV_32F, SOBEL_X, borderType=cv2.BORDER_REFLECT_101)
    gy = cv2.filter2D(mri, cv2.CV_32F, SOBEL_X.T, borderType=cv2.BORDER_REFLECT_101)
    return np.clip(low_pass(np.hypot(gx, gy), EDGE_SIGMA) / EDGE_TAU, 0.0, 1.0)


def hold_weight(colour: np.ndarray, mri: np.ndarray) -> np.ndarray:
    """The hold's weight: :func:`colour_weight` of the functional source times one minus the
    MRI's :func:`edge_release` (float32, same shape)."""
    return (colour * (1.0 - edge_release(mri))).astype(np.float32)


def gaussian_kernel(sigma: float) -> np.ndarray:
    """The 1-D Gaussian of the hold (2⌈3σ⌉ + 1 taps, sums to 1), float64; the training loss
    builds its torch copy from this array so both filter with the same numbers."""
    size = 2 * math.ceil(3 * sigma) + 1
    return cv2.getGaussianKernel(size, sigma, cv2.CV_64F).ravel()


def low_pass(x: np.ndarray, sigma: float = HOLD_SIGMA) -> np.ndarray:
    """Gaussian low-pass of float H×W (or N×H×W, slice by slice), mirrored borders
    (OpenCV ``BORDER_REFLECT_101``, torch ``reflect``)."""
    kernel = gaussian_kernel(sigma)
    x = np.asarray(x, dtype=np.float32)
    if x.ndim == 2:
        return cv2.sepFilter2D(x, cv2.CV_32F, kernel, kernel, borderType=cv2.BORDER_REFLECT_101)
    return np.stack([low_pass(s, sigma) for s in x])


def hold_functional_base(fused: np.ndarray, functional: np.ndarray, weight: np.ndarray | None,
                         sigma: float = HOLD_SIGMA, strength: float | None = None) -> np.ndarray:
    """The colour hold: ``fused + s · weight · G_σ ∗ (functional − fused)`` on float H×W (or
    N×H×W) arrays in [0, 1], ``s`` the ``strength`` (None: :data:`HOLD_STRENGTH`); ``fused``
    unchanged (as float32) when ``weight`` is None or all 0."""
    fused = np.asarray(fused, dtype=np.float32)
    if weight is None or not np.any(weight):
        return fused
    if fused.shape != functional.shape or fused.shape != weight.shape:
        raise ValueError(f"colour hold: shapes differ (fused {fused.shape}, functional {functional.shape}, "
                         f"weight {weight.shape})")
    strength = HOLD_STRENGTH if strength is None else strength
    return fused + np.float32(strength) * weight * low_pass(functional - fused, sigma)


# Colour modes the user chooses. ``balanced`` (the default): the hold above. ``strict`` keeps the
# functional colour scale first: after the hold, wherever the fused brightness still exceeds the
# functional image's (a local mean over its coloured pixels, ``STRICT_SIGMA`` wide) it is pulled
# down to it, so a hot spot keeps its place on the colour scale; the MRI's detail stays as
# relative contrast. Measured on selection sets carved from the train split (the test split was
# not used): SPECT ColourDE 8.2 on validation (Laplacian 12.6) and 9.9 on every 4th training
# pair (14.4), at a mean rank of 2.50 and 2.25 against the max rule's 1.75 and 1.50
# (benchmarks/experiments/spect_recentring_grid.py, setting rc:8:1:0).
COLOUR_MODES = ("balanced", "strict")
STRICT_SIGMA = 8.0


def check_colour_mode(mode: str) -> str:
    if mode not in COLOUR_MODES:
        raise CMINetError(f"colour: expected one of {', '.join(COLOUR_MODES)}, got {mode!r}")
    return mode


def coloured_mean(x: np.ndarray, weight: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian mean of float H×W ``x`` over the pixels ``weight`` selects (normalised
    convolution), so the dark background outside the colour does not pull the mean down."""
    blurred_weight = low_pass(weight, sigma)
    return low_pass(np.asarray(x, np.float32) * weight, sigma) / np.maximum(blurred_weight, 1e-6)


def keep_colour_scale(fused: np.ndarray, functional: np.ndarray, colour: np.ndarray,
                      sigma: float = STRICT_SIGMA) -> np.ndarray:
    """The ``strict`` step on float H×W (or N×H×W) in [0, 1]: ``fused + c · min(0, mean_c(b − fused))``
    with ``c`` the colour weight and ``b`` the functional Y."""
    fused = np.asarray(fused, dtype=np.float32)
    if fused.ndim == 3:
        return np.stack([keep_colour_scale(f, b, c, sigma) for f, b, c in zip(fused, functional, colour, strict=True)])
    if not np.any(colour):
        return fused
    excess = np.minimum(0.0, coloured_mean(functional - fused, colour, sigma))
    return (fused + colour * excess).astype(np.float32)
