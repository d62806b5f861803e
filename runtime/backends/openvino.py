"""OpenVINO backend (``ov-cpu``): the same FP32 ONNX as ONNX Runtime, compiled by OpenVINO's
CPU plugin (optional extra ``cminet[openvino]``).

OpenVINO reads the ONNX file itself (no conversion step, no second file to ship), keeps
H and W dynamic, and picks its own blocked layouts and fusions for the few-channel
convolutions and the element-wise attention gates around them. Precision is pinned to
FP32: on CPUs with AMX or AVX-512 BF16 the plugin would otherwise run BF16 and leave the
FP32 tolerance of the contract.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import openvino as ov

from ..contract import (
    INPUT_NAMES,
    IO_CHANNELS,
    IO_RANK,
    META_CONFIG,
    META_PRECISION,
    OV_CPU_CONFIG,
    ContractError,
    backend_spec,
)
from ..errors import ModelFileError
from .base import Backend, BackendUnavailable, profile_from_dims

DEVICE = "CPU"
IO_TYPES = {ov.Type.f32: np.dtype(np.float32), ov.Type.f16: np.dtype(np.float16)}


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


class OpenVINOBackend(Backend):
    def __init__(self, path: Path, name: str = "ov-cpu", threads: int | None = None, **_options):
        self.name = backend_spec(name).name
        if self.name != "ov-cpu":
            raise BackendUnavailable(f"{self.name} is not an OpenVINO backend (ov-cpu)")
        if threads is not None and (not isinstance(threads, int) or isinstance(threads, bool) or threads < 1):
            raise ContractError(f"threads: expected a whole number ≥ 1, got {threads!r}")
        core = ov.Core()
        try:
            model = core.read_model(str(path))
        except Exception as exc:  # OpenVINO raises RuntimeError / its own types for unreadable files
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise ModelFileError(f"{path}: not a loadable ONNX model ({first[:200]})") from None
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
        config = {**OV_CPU_CONFIG, "INFERENCE_NUM_THREADS": self.threads}
        self.compiled = core.compile_model(model, DEVICE, config)
        self.request = self.compiled.create_infer_request()
        self.device_name = core.get_property(DEVICE, "FULL_DEVICE_NAME")

    def run(self, mri: np.ndarray, other: np.ndarray) -> np.ndarray:
        result = self.request.infer(dict(zip(INPUT_NAMES, (mri, other), strict=True)))
        out = result[self.compiled.outputs[0]]
        if out.shape != mri.shape:  # a graph that is not the fusion network
            raise ModelFileError(f"{self.path}: the model returned shape {tuple(out.shape)} for input "
                                 f"{tuple(mri.shape)} (a cminet model returns its input's shape)")
        return np.asarray(out, dtype=np.float32)  # infer() hands back copies, not its own buffers

    def info(self) -> dict:
        precision = self.compiled.get_property("INFERENCE_PRECISION_HINT")  # an ov.Type: f32
        return {"openvino": ov.__version__, "device": self.device_name,
                "threads": self.compiled.get_property("INFERENCE_NUM_THREADS"),
                "inference_precision": precision.to_string() if hasattr(precision, "to_string") else str(precision)}

    def close(self) -> None:
        self.request = None
        self.compiled = None
