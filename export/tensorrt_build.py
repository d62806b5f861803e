"""FP16 ONNX → strongly typed TensorRT engine, one code path for TensorRT 10.3 (JetPack 6)
and 11.x.

FP16 lives in the ONNX graph (``cminet_fp16.onnx``); the network is created
``STRONGLY_TYPED`` so TensorRT keeps exactly those types, including the ops the FP16 export
deliberately kept in FP32 (LayerNorm, Softmax, Reduce*, Pow, Sqrt, Div). That is also why
no precision flag is set: TensorRT 11 removed ``BuilderFlag.FP16`` and strongly typed
networks reject it in 10.x. Only APIs present in both are used (``build_serialized_network``,
``set_memory_pool_limit``, ``device_memory_size_v2``; no ``EXPLICIT_BATCH``, no
``platform_has_fast_fp16``).

Metadata goes to a JSON sidecar beside the engine (``cminet_fp16.engine.json``, the keys of
:data:`cminet.runtime.contract.SIDECAR_KEYS`), never prepended to the engine bytes, so
``trtexec --loadEngine`` still reads the file.

This module needs no PyTorch, so on a device that only has the runtime and TensorRT:

    python -m cminet.export.tensorrt_build cminet_fp16.onnx cminet_fp16.engine --max-shape 1x1024x1024
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from cminet.runtime.backends.base import BackendUnavailable
from cminet.runtime.backends.tensorrt import (  # torch-free: usable on a Jetson
    engine_device_memory,
    import_tensorrt,
    tensorrt_status,
)
from cminet.runtime.contract import (
    DEFAULT_ENGINE_PROFILE,
    INPUT_NAMES,
    SIDECAR_FORMAT,
    ContractError,
    parse_shape,
    sidecar_path,
    validate_profile,
)
from cminet.runtime.cuda import CudaUnavailable, open_cuda
from cminet.runtime.errors import CMINetError
from cminet.runtime.files import write_bytes_atomic

DEFAULT_MIN_SHAPE, DEFAULT_OPT_SHAPE, DEFAULT_MAX_SHAPE = DEFAULT_ENGINE_PROFILE
__all__ = ["DEFAULT_MAX_SHAPE", "DEFAULT_MIN_SHAPE", "DEFAULT_OPT_SHAPE", "EngineBuild", "TensorRTUnavailable",
           "build_engine", "count_fp16_layers", "main", "tensorrt_status"]


class TensorRTUnavailable(CMINetError):
    """TensorRT or a CUDA GPU is missing: no engine can be built here."""


@dataclass
class EngineBuild:
    engine: Path
    sidecar: Path
    build_seconds: float
    fp16_layers: int
    total_layers: int
    device_memory_bytes: int  # activation memory of one execution context (the profile's max)


def _dims(shape: tuple[int, int, int]) -> list[int]:
    """N×H×W → the N×1×H×W list ``trt.Dims`` takes."""
    n, h, w = shape
    return [n, 1, h, w]


def build_engine(onnx_path: str | Path, engine_path: str | Path, min_shape=DEFAULT_MIN_SHAPE,
                 opt_shape=DEFAULT_OPT_SHAPE, max_shape=DEFAULT_MAX_SHAPE, workspace_mib: int = 1024,
                 timing_cache: str | Path | None = None, config_json: str | None = None,
                 device: int = 0) -> EngineBuild:
    """Build and write ``engine_path`` plus its sidecar; fail if no layer is FP16.

    Shapes are N×H×W (tuples or '1x256x256'), checked by
    :func:`cminet.runtime.contract.validate_profile` before anything else."""
    min_shape, opt_shape, max_shape = validate_profile(min_shape, opt_shape, max_shape)
    onnx_path, engine_path = Path(onnx_path), Path(engine_path)
    if not onnx_path.is_file():
        raise CMINetError(f"{onnx_path}: no such file")
    try:
        import_tensorrt()
        cuda = open_cuda(device)
    except (BackendUnavailable, CudaUnavailable) as exc:
        raise TensorRTUnavailable(str(exc)) from None
    import tensorrt as trt

    with cuda, cuda.activate():  # the context is current for the build and released after it
        gpu = cuda.device_info()
        logger = trt.Logger(trt.Logger.WARNING)
        builder = trt.Builder(logger)
        network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
        parser = trt.OnnxParser(network, logger)
        if not parser.parse_from_file(str(onnx_path)):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise CMINetError(f"{onnx_path}: TensorRT's ONNX parser failed: {errors}")

        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mib << 20)
        config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED  # the inspector reports layer types
        profile = builder.create_optimization_profile()
        for name in INPUT_NAMES:
            profile.set_shape(name, trt.Dims(_dims(min_shape)), trt.Dims(_dims(opt_shape)), trt.Dims(_dims(max_shape)))
        config.add_optimization_profile(profile)
        cache_path = Path(timing_cache) if timing_cache else None
        cache = config.create_timing_cache(cache_path.read_bytes() if cache_path and cache_path.is_file() else b"")
        config.set_timing_cache(cache, ignore_mismatch=False)

        started = time.monotonic()
        serialized = builder.build_serialized_network(network, config)
        seconds = time.monotonic() - started
        if serialized is None:
            raise CMINetError(f"{onnx_path}: TensorRT could not build an engine (see TensorRT's log above)")
        plan = bytes(serialized)
        if cache_path:
            write_bytes_atomic(cache_path, bytes(config.get_timing_cache().serialize()))
        fp16_layers, total_layers, device_memory = inspect_engine(logger, plan)
        del parser, network, config, builder  # TensorRT objects go while the context is current
    if fp16_layers == 0:
        raise CMINetError(f"{onnx_path}: the engine has no FP16 layer (is this the FP16 ONNX?)")

    write_bytes_atomic(engine_path, plan)
    sidecar = sidecar_path(engine_path)
    meta = {
        "format": SIDECAR_FORMAT,
        "onnx": onnx_path.name,
        "onnx_sha256": hashlib.sha256(onnx_path.read_bytes()).hexdigest(),
        "engine_sha256": hashlib.sha256(plan).hexdigest(),
        "config": json.loads(config_json) if config_json else None,
        "precision": "fp16",
        "strongly_typed": True,
        "profile": {"min": list(min_shape), "opt": list(opt_shape), "max": list(max_shape), "layout": "N,H,W"},
        "inputs": list(INPUT_NAMES),
        "tensorrt_version": trt.__version__,
        "gpu": asdict(gpu),
        "build_seconds": round(seconds, 2),
        "fp16_layers": fp16_layers,
        "total_layers": total_layers,
        "device_memory_bytes": device_memory,
        "workspace_mib": workspace_mib,
    }
    write_bytes_atomic(sidecar, (json.dumps(meta, indent=2) + "\n").encode())
    return EngineBuild(engine_path, sidecar, seconds, fp16_layers, total_layers, device_memory)


def inspect_engine(logger: Any, plan: bytes) -> tuple[int, int, int]:
    """(layers with an FP16 output, all layers, activation bytes) of a serialized engine.
    Call with the CUDA context current."""
    import tensorrt as trt

    engine = trt.Runtime(logger).deserialize_cuda_engine(plan)
    if engine is None:
        raise CMINetError("TensorRT could not deserialise the engine it just built (see its log above)")
    inspector = engine.create_engine_inspector()
    text = inspector.get_engine_information(trt.LayerInformationFormat.JSON)
    fp16, total = count_fp16_layers(text)
    return fp16, total, engine_device_memory(engine)


def count_fp16_layers(inspector_json: str) -> tuple[int, int]:
    """(layers with an FP16 output, all layers) from ``get_engine_information(JSON)`` of an
    engine built with ``ProfilingVerbosity.DETAILED``. TensorRT 10 describes each output
    with ``"Format/Datatype": "Row major linear FP16 format"``; TensorRT 11 splits that into
    ``"Format"`` and ``"DataType": "Half"``."""
    layers = json.loads(inspector_json or "{}").get("Layers", [])

    def is_fp16(tensor: dict) -> bool:
        dtype = str(tensor.get("DataType", ""))
        legacy = str(tensor.get("Format/Datatype", ""))
        return dtype in ("Half", "FP16") or "FP16" in legacy or "Half" in legacy

    fp16 = sum(1 for layer in layers if isinstance(layer, dict) and any(is_fp16(t) for t in layer.get("Outputs", [])))
    return fp16, len(layers)


def main(argv: list[str] | None = None) -> int:
    """Build an engine from an FP16 ONNX file already on the device (no PyTorch needed)."""
    import argparse
    import sys

    parser = argparse.ArgumentParser(prog="python -m cminet.export.tensorrt_build", description=main.__doc__)
    parser.add_argument("onnx", type=Path, help="cminet_fp16.onnx written by cminet-export --fp16")
    parser.add_argument("engine", type=Path, help="where to write the engine (its .json sidecar goes beside it)")
    for flag, default in (("--min-shape", DEFAULT_MIN_SHAPE), ("--opt-shape", DEFAULT_OPT_SHAPE),
                          ("--max-shape", DEFAULT_MAX_SHAPE)):
        parser.add_argument(flag, default="x".join(map(str, default)), help="N×H×W (default %(default)s)")
    parser.add_argument("--workspace", type=int, default=1024, help="workspace MiB (default %(default)s)")
    parser.add_argument("--timing-cache", type=Path, help="timing cache file, reused across builds")
    parser.add_argument("--device", type=int, default=0, help="CUDA device index (default %(default)s)")
    args = parser.parse_args(argv)
    try:
        shapes = []
        for flag, text in (("--min-shape", args.min_shape), ("--opt-shape", args.opt_shape),
                           ("--max-shape", args.max_shape)):
            try:
                shapes.append(parse_shape(text))
            except ContractError as exc:
                raise ContractError(f"{flag}: {exc}") from None
        min_shape, opt_shape, max_shape = shapes
        build = build_engine(args.onnx, args.engine, min_shape, opt_shape, max_shape, workspace_mib=args.workspace,
                             timing_cache=args.timing_cache, device=args.device)
    except CMINetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {build.engine} ({build.fp16_layers}/{build.total_layers} layers FP16, "
          f"{build.build_seconds:.1f} s, {build.device_memory_bytes / 2**20:.0f} MiB activation memory) "
          f"and {build.sidecar}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
