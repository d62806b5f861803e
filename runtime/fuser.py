"""``Fuser``: what a device application embeds. numpy in, numpy out, no torch.

    from cminet.runtime import Fuser
    fused = Fuser().fuse(mri_u8, pet_rgb_u8)        # the shipped FP32 ONNX on ONNX Runtime
    with Fuser("cminet_fp16.engine") as fuser:      # or any exported .onnx / .engine
        fused = fuser.fuse(mri_u8, pet_rgb_u8)      # uint8 RGB with PET colours restored

Every input is checked (dtype, rank, channels, sizes, NaN/Inf, the engine's profile) and a
bad one raises :class:`~cminet.runtime.errors.ImageError` (a ``ValueError``) before any GPU
work. Pre/post-processing is :mod:`cminet.runtime.imaging`, shared by every backend.
"""

from __future__ import annotations

import platform
from pathlib import Path

import numpy as np

from .backends.base import Backend, BackendUnavailable, open_backend
from .contract import AUTO, BACKEND_CHOICES, BACKENDS, IO_CHANNELS, IO_RANK, ContractError, model_kind, shipped_onnx
from .errors import ImageError, ModelFileError
from .imaging import finish_output, prepare_pair

DEFAULT_BATCH_LIMIT = 16  # pairs per run when the model has no profile limit


def resolve_backend(kind: str, backend: str) -> str:
    """The backend ``auto`` means for a model file of ``kind``, or a clear refusal when
    ``backend`` cannot run that kind of file."""
    if backend == AUTO:
        if kind == "engine":
            return "tensorrt"
        if kind == "weights":
            return "torch-cpu"
        from .backends.onnxruntime import best_onnx_backend

        return best_onnx_backend()
    runs = BACKENDS[backend].runs
    if runs != kind:
        wanted = {"onnx": "a .onnx file", "engine": "a .engine file", "weights": "a .safetensors checkpoint"}[runs]
        raise BackendUnavailable(f"backend {backend!r} runs {wanted}, not a {kind} file")
    return backend


