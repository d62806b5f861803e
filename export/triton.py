"""A Triton Inference Server model repository from the exported files.

    cminet-export --fp16 --triton triton/
    docker run --rm -p 8000:8000 -v $PWD/triton:/models nvcr.io/nvidia/tritonserver:<tag>-py3 \\
        tritonserver --model-repository=/models

Layout (Triton's: one folder per model, numbered version folders inside):

    triton/cminet_onnx/config.pbtxt    platform onnxruntime_onnx
    triton/cminet_onnx/1/model.onnx    the FP32 ONNX
    triton/cminet_trt/config.pbtxt     platform tensorrt_plan (only where an engine was built)
    triton/cminet_trt/1/model.plan     the FP16 engine

Each ``config.pbtxt`` is built as Triton's own protobuf message (``ModelConfig`` from
``tritonclient.grpc.model_config_pb2``, ``pip install 'cminet[triton]'``) and written in
protobuf text format, so a misspelt field cannot get in. Inputs ``mri``/``other`` and output
``fused`` have ``dims: [1, -1, -1]``: Triton adds the batch dimension N itself when
``max_batch_size`` > 0, and H, W are free. Data types are read from the ONNX each model
comes from. An engine only runs batches up to its profile's largest N, and Triton refuses
to load a ``tensorrt_plan`` whose ``max_batch_size`` exceeds it, so ``cminet_trt`` takes
its ``max_batch_size`` from the engine's sidecar.

This module imports neither torch nor onnx at import time: ``cminet serve`` shares its
constants.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from cminet.runtime.contract import (
    INPUT_NAMES,
    OUTPUT_NAME,
    TRITON_IO_DIMS,
    TRITON_QUEUE_DELAY_US,
    sidecar_path,
)
from cminet.runtime.errors import CMINetError, ModelFileError
from cminet.runtime.files import atomic_output, write_bytes_atomic

ONNX_MODEL = "cminet_onnx"
TRT_MODEL = "cminet_trt"
VERSION = "1"
IO_DIMS, QUEUE_DELAY_US = TRITON_IO_DIMS, TRITON_QUEUE_DELAY_US
TRITON_TYPES = {"float32": "TYPE_FP32", "float16": "TYPE_FP16"}


def schema():
    """Triton's ``model_config_pb2`` (from tritonclient), or a one-line install hint."""
    try:
        from tritonclient.grpc import model_config_pb2
    except ImportError:
        raise CMINetError("--triton needs Triton's model-config schema: pip install 'cminet[triton]'") from None
    return model_config_pb2


def onnx_io_types(path: str | Path) -> dict[str, tuple[str, int]]:
    """{tensor name: (numpy dtype name, rank)} of an ONNX model's inputs and outputs."""
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    found = {}
    for value in [*proto.graph.input, *proto.graph.output]:
        tensor = value.type.tensor_type
        found[value.name] = (onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type).name, len(tensor.shape.dim))
    return found


def model_config(name: str, platform: str, io_types: dict[str, tuple[str, int]], max_batch_size: int,
                 instance_kind: str, instances: int = 1):
    """The ``ModelConfig`` message for one model of the repository."""
    pb = schema()
    config = pb.ModelConfig(name=name, platform=platform, max_batch_size=max_batch_size)
    for names, field in ((INPUT_NAMES, config.input), ((OUTPUT_NAME,), config.output)):
        for tensor in names:
            if tensor not in io_types:
                raise ModelFileError(f"{name}: the model has no tensor {tensor!r} (it has {', '.join(io_types)})")
            dtype, rank = io_types[tensor]
            if dtype not in TRITON_TYPES or rank != 1 + len(IO_DIMS):
                raise ModelFileError(f"{name}: tensor {tensor!r} is {dtype} of rank {rank}; expected float32/float16 "
                                     "N×1×H×W")
            field.add(name=tensor, data_type=pb.DataType.Value(TRITON_TYPES[dtype]), dims=IO_DIMS)
    config.dynamic_batching.max_queue_delay_microseconds = QUEUE_DELAY_US
    config.instance_group.add(count=instances, kind=pb.ModelInstanceGroup.Kind.Value(instance_kind))
    return config


def engine_profile(engine: str | Path) -> dict:
    """The optimisation profile recorded in the engine's sidecar: {"min": [N, H, W], ...}."""
    sidecar = sidecar_path(engine)
    if not sidecar.is_file():
        raise ModelFileError(f"{engine}: no sidecar {sidecar.name} beside it (build engines with cminet-export)")
    try:
        return json.loads(sidecar.read_text())["profile"]
    except (ValueError, KeyError) as exc:
        raise ModelFileError(f"{sidecar}: no engine profile in it ({exc})") from None


def write_model_repository(root: str | Path, onnx: str | Path, max_batch_size: int, engine: str | Path | None = None,
                           engine_onnx: str | Path | None = None, instances: int = 1) -> list[Path]:
    """Write ``cminet_onnx`` (from the FP32 ``onnx``, batches up to ``max_batch_size``) and,
    given an ``engine`` and the ONNX it was built from, ``cminet_trt`` into ``root``.
    Returns the config files written. A ``cminet_trt`` left from an earlier export is
    removed when there is no engine now, so Triton never serves a stale one."""
    from google.protobuf import text_format

    root = Path(root)
    if max_batch_size < 1:
        raise CMINetError(f"max batch size {max_batch_size}: need at least 1")
    models = [(ONNX_MODEL, "onnxruntime_onnx", Path(onnx), "model.onnx", onnx_io_types(onnx), max_batch_size,
               "KIND_AUTO")]  # AUTO: one instance per GPU where Triton sees GPUs, else on the CPU
    if engine is not None:
        if engine_onnx is None:
            raise CMINetError(f"{engine}: give the ONNX the engine was built from (its I/O types)")
        profile = engine_profile(engine)
        if profile["min"][0] != 1:
            raise ModelFileError(f"{engine}: its profile starts at N = {profile['min'][0]}, but Triton sends "
                                 "batches from 1 up (rebuild with --min-shape 1x16x16)")
        models.append((TRT_MODEL, "tensorrt_plan", Path(engine), "model.plan", onnx_io_types(engine_onnx),
                       int(profile["max"][0]), "KIND_GPU"))
    elif (root / TRT_MODEL).is_dir():
        shutil.rmtree(root / TRT_MODEL)

    written = []
    for name, platform, source, filename, io_types, batch, kind in models:
        config = model_config(name, platform, io_types, batch, kind, instances)
        with atomic_output(root / name / VERSION / filename) as tmp:
            shutil.copyfile(source, tmp)
        write_bytes_atomic(root / name / "config.pbtxt", text_format.MessageToString(config).encode())
        written.append(root / name / "config.pbtxt")
    return written
