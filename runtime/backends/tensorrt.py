"""Native TensorRT backend: one engine, one execution context, one stream.

Written against the TensorRT 10.3 (JetPack 6) and 11.x Python API: tensors by name,
``set_input_shape`` + ``set_tensor_address`` + ``execute_async_v3``. Device and pinned host
buffers are allocated once per input shape and reused. The engine's JSON sidecar (written
by ``cminet-export``) is checked against the running TensorRT and GPU *before* the engine
is deserialised, so a mismatch is a clear error instead of a crash.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..contract import INPUT_NAMES as INPUTS  # noqa: E402
from ..contract import OUTPUT_NAME as OUTPUT  # noqa: E402
from ..contract import SIDECAR_FORMAT  # noqa: E402
from ..cuda import CudaUnavailable, open_cuda
from ..errors import ModelFileError
from .base import Backend, BackendUnavailable, ShapeProfile


def read_sidecar(engine_path: Path) -> dict:
    sidecar = Path(f"{engine_path}.json")
    if not sidecar.is_file():
        raise ModelFileError(f"{engine_path}: no {sidecar.name} beside it (build engines with cminet-export)")
    try:
        meta = json.loads(sidecar.read_text())
    except (OSError, ValueError) as exc:
        raise ModelFileError(f"{sidecar}: unreadable sidecar ({exc})") from None
    if meta.get("format") != SIDECAR_FORMAT:
        raise ModelFileError(f"{sidecar}: not a cminet engine sidecar")
    return meta


def check_compatible(engine_path: Path, meta: dict, trt_version: str, gpu_cc: str) -> None:
    """Engines are specific to the TensorRT version and GPU architecture that built them."""
    built = meta.get("tensorrt_version", "?")
    if built.split(".")[:3] != trt_version.split(".")[:3]:
        raise ModelFileError(f"{engine_path}: built with TensorRT {built}, this is TensorRT {trt_version}; "
                             "rebuild it here with cminet-export --fp16 --engine yes")
    built_cc = (meta.get("gpu") or {}).get("compute_capability")
    if built_cc and built_cc != gpu_cc:
        raise ModelFileError(f"{engine_path}: built for compute capability {built_cc}, this GPU is {gpu_cc}; "
                             "rebuild it on this device")


class TensorRTBackend(Backend):
    name = "tensorrt"
    precision = "fp16"

    def __init__(self, path: Path, device: int = 0):
        meta = read_sidecar(path)
        try:
            import tensorrt as trt
        except ImportError:
            raise BackendUnavailable("tensorrt: the tensorrt package is not installed "
                                     "(JetPack 6 ships it; on a desktop pip install 'cminet[trt]')") from None
        try:
            self.cuda = open_cuda(device)
        except CudaUnavailable as exc:
            raise BackendUnavailable(f"tensorrt: {exc}") from None
        gpu = self.cuda.device_info(device)
        check_compatible(path, meta, trt.__version__, gpu.compute_capability)
        self.trt, self.meta, self.gpu = trt, meta, gpu
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self.logger)
        self.engine = self.runtime.deserialize_cuda_engine(path.read_bytes())
        if self.engine is None:
            raise ModelFileError(f"{path}: TensorRT could not deserialise this engine (corrupt or truncated?)")
        names = {self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)}
        if names != {*INPUTS, OUTPUT}:
            raise ModelFileError(f"{path}: not a cminet engine (tensors {sorted(names)})")
        self.context = self.engine.create_execution_context()
        self.stream = self.cuda.stream()
        self.input_dtype = np.dtype(trt.nptype(self.engine.get_tensor_dtype(INPUTS[0])))
        self.output_dtype = np.dtype(trt.nptype(self.engine.get_tensor_dtype(OUTPUT)))
        lo, _, hi = self.engine.get_tensor_profile_shape(INPUTS[0], 0)
        self.profile = ShapeProfile((lo[0], lo[2], lo[3]), (hi[0], hi[2], hi[3]))
        self._buffers: dict[tuple, dict] = {}

    def _buffers_for(self, shape: tuple[int, ...]) -> dict:
        """Pinned host + device buffers for this input shape, made once and reused."""
        if shape not in self._buffers:
            for old in self._buffers.values():  # keep one shape's buffers: devices are small
                for ptr in old["device"].values():
                    self.cuda.free(ptr)
            self._buffers.clear()
            host = {n: self.cuda.pinned_empty(shape, self.input_dtype) for n in INPUTS}
            host[OUTPUT] = self.cuda.pinned_empty(shape, self.output_dtype)
            device = {n: self.cuda.malloc(a.nbytes) for n, a in host.items()}
            self._buffers[shape] = {"host": host, "device": device}
        return self._buffers[shape]

    def run(self, mri: np.ndarray, other: np.ndarray) -> np.ndarray:
        shape = tuple(mri.shape)
        buffers = self._buffers_for(shape)
        host, device = buffers["host"], buffers["device"]
        for name, array in zip(INPUTS, (mri, other), strict=True):
            host[name][...] = array
            self.context.set_input_shape(name, shape)
            self.context.set_tensor_address(name, device[name])
            self.cuda.htod_async(device[name], host[name], self.stream)
        self.context.set_tensor_address(OUTPUT, device[OUTPUT])
        if not self.context.execute_async_v3(self.stream):
            raise RuntimeError("TensorRT execute_async_v3 failed")
        self.cuda.dtoh_async(host[OUTPUT], device[OUTPUT], self.stream)
        self.cuda.synchronize(self.stream)
        return host[OUTPUT].astype(np.float32)

    def gpu_memory_bytes(self) -> int:
        engine_mem = int(getattr(self.engine, "device_memory_size_v2", 0))
        buffers = sum(a.nbytes for b in self._buffers.values() for a in b["host"].values())
        return engine_mem + buffers

    def info(self) -> dict:
        return {"tensorrt": self.trt.__version__, "gpu": self.gpu.name,
                "compute_capability": self.gpu.compute_capability, "cuda_bindings": self.cuda.name,
                "engine_built_with": self.meta.get("tensorrt_version"), "gpu_mem_bytes": self.gpu_memory_bytes()}

    def close(self) -> None:
        for b in self._buffers.values():
            for ptr in b["device"].values():
                self.cuda.free(ptr)
        self._buffers.clear()
        self.context = self.engine = None
        self.cuda.destroy_stream(self.stream)
        if hasattr(self.cuda, "close"):
            self.cuda.close()
