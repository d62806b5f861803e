import numpy as np
import pytest
import torch

from cminet.data import PairRef, list_pairs, split_validation
from cminet.losses import FusionLoss, LossWeights, gradient_magnitude, ssim
from cminet.runtime.imaging import finish_output, prepare_pair, rgb_to_ycbcr, ycbcr_to_rgb

from .helpers import write_dataset


def test_ssim_of_identical_images_is_one():
    x = torch.rand(2, 1, 32, 32)
    assert ssim(x, x).item() == pytest.approx(1.0, abs=1e-6)


def test_ssim_drops_for_noise_and_is_symmetric():
    torch.manual_seed(0)
    x = torch.rand(1, 1, 32, 32)
    y = (x + 0.2 * torch.randn_like(x)).clamp(0, 1)
    assert ssim(x, y).item() < 0.9
    assert ssim(x, y).item() == pytest.approx(ssim(y, x).item(), abs=1e-6)


def test_gradient_of_a_step_edge():
    x = torch.zeros(1, 1, 8, 8)
    x[..., 4:] = 1.0
    g = gradient_magnitude(x)
    # Sobel-x response of a unit step is 4 on the two columns beside the edge, 0 elsewhere.
    assert torch.allclose(g[0, 0, :, 3], torch.full((8,), 4.0))
    assert torch.allclose(g[0, 0, :, 4], torch.full((8,), 4.0))
    assert g[0, 0, :, :3].abs().sum() == 0


def test_loss_terms_on_hand_made_images():
    a = torch.zeros(1, 1, 32, 32)
    b = torch.ones(1, 1, 32, 32)
    f = torch.full_like(a, 0.5)
    total, terms = FusionLoss()(f, a, b)
    assert terms["pixel"] == pytest.approx(0.5)  # 0.25 + 0.25
    assert terms["texture"] == pytest.approx(0.0)  # flat images have no gradient
    # f = max(a, b) is the SSIM target: the SSIM term vanishes there.
    _, at_max = FusionLoss()(b.clone(), a, b)
    assert at_max["ssim"] == pytest.approx(0.0, abs=1e-6)
    weights = LossWeights(ssim=0, texture=0, pixel=2)
    assert FusionLoss(weights)(f, a, b)[0].item() == pytest.approx(1.0)
    assert total.item() == pytest.approx(10 * terms["ssim"] + 100 * terms["texture"] + terms["pixel"], rel=1e-5)


def test_ycbcr_round_trip_within_one_grey_level():
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    back = ycbcr_to_rgb(rgb_to_ycbcr(rgb))
    assert np.abs(back - rgb).max() <= 1.0


def test_colour_pair_keeps_chroma_and_grey_stays_grey():
    rng = np.random.default_rng(1)
    pet = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    mri = rng.integers(0, 256, (32, 32), dtype=np.uint8)
    pair = prepare_pair(mri, pet)
    assert pair.chroma is not None and pair.other.max() <= 1.0
    # Feeding PET's own Y back restores PET (within rounding).
    assert np.abs(finish_output(pair.other, pair.chroma).astype(int) - pet).max() <= 2
    grey = prepare_pair(mri, mri)
    assert grey.chroma is None and finish_output(grey.other, None).shape == (32, 32)


def test_pair_types_are_never_merged_by_name(tmp_path):
    root = write_dataset(tmp_path, pairs=("pet_mri", "spect_mri"))
    refs = list_pairs(root, ("pet_mri", "spect_mri"), "train")
    names = [r.name for r in refs]
    assert len(names) == 2 * len(set(names))  # the same file names in both types...
    assert len(set(refs)) == len(refs)  # ...are still distinct pairs


def test_validation_is_carved_by_case_and_never_overlaps():
    refs = [PairRef(__file__, "ct_mri", f"{case}{s:03d}.png") for case in (2, 16, 20, 21, 28) for s in range(10)]
    train, val = split_validation(refs, fraction=0.1, seed=0)
    assert set(train).isdisjoint(val) and len(train) + len(val) == len(refs)
    assert {r.case for r in train}.isdisjoint({r.case for r in val})
    # Few cases (PET: one subject, three orientations): a contiguous block of slices.
    pet = [PairRef(__file__, "pet_mri", f"{case}{s:03d}.png") for case in (25, 30) for s in range(20)]
    train, val = split_validation(pet, fraction=0.1)
    assert sorted(r.name for r in val) == ["25018.png", "25019.png", "30018.png", "30019.png"]


def test_split_is_repeatable(data_root):
    refs = list_pairs(data_root, ("ct_mri", "pet_mri", "spect_mri"), "train")
    assert split_validation(refs) == split_validation(refs)
    test = set(list_pairs(data_root, ("ct_mri", "pet_mri", "spect_mri"), "test"))
    assert test.isdisjoint(refs)
