"""The Triton model repository: every generated config.pbtxt parses with Triton's own schema
(tritonclient's model_config_pb2, protobuf text format) and agrees with the ONNX it serves."""

from __future__ import annotations

import json
from pathlib import Path

import onnxruntime as ort
import pytest
from click.testing import CliRunner

from cminet.runtime.contract import INPUT_NAMES, ONNX_TYPE_TO_DTYPE, OUTPUT_NAME, shipped_onnx

from .helpers import tiny_checkpoint

pb = pytest.importorskip("tritonclient.grpc.model_config_pb2", reason="pip install 'cminet[triton]'")
text_format = pytest.importorskip("google.protobuf.text_format")

TRITON_TO_DTYPE = {"TYPE_FP32": "float32", "TYPE_FP16": "float16"}
PLATFORMS = {"cminet_onnx": "onnxruntime_onnx", "cminet_trt": "tensorrt_plan"}
PROFILE = {"min": [1, 16, 16], "opt": [1, 256, 256], "max": [4, 1024, 1024], "layout": "N,H,W"}


def shipped_fp32_onnx(tmp_path_factory) -> Path:
    """The shipped FP32 ONNX where the package has one, else the shipped weights exported
    once per test session (shared by test_serve.py)."""
    shipped = shipped_onnx("fp32")
    if shipped.is_file():
        return shipped
    path = tmp_path_factory.getbasetemp() / "shipped-export" / "cminet.onnx"
    if not path.is_file():
        from cminet.export.onnx_export import export_onnx
        from cminet.fusion import load_pretrained

        export_onnx(load_pretrained(), path)
    return path


@pytest.fixture(scope="session")
def fp32_onnx(tmp_path_factory) -> Path:
    return shipped_fp32_onnx(tmp_path_factory)


@pytest.fixture(scope="module")
def fp16_onnx(tmp_path_factory, fp32_onnx) -> Path:
    from cminet.export.fp16 import convert_fp16

    return convert_fp16(fp32_onnx, tmp_path_factory.mktemp("fp16") / "cminet_fp16.onnx")


def fake_engine(folder: Path, profile: dict = PROFILE) -> Path:
    """Stands in for a TensorRT engine (none can be built without a GPU): the repository
    copies its bytes and reads the profile from the sidecar cminet-export writes beside it."""
    engine = folder / "cminet_fp16.engine"
    engine.write_bytes(b"not a real plan: the repository only copies it")
    (folder / "cminet_fp16.engine.json").write_text(json.dumps({"format": "cminet-engine-v1", "profile": profile}))
    return engine


def read_config(path: Path):
    """Parse with Triton's schema: an unknown field or a bad enum value raises ParseError."""
    return text_format.Parse(path.read_text(), pb.ModelConfig())


def ort_io(onnx: Path) -> dict[str, tuple[str, int]]:
    """Names → (dtype, rank) as ONNX Runtime reads the file (not the code under test's reader)."""
    session = ort.InferenceSession(str(onnx), providers=["CPUExecutionProvider"])
    return {t.name: (ONNX_TYPE_TO_DTYPE[t.type], len(t.shape)) for t in [*session.get_inputs(), *session.get_outputs()]}


def check_config(config, folder: Path, source: Path, max_batch_size: int) -> None:
    assert config.name == folder.name and config.platform == PLATFORMS[folder.name]
    assert config.max_batch_size == max_batch_size
    expected = ort_io(source)
    for tensors, names in ((config.input, INPUT_NAMES), (config.output, (OUTPUT_NAME,))):
        assert [t.name for t in tensors] == list(names)
        for t in tensors:
            dtype, rank = expected[t.name]
            assert TRITON_TO_DTYPE[pb.DataType.Name(t.data_type)] == dtype, t.name
            # Triton prepends the batch dimension: dims is C×H×W, one rank less than the ONNX.
            assert list(t.dims) == [1, -1, -1] and len(t.dims) + 1 == rank, t.name
    assert config.HasField("dynamic_batching")
    assert len(config.instance_group) == 1 and config.instance_group[0].count >= 1


