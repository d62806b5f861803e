"""The few CUDA calls the TensorRT backend and the engine builder need, behind one small
interface with two implementations:

* :class:`CudaPython`: NVIDIA's ``cuda.bindings.runtime`` (cuda-python 12.6.1 or newer;
  12.x for a CUDA 12 driver such as JetPack 6's, 13.x for a CUDA 13 driver);
* :class:`PyCuda`: pycuda, which older JetPack containers ship.

Threads: CUDA work needs the right device/context *on the calling thread*. Wrap every
block of calls (TensorRT ones included) in ``with cuda.activate():``, which makes this
object's device current there (cuda-python: ``cudaSetDevice``; pycuda: push the device's
primary context, pop it on exit), so any thread may use one :class:`CudaApi`.

Nothing is imported at module load, so the runtime stays importable without CUDA. Close
what :func:`open_cuda` returns (``with open_cuda(0) as cuda:``): it releases the pinned
buffers, streams and context retains it made.
"""

from __future__ import annotations

import contextlib
import ctypes
import threading
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import CMINetError

# cuda-python releases: cuda.bindings appeared in 12.6.1; 13.x needs a CUDA 13 driver.
CUDA_PYTHON_FOR_CUDA12 = "cuda-python>=12.6.1,<13"
CUDA_PYTHON_FOR_CUDA13 = "cuda-python>=13"


class CudaUnavailable(CMINetError):
    """No usable CUDA bindings or no GPU."""


class CudaCallFailed(CMINetError):
    """A CUDA call returned an error."""


@dataclass(frozen=True)
class DeviceInfo:
    name: str
    compute_capability: str  # "8.7" on Jetson Orin, "8.6" on an RTX 3090
    total_memory_mb: float


