"""ONNX Runtime backend: CPU, CUDA and TensorRT execution providers."""

from __future__ import annotations

import contextlib
import io
import os
import warnings
from pathlib import Path

import numpy as np
import onnxruntime as ort

from ..contract import (
    DEFAULT_ENGINE_PROFILE,
    INPUT_NAMES,
    IO_CHANNELS,
    IO_RANK,
    META_CONFIG,
    META_PRECISION,
    ONNX_TYPE_TO_DTYPE,
    ORT_OPTIMIZATION_LEVELS,
    ORT_PROVIDERS,
    ContractError,
    ShapeProfile,
    backend_spec,
)
from ..errors import ModelFileError
from .base import Backend, BackendUnavailable, profile_from_dims

# ONNX Runtime's own log (coloured warning lines on stderr, e.g. while it rejects a graph) would
# print before cminet's one-line error: errors only, which the error then says in its words.
ort.set_default_logger_severity(3)


OPT_LEVELS = dict(zip(ORT_OPTIMIZATION_LEVELS, (
    ort.GraphOptimizationLevel.ORT_DISABLE_ALL, ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED, ort.GraphOptimizationLevel.ORT_ENABLE_ALL), strict=True))

# ONNX Runtime session settings every cminet session gets. Spinning off: idle intra-op
# threads that busy-wait between ops steal the core the next op needs whenever another
# process holds one; measured interleaved on a shared 2-core EPYC, spinning made the 256²
# latency 1.2-1.8x slower under load and bought 2-6 % (within the spread) when it was
# quieter (docs/cpu-performance.md).
ORT_SESSION_CONFIG = {"session.intra_op.allow_spinning": "0"}



def _cuda_or_none(device: int):
    """The runtime's CUDA bindings on ``device``, opened once per GPU session (every fuse asks
    for the free memory), or None where there are none (the host budget applies then)."""
    from ..cuda import open_cuda

    try:
        return open_cuda(device)
    except Exception:  # noqa: BLE001 - no bindings or no driver
        return None


def best_onnx_backend() -> str:
    """ort-cuda where onnxruntime-gpu sees a GPU, else ort-cpu."""
    return "ort-cuda" if ORT_PROVIDERS["ort-cuda"] in ort.get_available_providers() else "ort-cpu"


def session_input_dtype(session: ort.InferenceSession) -> np.dtype:
    """The numpy dtype a cminet session's inputs take (float32 or float16)."""
    return np.dtype(ONNX_TYPE_TO_DTYPE.get(session.get_inputs()[0].type, "float32"))


def check_io_contract(session: ort.InferenceSession, path: Path) -> None:
    """Refuse a model that is not a cminet network: inputs ``mri``/``other`` and one output,
    all float32 or float16 (one dtype for both inputs), rank 4 with one channel."""
    inputs, outputs = session.get_inputs(), session.get_outputs()
    names = tuple(i.name for i in inputs)
    if names != INPUT_NAMES or len(outputs) != 1:
        raise ModelFileError(f"{path}: not a cminet model (inputs {names}, {len(outputs)} output(s); "
                             f"expected inputs {INPUT_NAMES} and one output)")
    for tensor in (*inputs, *outputs):
        if tensor.type not in ONNX_TYPE_TO_DTYPE:
            raise ModelFileError(f"{path}: not a cminet model ({tensor.name} is {tensor.type}; "
                                 "expected float32 or float16)")
        shape = tensor.shape
        channels_ok = len(shape) == IO_RANK and (shape[1] == IO_CHANNELS or not isinstance(shape[1], int))
        if not channels_ok:
            raise ModelFileError(f"{path}: not a cminet model ({tensor.name} has shape {shape}; expected N×1×H×W)")
    if inputs[0].type != inputs[1].type:
        raise ModelFileError(f"{path}: not a cminet model (inputs have different dtypes)")
    out_dims, in_dims = list(outputs[0].shape), list(inputs[0].shape)
    swapped = [d for i, d in enumerate(out_dims) if isinstance(d, str) and d in in_dims and in_dims.index(d) != i]
    if swapped:  # e.g. N×1×W×H out of N×1×H×W: a transposed image
        raise ModelFileError(f"{path}: not a cminet model (output shape {out_dims} reorders the input's {in_dims})")
    static = [tuple(d if isinstance(d, int) else None for d in t.shape) for t in (*inputs, *outputs)]
    for dims in static[1:]:
        if any(a is not None and b is not None and a != b for a, b in zip(static[0], dims, strict=True)):
            raise ModelFileError(f"{path}: not a cminet model (fixed shapes differ: inputs/output "
                                 f"{', '.join(str(list(t.shape)) for t in (*inputs, *outputs))})")


def static_profile(session: ort.InferenceSession) -> ShapeProfile:
    """The N×H×W range a graph with fixed dimensions accepts (any, for cminet's dynamic export)."""
    return profile_from_dims(session.get_inputs()[0].shape)


