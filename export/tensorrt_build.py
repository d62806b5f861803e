"""FP16 ONNX → strongly typed TensorRT engine, one code path for TensorRT 10.3 (JetPack 6)
and 11.x.

FP16 lives in the ONNX graph (``cminet_fp16.onnx``); the network is created
``STRONGLY_TYPED`` so TensorRT keeps exactly those types. That is also why no precision
flag is set: TensorRT 11 removed ``BuilderFlag.FP16`` and strongly typed networks reject it
in 10.x. Only ``*_v2``-era APIs are used (``build_serialized_network``,
``set_memory_pool_limit``, no ``EXPLICIT_BATCH``, no ``platform_has_fast_fp16``).

Metadata goes to a JSON sidecar beside the engine (``cminet_fp16.engine.json``), never
prepended to the engine bytes, so ``trtexec --loadEngine`` still reads the file.

This module needs no PyTorch, so on a device that only has the runtime and TensorRT:

    python -m cminet.export.tensorrt_build cminet_fp16.onnx cminet_fp16.engine --max-shape 1x1024x1024
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from cminet.runtime.contract import INPUT_NAMES, SIDECAR_FORMAT
from cminet.runtime.errors import CMINetError
from cminet.runtime.files import write_bytes_atomic

# N×H×W. Defaults sized for a Jetson Orin Nano 8 GB: up to 1024² single images.
DEFAULT_MIN_SHAPE = (1, 16, 16)
DEFAULT_OPT_SHAPE = (1, 256, 256)
DEFAULT_MAX_SHAPE = (4, 1024, 1024)


class TensorRTUnavailable(CMINetError):
    """TensorRT or a CUDA GPU is missing: no engine can be built here."""


@dataclass
class EngineBuild:
    engine: Path
    sidecar: Path
    build_seconds: float
    fp16_layers: int
    total_layers: int


def tensorrt_status() -> tuple[bool, str]:
    """(available, reason): whether an engine can be built on this machine, and if not why."""
    try:
        import tensorrt as trt
    except ImportError:
        return False, "TensorRT is not installed (pip install 'cminet[trt]' on a GPU machine; JetPack 6 ships it)"
    from cminet.runtime.cuda import CudaUnavailable, open_cuda

    try:
        open_cuda(0)
    except CudaUnavailable as exc:
        return False, f"TensorRT {trt.__version__} is installed but {exc}"
    return True, f"TensorRT {trt.__version__}"


def _dims(shape: tuple[int, int, int]) -> tuple[int, int, int, int]:
    n, h, w = shape
    return (n, 1, h, w)


def build_engine(onnx_path: str | Path, engine_path: str | Path, min_shape=DEFAULT_MIN_SHAPE,
                 opt_shape=DEFAULT_OPT_SHAPE, max_shape=DEFAULT_MAX_SHAPE, workspace_mib: int = 1024,
                 timing_cache: str | Path | None = None, config_json: str | None = None) -> EngineBuild:
    """Build and write ``engine_path`` plus ``<engine_path>.json``; fail if no layer is FP16."""
    ok, reason = tensorrt_status()
    if not ok:
        raise TensorRTUnavailable(reason)
    import tensorrt as trt

    from cminet.runtime.cuda import open_cuda

    onnx_path, engine_path = Path(onnx_path), Path(engine_path)
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise CMINetError(f"{onnx_path}: TensorRT's ONNX parser failed: {errors}")

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mib << 20)
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED  # lets the inspector report layer precisions
    profile = builder.create_optimization_profile()
    for name in INPUT_NAMES:
        profile.set_shape(name, _dims(min_shape), _dims(opt_shape), _dims(max_shape))
    config.add_optimization_profile(profile)
    cache_path = Path(timing_cache) if timing_cache else None
    cache = config.create_timing_cache(cache_path.read_bytes() if cache_path and cache_path.is_file() else b"")
    config.set_timing_cache(cache, ignore_mismatch=False)

    started = time.monotonic()
    serialized = builder.build_serialized_network(network, config)
    seconds = time.monotonic() - started
    if serialized is None:
        raise CMINetError(f"{onnx_path}: TensorRT could not build an engine (see the log above)")
    if cache_path:
        write_bytes_atomic(cache_path, bytes(config.get_timing_cache().serialize()))

    fp16_layers, total_layers = count_fp16_layers(trt, logger, serialized)
    if fp16_layers == 0:
        raise CMINetError(f"{onnx_path}: the engine has no FP16 layer (is this the FP16 ONNX?)")

    cuda = open_cuda(0)
    device = cuda.device_info(0)
    write_bytes_atomic(engine_path, bytes(serialized))
    sidecar = Path(f"{engine_path}.json")
    meta = {
        "format": SIDECAR_FORMAT,
        "onnx": onnx_path.name,
        "onnx_sha256": hashlib.sha256(onnx_path.read_bytes()).hexdigest(),
        "engine_sha256": hashlib.sha256(bytes(serialized)).hexdigest(),
        "config": json.loads(config_json) if config_json else None,
        "precision": "fp16",
        "strongly_typed": True,
        "profile": {"min": list(min_shape), "opt": list(opt_shape), "max": list(max_shape), "layout": "N,H,W"},
        "inputs": list(INPUT_NAMES),
        "tensorrt_version": trt.__version__,
        "gpu": asdict(device),
        "build_seconds": round(seconds, 2),
        "fp16_layers": fp16_layers,
        "total_layers": total_layers,
        "workspace_mib": workspace_mib,
    }
    write_bytes_atomic(sidecar, (json.dumps(meta, indent=2) + "\n").encode())
    return EngineBuild(engine_path, sidecar, seconds, fp16_layers, total_layers)


def count_fp16_layers(trt, logger, serialized) -> tuple[int, int]:
    """(layers with an FP16 output, all layers) from the engine inspector's JSON."""
    engine = trt.Runtime(logger).deserialize_cuda_engine(serialized)
    inspector = engine.create_engine_inspector()
    info = json.loads(inspector.get_engine_information(trt.LayerInformationFormat.JSON))
    layers = info.get("Layers", [])
    fp16 = 0
    for layer in layers:
        text = json.dumps(layer) if isinstance(layer, dict) else str(layer)
        if "Half" in text or "FP16" in text or "kHALF" in text:
            fp16 += 1
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
    args = parser.parse_args(argv)
    try:
        shapes = [tuple(int(v) for v in text.lower().split("x")) for text in (args.min_shape, args.opt_shape,
                                                                             args.max_shape)]
        if not args.onnx.is_file():
            raise CMINetError(f"{args.onnx}: no such file")
        build = build_engine(args.onnx, args.engine, *shapes, workspace_mib=args.workspace,
                             timing_cache=args.timing_cache)
    except (CMINetError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {build.engine} ({build.fp16_layers}/{build.total_layers} layers FP16, "
          f"{build.build_seconds:.1f} s) and {build.sidecar}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