class Fuser:
    """Fuse MRI with CT / PET / SPECT using an exported model.

    Args:
        path: ``.onnx`` (ONNX Runtime) or ``.engine`` (native TensorRT) file; default: the
            ONNX shipped with cminet in ``precision``.
        backend: ``auto`` (engine → tensorrt; ONNX → ort-cuda if available, else ort-cpu)
            or a name from :data:`cminet.runtime.contract.BACKENDS`.
        precision: ``fp32`` or ``fp16``: which shipped ONNX to load when ``path`` is None.
        device: CUDA device index.
        threads: CPU threads for ONNX Runtime (default: all cores).
        optimization: ONNX Runtime graph optimisation level: disable, basic, extended, all.
    """

    def __init__(self, path: str | Path | None = None, backend: str = AUTO, precision: str = "fp32", device: int = 0,
                 threads: int | None = None, optimization: str = "all"):
        if backend not in BACKEND_CHOICES:
            raise ContractError(f"backend: expected one of {', '.join(BACKEND_CHOICES)}, got {backend!r}")
        if not isinstance(device, int) or isinstance(device, bool) or device < 0:
            raise ContractError(f"device: expected a CUDA device index ≥ 0, got {device!r}")
        if path is None:
            path = shipped_onnx(precision)
            if not path.is_file():
                raise ModelFileError(f"{path}: the shipped ONNX is missing; reinstall cminet")
        elif not isinstance(path, str | Path):
            raise ContractError(f"path: expected a model file path, got {type(path).__name__}")
        path = Path(path)
        if not path.is_file():
            raise ModelFileError(f"{path}: no such model file")
        if path.stat().st_size == 0:
            raise ModelFileError(f"{path}: empty file")
        name = resolve_backend(model_kind(path), backend)
        self.path = path
        self._backend: Backend | None = open_backend(name, path, device=device, threads=threads,
                                                     optimization=optimization, precision=precision)

    @property
    def backend(self) -> Backend:
        if self._backend is None:
            raise RuntimeError("this Fuser is closed")
        return self._backend

    # -- the raw network call ------------------------------------------------------------
    def infer(self, mri: np.ndarray, other: np.ndarray) -> np.ndarray:
        """The network on float N×1×H×W arrays in [0, 1]; returns float32 N×1×H×W."""
        for name, x in (("mri", mri), ("other", other)):
            if not isinstance(x, np.ndarray) or x.dtype not in (np.float32, np.float16):
                got = x.dtype if isinstance(x, np.ndarray) else type(x).__name__
                raise ImageError(f"{name}: expected a float32/float16 numpy array, got {got}")
            if x.ndim != IO_RANK or x.shape[1] != IO_CHANNELS:
                raise ImageError(f"{name}: expected shape N×1×H×W, got {x.shape}")
        if mri.shape != other.shape:
            raise ImageError(f"input shapes differ: mri {mri.shape}, other {other.shape}")
        self.backend.profile.check(mri.shape)
        if not (np.isfinite(mri).all() and np.isfinite(other).all()):
            raise ImageError("inputs contain NaN or Inf")
        dtype = self.backend.input_dtype
        out = self.backend.run(np.ascontiguousarray(mri, dtype=dtype), np.ascontiguousarray(other, dtype=dtype))
        if out.shape != mri.shape:
            raise ModelFileError(f"{self.path}: the model returned shape {tuple(out.shape)} for input "
                                 f"{tuple(mri.shape)} (a cminet model returns its input's shape)")
        return out

    # -- images in, images out -----------------------------------------------------------
    def fuse(self, mri: np.ndarray, other: np.ndarray) -> np.ndarray:
        """uint8 MRI (grey) + uint8 CT (grey) or PET/SPECT (RGB) → uint8 grey or RGB."""
        pair = prepare_pair(mri, other)
        out = self.infer(pair.mri[None, None], pair.other[None, None])
        return finish_output(out[0, 0], pair.chroma)

    def fuse_batch(self, pairs: list[tuple[np.ndarray, np.ndarray]]) -> list[np.ndarray]:
        """Fuse many pairs; pairs of one size run as one batch (split at the profile's N)."""
        prepared = [prepare_pair(m, o) for m, o in pairs]
        results: list[np.ndarray | None] = [None] * len(prepared)
        by_size: dict[tuple[int, int], list[int]] = {}
        for i, p in enumerate(prepared):
            by_size.setdefault(p.mri.shape, []).append(i)
        limit = self.backend.profile.max[0] if self.backend.profile.max else DEFAULT_BATCH_LIMIT
        for indices in by_size.values():
            for start in range(0, len(indices), limit):
                chunk = indices[start : start + limit]
                a = np.stack([prepared[i].mri for i in chunk])[:, None]
                b = np.stack([prepared[i].other for i in chunk])[:, None]
                out = self.infer(a, b)
                for k, i in enumerate(chunk):
                    results[i] = finish_output(out[k, 0], prepared[i].chroma)
        return results  # type: ignore[return-value]

    @property
    def info(self) -> dict:
        b = self.backend
        profile = {"min_nhw": list(b.profile.min), "max_nhw": list(b.profile.max) if b.profile.max else None}
        return {"model": str(self.path), "backend": b.name, "precision": b.precision,
                "input_dtype": b.input_dtype.name, "profile": profile, "python": platform.python_version(),
                "numpy": np.__version__, **b.info()}

    def close(self) -> None:
        """Release the session / engine and any GPU memory. Safe to call twice."""
        if self._backend is not None:
            self._backend.close()
            self._backend = None

    def __enter__(self) -> Fuser:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        state = f"{self._backend.name}, {self._backend.precision}" if self._backend else "closed"
        return f"Fuser({str(self.path)!r}, {state})"
