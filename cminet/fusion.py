"""The PyTorch model as a fuser: loading the shipped weights, and ``fuse_arrays`` for a
model in memory (it runs through the runtime's one pipeline, :class:`cminet.runtime.Fuser`,
on the ``torch-cpu`` / ``torch-cuda`` backend; ``Fuser("x.safetensors")`` does the same from a file).

    >>> import cminet, cv2
    >>> model = cminet.load_pretrained()          # shipped weights, eval mode
    >>> fused = cminet.fuse_arrays(model, mri, pet)  # uint8 in, uint8 out (RGB for PET)

Preparation, tiling, the colour hold and output are the Fuser's, shared with every backend.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from cminet.checkpoint import load_checkpoint
from cminet.model import CMINet
from cminet.runtime.contract import SHIPPED_WEIGHTS, ContractError, shipped_dir
from cminet.runtime.errors import ModelFileError

__all__ = ["DEFAULT_WEIGHTS", "fuse_arrays", "load_pretrained", "torch_device"]

DEFAULT_WEIGHTS = shipped_dir() / SHIPPED_WEIGHTS
DEVICE_CHOICES = "auto, cpu, cuda or cuda:N"


def torch_device(name: str, option: str = "device") -> torch.device:
    """'auto' (CUDA when present), 'cpu', 'cuda' or 'cuda:N' → a device this machine has, or
    a :class:`ContractError` naming ``option`` (never a CUDA traceback on a CPU machine)."""
    if isinstance(name, torch.device):
        name = str(name)
    if not isinstance(name, str):
        raise ContractError(f"{option}: expected {DEVICE_CHOICES}, got {name!r}")
    text = name.strip().lower()
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    kind, _, index = text.partition(":")
    if kind not in ("cpu", "cuda") or (index and not index.isdigit()) or (kind == "cpu" and index):
        raise ContractError(f"{option}: expected {DEVICE_CHOICES}, got {name!r}")
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise ContractError(f"{option} {name}: no CUDA GPU is visible to PyTorch (use cpu)")
        if index and int(index) >= torch.cuda.device_count():
            raise ContractError(f"{option} {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return torch.device(text)


def load_pretrained(path: str | Path | None = None, device: str = "cpu") -> CMINet:
    """The shipped CMINet (or the checkpoint at ``path``) in eval mode."""
    if path is not None and (not isinstance(path, str | os.PathLike) or str(path) == ""):
        raise ContractError(f"path: expected a .safetensors checkpoint path or None (the shipped weights), "
                            f"got {path!r}")
    device = torch_device(device)
    path = Path(path) if path else DEFAULT_WEIGHTS
    if path == DEFAULT_WEIGHTS and not path.is_file():
        raise ModelFileError(f"{path}: the shipped weights are missing; reinstall cminet")
    return load_checkpoint(path, device=device)


def fuse_arrays(model: CMINet, mri: np.ndarray, other: np.ndarray, tile: int | str | None = "auto") -> np.ndarray:
    """Fuse a uint8 MRI (grey) with a uint8 CT (grey) or PET/SPECT (RGB) image with an
    in-memory model, through the one pipeline (:class:`cminet.runtime.Fuser`).

    Returns uint8: grey for a grey ``other``, RGB with ``other``'s chroma restored otherwise.
    ``tile`` as in :meth:`cminet.runtime.Fuser.fuse`: images too large for memory are fused
    in blended tiles (``"auto"``), refused (``"off"``), or tiled at a given side.
    """
    from cminet.runtime import Fuser
    from cminet.torch_backend import TorchBackend

    if not isinstance(model, CMINet):
        raise ContractError(f"model: expected a CMINet (cminet.load_pretrained()), got {type(model).__name__}")
    return Fuser(TorchBackend.from_model(model)).fuse(mri, other, tile=tile)
