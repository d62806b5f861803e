"""PyTorch → FP32 ONNX with dynamic batch, height and width.

Inputs ``mri`` and ``other`` (float32 N×1×H×W in [0, 1]), output ``fused``. The padding to
a multiple of 16 is inside the graph, so any H, W ≥ 16 runs. Recursion is unrolled, and
each shared weight is stored once (the unrolled steps read the same initializer).

Two exporters, chosen by opset:

* opset ≥ 18: ``torch.onnx.export(dynamo=True)`` with ``torch.export.Dim`` shapes. It
  folds each Linear's transposed weight into a constant once per unrolled step (10
  duplicate initializers for this model); :func:`~cminet.export.graph.dedupe_initializers`
  merges them back into one.
* opset 17 (the default, what TensorRT 8.6 / JetPack 5 and every TensorRT 10.x read): the
  TorchScript exporter. Measured reason: torch 2.13's dynamo exporter emits opset 18 at
  the lowest, and ``onnx.version_converter`` cannot lower it (``No Adapter To Version $17
  for Pad``). On this 2-core CPU the TorchScript export also takes 0.6 s against 18 s.
"""

from __future__ import annotations

import copy
import warnings
from pathlib import Path

import onnx
import torch

from cminet.checkpoint import check_finite
from cminet.model import CMINet, explicit_attention
from cminet.runtime.contract import (
    INPUT_NAMES,
    META_CONFIG,
    META_PRECISION,
    META_WEIGHTS_SHA256,
    OUTPUT_NAME,
    ContractError,
)
from cminet.runtime.files import atomic_output, check_output

from .graph import compact_names, dedupe_initializers, inline_identity_initializers, slim

DEFAULT_OPSET = 17
MIN_OPSET, MAX_OPSET = 17, 23
DYNAMO_MIN_OPSET = 18
# onnxruntime 1.17, the oldest the runtime supports, reads IR versions up to 9.
MAX_IR_VERSION = 9


def export_onnx(model: CMINet, path: str | Path, opset: int = DEFAULT_OPSET, simplify: bool = True,
                weights_sha256: str | None = None) -> Path:
    """Write ``model`` as FP32 ONNX at ``path`` (atomically) and return the path.

    ``simplify`` runs onnxslim over the graph (see :func:`cminet.export.graph.slim`);
    ``weights_sha256`` (of the checkpoint file) is recorded in the model's metadata so a
    shipped ONNX can be tied to the weights it came from."""
    if not isinstance(model, CMINet):
        raise ContractError(f"model: expected a CMINet (cminet.load_pretrained()), got {type(model).__name__}")
    if not isinstance(opset, int) or isinstance(opset, bool) or not MIN_OPSET <= opset <= MAX_OPSET:
        raise ContractError(f"opset: expected a whole number from {MIN_OPSET} (LayerNormalization) to {MAX_OPSET}, "
                            f"got {opset!r}")
    check_finite(model, "model")  # NaN/Inf weights would export into a model that fuses NaN images
    path = check_output(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = copy.deepcopy(model).float().cpu().eval()
    # Two *different* example tensors: passing one tensor twice lets the exporter treat the
    # inputs as aliases and wire both branches to the same input.
    generator = torch.Generator().manual_seed(0)
    a = torch.rand(1, 1, 64, 64, generator=generator)
    b = torch.rand(1, 1, 64, 64, generator=generator)
    with atomic_output(path) as tmp_path, warnings.catch_warnings(), torch.no_grad(), explicit_attention(model):
        tmp = str(tmp_path)
        warnings.simplefilter("ignore")
        if opset >= DYNAMO_MIN_OPSET:
            _export_dynamo(model, (a, b), tmp, opset)
        else:
            _export_torchscript(model, (a, b), tmp, opset)
        proto = onnx.load(tmp)
        dedupe_initializers(proto)
        inline_identity_initializers(proto)
        if simplify:
            proto = slim(proto)
        compact_names(proto)
        proto.ir_version = min(proto.ir_version, MAX_IR_VERSION)
        proto.producer_name, proto.doc_string = "cminet", "CMINet cross-modality medical image fusion"
        props = {META_PRECISION: "fp32", META_CONFIG: model.config.to_json()}
        if weights_sha256:
            props[META_WEIGHTS_SHA256] = weights_sha256
        onnx.helper.set_model_props(proto, props)
        onnx.checker.check_model(proto, full_check=True)
        onnx.save(proto, tmp)
    return path


def _export_dynamo(model, args, path, opset):
    from torch.export import Dim

    batch = Dim("batch", min=1, max=256)
    height, width = Dim("height", min=16, max=8192), Dim("width", min=16, max=8192)
    shapes = {"a": {0: batch, 2: height, 3: width}, "b": {0: batch, 2: height, 3: width}}
    torch.onnx.export(model, args, path, dynamo=True, dynamic_shapes=shapes, opset_version=opset,
                      input_names=list(INPUT_NAMES), output_names=[OUTPUT_NAME], external_data=False)


def _export_torchscript(model, args, path, opset):
    axes = {0: "batch", 2: "height", 3: "width"}
    torch.onnx.export(model, args, path, dynamo=False, opset_version=opset, input_names=list(INPUT_NAMES),
                      output_names=[OUTPUT_NAME], dynamic_axes={n: axes for n in (*INPUT_NAMES, OUTPUT_NAME)},
                      do_constant_folding=True)
