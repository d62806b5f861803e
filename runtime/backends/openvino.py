"""OpenVINO backend (``ov-cpu``): the same FP32 ONNX as ONNX Runtime, compiled by OpenVINO's
CPU plugin (optional extra ``cminet[openvino]``).

OpenVINO reads the ONNX file itself (no conversion step, no second file to ship) and picks
its own blocked layouts and fusions for the few-channel convolutions and the element-wise
attention gates around them. Precision is pinned to FP32: on CPUs with AMX or AVX-512 BF16
the plugin would otherwise run BF16 and leave the FP32 tolerance of the contract.

Split concatenations. A convolution over concatenated feature maps (the LFE's dense layers
and its 1×1 fusion, each GDA's merge, the head) is the sum of convolutions over the pieces,
because a convolution is linear in its input channels. :func:`split_concat_convolutions`
rewrites the OpenVINO graph that way: the plugin then accumulates each piece into the same
output buffer instead of copying every piece into a concatenation first (its Concat ran a
reference kernel, 12–16 % of the time). Exact up to float rounding; ONNX Runtime's graph is
left alone (there the same rewrite measured no faster).

Static shapes. The ONNX keeps N, H and W dynamic, and compiled that way OpenVINO's CPU plugin
runs slower kernels (on a 2-core AMD EPYC: 189 against 141 ms at 256², 740 against 588 ms at
512², 48 against 36 ms at 128²; docs/cpu-performance.md). So each input shape gets its own
static compilation on first sight (about 1 s), kept for the next call: a device fuses one
slice size, and tiles all have the tile's size. The last ``STATIC_SHAPES_KEPT`` shapes are
kept; an older one is compiled again if it comes back.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np
import openvino as ov
import openvino.opset13 as ops

from ..contract import (
    INPUT_NAMES,
    IO_CHANNELS,
    IO_RANK,
    META_CONFIG,
    META_PRECISION,
    MIN_SIDE,
    ContractError,
    backend_spec,
)
from ..errors import ModelFileError, first_line
from ..imaging import native_messages
from .base import Backend, BackendUnavailable, ShapeCache, profile_from_dims

DEVICE = "CPU"
SPLIT_MIN_CHANNELS = 8  # narrower pieces (the 2-channel spatial-attention map) measured slower split
STATIC_SHAPES_KEPT = 4  # compiled models held at once (each holds its intermediate buffers)
IO_TYPES = {ov.Type.f32: np.dtype(np.float32), ov.Type.f16: np.dtype(np.float16)}

# OpenVINO CPU plugin settings for ov-cpu: one request at a time (latency); FP32 pinned (on
# CPUs with AMX / AVX-512 BF16 the plugin's default is BF16, outside the FP32 tolerance);
# threads not pinned to cores (pinned threads queue behind other processes on a shared
# machine: 0.92-0.95x the pinned latency, measured interleaved on the 2-core EPYC).
OV_CPU_CONFIG = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32", "ENABLE_CPU_PINNING": False}



def _metadata(model: ov.Model, key: str) -> str | None:
    """One ONNX metadata_props entry, which OpenVINO keeps under rt_info['framework']."""
    try:
        return model.get_rt_info(["framework", key]).astype(str)
    except RuntimeError:  # no such key
        return None


def check_io_contract(model: ov.Model, path: Path) -> None:
    """Refuse a model that is not a cminet network (the same rules as the ORT backend)."""
    names = tuple(i.get_any_name() for i in model.inputs)
    if names != INPUT_NAMES or len(model.outputs) != 1:
        raise ModelFileError(f"{path}: not a cminet model (inputs {names}, {len(model.outputs)} output(s); "
                             f"expected inputs {INPUT_NAMES} and one output)")
    for port in (*model.inputs, *model.outputs):
        shape, kind = port.get_partial_shape(), port.get_element_type()
        if kind not in IO_TYPES:
            raise ModelFileError(f"{path}: not a cminet model ({port.get_any_name()} is {kind}; expected float32 "
                                 "or float16)")
        channels = shape[1] if shape.rank.is_static and len(shape) == IO_RANK else None
        if channels is None or (channels.is_static and channels.get_length() != IO_CHANNELS):
            raise ModelFileError(f"{path}: not a cminet model ({port.get_any_name()} has shape {shape}; "
                                 "expected N×1×H×W)")
    if model.inputs[0].get_element_type() != model.inputs[1].get_element_type():
        raise ModelFileError(f"{path}: not a cminet model (inputs have different dtypes)")


def split_concat_convolutions(model: ov.Model, min_channels: int = SPLIT_MIN_CHANNELS) -> int:
    """Rewrite ``Convolution(Concat(x₁, …, x_k), W)`` as ``Σᵢ Convolution(xᵢ, Wᵢ)`` in place, with
    ``Wᵢ`` the input-channel slice of ``W`` that reads ``xᵢ``; only where every piece has at
    least ``min_channels`` channels and ``W`` is a constant. Returns how many were rewritten."""
    rewritten = 0
    for conv in model.get_ordered_ops():
        if conv.get_type_name() != "Convolution":
            continue
        concat, weights = conv.input_value(0).get_node(), conv.input_value(1).get_node()
        if concat.get_type_name() != "Concat" or weights.get_type_name() != "Constant":
            continue
        rank = concat.get_output_partial_shape(0).rank
        if not rank.is_static or concat.get_attributes()["axis"] % rank.get_length() != 1:
            continue
        widths = [piece.get_partial_shape()[1] for piece in concat.input_values()]
        kernel = weights.get_data()  # out × in × kh × kw
        if any(not w.is_static or w.get_length() < min_channels for w in widths) or \
                sum(w.get_length() for w in widths) != kernel.shape[1]:
            continue
        attrs = conv.get_attributes()
        total, start = None, 0
        for piece, width in zip(concat.input_values(), widths, strict=True):
            part = ops.constant(np.ascontiguousarray(kernel[:, start:start + width.get_length()]))
            term = ops.convolution(piece, part, attrs["strides"], attrs["pads_begin"], attrs["pads_end"],
                                   attrs["dilations"], attrs["auto_pad"])
            total = term if total is None else ops.add(total, term)
            start += width.get_length()
        conv.output(0).replace(total.output(0))
        rewritten += 1
    if rewritten:
        model.validate_nodes_and_infer_types()
    return rewritten


def openvino_reason(exc: BaseException) -> str:
    """OpenVINO's reason in one line. Its messages start with where in its C++ the error was
    thrown ("Exception from src/inference/src/cpp/core.cpp:84:"); the reason follows."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    reasons = [line for line in lines if not line.startswith(("Exception from", "Check '"))]
    return (" ".join(reasons) if reasons else first_line(exc))[:200]