class CudaApi(ABC):
    """Device buffers, pinned host buffers, streams and async copies on one device."""

    name = "abstract"

    def __init__(self, device: int):
        self.device = device

    @abstractmethod
    def activate(self) -> contextlib.AbstractContextManager[None]:
        """Make this device current on the calling thread for the ``with`` block."""

    @abstractmethod
    def device_info(self) -> DeviceInfo: ...

    @abstractmethod
    def driver_version(self) -> str:
        """The newest CUDA the installed driver supports, e.g. "12.6" (JetPack 6)."""

    @abstractmethod
    def malloc(self, nbytes: int) -> int: ...

    @abstractmethod
    def free(self, ptr: int) -> None: ...

    @abstractmethod
    def pinned_empty(self, count: int, dtype: Any) -> np.ndarray:
        """A 1-D page-locked host array of ``count`` elements; free it with :meth:`free_pinned`."""

    @abstractmethod
    def free_pinned(self, array: np.ndarray) -> None: ...

    @abstractmethod
    def create_stream(self) -> Any: ...

    @abstractmethod
    def destroy_stream(self, stream: Any) -> None: ...

    @abstractmethod
    def stream_handle(self, stream: Any) -> int:
        """The raw ``cudaStream_t`` as an int, what TensorRT's ``execute_async_v3`` takes."""

    @abstractmethod
    def htod_async(self, dst: int, src: np.ndarray, stream: Any) -> None: ...

    @abstractmethod
    def dtoh_async(self, dst: np.ndarray, src: int, stream: Any) -> None: ...

    @abstractmethod
    def synchronize(self, stream: Any) -> None: ...

    @abstractmethod
    def mem_info(self) -> tuple[int, int]:
        """(free, total) bytes on this device."""

    @abstractmethod
    def close(self) -> None:
        """Release what this object still holds (pinned buffers, streams, context retains)."""

    def __enter__(self) -> CudaApi:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class CudaPython(CudaApi):
    """cuda-python's runtime bindings. Every call returns ``(err, *values)``; a non-zero
    ``err`` raises :class:`CudaCallFailed` naming the call and the error."""

    name = "cuda-python"

    def __init__(self, device: int = 0):
        super().__init__(device)
        try:
            from cuda.bindings import runtime as cudart
        except ImportError as exc:
            raise ImportError(explain_missing_bindings(), name=exc.name) from None
        import cuda.bindings

        self.rt = cudart
        self.version = str(getattr(cuda.bindings, "__version__", "?"))
        try:  # cuda-bindings 12.9.1 / 13.0: int(cudaStream_t) is deprecated in favour of this
            from cuda.bindings.utils import get_cuda_native_handle
        except ImportError:
            get_cuda_native_handle = int
        self._native_handle = get_cuda_native_handle
        self._pinned: dict[int, int] = {}  # id(array) → host pointer
        self._streams: list[Any] = []
        self._lock = threading.Lock()
        count = self._check("cudaGetDeviceCount", cudart.cudaGetDeviceCount())
        if not 0 <= device < count:
            raise CudaUnavailable(f"no CUDA device {device} (this machine has {count})")

    def _check(self, call: str, result: tuple) -> Any:
        err, *values = result
        if int(err) != 0:
            name = self.rt.cudaGetErrorName(err)[1]
            name = name.decode() if isinstance(name, bytes) else str(name)
            if name == "cudaErrorInsufficientDriver":
                raise CudaUnavailable(self._driver_mismatch())
            raise CudaCallFailed(f"{call} failed: {name}")
        return values[0] if len(values) == 1 else tuple(values)

    def _driver_mismatch(self) -> str:
        err, version = self.rt.cudaDriverGetVersion()
        driver = f"CUDA {_cuda_version(version)}" if int(err) == 0 else "an older CUDA"
        fix = CUDA_PYTHON_FOR_CUDA12 if int(err) == 0 and version < 13000 else "a cuda-python matching the driver"
        return (f"cuda-python {self.version} needs a newer driver than this one ({driver}): "
                f"pip install '{fix}'")

    @contextlib.contextmanager
    def activate(self) -> Iterator[None]:
        previous = self._check("cudaGetDevice", self.rt.cudaGetDevice())
        if previous != self.device:
            self._check("cudaSetDevice", self.rt.cudaSetDevice(self.device))
        try:
            yield
        finally:
            if previous != self.device:
                self._check("cudaSetDevice", self.rt.cudaSetDevice(previous))

    def device_info(self) -> DeviceInfo:
        prop = self._check("cudaGetDeviceProperties", self.rt.cudaGetDeviceProperties(self.device))
        raw = prop.name
        name = raw.decode(errors="replace") if isinstance(raw, bytes | bytearray) else str(raw)
        return DeviceInfo(name.rstrip("\x00"), f"{prop.major}.{prop.minor}", prop.totalGlobalMem / 2**20)

    def driver_version(self) -> str:
        return _cuda_version(self._check("cudaDriverGetVersion", self.rt.cudaDriverGetVersion()))

    def malloc(self, nbytes: int) -> int:
        return int(self._check("cudaMalloc", self.rt.cudaMalloc(max(nbytes, 1))))

    def free(self, ptr: int) -> None:
        self._check("cudaFree", self.rt.cudaFree(ptr))

    def pinned_empty(self, count: int, dtype: Any) -> np.ndarray:
        dtype = np.dtype(dtype)
        nbytes = max(count * dtype.itemsize, 1)
        ptr = int(self._check("cudaMallocHost", self.rt.cudaMallocHost(nbytes)))
        raw = (ctypes.c_ubyte * nbytes).from_address(ptr)
        array = np.frombuffer(raw, dtype=np.uint8, count=count * dtype.itemsize).view(dtype)
        with self._lock:
            self._pinned[id(array)] = ptr
        return array

    def free_pinned(self, array: np.ndarray) -> None:
        with self._lock:
            ptr = self._pinned.pop(id(array))
        self._check("cudaFreeHost", self.rt.cudaFreeHost(ptr))

    def create_stream(self) -> Any:
        stream = self._check("cudaStreamCreate", self.rt.cudaStreamCreate())
        with self._lock:
            self._streams.append(stream)
        return stream

    def destroy_stream(self, stream: Any) -> None:
        with self._lock:
            self._streams.remove(stream)
        self._check("cudaStreamDestroy", self.rt.cudaStreamDestroy(stream))

    def stream_handle(self, stream: Any) -> int:
        return int(self._native_handle(stream))

    def htod_async(self, dst: int, src: np.ndarray, stream: Any) -> None:
        kind = self.rt.cudaMemcpyKind.cudaMemcpyHostToDevice
        self._check("cudaMemcpyAsync", self.rt.cudaMemcpyAsync(dst, src.ctypes.data, src.nbytes, kind, stream))

    def dtoh_async(self, dst: np.ndarray, src: int, stream: Any) -> None:
        kind = self.rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        self._check("cudaMemcpyAsync", self.rt.cudaMemcpyAsync(dst.ctypes.data, src, dst.nbytes, kind, stream))

    def synchronize(self, stream: Any) -> None:
        self._check("cudaStreamSynchronize", self.rt.cudaStreamSynchronize(stream))

    def mem_info(self) -> tuple[int, int]:
        free, total = self._check("cudaMemGetInfo", self.rt.cudaMemGetInfo())
        return int(free), int(total)

    def close(self) -> None:
        with self._lock:
            streams, self._streams = self._streams, []
            pinned, self._pinned = self._pinned, {}
        for stream in streams:
            self.rt.cudaStreamDestroy(stream)
        for ptr in pinned.values():
            self.rt.cudaFreeHost(ptr)


