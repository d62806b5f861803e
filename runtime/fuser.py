"""``Fuser``: what a device application embeds. numpy in, numpy out, no torch.

    from cminet.runtime import Fuser
    with Fuser("cminet_fp16.engine") as fuser:      # or "cminet.onnx"
        fused = fuser.fuse(mri_u8, pet_rgb_u8)      # uint8 RGB with PET colours restored

Every input is checked (dtype, rank, channels, sizes, NaN/Inf, the engine's profile) and a
bad one raises :class:`~cminet.runtime.errors.ImageError` (a ``ValueError``) before any GPU
work. Pre/post-processing is :mod:`cminet.runtime.imaging`, shared by every backend.
"""

from __future__ import annotations

import platform
from pathlib import Path

import numpy as np

from .backends.base import Backend, BackendUnavailable
from .errors import ImageError, ModelFileError
from .imaging import finish_output, prepare_pair

BACKENDS = ("auto", "ort-cpu", "ort-cuda", "ort-trt", "tensorrt")
ENGINE_SUFFIXES = (".engine", ".plan", ".trt")


def _open_backend(path: Path, backend: str, device: int, threads: int | None, optimization: str) -> Backend:
    is_engine = path.suffix.lower() in ENGINE_SUFFIXES
    if backend == "auto":
        if is_engine:
            backend = "tensorrt"
        else:
            from .backends.onnxruntime import best_onnx_backend

            backend = best_onnx_backend()
    if backend == "tensorrt":
        if not is_engine:
            raise BackendUnavailable(f"{path}: the tensorrt backend needs a .engine (build one with cminet-export)")
        from .backends.tensorrt import TensorRTBackend

        return TensorRTBackend(path, device)
    if is_engine:
        raise BackendUnavailable(f"{path}: {backend} runs .onnx files; use backend='tensorrt' for engines")
    if path.suffix.lower() != ".onnx":
        raise ModelFileError(f"{path}: expected a .onnx or .engine file")
    from .backends.onnxruntime import OnnxRuntimeBackend

    return OnnxRuntimeBackend(path, backend, device, threads, optimization)


class Fuser:
    """Fuse MRI with CT / PET / SPECT using an exported model.

    Args:
        path: ``.onnx`` (ONNX Runtime) or ``.engine`` (native TensorRT) file.
        backend: ``auto`` (engine → tensorrt; ONNX → ort-cuda if available, else ort-cpu),
            ``ort-cpu``, ``ort-cuda``, ``ort-trt`` or ``tensorrt``.
        device: CUDA device index.
        threads: CPU threads for ONNX Runtime (default: all cores).
        optimization: ONNX Runtime graph optimisation level: disable, basic, extended, all.
    """

    def __init__(self, path: str | Path, backend: str = "auto", device: int = 0, threads: int | None = None,
                 optimization: str = "all"):
        path = Path(path)
        if backend not in BACKENDS:
            raise BackendUnavailable(f"unknown backend {backend!r}; choose from {', '.join(BACKENDS)}")
        if not path.is_file():
            raise ModelFileError(f"{path}: no such model file")
        if path.stat().st_size == 0:
            raise ModelFileError(f"{path}: empty file")
        self.path = path
        self._backend: Backend | None = _open_backend(path, backend, device, threads, optimization)

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
            if x.ndim != 4 or x.shape[1] != 1:
                raise ImageError(f"{name}: expected shape N×1×H×W, got {x.shape}")
        if mri.shape != other.shape:
            raise ImageError(f"input shapes differ: mri {mri.shape}, other {other.shape}")
        self.backend.profile.check(mri.shape)
        if not (np.isfinite(mri).all() and np.isfinite(other).all()):
            raise ImageError("inputs contain NaN or Inf")
        dtype = self.backend.input_dtype
        return self.backend.run(np.ascontiguousarray(mri, dtype=dtype), np.ascontiguousarray(other, dtype=dtype))

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
        limit = self.backend.profile.max[0] if self.backend.profile.max else 16
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
