"""Colour modes: ``balanced`` (the colour hold) and ``strict`` (the functional colour scale
kept first), torch-free, on hand-made images and through every entry point."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner

from cminet.cli import main
from cminet.metrics import colour_fidelity
from cminet.runtime import Fuser
from cminet.runtime.colour import keep_colour_scale
from cminet.runtime.errors import CMINetError
from cminet.runtime.folders import SAMPLES_DIR
from cminet.runtime.imaging import read_image

pytestmark = pytest.mark.torch_free


def test_strict_pulls_fused_brightness_down_to_the_functional_inside_the_colour_only():
    fused = np.full((64, 64), 0.8, np.float32)
    functional = np.full((64, 64), 0.5, np.float32)
    colour = np.zeros((64, 64), np.float32)
    colour[16:48, 16:48] = 1.0  # a coloured square; grey elsewhere
    out = keep_colour_scale(fused, functional, colour)
    assert np.allclose(out[20:44, 20:44], 0.5, atol=1e-5)  # inside: the functional's brightness
    assert np.array_equal(out[colour == 0], fused[colour == 0])  # outside the colour: untouched
    darker = np.full((64, 64), 0.3, np.float32)  # where the fusion is already darker: left alone
    assert np.array_equal(keep_colour_scale(darker, functional, colour), darker)


def test_modes_change_pet_and_spect_colour_and_leave_ct_alone():
    with Fuser(backend="ort-cpu") as balanced, Fuser(backend="ort-cpu", colour="strict") as strict:
        for pair, name in (("pet_mri", "41066.png"), ("spect_mri", "9023.png"), ("ct_mri", "34010.png")):
            mri, other = (read_image(SAMPLES_DIR / pair / kind / name) for kind in ("mri", "other"))
            a, b = balanced.fuse(mri, other), strict.fuse(mri, other)
            if pair == "ct_mri":
                assert np.array_equal(a, b)
            else:
                assert colour_fidelity(other, b)["ColourDE"] < colour_fidelity(other, a)["ColourDE"] - 0.5, pair


def test_the_cli_options_choose_the_mode_and_refuse_a_typo(tmp_path):
    mri, pet = SAMPLES_DIR / "pet_mri/mri/41066.png", SAMPLES_DIR / "pet_mri/other/41066.png"
    outputs = {}
    for mode in ("balanced", "strict"):
        out = tmp_path / f"{mode}.png"
        result = CliRunner().invoke(main, ["fuse", str(mri), str(pet), "-o", str(out), "--colour", mode,
                                           "--backend", "ort-cpu"])
        assert result.exit_code == 0, result.output
        outputs[mode] = read_image(out)
    with Fuser(backend="ort-cpu", colour="strict") as strict:
        assert np.array_equal(outputs["strict"], strict.fuse(read_image(mri), read_image(pet)))
    assert not np.array_equal(outputs["strict"], outputs["balanced"])
    result = CliRunner().invoke(main, ["fuse", str(mri), str(pet), "-o", str(tmp_path / "x.png"), "--colour", "vivid"])
    assert result.exit_code == 2
    with pytest.raises(CMINetError, match="colour: expected one of balanced, strict"):
        Fuser(colour="vivid")


def test_volumes_take_the_mode_too():
    from cminet.runtime.volume import fuse_volume
    from cminet.runtime.volume_phantom import head_phantom

    mri = head_phantom("mri", (32, 32, 4), (6.0, 6.0, 6.0))
    pet = head_phantom("pet", (32, 32, 4), (6.0, 6.0, 6.0))
    balanced = fuse_volume(mri, pet, modality="pet", backend="ort-cpu")
    strict = fuse_volume(mri, pet, modality="pet", backend="ort-cpu", colour="strict")
    assert balanced.data.shape == strict.data.shape and not np.array_equal(balanced.data, strict.data)
    with Fuser(backend="ort-cpu") as fuser, pytest.raises(CMINetError, match="colour: an open Fuser"):
        fuse_volume(mri, pet, model=fuser, modality="pet", colour="strict")
