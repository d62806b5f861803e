"""IFCNN as an ONNX graph: a TIMING REFERENCE ONLY, never a fusion method of this project.

The CPU speed notes measure CMINet's CPU latency against IFCNN (Zhang et al., Information Fusion
2020) run through the same ONNX Runtime in the same run. This builds the published
architecture with random (He-initialised) weights, because only its arithmetic matters for
timing: its outputs mean nothing. Per input: ResNet-101's first convolution (7×7, 3→64,
stride 1, padding 3; the grey image repeated to 3 channels as IFCNN does) and a 3×3 64→64
convolution with ReLU (batch norm folded into it); element-wise maximum fusion; a 3×3
64→64 convolution with ReLU and a 1×1 64→3 reconstruction. 17.0 GFLOPs at 256², as the
issue states (counted by :func:`cminet.benchmarks.onnx_cost.onnx_flops`).

Inputs ``mri``/``other`` (N×1×H×W float32), output ``fused`` (N×3×H×W). Needs ``onnx``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cminet.runtime.contract import INPUT_NAMES, OUTPUT_NAME
from cminet.runtime.files import atomic_output

FILE = "ifcnn_timing_reference.onnx"
OPSET = 17


def build_ifcnn(path: str | Path, seed: int = 0) -> Path:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    inits = []

    def weight(name: str, out_ch: int, in_ch: int, k: int) -> list[str]:
        std = np.sqrt(2.0 / (in_ch * k * k))  # He initialisation
        inits.append(numpy_helper.from_array((rng.standard_normal((out_ch, in_ch, k, k)) * std).astype(np.float32),
                                             f"{name}.weight"))
        inits.append(numpy_helper.from_array(np.zeros(out_ch, np.float32), f"{name}.bias"))
        return [f"{name}.weight", f"{name}.bias"]

    conv1, conv2 = weight("conv1", 64, 3, 7), weight("conv2", 64, 64, 3)
    conv3, conv4 = weight("conv3", 64, 64, 3), weight("conv4", 3, 64, 1)
    nodes, branches = [], []
    for name in INPUT_NAMES:  # the two branches share their weights, as in IFCNN
        nodes += [helper.make_node("Concat", [name] * 3, [f"{name}_rgb"], axis=1),
                  helper.make_node("Conv", [f"{name}_rgb", *conv1], [f"{name}_c1"], kernel_shape=[7, 7], pads=[3] * 4),
                  helper.make_node("Conv", [f"{name}_c1", *conv2], [f"{name}_c2"], kernel_shape=[3, 3], pads=[1] * 4),
                  helper.make_node("Relu", [f"{name}_c2"], [f"{name}_feat"])]
        branches.append(f"{name}_feat")
    nodes += [helper.make_node("Max", branches, ["fused_feat"]),
              helper.make_node("Conv", ["fused_feat", *conv3], ["c3"], kernel_shape=[3, 3], pads=[1] * 4),
              helper.make_node("Relu", ["c3"], ["c3_act"]),
              helper.make_node("Conv", ["c3_act", *conv4], [OUTPUT_NAME], kernel_shape=[1, 1])]
    dims = ["batch", 1, "height", "width"]
    graph = helper.make_graph(nodes, "ifcnn_timing_reference",
                              [helper.make_tensor_value_info(n, TensorProto.FLOAT, dims) for n in INPUT_NAMES],
                              [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT,
                                                             ["batch", 3, "height", "width"])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="cminet",
                              doc_string="IFCNN architecture with random weights: a CPU timing reference only")
    model.ir_version = 9
    onnx.checker.check_model(model)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(path) as tmp:
        onnx.save(model, str(tmp))
    return path
