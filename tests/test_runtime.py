"""The torch-free runtime: parity with PyTorch, bad input, threads, and no torch import."""

import subprocess
import sys
import threading

import numpy as np
import pytest
import torch

from cminet.checkpoint import save_checkpoint
from cminet.fusion import fuse_arrays
from cminet.runtime import Fuser, ImageError, ModelFileError
from cminet.runtime.backends.base import BackendUnavailable
from cminet.runtime.contract import FUSED_GREY_LEVELS, TOLERANCES
from cminet.runtime.folders import SAMPLES_DIR
from cminet.runtime.imaging import prepare_pair, read_image

SAMPLES = [("ct_mri", "34010"), ("pet_mri", "41066"), ("spect_mri", "9023")]


@pytest.fixture(scope="module")
def model(random_model):
    return random_model


@pytest.fixture(scope="module")
def onnx_files(random_export):
    return random_export["fp32"], random_export["fp16"]


@pytest.fixture(scope="module")
def fuser(onnx_files):
    with Fuser(onnx_files[0], backend="ort-cpu") as f:
        yield f


def sample(pair, name):
    folder = SAMPLES_DIR / pair
    return read_image(folder / "mri" / f"{name}.png"), read_image(folder / "other" / f"{name}.png")


def test_import_and_fuse_never_load_torch(onnx_files):
    code = (
        "import sys\n"
        "from cminet.runtime import Fuser\n"
        "from cminet.runtime.imaging import read_image\n"
        f"f = Fuser({str(onnx_files[0])!r})\n"
        f"out = f.fuse(read_image({str(SAMPLES_DIR / 'pet_mri/mri/41066.png')!r}), "
        f"read_image({str(SAMPLES_DIR / 'pet_mri/other/41066.png')!r}))\n"
        "assert out.shape == (256, 256, 3)\n"
        "print('torch' in sys.modules)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "False"


@pytest.mark.parametrize("pair,name", SAMPLES)
def test_matches_pytorch_on_the_shipped_samples(fuser, model, pair, name):
    mri, other = sample(pair, name)
    prepared = prepare_pair(mri, other)
    got = fuser.infer(prepared.mri[None, None], prepared.other[None, None])
    with torch.no_grad():
        ref = model(torch.from_numpy(prepared.mri)[None, None], torch.from_numpy(prepared.other)[None, None]).numpy()
    assert np.abs(got - ref).max() <= TOLERANCES["fp32"].max_abs
    fused, reference = fuser.fuse(mri, other), fuse_arrays(model, mri, other)
    assert fused.shape == reference.shape == (other.shape if other.ndim == 3 else mri.shape)
    assert np.abs(fused.astype(int) - reference).max() <= FUSED_GREY_LEVELS["fp32"]  # rounding at .5 only


def test_fp16_model_is_close_and_not_identical(onnx_files, fuser):
    mri, other = sample("pet_mri", "41066")
    with Fuser(onnx_files[1]) as half:
        assert half.info["precision"] == "fp16"
        diff = np.abs(half.fuse(mri, other).astype(int) - fuser.fuse(mri, other))
    assert 0 < diff.max() <= FUSED_GREY_LEVELS["fp16"]  # FP16 really ran, and stayed close


def test_batch_equals_one_by_one(fuser):
    pairs = [sample(p, n) for p, n in SAMPLES] + [(np.full((40, 50), 90, np.uint8), np.full((40, 50), 30, np.uint8))]
    batched = fuser.fuse_batch(pairs)
    for (mri, other), out in zip(pairs, batched, strict=True):
        assert np.abs(out.astype(int) - fuser.fuse(mri, other)).max() <= 1


def test_info_reports_backend_and_versions(fuser):
    info = fuser.info
    assert info["backend"] == "ort-cpu" and info["precision"] == "fp32" and info["input_dtype"] == "float32"
    assert info["providers"][0] == "CPUExecutionProvider" and info["fallback"] is False
    assert "onnxruntime" in info


@pytest.mark.parametrize("mri,other,words", [
    (np.zeros((32, 32), np.float32), np.zeros((32, 32), np.uint8), "uint8"),
    (np.zeros((32, 32, 2), np.uint8), np.zeros((32, 32), np.uint8), "H×W×3"),
    (np.zeros((2, 32, 32, 3), np.uint8), np.zeros((32, 32), np.uint8), "H×W×3"),
    (np.zeros((32, 32), np.uint8), np.zeros((32, 48), np.uint8), "sizes differ"),
    (np.zeros((8, 8), np.uint8), np.zeros((8, 8), np.uint8), "outside"),
])
def test_bad_images_raise_one_line_value_errors(fuser, mri, other, words):
    with pytest.raises(ValueError, match=words) as info:
        fuser.fuse(mri, other)
    assert isinstance(info.value, ImageError) and "\n" not in str(info.value)


def test_bad_arrays_for_infer(fuser):
    good = np.zeros((1, 1, 32, 32), np.float32)
    bad = good.copy()
    bad[0, 0, 3, 3] = np.nan
    for a, b, words in [(bad, good, "NaN"), (good[0], good[0], "N×1×H×W"), (good.astype(np.float64), good, "float32"),
                        (np.zeros((1, 3, 32, 32), np.float32), good, "N×1×H×W"),
                        (good, np.zeros((1, 1, 32, 40), np.float32), "differ")]:
        with pytest.raises(ImageError, match=words):
            fuser.infer(a, b)


def test_foreign_truncated_and_missing_model_files(tmp_path, onnx_files):
    truncated = tmp_path / "cut.onnx"
    truncated.write_bytes(onnx_files[0].read_bytes()[:5000])
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x00\xff" * 500)
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    foreign = tmp_path / "foreign.onnx"
    onnx.save(helper.make_model(helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x],
                                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])),
              foreign)
    cases = [(truncated, "not a loadable ONNX"), (garbage, "not a loadable ONNX"), (foreign, "not a cminet model"),
             (tmp_path / "missing.onnx", "no such model file")]
    for path, words in cases:
        with pytest.raises(ModelFileError, match=words) as info:
            Fuser(path)
        assert str(path) in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(BackendUnavailable, match="tensorrt"):
        Fuser(onnx_files[0], backend="tensorrt")
    with pytest.raises(ValueError, match="backend: expected one of"):
        Fuser(onnx_files[0], backend="cuda-magic")


