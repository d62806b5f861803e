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
import inspect
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ..contract import IO_CHANNELS, IO_RANK, MIN_SIDE, ContractError, ShapeProfile, backend_spec
from ..errors import CMINetError, ImageError, ModelFileError, first_line


class BackendUnavailable(CMINetError):
    """The requested backend cannot run here (missing package, provider or GPU)."""


class Backend:
    """Runs the fusion network. Subclasses set ``name``, ``precision``, ``input_dtype`` and
    ``profile`` (their metadata) in ``__init__(path, name, <the options they honour>)`` and
    implement :meth:`run_impl`; :meth:`run` checks every call against that metadata once, for
    all backends (Polygraphy's ``BaseRunner.infer`` / ``infer_impl``)."""

    name = "abstract"
    precision = "fp32"
    input_dtype = np.dtype(np.float32)
    profile = ShapeProfile()
    config_json: str | None = None  # the CMINetConfig the model was exported from, where it says
    compiles_per_shape = False  # a new input shape costs a compilation (static shapes, CUDA graphs)

    def run(self, mri: np.ndarray, other: np.ndarray) -> np.ndarray:
        """float N×1×H×W arrays in [0, 1] → float32 N×1×H×W, device work finished."""
        for label, x in (("mri", mri), ("other", other)):
            if not isinstance(x, np.ndarray) or x.dtype not in (np.float32, np.float16):
                got = x.dtype if isinstance(x, np.ndarray) else type(x).__name__
                raise ImageError(f"{label}: expected a float32/float16 numpy array, got {got}")
            if x.ndim != IO_RANK or x.shape[1] != IO_CHANNELS:
                raise ImageError(f"{label}: expected shape N×1×H×W, got {x.shape}")
        if mri.shape != other.shape:
            raise ImageError(f"input shapes differ: mri {mri.shape}, other {other.shape}")
        if 0 in mri.shape:
            raise ImageError(f"mri: empty input of shape {mri.shape}")
        self.profile.check(mri.shape)
        if not (np.isfinite(mri).all() and np.isfinite(other).all()):
            raise ImageError("inputs contain NaN or Inf")
        a, b = (np.ascontiguousarray(x, dtype=self.input_dtype) for x in (mri, other))
        out = self.run_impl(a, b)
        model = getattr(self, "path", None) or self.name
        if not isinstance(out, np.ndarray) or out.dtype.kind != "f":
            got = out.dtype if isinstance(out, np.ndarray) else type(out).__name__
            raise ModelFileError(f"{model}: the model returned {got} for input {tuple(mri.shape)} "
                                 "(a cminet model returns float)")
        if out.shape != mri.shape:  # a graph that is not the fusion network
            raise ModelFileError(f"{model}: the model returned shape {tuple(out.shape)} for input "
                                 f"{tuple(mri.shape)} (a cminet model returns its input's shape)")
        return out.astype(np.float32, copy=False)

    def run_impl(self, mri: np.ndarray, other: np.ndarray) -> np.ndarray:
        """The network on checked, contiguous N×1×H×W arrays of ``input_dtype``."""
        raise NotImplementedError

    @classmethod
    def unavailable(cls, name: str) -> str | None:
        """Why backend ``name`` cannot run on this machine (a missing provider, GPU or
        driver), or None when it can; asked without a model file. Its packages are imported."""
        return None

    def info(self) -> dict:
        """Versions, providers, devices: what a bug report needs."""
        return {}

    def device_free_bytes(self) -> int | None:
        """Free memory on this backend's GPU now (None on the CPU, or where it cannot be read):
        the budget :class:`~cminet.runtime.tiling.SizePolicy` tiles against."""
        return None

    def gpu_memory_mb(self) -> float | None:
        """GPU memory this backend holds for its model and buffers (None on the CPU). Each
        backend reports the same quantity: memory allocated on the device by this process
        for the model (weights, activations / engine device memory, I/O buffers), not
        the whole device's use."""
        return None

    def close(self) -> None:
        pass


class ShapeCache(OrderedDict):
    """What a backend prepares per input shape at a cost (OpenVINO's static compilation,
    torch-cuda's CUDA graph): made on first sight of a shape, the last ``keep`` shapes used
    kept and older ones dropped (a device fuses one slice or tile size, so a few suffice).
    Not locked: the backend's own lock covers it with the run that uses the entry."""

    def __init__(self, keep: int, make: Callable[[tuple[int, ...]], Any],
                 release: Callable[[Any], None] | None = None):
        super().__init__()
        self.keep, self.make, self.release = keep, make, release

    def get_or_make(self, shape: tuple[int, ...]) -> Any:
        if shape in self:
            self.move_to_end(shape)
            return self[shape]
        value = self[shape] = self.make(shape)
        while len(self) > self.keep:
            _, dropped = self.popitem(last=False)
            if self.release is not None:
                self.release(dropped)
        return value


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


def backend_options(name: str) -> tuple[str, ...]:
    """The options backend ``name`` honours: its class's keyword parameters (so a backend
    declares them once, in its own ``__init__``). Imports the backend's module."""
    cls = _backend_class(name)
    params = list(inspect.signature(cls.__init__).parameters.values())[3:]  # self, path, name
    return tuple(p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY))


def _backend_class(name: str) -> type[Backend]:
    spec = backend_spec(name)
    missing = missing_requirement(name)
    if missing:
        raise BackendUnavailable(f"{name}: the {missing} package is not installed ({spec.install})")
    module_name, _, class_name = spec.opener.partition(":")
    return getattr(importlib.import_module(module_name), class_name)


def unavailable_reason(name: str) -> str | None:
    """Why backend ``name`` cannot run here, in one line (a package missing or broken, or the
    backend's own :meth:`Backend.unavailable`), or None when it can."""
    try:
        return _backend_class(name).unavailable(name)
    except BackendUnavailable as exc:
        return str(exc)
    except Exception as exc:  # noqa: BLE001 - a package that imports but fails: a reason, not a crash
        return f"{name}: {type(exc).__name__}: {first_line(exc)}"


def open_backend(name: str, path: str | Path, **options) -> Backend:
    """Open backend ``name`` on ``path`` (a file, or a server URL for ``triton``). A missing
    package is one line saying what to install; an option the backend does not honour is
    refused, never dropped (options left at None are not passed)."""
    cls = _backend_class(name)
    options = {key: value for key, value in options.items() if value is not None}
    accepted = backend_options(name)
    # A backend that cannot choose a precision runs the file's own: asking for another is refused.
    precision = None if "precision" in accepted else options.pop("precision", None)
    for key in options:
        if key not in accepted:
            offers = f"it takes {', '.join(accepted)}" if accepted else "it takes no options"
            raise ContractError(f"{key}: the {name} backend cannot honour this option ({offers})")
    backend = cls(path if backend_spec(name).runs == "url" else Path(path), name, **options)
    if precision is not None and precision != backend.precision:
        backend.close()
        raise ContractError(f"precision: {precision} asked for, but {path} is a {backend.precision} model "
                            f"({name} runs a model in its own precision)")
    return backend


__all__ = ["Backend", "BackendUnavailable", "ShapeCache", "backend_options", "missing_requirement", "open_backend",
           "profile_from_dims", "unavailable_reason"]
