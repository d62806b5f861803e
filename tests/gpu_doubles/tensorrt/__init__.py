"""Test double of the ``tensorrt`` Python API, TensorRT 10.3 (JetPack 6) and 11.x flavours
(``CMINET_GPU_DOUBLES``'s ``tensorrt=10.3`` / ``tensorrt=11.1``; see ``fake_gpu``).

It proves **call shapes and data flow, not kernels**: the "engine" is the parsed ONNX
(written into the serialized plan) and its execution context runs ONNX Runtime on the CPU,
reading its inputs from fake device memory and writing its output there, when the stream
it was enqueued on is synchronised. Nothing on a real GPU is exercised.

Names, argument names, enum values and removals follow the bindings:

* ``python/src/infer/pyCore.cpp`` and ``pyFoundationalTypes.cpp`` of NVIDIA/TensorRT
  (tags v10.3.0 and v11.1), as published in ``tensorrt-stubs`` 10.13 (the ``.pyi`` this
  project type-checks against): ``Builder.create_network(flags=0)``,
  ``OnnxParser.parse_from_file(model)``, ``IOptimizationProfile.set_shape(input, min, opt,
  max)``, ``IBuilderConfig.set_memory_pool_limit(pool, pool_size)``,
  ``create_timing_cache(serialized_timing_cache)``, ``set_timing_cache(cache,
  ignore_mismatch)``, ``Runtime.deserialize_cuda_engine(serialized_engine)`` (``None`` and
  an ERROR log on a bad or foreign plan), ``ICudaEngine.get_tensor_profile_shape(name,
  profile_index)``, ``IExecutionContext.set_input_shape(name, shape)``,
  ``set_tensor_address(name, memory)``, ``execute_async_v3(stream_handle: int)``,
  ``EngineInspector.get_engine_information(format)``.
* Enum values as in the 10.x stubs: ``NetworkDefinitionCreationFlag.EXPLICIT_BATCH = 0``,
  ``STRONGLY_TYPED = 1``; ``DataType.FLOAT = 0``, ``HALF = 1``; ``MemoryPoolType.WORKSPACE
  = 0``; ``ProfilingVerbosity.LAYER_NAMES_ONLY = 0, NONE = 1, DETAILED = 2``;
  ``TensorIOMode.INPUT = 1, OUTPUT = 2``; ``LayerInformationFormat.ONELINE = 0, JSON = 1``.
* TensorRT 11 (NVIDIA's "Migrating from TensorRT 10.x to 11.x" guide, Python API
  reference and IEngineInspector pages): weak typing is gone, so ``BuilderFlag.FP16`` /
  ``INT8`` / ``BF16`` / ``FP8`` / ``INT4`` / ``FP4`` / ``OBEY_PRECISION_CONSTRAINTS`` /
  ``PREFER_PRECISION_CONSTRAINTS`` / ``DIRECT_IO``, ``ICudaEngine.device_memory_size``,
  ``Builder.platform_has_fast_fp16`` / ``platform_has_fast_int8`` and
  ``NetworkDefinitionCreationFlag.EXPLICIT_BATCH`` do not exist; ``STRONGLY_TYPED`` is
  kept (value 0) and ignored; the inspector's JSON replaces ``"Bindings"`` with
  ``"I/O Tensors"`` and splits ``"Format/Datatype"`` into ``"Format"`` and ``"DataType"``.
"""

from __future__ import annotations

import enum
import hashlib
import json
import sys
import threading
from pathlib import Path

import fake_gpu
import numpy as np

_GPU = fake_gpu.gpu()
_FLAVOUR = _GPU.config.tensorrt
if _FLAVOUR not in ("10.3", "11.1"):
    raise ModuleNotFoundError("No module named 'tensorrt'", name="tensorrt")
TRT11 = _FLAVOUR == "11.1"
__version__ = {"10.3": "10.3.0.30", "11.1": "11.1.0.0"}[_FLAVOUR]
_MAGIC = b"cminet-fake-trt-plan\0"


