"""Native TensorRT backend: one engine, one execution context, one stream.

Written against the TensorRT 10.3 (JetPack 6) and 11.x Python API: tensors by name,
``set_input_shape`` + ``set_tensor_address`` + ``execute_async_v3``; nothing removed in 11
(``device_memory_size``, precision builder flags) is needed. Before the engine is
deserialised, its JSON sidecar (written by ``cminet-export`` / ``tensorrt_build``) must
match the engine file (sha256), this TensorRT version and this GPU (model and compute
capability): a mismatch is one clear line, never a crash or a "corrupt engine".

Buffers: one pinned host and one device buffer per tensor, sized for the largest input
seen so far and reused (views) for smaller ones; a larger shape frees both the device and
the pinned buffers before allocating new ones, so at most three of each are alive.

Threads: ``run`` may be called from any thread (the CUDA context is made current for the
call, see :mod:`cminet.runtime.cuda`); calls are serialised, one engine context cannot run
two inferences at once.
"""

from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path
from typing import Any

import numpy as np

from ..contract import (
    INPUT_NAMES,
    OUTPUT_NAME,
    SIDECAR_FORMAT,
    SIDECAR_KEYS,
    ContractError,
    ShapeProfile,
    sidecar_path,
    validate_profile,
)
from ..cuda import CudaApi, CudaUnavailable, DeviceInfo, open_cuda
from ..errors import ModelFileError, first_line
from .base import Backend, BackendUnavailable

INSTALL_HINT = "pip install 'cminet[trt]' on a desktop GPU; JetPack 6 ships TensorRT"


def import_tensorrt() -> Any:
    """The ``tensorrt`` module, or :class:`BackendUnavailable` saying why not. A ``tensorrt``
    folder without the bindings (``tensorrt-stubs`` alone makes one) does not count."""
    try:
        import tensorrt as trt
    except ImportError:
        raise BackendUnavailable(f"TensorRT is not installed ({INSTALL_HINT})") from None
    if not hasattr(trt, "Runtime"):
        raise BackendUnavailable(f"'tensorrt' here has no bindings (only type stubs?) ({INSTALL_HINT})")
    return trt


def tensorrt_status(device: int = 0) -> tuple[bool, str]:
    """(available, reason): can TensorRT build and run engines on CUDA device ``device`` here?
    Needs no torch and leaves nothing behind (the CUDA objects it opens are closed)."""
    try:
        trt = import_tensorrt()
    except BackendUnavailable as exc:
        return False, str(exc)
    try:
        with open_cuda(device) as cuda, cuda.activate():
            gpu = cuda.device_info()
    except CudaUnavailable as exc:
        return False, f"TensorRT {trt.__version__} is installed but {exc}"
    return True, f"TensorRT {trt.__version__} on {gpu.name} (compute capability {gpu.compute_capability}, {cuda.name})"


MAX_SIDECAR_BYTES = 1 << 20


def read_sidecar(engine_path: Path) -> dict:
    sidecar = sidecar_path(engine_path)
    if not sidecar.is_file():
        raise ModelFileError(f"{engine_path}: no {sidecar.name} beside it (build engines with cminet-export)")
    try:
        if sidecar.stat().st_size > MAX_SIDECAR_BYTES:
            raise ValueError(f"{sidecar.stat().st_size:,} bytes; a sidecar is a few hundred")
        meta = json.loads(sidecar.read_text())
    except (OSError, ValueError, RecursionError) as exc:  # RecursionError: JSON nested past Python's limit
        raise ModelFileError(f"{sidecar}: unreadable sidecar ({first_line(exc) or type(exc).__name__})") from None
    if not isinstance(meta, dict) or meta.get("format") != SIDECAR_FORMAT:
        raise ModelFileError(f"{sidecar}: not a cminet engine sidecar (format {SIDECAR_FORMAT} expected)")
    missing = [key for key in SIDECAR_KEYS if key not in meta]
    if missing:
        raise ModelFileError(f"{sidecar}: sidecar lacks {', '.join(missing)} (written by an older cminet?); "
                             "rebuild the engine with cminet-export --fp16 --engine yes")
    return meta


