"""INT8 (static QDQ) ONNX for CPUs where INT8 pays: those with VNNI or AMX.

INT8 convolutions are fast only where the CPU has dot-product instructions for 8-bit
integers (AVX-512 VNNI, AVX-VNNI, AMX). Without them, ONNX Runtime widens each 8-bit
multiply through AVX2 and the quantise/dequantise pairs around every op cost more than
they save: on the 2-core AMD EPYC (AVX2, no VNNI) the static QDQ model ran 1.6-1.9x
slower than FP32 (256²: 298-333 vs 111-191 ms; 512²: 1108-1162 vs 567-610 ms) and moved
the fusion metrics by ΔMI −3.4 %, ΔVIF −4.7 %, ΔQabf −1.3 % (PSNR 44 dB against FP32). So
``cminet-export --int8`` refuses on such a CPU, saying why, instead of writing a model that
is slower and worse. (On TensorRT, QDQ networks stay strongly typed; that path is not built
here.)

The quantisation: ONNX Runtime's ``quant_pre_process`` (its symbolic shape inference fails
on the dynamic H/W graph, "Incomplete symbolic shape inference", so it is skipped; ONNX's
own shape inference and the optimiser still run), then ``quantize_static`` in QDQ format,
per-channel INT8 weights, UINT8 activations (the U8S8 pairing ONNX Runtime's x86 kernels
are built for), MinMax ranges calibrated on training pairs only. Dynamic quantisation drifts
least (PSNR 47 dB) but measured 4-7x slower on the CPU, so it is not offered.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from cminet.runtime.contract import INPUT_NAMES
from cminet.runtime.cpuinfo import cpuinfo_field
from cminet.runtime.errors import CMINetError
from cminet.runtime.files import atomic_output

INT8_FILE = "cminet_int8.onnx"
# /proc/cpuinfo flags that give 8-bit dot products (VNNI) or tiles (AMX).
INT8_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")
CALIBRATION_PAIRS = 32  # spread over the training split's pair types
QUANTIZED_OPS = ("Conv",)


def cpu_flags() -> set[str]:
    return set((cpuinfo_field("flags") or "").split())


def int8_support(flags: set[str] | None = None) -> tuple[bool, str]:
    """(True, the flag) where this CPU runs INT8 faster than FP32; (False, a one-line
    reason) where it does not."""
    flags = cpu_flags() if flags is None else flags
    found = [f for f in INT8_FLAGS if f in flags]
    if found:
        return True, f"this CPU has {found[0]}"
    return False, (f"this CPU has no VNNI/AMX ({'/'.join(INT8_FLAGS)} missing from /proc/cpuinfo): INT8 ran "
                   "1.6-1.9x slower than FP32 on such a CPU and moved MI by -3.4 %; use the FP32 ONNX here")


def calibration_pairs(data_root: str | Path, count: int = CALIBRATION_PAIRS) -> list[tuple[np.ndarray, np.ndarray]]:
    """``count`` training pairs (the train split only; never test), evenly spaced through
    each pair type's list, as float32 1×1×H×W network inputs."""
    from cminet.runtime.folders import PAIR_TYPES, list_pairs
    from cminet.runtime.imaging import prepare_pair, read_image

    root = Path(data_root)
    present = [p for p in PAIR_TYPES if (root / p / "train.txt").is_file()]
    if not present:
        raise CMINetError(f"--calibration {root}: no <pair>/train.txt under it (a dataset laid out like "
                          "shared/data/harvard; INT8 ranges come from training pairs only)")
    refs = list_pairs(root, present, "train")
    chosen = [refs[i] for i in np.linspace(0, len(refs) - 1, min(count, len(refs))).round().astype(int)]
    pairs = []
    for ref in chosen:
        pair = prepare_pair(read_image(ref.mri_path), read_image(ref.other_path))
        pairs.append((pair.mri[None, None], pair.other[None, None]))
    return pairs


class _Reader:
    """ONNX Runtime's CalibrationDataReader protocol over a list of input pairs."""

    def __init__(self, pairs: Iterable[tuple[np.ndarray, np.ndarray]]):
        self.feeds = iter([dict(zip(INPUT_NAMES, p, strict=True)) for p in pairs])

    def get_next(self):
        return next(self.feeds, None)


def quantize_int8(fp32_onnx: str | Path, out: str | Path, pairs: list[tuple[np.ndarray, np.ndarray]]) -> Path:
    """Static QDQ INT8 model of ``fp32_onnx`` calibrated on ``pairs``, written atomically."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if not pairs:
        raise CMINetError("INT8 calibration needs at least one pair")
    out = Path(out)
    with tempfile.TemporaryDirectory(prefix="cminet-int8-") as folder:
        prepared = Path(folder) / "prepared.onnx"
        quant_pre_process(str(fp32_onnx), str(prepared), skip_symbolic_shape=True)
        with atomic_output(out) as tmp:
            quantize_static(str(prepared), str(tmp), _Reader(pairs), quant_format=QuantFormat.QDQ,
                            per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            calibrate_method=CalibrationMethod.MinMax, op_types_to_quantize=list(QUANTIZED_OPS))
    return out
