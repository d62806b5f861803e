"""Pre- and post-processing shared by every backend (PyTorch, ONNX Runtime, TensorRT).

numpy + OpenCV only: this module is part of the torch-free runtime.

Colour handling: PET and SPECT are pseudo-colour RGB. They are converted
to YCbCr with the full-range BT.601 (JPEG) matrix, the network fuses their Y with the MRI,
the colour hold (:mod:`cminet.runtime.colour`) gives the fused Y back the functional image's
local brightness on its coloured pixels, and the source Cb/Cr are put back. CT and MRI are
grey.
"""

from __future__ import annotations

import os
import struct
import tempfile
import threading
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from .colour import check_colour_mode, colour_weight, hold_functional_base, hold_weight, keep_colour_scale
from .contract import MIN_SIDE
from .errors import ImageError, OutputError
from .files import check_output, write_bytes_atomic
from .memory import check_fits, check_image_fits

MIN_SIZE = MIN_SIDE  # the network's smallest side (kept for callers of the old name)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

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
    corrupt, 16-bit, too large for memory, or with a channel count other than 1, 3 (or 4
    with alpha, dropped). A PNG's structure (chunk lengths and CRCs, IHDR, IEND) is checked
    before it is decoded, and what the C decoders would print is caught and folded into
    the one-line error, so nothing but that line reaches the terminal."""
    if not isinstance(path, str | os.PathLike):
        raise ImageError(f"path: expected an image file path, got {type(path).__name__}")
    path = Path(path)
    if not path.is_file():
        raise ImageError(f"{path}: no such file" if not path.exists() else f"{path}: not a regular file")
    check_fits(path.stat().st_size, f"{path}: a file of {path.stat().st_size:,} bytes")  # before reading it all
    data = np.fromfile(path, dtype=np.uint8)
    if data.size == 0:
        raise ImageError(f"{path}: empty file")
    if data[:8].tobytes() == PNG_SIGNATURE:
        height, width, channels = check_png(data.tobytes(), path)
        check_image_fits(height, width, f"{path}: a PNG")
    with native_messages() as messages:
        try:
            image = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
        except cv2.error as exc:  # e.g. more pixels than OpenCV allows
            image, messages = None, [_cv_reason(exc)]
    if image is None:
        reason = f" ({messages[0][:160]})" if messages else ""
        raise ImageError(f"{path}: not a readable image (corrupt, truncated or unsupported format){reason}")
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


def check_png(data: bytes, path: Path | str) -> tuple[int, int, int]:
    """Walk a PNG's chunks without decoding it: (height, width, samples per pixel), or
    :class:`ImageError` for a bad length, CRC, missing IHDR / IDAT / IEND or truncation."""
    pos, chunks, header = len(PNG_SIGNATURE), 0, None
    while True:
        if pos + 8 > len(data):
            raise ImageError(f"{path}: truncated PNG (the file ends before its IEND chunk)")
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        if length > 2**31 - 1 or not kind.isalpha():
            raise ImageError(f"{path}: corrupt PNG (bad chunk header at byte {pos})")
        end = pos + 8 + length + 4
        if end > len(data):
            raise ImageError(f"{path}: truncated PNG (the file ends inside its {kind.decode()} chunk)")
        body = data[pos + 8:pos + 8 + length]
        if zlib.crc32(kind + body) != struct.unpack(">I", data[end - 4:end])[0]:
            raise ImageError(f"{path}: corrupt PNG (CRC error in its {kind.decode()} chunk)")
        if chunks == 0:
            if kind != b"IHDR" or length != 13:
                raise ImageError(f"{path}: corrupt PNG (no IHDR chunk first)")
            width, height, depth, colour = struct.unpack(">IIBB", body[:10])
            if not (0 < width < 2**31 and 0 < height < 2**31) or colour not in _PNG_SAMPLES:
                raise ImageError(f"{path}: corrupt PNG (header says {width}×{height}, colour type {colour})")
            header = (height, width, _PNG_SAMPLES[colour] * max(1, depth // 8))
        elif kind == b"IEND":
            return header  # type: ignore[return-value]
        chunks += 1
        pos = end


_PNG_SAMPLES = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}  # PNG colour type → samples per pixel
_STDERR_LOCK = threading.Lock()

# OpenCV's log level lives in two places: cv2.utils.logging from 4.12 on (and only there in 5.x),
# cv2.getLogLevel / cv2.setLogLevel before that (4.8 on JetPack 6, 4.11 beside numpy < 2). The
# numbers are the same in both: cv::utils::logging::LOG_LEVEL_WARNING is 3.
if hasattr(cv2.utils, "logging"):
    _get_cv_log_level, _set_cv_log_level = cv2.utils.logging.getLogLevel, cv2.utils.logging.setLogLevel
else:
    _get_cv_log_level, _set_cv_log_level = cv2.getLogLevel, cv2.setLogLevel
_CV_LOG_LEVEL_WARNING = 3


@contextmanager
def native_messages() -> Iterator[list[str]]:
    """Collect what C libraries (libpng, libjpeg, OpenCV) print to file descriptor 2 inside
    the block instead of letting it reach the terminal; the lines are in the yielded list
    afterwards. Serialised by a lock: the descriptor is process-wide."""
    lines: list[str] = []
    previous = _get_cv_log_level()
    with _STDERR_LOCK, tempfile.TemporaryFile() as sink:
        try:
            saved = os.dup(2)
        except OSError:  # no stderr at all: nothing to protect
            yield lines
            return
        os.dup2(sink.fileno(), 2)
        _set_cv_log_level(_CV_LOG_LEVEL_WARNING)
        try:
            yield lines
        finally:
            _set_cv_log_level(previous)
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            lines.extend(line.strip() for line in sink.read().decode(errors="replace").splitlines() if line.strip())


def _cv_reason(exc: Exception) -> str:
    """The readable part of a cv2.error ('... error: (-215:Assertion failed) X in function Y')."""
    text = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
    return text.split(") ", 1)[-1].split(" in function")[0]


def _is_grey(rgb: np.ndarray) -> bool:
    return bool(np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 1], rgb[..., 2]))


def check_image_output(path: str | os.PathLike) -> Path:
    """Check an output image path before any work: a file type OpenCV can write (.png,
    .jpg, .tif, .bmp, .webp ...; no extension = PNG) and a path cminet may write (see
    :mod:`cminet.runtime.files`). Creates nothing."""
    path = check_output(path)
    suffix = path.suffix
    # Only the extension goes to OpenCV: a file name that is not valid UTF-8 crashes it.
    if suffix and not (suffix.isascii() and suffix.isprintable() and cv2.haveImageWriter(f"x{suffix}")):
        raise OutputError(f"{path}: cannot write {suffix!r} images; use .png (lossless), .tif or .bmp")
    return path


def write_image(path: str | os.PathLike, image: np.ndarray) -> None:
    """Write a uint8 grey or RGB image atomically (temp file + rename): a failure never
    leaves a partial file behind. No extension (``/dev/stdout``, a FIFO) means PNG."""
    path = check_image_output(path)
    if not (isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.size
            and (image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 3))):
        got = f"{image.dtype} {image.shape}" if isinstance(image, np.ndarray) else type(image).__name__
        raise ImageError(f"image: expected uint8 H×W grey or H×W×3 RGB, got {got}")
    bgr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR) if image.ndim == 3 else image
    try:
        ok, encoded = cv2.imencode(path.suffix or ".png", bgr)
    except cv2.error as exc:
        raise ImageError(f"{path}: OpenCV cannot encode this image ({_cv_reason(exc)})") from None
    if not ok:
        raise ImageError(f"{path}: OpenCV cannot encode {path.suffix or '.png'!r} images")
    write_bytes_atomic(path, encoded.tobytes())


@dataclass
class PreparedPair:
    """Network inputs for one pair plus what is needed to rebuild the output image."""

    # H×W for one pair; N×H×W when a volume's slices are stacked (runtime.volume)
    mri: np.ndarray  # float32 H×W in [0, 1]
    other: np.ndarray  # float32 H×W in [0, 1]: CT, or the Y channel of PET/SPECT
    chroma: np.ndarray | None  # float32 H×W×2 Cb/Cr of the colour source, or None for grey
    colour: np.ndarray | None = None  # float32 H×W colour weight (colour.colour_weight), None for grey

    @property
    def hold(self) -> np.ndarray | None:
        """The colour hold's weight (:func:`colour.hold_weight` of ``colour`` and ``mri``),
        None for grey; derived when the output is finished, so training data never pays for it."""
        return None if self.colour is None else hold_weight(self.colour, self.mri)


def validate_image(image: np.ndarray, name: str) -> None:
    """Check one uint8 input image; raise :class:`ImageError` with a one-line reason."""
    if not isinstance(image, np.ndarray):
        raise ImageError(f"{name}: expected a numpy array, got {type(image).__name__}")
    if image.dtype != np.uint8:
        raise ImageError(f"{name}: expected uint8 pixels, got {image.dtype}")
    if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (1, 3)):
        raise ImageError(f"{name}: expected H×W grey or H×W×3 RGB, got shape {image.shape}")
    h, w = image.shape[:2]
    if min(h, w) < MIN_SIDE:
        raise ImageError(f"{name}: size {h}×{w} is outside the accepted range (both sides ≥ {MIN_SIDE} pixels)")
    check_image_fits(h, w, name)


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
    scale = np.float32(1.0 / 255.0)
    mri_f = mri_y.astype(np.float32) * scale
    if other.ndim == 3 and other.shape[2] == 3:
        ycc = rgb_to_ycbcr(other)
        return PreparedPair(mri_f, ycc[..., 0] * scale, ycc[..., 1:], colour_weight(other))
    return PreparedPair(mri_f, other.reshape(other.shape[:2]).astype(np.float32) * scale, None)


def finish_fused(fused: np.ndarray, pair: PreparedPair, colour: str = "balanced") -> np.ndarray:
    """The network's output for ``pair`` (H×W, or N×H×W for stacked slices) → uint8 grey or
    RGB: the colour hold (and with ``colour="strict"`` the colour scale kept first:
    :func:`~cminet.runtime.colour.keep_colour_scale`), then :func:`finish_output`. Every
    cminet path (torch, ONNX Runtime, OpenVINO, TensorRT, Triton, volumes) ends here;
    classical rules call finish_output (which also refuses NaN / Inf: the hold's low-pass
    carries any along). CT and other grey pairs are the same in both modes."""
    held = hold_functional_base(fused, pair.other, pair.hold)
    if check_colour_mode(colour) == "strict" and pair.colour is not None:
        held = keep_colour_scale(held, pair.other, pair.colour)
    return finish_output(held, pair.chroma)


def finish_output(fused: np.ndarray, chroma: np.ndarray | None) -> np.ndarray:
    """Network output (H×W in [0, 1]) → uint8 grey, or RGB with the source chroma restored."""
    if not np.all(np.isfinite(fused)):
        raise ImageError("the model produced NaN or Inf (check the model file and inputs)")
    y = np.clip(fused.astype(np.float32), 0.0, 1.0) * 255.0
    if chroma is None:
        return to_uint8(y)
    return to_uint8(ycbcr_to_rgb(np.concatenate([y[..., None], chroma], axis=-1)))