# -- enums ------------------------------------------------------------------------------
class DataType(enum.IntEnum):
    FLOAT = 0
    HALF = 1
    INT8 = 2
    INT32 = 3
    BOOL = 4
    UINT8 = 5
    FP8 = 6
    BF16 = 7
    INT64 = 8


float32, float16, int32, int64 = DataType.FLOAT, DataType.HALF, DataType.INT32, DataType.INT64
_NP = {DataType.FLOAT: np.float32, DataType.HALF: np.float16, DataType.INT8: np.int8, DataType.INT32: np.int32,
       DataType.BOOL: np.bool_, DataType.UINT8: np.uint8, DataType.INT64: np.int64}
_ONNX_TO_TRT = {1: DataType.FLOAT, 10: DataType.HALF, 6: DataType.INT32, 7: DataType.INT64, 9: DataType.BOOL,
                3: DataType.INT8, 2: DataType.UINT8, 16: DataType.BF16}


def nptype(trt_type: DataType):
    return _NP[DataType(trt_type)]


def volume(iterable) -> int:
    values = list(iterable)
    return int(np.prod(values)) if values else 1


if TRT11:
    NetworkDefinitionCreationFlag = enum.IntEnum("NetworkDefinitionCreationFlag", {"STRONGLY_TYPED": 0})
    BuilderFlag = enum.IntEnum("BuilderFlag", {"DEBUG": 2, "GPU_FALLBACK": 3, "REFIT": 4, "DISABLE_TIMING_CACHE": 5,
                                               "TF32": 6, "SPARSE_WEIGHTS": 7})
else:
    NetworkDefinitionCreationFlag = enum.IntEnum("NetworkDefinitionCreationFlag", {
        "EXPLICIT_BATCH": 0, "STRONGLY_TYPED": 1, "PREFER_JIT_PYTHON_PLUGINS": 2, "PREFER_AOT_PYTHON_PLUGINS": 3})
    BuilderFlag = enum.IntEnum("BuilderFlag", {"FP16": 0, "INT8": 1, "DEBUG": 2, "GPU_FALLBACK": 3, "REFIT": 4,
                                               "DISABLE_TIMING_CACHE": 5, "TF32": 6, "SPARSE_WEIGHTS": 7,
                                               "OBEY_PRECISION_CONSTRAINTS": 9,
                                               "PREFER_PRECISION_CONSTRAINTS": 10, "DIRECT_IO": 11, "BF16": 17})
_PRECISION_FLAGS = {"FP16", "INT8", "BF16", "FP8", "INT4", "FP4"}


class MemoryPoolType(enum.IntEnum):
    WORKSPACE = 0
    DLA_MANAGED_SRAM = 1
    DLA_LOCAL_DRAM = 2
    DLA_GLOBAL_DRAM = 3
    TACTIC_DRAM = 4
    TACTIC_SHARED_MEMORY = 5


class ProfilingVerbosity(enum.IntEnum):
    LAYER_NAMES_ONLY = 0
    NONE = 1
    DETAILED = 2


class TensorIOMode(enum.IntEnum):
    NONE = 0
    INPUT = 1
    OUTPUT = 2


class LayerInformationFormat(enum.IntEnum):
    ONELINE = 0
    JSON = 1


class ExecutionContextAllocationStrategy(enum.IntEnum):
    STATIC = 0
    ON_PROFILE_CHANGE = 1
    USER_MANAGED = 2


class Dims(tuple):
    """Shapes come back as Dims: a sequence of ints (-1 for a dynamic dimension)."""

    def __new__(cls, shape=()):
        return super().__new__(cls, (int(v) for v in shape))


# -- logging ----------------------------------------------------------------------------
class ILogger:
    class Severity(enum.IntEnum):
        INTERNAL_ERROR = 0
        ERROR = 1
        WARNING = 2
        INFO = 3
        VERBOSE = 4

    INTERNAL_ERROR, ERROR, WARNING, INFO, VERBOSE = Severity


