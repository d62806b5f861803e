"""A synthetic head for trying ``cminet fuse-volume`` without patient data: a T1-like MRI,
a CT in Hounsfield units and an FDG-like PET in Bq/ml, each on its own grid, orientation
and resolution, all drawn from one anatomy defined in world millimetres, so they are
co-registered by construction. A hot lesion sits at :data:`LESION_CENTRE`.

    python -m cminet.runtime.volume_phantom out/phantom     # mri.nii.gz, pet.nii.gz, ct.nii.gz

Not anatomy: ellipsoids for scalp, skull, brain, deep grey nuclei and ventricles, and a
sinusoidally folded grey-matter ribbon, enough to see whether fusion keeps structure and colour.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np

from .volume_io import Volume, save_nifti

LESION_CENTRE = np.array([46.0, 2.0, 6.0])  # world RAS mm: right hemisphere white matter, near the mid planes
LESION_RADIUS = 9.0  # mm
# Tissue values: (T1 MRI, CT HU, PET Bq/ml). T1: scalp fat brightest, white > grey > CSF,
# cortical bone dark. PET grey matter takes up ~3× white matter (FDG).
TISSUES = {
    "air": (0.0, -1000.0, 0.0),
    "scalp": (900.0, 30.0, 1500.0),
    "skull": (80.0, 1100.0, 600.0),
    "csf": (150.0, 8.0, 900.0),
    "grey": (420.0, 40.0, 11000.0),
    "white": (640.0, 28.0, 3800.0),
    "lesion": (460.0, 45.0, 32000.0),
}
COLUMN = {"mri": 0, "ct": 1, "pet": 2}
# The grids the timing in docs/volumes.md uses: a 256×256×150 MRI, a 128×128×90 PET.
GRIDS = {
    "mri": ((256, 256, 150), (1.0, 1.0, 1.2), "RAS"),
    "pet": ((128, 128, 90), (2.0, 2.0, 2.0), "LAS"),
    "ct": ((256, 256, 60), (0.9, 0.9, 3.0), "LPS"),
}


def grid_affine(shape, spacing, axcodes: str = "RAS", centre=(0.0, 0.0, 0.0)) -> np.ndarray:
    """An axis-aligned affine whose voxel grid is centred on ``centre`` (world mm)."""
    signs = {"R": 1, "L": -1, "A": 1, "P": -1, "S": 1, "I": -1}
    axes = {"R": 0, "L": 0, "A": 1, "P": 1, "S": 2, "I": 2}
    affine = np.eye(4)
    for column, code in enumerate(axcodes):
        affine[:3, column] = 0.0
        affine[axes[code], column] = signs[code] * spacing[column]
    affine[:3, 3] = np.asarray(centre, dtype=float) - affine[:3, :3] @ ((np.asarray(shape) - 1) / 2.0)
    return affine


def world_coordinates(shape, affine: np.ndarray, k: int) -> np.ndarray:
    """3×X×Y world coordinates of slice k."""
    i, j = np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing="ij")
    voxels = np.stack([i, j, np.full_like(i, k), np.ones_like(i)]).reshape(4, -1).astype(np.float64)
    return (affine @ voxels)[:3].reshape(3, *i.shape)


def tissue_slice(xyz: np.ndarray, column: int) -> np.ndarray:
    """Tissue values at world points xyz (3×...) for one modality column of TISSUES."""
    x, y, z = xyz
    value = {name: values[column] for name, values in TISSUES.items()}

    def inside(a, b, c, shift=(0.0, 0.0, 0.0)):
        return ((x - shift[0]) / a) ** 2 + ((y - shift[1]) / b) ** 2 + ((z - shift[2]) / c) ** 2 <= 1.0

    out = np.full(x.shape, value["air"], dtype=np.float32)
    out[inside(78, 98, 88, (0, 0, 5))] = value["scalp"]
    out[inside(72, 92, 82, (0, 0, 5))] = value["skull"]
    brain = inside(66, 86, 76, (0, 0, 5))
    out[brain] = value["csf"]
    # Grey matter: a folded ribbon under the brain surface (gyri as a sinusoidal depth).
    radius = np.sqrt((x / 66) ** 2 + (y / 86) ** 2 + ((z - 5) / 76) ** 2)
    azimuth, polar = np.arctan2(y, x), np.arctan2(np.hypot(x, y), z - 5)
    folds = 0.08 * np.sin(9 * azimuth) * np.sin(8 * polar)
    out[brain & (radius <= 0.97)] = value["grey"]
    out[brain & (radius <= 0.86 + folds)] = value["white"]
    # Deep grey nuclei and the lateral ventricles.
    out[inside(14, 18, 14, (-20, 0, 0)) | inside(14, 18, 14, (20, 0, 0))] = value["grey"]
    out[inside(7, 26, 12, (-9, 4, 14)) | inside(7, 26, 12, (9, 4, 14))] = value["csf"]
    lesion = np.sum((xyz - LESION_CENTRE.reshape(3, *([1] * (xyz.ndim - 1)))) ** 2, axis=0) <= LESION_RADIUS**2
    out[lesion] = value["lesion"]
    return out


def head_phantom(modality: str, shape=None, spacing=None, axcodes=None, centre=(0.0, 2.0, 4.0),
                 seed: int = 0) -> Volume:
    """One modality of the head on its grid (defaults: :data:`GRIDS`). PET is blurred to
    ~6 mm FWHM and gets count noise; MRI gets a smooth bias field and noise; CT noise."""
    default_shape, default_spacing, default_axcodes = GRIDS[modality]
    shape, spacing = tuple(shape or default_shape), tuple(spacing or default_spacing)
    affine = grid_affine(shape, spacing, axcodes or default_axcodes, centre)
    rng = np.random.default_rng(seed)
    data = np.empty(shape, dtype=np.float32)
    for k in range(shape[2]):
        data[:, :, k] = tissue_slice(world_coordinates(shape, affine, k), COLUMN[modality])
    if modality == "pet":
        sigma = 6.0 / 2.355  # FWHM 6 mm
        data = _blur(data, np.array(sigma) / np.asarray(spacing))
        data = np.maximum(data + rng.normal(0, 1, data.shape).astype(np.float32) * np.sqrt(data * 40.0), 0)
        return Volume(data.astype(np.float32), affine, source=f"phantom {modality}", units="BQML")
    if modality == "mri":
        x = np.linspace(-1, 1, shape[0])[:, None, None]
        bias = 1.0 + 0.12 * x + 0.06 * np.linspace(-1, 1, shape[2])[None, None, :]
        data = _blur(data, np.array([0.6, 0.6, 0.6])) * bias.astype(np.float32)
        data += rng.normal(0, 12, data.shape).astype(np.float32)
        return Volume(np.clip(data, 0, 4095).astype(np.int16), affine, source=f"phantom {modality}")
    data = data + rng.normal(0, 6, data.shape).astype(np.float32)
    return Volume(np.clip(data, -1024, 3071).astype(np.int16), affine, source=f"phantom {modality}", units="HU")


def _blur(data: np.ndarray, sigma_voxels) -> np.ndarray:
    """Separable Gaussian blur, sigma per axis in voxels."""
    out = data
    for axis, sigma in enumerate(sigma_voxels):
        if sigma <= 0:
            continue
        radius = max(1, int(round(3 * sigma)))
        kernel = cv2.getGaussianKernel(2 * radius + 1, float(sigma)).astype(np.float32).ravel()
        moved = np.moveaxis(out, axis, 0)
        flat = moved.reshape(moved.shape[0], -1)
        blurred = cv2.filter2D(flat, -1, kernel[:, None], borderType=cv2.BORDER_REPLICATE)
        out = np.moveaxis(blurred.reshape(moved.shape), 0, axis)
    return np.ascontiguousarray(out)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="folder for mri.nii.gz, pet.nii.gz and ct.nii.gz")
    args = parser.parse_args(argv)
    for modality in GRIDS:
        volume = head_phantom(modality)
        path = save_nifti(volume, args.out / f"{modality}.nii.gz")
        print(f"wrote {path} ({volume.describe()})")


if __name__ == "__main__":
    main()
