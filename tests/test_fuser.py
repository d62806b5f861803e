"""``Fuser``: one entry point for every kind of model, and every option it is given either
changes what runs or is refused in one line (never dropped). The CLI options of
``cminet fuse`` each change what runs, through the same Fuser."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner

from cminet.cli import main
from cminet.runtime import Fuser
from cminet.runtime.backends.base import Backend, BackendUnavailable
from cminet.runtime.contract import ContractError, shipped_onnx
from cminet.runtime.errors import ServerError
from cminet.runtime.folders import SAMPLES_DIR
from cminet.runtime.imaging import read_image

PET_MRI = SAMPLES_DIR / "pet_mri/mri/41066.png"
PET = SAMPLES_DIR / "pet_mri/other/41066.png"


def fused_by_cli(tmp_path, *options) -> tuple[np.ndarray, str]:
    out = tmp_path / f"fused{len(list(tmp_path.glob('fused*.png')))}.png"
    result = CliRunner().invoke(main, ["fuse", str(PET_MRI), str(PET), "-o", str(out), *map(str, options)])
    assert result.exit_code == 0, result.output
    return read_image(out), result.output


@pytest.fixture(scope="module")
def images():
    return read_image(PET_MRI), read_image(PET)


# -- the API ----------------------------------------------------------------------------------
def test_precision_that_contradicts_the_file_is_refused():
    with pytest.raises(ContractError, match=r"precision: fp16 asked for, but .*cminet\.onnx is a fp32 model"):
        Fuser(shipped_onnx("fp32"), precision="fp16")
    with pytest.raises(ContractError, match="is a fp16 model"):
        Fuser(shipped_onnx("fp16"), precision="fp32")
    with Fuser(shipped_onnx("fp16"), precision="fp16") as fuser:  # agreeing is fine
        assert fuser.backend.precision == "fp16"


@pytest.mark.parametrize("kwargs,words", [
    ({"backend": "ort-cpu", "device": 1}, "device: ort-cpu runs on the CPU"),
    ({"backend": "ov-cpu", "optimization": "basic"}, "optimization: the ov-cpu backend cannot honour"),
    ({"backend": "ov-cpu", "device": 0}, "device: the ov-cpu backend cannot honour"),
])
def test_options_a_backend_cannot_honour_are_refused(kwargs, words):
    pytest.importorskip("openvino")
    with pytest.raises(ContractError, match=words):
        Fuser(shipped_onnx("fp32"), **kwargs)


def test_checkpoint_source_runs_pytorch_and_matches_the_onnx(images):
    pytest.importorskip("torch")
    from cminet.fusion import DEFAULT_WEIGHTS

    with Fuser(DEFAULT_WEIGHTS) as torch_fuser, Fuser(backend="ort-cpu") as onnx_fuser:
        assert torch_fuser.backend.name == "torch-cpu"
        a, b = torch_fuser.fuse(*images), onnx_fuser.fuse(*images)
    assert np.abs(a.astype(int) - b.astype(int)).max() <= 1
    with pytest.raises(ContractError, match="device: torch-cpu runs on the CPU"):
        Fuser(DEFAULT_WEIGHTS, device=0)


def test_an_open_backend_is_a_source(images):
    from cminet.runtime.backends.base import open_backend

    backend = open_backend("ort-cpu", shipped_onnx("fp32"))
    assert isinstance(backend, Backend)
    with Fuser(backend) as fuser, Fuser(backend="ort-cpu") as reference:
        assert np.array_equal(fuser.fuse(*images), reference.fuse(*images))


def test_a_server_url_is_a_source_and_unreachable_is_one_line():
    pytest.importorskip("tritonclient.http")
    from cminet.serve import free_port

    with pytest.raises(ServerError, match="no Triton server answers") as caught:
        Fuser(f"http://127.0.0.1:{free_port()}")
    assert "\n" not in str(caught.value)
    with pytest.raises(BackendUnavailable, match="backend .ort-cpu. runs a .onnx file, not an http"):
        Fuser("http://127.0.0.1:1", backend="ort-cpu")


def test_slices_of_a_volume_tile_like_single_images():
    rng = np.random.default_rng(0)
    mri, other = (rng.random((2, 96, 80), dtype=np.float32) for _ in range(2))
    with Fuser(backend="ort-cpu") as fuser:
        whole = fuser.fuse_slices(mri, other)
        assert fuser.last_plan is None
        tiled = fuser.fuse_slices(mri, other, tile=64)
        assert fuser.last_plan is not None  # each slice went through the tiler
        one = fuser._network(mri[1], other[1], 64)
    assert np.array_equal(tiled[1], one) and tiled.shape == whole.shape == (2, 96, 80)
    assert not np.array_equal(tiled, whole)


# -- cminet fuse: each option changes what runs --------------------------------------------
def test_precision_option_runs_the_fp16_model(tmp_path, images):
    fp32, _ = fused_by_cli(tmp_path)
    fp16, _ = fused_by_cli(tmp_path, "--precision", "fp16", "--backend", "ort-cpu")
    with Fuser(precision="fp16", backend="ort-cpu") as fuser:
        assert np.array_equal(fp16, fuser.fuse(*images))
    assert not np.array_equal(fp16, fp32)


def test_model_option_runs_that_file(tmp_path, images):
    fused, _ = fused_by_cli(tmp_path, "--model", shipped_onnx("fp16"), "--backend", "ort-cpu")
    with Fuser(shipped_onnx("fp16"), backend="ort-cpu") as fuser:
        assert np.array_equal(fused, fuser.fuse(*images))


def test_weights_option_runs_pytorch(tmp_path, images):
    pytest.importorskip("torch")
    from cminet.fusion import DEFAULT_WEIGHTS

    fused, _ = fused_by_cli(tmp_path, "--weights", DEFAULT_WEIGHTS)
    with Fuser(DEFAULT_WEIGHTS) as fuser:
        assert np.array_equal(fused, fuser.fuse(*images))


def test_backend_and_threads_options_reach_the_backend(tmp_path, images, monkeypatch):
    pytest.importorskip("openvino")
    opened = []
    original = Fuser.__init__

    def spy(self, *args, **kwargs):
        original(self, *args, **kwargs)
        opened.append(self.info)

    monkeypatch.setattr(Fuser, "__init__", spy)
    fused_by_cli(tmp_path, "--backend", "ov-cpu", "--threads", "1")
    assert opened[-1]["backend"] == "ov-cpu" and opened[-1]["threads"] == 1


def test_tile_option_tiles(tmp_path, images):
    tiled, output = fused_by_cli(tmp_path, "--tile", "128", "--backend", "ort-cpu")
    whole, _ = fused_by_cli(tmp_path, "--backend", "ort-cpu")
    assert "tiles" in output and not np.array_equal(tiled, whole)


def test_device_option(tmp_path):
    result = CliRunner().invoke(main, ["fuse", str(PET_MRI), str(PET), "-o", str(tmp_path / "x.png"), "--device",
                                       "cuda"])
    assert result.exit_code == 2 and "no cuda gpu" in result.output.lower()  # this machine has none
    result = CliRunner().invoke(main, ["fuse", str(PET_MRI), str(PET), "-o", str(tmp_path / "x.png"), "--device",
                                       "tpu"])
    assert result.exit_code == 2 and "expected auto, cpu, cuda" in result.output
