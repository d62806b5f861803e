"""FP32 ONNX → FP16 ONNX with onnxconverter-common.

Weights and compute go to FP16; the ops where FP16 is unsafe stay FP32 (the converter
wraps them in Casts): LayerNormalization and Softmax (their reductions), every ReduceMean /
ReduceMax (GADN and attention statistics), and Pow/Sqrt/Div (GADN's root-mean-square
and its normalisation, where squares of activations can pass FP16's 65504). Inputs and
outputs stay FP32 by default (``io_dtype="fp16"`` makes them FP16), and the result is
checked to really have the I/O dtypes asked for.
"""

from __future__ import annotations

from pathlib import Path

import onnx
from onnx import TensorProto

from cminet.runtime.contract import META_IO_DTYPE, META_PRECISION
from cminet.runtime.files import atomic_output

from .graph import compact_names, slim

FP32_OPS = ("LayerNormalization", "Softmax", "ReduceMean", "ReduceMax", "ReduceSum", "Pow", "Sqrt", "Div")
IO_DTYPES = {"fp32": TensorProto.FLOAT, "fp16": TensorProto.FLOAT16}


def convert_fp16(src: str | Path, dst: str | Path, io_dtype: str = "fp32", keep_fp32: tuple[str, ...] = (),
                 simplify: bool = True) -> Path:
    """Write the FP16 version of ``src`` to ``dst`` (atomically); return ``dst``.

    ``simplify`` runs onnxslim afterwards, which removes the Cast pairs the converter leaves
    back to back between two FP32-kept ops."""
    import warnings

    from onnxconverter_common import float16

    if io_dtype not in IO_DTYPES:
        raise ValueError(f"io_dtype must be fp32 or fp16, not {io_dtype!r}")
    model = onnx.load(str(src))
    # Drop stored intermediate types: the converter retypes tensors but not stale value_info
    # (seen with the Identity nodes the exporter emits for repeated constants).
    del model.graph.value_info[:]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the converter warns about values it clamps; the range check reports them
        fp16 = float16.convert_float_to_float16(
            model, keep_io_types=io_dtype == "fp32", op_block_list=list(FP32_OPS + tuple(keep_fp32))
        )
    fp16.ir_version = model.ir_version
    props = {p.key: p.value for p in model.metadata_props}
    onnx.helper.set_model_props(fp16, {**props, META_PRECISION: "fp16", META_IO_DTYPE: io_dtype})
    if simplify:
        fp16 = slim(fp16)
    compact_names(fp16)  # the converter adds a Cast pair with long names around every FP32 op
    wanted = IO_DTYPES[io_dtype]
    wrong = [v.name for v in (*fp16.graph.input, *fp16.graph.output) if v.type.tensor_type.elem_type != wanted]
    if wrong:
        raise RuntimeError(f"FP16 conversion left {', '.join(wrong)} with the wrong dtype (wanted {io_dtype})")
    onnx.checker.check_model(fp16)
    with atomic_output(dst) as tmp:
        onnx.save(fp16, str(tmp))
    return Path(dst)


def io_dtype_of(path: str | Path) -> dict[str, str]:
    """{'mri': 'float32', ...} for every graph input and output."""
    model = onnx.load(str(path), load_external_data=False)
    return {v.name: onnx.helper.tensor_dtype_to_np_dtype(v.type.tensor_type.elem_type).name
            for v in (*model.graph.input, *model.graph.output)}
