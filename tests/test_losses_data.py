import numpy as np
import pytest
import torch

from cminet.data import split_validation, training_split, validation_split
from cminet.losses import FusionLoss, LossWeights, crop_vif, gradient_magnitude, qabf, ssim, vif
from cminet.metrics import qabf as qabf_metric
from cminet.metrics import ssim as ssim_metric
from cminet.metrics import vif_pixel
from cminet.runtime.errors import CMINetError
from cminet.runtime.folders import PairRef, list_pairs
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


def test_ssim_loss_matches_the_evaluation_metric():
    # The training SSIM and cminet.metrics.ssim are one formula (Wang et al. 2004, valid
    # region): the same number on a structured pair, in their own value ranges.
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:64, :72]
    x = 0.5 + 0.3 * np.sin(xx / 5.0) * np.cos(yy / 7.0)
    y = np.clip(x + 0.05 * rng.standard_normal(x.shape), 0, 1)
    expected = ssim_metric(x * 255, y * 255)
    assert 0.3 < expected < 0.99
    assert ssim(torch.from_numpy(x)[None, None], torch.from_numpy(y)[None, None]).item() == pytest.approx(
        expected, rel=1e-6)


def test_vif_loss_matches_the_evaluation_metric():
    # The training term must score what `cminet evaluate` scores: same windows, scales and
    # special cases as metrics.vif_pixel (the vifp_mscale port), on a structured image.
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:72, :80]
    a = 0.5 + 0.3 * np.sin(xx / 4.0) * np.cos(yy / 6.0)
    b = np.where(np.hypot(yy - 36, xx - 40) < 25, 0.8, 0.1) + 0.02 * rng.standard_normal((72, 80))
    a[:20, :20] = 0.3  # a flat corner exercises the flat-reference branch
    f = np.clip(0.6 * np.maximum(a, b) + 0.4 * a + 0.03 * rng.standard_normal(a.shape), 0, 1)
    to_t = lambda x: torch.from_numpy(x)[None, None]  # noqa: E731
    for src in (a, b):
        expected = vif_pixel(src * 255, f * 255)
        assert vif(to_t(src), to_t(f)).item() == pytest.approx(expected, rel=1e-6)
    # Identity keeps all information; noise destroys some; a batch of one crop is the VIF.
    assert vif(to_t(a), to_t(a)).item() == pytest.approx(1.0, rel=1e-9)
    assert vif(to_t(a), to_t(f)).item() < 0.9
    assert crop_vif(to_t(a).float(), to_t(f).float()).item() == pytest.approx(vif_pixel(a * 255, f * 255), rel=1e-3)


def test_qabf_loss_matches_the_evaluation_metric():
    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[:48, :56]
    a = np.where(xx > 20, 0.8, 0.2) + 0.1 * np.sin(yy / 3.0)
    b = np.where(np.hypot(yy - 24, xx - 28) < 15, 0.9, 0.0)
    b[:, :10] = 0.0  # flat strip: zero strength in both b and (partly) f
    to_t = lambda x: torch.from_numpy(x)[None, None]  # noqa: E731
    for f in (np.maximum(a, b), (a + b) / 2, np.clip(a + 0.05 * rng.standard_normal(a.shape), 0, 1)):
        expected = qabf_metric(a * 255, b * 255, f * 255)
        assert qabf(to_t(a), to_t(b), to_t(f)).item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("term", ["vif", "qabf"])
def test_metric_terms_have_gradients_and_only_count_when_weighted(term):
    torch.manual_seed(0)
    a, b = torch.rand(2, 1, 48, 48), torch.rand(2, 1, 48, 48)
    f = (0.5 * (a + b)).requires_grad_()
    _, terms = FusionLoss()(f, a, b)
    assert np.isnan(terms[term])  # not computed at weight 0
    total, terms = FusionLoss(LossWeights(ssim=0, texture=0, pixel=0, **{term: 1.0}))(f, a, b)
    assert total.item() == pytest.approx(terms[term]) and 0 < terms[term] < 2
    total.backward()
    assert torch.isfinite(f.grad).all() and f.grad.abs().sum() > 0


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


