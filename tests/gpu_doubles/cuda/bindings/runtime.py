"""Test double of ``cuda.bindings.runtime`` (cuda-python 12.6.1+ and 13.x), the subset
cminet calls, with the bindings' calling convention: every function returns a tuple whose
first item is a ``cudaError_t`` (``(err,)`` when there is nothing else to return), errors
are return values, never exceptions.

Source of the shapes: the cuda-python API reference for ``cuda.bindings.runtime``
(cudaMalloc → ``(err, devPtr: int)``, cudaStreamCreate → ``(err, cudaStream_t)``,
cudaMemGetInfo → ``(err, free, total)``, cudaGetErrorName → ``(err, bytes)``) and the
cuda-bindings 13.0.0 release notes (``int(cudaStream_t)`` deprecated in favour of
``cuda.bindings.utils.get_cuda_native_handle``; this double warns on ``int()`` in its 13
flavour so a test can insist on the new call). Bindings for a newer CUDA than the driver
supports fail every call with ``cudaErrorInsufficientDriver`` (35), as the real ones do.
"""

from __future__ import annotations

import enum
import warnings

import fake_gpu

_GPU = fake_gpu.gpu()
_NEEDS_MAJOR = {"cuda-python-12.6": 12, "cuda-python-13": 13}[_GPU.config.cuda or ""]


class cudaError_t(enum.IntEnum):  # noqa: N801 - the bindings' names
    cudaSuccess = 0
    cudaErrorInvalidValue = 1
    cudaErrorMemoryAllocation = 2
    cudaErrorInsufficientDriver = 35
    cudaErrorNoDevice = 100
    cudaErrorInvalidDevice = 101
    cudaErrorDeviceUninitialized = 201
    cudaErrorInvalidResourceHandle = 400


class cudaMemcpyKind(enum.IntEnum):  # noqa: N801
    cudaMemcpyHostToHost = 0
    cudaMemcpyHostToDevice = 1
    cudaMemcpyDeviceToHost = 2
    cudaMemcpyDeviceToDevice = 3
    cudaMemcpyDefault = 4


class cudaStream_t:  # noqa: N801
    def __init__(self, init_value: int = 0):
        self._handle = int(init_value)

    def __int__(self) -> int:
        if _NEEDS_MAJOR >= 13:
            warnings.warn("int(cudaStream_t) is deprecated; use cuda.bindings.utils.get_cuda_native_handle",
                          DeprecationWarning, stacklevel=2)
        return self._handle

    def getPtr(self) -> int:  # noqa: N802
        return id(self)

    def __eq__(self, other) -> bool:
        return isinstance(other, cudaStream_t) and other._handle == self._handle

    def __hash__(self) -> int:
        return hash(self._handle)


class cudaDeviceProp:  # noqa: N801
    def __init__(self, device: fake_gpu.Device):
        self.name = device.name.encode().ljust(256, b"\x00")  # char[256] in the C struct
        self.major, self.minor = device.compute_capability
        self.totalGlobalMem = device.total


def _call(name: str, work):
    _GPU.count(name)
    try:
        _GPU.check_driver(_NEEDS_MAJOR)
        return (cudaError_t.cudaSuccess, *work())
    except fake_gpu.FakeCudaError as exc:
        code = getattr(cudaError_t, exc.code, cudaError_t.cudaErrorInvalidValue)
        nothing = {"cudaMalloc": 1, "cudaMallocHost": 1, "cudaStreamCreate": 1, "cudaGetDevice": 1,
                   "cudaGetDeviceCount": 1, "cudaGetDeviceProperties": 1, "cudaMemGetInfo": 2}.get(name, 0)
        return (code, *([None] * nothing))


def _stream_handle(stream) -> int:
    return stream._handle if isinstance(stream, cudaStream_t) else int(stream)


def cudaGetErrorName(error):  # noqa: N802
    return cudaError_t.cudaSuccess, cudaError_t(int(error)).name.encode()


def cudaDriverGetVersion():  # noqa: N802 - works without a device, like the real one
    major, minor = _GPU.config.driver
    return cudaError_t.cudaSuccess, major * 1000 + minor * 10


def cudaRuntimeGetVersion():  # noqa: N802
    return cudaError_t.cudaSuccess, _NEEDS_MAJOR * 1000


def cudaGetDeviceCount():  # noqa: N802
    return _call("cudaGetDeviceCount", lambda: (len(_GPU.devices),))


def cudaSetDevice(device: int):  # noqa: N802
    def work():
        _GPU.device(device)
        _GPU.thread.device = device
        return ()
    return _call("cudaSetDevice", work)


def cudaGetDevice():  # noqa: N802
    return _call("cudaGetDevice", lambda: (_GPU.runtime_device(),))


def cudaGetDeviceProperties(device: int):  # noqa: N802
    return _call("cudaGetDeviceProperties", lambda: (cudaDeviceProp(_GPU.device(device)),))


def cudaMalloc(size: int):  # noqa: N802
    return _call("cudaMalloc", lambda: (_GPU.malloc(int(size), _GPU.runtime_device()),))


def cudaFree(devPtr):  # noqa: N802, N803
    return _call("cudaFree", lambda: (_GPU.free(int(devPtr)), ())[1])


def cudaMallocHost(size: int):  # noqa: N802
    return _call("cudaMallocHost", lambda: (_GPU.malloc_host(int(size)),))


def cudaFreeHost(ptr):  # noqa: N802
    return _call("cudaFreeHost", lambda: (_GPU.free_host(int(ptr)), ())[1])


def cudaStreamCreate():  # noqa: N802
    return _call("cudaStreamCreate", lambda: (cudaStream_t(_GPU.create_stream(_GPU.runtime_device())),))


def cudaStreamDestroy(stream):  # noqa: N802
    return _call("cudaStreamDestroy", lambda: (_GPU.destroy_stream(_stream_handle(stream)), ())[1])


def cudaStreamSynchronize(stream):  # noqa: N802
    return _call("cudaStreamSynchronize", lambda: (_GPU.synchronize(_stream_handle(stream)), ())[1])


def cudaMemcpyAsync(dst, src, count: int, kind, stream):  # noqa: N802
    def work():
        handle = _stream_handle(stream)
        if kind == cudaMemcpyKind.cudaMemcpyHostToDevice:
            _GPU.copy_htod(int(dst), int(src), int(count), handle)
        elif kind == cudaMemcpyKind.cudaMemcpyDeviceToHost:
            _GPU.copy_dtoh(int(dst), int(src), int(count), handle)
        else:
            raise fake_gpu.FakeCudaError("cudaErrorInvalidValue", f"the double does not model {kind!r}")
        return ()
    return _call("cudaMemcpyAsync", work)


def cudaMemGetInfo():  # noqa: N802
    return _call("cudaMemGetInfo", lambda: _GPU.mem_get_info(_GPU.runtime_device()))
