"""cminet.runtime: the torch-free fusion runtime for devices (numpy + OpenCV + ONNX Runtime,
or TensorRT + cuda-python / pycuda). Importing it never imports PyTorch.

    from cminet.runtime import Fuser
    fused = Fuser().fuse(mri, pet)      # the shipped FP32 ONNX; Fuser("x.engine") for an engine

Names are resolved on first use, so ``import cminet.runtime`` itself is cheap.
"""

from __future__ import annotations

import importlib

_LAZY = {
    "BACKENDS": ".contract",
    "Fuser": ".fuser",
    "Comparison": ".compare",
    "compare": ".compare",
    "BackendUnavailable": ".backends.base",
    "CMINetError": ".errors",
    "ImageError": ".errors",
    "ModelFileError": ".errors",
    "OutputError": ".errors",
    "SizeLimitError": ".errors",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module 'cminet.runtime' has no attribute {name!r}")
