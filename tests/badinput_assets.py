"""Bad inputs a careless or hostile user might hand cminet, built once per test session:
broken images, hostile weights, ONNX graphs that look like cminet from outside but are
not, and a dataset folder. Used by tests/test_bad_inputs.py and tests/test_fuzz.py."""

from __future__ import annotations

import json
import shutil
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np

from cminet.runtime.folders import SAMPLES_DIR

CT_MRI = SAMPLES_DIR / "ct_mri/mri/34010.png"
CT = SAMPLES_DIR / "ct_mri/other/34010.png"
PET_MRI = SAMPLES_DIR / "pet_mri/mri/41066.png"
PET = SAMPLES_DIR / "pet_mri/other/41066.png"


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_declaring(width: int, height: int) -> bytes:
    """A structurally valid PNG whose header declares ``width × height`` grey pixels."""
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", zlib.compress(b"\0" * 64))
            + png_chunk(b"IEND", b""))


def write_images(folder: Path) -> None:
    shutil.copy(CT_MRI, folder / "mri.png")
    shutil.copy(CT, folder / "ct.png")
    shutil.copy(PET, folder / "pet.png")
    rng = np.random.default_rng(0)
    cv2.imwrite(str(folder / "rect_mri.png"), rng.integers(0, 255, (100, 120), dtype=np.uint8))
    cv2.imwrite(str(folder / "rect_ct.png"), rng.integers(0, 255, (100, 120), dtype=np.uint8))
    cv2.imwrite(str(folder / "tiny.png"), np.zeros((8, 8), np.uint8))
    cv2.imwrite(str(folder / "sixteen.png"), np.zeros((256, 256), np.uint16))
    (folder / "truncated.png").write_bytes(PET.read_bytes()[:3000])
    (folder / "garbage.png").write_bytes(b"\x00" * 100)
    (folder / "empty.png").write_bytes(b"")
    corrupt = bytearray(CT.read_bytes())
    corrupt[len(corrupt) // 2] ^= 0xFF  # one flipped byte inside IDAT
    (folder / "badcrc.png").write_bytes(bytes(corrupt))
    (folder / "huge.png").write_bytes(png_declaring(100_000, 100_000))
    (folder / "notpng.jpg").write_bytes(b"\xff\xd8\xff\xe0" + b"\x00" * 64)  # a JPEG that ends at once


def write_weights(folder: Path) -> None:
    import torch
    from safetensors.torch import save_file

    from cminet.checkpoint import FORMAT, save_checkpoint

    from .helpers import non_max_rule_model, tiny_checkpoint

    tiny_checkpoint(folder / "weights.safetensors")
    model = non_max_rule_model()
    with torch.no_grad():
        model.head[0].weight[0, 0, 0, 0] = float("nan")
    save_checkpoint(model, folder / "nan.safetensors")
    # Small tensors, but a config asking for a million channels: must be refused, not built.
    hostile = {"format": FORMAT, "config": json.dumps({"channels": 1_000_000, "embed_dim": 48}), "info": "{}"}
    save_file({"x": torch.zeros(2)}, str(folder / "hostile.safetensors"), metadata=hostile)
    save_file({"x": torch.zeros(2)}, str(folder / "foreign.safetensors"))  # no cminet metadata
    (folder / "garbage.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}")


def foreign_onnx(kind: str) -> bytes:
    """Graphs named like cminet from outside but breaking its contract."""
    import onnx
    from onnx import TensorProto, helper

    dims = ["N", 1, "H", "W"]
    float_io = TensorProto.FLOAT
    inputs, nodes, out_dims, out_type = ("mri", "other"), [helper.make_node("Add", ["mri", "other"], ["fused"])], \
        dims, float_io
    in_type, in_dims = float_io, dims
    if kind == "int64":
        in_type = out_type = TensorProto.INT64
    elif kind == "transposed":  # a 17×45 input comes back 45×17
        nodes = [helper.make_node("Add", ["mri", "other"], ["sum"]),
                 helper.make_node("Transpose", ["sum"], ["fused"], perm=[0, 1, 3, 2])]
        out_dims = ["N", 1, "W", "H"]
    elif kind == "cropped":  # always 8 columns wide, whatever the input
        starts, ends, axes = (helper.make_tensor(n, TensorProto.INT64, [1], [v]) for n, v in
                              (("starts", 0), ("ends", 8), ("axes", 3)))
        nodes = [helper.make_node("Add", ["mri", "other"], ["sum"]),
                 helper.make_node("Slice", ["sum", "starts", "ends", "axes"], ["fused"])]
        graph = helper.make_graph(nodes, kind, [helper.make_tensor_value_info(n, float_io, dims) for n in inputs],
                                  [helper.make_tensor_value_info("fused", float_io, ["N", 1, "H", "cols"])],
                                  initializer=[starts, ends, axes])
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9).SerializeToString()
    elif kind == "names":
        inputs = ("a", "b")
        nodes = [helper.make_node("Add", ["a", "b"], ["fused"])]
    elif kind == "rank3":
        in_dims = out_dims = ["N", "H", "W"]
    elif kind == "static":
        in_dims = out_dims = [1, 1, 32, 32]
    elif kind == "nan":  # log of a negative number everywhere
        two = helper.make_tensor("two", float_io, [], [2.0])
        nodes = [helper.make_node("Sub", ["mri", "two"], ["shifted"]), helper.make_node("Log", ["shifted"], ["fused"])]
        graph = helper.make_graph(nodes, "nan", [helper.make_tensor_value_info(n, float_io, dims) for n in inputs],
                                  [helper.make_tensor_value_info("fused", float_io, dims)], initializer=[two])
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9).SerializeToString()
    graph = helper.make_graph(nodes, kind, [helper.make_tensor_value_info(n, in_type, in_dims) for n in inputs],
                              [helper.make_tensor_value_info("fused", out_type, out_dims)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    onnx.checker.check_model(model)
    return model.SerializeToString()


FOREIGN = ("int64", "transposed", "cropped", "names", "rank3", "static", "nan")


def write_models(folder: Path) -> None:
    for kind in FOREIGN:
        (folder / f"{kind}.onnx").write_bytes(foreign_onnx(kind))
    (folder / "garbage.onnx").write_bytes(b"this is not protobuf" * 10)
    (folder / "empty.onnx").write_bytes(b"")
    (folder / "model.txt").write_text("not a model\n")


def write_dataset(folder: Path) -> None:
    from .helpers import write_dataset as synthetic

    synthetic(folder / "data", pairs=("ct_mri",), n=9, size=48)
    nosplit = folder / "nosplit" / "ct_mri"
    shutil.copytree(folder / "data" / "ct_mri" / "mri", nosplit / "mri")
    shutil.copytree(folder / "data" / "ct_mri" / "other", nosplit / "other")
    escaping = folder / "escaping" / "ct_mri"
    shutil.copytree(folder / "data" / "ct_mri", escaping)
    (escaping / "test.txt").write_text("../../../etc/passwd\n")


def build(folder: Path, with_torch: bool = True) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    write_images(folder)
    write_models(folder)
    write_dataset(folder)
    if with_torch:
        write_weights(folder)
    (folder / "adir").mkdir()
    (folder / "afile").write_text("a file, not a folder\n")
    return folder