class Logger(ILogger):
    def __init__(self, min_severity: ILogger.Severity = ILogger.Severity.WARNING):
        self.min_severity = min_severity

    def log(self, severity: ILogger.Severity, msg: str) -> None:
        if severity <= self.min_severity:
            print(f"[TRT] [{severity.name[0]}] {msg}", file=sys.stderr)


def _error(logger: ILogger, message: str) -> None:
    logger.log(ILogger.Severity.ERROR, message)


# -- host memory ------------------------------------------------------------------------
class IHostMemory:
    def __init__(self, data: bytes):
        self._data = bytes(data)

    def __bytes__(self) -> bytes:
        return self._data

    def __buffer__(self, flags):  # Python 3.12+: memoryview(host_memory) like the real one
        return memoryview(self._data)

    @property
    def nbytes(self) -> int:
        return len(self._data)

    @property
    def dtype(self) -> DataType:
        return DataType.UINT8


def _as_bytes(buffer) -> bytes:
    return bytes(buffer)


# -- network, parser, profile, config, builder -------------------------------------------
class ITensor:
    def __init__(self, name: str, shape, dtype: DataType):
        self.name, self.shape, self.dtype = name, Dims(shape), dtype


class INetworkDefinition:
    def __init__(self, flags: int):
        self._flags = flags
        self._inputs: list[ITensor] = []
        self._outputs: list[ITensor] = []
        self._onnx: bytes | None = None
        self._layers: list[dict] = []

    @property
    def flags(self) -> int:
        return self._flags

    def get_flag(self, flag) -> bool:
        return bool(self._flags & (1 << int(flag)))

    @property
    def strongly_typed(self) -> bool:
        return TRT11 or self.get_flag(NetworkDefinitionCreationFlag.STRONGLY_TYPED)

    num_inputs = property(lambda self: len(self._inputs))
    num_outputs = property(lambda self: len(self._outputs))
    num_layers = property(lambda self: len(self._layers))

    def get_input(self, index: int) -> ITensor:
        return self._inputs[index]

    def get_output(self, index: int) -> ITensor:
        return self._outputs[index]


class ParserError:
    def __init__(self, desc: str):
        self._desc = desc

    def desc(self) -> str:
        return self._desc

    def code(self) -> int:
        return 1

    def __str__(self) -> str:
        return f"In node -1 (parse): INVALID_GRAPH: {self._desc}"


class OnnxParser:
    def __init__(self, network: INetworkDefinition, logger: ILogger):
        self._network, self._logger, self._errors = network, logger, []

    @property
    def num_errors(self) -> int:
        return len(self._errors)

    def get_error(self, index: int) -> ParserError:
        return self._errors[index]

    def clear_errors(self) -> None:
        self._errors.clear()

    def parse_from_file(self, model: str) -> bool:
        try:
            data = Path(model).read_bytes()
        except OSError as exc:
            self._errors.append(ParserError(f"Failed to open ONNX file {model}: {exc.strerror}"))
            return False
        return self.parse(data, path=model)

    def parse(self, model, path: str | None = None) -> bool:
        import onnx

        try:
            proto = onnx.load_from_string(_as_bytes(model))
            inferred = onnx.shape_inference.infer_shapes(proto)
        except Exception as exc:  # noqa: BLE001 - the real parser reports any failure as an error
            self._errors.append(ParserError(f"Failed to parse the ONNX model: {exc}"))
            return False
        initializers = {i.name for i in proto.graph.initializer}
        types = {v.name: v.type.tensor_type.elem_type
                 for v in (*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output)}

        def tensor(v):
            dims = [d.dim_value if d.HasField("dim_value") else -1 for d in v.type.tensor_type.shape.dim]
            return ITensor(v.name, dims, _ONNX_TO_TRT[v.type.tensor_type.elem_type])

        net = self._network
        net._inputs = [tensor(v) for v in proto.graph.input if v.name not in initializers]
        net._outputs = [tensor(v) for v in proto.graph.output]
        net._onnx = proto.SerializeToString()
        net._weights_bytes = sum(len(onnx.numpy_helper.to_array(i).tobytes()) for i in proto.graph.initializer)
        net._layers = [{"name": node.name or f"{node.op_type}_{k}", "type": node.op_type,
                        "outputs": [(o, _ONNX_TO_TRT.get(types.get(o, 1), DataType.FLOAT)) for o in node.output]}
                       for k, node in enumerate(proto.graph.node) if node.op_type != "Constant"]
        return True


