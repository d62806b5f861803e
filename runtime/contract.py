"""The runtime contract: every fact the parts of cminet must agree on, defined once.

The exporter writes models that honour it, the runtime checks models against it, the
benchmark and the tests import it. Nothing here imports more than the standard library
and numpy, so a device application can read it without ONNX Runtime, TensorRT or torch.

    tensor names   mri, other → fused            (N×1×H×W, float32 or float16)
    sizes          H, W ≥ MIN_SIDE; the network pads to a multiple of PAD_MULTIPLE inside
    backends       BACKENDS: name → what it runs, which packages it needs, GPU or not
    files          the shipped ONNX pair and reference outputs, the engine sidecar
    tolerances     TOLERANCES: how far each precision may drift from FP32 PyTorch
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .errors import CMINetError

# -- tensors ------------------------------------------------------------------------------
INPUT_NAMES = ("mri", "other")
OUTPUT_NAME = "fused"
IO_RANK = 4  # N×1×H×W
IO_CHANNELS = 1
IO_DTYPES = ("float32", "float16")  # numpy names; ONNX "tensor(float)" / "tensor(float16)"
ONNX_TYPE_TO_DTYPE = {"tensor(float)": "float32", "tensor(float16)": "float16"}
MIN_SIDE = 16  # the network has four 2× stages of attention windows below this
PAD_MULTIPLE = 16  # padding inside the graph: any H, W ≥ MIN_SIDE runs

# -- model files --------------------------------------------------------------------------
ONNX_SUFFIXES = (".onnx",)
ENGINE_SUFFIXES = (".engine", ".plan", ".trt")
WEIGHTS_SUFFIXES = (".safetensors",)
# ONNX metadata_props keys written by the exporter.
META_PRECISION = "cminet.precision"  # "fp32" | "fp16"
META_IO_DTYPE = "cminet.io_dtype"  # "fp32" | "fp16"
META_CONFIG = "cminet.config"  # CMINetConfig as JSON
META_WEIGHTS_SHA256 = "cminet.weights_sha256"  # sha256 of the .safetensors the graph came from
# The engine sidecar: <engine>.json beside every engine cminet builds.
SIDECAR_FORMAT = "cminet-engine-v1"
SIDECAR_KEYS = ("format", "onnx", "onnx_sha256", "engine_sha256", "precision", "strongly_typed", "profile",
                "inputs", "tensorrt_version", "gpu", "build_seconds")

# What ships inside the wheel (cminet/weights/): the FP32 and FP16 ONNX of the shipped
# weights, and the FP32 PyTorch outputs on the shipped samples (drift reference).
PRECISIONS = ("fp32", "fp16")
SHIPPED_ONNX = {"fp32": "cminet.onnx", "fp16": "cminet_fp16.onnx"}
REFERENCE_FILE = "reference_outputs.npz"  # keys: names, mri_<i>, other_<i>, fused_<i>
SHIPPED_WEIGHTS = "cminet_default.safetensors"


def shipped_dir() -> Path:
    """cminet/weights/ of this install (a checkout or a wheel)."""
    from importlib import resources

    return Path(str(resources.files("cminet") / "weights"))


def shipped_onnx(precision: str = "fp32") -> Path:
    if precision not in SHIPPED_ONNX:
        raise ContractError(f"precision: expected one of {', '.join(SHIPPED_ONNX)}, got {precision!r}")
    return shipped_dir() / SHIPPED_ONNX[precision]


def sidecar_path(engine: str | Path) -> Path:
    return Path(f"{engine}.json")


# What each kind of model is, in words, and the backend `auto` picks for it (ONNX: measured).
MODEL_KINDS = {"onnx": "a .onnx file", "engine": "a .engine file", "weights": "a .safetensors checkpoint",
               "url": "an http(s):// server URL"}
AUTO_BACKEND = {"engine": "tensorrt", "weights": "torch-cpu", "url": "triton"}
# A Triton server's defaults: `cminet serve`'s model name and port (`cminet-export --triton`
# names its repository's models cminet_onnx and cminet_trt).
TRITON_MODEL = "cminet"
TRITON_PORT = 8000


def model_kind(path: str | Path) -> str:
    """'url' for http(s)://, else 'onnx', 'engine' or 'weights' by file suffix;
    :class:`ContractError` otherwise."""
    if isinstance(path, str) and path.split("://")[0].lower() in ("http", "https") and "://" in path:
        return "url"
    suffix = Path(path).suffix.lower()
    for kind, suffixes in (("onnx", ONNX_SUFFIXES), ("engine", ENGINE_SUFFIXES), ("weights", WEIGHTS_SUFFIXES)):
        if suffix in suffixes:
            return kind
    known = ", ".join((*ONNX_SUFFIXES, *ENGINE_SUFFIXES, *WEIGHTS_SUFFIXES))
    raise ContractError(f"{path}: unknown model file type {suffix or '(none)'!r}; expected {known}")


# -- backends -----------------------------------------------------------------------------
@dataclass(frozen=True)
class BackendSpec:
    """One backend: what file it runs, what it needs, and where its code lives.

    ``opener`` is ``"module:Class"``, imported only when the backend is opened, so listing
    backends never imports torch, TensorRT or CUDA."""

    name: str
    runs: str  # a key of MODEL_KINDS: "onnx", "engine", "weights" or "url"
    precisions: tuple[str, ...]
    requires: tuple[str, ...]  # importable modules, for the one-line "install X" message
    install: str  # what to install when missing
    gpu: bool
    opener: str
    summary: str

    @property
    def runtime(self) -> bool:
        """Part of the torch-free runtime (everything but the PyTorch reference)."""
        return self.runs != "weights"


BACKENDS: dict[str, BackendSpec] = {s.name: s for s in (
    BackendSpec("ort-cpu", "onnx", ("fp32", "fp16"), ("onnxruntime",), "pip install cminet", False,
                "cminet.runtime.backends.onnxruntime:OnnxRuntimeBackend", "ONNX Runtime, CPU"),
    BackendSpec("ort-cuda", "onnx", ("fp32", "fp16"), ("onnxruntime",),
                "pip uninstall onnxruntime && pip install 'cminet[gpu]'", True,
                "cminet.runtime.backends.onnxruntime:OnnxRuntimeBackend", "ONNX Runtime, CUDA execution provider"),
    BackendSpec("ort-trt", "onnx", ("fp16",), ("onnxruntime",),
                "pip uninstall onnxruntime && pip install 'cminet[gpu]' (and TensorRT)", True,
                "cminet.runtime.backends.onnxruntime:OnnxRuntimeBackend",
                "ONNX Runtime, TensorRT execution provider"),
    BackendSpec("tensorrt", "engine", ("fp16",), ("tensorrt",), "pip install 'cminet[trt]' (JetPack 6 ships it)",
                True, "cminet.runtime.backends.tensorrt:TensorRTBackend", "native TensorRT engine"),
    BackendSpec("ov-cpu", "onnx", ("fp32",), ("openvino",), "pip install 'cminet[openvino]'", False,
                "cminet.runtime.backends.openvino:OpenVINOBackend", "OpenVINO, CPU (the same FP32 ONNX)"),
    BackendSpec("triton", "url", ("fp32", "fp16"), ("tritonclient",), "pip install 'cminet[triton]'", False,
                "cminet.runtime.backends.triton:TritonBackend", "a Triton server (cminet serve, tritonserver)"),
    BackendSpec("torch-cpu", "weights", ("fp32",), ("torch",), "pip install 'cminet[train]'", False,
                "cminet.torch_backend:TorchBackend", "PyTorch eager, CPU (the FP32 reference)"),
    BackendSpec("torch-cuda", "weights", ("fp32", "fp16"), ("torch",), "pip install 'cminet[train]'", True,
                "cminet.torch_backend:TorchBackend", "PyTorch eager, CUDA"),
)}
AUTO = "auto"
BACKEND_CHOICES = (AUTO, *BACKENDS)
RUNTIME_BACKENDS = tuple(name for name, spec in BACKENDS.items() if spec.runtime)
ORT_PROVIDERS = {"ort-cpu": "CPUExecutionProvider", "ort-cuda": "CUDAExecutionProvider",
                 "ort-trt": "TensorrtExecutionProvider"}
ORT_OPTIMIZATION_LEVELS = ("disable", "basic", "extended", "all")
# backend="auto" for an FP32 ONNX on a CPU: ov-cpu only where OpenVINO is installed and a
# short interleaved measurement on this model and CPU (cached) finds it at most this
# fraction of ort-cpu's latency; ties stay with ONNX Runtime, the base install.
AUTO_CPU_SPEEDUP = 0.9
# N×H×W. The engine profile cminet builds by default (sized for a Jetson Orin Nano 8 GB:
# up to four 1024² images); ONNX Runtime's TensorRT provider gets the same one.
DEFAULT_ENGINE_PROFILE: tuple[tuple[int, int, int], ...] = ((1, 16, 16), (1, 256, 256), (4, 1024, 1024))
# Triton: C×H×W of every tensor (N is Triton's batch dimension), in `cminet serve` and in the
# repository `cminet-export --triton` writes. Dynamic batching waits at most this long for more
# requests of the same size: noise beside a ≥ 10 ms network call, enough for requests arriving
# together to meet.
TRITON_IO_DIMS = (1, -1, -1)
TRITON_QUEUE_DELAY_US = 1000


def backend_spec(name: str) -> BackendSpec:
    if name not in BACKENDS:
        raise ContractError(f"backend: expected one of {', '.join(BACKEND_CHOICES)}, got {name!r}")
    return BACKENDS[name]


# -- tolerances ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Tolerance:
    """How far a backend's output may be from the FP32 PyTorch reference (network output
    in [0, 1]): max absolute difference and minimum PSNR, both must hold."""

    max_abs: float
    min_psnr_db: float


TOLERANCES = {
    # FP32 ONNX / engines: reordered float sums only (measured 1e-6 .. 2e-5 on the samples).
    "fp32": Tolerance(max_abs=1e-4, min_psnr_db=80.0),
    # FP16 compute, FP32 kept where FP16 is unsafe (shipped model, ORT CPU: 78 dB, max 4.1e-3).
    "fp16": Tolerance(max_abs=2.5e-2, min_psnr_db=40.0),
}
# Fused uint8 images: rounding of values within max_abs of a .5 boundary.
FUSED_GREY_LEVELS = {"fp32": 1, "fp16": 3}


# -- sizes and engine profiles ------------------------------------------------------------
class ContractError(CMINetError):
    """A value that breaks the contract (a size, shape profile, name or dtype)."""


def parse_size(text: str) -> tuple[int, int]:
    """'256', '256x320' or '256×320' → (H, W), each ≥ MIN_SIDE."""
    parts = str(text).strip().lower().replace("×", "x").split("x")
    try:
        dims = [int(p) for p in parts]
    except ValueError:
        raise ContractError(f"size {text!r}: expected H×W like 256 or 256x320") from None
    if len(dims) == 1:
        dims *= 2
    if len(dims) != 2 or min(dims) < MIN_SIDE:
        raise ContractError(f"size {text!r}: expected H×W with both sides ≥ {MIN_SIDE}")
    return dims[0], dims[1]


def parse_shape(text: str) -> tuple[int, int, int]:
    """'1x256x256' (N×H×W) → (1, 256, 256), N ≥ 1 and H, W ≥ MIN_SIDE."""
    parts = str(text).strip().lower().replace("×", "x").split("x")
    try:
        n, h, w = (int(p) for p in parts)
    except ValueError:
        raise ContractError(f"shape {text!r}: expected N×H×W like 1x256x256") from None
    if n < 1 or min(h, w) < MIN_SIDE:
        raise ContractError(f"shape {text!r}: need N ≥ 1 and H, W ≥ {MIN_SIDE}")
    return n, h, w


def validate_profile(min_shape, opt_shape, max_shape) -> tuple[tuple[int, int, int], ...]:
    """An engine's N×H×W optimisation profile: each a valid shape and min ≤ opt ≤ max in
    every dimension. Returns the three as int tuples."""
    shapes = []
    for label, shape in (("min", min_shape), ("opt", opt_shape), ("max", max_shape)):
        parsed = parse_shape(shape) if isinstance(shape, str) else tuple(int(v) for v in shape)
        if len(parsed) != 3 or parsed[0] < 1 or min(parsed[1:]) < MIN_SIDE:
            raise ContractError(f"{label} shape {shape!r}: need N×H×W with N ≥ 1 and H, W ≥ {MIN_SIDE}")
        shapes.append(parsed)
    lo, opt, hi = shapes
    if not all(a <= b <= c for a, b, c in zip(lo, opt, hi, strict=True)):
        fmt = "×".join
        raise ContractError(f"engine profile needs min ≤ opt ≤ max in N, H and W; got min {fmt(map(str, lo))}, "
                            f"opt {fmt(map(str, opt))}, max {fmt(map(str, hi))}")
    return lo, opt, hi


@dataclass(frozen=True)
class ShapeProfile:
    """Allowed N×H×W range (inclusive). ``max=None``: unlimited (ONNX models)."""

    min: tuple[int, int, int] = (1, MIN_SIDE, MIN_SIDE)
    max: tuple[int, int, int] | None = None

    def check(self, shape: tuple[int, ...]) -> None:
        n, _, h, w = shape
        lo_ok = n >= self.min[0] and h >= self.min[1] and w >= self.min[2]
        hi_ok = self.max is None or (n <= self.max[0] and h <= self.max[1] and w <= self.max[2])
        if not (lo_ok and hi_ok):
            top = "∞" if self.max is None else "×".join(map(str, self.max))
            raise ContractError(f"input N×H×W {n}×{h}×{w} is outside the model's profile "
                                f"{'×'.join(map(str, self.min))} … {top}")

