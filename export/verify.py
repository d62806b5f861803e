"""Self-verification of an export, printed as a short report and saved as JSON.

Each check is independent and says what it measured: the onnx checker, ONNX Runtime vs
PyTorch parity, FP16 vs FP32 agreement (and what it does to the fusion metrics), weight
sharing and file sizes, I/O dtypes, the FP16 range on real images, and TensorRT parser
op coverage.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import torch

from cminet.data import PAIR_TYPES, list_pairs
from cminet.fusion import SAMPLES_DIR
from cminet.model import CMINet, count_parameters
from cminet.runtime.imaging import prepare_pair, read_image

from .onnx_export import INPUT_NAMES

FP16_MAX = 65504.0
PARITY_TOLERANCE = 1e-4
FP16_MIN_PSNR = 40.0
FP32_SIZE_RATIO = 1.15
FP16_SIZE_RATIO = 0.6
VERIFY_SIZES = ((256, 256), (200, 312))


@dataclass
class Check:
    name: str
    passed: bool
    summary: str
    details: dict = field(default_factory=dict)


def tensorrt_supported_ops() -> set[str]:
    text = resources.files("cminet.export").joinpath("tensorrt_ops.txt").read_text()
    return {line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")}


def sample_inputs(sizes=VERIFY_SIZES) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """The shipped sample pairs as float32 1×1×H×W network inputs, resized to each size."""
    out = []
    for ref in list_pairs(SAMPLES_DIR, PAIR_TYPES, "all"):
        pair = prepare_pair(read_image(ref.mri_path), read_image(ref.other_path))
        for h, w in sizes:
            a = cv2.resize(pair.mri, (w, h), interpolation=cv2.INTER_AREA)
            b = cv2.resize(pair.other, (w, h), interpolation=cv2.INTER_AREA)
            out.append((f"{ref.pair}@{h}x{w}", a[None, None], b[None, None]))
    return out


def _session(path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _psnr(ref: np.ndarray, test: np.ndarray) -> float:
    mse = float(np.mean((ref.astype(np.float64) - test.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(1.0 / mse)


def _run(session, a, b) -> np.ndarray:
    dtype = np.float16 if session.get_inputs()[0].type == "tensor(float16)" else np.float32
    out = session.run(None, {INPUT_NAMES[0]: a.astype(dtype), INPUT_NAMES[1]: b.astype(dtype)})[0]
    return out.astype(np.float32)


def check_onnx(path: Path) -> Check:
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except onnx.checker.ValidationError as exc:
        return Check(f"onnx checker ({path.name})", False, str(exc).splitlines()[0])
    return Check(f"onnx checker ({path.name})", True, "valid")


def check_parity(model: CMINet, path: Path, samples) -> Check:
    session, rows = _session(path), []
    for name, a, b in samples:
        with torch.no_grad():
            ref = model(torch.from_numpy(a), torch.from_numpy(b)).numpy()
        got = _run(session, a, b)
        rows.append({"sample": name, "max_abs": float(np.abs(got - ref).max()), "psnr_db": _psnr(ref, got)})
    worst = max(r["max_abs"] for r in rows)
    psnr = min(r["psnr_db"] for r in rows)
    return Check("ONNX Runtime vs PyTorch", worst < PARITY_TOLERANCE,
                 f"max abs {worst:.2e} (< {PARITY_TOLERANCE:g}), PSNR ≥ {psnr:.1f} dB on {len(rows)} inputs",
                 {"per_sample": rows, "max_abs": worst, "min_psnr_db": psnr})


def check_fp16(fp32: Path, fp16: Path, samples) -> Check:
    from cminet.metrics import evaluate

    s32, s16, rows = _session(fp32), _session(fp16), []
    for name, a, b in samples:
        o32, o16 = _run(s32, a, b), _run(s16, a, b)
        m32 = evaluate(a[0, 0] * 255, b[0, 0] * 255, np.clip(o32[0, 0], 0, 1) * 255)
        m16 = evaluate(a[0, 0] * 255, b[0, 0] * 255, np.clip(o16[0, 0], 0, 1) * 255)
        rows.append({"sample": name, "max_abs": float(np.abs(o16 - o32).max()), "psnr_db": _psnr(o32, o16),
                     "finite": bool(np.isfinite(o16).all()),
                     "metric_change": {k: m16[k] - m32[k] for k in m32}})
    psnr = min(r["psnr_db"] for r in rows)
    worst = max(r["max_abs"] for r in rows)
    metric = {k: max(abs(r["metric_change"][k]) for r in rows) for k in rows[0]["metric_change"]}
    passed = psnr >= FP16_MIN_PSNR and all(r["finite"] for r in rows)
    return Check("FP16 vs FP32", passed,
                 f"PSNR ≥ {psnr:.1f} dB (≥ {FP16_MIN_PSNR:g}), max abs {worst:.2e}; largest metric change "
                 f"MI {metric['MI']:.4f}, Qabf {metric['Qabf']:.4f}, VIF {metric['VIF']:.4f}",
                 {"per_sample": rows, "min_psnr_db": psnr, "max_abs": worst, "max_abs_metric_change": metric})


def check_weights(model: CMINet, fp32: Path, fp16: Path | None) -> Check:
    params = count_parameters(model)
    proto = onnx.load(str(fp32))
    stored = sum(int(np.prod(i.dims)) for i in proto.graph.initializer if i.data_type == onnx.TensorProto.FLOAT)
    size32 = fp32.stat().st_size
    ratio32 = size32 / (4 * params)
    details = {"parameters": params, "initializers": len(proto.graph.initializer), "float_values_stored": stored,
               "fp32_bytes": size32, "fp32_ratio_to_4x_params": ratio32}
    # Small folded constants (shape arithmetic, scales) are allowed; a duplicated weight is not.
    passed = stored <= params + 1024 and ratio32 <= FP32_SIZE_RATIO
    summary = (f"{len(proto.graph.initializer)} initializers hold {stored:,} floats for {params:,} parameters; "
               f"FP32 file {size32 / 1e6:.2f} MB = {ratio32:.3f} × 4 B × params (≤ {FP32_SIZE_RATIO})")
    if fp16 is not None:
        size16 = fp16.stat().st_size
        details.update(fp16_bytes=size16, fp16_ratio_to_fp32=size16 / size32)
        passed = passed and size16 / size32 <= FP16_SIZE_RATIO
        summary += f"; FP16 file {size16 / 1e6:.2f} MB = {size16 / size32:.3f} × FP32 (≤ {FP16_SIZE_RATIO})"
    return Check("weights stored once, file sizes", passed, summary, details)


def check_io_dtypes(path: Path, expected: str) -> Check:
    proto = onnx.load(str(path), load_external_data=False)
    found = {v.name: onnx.helper.tensor_dtype_to_np_dtype(v.type.tensor_type.elem_type).name
             for v in (*proto.graph.input, *proto.graph.output)}
    passed = all(dtype == expected for dtype in found.values())
    return Check(f"I/O dtypes ({path.name})", passed, ", ".join(f"{k}: {v}" for k, v in found.items()), found)


def check_fp16_range(fp16: Path, samples) -> Check:
    """Run the FP16 graph with every FP16 intermediate exposed; report the largest magnitude."""
    proto = onnx.shape_inference.infer_shapes(onnx.load(str(fp16)))
    fp16_tensors = [v for v in proto.graph.value_info if v.type.tensor_type.elem_type == onnx.TensorProto.FLOAT16]
    producers = {out: node.op_type for node in proto.graph.node for out in node.output}
    existing = {o.name for o in proto.graph.output}
    proto.graph.output.extend(v for v in fp16_tensors if v.name not in existing)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    largest: dict[str, float] = {}
    nonfinite = set()
    for _, a, b in samples:
        feeds = {INPUT_NAMES[0]: a.astype(_np_input(session)), INPUT_NAMES[1]: b.astype(_np_input(session))}
        for name, value in zip(names, session.run(None, feeds), strict=True):
            if value.dtype != np.float16:
                continue
            if not np.isfinite(value).all():
                nonfinite.add(name)
            largest[name] = max(largest.get(name, 0.0), float(np.abs(value[np.isfinite(value)]).max(initial=0)))
    top = max(largest, key=largest.get)
    peak = largest[top]
    passed = not nonfinite and peak < FP16_MAX / 4  # keep 4× headroom for other images
    return Check("FP16 range on real images", passed,
                 f"{len(largest)} FP16 tensors; largest |x| = {peak:.1f} ({producers.get(top, '?')} output) vs FP16 "
                 f"max {FP16_MAX:g}" + (f"; NaN/Inf in {len(nonfinite)} tensors" if nonfinite else ""),
                 {"largest_abs": peak, "largest_tensor_op": producers.get(top), "nonfinite": sorted(nonfinite)})


def _np_input(session) -> type:
    return np.float16 if session.get_inputs()[0].type == "tensor(float16)" else np.float32


def check_tensorrt_ops(paths: list[Path]) -> Check:
    supported = tensorrt_supported_ops()
    used = set()
    for path in paths:
        used |= {n.op_type for n in onnx.load(str(path), load_external_data=False).graph.node}
    missing = sorted(used - supported)
    return Check("TensorRT ONNX parser op coverage", not missing,
                 f"{len(used)} op types, all in the TensorRT 10.3 parser list" if not missing
                 else f"not supported by TensorRT's parser: {', '.join(missing)}",
                 {"ops": sorted(used), "unsupported": missing})


def verify_export(model: CMINet, fp32: Path, fp16: Path | None, io_dtype: str = "fp32") -> list[Check]:
    samples = sample_inputs()
    checks = [check_onnx(fp32), check_parity(model, fp32, samples), check_io_dtypes(fp32, "float32")]
    if fp16 is not None:
        checks += [check_onnx(fp16), check_io_dtypes(fp16, "float32" if io_dtype == "fp32" else "float16"),
                   check_fp16(fp32, fp16, samples), check_fp16_range(fp16, samples)]
    checks += [check_weights(model, fp32, fp16), check_tensorrt_ops([p for p in (fp32, fp16) if p is not None])]
    return checks


def as_json(checks: list[Check]) -> list[dict]:
    return [asdict(c) for c in checks]
