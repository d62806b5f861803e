"""Test double of ``pycuda.driver``, the subset cminet calls, with pycuda's semantics where
they matter for correctness:

* contexts live on a **per-thread stack** (``Context.push`` / the static ``Context.pop``);
  every allocation, copy and stream call needs a current context on the calling thread and
  otherwise raises ``LogicError: ... invalid device context``, which is what a second
  thread sees when only the constructing thread pushed the context;
* ``Device.retain_primary_context()`` retains the device's primary context and
  ``Context.detach()`` releases it (the count is visible to tests);
* ``pagelocked_empty`` returns an ndarray whose ``.base`` is the ``HostAllocation`` (free it
  with ``.base.free()``); ``mem_alloc`` returns a ``DeviceAllocation`` (``int()`` is the
  device pointer, ``.free()`` releases it).

Source of the names and signatures: pycuda's driver documentation (documen.tician.de/pycuda,
"Device Interface") and ``src/cpp/cuda.hpp`` / ``src/wrapper/wrap_cudadrv.cpp`` of
inducer/pycuda.
"""

from __future__ import annotations

import ctypes

import fake_gpu
import numpy as np

_GPU = fake_gpu.gpu()


class Error(Exception):
    pass


class LogicError(Error):
    pass


class RuntimeError(Error):  # noqa: A001 - pycuda's name
    pass


class MemoryError(Error):  # noqa: A001
    pass


def _driver(call: str):
    """The device of this thread's current context, or pycuda's LogicError."""
    try:
        return _GPU.driver_device(call)
    except fake_gpu.FakeCudaError as exc:
        raise LogicError(str(exc).split(": ", 1)[1]) from None


_initialised = False


def init(flags: int = 0) -> None:
    global _initialised
    try:
        _GPU.check_driver(0)
    except fake_gpu.FakeCudaError as exc:
        raise RuntimeError(f"cuInit failed: {exc}") from None
    _initialised = True


def get_version() -> tuple[int, int, int]:
    return (*_GPU.config.driver, 0)


def get_driver_version() -> int:
    major, minor = _GPU.config.driver
    return major * 1000 + minor * 10


class Device:
    def __init__(self, number: int):
        if not _initialised:
            raise LogicError("cuDeviceGet failed: initialization error (call pycuda.driver.init() first)")
        try:
            self._device = _GPU.device(number)
        except fake_gpu.FakeCudaError as exc:
            raise LogicError(f"cuDeviceGet failed: {exc}") from None

    @staticmethod
    def count() -> int:
        return len(_GPU.devices)

    def name(self) -> str:
        return self._device.name

    def compute_capability(self) -> tuple[int, int]:
        return self._device.compute_capability

    def total_memory(self) -> int:
        return self._device.total

    def retain_primary_context(self) -> Context:
        _GPU.count("retain_primary_context")
        self._device.primary_retains += 1
        return Context(self._device.index)


class Context:
    def __init__(self, device: int):
        self.device = device
        self._detached = False

    def push(self) -> None:
        if self._detached:
            raise LogicError("cuCtxPushCurrent failed: invalid device context (context was detached)")
        _GPU.context_stack().append(self)

    @staticmethod
    def pop() -> None:
        stack = _GPU.context_stack()
        if not stack:
            raise LogicError("cuCtxPopCurrent failed: invalid device context")
        stack.pop()

    def detach(self) -> None:
        if not self._detached:
            self._detached = True
            _GPU.devices[self.device].primary_retains -= 1

    @staticmethod
    def get_device() -> Device:
        device = Device.__new__(Device)
        device._device = _GPU.devices[_driver("cuCtxGetDevice")]
        return device

    @staticmethod
    def synchronize() -> None:
        _driver("cuCtxSynchronize")
        for handle in [h for h, s in _GPU.streams.items() if s.device == _GPU.runtime_device()]:
            _GPU.synchronize(handle)


class DeviceAllocation:
    def __init__(self, ptr: int):
        self._ptr = ptr
        self._freed = False

    def __int__(self) -> int:
        return self._ptr

    def __index__(self) -> int:
        return self._ptr

    def free(self) -> None:
        if not self._freed:
            _driver("cuMemFree")
            _GPU.free(self._ptr)
            self._freed = True


class HostAllocation:
    def __init__(self, ptr: int, nbytes: int):
        self.ptr, self.nbytes, self._freed = ptr, nbytes, False

    def free(self) -> None:
        if not self._freed:
            _GPU.free_host(self.ptr)
            self._freed = True


class Stream:
    def __init__(self, flags: int = 0):
        self._device = _driver("cuStreamCreate")
        self.handle = _GPU.create_stream(self._device)

    def __del__(self):  # pycuda destroys the CUstream when the Stream object goes
        if getattr(self, "handle", None) in _GPU.streams:
            _GPU.destroy_stream(self.handle)

    def synchronize(self) -> None:
        _driver("cuStreamSynchronize")
        _GPU.synchronize(self.handle)

    def is_done(self) -> bool:
        return not _GPU.stream(self.handle).queue


def mem_alloc(bytesize: int) -> DeviceAllocation:
    device = _driver("cuMemAlloc")
    try:
        return DeviceAllocation(_GPU.malloc(int(bytesize), device))
    except fake_gpu.FakeCudaError as exc:
        raise MemoryError(f"cuMemAlloc failed: {exc}") from None


def mem_get_info() -> tuple[int, int]:
    return _GPU.mem_get_info(_driver("cuMemGetInfo"))


def pagelocked_empty(shape, dtype, order: str = "C", mem_flags: int = 0) -> np.ndarray:
    _driver("cuMemHostAlloc")
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape)) * dtype.itemsize
    ptr = _GPU.malloc_host(nbytes)
    holder = HostAllocation(ptr, nbytes)
    raw = (ctypes.c_ubyte * max(nbytes, 1)).from_address(ptr)
    array = np.frombuffer(raw, dtype=np.uint8, count=nbytes).view(dtype).reshape(shape, order=order)
    # pycuda's arrays carry their HostAllocation as .base; numpy needs a real base object,
    # so wrap: a subclass instance whose .base is the allocation.
    out = array.view(_PagelockedArray)
    out._allocation = holder
    return out


class _PagelockedArray(np.ndarray):
    @property
    def base(self):  # noqa: D401 - mirrors pycuda: ndarray.base is the HostAllocation
        return getattr(self, "_allocation", None) or super().base


def _stream_of(stream) -> int:
    if stream is None:
        raise LogicError("the double only models copies on an explicit Stream")
    return stream.handle


def memcpy_htod_async(dest, src, stream=None) -> None:
    _driver("cuMemcpyHtoDAsync")
    src = np.ascontiguousarray(src)
    _GPU.copy_htod(int(dest), src.ctypes.data, src.nbytes, _stream_of(stream))


def memcpy_dtoh_async(dest, src, stream=None) -> None:
    _driver("cuMemcpyDtoHAsync")
    _GPU.copy_dtoh(dest.ctypes.data, int(src), dest.nbytes, _stream_of(stream))