class OpenVINOBackend(Backend):
    def __init__(self, path: Path, name: str = "ov-cpu", threads: int | None = None,
                 plugin_config: dict | None = None):
        """``plugin_config`` adds CPU-plugin properties to ov-cpu's own (``cminet-bench
        --profile-ops`` turns on ``PERF_COUNT`` this way, so it profiles this very graph)."""
        self.name = backend_spec(name).name
        if self.name != "ov-cpu":
            raise BackendUnavailable(f"{self.name} is not an OpenVINO backend (ov-cpu)")
        if threads is not None and (not isinstance(threads, int) or isinstance(threads, bool) or threads < 1):
            raise ContractError(f"threads: expected a whole number ≥ 1, got {threads!r}")
        core = ov.Core()
        try:
            with native_messages():  # its TensorFlow frontend prints parse errors of foreign files to stderr
                model = core.read_model(str(path))
        except Exception as exc:  # OpenVINO raises RuntimeError / its own types for unreadable files
            raise ModelFileError(f"{path}: not a loadable ONNX model ({openvino_reason(exc)})") from None
        check_io_contract(model, path)
        self.path = path
        self.threads = threads or os.cpu_count() or 1
        self.precision = _metadata(model, META_PRECISION) or "fp32"
        if self.precision not in backend_spec(self.name).precisions:
            raise BackendUnavailable(f"{self.name} runs FP32 ONNX; {path} is {self.precision} (use ort-cpu)")
        self.config_json = _metadata(model, META_CONFIG)
        self.input_dtype = IO_TYPES[model.inputs[0].get_element_type()]
        shape = model.inputs[0].get_partial_shape()
        self.profile = profile_from_dims([d.get_length() if d.is_static else None for d in shape])
        self.split_convolutions = split_concat_convolutions(model)
        self.core, self.model = core, model
        self.config = {**OV_CPU_CONFIG, "INFERENCE_NUM_THREADS": self.threads, **(plugin_config or {})}
        self.compiles_per_shape = True
        self.requests = ShapeCache(STATIC_SHAPES_KEPT, self._compile_for)  # infer requests by input shape
        # One request per shape, and an infer request is not re-entrant: calls from several
        # threads (a server's workers) take turns, like the TensorRT backend's one context.
        self._lock = threading.Lock()
        self.device_name = core.get_property(DEVICE, "FULL_DEVICE_NAME")

    def request_for(self, shape: tuple[int, ...]) -> ov.InferRequest:
        """The inference request of a model compiled for exactly ``shape`` (compiled on first use)."""
        return self.requests.get_or_make(shape)

    def _compile_for(self, shape: tuple[int, ...]) -> ov.InferRequest:
        static = self.model.clone()
        try:
            static.reshape({name: list(shape) for name in INPUT_NAMES})
            request = self.core.compile_model(static, DEVICE, self.config).create_infer_request()
        except RuntimeError as exc:  # a shape the graph refuses, or a graph OpenVINO cannot compile
            raise ModelFileError(f"{self.path}: OpenVINO cannot compile it for input {shape} "
                                 f"({openvino_reason(exc)})") from None
        return request

    @classmethod
    def unavailable(cls, name: str) -> str | None:
        devices = ov.Core().available_devices
        return None if DEVICE in devices else f"{name}: OpenVINO sees no {DEVICE} device (has {', '.join(devices)})"

    def run_impl(self, mri: np.ndarray, other: np.ndarray) -> np.ndarray:
        with self._lock:
            request = self.request_for(tuple(mri.shape))
            request.infer(dict(zip(INPUT_NAMES, (mri, other), strict=True)))
            # a copy: the request reuses its buffer next call
            return np.array(request.get_output_tensor(0).data, dtype=np.float32)

    def info(self) -> dict:
        with self._lock:
            shape = next(reversed(self.requests), (1, IO_CHANNELS, MIN_SIDE, MIN_SIDE))  # the last one run
            compiled = self.request_for(shape).get_compiled_model()
        precision = compiled.get_property("INFERENCE_PRECISION_HINT")  # an ov.Type: f32
        return {"openvino": ov.__version__, "device": self.device_name,
                "threads": compiled.get_property("INFERENCE_NUM_THREADS"), "static_shapes": True,
                "split_concat_convolutions": self.split_convolutions,
                "inference_precision": precision.to_string() if hasattr(precision, "to_string") else str(precision)}

    def close(self) -> None:
        with self._lock:
            self.requests.clear()
