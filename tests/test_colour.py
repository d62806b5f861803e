"""Functional colour fidelity (metric), the colour loss term, and subject-shift augmentation."""

import math

import cv2
import numpy as np
import pytest
import torch

from cminet.augment import SHIFT, Augment, palettes, render_palette, shifted_rgb_pair
from cminet.losses import FusionLoss, LossWeights, colour_base
from cminet.metrics import COLOURED_CHROMA, colour_fidelity, coloured_mask, srgb_to_lab


@pytest.mark.parametrize(("rgb", "lab"), [
    ((255, 255, 255), (100.0, 0.0, 0.0)),
    ((0, 0, 0), (0.0, 0.0, 0.0)),
    ((255, 0, 0), (53.24, 80.09, 67.20)),  # published sRGB primaries in CIELAB (D65)
    ((0, 255, 0), (87.73, -86.18, 83.18)),
    ((0, 0, 255), (32.30, 79.19, -107.86)),
    ((128, 128, 128), (53.59, 0.0, 0.0)),
])
def test_lab_of_known_colours(rgb, lab):
    assert np.allclose(srgb_to_lab(np.array([[rgb]], np.uint8))[0, 0], lab, atol=0.02)


def test_lab_agrees_with_opencv():
    x = np.random.default_rng(0).integers(0, 256, (64, 64, 3)).astype(np.uint8)
    ours = srgb_to_lab(x)
    theirs = cv2.cvtColor(x.astype(np.float32) / 255, cv2.COLOR_RGB2Lab)  # OpenCV tabulates its curves
    assert np.abs(ours - theirs).max() < 0.4


def _pet_disc(size=64):
    """A red-to-yellow uptake disc on black, inside a grey 'MRI-like' frame of no chroma."""
    yy, xx = np.mgrid[:size, :size]
    r = np.hypot(yy - size / 2, xx - size / 2)
    uptake = np.clip(1 - r / (size / 3), 0, 1)
    image = render_palette(uptake, palettes()["HOT_IRON"])
    image[:4] = 90  # grey band: no chroma, never counted
    return image


def test_identical_colours_score_zero_and_ratio_one():
    pet = _pet_disc()
    assert colour_fidelity(pet, pet) == {"ColourDE": 0.0, "LightRatio": 1.0}


def test_darkened_uptake_is_measured_by_hand():
    pet = _pet_disc()
    dark = (pet * 0.6).astype(np.uint8)
    mask = coloured_mask(pet)
    lab_s, lab_d = srgb_to_lab(pet), srgb_to_lab(dark)
    expected_de = np.linalg.norm(lab_d[mask] - lab_s[mask], axis=-1).mean()
    result = colour_fidelity(pet, dark)
    assert result["ColourDE"] == pytest.approx(expected_de)
    assert result["LightRatio"] == pytest.approx(lab_d[mask, 0].mean() / lab_s[mask, 0].mean())
    assert result["LightRatio"] < 0.8 and result["ColourDE"] > 10


def test_only_coloured_pixels_count():
    pet = _pet_disc()
    changed = pet.copy()
    changed[~coloured_mask(pet)] = 255  # repaint every uncoloured pixel (background, grey band)
    assert colour_fidelity(pet, changed)["ColourDE"] == 0.0
    changed[coloured_mask(pet)] //= 2
    assert colour_fidelity(pet, changed)["ColourDE"] > 0


def test_coloured_means_chroma_above_the_threshold():
    greys = np.stack([np.full((4, 4, 3), v, np.uint8) for v in (0, 128, 255)])
    assert not coloured_mask(greys).any()
    # Pale tints just below / above C*ab = 20.
    chroma = [np.hypot(*srgb_to_lab(np.array([[[200, 200 - d, 200 - d]]], np.uint8))[0, 0, 1:]) for d in range(60)]
    below, above = max(d for d, c in enumerate(chroma) if c <= COLOURED_CHROMA), min(
        d for d, c in enumerate(chroma) if c > COLOURED_CHROMA)
    assert not coloured_mask(np.array([[[200, 200 - below, 200 - below]]], np.uint8)).any()
    assert coloured_mask(np.array([[[200, 200 - above, 200 - above]]], np.uint8)).all()


def test_grey_source_gives_nan_and_shapes_are_checked():
    grey = np.full((8, 8, 3), 120, np.uint8)
    assert all(math.isnan(v) for v in colour_fidelity(grey, grey).values())
    with pytest.raises(ValueError, match="H×W×3"):
        colour_fidelity(grey, grey[..., 0])


