"""`cminet fuse` end to end, and SPEC section 9 (bad input) for the PyTorch path."""

import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from cminet.cli import main
from cminet.runtime.folders import SAMPLES_DIR

from .helpers import tiny_checkpoint, write_dataset

PET_MRI = SAMPLES_DIR / "pet_mri/mri/41066.png"
PET = SAMPLES_DIR / "pet_mri/other/41066.png"
CT_MRI = SAMPLES_DIR / "ct_mri/mri/34010.png"
CT = SAMPLES_DIR / "ct_mri/other/34010.png"


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory.mktemp("w") / "tiny.safetensors")


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_fuse_samples_writes_grey_ct_and_colour_pet(tmp_path, weights):
    result = run("fuse", "--samples", "--out", tmp_path, "--weights", weights)
    assert result.exit_code == 0, result.output
    ct = cv2.imread(str(tmp_path / "ct_mri/34010.png"), cv2.IMREAD_UNCHANGED)
    pet = cv2.imread(str(tmp_path / "pet_mri/41066.png"), cv2.IMREAD_UNCHANGED)
    assert ct.shape == (256, 256) and pet.shape == (256, 256, 3)
    assert (tmp_path / "spect_mri/9023.png").is_file()


def test_fuse_dataset_carries_on_past_a_bad_pair(tmp_path, weights):
    root = write_dataset(tmp_path / "data", n=4)
    bad = root / "ct_mri/other/2001.png"
    bad.write_bytes(b"not a png at all")
    result = run("fuse", "--data", root, "--split", "train", "--out", tmp_path / "out", "--weights", weights)
    assert result.exit_code == 1
    assert "1 pair(s) failed" in result.output and "2001.png" in result.output
    assert len(list((tmp_path / "out").rglob("*.png"))) == 5  # 6 train pairs, one bad
    assert not (tmp_path / "out/ct_mri/2001.png").exists()


def _bad_inputs(tmp: Path):
    """(name, mri, other, expected words in the message)."""
    small = tmp / "small.png"
    cv2.imwrite(str(small), np.zeros((100, 120), np.uint8))
    sixteen = tmp / "sixteen.png"
    cv2.imwrite(str(sixteen), np.zeros((256, 256), np.uint16))
    truncated = tmp / "truncated.png"
    truncated.write_bytes(PET.read_bytes()[:3000])
    garbage = tmp / "garbage.png"
    garbage.write_bytes(b"\x00" * 100)
    return [
        ("mismatched", CT_MRI, small, "sizes differ"),
        ("16-bit", sixteen, CT, "16-bit"),
        ("truncated", PET_MRI, truncated, "truncated"),
        ("unreadable", garbage, CT, "not a readable image"),
        ("missing", tmp / "nope.png", CT, "no such file"),
    ]


def test_bad_inputs_give_one_line_errors_and_no_output(tmp_path, weights):
    for name, mri, other, words in _bad_inputs(tmp_path):
        out = tmp_path / f"out-{name}.png"
        result = run("fuse", mri, other, "-o", out, "--weights", weights)
        assert result.exit_code == 1, name
        message = result.output.strip()
        assert message.startswith("error:") and words in message, (name, message)
        assert "\n" not in message and "Traceback" not in message, name
        assert not out.exists() and not list(tmp_path.glob(".out-*")), name


def test_missing_and_corrupt_weights(tmp_path):
    result = run("fuse", CT_MRI, CT, "-o", tmp_path / "f.png", "--weights", tmp_path / "none.safetensors")
    assert result.exit_code == 1 and "none.safetensors: no such model file" in result.output
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}")
    result = run("fuse", CT_MRI, CT, "-o", tmp_path / "f.png", "--weights", corrupt)
    assert result.exit_code == 1 and "corrupt.safetensors" in result.output
    assert not (tmp_path / "f.png").exists()


@pytest.mark.torch_free
def test_errors_have_no_traceback_in_a_real_process(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "cminet.cli", "fuse", str(tmp_path / "x.png"), str(CT), "-o",
                           str(tmp_path / "o.png")], capture_output=True, text=True)
    assert proc.returncode == 1
    assert proc.stderr.strip().count("\n") == 0 and "x.png: no such file" in proc.stderr


def test_api_rejects_wrong_channel_counts_and_dtypes(weights):
    from cminet.fusion import fuse_arrays, load_pretrained
    from cminet.runtime.errors import ImageError

    model = load_pretrained(weights)
    grey = np.zeros((32, 32), np.uint8)
    with pytest.raises(ImageError, match="H×W×3"):
        fuse_arrays(model, grey, np.zeros((32, 32, 2), np.uint8))
    with pytest.raises(ImageError, match="uint8"):
        fuse_arrays(model, grey.astype(np.float32), grey)
    with pytest.raises(ImageError, match="outside"):
        fuse_arrays(model, np.zeros((8, 8), np.uint8), np.zeros((8, 8), np.uint8))
