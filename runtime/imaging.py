"""Pre- and post-processing shared by every backend (PyTorch, ONNX Runtime, TensorRT).

numpy + OpenCV only: this module is part of the torch-free runtime.

Colour handling: PET and SPECT are pseudo-colour RGB. They are converted
to YCbCr with the full-range BT.601 (JPEG) matrix, the network fuses their Y with the MRI,
and the source Cb/Cr are put back. CT and MRI are grey.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from .errors import ImageError
from .files import write_bytes_atomic

MIN_SIZE = 16
MAX_SIDE = 8192  # larger sides are refused: one 8192² pair already needs GBs of activations

# Full-range BT.601 (ITU-R BT.601 luma weights, JPEG/JFIF offsets), values in 0..255.
_RGB_TO_YCBCR = np.array(
    [[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]], dtype=np.float32
)
_YCBCR_TO_RGB = np.array([[1.0, 0.0, 1.402], [1.0, -0.344136, -0.714136], [1.0, 1.772, 0.0]], dtype=np.float32)


def rgb_to_ycbcr(rgb: np.ndarray) -> np.ndarray:
    """H×W×3 RGB (0..255, any numeric dtype) → float32 H×W×3 YCbCr in 0..255."""
    ycc = rgb.astype(np.float32) @ _RGB_TO_YCBCR.T
    ycc[..., 1:] += 128.0
    return ycc


def ycbcr_to_rgb(ycc: np.ndarray) -> np.ndarray:
    """float32 H×W×3 YCbCr in 0..255 → float32 RGB in 0..255 (not clipped)."""
    centred = ycc.astype(np.float32).copy()
    centred[..., 1:] -= 128.0
    return centred @ _YCBCR_TO_RGB.T


def to_uint8(x: np.ndarray) -> np.ndarray:
    """Round and clip a 0..255 float array to uint8."""
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read an 8-bit grey or RGB image as uint8 H×W or H×W×3 (RGB order).

    Raises :class:`ImageError` naming the file for anything unreadable, truncated,
    16-bit, or with a channel count other than 1, 3 (or 4 with alpha, dropped)."""
    path = Path(path)
    if not path.is_file():
        raise ImageError(f"{path}: no such file")
    data = np.fromfile(path, dtype=np.uint8)
    image = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None
    if image is None:
        raise ImageError(f"{path}: not a readable image (corrupt, truncated or unsupported format)")
    if _is_truncated_png(path, data):
        raise ImageError(f"{path}: truncated PNG (the file ends before its IEND chunk)")
    if image.dtype != np.uint8:
        raise ImageError(f"{path}: {image.dtype} pixels ({image.dtype.itemsize * 8}-bit); convert to 8-bit first")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[..., 0]
    if image.ndim == 3:
        if image.shape[2] == 4:
            image = image[..., :3]
        if image.shape[2] != 3:
            raise ImageError(f"{path}: {image.shape[2]} channels; expected grey (1) or RGB (3)")
        image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
        if _is_grey(image):
            image = image[..., 0].copy()  # a grey image stored as RGB is still grey
    return image


def _is_truncated_png(path: Path, data: np.ndarray) -> bool:
    # OpenCV decodes a truncated PNG with only a warning, filling the rest with zeros.
    is_png = data[:8].tobytes() == b"\x89PNG\r\n\x1a\n"
    return is_png and b"IEND" not in data[-32:].tobytes()


def _is_grey(rgb: np.ndarray) -> bool:
    return bool(np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 1], rgb[..., 2]))


def write_image(path: str | os.PathLike, image: np.ndarray) -> None:
    """Write a uint8 grey or RGB image atomically (temp file + rename): a failure never
    leaves a partial file behind."""
    path = Path(path)
    bgr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR) if image.ndim == 3 else image
    ok, encoded = cv2.imencode(path.suffix or ".png", bgr)
    if not ok:
        raise ImageError(f"{path}: OpenCV cannot encode {path.suffix!r} images")
    write_bytes_atomic(path, encoded.tobytes())


@dataclass
class PreparedPair:
    """Network inputs for one pair plus what is needed to rebuild the output image."""

    mri: np.ndarray  # float32 H×W in [0, 1]
    other: np.ndarray  # float32 H×W in [0, 1]: CT, or the Y channel of PET/SPECT
    chroma: np.ndarray | None  # float32 H×W×2 Cb/Cr of the colour source, or None for grey


def validate_image(image: np.ndarray, name: str) -> None:
    """Check one uint8 input image; raise :class:`ImageError` with a one-line reason."""
    if not isinstance(image, np.ndarray):
        raise ImageError(f"{name}: expected a numpy array, got {type(image).__name__}")
    if image.dtype != np.uint8:
        raise ImageError(f"{name}: expected uint8 pixels, got {image.dtype}")
    if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (1, 3)):
        raise ImageError(f"{name}: expected H×W grey or H×W×3 RGB, got shape {image.shape}")
    h, w = image.shape[:2]
    if min(h, w) < MIN_SIZE or max(h, w) > MAX_SIDE:
        raise ImageError(f"{name}: size {h}×{w} is outside {MIN_SIZE}..{MAX_SIDE} pixels per side")


def prepare_pair(mri: np.ndarray, other: np.ndarray) -> PreparedPair:
    """uint8 MRI (grey; an RGB MRI is reduced to its Y) and uint8 CT / PET / SPECT →
    float network inputs in [0, 1] and the chroma to restore."""
    validate_image(mri, "MRI image")
    validate_image(other, "other image")
    if mri.shape[:2] != other.shape[:2]:
        raise ImageError(
            f"pair sizes differ: MRI is {mri.shape[0]}×{mri.shape[1]}, other is {other.shape[0]}×{other.shape[1]}"
            " (the pair must be co-registered to the same grid)"
        )
    mri_y = rgb_to_ycbcr(mri)[..., 0] if mri.ndim == 3 and mri.shape[2] == 3 else mri.reshape(mri.shape[:2])
    chroma = None
    if other.ndim == 3 and other.shape[2] == 3:
        ycc = rgb_to_ycbcr(other)
        other_y, chroma = ycc[..., 0], ycc[..., 1:]
    else:
        other_y = other.reshape(other.shape[:2])
    scale = np.float32(1.0 / 255.0)
    return PreparedPair(mri_y.astype(np.float32) * scale, other_y.astype(np.float32) * scale, chroma)


def finish_output(fused: np.ndarray, chroma: np.ndarray | None) -> np.ndarray:
    """Network output (H×W in [0, 1]) → uint8 grey, or RGB with the source chroma restored."""
    if not np.all(np.isfinite(fused)):
        raise ImageError("the model produced NaN or Inf (check the model file and inputs)")
    y = np.clip(fused.astype(np.float32), 0.0, 1.0) * 255.0
    if chroma is None:
        return to_uint8(y)
    return to_uint8(ycbcr_to_rgb(np.concatenate([y[..., None], chroma], axis=-1)))