# --- the loss term -----------------------------------------------------------------------

def _t(x):
    return torch.as_tensor(np.asarray(x, np.float32))[None, None]


def test_colour_term_holds_local_brightness_and_leaves_detail_free():
    b = _t(np.full((32, 32), 0.6))
    mask = _t(np.ones((32, 32)))
    assert colour_base(b, b, mask).item() == 0.0
    shift = colour_base(b - 0.2, b, mask).item()
    assert shift == pytest.approx(0.2**2, rel=1e-4)  # a darker base costs its full (squared) size
    checker = (np.indices((32, 32)).sum(0) % 2) * 0.4 - 0.2  # ±0.2 detail, zero local mean
    assert colour_base(b + _t(checker), b, mask).item() < 0.1 * shift


def test_colour_term_counts_only_the_functional_support():
    b = _t(np.full((32, 64), 0.5))
    mask = _t(np.concatenate([np.ones((32, 32)), np.zeros((32, 32))], axis=1))
    far = b.clone()
    far[..., 48:] = 0.0  # change 16 px (> 3σ) away from the support
    assert colour_base(far, b, mask).item() == pytest.approx(0.0, abs=1e-6)
    assert colour_base(far, b, 1 - mask).item() > 0.05


def test_colour_term_only_counts_when_weighted_and_given_a_mask():
    a, b = _t(np.random.default_rng(0).random((24, 24))), _t(np.full((24, 24), 0.5))
    f = (a + b) / 2
    mask = torch.ones_like(b)
    off, _ = FusionLoss(LossWeights())(f, a, b, mask)
    on, terms = FusionLoss(LossWeights(colour=100.0))(f, a, b, mask)
    assert on.item() == pytest.approx(off.item() + 100.0 * terms["colour"], rel=1e-5)
    assert math.isnan(FusionLoss(LossWeights())(f, a, b, mask)[1]["colour"])
    assert FusionLoss(LossWeights(colour=100.0))(f, a, b)[0].item() == pytest.approx(off.item(), rel=1e-6)


# --- augmentation ------------------------------------------------------------------------

def _pair(size=48):
    rng = np.random.default_rng(1)
    mri = cv2.GaussianBlur(rng.random((size, size)).astype(np.float32), (0, 0), 2)
    pet = _pet_disc(size)
    from cminet.runtime.imaging import rgb_to_ycbcr

    return mri, rgb_to_ycbcr(pet)[..., 0] / 255.0, coloured_mask(pet).astype(np.float32)


def test_augment_keeps_range_shape_and_grey_stays_grey():
    a, b, mask = _pair()
    rng = np.random.default_rng(0)
    for _ in range(30):
        for m in (mask, np.zeros_like(mask)):
            a2, b2, m2 = Augment()(a, b, m, rng)
            assert a2.shape == b2.shape == m2.shape == a.shape
            assert a2.dtype == b2.dtype == m2.dtype == np.float32
            assert 0 <= a2.min() and a2.max() <= 1 and 0 <= b2.min() and b2.max() <= 1
            if not m.any():
                assert not m2.any()  # a CT never becomes coloured


def test_every_change_happens_and_nothing_changes_at_probability_zero():
    a, b, mask = _pair()
    none = Augment(p_invert=0, p_gamma=0, p_bias=0, p_scale=0, p_blur=0, p_palette=0, p_noise=0)
    a2, b2, _ = none(a, b, mask, np.random.default_rng(0))
    assert np.array_equal(a2, np.clip(a, 0, 1)) and np.allclose(b2, b)
    inverted = Augment(p_invert=1, p_gamma=0, p_bias=0).mri(a, np.random.default_rng(0))
    assert np.corrcoef(inverted[8:-8, 8:-8].ravel(), a[8:-8, 8:-8].ravel())[0, 1] < -0.5
    _, recoloured, m3 = Augment(p_palette=1, p_scale=0, p_blur=0, p_noise=0)(a, b, mask, np.random.default_rng(3))
    assert not np.allclose(recoloured, b) and m3.any()


