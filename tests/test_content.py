"""Not computing air (:mod:`cminet.runtime.content`): the network sees only the part of a
slice that holds the head, on its token grid, and the result stays within the tolerance
tiling is held to; air never reaches the network."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cminet.runtime import Fuser
from cminet.runtime.backends.base import Backend
from cminet.runtime.compare import psnr
from cminet.runtime.content import MARGIN, MIN_SIDE, Box, content_box, run_on_content, token_grid
from cminet.runtime.contract import shipped_onnx
from cminet.runtime.imaging import finish_fused, prepare_pair
from cminet.runtime.volume import SlicePair, fuse_volume, load_volume

from .test_sizes import TILED_PSNR_DB

pytestmark = pytest.mark.torch_free
VOLUMES = Path(__file__).resolve().parents[2] / "shared" / "data" / "volumes"
SHIPPED_CONFIG = ('{"output": "max-residual", "patch_size": 8, "kv_pool": 2, "channels": 16, "num_heads": 3}')


@pytest.fixture(scope="module")
def fusers():
    with Fuser(shipped_onnx("fp32"), backend="ort-cpu") as cropped, \
            Fuser(shipped_onnx("fp32"), backend="ort-cpu", skip_air=False) as whole:
        yield cropped, whole


class Counting:
    """A network stand-in that records what it was given and returns its first input + 1."""

    def __init__(self):
        self.shapes: list[tuple[int, ...]] = []

    def __call__(self, mri, other):
        self.shapes.append(mri.shape)
        return mri + 1.0


@pytest.mark.parametrize("step", [None, 64])
def test_the_box_is_on_the_token_grid_covers_the_content_and_keeps_the_minimum_side(step):
    rng = np.random.default_rng(0)
    for _ in range(300):
        height, width = (int(n) for n in rng.integers(16, 300, 2))
        mri = np.zeros((height, width), np.float32)
        top, left = int(rng.integers(0, height)), int(rng.integers(0, width))
        bottom, right = top + int(rng.integers(1, height - top + 1)), left + int(rng.integers(1, width - left + 1))
        mri[top:bottom, left:right] = 0.5
        box = content_box(mri, np.zeros_like(mri), 16, step)
        assert box is not None
        for start, stop, first, end, length in ((box.top, box.bottom, top, bottom, height),
                                                (box.left, box.right, left, right, width)):
            assert start % 16 == 0 and 0 <= start < stop <= length, (start, stop, length)
            assert (stop - start) % (step or 16) == 0 or stop == length, (start, stop, length)
            assert start <= max(first - MARGIN, 0) and stop >= min(end + MARGIN, length)
            assert stop - start >= min(MIN_SIDE, length)


def test_bright_other_outside_the_mri_head_is_content_and_dim_other_is_not():
    mri = np.zeros((256, 256), np.float32)
    other = np.zeros_like(mri)
    other[200:210, 30:40] = 0.3  # a dim halo: max(MRI, OTHER) shows it as it is
    assert content_box(mri, other, 16) is None
    other[200:210, 30:40] = 0.8  # bone, strong uptake: the network sees it
    assert content_box(mri, other, 16) == Box(176, 240, 0, 64)  # 10 px + margins, grown to 64, on the grid


def test_air_never_reaches_the_network_and_becomes_the_max_rule():
    network = Counting()
    mri = np.zeros((3, 256, 256), np.float32)
    other = np.zeros_like(mri)
    other[1, 5:9, 5:9] = 0.2  # below the content level: still air to the network
    mri[2, 100:140, 90:150] = 0.6
    fused = run_on_content(network, mri, other, 16)
    box = content_box(mri[2], other[2], 16)
    assert network.shapes == [(1, box.bottom - box.top, box.right - box.left)]  # one call, the head's box
    assert np.array_equal(fused[:2], np.maximum(mri[:2], other[:2]))
    rows, columns = box.slices
    assert np.allclose(fused[2][rows, columns], mri[2][rows, columns] + 1)
    outside = np.ones(mri.shape[1:], bool)
    outside[rows, columns] = False
    assert np.array_equal(fused[2][outside], np.maximum(mri[2], other[2])[outside])


def test_slices_with_one_box_run_as_one_batch_and_a_batch_equals_one_at_a_time():
    network = Counting()
    mri = np.zeros((4, 128, 128), np.float32)
    mri[[0, 2], 40:80, 40:80] = 0.5
    mri[[1, 3], 10:30, 10:120] = 0.5
    fused = run_on_content(network, mri, np.zeros_like(mri), 16)
    assert sorted(shape[0] for shape in network.shapes) == [2, 2]
    for k in range(4):
        assert np.array_equal(fused[k], run_on_content(Counting(), mri[k], np.zeros_like(mri[k]), 16))


def test_only_a_max_residual_cminet_is_cropped():
    assert token_grid(SHIPPED_CONFIG) == 16
    assert token_grid(SHIPPED_CONFIG.replace("max-residual", "sigmoid")) is None
    assert token_grid(None) is None and token_grid("{not json") is None and token_grid("[1]") is None
    with Fuser(shipped_onnx("fp32"), backend="ort-cpu") as fuser:
        assert fuser.info["skip_air"] is True
    with Fuser(shipped_onnx("fp32"), backend="ort-cpu", skip_air=False) as fuser:
        assert fuser.info["skip_air"] is False


def test_skip_air_false_runs_every_pixel(fusers):
    _, whole = fusers
    mri = np.zeros((1, 96, 96), np.float32)
    mri[0, 30:50, 30:50] = 0.7
    expected = whole.infer(mri[:, None], mri[:, None])[:, 0]
    assert np.array_equal(whole.fuse_slices(mri, mri), expected)
    image = (mri[0] * 255).astype(np.uint8)  # the 2-D path, grey in, grey out
    pair = prepare_pair(image, image)
    network = whole.infer(pair.mri[None, None], pair.other[None, None])[0, 0]
    assert np.array_equal(whole.fuse(image, image), finish_fused(network, pair, whole.colour))


@pytest.mark.skipif(not (VOLUMES / "niivue").is_dir(), reason="the real volumes are not here")
def test_on_a_real_volume_the_crop_stays_within_the_tiling_tolerance_and_skips_most_air(fusers):
    """The 1 mm MNI152 T1 with the SPM PET template, every 16th slice: fused on the content
    box against fused whole, and how much of the slices the network saw."""
    cropped, whole = fusers
    pair = SlicePair(load_volume(VOLUMES / "niivue/MNI152_2009_template.nii.gz"),
                     load_volume(VOLUMES / "spm12/template_PET.nii.gz"), "pet")
    depth, height, width = pair.grid.shape
    seen = 0
    for z in range(8, depth, 16):
        inputs = pair.network_inputs(z, z + 1)
        a, b = cropped.fuse_slices(inputs.mri, inputs.other)[0], whole.fuse_slices(inputs.mri, inputs.other)[0]
        assert psnr(b, a) > TILED_PSNR_DB, z
        box = content_box(inputs.mri[0], inputs.other[0], 16)
        seen += box.area if box else 0
    share = seen / (len(range(8, depth, 16)) * height * width)
    assert share < 0.6, share  # the network's work on this volume, not a timing


@pytest.mark.skipif(not (VOLUMES / "niivue").is_dir(), reason="the real volumes are not here")
def test_fuse_volume_skips_air_and_says_so(fusers):
    cropped, _ = fusers
    fused = fuse_volume(VOLUMES / "spm12/single_subj_T1.nii.gz", VOLUMES / "spm12/template_PET.nii.gz",
                        model=cropped, modality="pet")
    assert fused.info["skip_air"] is True


class ShapeRecorder(Backend):
    """A backend double that compiles per shape (as OpenVINO's static shapes do), records the
    shapes it is given and returns max(MRI, OTHER): a max-residual CMINet with no correction."""

    name = "ort-cpu"
    config_json = SHIPPED_CONFIG
    compiles_per_shape = True

    def __init__(self):
        self.shapes: list[tuple[int, ...]] = []

    def run_impl(self, mri, other):
        self.shapes.append(mri.shape)
        return np.maximum(mri, other)


@pytest.mark.skipif(not (VOLUMES / "niivue").is_dir(), reason="the real volumes are not here")
def test_a_backend_that_compiles_each_shape_gets_one_box_per_volume():
    recorder = ShapeRecorder()
    fused = fuse_volume(VOLUMES / "spm12/single_subj_T1.nii.gz", VOLUMES / "spm12/template_PET.nii.gz",
                        model=Fuser(recorder), modality="pet")
    assert len(set(recorder.shapes)) == 1 and len(recorder.shapes) < fused.info["slices"]  # air slices skipped
    recorder.compiles_per_shape = False  # a backend that takes any shape alike: each slice its own box
    fuse_volume(VOLUMES / "spm12/single_subj_T1.nii.gz", VOLUMES / "spm12/template_PET.nii.gz",
                model=Fuser(recorder), modality="pet")
    assert len(set(recorder.shapes)) > 2


def test_cli_no_skip_air_runs_every_pixel(tmp_path):
    """A 256² head in a 448² frame: `cminet fuse` skips the air by default, within the tiling
    tolerance of --no-skip-air, which runs every pixel."""
    from click.testing import CliRunner

    from cminet.cli import main
    from cminet.runtime.folders import SAMPLES_DIR
    from cminet.runtime.imaging import read_image, write_image

    framed = []
    for kind in ("mri", "other"):
        image = read_image(SAMPLES_DIR / f"pet_mri/{kind}/41066.png")
        canvas = np.zeros((448, 448, *image.shape[2:]), np.uint8)
        canvas[96:352, 96:352] = image
        framed.append(write_image(tmp_path / f"{kind}.png", canvas) or tmp_path / f"{kind}.png")
    outputs = {}
    for flag in ("--skip-air", "--no-skip-air"):
        out = tmp_path / f"fused{flag}.png"
        result = CliRunner().invoke(main, ["fuse", *map(str, framed), "-o", str(out), flag, "--backend", "ort-cpu"])
        assert result.exit_code == 0, result.output
        outputs[flag] = read_image(out).astype(np.float32) / 255
    assert not np.array_equal(outputs["--skip-air"], outputs["--no-skip-air"])
    assert psnr(outputs["--no-skip-air"], outputs["--skip-air"]) > TILED_PSNR_DB
