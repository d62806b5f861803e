"""The few CUDA calls the TensorRT backend needs, behind one small interface.

cuda-python (``cuda.bindings.runtime``, NVIDIA's official bindings) is used first; pycuda
is the fallback where that is what a device image has (older JetPack containers). Nothing
here imports at module load, so the runtime stays importable on machines without CUDA.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import CMINetError


class CudaUnavailable(CMINetError):
    """No CUDA bindings or no GPU."""


@dataclass(frozen=True)
class DeviceInfo:
    name: str
    compute_capability: str  # "8.7" on Jetson Orin, "8.6" on an RTX 3090
    total_memory_mb: float


class CudaApi:
    """Device buffers, pinned host buffers, one stream, async copies."""

    name = "abstract"

    def device_info(self, device: int) -> DeviceInfo: ...
    def malloc(self, nbytes: int) -> int: ...
    def free(self, ptr: int) -> None: ...
    def pinned_empty(self, shape, dtype) -> np.ndarray: ...
    def stream(self) -> int: ...
    def destroy_stream(self, stream: int) -> None: ...
    def htod_async(self, dst: int, src: np.ndarray, stream: int) -> None: ...
    def dtoh_async(self, dst: np.ndarray, src: int, stream: int) -> None: ...
    def synchronize(self, stream: int) -> None: ...
    def mem_used_mb(self) -> float: ...


class CudaPython(CudaApi):
    name = "cuda-python"

    def __init__(self, device: int = 0):
        from cuda.bindings import runtime as cudart

        self.rt = cudart
        self._check(cudart.cudaSetDevice(device))
        self._pinned: list[int] = []

    def _check(self, result):
        err, *rest = result if isinstance(result, tuple) else (result,)
        if int(err) != 0:
            name = self.rt.cudaGetErrorName(err)[1].decode()
            raise CudaUnavailable(f"CUDA call failed: {name}")
        return rest[0] if len(rest) == 1 else rest

    def device_info(self, device: int) -> DeviceInfo:
        prop = self._check(self.rt.cudaGetDeviceProperties(device))
        name = prop.name.decode(errors="replace").rstrip("\x00") if isinstance(prop.name, bytes) else str(prop.name)
        return DeviceInfo(name, f"{prop.major}.{prop.minor}", prop.totalGlobalMem / 2**20)

    def malloc(self, nbytes: int) -> int:
        return int(self._check(self.rt.cudaMalloc(max(nbytes, 1))))

    def free(self, ptr: int) -> None:
        self.rt.cudaFree(ptr)

    def pinned_empty(self, shape, dtype) -> np.ndarray:
        nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
        ptr = int(self._check(self.rt.cudaMallocHost(max(nbytes, 1))))
        self._pinned.append(ptr)
        buffer = (np.ctypeslib.as_array((np.ctypeslib.ctypes.c_byte * max(nbytes, 1)).from_address(ptr)))
        return buffer[:nbytes].view(dtype).reshape(shape)

    def stream(self) -> int:
        return int(self._check(self.rt.cudaStreamCreate()))

    def destroy_stream(self, stream: int) -> None:
        self.rt.cudaStreamDestroy(stream)

    def htod_async(self, dst: int, src: np.ndarray, stream: int) -> None:
        kind = self.rt.cudaMemcpyKind.cudaMemcpyHostToDevice
        self._check(self.rt.cudaMemcpyAsync(dst, src.ctypes.data, src.nbytes, kind, stream))

    def dtoh_async(self, dst: np.ndarray, src: int, stream: int) -> None:
        kind = self.rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        self._check(self.rt.cudaMemcpyAsync(dst.ctypes.data, src, dst.nbytes, kind, stream))

    def synchronize(self, stream: int) -> None:
        self._check(self.rt.cudaStreamSynchronize(stream))

    def mem_used_mb(self) -> float:
        free, total = self._check(self.rt.cudaMemGetInfo())
        return (total - free) / 2**20

    def close(self) -> None:
        for ptr in self._pinned:
            self.rt.cudaFreeHost(ptr)
        self._pinned.clear()


class PyCuda(CudaApi):
    name = "pycuda"

    def __init__(self, device: int = 0):
        import pycuda.driver as drv

        drv.init()
        self.drv = drv
        self.ctx = drv.Device(device).retain_primary_context()
        self.ctx.push()
        self._streams: dict[int, object] = {}
        self._allocs: dict[int, object] = {}

    def device_info(self, device: int) -> DeviceInfo:
        dev = self.drv.Device(device)
        major, minor = dev.compute_capability()
        return DeviceInfo(dev.name(), f"{major}.{minor}", dev.total_memory() / 2**20)

    def malloc(self, nbytes: int) -> int:
        alloc = self.drv.mem_alloc(max(nbytes, 1))
        self._allocs[int(alloc)] = alloc
        return int(alloc)

    def free(self, ptr: int) -> None:
        alloc = self._allocs.pop(ptr, None)
        if alloc is not None:
            alloc.free()

    def pinned_empty(self, shape, dtype) -> np.ndarray:
        return self.drv.pagelocked_empty(shape, dtype)

    def stream(self) -> int:
        s = self.drv.Stream()
        self._streams[s.handle] = s
        return s.handle

    def destroy_stream(self, stream: int) -> None:
        self._streams.pop(stream, None)

    def htod_async(self, dst: int, src: np.ndarray, stream: int) -> None:
        self.drv.memcpy_htod_async(dst, src, self._streams[stream])

    def dtoh_async(self, dst: np.ndarray, src: int, stream: int) -> None:
        self.drv.memcpy_dtoh_async(dst, src, self._streams[stream])

    def synchronize(self, stream: int) -> None:
        self._streams[stream].synchronize()

    def mem_used_mb(self) -> float:
        free, total = self.drv.mem_get_info()
        return (total - free) / 2**20

    def close(self) -> None:
        self.ctx.pop()


def open_cuda(device: int = 0) -> CudaApi:
    """cuda-python if importable, else pycuda; :class:`CudaUnavailable` explains when neither
    works (no bindings installed, or no GPU)."""
    reasons = []
    for cls in (CudaPython, PyCuda):
        try:
            api = cls(device)
            api.device_info(device)
            return api
        except ImportError as exc:
            reasons.append(f"{cls.name} not installed ({exc.name})")
        except Exception as exc:  # noqa: BLE001 - any driver error means "no usable GPU"
            reasons.append(f"{cls.name}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}")
    raise CudaUnavailable("no usable CUDA GPU: " + "; ".join(reasons))