class IOptimizationProfile:
    def __init__(self):
        self._shapes: dict[str, tuple[Dims, Dims, Dims]] = {}

    def set_shape(self, input: str, min, opt, max) -> None:  # noqa: A002 - the bindings' argument names
        lo, mid, hi = Dims(min), Dims(opt), Dims(max)
        # pyCore.cpp's opt_profile_set_shape: setDimensions(kMIN/kOPT/kMAX) must each succeed.
        if not (len(lo) == len(mid) == len(hi)):
            raise RuntimeError("Shape provided for min is inconsistent with other shapes.")
        if any(a > b for a, b in zip(lo, mid, strict=True)):
            raise RuntimeError("Shape provided for opt is inconsistent with other shapes.")
        if any(a > b for a, b in zip(mid, hi, strict=True)):
            raise RuntimeError("Shape provided for max is inconsistent with other shapes.")
        self._shapes[input] = (lo, mid, hi)

    def get_shape(self, input: str) -> list[Dims]:  # noqa: A002
        return list(self._shapes.get(input, ()))

    def __bool__(self) -> bool:
        return bool(self._shapes)


class ITimingCache:
    def __init__(self, data: bytes):
        self._data = data or b"cminet-fake-timing-cache"

    def serialize(self) -> IHostMemory:
        return IHostMemory(self._data)

    def combine(self, input_cache: ITimingCache, ignore_mismatch: bool) -> bool:
        return True

    def reset(self) -> bool:
        return True


class IBuilderConfig:
    def __init__(self):
        self._flags: set[int] = set()
        self._pools: dict[int, int] = {}
        self._profiles: list[IOptimizationProfile] = []
        self._timing_cache: ITimingCache | None = None
        self.profiling_verbosity = ProfilingVerbosity.LAYER_NAMES_ONLY

    def set_flag(self, flag) -> None:
        self._flags.add(int(flag))

    def get_flag(self, flag) -> bool:
        return int(flag) in self._flags

    def clear_flag(self, flag) -> None:
        self._flags.discard(int(flag))

    def set_memory_pool_limit(self, pool: MemoryPoolType, pool_size: int) -> None:
        self._pools[int(pool)] = int(pool_size)

    def get_memory_pool_limit(self, pool: MemoryPoolType) -> int:
        return self._pools.get(int(pool), 0)

    def add_optimization_profile(self, profile: IOptimizationProfile) -> int:
        self._profiles.append(profile)
        return len(self._profiles) - 1

    @property
    def num_optimization_profiles(self) -> int:
        return len(self._profiles)

    def create_timing_cache(self, serialized_timing_cache) -> ITimingCache:
        return ITimingCache(_as_bytes(serialized_timing_cache))

    def set_timing_cache(self, cache: ITimingCache, ignore_mismatch: bool) -> bool:
        self._timing_cache = cache
        return True

    def get_timing_cache(self) -> ITimingCache | None:
        return self._timing_cache