def test_shifted_pairs_are_repeatable_and_vary_the_palette():
    pet = _pet_disc(48)
    mri = (np.random.default_rng(2).random((48, 48)) * 255).astype(np.uint8)
    first, second = shifted_rgb_pair(mri, pet, 5), shifted_rgb_pair(mri, pet, 5)
    assert all(np.array_equal(x, y) for x, y in zip(first[:2], second[:2], strict=True)) and first[2] == second[2]
    names = {shifted_rgb_pair(mri, pet, seed)[2] for seed in range(40)}
    assert len(names) >= 5
    assert first[1].dtype == np.uint8 and first[1].shape == pet.shape
    assert (first[1][-4:, :4] == 0).all()  # far from any uptake stays black whatever the palette
    assert SHIFT.p_palette == 1.0


# --- The colour hold (cminet.runtime.colour): the fused Y keeps the functional base ------

def test_colour_weight_is_zero_on_grey_one_on_colour_and_ramps_between():
    from cminet.runtime.colour import HOLD_FROM_CHROMA, chroma, colour_weight

    pet = _pet_disc()
    weight, c = colour_weight(pet), chroma(pet)
    assert weight.dtype == np.float32 and weight.shape == pet.shape[:2]
    assert (weight[c >= COLOURED_CHROMA] == 1).all() and (weight[c <= HOLD_FROM_CHROMA] == 0).all()
    between = (c > HOLD_FROM_CHROMA) & (c < COLOURED_CHROMA)
    assert between.any() and ((weight[between] > 0) & (weight[between] < 1)).all()
    assert not colour_weight(np.full((8, 8, 3), 77, np.uint8)).any()


def test_mri_edges_are_released_from_the_hold_and_flat_tissue_is_not():
    from cminet.runtime.colour import edge_release, hold_weight

    mri = np.zeros((48, 48), np.float32)
    mri[:, 24:] = 0.6  # one vertical tissue boundary
    release = edge_release(mri)
    assert release[:, 22:26].min() == 1.0 and release[:, :19].max() == 0 and release[:, 29:].max() == 0
    weight = hold_weight(np.ones_like(mri), mri)
    assert weight[:, 22:26].max() == 0 and weight[:, :19].min() == 1.0
    assert np.allclose(edge_release(np.stack([mri, mri.T])), np.stack([release, release.T]), atol=1e-6)


def test_hold_gives_back_the_functional_base_and_keeps_the_detail():
    from cminet.runtime.colour import hold_functional_base, low_pass

    rng = np.random.default_rng(1)
    b = cv2.GaussianBlur(rng.random((64, 64), dtype=np.float32), (0, 0), 6)  # smooth uptake
    detail = (rng.random((64, 64), dtype=np.float32) - 0.5) * 0.2  # MRI structure, fine
    fused = 0.6 * b + detail  # the network darkened the uptake by 40 %
    held = hold_functional_base(fused, b, np.ones_like(b))
    assert np.abs(low_pass(held) - low_pass(b)).mean() < 0.1 * np.abs(low_pass(fused) - low_pass(b)).mean()
    fine = held - low_pass(held)
    assert np.corrcoef(fine.ravel(), (detail - low_pass(detail)).ravel())[0, 1] > 0.9
    assert np.array_equal(hold_functional_base(fused, b, np.zeros_like(b)), fused)  # weight 0: untouched
    assert np.array_equal(hold_functional_base(fused, b, None), fused)  # a CT: no weight map
    with pytest.raises(ValueError, match="shapes differ"):
        hold_functional_base(fused, b[:32], np.ones_like(b))


def test_finish_fused_restores_a_darkened_pet_and_leaves_grey_alone():
    from cminet.runtime.imaging import finish_fused, finish_output, prepare_pair

    pet = _pet_disc()
    mri = np.full(pet.shape[:2], 60, np.uint8)
    pair = prepare_pair(mri, pet)
    dark = pair.other * 0.6
    before = colour_fidelity(pet, finish_output(dark, pair.chroma))
    after = colour_fidelity(pet, finish_fused(dark, pair))
    assert before["LightRatio"] < 0.85 and after["ColourDE"] < before["ColourDE"] / 3
    assert abs(after["LightRatio"] - 1) < 0.05
    grey = prepare_pair(mri, pet[..., 0].copy())  # a CT: no colour, nothing held
    assert grey.hold is None
    assert np.array_equal(finish_fused(grey.other * 0.6, grey), finish_output(grey.other * 0.6, None))
    with pytest.raises(Exception, match="NaN"):
        finish_fused(np.full_like(dark, np.nan), pair)