def _profile_option(shape: tuple[int, int, int]) -> str:
    """One TRT EP profile option value: 'mri:1x1x256x256,other:1x1x256x256'."""
    n, h, w = shape
    return ",".join(f"{name}:{n}x1x{h}x{w}" for name in INPUT_NAMES)


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
    def __init__(self, path: Path, name: str = "ort-cpu", device: int | None = None, threads: int | None = None,
                 optimization: str = "all"):
        backend = backend_spec(name).name
        if backend not in ORT_PROVIDERS:
            raise BackendUnavailable(f"{backend} is not an ONNX Runtime backend ({', '.join(ORT_PROVIDERS)})")
        if device is not None and not backend_spec(backend).gpu:
            raise ContractError(f"device: {backend} runs on the CPU; a CUDA device needs ort-cuda or ort-trt")
        device = device or 0
        if optimization not in OPT_LEVELS:
            raise ContractError(f"optimization: expected one of {', '.join(OPT_LEVELS)}, got {optimization!r}")
        if threads is not None and (not isinstance(threads, int) or isinstance(threads, bool) or threads < 1):
            raise ContractError(f"threads: expected a whole number ≥ 1, got {threads!r}")
        wanted = ORT_PROVIDERS[backend]
        available = ort.get_available_providers()
        if wanted not in available:
            hint = f" ({backend_spec(backend).install})" if backend != "ort-cpu" else ""
            raise BackendUnavailable(f"{backend}: {wanted} is not available in this onnxruntime "
                                     f"(has {', '.join(available)}){hint}")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or os.cpu_count() or 1
        options.inter_op_num_threads = 1
        options.graph_optimization_level = OPT_LEVELS[optimization]
        options.log_severity_level = 3
        # No memory pattern: from the second run of a shape on, ORT would allocate the whole
        # planned pattern as one new block while its arena keeps the first run's memory, which
        # doubles the resident set of repeated large calls (1024²: 1.9 → 3.8 GB measured), for
        # no measured speed-up on the CPU.
        options.enable_mem_pattern = False
        for key, value in ORT_SESSION_CONFIG.items():
            options.add_session_config_entry(key, value)
        chain = provider_chain(backend, path, device)
        try:
            # A failed load makes ORT print an "EP Error" banner to stdout and retry; keep our
            # stdout for our own output, and report the failure as one line below.
            with contextlib.redirect_stdout(io.StringIO()):
                self.session = ort.InferenceSession(str(path), options, providers=chain)
        except Exception as exc:  # ORT raises several private exception types for bad files
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ModelFileError(f"{path}: not a loadable ONNX model ({first[:200]})") from None
        self.session.disable_fallback()  # a provider failing at run time is an error, not a silent switch
        check_io_contract(self.session, path)
        self.name, self.path, self.requested, self.device = backend, path, wanted, device
        self.providers = self.session.get_providers()
        self.fallback = self.providers[0] != wanted
        if self.fallback:  # reported, never silent
            warnings.warn(f"{backend}: {wanted} could not run this model; running on {self.providers[0]}",
                          RuntimeWarning, stacklevel=3)
        meta = self.session.get_modelmeta().custom_metadata_map
        self.config_json = meta.get(META_CONFIG)
        self.profile = static_profile(self.session)
        self.input_dtype = session_input_dtype(self.session)
        self.precision = meta.get(META_PRECISION, "fp16" if self.input_dtype == np.float16 else "fp32")
        self.output_name = self.session.get_outputs()[0].name
        self.use_binding = self.providers[0] != "CPUExecutionProvider"
        self._cuda = _cuda_or_none(device) if backend_spec(backend).gpu else None  # for free memory only

    @classmethod
    def unavailable(cls, name: str) -> str | None:
        wanted, available = ORT_PROVIDERS[name], ort.get_available_providers()
        if wanted in available:
            return None
        hint = f" ({backend_spec(name).install})" if name != "ort-cpu" else ""
        return f"{name}: this onnxruntime has no {wanted} (has {', '.join(available)}){hint}"

    def run_impl(self, mri: np.ndarray, other: np.ndarray) -> np.ndarray:
        feeds = dict(zip(INPUT_NAMES, (mri, other), strict=True))
        if not self.use_binding:
            out = self.session.run(None, feeds)[0]
        else:
            # IO binding: inputs copied once, output kept on the device until the one copy back.
            binding = self.session.io_binding()
            for name, array in feeds.items():
                binding.bind_cpu_input(name, np.ascontiguousarray(array))
            binding.bind_output(self.output_name, "cuda", self.device)
            self.session.run_with_iobinding(binding)
            out = binding.copy_outputs_to_cpu()[0]
        return out

    def device_free_bytes(self) -> int | None:
        """The GPU's free memory through the runtime's CUDA bindings, where installed (ONNX
        Runtime itself does not say); None on the CPU or without bindings."""
        if self._cuda is None:
            return None
        with self._cuda.activate():
            return int(self._cuda.mem_info()[0])

    def close(self) -> None:
        if self._cuda is not None:
            self._cuda.close()
            self._cuda = None

    def info(self) -> dict:
        session_options = self.session.get_session_options()
        return {"providers": self.providers, "fallback": self.fallback, "onnxruntime": ort.__version__,
                "threads": session_options.intra_op_num_threads,
                "session_config": {key: session_options.get_session_config_entry(key) for key in ORT_SESSION_CONFIG}}