class Builder:
    def __init__(self, logger: ILogger):
        self.logger = logger
        _GPU.count("Builder")
        if not _GPU.devices:
            _error(logger, "createInferBuilder: Error Code 6: API Usage Error (CUDA initialization failure)")

    if not TRT11:
        platform_has_fast_fp16 = property(lambda self: self._device().compute_capability >= (5, 3))
        platform_has_fast_int8 = property(lambda self: self._device().compute_capability >= (6, 1))

    def _device(self) -> fake_gpu.Device:
        return _GPU.device(_GPU.runtime_device())

    def create_network(self, flags: int = 0) -> INetworkDefinition:
        known = sum(1 << int(f) for f in NetworkDefinitionCreationFlag)
        if flags & ~known:
            raise TypeError(f"create_network(): flags {flags:#x} has bits no NetworkDefinitionCreationFlag names")
        return INetworkDefinition(int(flags))

    def create_builder_config(self) -> IBuilderConfig:
        return IBuilderConfig()

    def create_optimization_profile(self) -> IOptimizationProfile:
        return IOptimizationProfile()

    def build_serialized_network(self, network: INetworkDefinition, config: IBuilderConfig) -> IHostMemory | None:
        _GPU.count("build_serialized_network")
        if network._onnx is None or not network._outputs:
            _error(self.logger, "Network must have at least one output")
            return None
        precision_flags = {f.name for f in BuilderFlag if f.name in _PRECISION_FLAGS and config.get_flag(f)}
        if network.strongly_typed and precision_flags:
            _error(self.logger, f"IBuilder::buildSerializedNetwork: Error Code 4: API Usage Error (BuilderFlag "
                                f"{', '.join(sorted(precision_flags))} is not allowed with a strongly typed network)")
            return None
        profile: dict[str, list[list[int]]] = {}
        for tensor in network._inputs:
            if -1 not in tensor.shape:
                continue
            shapes = next((p._shapes[tensor.name] for p in config._profiles if tensor.name in p._shapes), None)
            if shapes is None:
                _error(self.logger, f"Network has dynamic or shape inputs, but no optimization profile has been "
                                    f"defined for {tensor.name}.")
                return None
            for dims in shapes:
                if len(dims) != len(tensor.shape) or any(s != -1 and s != d for s, d in zip(tensor.shape, dims,
                                                                                          strict=True)):
                    _error(self.logger, f"{tensor.name}: optimization profile dimensions {list(dims)} do not match "
                                        f"the network input {list(tensor.shape)}")
                    return None
            profile[tensor.name] = [list(d) for d in shapes]
        fp16_everywhere = not network.strongly_typed and "FP16" in precision_flags

        def layer_dtype(dtype: DataType) -> DataType:
            if network.strongly_typed:
                return dtype
            return DataType.HALF if fp16_everywhere and dtype == DataType.FLOAT else (
                DataType.FLOAT if dtype == DataType.HALF else dtype)

        device = self._device()
        max_pixels = max((int(np.prod(s[2])) for s in profile.values()), default=1)
        header = {
            "tensorrt_version": __version__, "compute_capability": list(device.compute_capability),
            "device_name": device.name, "profile": profile,
            "io": [{"name": t.name, "mode": "INPUT", "dtype": int(t.dtype), "shape": list(t.shape)}
                   for t in network._inputs]
                  + [{"name": t.name, "mode": "OUTPUT", "dtype": int(t.dtype), "shape": list(t.shape)}
                     for t in network._outputs],
            "layers": [{"name": lay["name"], "type": lay["type"],
                        "outputs": [[o, int(layer_dtype(d))] for o, d in lay["outputs"]]} for lay in network._layers],
            "verbosity": int(config.profiling_verbosity),
            "weights_bytes": network._weights_bytes,
            # A made-up activation size: 32 bytes per pixel of the profile's largest input.
            "activation_bytes": 32 * max_pixels,
        }
        head = json.dumps(header).encode()
        return IHostMemory(_MAGIC + len(head).to_bytes(8, "little") + head + network._onnx)


