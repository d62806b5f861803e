"""cminet: CMINet medical image fusion, from PyTorch training to FP16 TensorRT engines.

The names below are imported lazily so that ``import cminet.runtime`` (the torch-free
device runtime, which lives under this package) never pulls in PyTorch.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_LAZY = {
    "CMINet": "cminet.model",
    "CMINetConfig": "cminet.model",
    "load_pretrained": "cminet.fusion",
    "fuse_arrays": "cminet.fusion",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'cminet' has no attribute {name!r}")
