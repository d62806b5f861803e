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

from cminet.model import CMINet, count_parameters
from cminet.runtime.backends.onnxruntime import session_input_dtype
from cminet.runtime.compare import compare, worst
from cminet.runtime.contract import INPUT_NAMES, TOLERANCES
from cminet.runtime.folders import PAIR_TYPES, SAMPLES_DIR, list_pairs
from cminet.runtime.imaging import prepare_pair, read_image

FP16_MAX = 65504.0
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
    """The shipped sample pairs as float32 1×1×H×W network inputs, resized to each size
    (``sizes=None``: as they are)."""
    out = []
    for ref in list_pairs(SAMPLES_DIR, PAIR_TYPES, "all"):
        pair = prepare_pair(read_image(ref.mri_path), read_image(ref.other_path))
        if sizes is None:
            out.append((f"{ref.pair}/{ref.name}", pair.mri[None, None], pair.other[None, None]))
            continue
        for h, w in sizes:
            a = cv2.resize(pair.mri, (w, h), interpolation=cv2.INTER_AREA)
            b = cv2.resize(pair.other, (w, h), interpolation=cv2.INTER_AREA)
            out.append((f"{ref.pair}@{h}x{w}", a[None, None], b[None, None]))
    return out


def _session(path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _run(session, a, b) -> np.ndarray:
    dtype = session_input_dtype(session)
    out = session.run(None, dict(zip(INPUT_NAMES, (a.astype(dtype), b.astype(dtype)), strict=True)))[0]
    return out.astype(np.float32)


def check_onnx(path: Path) -> Check:
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except onnx.checker.ValidationError as exc:
        return Check(f"onnx checker ({path.name})", False, str(exc).splitlines()[0])
    return Check(f"onnx checker ({path.name})", True, "valid")


def torch_outputs(model: CMINet, samples) -> list[np.ndarray]:
    with torch.no_grad():
        return [model(torch.from_numpy(a), torch.from_numpy(b)).numpy() for _, a, b in samples]


def _rows(names, comparisons) -> list[dict]:
    return [{"sample": n, **c.as_dict()} for n, c in zip(names, comparisons, strict=True)]


def check_parity(expected: list[np.ndarray], path: Path, samples) -> Check:
    """ONNX Runtime (FP32) against the FP32 PyTorch outputs ``expected`` on the same inputs,
    within the FP32 tolerance."""
    session = _session(path)
    comparisons = [compare(ref, _run(session, a, b)) for ref, (_, a, b) in zip(expected, samples, strict=True)]
    total, tolerance = worst(comparisons), TOLERANCES["fp32"]
    return Check("ONNX Runtime vs PyTorch", total.passed(tolerance),
                 f"max abs {total.max_abs:.2e} (≤ {tolerance.max_abs:g}), PSNR ≥ {total.psnr_db:.1f} dB "
                 f"(≥ {tolerance.min_psnr_db:g}) on {len(samples)} inputs",
                 {"per_sample": _rows([n for n, _, _ in samples], comparisons), "max_abs": total.max_abs,
                  "min_psnr_db": total.psnr_db})


def check_fp16(expected: list[np.ndarray], fp16: Path, samples) -> Check:
    """The FP16 graph against the FP32 PyTorch outputs ``expected``: pixels and what FP16
    does to the fusion metrics."""
    session = _session(fp16)
    comparisons = [compare(ref, _run(session, a, b), (a, b)) for ref, (_, a, b) in zip(expected, samples, strict=True)]
    total, tolerance = worst(comparisons), TOLERANCES["fp16"]
    metric = total.metric_change
    return Check("FP16 vs FP32", total.passed(tolerance),
                 f"PSNR ≥ {total.psnr_db:.1f} dB (≥ {tolerance.min_psnr_db:g}), max abs {total.max_abs:.2e} "
                 f"(≤ {tolerance.max_abs:g}); largest metric change "
                 f"MI {metric['MI']:+.4f}, Qabf {metric['Qabf']:+.4f}, VIF {metric['VIF']:+.4f}",
                 {"per_sample": _rows([n for n, _, _ in samples], comparisons), "min_psnr_db": total.psnr_db,
                  "max_abs": total.max_abs, "max_abs_metric_change": metric})


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
        dtype = session_input_dtype(session)
        feeds = dict(zip(INPUT_NAMES, (a.astype(dtype), b.astype(dtype)), strict=True))
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
    expected = torch_outputs(model, samples)  # the FP32 PyTorch reference, computed once for both comparisons
    checks = [check_onnx(fp32), check_parity(expected, fp32, samples), check_io_dtypes(fp32, "float32")]
    if fp16 is not None:
        checks += [check_onnx(fp16), check_io_dtypes(fp16, "float32" if io_dtype == "fp32" else "float16"),
                   check_fp16(expected, fp16, samples), check_fp16_range(fp16, samples)]
    checks += [check_weights(model, fp32, fp16), check_tensorrt_ops([p for p in (fp32, fp16) if p is not None])]
    return checks


def as_json(checks: list[Check]) -> list[dict]:
    return [asdict(c) for c in checks]


def write_reference(model: CMINet, path: str | Path, weights_sha256: str | None = None) -> Path:
    """FP32 PyTorch outputs on the shipped sample pairs (native size), saved beside the ONNX
    as the drift reference that ``cminet-bench`` and the tests read without torch
    (format: :func:`cminet.runtime.compare.load_reference`)."""
    from cminet.runtime.files import atomic_output

    samples = sample_inputs(sizes=None)
    arrays: dict[str, np.ndarray] = {"names": np.array([n for n, _, _ in samples])}
    if weights_sha256:
        arrays["weights_sha256"] = np.array(weights_sha256)
    for i, ((_, a, b), fused) in enumerate(zip(samples, torch_outputs(model, samples), strict=True)):
        arrays[f"mri_{i}"], arrays[f"other_{i}"], arrays[f"fused_{i}"] = a, b, fused
    with atomic_output(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez_compressed(fh, **arrays)
    return Path(path)
