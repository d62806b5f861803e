"""FLOPs of an ONNX graph at a given input size, counted from the graph itself.

Every Conv, ConvTranspose, MatMul and Gemm contributes 2 × its multiply-adds (the same
convention as PyTorch's FlopCounterMode; on the shipped model the two agree exactly at
256², 512² and 1024²); element-wise ops, normalisations and softmax are not counted.
cminet's graph computes its padding from the input shape at run time, which ONNX's shape
inference cannot follow on the dynamic graph, so the input shape is fixed first and the
shape arithmetic folded with onnxslim (already the exporter's simplifier); then every
tensor has a static shape. Needs ``onnx`` and ``onnxslim`` (``cminet[train]``); nothing runs.
"""

from __future__ import annotations

import contextlib
import io
import math
from pathlib import Path

COUNTED = ("Conv", "ConvTranspose", "MatMul", "Gemm")


def _macs(op: str, x: list[int], w: list[int], y: list[int], transposed: bool = False) -> int:
    """Multiply-adds of one node from its input, weight (second input) and output shapes."""
    if op == "Conv":  # each output value: C_in/group × kernel taps
        return math.prod(y) * math.prod(w[1:])
    if op == "ConvTranspose":  # each input value meets C_out/group × kernel taps
        return math.prod(x) * math.prod(w[1:])
    if op == "Gemm":
        return math.prod(y) * (x[0] if transposed else x[-1])
    return math.prod(y) * x[-1]  # MatMul: the contracted dimension is A's last


def onnx_flops(path: str | Path, height: int, width: int, batch: int = 1) -> int:
    """FLOPs of one call of the model at ``path`` on ``batch``×1×``height``×``width`` inputs."""
    import onnx
    import onnxslim
    from onnx import shape_inference

    model = onnx.load(str(path))
    shapes = [f"{i.name}:{batch},1,{height},{width}" for i in model.graph.input]
    with contextlib.redirect_stdout(io.StringIO()):  # onnxslim prints a summary table
        model = shape_inference.infer_shapes(onnxslim.slim(model, input_shapes=shapes))
    graph = model.graph
    known = {i.name: list(i.dims) for i in graph.initializer}
    for value in (*graph.input, *graph.value_info, *graph.output):
        dims = value.type.tensor_type.shape.dim
        if all(d.HasField("dim_value") for d in dims):
            known[value.name] = [d.dim_value for d in dims]
    total = 0
    for node in graph.node:
        if node.op_type not in COUNTED:
            continue
        missing = [t for t in (node.input[0], node.input[1], node.output[0]) if t not in known]
        if missing:
            raise ValueError(f"{path}: no static shape for {missing[0]} of {node.op_type} at {height}×{width}")
        trans_a = any(a.name == "transA" and a.i for a in node.attribute)
        total += _macs(node.op_type, known[node.input[0]], known[node.input[1]], known[node.output[0]], trans_a)
    return 2 * total
