"""The fake GPU behind the test doubles of ``tensorrt``, ``cuda.bindings.runtime`` and
``pycuda.driver``: device memory, contexts, streams. One module, so every double sees the
same device, exactly as the real libraries share one driver.

What it models, because the cminet runtime depends on it:

* **Device memory is not host memory.** Device pointers are integers in a range the
  process never maps; the bytes live in this module. Reading one through ctypes from the
  host crashes just as it would on a real GPU; only a copy on a stream brings data back.
* **Streams are lazy.** ``cudaMemcpyAsync``, ``execute_async_v3`` and pycuda's async copies
  only enqueue work; nothing happens until the stream is synchronised. Drop a synchronise
  and the host buffer keeps its old bytes; drop a copy and the engine reads the device
  buffer's previous content (NaN at first: fresh buffers are filled with 0xFF bytes).
* **Contexts are per thread.** pycuda keeps a context stack per thread: a driver call on a
  thread with an empty stack fails with ``invalid device context``. The CUDA runtime
  (cuda-python, TensorRT) uses the thread's current device (``cudaSetDevice``, default 0).
* **Memory is counted.** Live device allocations, live pinned host allocations, primary
  context retains and ``cudaMemGetInfo`` all follow from what was allocated and freed, so a
  test can assert that nothing leaks.

What it does not model: kernels, timing, unified memory, events, graphs. These doubles
prove call shapes and data flow, not numerics on a GPU.

Configuration: the environment variable ``CMINET_GPU_DOUBLES`` (read at import and by
:func:`configure`), ``;``-separated ``key=value``:

    tensorrt=10.3 | 11.1 | none        which TensorRT Python API to present
    cuda=cuda-python-12.6 | cuda-python-13 | cuda-python-12.5 | pycuda | none
    driver=12.6                        the CUDA version the (fake) driver supports
    gpus=1                             number of devices (0: no GPU)
    gpu=NAME@MAJOR.MINOR@MiB           device 0 (and every other device)
"""

from __future__ import annotations

import ctypes
import itertools
import os
import threading
from dataclasses import dataclass, field

ENV = "CMINET_GPU_DOUBLES"
DEFAULTS = {"tensorrt": "10.3", "cuda": "cuda-python-12.6", "driver": "12.6", "gpus": "1",
            "gpu": "NVIDIA Jetson Orin Nano@8.7@7620"}
FLAVOURS = {
    # name → CMINET_GPU_DOUBLES value; the combinations the test suite runs.
    "trt10.3-cudapython12": "tensorrt=10.3;cuda=cuda-python-12.6;driver=12.6",
    "trt11.1-cudapython13": "tensorrt=11.1;cuda=cuda-python-13;driver=13.0;gpu=NVIDIA H100 80GB HBM3@9.0@81559",
    "trt10.3-pycuda": "tensorrt=10.3;cuda=pycuda;driver=12.6",
}
# A range no process maps (above the 47-bit user space): touching it from the host faults.
DEVICE_BASE = 0xDEAD_0000_0000_0000
POISON = 0xFF  # fresh device and pinned memory: every float reads as NaN


class FakeCudaError(RuntimeError):
    """Raised inside the fake driver; each double turns it into its library's error form."""

    def __init__(self, code: str, message: str):
        super().__init__(f"{code}: {message}")
        self.code = code


@dataclass
class Config:
    tensorrt: str | None
    cuda: str | None
    driver: tuple[int, int]
    gpus: int
    name: str
    compute_capability: tuple[int, int]
    total_mib: int

    @classmethod
    def parse(cls, text: str | None) -> Config:
        values = dict(DEFAULTS)
        for item in filter(None, (text or "").split(";")):
            key, _, value = item.partition("=")
            if key.strip() not in DEFAULTS:
                raise ValueError(f"{ENV}: unknown key {key!r} (known: {', '.join(DEFAULTS)})")
            values[key.strip()] = value.strip()
        name, cc, mib = values["gpu"].split("@")
        major, minor = cc.split(".")
        dmajor, dminor = values["driver"].split(".")
        return cls(tensorrt=None if values["tensorrt"] == "none" else values["tensorrt"],
                   cuda=None if values["cuda"] == "none" else values["cuda"],
                   driver=(int(dmajor), int(dminor)), gpus=int(values["gpus"]), name=name,
                   compute_capability=(int(major), int(minor)), total_mib=int(mib))