def check_compatible(engine_path: Path, meta: dict, engine_bytes: bytes, trt_version: str, gpu: DeviceInfo) -> None:
    """Refuse, in one line and before deserialising, an engine that is not the one its
    sidecar describes, or was built by another TensorRT or for another GPU: engines are
    tied to the TensorRT version and the GPU model that built them."""
    rebuild = "rebuild it here with cminet-export --fp16 --engine yes (or python -m cminet.export.tensorrt_build)"
    digest = hashlib.sha256(engine_bytes).hexdigest()
    if meta["engine_sha256"] != digest:
        raise ModelFileError(f"{engine_path}: the engine does not match its sidecar (sha256 {digest[:12]}…, "
                             f"sidecar says {str(meta['engine_sha256'])[:12]}…): stale or replaced engine; {rebuild}")
    built = str(meta["tensorrt_version"])
    if built.split(".")[:3] != trt_version.split(".")[:3]:
        raise ModelFileError(f"{engine_path}: built with TensorRT {built}, this is TensorRT {trt_version}; {rebuild}")
    built_gpu = meta["gpu"] if isinstance(meta["gpu"], dict) else {}
    if built_gpu.get("name") != gpu.name:
        raise ModelFileError(f"{engine_path}: built on {built_gpu.get('name') or 'an unnamed GPU'}, this GPU is "
                             f"{gpu.name}; engines are tied to the GPU model, {rebuild}")
    if built_gpu.get("compute_capability") != gpu.compute_capability:
        raise ModelFileError(f"{engine_path}: built for compute capability {built_gpu.get('compute_capability')}, "
                             f"this GPU is {gpu.compute_capability}; {rebuild}")


def engine_device_memory(engine: Any) -> int:
    """Activation memory an execution context of ``engine`` allocates (TensorRT 10.1+ has
    ``device_memory_size_v2``; ``device_memory_size`` is gone in 11)."""
    size = getattr(engine, "device_memory_size_v2", None)
    return int(size if size is not None else engine.device_memory_size)