def test_training_holds_exactly_as_the_runtime_does():
    from cminet.losses import colour_hold
    from cminet.runtime.colour import hold_functional_base, hold_weight

    rng = np.random.default_rng(2)
    f, b, colour = (rng.random((2, 1, 40, 52), dtype=np.float32) for _ in range(3))
    a = cv2.GaussianBlur(rng.random((40, 52), dtype=np.float32), (0, 0), 1.5)[None, None].repeat(2, 0)
    a[1] *= 0.3  # weaker edges: partly released
    ours = colour_hold(*(torch.from_numpy(x) for x in (f, a, b, colour))).numpy()
    for i in range(2):
        runtime = hold_functional_base(f[i, 0], b[i, 0], hold_weight(colour[i, 0], a[i, 0]))
        assert np.abs(ours[i, 0] - runtime).max() < 1e-5
    f_t = torch.from_numpy(f)
    assert torch.equal(colour_hold(f_t, torch.from_numpy(a), torch.from_numpy(b), None), f_t)


def test_shipped_model_keeps_the_pet_and_spect_colours(tmp_path):
    """End to end through the torch-free Fuser and the torch model: on the shipped samples the
    hold takes the fused colours closer to the PET/SPECT than the bare network's output
    (measured ColourDE 14.4 vs 19.1 PET, 12.6 vs 13.9 SPECT with the weights trained through
    the hold; 23.1 vs 29.8 and 15.4 vs 17.6 with the previous ones), level with the Laplacian
    pyramid's 15.2 and 12.6 (the colour target), and the classical rules are not held (they
    are what cminet is compared against)."""
    from cminet.baselines import BaselineFuser, laplacian_pyramid
    from cminet.fusion import DEFAULT_WEIGHTS
    from cminet.runtime import Fuser
    from cminet.runtime.folders import SAMPLES_DIR
    from cminet.runtime.imaging import finish_output, prepare_pair, read_image

    ort, torch_fuser, laplacian = Fuser(backend="ort-cpu"), Fuser(DEFAULT_WEIGHTS), BaselineFuser("laplacian")
    for pair_type, name in (("pet_mri", "41066.png"), ("spect_mri", "9023.png")):
        mri = read_image(SAMPLES_DIR / pair_type / "mri" / name)
        other = read_image(SAMPLES_DIR / pair_type / "other" / name)
        pair = prepare_pair(mri, other)
        ours = colour_fidelity(other, ort.fuse(mri, other))["ColourDE"]
        bare = colour_fidelity(other, finish_output(ort.infer(pair.mri[None, None], pair.other[None, None])[0, 0],
                                                    pair.chroma))["ColourDE"]
        assert ours == pytest.approx(colour_fidelity(other, torch_fuser.fuse(mri, other))["ColourDE"], abs=0.1)
        assert ours < bare - 1.0, pair_type
        plain = finish_output(laplacian_pyramid(pair.mri, pair.other), pair.chroma)
        assert np.array_equal(laplacian.fuse(mri, other), plain)
        assert ours < colour_fidelity(other, plain)["ColourDE"] + 0.5, pair_type


def test_colour_term_pins_the_network_output_under_the_hold():
    """With the hold, L_COLOUR is taken on the network's own output (the held output has the
    functional base by construction): the term follows ``raw``, not ``f``."""
    rng = np.random.default_rng(3)
    a, b, raw = (torch.from_numpy(rng.random((1, 1, 32, 32), dtype=np.float32)) for _ in range(3))
    mask = torch.ones_like(a)
    loss = FusionLoss(LossWeights(colour=1.0))
    _, on_raw = loss(b.clone(), a, b, mask, raw)
    _, on_f = loss(b.clone(), a, b, mask)
    assert on_f["colour"] == pytest.approx(0.0, abs=1e-9)
    assert on_raw["colour"] == pytest.approx(colour_base(raw, b, mask).item()) and on_raw["colour"] > 1e-3


def test_training_through_the_hold_scores_what_the_user_gets():
    from cminet.losses import colour_hold
    from cminet.model import CMINet
    from cminet.train import fused_output

    torch.manual_seed(0)
    model = CMINet().eval()
    a, b = torch.full((1, 1, 32, 32), 0.3), torch.rand(1, 1, 32, 32)  # flat MRI: nothing released
    colour = torch.ones_like(a)
    with torch.no_grad():
        held, raw = fused_output(model, a, b, colour, hold=True)
        plain, raw2 = fused_output(model, a, b, colour, hold=False)
    assert torch.equal(raw, raw2) and torch.equal(plain, raw)
    assert torch.allclose(held, colour_hold(raw, a, b, colour)) and not torch.allclose(held, raw)