@dataclass
class Allocation:
    ptr: int
    size: int
    device: int
    what: str  # "buffer", "engine weights", "activations": lets a test tell them apart
    _data: bytearray | None = None

    @property
    def data(self) -> bytearray:
        """The bytes, made (poisoned) on first touch: activation memory is never touched."""
        if self._data is None:
            self._data = bytearray([POISON]) * self.size
        return self._data


@dataclass
class Stream:
    handle: int
    device: int
    queue: list = field(default_factory=list)
    destroyed: bool = False


class Device:
    def __init__(self, index: int, config: Config):
        self.index = index
        self.name = config.name
        self.compute_capability = config.compute_capability
        self.total = config.total_mib << 20
        self.primary_retains = 0


class FakeGpu:
    """The one fake driver of this process."""

    def __init__(self, config: Config):
        self.config = config
        self.devices = [Device(i, config) for i in range(config.gpus)]
        self.lock = threading.RLock()
        self.allocations: dict[int, Allocation] = {}
        self.pinned: dict[int, ctypes.Array] = {}
        self.streams: dict[int, Stream] = {}
        self.thread = threading.local()
        self._next_ptr = itertools.count(DEVICE_BASE, 1 << 32)  # 4 GiB apart: no overlaps
        self._next_stream = itertools.count(0x5EED_0000)
        self.calls: dict[str, int] = {}  # e.g. "deserialize_cuda_engine": 2; for assertions

    # -- bookkeeping ------------------------------------------------------------------
    def count(self, name: str) -> None:
        with self.lock:
            self.calls[name] = self.calls.get(name, 0) + 1

    def live_device_allocations(self, what: str | None = None) -> list[Allocation]:
        with self.lock:
            return [a for a in self.allocations.values() if what is None or a.what == what]

    def live_pinned(self) -> int:
        with self.lock:
            return len(self.pinned)

    # -- devices and contexts ---------------------------------------------------------
    def check_driver(self, needs_major: int) -> None:
        if not self.devices:
            raise FakeCudaError("cudaErrorNoDevice", "no CUDA-capable device is detected")
        if self.config.driver[0] < needs_major:
            raise FakeCudaError("cudaErrorInsufficientDriver",
                                "CUDA driver version is insufficient for CUDA runtime version")

    def device(self, index: int) -> Device:
        if not 0 <= index < len(self.devices):
            raise FakeCudaError("cudaErrorInvalidDevice", "invalid device ordinal")
        return self.devices[index]

    def context_stack(self) -> list:
        """pycuda's per-thread context stack (Context objects with a ``device`` index)."""
        if not hasattr(self.thread, "stack"):
            self.thread.stack = []
        return self.thread.stack

    def runtime_device(self) -> int:
        """The device the CUDA runtime (and TensorRT) works on from this thread: the current
        driver context's if one is pushed, else the thread's cudaSetDevice (default 0)."""
        stack = self.context_stack()
        if stack:
            return stack[-1].device
        return getattr(self.thread, "device", 0)

    def driver_device(self, call: str) -> int:
        """The device of the current driver context; pycuda calls need one on this thread."""
        stack = self.context_stack()
        if not stack:
            raise FakeCudaError("CUDA_ERROR_INVALID_CONTEXT", f"{call} failed: invalid device context")
        return stack[-1].device

    # -- memory -----------------------------------------------------------------------
    def malloc(self, size: int, device: int, what: str = "buffer") -> int:
        with self.lock:
            used = sum(a.size for a in self.allocations.values() if a.device == device)
            if used + size > self.device(device).total:
                raise FakeCudaError("cudaErrorMemoryAllocation", "out of memory")
            ptr = next(self._next_ptr)
            self.allocations[ptr] = Allocation(ptr, size, device, what)
            return ptr

    def free(self, ptr: int) -> None:
        with self.lock:
            if self.allocations.pop(int(ptr), None) is None:
                raise FakeCudaError("cudaErrorInvalidValue", f"free of {int(ptr):#x}: not a live device allocation")

    def find(self, ptr: int, nbytes: int) -> tuple[Allocation, int]:
        """The allocation holding [ptr, ptr + nbytes) and the offset into it."""
        with self.lock:
            for alloc in self.allocations.values():
                if alloc.ptr <= ptr and ptr + nbytes <= alloc.ptr + alloc.size:
                    return alloc, ptr - alloc.ptr
        raise FakeCudaError("cudaErrorInvalidValue", f"{ptr:#x} (+{nbytes} bytes) is not device memory")

    def is_device_pointer(self, ptr: int) -> bool:
        return ptr >= DEVICE_BASE

    def mem_get_info(self, device: int) -> tuple[int, int]:
        with self.lock:
            used = sum(a.size for a in self.allocations.values() if a.device == device)
        total = self.device(device).total
        return total - used, total

    def malloc_host(self, size: int) -> int:
        """Page-locked host memory: real host bytes (readable), counted while live."""
        buffer = (ctypes.c_ubyte * max(size, 1)).from_buffer(bytearray([POISON]) * max(size, 1))
        ptr = ctypes.addressof(buffer)
        with self.lock:
            self.pinned[ptr] = buffer
        return ptr

    def free_host(self, ptr: int) -> None:
        with self.lock:
            if self.pinned.pop(int(ptr), None) is None:
                raise FakeCudaError("cudaErrorInvalidValue", f"free of {int(ptr):#x}: not pinned host memory")

    # -- streams ----------------------------------------------------------------------
    def create_stream(self, device: int) -> int:
        with self.lock:
            handle = next(self._next_stream)
            self.streams[handle] = Stream(handle, device)
            return handle

    def stream(self, handle: int) -> Stream:
        with self.lock:
            stream = self.streams.get(int(handle))
        if stream is None or stream.destroyed:
            raise FakeCudaError("cudaErrorInvalidResourceHandle", f"stream {int(handle):#x} is not a live stream")
        return stream

    def destroy_stream(self, handle: int) -> None:
        self.stream(handle).destroyed = True
        with self.lock:
            del self.streams[int(handle)]

    def enqueue(self, handle: int, work) -> None:
        self.stream(handle).queue.append(work)

    def synchronize(self, handle: int) -> None:
        stream = self.stream(handle)
        self.count("synchronize")
        while stream.queue:
            stream.queue.pop(0)()

    def copy_htod(self, dst: int, src: int, nbytes: int, handle: int) -> None:
        """Enqueue a host → device copy; the host bytes are read when the stream runs."""
        if not self.is_device_pointer(dst) or self.is_device_pointer(src):
            raise FakeCudaError("cudaErrorInvalidValue", "host-to-device copy: needs device dst, host src")
        alloc, offset = self.find(dst, nbytes)

        def run():
            alloc.data[offset:offset + nbytes] = ctypes.string_at(src, nbytes)
        self.count("memcpy_htod")
        self.enqueue(handle, run)

    def copy_dtoh(self, dst: int, src: int, nbytes: int, handle: int) -> None:
        if self.is_device_pointer(dst) or not self.is_device_pointer(src):
            raise FakeCudaError("cudaErrorInvalidValue", "device-to-host copy: needs host dst, device src")
        alloc, offset = self.find(src, nbytes)

        def run():
            ctypes.memmove(dst, bytes(alloc.data[offset:offset + nbytes]), nbytes)
        self.count("memcpy_dtoh")
        self.enqueue(handle, run)


_gpu: FakeGpu | None = None


def configure(text: str | None = None) -> FakeGpu:
    """A fresh fake GPU from ``text`` (default: the environment variable)."""
    global _gpu
    _gpu = FakeGpu(Config.parse(os.environ.get(ENV) if text is None else text))
    return _gpu


def gpu() -> FakeGpu:
    return _gpu if _gpu is not None else configure()