# -- runtime, engine, context -----------------------------------------------------------
class Runtime:
    def __init__(self, logger: ILogger):
        self.logger = logger

    def deserialize_cuda_engine(self, serialized_engine) -> ICudaEngine | None:
        _GPU.count("deserialize_cuda_engine")
        data = _as_bytes(serialized_engine)
        if not data.startswith(_MAGIC):
            _error(self.logger, "IRuntime::deserializeCudaEngine: Error Code 1: Serialization (Serialization "
                                "assertion magicTagRead == kMAGIC_TAG failed.Magic tag does not match)")
            return None
        size = int.from_bytes(data[len(_MAGIC):len(_MAGIC) + 8], "little")
        start = len(_MAGIC) + 8
        try:
            header = json.loads(data[start:start + size])
        except ValueError:
            _error(self.logger, "IRuntime::deserializeCudaEngine: Error Code 1: Serialization (truncated plan)")
            return None
        onnx_bytes = data[start + size:]
        if header["tensorrt_version"] != __version__:
            _error(self.logger, f"IRuntime::deserializeCudaEngine: Error Code 6: API Usage Error (The engine plan "
                                f"file is not compatible with this version of TensorRT, expecting library version "
                                f"{__version__} got {header['tensorrt_version']}, please rebuild.)")
            return None
        device = _GPU.device(_GPU.runtime_device())
        if tuple(header["compute_capability"]) != device.compute_capability:
            want = "".join(map(str, device.compute_capability))
            got = "".join(map(str, header["compute_capability"]))
            _error(self.logger, f"IRuntime::deserializeCudaEngine: Error Code 1: Serialization (The engine plan "
                                f"file is generated on an incompatible device, expecting compute {want} got "
                                f"compute {got}, please rebuild.)")
            return None
        return ICudaEngine(header, onnx_bytes, device.index)


_SESSIONS: dict[str, object] = {}
_SESSIONS_LOCK = threading.Lock()


def _session(onnx_bytes: bytes):
    """ONNX Runtime CPU session on the engine's graph: the double's stand-in for kernels."""
    key = hashlib.sha256(onnx_bytes).hexdigest()
    with _SESSIONS_LOCK:
        if key not in _SESSIONS:
            import onnxruntime as ort

            options = ort.SessionOptions()
            options.intra_op_num_threads = 1
            options.log_severity_level = 3
            _SESSIONS[key] = ort.InferenceSession(onnx_bytes, options, providers=["CPUExecutionProvider"])
        return _SESSIONS[key]


class ICudaEngine:
    def __init__(self, header: dict, onnx_bytes: bytes, device: int):
        self._header, self._onnx, self._device = header, onnx_bytes, device
        self._io = {t["name"]: t for t in header["io"]}
        self._names = [t["name"] for t in header["io"]]
        self._weights = _GPU.malloc(max(header["weights_bytes"], 1), device, "engine weights")

    def __del__(self):
        weights, self._weights = getattr(self, "_weights", None), None
        if weights is not None:
            _GPU.free(weights)

    @property
    def num_io_tensors(self) -> int:
        return len(self._names)

    @property
    def num_layers(self) -> int:
        return len(self._header["layers"])

    @property
    def num_optimization_profiles(self) -> int:
        return 1

    @property
    def name(self) -> str:
        return "cminet"

    def __getitem__(self, index: int) -> str:
        return self._names[index]

    def get_tensor_name(self, index: int) -> str:
        return self._names[index]

    def _tensor(self, name: str) -> dict:
        if name not in self._io:
            raise KeyError(f"{name} is not an I/O tensor of this engine")
        return self._io[name]

    def get_tensor_mode(self, name: str) -> TensorIOMode:
        return TensorIOMode[self._tensor(name)["mode"]]

    def get_tensor_dtype(self, name: str) -> DataType:
        return DataType(self._tensor(name)["dtype"])

    def get_tensor_shape(self, name: str) -> Dims:
        return Dims(self._tensor(name)["shape"])

    def get_tensor_profile_shape(self, name: str, profile_index: int) -> list[Dims]:
        if profile_index != 0 or self.get_tensor_mode(name) != TensorIOMode.INPUT:
            raise RuntimeError(f"{name}: no profile shapes (profile {profile_index})")
        return [Dims(s) for s in self._header["profile"][name]]

    def get_device_memory_size_for_profile_v2(self, profile_index: int) -> int:
        return self.device_memory_size_v2

    @property
    def device_memory_size_v2(self) -> int:
        return int(self._header["activation_bytes"])

    if not TRT11:
        @property
        def device_memory_size(self) -> int:  # removed in TensorRT 11
            return self.device_memory_size_v2

    def create_execution_context(self, strategy=ExecutionContextAllocationStrategy.STATIC) -> IExecutionContext:
        return IExecutionContext(self)

    def create_engine_inspector(self) -> EngineInspector:
        return EngineInspector(self)

    def serialize(self) -> IHostMemory:
        head = json.dumps(self._header).encode()
        return IHostMemory(_MAGIC + len(head).to_bytes(8, "little") + head + self._onnx)