def test_two_threads_with_one_fuser_each(onnx_files):
    pairs = [sample(p, n) for p, n in SAMPLES]
    expected = [Fuser(onnx_files[0]).fuse(m, o) for m, o in pairs]
    results, errors = {}, []

    def work(index):
        try:
            with Fuser(onnx_files[0], threads=1) as own:
                results[index] = [own.fuse(m, o) for m, o in pairs * 2]
        except Exception as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors
    for index in range(2):
        for got, want in zip(results[index], expected * 2, strict=True):
            assert np.array_equal(got, want)


def test_closed_fuser_refuses_work(onnx_files):
    f = Fuser(onnx_files[0])
    f.close()
    f.close()  # twice is fine
    with pytest.raises(RuntimeError, match="closed"):
        f.fuse(*sample("ct_mri", "34010"))


def test_cli_fuses_with_an_onnx_model(onnx_files, tmp_path):
    from click.testing import CliRunner

    from cminet.cli import main

    result = CliRunner().invoke(main, ["fuse", "--samples", "--out", str(tmp_path), "--model", str(onnx_files[1])])
    assert result.exit_code == 0, result.output
    assert len(list(tmp_path.rglob("*.png"))) == 3


@pytest.mark.gpu
def test_ort_cuda_backend(onnx_files):
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("onnxruntime-gpu with a CUDA GPU is not available")
    mri, other = sample("pet_mri", "41066")
    with Fuser(onnx_files[0], backend="ort-cuda") as gpu, Fuser(onnx_files[0], backend="ort-cpu") as cpu:
        assert gpu.info["providers"][0] == "CUDAExecutionProvider"
        assert np.abs(gpu.fuse(mri, other).astype(int) - cpu.fuse(mri, other)).max() <= 1


def test_saved_checkpoint_exports_identically(model, tmp_path):
    # The runtime consumes what cminet-export writes from a checkpoint file.
    from cminet.checkpoint import load_checkpoint

    path = save_checkpoint(model, tmp_path / "w.safetensors")
    a = torch.rand(1, 1, 32, 32)
    with torch.no_grad():
        assert torch.equal(load_checkpoint(path)(a, a), model(a, a))
