"""ONNX Runtime backend: CPU, CUDA and TensorRT execution providers."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import onnxruntime as ort

from ..errors import ModelFileError
from .base import Backend, BackendUnavailable
from .tensorrt import DEFAULT_ENGINE_PROFILE

PROVIDERS = {
    "ort-cpu": "CPUExecutionProvider",
    "ort-cuda": "CUDAExecutionProvider",
    "ort-trt": "TensorrtExecutionProvider",
}
OPT_LEVELS = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}
EXPECTED_INPUTS = ("mri", "other")


def best_onnx_backend() -> str:
    """ort-cuda where onnxruntime-gpu sees a GPU, else ort-cpu."""
    return "ort-cuda" if "CUDAExecutionProvider" in ort.get_available_providers() else "ort-cpu"


def _profile_option(shape: tuple[int, int, int]) -> str:
    """One TRT EP profile option value: 'mri:1x1x256x256,other:1x1x256x256'."""
    n, h, w = shape
    return ",".join(f"{name}:{n}x1x{h}x{w}" for name in EXPECTED_INPUTS)


def provider_chain(backend: str, path: Path, device: int) -> list:
    """ONNX Runtime's provider list for ``backend`` on CUDA device ``device``: the requested
    execution provider first, CUDA (for ort-trt) and CPU behind it for what it cannot run."""
    chain: list = []
    if backend == "ort-trt":
        lo, opt, hi = DEFAULT_ENGINE_PROFILE
        chain.append(("TensorrtExecutionProvider", {
            "device_id": device,
            # No trt_fp16_enable: with it ONNX Runtime builds a *weakly* typed network (ORT PR
            # 24298) and TensorRT may run in FP16 the ops the FP16 export kept in FP32
            # (LayerNorm, Softmax, Reduce*, Pow, Sqrt, Div). Without it the network is strongly
            # typed and follows the graph's own types, like cminet's native engine.
            "trt_engine_cache_enable": True,
            "trt_engine_cache_path": str(path.parent / ".ort-trt-cache"),
            # The native engine's profile, so a larger input does not rebuild the engine.
            "trt_profile_min_shapes": _profile_option(lo),
            "trt_profile_opt_shapes": _profile_option(opt),
            "trt_profile_max_shapes": _profile_option(hi),
        }))
    if backend in ("ort-trt", "ort-cuda"):
        chain.append(("CUDAExecutionProvider", {"device_id": device}))
    chain.append("CPUExecutionProvider")
    return chain


class OnnxRuntimeBackend(Backend):
    def __init__(self, path: Path, backend: str = "ort-cpu", device: int = 0, threads: int | None = None,
                 optimization: str = "all"):
        if backend not in PROVIDERS:
            raise BackendUnavailable(f"unknown ONNX Runtime backend {backend!r} ({', '.join(PROVIDERS)})")
        wanted = PROVIDERS[backend]
        available = ort.get_available_providers()
        if wanted not in available:
            hint = " (pip install 'cminet[gpu]'; remove plain onnxruntime first)" if backend != "ort-cpu" else ""
            raise BackendUnavailable(f"{backend}: {wanted} is not available in this onnxruntime "
                                     f"(has {', '.join(available)}){hint}")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or os.cpu_count() or 1
        options.inter_op_num_threads = 1
        options.graph_optimization_level = OPT_LEVELS[optimization]
        options.log_severity_level = 3
        chain = provider_chain(backend, path, device)
        try:
            self.session = ort.InferenceSession(str(path), options, providers=chain)
        except Exception as exc:  # ORT raises several private exception types for bad files
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ModelFileError(f"{path}: not a loadable ONNX model ({first[:200]})") from None
        names = tuple(i.name for i in self.session.get_inputs())
        if names != EXPECTED_INPUTS or len(self.session.get_outputs()) != 1:
            raise ModelFileError(f"{path}: not a cminet model (inputs {names}, expected {EXPECTED_INPUTS})")
        self.name, self.path, self.requested, self.device = backend, path, wanted, device
        self.providers = self.session.get_providers()
        self.fallback = self.providers[0] != wanted
        if self.fallback:  # reported, never silent
            warnings.warn(f"{backend}: {wanted} could not run this model; running on {self.providers[0]}",
                          RuntimeWarning, stacklevel=3)
        meta = self.session.get_modelmeta().custom_metadata_map
        self.input_dtype = np.dtype(np.float16 if self.session.get_inputs()[0].type == "tensor(float16)"
                                    else np.float32)
        self.precision = meta.get("cminet.precision", "fp16" if self.input_dtype == np.float16 else "fp32")
        self.output_name = self.session.get_outputs()[0].name
        self.use_binding = self.providers[0] != "CPUExecutionProvider"

    def run(self, mri: np.ndarray, other: np.ndarray) -> np.ndarray:
        if not self.use_binding:
            return self.session.run(None, {"mri": mri, "other": other})[0].astype(np.float32, copy=False)
        # IO binding: inputs copied once, output kept on the device until the one copy back.
        binding = self.session.io_binding()
        binding.bind_cpu_input("mri", np.ascontiguousarray(mri))
        binding.bind_cpu_input("other", np.ascontiguousarray(other))
        binding.bind_output(self.output_name, "cuda", self.device)  # the session's device, not 0
        self.session.run_with_iobinding(binding)
        return binding.copy_outputs_to_cpu()[0].astype(np.float32, copy=False)

    def info(self) -> dict:
        return {"providers": self.providers, "fallback": self.fallback, "onnxruntime": ort.__version__,
                "threads": self.session.get_session_options().intra_op_num_threads}