class IExecutionContext:
    def __init__(self, engine: ICudaEngine):
        self.engine = engine
        self._shapes: dict[str, Dims] = {}
        self._addresses: dict[str, int] = {}
        self._activations = _GPU.malloc(max(engine.device_memory_size_v2, 1), engine._device, "activations")
        self._logger = Logger()

    def __del__(self):
        activations, self._activations = getattr(self, "_activations", None), None
        if activations is not None:
            _GPU.free(activations)

    def set_input_shape(self, name: str, shape) -> bool:
        dims = Dims(shape)
        if self.engine.get_tensor_mode(name) != TensorIOMode.INPUT:
            _error(self._logger, f"setInputShape: {name} is not an input tensor")
            return False
        lo, _, hi = self.engine.get_tensor_profile_shape(name, 0)
        if len(dims) != len(lo) or any(d < a or d > b for d, a, b in zip(dims, lo, hi, strict=True)):
            _error(self._logger, f"IExecutionContext::setInputShape: Error Code 3: API Usage Error (Given "
                                 f"dimensions {list(dims)} for {name} are outside the profile "
                                 f"{list(lo)} .. {list(hi)})")
            return False
        self._shapes[name] = dims
        return True

    def set_tensor_address(self, name: str, memory: int) -> bool:
        if not isinstance(memory, int):
            raise TypeError("set_tensor_address(): incompatible function arguments (memory: int)")
        self.engine._tensor(name)
        self._addresses[name] = memory
        return True

    def get_tensor_address(self, name: str) -> int:
        return self._addresses.get(name, 0)

    def _inputs(self) -> list[str]:
        return [n for n in self.engine._names if self.engine.get_tensor_mode(n) == TensorIOMode.INPUT]

    def get_tensor_shape(self, name: str) -> Dims:
        if self.engine.get_tensor_mode(name) == TensorIOMode.INPUT:
            return self._shapes.get(name, self.engine.get_tensor_shape(name))
        # The double's one shape rule: outputs take the first input's shape (true for cminet).
        return self._shapes.get(self._inputs()[0], self.engine.get_tensor_shape(name))

    @property
    def all_binding_shapes_specified(self) -> bool:
        return all(n in self._shapes for n in self._inputs())

    def infer_shapes(self) -> list[str]:
        return [n for n in self._inputs() if n not in self._shapes]

    def update_device_memory_size_for_shapes(self) -> int:
        if not self.all_binding_shapes_specified:
            return 0
        return 32 * int(np.prod(self._shapes[self._inputs()[0]][2:]))

    def execute_async_v3(self, stream_handle: int) -> bool:
        _GPU.count("execute_async_v3")
        if not isinstance(stream_handle, int):
            raise TypeError("execute_async_v3(): incompatible function arguments. The following argument types "
                            f"are supported: (self, stream_handle: int) -> bool; got {type(stream_handle).__name__}")
        engine = self.engine
        current = _GPU.runtime_device()
        try:
            stream = _GPU.stream(stream_handle)
        except fake_gpu.FakeCudaError as exc:
            _error(self._logger, f"IExecutionContext::enqueueV3: Error Code 1: Cuda Runtime ({exc})")
            return False
        if current != engine._device or stream.device != engine._device:
            _error(self._logger, "IExecutionContext::enqueueV3: Error Code 1: Cuda Runtime (invalid device context: "
                                 f"engine on device {engine._device}, current device {current}, "
                                 f"stream on device {stream.device})")
            return False
        missing = self.infer_shapes() + [n for n in engine._names if n not in self._addresses]
        if missing:
            _error(self._logger, f"IExecutionContext::enqueueV3: Error Code 3: API Usage Error (no shape or address "
                                 f"for {', '.join(missing)})")
            return False
        views = {}
        for name in engine._names:
            dtype = np.dtype(nptype(engine.get_tensor_dtype(name)))
            shape = tuple(self.get_tensor_shape(name))
            nbytes = int(np.prod(shape)) * dtype.itemsize
            try:
                views[name] = (*_GPU.find(self._addresses[name], nbytes), dtype, shape, nbytes)
            except fake_gpu.FakeCudaError as exc:
                _error(self._logger, f"IExecutionContext::enqueueV3: Error Code 1: Cuda Runtime ({name}: {exc})")
                return False
        session = _session(engine._onnx)

        def run():  # the "kernels": ONNX Runtime on what is in device memory when the stream runs
            feeds = {}
            for name in self._inputs():
                alloc, offset, dtype, shape, nbytes = views[name]
                feeds[name] = np.frombuffer(bytes(alloc.data[offset:offset + nbytes]), dtype).reshape(shape)
            outputs = [n for n in engine._names if engine.get_tensor_mode(n) == TensorIOMode.OUTPUT]
            results = session.run(outputs, feeds)
            for name, value in zip(outputs, results, strict=True):
                alloc, offset, dtype, _, nbytes = views[name]
                alloc.data[offset:offset + nbytes] = np.ascontiguousarray(value, dtype=dtype).tobytes()

        _GPU.enqueue(stream_handle, run)
        return True


