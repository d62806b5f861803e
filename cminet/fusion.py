"""Fusing images with the PyTorch model: the Python API and what ``cminet fuse`` runs.

    >>> import cminet, cv2
    >>> model = cminet.load_pretrained()          # shipped weights, eval mode
    >>> fused = cminet.fuse_arrays(model, mri, pet)  # uint8 in, uint8 out (RGB for PET)

Pre/post-processing (YCbCr, [0, 1] scaling, chroma restore) is
:mod:`cminet.runtime.imaging`, shared with the ONNX Runtime and TensorRT backends, so every
backend turns the same pixels into the same network inputs.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from cminet.checkpoint import load_checkpoint
from cminet.model import CMINet
from cminet.runtime.contract import SHIPPED_WEIGHTS, ContractError, shipped_dir
from cminet.runtime.errors import ModelFileError, SizeLimitError
from cminet.runtime.imaging import finish_fused, prepare_pair
from cminet.runtime.memory import NetworkShape
from cminet.runtime.tiling import SizePolicy, TilePlan, parse_tile, run_tiled

__all__ = ["DEFAULT_WEIGHTS", "TorchFuser", "fuse_arrays", "load_pretrained", "torch_device"]

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


def size_policy(model: CMINet) -> SizePolicy:
    """What fits in this machine's memory for ``model`` (CPU; a GPU's memory is not modelled)."""
    param = next(model.parameters())
    backend = "torch-cuda" if param.device.type == "cuda" else "torch-cpu"
    precision = "fp16" if param.dtype == torch.float16 else "fp32"
    config = model.config
    shape = NetworkShape(config.channels, config.num_heads, config.patch_size, config.kv_pool)
    return SizePolicy(backend, precision, shape, max_batch=1)


def fuse_arrays(model: CMINet, mri: np.ndarray, other: np.ndarray, tile: int | str | None = "auto") -> np.ndarray:
    """Fuse a uint8 MRI (grey) with a uint8 CT (grey) or PET/SPECT (RGB) image.

    Returns uint8: grey for a grey ``other``, RGB with ``other``'s chroma restored otherwise.
    ``tile`` as in :meth:`cminet.runtime.Fuser.fuse`: images too large for memory are fused
    in blended tiles (``"auto"``), refused (``"off"``), or tiled at a given side.
    """
    return _fuse(model, mri, other, tile)[0]


@torch.no_grad()
def _fuse(model: CMINet, mri: np.ndarray, other: np.ndarray, tile) -> tuple[np.ndarray, TilePlan | None]:
    if not isinstance(model, CMINet):
        raise ContractError(f"model: expected a CMINet (cminet.load_pretrained()), got {type(model).__name__}")
    tile = parse_tile(tile)
    pair = prepare_pair(mri, other)
    param = next(model.parameters())

    def infer(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        ta, tb = (torch.from_numpy(np.ascontiguousarray(x)).to(param.device, param.dtype) for x in (a, b))
        try:
            return model(ta, tb).float().cpu().numpy()
        except (torch.OutOfMemoryError, RuntimeError) as exc:
            if not isinstance(exc, torch.OutOfMemoryError) and "allocate" not in str(exc):
                raise
            raise SizeLimitError(f"out of {param.device.type.upper()} memory for a {a.shape[2]}×{a.shape[3]} "
                                 "image; fuse it in smaller tiles (tile=512, cminet fuse --tile 512)") from None

    plan = size_policy(model).plan(*pair.mri.shape, tile)
    if plan is None:
        fused = infer(pair.mri[None, None], pair.other[None, None])[0, 0]
    else:
        fused = run_tiled(infer, pair.mri, pair.other, plan)
    return finish_fused(fused, pair), plan


class TorchFuser:
    """The PyTorch model behind the same ``fuse(mri, other)`` call as the runtime's Fuser."""

    def __init__(self, weights: str | Path | None = None, device: str = "cpu"):
        self.model = load_pretrained(weights, device=device)
        self.last_plan: TilePlan | None = None

    def fuse(self, mri: np.ndarray, other: np.ndarray, tile: int | str | None = "auto") -> np.ndarray:
        fused, self.last_plan = _fuse(self.model, mri, other, tile)
        return fused


