"""Fusing images with the PyTorch model: the Python API and what ``cminet fuse`` runs.

    >>> import cminet, cv2
    >>> model = cminet.load_pretrained()          # shipped weights, eval mode
    >>> fused = cminet.fuse_arrays(model, mri, pet)  # uint8 in, uint8 out (RGB for PET)

Pre/post-processing (YCbCr, [0, 1] scaling, chroma restore) is
:mod:`cminet.runtime.imaging`, shared with the ONNX Runtime and TensorRT backends, so every
backend turns the same pixels into the same network inputs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from cminet.checkpoint import load_checkpoint
from cminet.model import CMINet
from cminet.runtime.contract import SHIPPED_WEIGHTS, shipped_dir
from cminet.runtime.errors import ModelFileError
from cminet.runtime.imaging import finish_output, prepare_pair

__all__ = ["DEFAULT_WEIGHTS", "TorchFuser", "fuse_arrays", "load_pretrained"]

DEFAULT_WEIGHTS = shipped_dir() / SHIPPED_WEIGHTS


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


class TorchFuser:
    """The PyTorch model behind the same ``fuse(mri, other)`` call as the runtime's Fuser."""

    def __init__(self, weights: str | Path | None = None, device: str = "cpu"):
        self.model = load_pretrained(weights, device=device)

    def fuse(self, mri: np.ndarray, other: np.ndarray) -> np.ndarray:
        return fuse_arrays(self.model, mri, other)


