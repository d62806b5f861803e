"""The one interface every inference backend implements (Polygraphy's runners), and the
registry that opens them by name.

A backend takes N×1×H×W arrays of its ``input_dtype`` and returns float32 N×1×H×W, with
all device work finished (synchronised) before ``run`` returns. ONNX Runtime and TensorRT
live in :mod:`cminet.runtime.backends`; the PyTorch reference lives on the torch side
(:mod:`cminet.torch_backend`) and is opened through the same registry, by its import path
in :data:`cminet.runtime.contract.BACKENDS`, so the runtime itself never imports torch.
"""

from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path

import numpy as np

from ..contract import MIN_SIDE, ShapeProfile, backend_spec
from ..errors import CMINetError


class BackendUnavailable(CMINetError):
    """The requested backend cannot run here (missing package, provider or GPU)."""


class Backend:
    """Runs the fusion network. Subclasses set ``name``, ``precision``, ``input_dtype`` and
    ``profile`` in ``__init__(path, name, **options)``."""

    name = "abstract"
    precision = "fp32"
    input_dtype = np.dtype(np.float32)
    profile = ShapeProfile()
    config_json: str | None = None  # the CMINetConfig the model was exported from, where it says

    def run(self, mri: np.ndarray, other: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def info(self) -> dict:
        """Versions, providers, devices: what a bug report needs."""
        return {}

    def gpu_memory_mb(self) -> float | None:
        """GPU memory this backend holds for its model and buffers (None on the CPU). Each
        backend reports the same quantity: memory allocated on the device by this process
        for the model (weights, activations / engine device memory, I/O buffers), not
        the whole device's use."""
        return None

    def close(self) -> None:
        pass


UNBOUNDED = 2**31 - 1  # a dynamic dimension beside fixed ones


def profile_from_dims(dims) -> ShapeProfile:
    """The N×H×W range an N×1×H×W input with these dimensions (ints where fixed, anything
    else where dynamic) accepts: any, for cminet's dynamic export."""
    n, _, h, w = (d if isinstance(d, int) and d > 0 else None for d in dims)
    lo = (n or 1, h or MIN_SIDE, w or MIN_SIDE)
    if n is None and h is None and w is None:
        return ShapeProfile(lo)
    return ShapeProfile(lo, (n or UNBOUNDED, h or UNBOUNDED, w or UNBOUNDED))


def missing_requirement(name: str) -> str | None:
    """The first module backend ``name`` needs that is not installed, else None."""
    for module in backend_spec(name).requires:
        if importlib.util.find_spec(module.split(".")[0]) is None:
            return module
    return None


def open_backend(name: str, path: str | Path, **options) -> Backend:
    """Open backend ``name`` on ``path``; a missing package is one line saying what to install."""
    spec = backend_spec(name)
    missing = missing_requirement(name)
    if missing:
        raise BackendUnavailable(f"{name}: the {missing} package is not installed ({spec.install})")
    module_name, _, class_name = spec.opener.partition(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    return cls(Path(path), name, **options)


__all__ = ["Backend", "BackendUnavailable", "missing_requirement", "open_backend", "profile_from_dims"]
