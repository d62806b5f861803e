"""Fusing images with the PyTorch model: the Python API and what ``cminet fuse`` runs.

    >>> import cminet, cv2
    >>> model = cminet.load_pretrained()          # shipped weights, eval mode
    >>> fused = cminet.fuse_arrays(model, mri, pet)  # uint8 in, uint8 out (RGB for PET)

Pre/post-processing (YCbCr, [0, 1] scaling, chroma restore) is
:mod:`cminet.runtime.imaging`, shared with the ONNX Runtime and TensorRT backends, so every
backend turns the same pixels into the same network inputs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from tqdm import tqdm

from cminet.checkpoint import load_checkpoint
from cminet.model import CMINet
from cminet.runtime.errors import CMINetError, ModelFileError
from cminet.runtime.imaging import finish_output, prepare_pair, read_image, write_image

PACKAGE_DIR = Path(__file__).resolve().parent
DEFAULT_WEIGHTS = PACKAGE_DIR / "weights" / "cminet_default.safetensors"
SAMPLES_DIR = PACKAGE_DIR / "samples"


def load_pretrained(path: str | Path | None = None, device: str = "cpu") -> CMINet:
    """The shipped CMINet (or the checkpoint at ``path``) in eval mode."""
    path = Path(path) if path else DEFAULT_WEIGHTS
    if path == DEFAULT_WEIGHTS and not path.is_file():
        raise ModelFileError(f"{path}: the shipped weights are missing; reinstall cminet")
    return load_checkpoint(path, device=device)


@torch.no_grad()
def fuse_arrays(model: CMINet, mri: np.ndarray, other: np.ndarray) -> np.ndarray:
    """Fuse a uint8 MRI (grey) with a uint8 CT (grey) or PET/SPECT (RGB) image.

    Returns uint8: grey for a grey ``other``, RGB with ``other``'s chroma restored otherwise.
    """
    pair = prepare_pair(mri, other)
    device = next(model.parameters()).device
    a = torch.from_numpy(pair.mri)[None, None].to(device)
    b = torch.from_numpy(pair.other)[None, None].to(device)
    fused = model(a, b)[0, 0].float().cpu().numpy()
    return finish_output(fused, pair.chroma)


class Fuses(Protocol):
    """Anything that fuses two uint8 images: :class:`TorchFuser` or ``cminet.runtime.Fuser``."""

    def fuse(self, mri: np.ndarray, other: np.ndarray) -> np.ndarray: ...


class TorchFuser:
    """The PyTorch model behind the same ``fuse(mri, other)`` call as the runtime's Fuser."""

    def __init__(self, weights: str | Path | None = None, device: str = "cpu"):
        self.model = load_pretrained(weights, device=device)

    def fuse(self, mri: np.ndarray, other: np.ndarray) -> np.ndarray:
        return fuse_arrays(self.model, mri, other)


def fuse_files(fuser: Fuses, mri_path: str | Path, other_path: str | Path, out_path: str | Path) -> np.ndarray:
    """Read a pair, fuse it, write ``out_path`` atomically. Errors name the offending file."""
    mri, other = read_image(mri_path), read_image(other_path)
    try:
        fused = fuser.fuse(mri, other)
    except CMINetError as exc:
        raise CMINetError(f"{mri_path} + {other_path}: {exc}") from None
    write_image(out_path, fused)
    return fused


@dataclass
class BatchReport:
    written: list[Path] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)  # (pair, reason)


def fuse_folder(fuser: Fuses, refs, out_dir: str | Path, progress: bool = True) -> BatchReport:
    """Fuse every :class:`cminet.data.PairRef` into ``<out>/<pair>/<name>``; a bad pair is
    recorded and skipped, never fatal."""
    report = BatchReport()
    for ref in tqdm(refs, desc="fusing", unit="pair", disable=not progress):
        target = Path(out_dir) / ref.pair / Path(ref.name).with_suffix(".png").name
        try:
            fuse_files(fuser, ref.mri_path, ref.other_path, target)
            report.written.append(target)
        except (CMINetError, OSError) as exc:
            report.failed.append((f"{ref.pair}/{ref.name}", str(exc)))
    return report