class PyCuda(CudaApi):
    """pycuda's driver API on the device's primary context (the one the CUDA runtime and
    TensorRT use too). pycuda keeps a context stack per thread, so :meth:`activate` pushes
    the context on the calling thread and pops it again: no thread is left holding it."""

    name = "pycuda"

    def __init__(self, device: int = 0):
        super().__init__(device)
        import pycuda.driver as drv

        drv.init()
        if not 0 <= device < drv.Device.count():
            raise CudaUnavailable(f"no CUDA device {device} (this machine has {drv.Device.count()})")
        self.drv = drv
        self.ctx: Any = drv.Device(device).retain_primary_context()
        self._pinned: dict[int, Any] = {}  # id(array) → array (its .base is the HostAllocation)
        self._allocs: dict[int, Any] = {}
        self._streams: list[Any] = []
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def activate(self) -> Iterator[None]:
        self.ctx.push()
        try:
            yield
        finally:
            self.drv.Context.pop()

    def device_info(self) -> DeviceInfo:
        dev = self.drv.Device(self.device)
        major, minor = dev.compute_capability()
        return DeviceInfo(dev.name(), f"{major}.{minor}", dev.total_memory() / 2**20)

    def driver_version(self) -> str:
        return _cuda_version(self.drv.get_driver_version())

    def malloc(self, nbytes: int) -> int:
        alloc = self.drv.mem_alloc(max(nbytes, 1))
        with self._lock:
            self._allocs[int(alloc)] = alloc
        return int(alloc)

    def free(self, ptr: int) -> None:
        with self._lock:
            alloc = self._allocs.pop(ptr)
        alloc.free()

    def pinned_empty(self, count: int, dtype: Any) -> np.ndarray:
        array = self.drv.pagelocked_empty((count,), dtype)
        with self._lock:
            self._pinned[id(array)] = array
        return array

    def free_pinned(self, array: np.ndarray) -> None:
        with self._lock:
            owner = self._pinned.pop(id(array))
        owner.base.free()

    def create_stream(self) -> Any:
        stream = self.drv.Stream()
        with self._lock:
            self._streams.append(stream)
        return stream

    def destroy_stream(self, stream: Any) -> None:
        with self._lock:
            self._streams.remove(stream)

    def stream_handle(self, stream: Any) -> int:
        return int(stream.handle)

    def htod_async(self, dst: int, src: np.ndarray, stream: Any) -> None:
        self.drv.memcpy_htod_async(dst, src, stream)

    def dtoh_async(self, dst: np.ndarray, src: int, stream: Any) -> None:
        self.drv.memcpy_dtoh_async(dst, src, stream)

    def synchronize(self, stream: Any) -> None:
        stream.synchronize()

    def mem_info(self) -> tuple[int, int]:
        free, total = self.drv.mem_get_info()
        return int(free), int(total)

    def close(self) -> None:
        with self._lock:
            pinned, self._pinned = self._pinned, {}
            allocs, self._allocs = self._allocs, {}
            self._streams.clear()
        if pinned or allocs:
            with self.activate():
                for array in pinned.values():
                    array.base.free()
                for alloc in allocs.values():
                    alloc.free()
        self.ctx.detach()


def _cuda_version(encoded: int) -> str:
    """CUDA's integer version (1000 × major + 10 × minor) as "major.minor"."""
    return f"{encoded // 1000}.{encoded % 1000 // 10}"


def explain_missing_bindings() -> str:
    """Why ``cuda.bindings`` is missing: not installed, or a cuda-python before 12.6.1."""
    try:
        import cuda
        from cuda import cudart  # noqa: F401 - only there before 12.6.1
    except ImportError:
        return "cuda-python is not installed"
    old = getattr(cuda, "__version__", "< 12.6.1")
    return (f"cuda-python {old} predates cuda.bindings (12.6.1): pip install '{CUDA_PYTHON_FOR_CUDA12}' "
            f"for a CUDA 12 driver (JetPack 6), '{CUDA_PYTHON_FOR_CUDA13}' for a CUDA 13 one")


def open_cuda(device: int = 0) -> CudaApi:
    """cuda-python if it works here, else pycuda; :class:`CudaUnavailable` gives every reason
    when neither does (bindings missing or too old, driver too old, no GPU)."""
    reasons = []
    for cls in (CudaPython, PyCuda):
        api: CudaApi | None = None
        try:
            api = cls(device)
            api.device_info()
            return api
        except ImportError as exc:
            reasons.append(str(exc) if cls is CudaPython else f"pycuda not installed ({exc.name})")
        except Exception as exc:  # noqa: BLE001 - any driver error means "no usable GPU"
            reasons.append(f"{cls.name}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}")
        if api is not None:
            api.close()
    raise CudaUnavailable("no usable CUDA GPU: " + "; ".join(reasons))