def test_repository_configs_parse_with_triton_schema_and_match_the_models(tmp_path, fp32_onnx, fp16_onnx):
    from cminet.export.triton import write_model_repository

    engine = fake_engine(tmp_path)
    root = tmp_path / "triton"
    configs = write_model_repository(root, fp32_onnx, max_batch_size=8, engine=engine, engine_onnx=fp16_onnx)
    assert sorted(c.parent.name for c in configs) == ["cminet_onnx", "cminet_trt"]

    onnx_config = read_config(root / "cminet_onnx/config.pbtxt")
    check_config(onnx_config, root / "cminet_onnx", fp32_onnx, max_batch_size=8)
    assert (root / "cminet_onnx/1/model.onnx").read_bytes() == fp32_onnx.read_bytes()

    trt_config = read_config(root / "cminet_trt/config.pbtxt")
    # Triton refuses a tensorrt_plan whose max_batch_size exceeds the profile's largest N.
    check_config(trt_config, root / "cminet_trt", fp16_onnx, max_batch_size=PROFILE["max"][0])
    assert pb.ModelInstanceGroup.Kind.Name(trt_config.instance_group[0].kind) == "KIND_GPU"
    assert (root / "cminet_trt/1/model.plan").read_bytes() == engine.read_bytes()

    # A later export without an engine leaves no stale cminet_trt behind.
    write_model_repository(root, fp32_onnx, max_batch_size=8)
    assert sorted(p.name for p in root.iterdir()) == ["cminet_onnx"]


def test_fp16_io_engine_gets_fp16_tensors(tmp_path, fp32_onnx):
    from cminet.export.fp16 import convert_fp16
    from cminet.export.triton import write_model_repository

    fp16_io = convert_fp16(fp32_onnx, tmp_path / "cminet_fp16.onnx", io_dtype="fp16")
    write_model_repository(tmp_path / "triton", fp32_onnx, 4, engine=fake_engine(tmp_path), engine_onnx=fp16_io)
    config = read_config(tmp_path / "triton/cminet_trt/config.pbtxt")
    check_config(config, tmp_path / "triton/cminet_trt", fp16_io, max_batch_size=4)
    assert {pb.DataType.Name(t.data_type) for t in [*config.input, *config.output]} == {"TYPE_FP16"}


def test_engines_triton_cannot_batch_are_refused(tmp_path, fp32_onnx, fp16_onnx):
    from cminet.export.triton import write_model_repository
    from cminet.runtime.errors import ModelFileError

    engine = fake_engine(tmp_path, {**PROFILE, "min": [2, 16, 16]})
    with pytest.raises(ModelFileError, match="Triton sends batches from 1"):
        write_model_repository(tmp_path / "triton", fp32_onnx, 4, engine=engine, engine_onnx=fp16_onnx)
    engine.with_name("cminet_fp16.engine.json").unlink()
    with pytest.raises(ModelFileError, match="no sidecar"):
        write_model_repository(tmp_path / "triton", fp32_onnx, 4, engine=engine, engine_onnx=fp16_onnx)


@pytest.mark.slow
def test_cminet_export_triton_writes_a_valid_repository(tmp_path):
    from cminet.export.cli import main

    weights = tiny_checkpoint(tmp_path / "tiny.safetensors")
    out, root = tmp_path / "exported", tmp_path / "triton"
    # --no-verify: the verification is cminet-export's own, tested with the shipped weights elsewhere.
    result = CliRunner().invoke(main, ["--weights", str(weights), "--out", str(out), "--engine", "no", "--no-verify",
                                       "--max-shape", "6x512x512", "--triton", str(root)])
    assert result.exit_code == 0, result.output
    assert "writing the Triton model repository" in result.output
    check_config(read_config(root / "cminet_onnx/config.pbtxt"), root / "cminet_onnx", out / "cminet.onnx",
                 max_batch_size=6)  # the batch N of --max-shape
    assert not (root / "cminet_trt").exists()  # no engine on this machine
    report = json.loads((out / "export_report.json").read_text())
    assert report["triton"] == {"repository": str(root), "models": ["cminet_onnx"]}