class EngineInspector:
    def __init__(self, engine: ICudaEngine):
        self.engine = engine
        self.execution_context = None

    def _layer(self, layer: dict):
        verbosity = ProfilingVerbosity(self.engine._header["verbosity"])
        if verbosity != ProfilingVerbosity.DETAILED:
            return layer["name"]
        outputs = []
        for name, dtype in layer["outputs"]:
            dtype = DataType(dtype)
            fmt = f"Row major linear {'FP16' if dtype == DataType.HALF else 'FP32'} format"
            if TRT11:
                outputs.append({"Name": name, "Location": "Device", "Format": f"{fmt} (kLINEAR)",
                                "DataType": "Half" if dtype == DataType.HALF else "Float"})
            else:
                outputs.append({"Name": name, "Location": "Device", "Format/Datatype": fmt})
        return {"Name": layer["name"], "LayerType": layer["type"], "Outputs": outputs}

    def get_layer_information(self, layer_index: int, format: LayerInformationFormat) -> str:  # noqa: A002
        layer = self._layer(self.engine._header["layers"][layer_index])
        return json.dumps(layer) if format == LayerInformationFormat.JSON else str(layer)

    def get_engine_information(self, format: LayerInformationFormat) -> str:  # noqa: A002
        if ProfilingVerbosity(self.engine._header["verbosity"]) == ProfilingVerbosity.NONE:
            return ""
        layers = [self._layer(layer) for layer in self.engine._header["layers"]]
        if format == LayerInformationFormat.ONELINE:
            return "\n".join(json.dumps(layer) for layer in layers)
        if TRT11:
            io = [{"Name": t["name"], "IOMode": t["mode"].title(),
                   "DataType": "Half" if t["dtype"] == DataType.HALF else "Float", "Dimensions": t["shape"],
                   "Location": "Device", "IsShapeInferenceIO": False} for t in self.engine._header["io"]]
            return json.dumps({"Layers": layers, "I/O Tensors": io})
        return json.dumps({"Layers": layers, "Bindings": self.engine._names})