class TensorRTBackend(Backend):
    name = "tensorrt"
    precision = "fp16"

    def __init__(self, path: str | Path, name: str = "tensorrt", device: int = 0):
        path = Path(path)
        meta = read_sidecar(path)
        trt = import_tensorrt()
        try:
            self.cuda: CudaApi | None = open_cuda(device)
        except CudaUnavailable as exc:
            raise BackendUnavailable(f"tensorrt: {exc}") from None
        self.trt, self.meta, self.device = trt, meta, device
        self.runtime: Any = None
        self.engine: Any = None
        self.context: Any = None
        self.stream: Any = None
        self._lock = threading.Lock()
        self._capacity = 0  # elements per tensor the current buffers hold
        self._host: dict[str, np.ndarray] = {}
        self._device_ptrs: dict[str, int] = {}
        try:
            with self.cuda.activate():
                self._load(path)
        except BaseException:
            self.close()
            raise

    def _load(self, path: Path) -> None:
        import tensorrt as trt

        assert self.cuda is not None
        self.gpu = self.cuda.device_info()
        engine_bytes = path.read_bytes()
        check_compatible(path, self.meta, engine_bytes, trt.__version__, self.gpu)
        free_before, _ = self.cuda.mem_info()
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self.logger)
        self.engine = self.runtime.deserialize_cuda_engine(engine_bytes)
        if self.engine is None:
            raise ModelFileError(f"{path}: TensorRT {trt.__version__} could not deserialise this engine although "
                                 "its sidecar matches (see TensorRT's log above)")
        names = {self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)}
        if names != {*INPUT_NAMES, OUTPUT_NAME}:
            raise ModelFileError(f"{path}: not a cminet engine (tensors {sorted(names)})")
        lo, opt, hi = (tuple(int(v) for v in dims) for dims in self.engine.get_tensor_profile_shape(INPUT_NAMES[0], 0))
        try:
            lo3, _, hi3 = validate_profile((lo[0], lo[2], lo[3]), (opt[0], opt[2], opt[3]), (hi[0], hi[2], hi[3]))
        except (ContractError, IndexError) as exc:
            raise ModelFileError(f"{path}: the engine's shape profile is not a cminet one ({exc})") from None
        self.profile = ShapeProfile(lo3, hi3)
        self.input_dtype = np.dtype(trt.nptype(self.engine.get_tensor_dtype(INPUT_NAMES[0])))
        self.output_dtype = np.dtype(trt.nptype(self.engine.get_tensor_dtype(OUTPUT_NAME)))
        self.context = self.engine.create_execution_context()
        self.stream = self.cuda.create_stream()
        # Weights + activation memory as the device saw them go: the drop in free memory
        # across deserialise + create_execution_context (the I/O buffers are counted apart).
        self._load_bytes = max(0, free_before - self.cuda.mem_info()[0])

    # -- buffers ------------------------------------------------------------------------
    def _release_buffers(self, cuda: CudaApi) -> None:
        for ptr in self._device_ptrs.values():
            cuda.free(ptr)
        for array in self._host.values():
            cuda.free_pinned(array)
        self._device_ptrs, self._host, self._capacity = {}, {}, 0

    def _buffers_for(self, shape: tuple[int, ...]) -> tuple[dict[str, np.ndarray], dict[str, int]]:
        """Pinned host views of ``shape`` and the device pointers, growing the buffers when
        ``shape`` has more elements than any before (the old ones are freed first)."""
        assert self.cuda is not None
        count = int(np.prod(shape))
        if count > self._capacity:
            self._release_buffers(self.cuda)
            dtypes = {**dict.fromkeys(INPUT_NAMES, self.input_dtype), OUTPUT_NAME: self.output_dtype}
            for tensor, dtype in dtypes.items():
                self._host[tensor] = self.cuda.pinned_empty(count, dtype)
                self._device_ptrs[tensor] = self.cuda.malloc(count * dtype.itemsize)
            self._capacity = count
        views = {tensor: array[:count].reshape(shape) for tensor, array in self._host.items()}
        return views, self._device_ptrs

    @classmethod
    def unavailable(cls, name: str) -> str | None:
        import_tensorrt()
        try:
            open_cuda(0).close()
        except CudaUnavailable as exc:
            return f"{name}: {exc}"
        return None

    # -- inference ----------------------------------------------------------------------
    def run_impl(self, mri: np.ndarray, other: np.ndarray) -> np.ndarray:
        if self.cuda is None or self.context is None:
            raise RuntimeError("this TensorRT backend is closed")
        shape = tuple(int(v) for v in mri.shape)
        with self._lock, self.cuda.activate():
            host, device = self._buffers_for(shape)
            for tensor, array in zip(INPUT_NAMES, (mri, other), strict=True):
                np.copyto(host[tensor], array, casting="same_kind")
                if not self.context.set_input_shape(tensor, shape):
                    raise ContractError(f"{tensor}: TensorRT rejected input shape {shape}")
                self.context.set_tensor_address(tensor, device[tensor])
                self.cuda.htod_async(device[tensor], host[tensor], self.stream)
            self.context.set_tensor_address(OUTPUT_NAME, device[OUTPUT_NAME])
            if not self.context.execute_async_v3(self.cuda.stream_handle(self.stream)):
                raise RuntimeError("TensorRT execute_async_v3 failed (see TensorRT's log above)")
            self.cuda.dtoh_async(host[OUTPUT_NAME], device[OUTPUT_NAME], self.stream)
            self.cuda.synchronize(self.stream)
            return host[OUTPUT_NAME].astype(np.float32)  # a copy: the pinned buffer is reused

    # -- reporting ----------------------------------------------------------------------
    def device_free_bytes(self) -> int | None:
        if self.cuda is None:
            return None
        with self.cuda.activate():
            return int(self.cuda.mem_info()[0])

    def io_buffer_bytes(self) -> int:
        return sum(self._capacity * a.dtype.itemsize for a in self._host.values())

    def gpu_memory_mb(self) -> float | None:
        """Device memory this backend allocated: the engine's weights and its context's
        activation memory (measured as the drop in free device memory while loading) plus
        the I/O buffers (counted exactly). Pinned host buffers are host memory: not in it."""
        if self.engine is None:
            return None
        return (self._load_bytes + self.io_buffer_bytes()) / 2**20

    def info(self) -> dict:
        return {"tensorrt": self.trt.__version__, "gpu": self.gpu.name, "device": self.device,
                "compute_capability": self.gpu.compute_capability,
                "cuda_bindings": self.cuda.name if self.cuda else None,
                "engine_built_with": self.meta.get("tensorrt_version"),
                "gpu_memory_mb": self.gpu_memory_mb(),
                "gpu_memory_parts_mb": {
                    "weights_and_activations_measured": self._load_bytes / 2**20 if self.engine else None,
                    "activations_reported": engine_device_memory(self.engine) / 2**20 if self.engine else None,
                    "io_buffers": self.io_buffer_bytes() / 2**20}}

    def close(self) -> None:
        """Free buffers, stream, context and engine, then the CUDA objects. Safe twice."""
        cuda, self.cuda = self.cuda, None
        if cuda is None:
            return
        try:
            with cuda.activate():
                self._release_buffers(cuda)
                if self.stream is not None:
                    cuda.destroy_stream(self.stream)
                # TensorRT frees the context's and the engine's device memory when the
                # Python objects go, which needs the context current: drop them here.
                self.context = self.engine = self.stream = None
                self.runtime = None
        finally:
            cuda.close()