def _listed_dataset(root, layout: dict[str, int], slices: int = 5):
    """Pair-type folders with a train.txt of ``cases`` cases × ``slices`` slices (no images:
    carving validation reads the listing only)."""
    for pair, cases in layout.items():
        (root / pair / "mri").mkdir(parents=True)
        (root / pair / "other").mkdir()
        names = [f"{c}{s:03d}.png" for c in range(1, cases + 1) for s in range(slices)]
        (root / pair / "train.txt").write_text("\n".join(names) + "\n")
    return root


def test_a_types_validation_cases_do_not_depend_on_which_types_are_listed(tmp_path):
    # One seeded shuffle draws the held-out cases of every type in turn, so carving spect_mri
    # alone would hold out other SPECT cases than a run on all types did.
    root = _listed_dataset(tmp_path, {"ct_mri": 8, "pet_mri": 3, "spect_mri": 12})
    everything = list_pairs(root, ("ct_mri", "pet_mri", "spect_mri"), "train")
    full_val = {r for r in split_validation(everything)[1] if r.pair == "spect_mri"}
    alone = set(split_validation(list_pairs(root, ("spect_mri",), "train"))[1])
    assert alone != full_val  # the hazard is real for this layout
    train, val = validation_split(root, ["spect_mri"])
    assert set(val) == full_val
    assert {r.pair for r in train} == {"spect_mri"} and set(train).isdisjoint(val)
    assert validation_split(root, ["ct_mri", "pet_mri", "spect_mri"]) == split_validation(everything)


def test_validation_split_ignores_pair_types_without_a_train_split(tmp_path):
    root = _listed_dataset(tmp_path, {"ct_mri": 8, "spect_mri": 12})
    (root / "pet_mri" / "mri").mkdir(parents=True)  # a type with images but no train.txt
    (root / "pet_mri" / "other").mkdir()
    everything = list_pairs(root, ("ct_mri", "spect_mri"), "train")
    assert validation_split(root, ["spect_mri"])[1] == [r for r in split_validation(everything)[1]
                                                         if r.pair == "spect_mri"]


def test_a_val_list_holds_whole_subjects_out_as_its_maker_decided(tmp_path):
    held = _listed_dataset(tmp_path / "held", {"pet_mri": 6})
    names = (held / "pet_mri" / "train.txt").read_text().split()
    (held / "pet_mri" / "train.txt").write_text("\n".join(names[:-4]) + "\n")
    (held / "pet_mri" / "val.txt").write_text("\n".join(names[-4:]) + "\n")
    train, val = validation_split(held, ["pet_mri"])
    assert [r.name for r in train] == names[:-4] and [r.name for r in val] == names[-4:]  # listed, not carved


def test_several_data_folders_join_each_split_its_own_way(tmp_path):
    carved = _listed_dataset(tmp_path / "carved", {"ct_mri": 8, "pet_mri": 3})
    held = _listed_dataset(tmp_path / "held", {"pet_mri": 2})
    names = (held / "pet_mri" / "train.txt").read_text().split()
    (held / "pet_mri" / "val.txt").write_text(names[-1] + "\n")
    (held / "pet_mri" / "train.txt").write_text("\n".join(names[:-1]) + "\n")
    train, val = training_split([carved, held], ("ct_mri", "pet_mri"))
    alone = validation_split(carved, ["ct_mri", "pet_mri"])
    assert [r for r in train if r.root == carved] == alone[0] and [r for r in val if r.root == carved] == alone[1]
    assert [r.name for r in val if r.root == held] == names[-1:]
    assert {r.name for r in train if r.root == held} == set(names[:-1])
    with pytest.raises(CMINetError, match="no train split of spect_mri"):
        training_split([carved, held], ("pet_mri", "spect_mri"))
