import math

import numpy as np
import pytest

from cminet.baselines import BaselineFuser, average, laplacian_pyramid, maximum
from cminet.metrics import (
    METRICS,
    average_gradient,
    entropy,
    evaluate,
    fusion_mi,
    mutual_information,
    qabf,
    spatial_frequency,
    ssim,
    vif_pixel,
)


@pytest.fixture(scope="module")
def textured():
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:64, :64]
    a = 128 + 60 * np.sin(xx / 4) * np.cos(yy / 5) + rng.normal(0, 5, (64, 64))
    b = np.where((xx - 32) ** 2 + (yy - 32) ** 2 < 400, 200.0, 30.0)
    return np.clip(a, 0, 255), b


@pytest.mark.torch_free
def test_evaluate_returns_exactly_the_nine_metrics(textured):
    a, b = textured
    result = evaluate(a, b, (a + b) / 2)
    assert tuple(result) == METRICS
    assert all(math.isfinite(v) for v in result.values())


@pytest.mark.torch_free
def test_constant_images():
    c = np.full((32, 32), 100.0)
    assert entropy(c) == 0.0
    assert spatial_frequency(c) == 0.0 and average_gradient(c) == 0.0
    assert mutual_information(c, c) == 0.0
    assert ssim(c, c) == pytest.approx(1.0)
    zero = np.zeros((32, 32))
    assert qabf(zero, zero, zero) == 0.0  # no edges anywhere: nothing to transfer


@pytest.mark.torch_free
def test_identical_sources_and_fusion(textured):
    a, _ = textured
    r = evaluate(a, a, a)
    # MI(a, a) is the entropy of a: MI sum = 2·H(a), in nats here and in bits with base 2.
    assert r["MI"] == pytest.approx(2 * entropy(a) * math.log(2), rel=1e-9)
    assert fusion_mi(a, a, a, base=2) == pytest.approx(2 * entropy(a), rel=1e-9)
    assert r["SSIM"] == pytest.approx(2.0)
    assert r["VIF"] == pytest.approx(2.0, abs=1e-6)
    # Perfect edge transfer scores Qg(1)·Qa(1) with the published constants.
    perfect = 0.9994 / (1 + math.exp(-15 * 0.5)) * 0.9879 / (1 + math.exp(-22 * 0.2))
    assert r["Qabf"] == pytest.approx(perfect, rel=1e-9)


@pytest.mark.torch_free
def test_spatial_frequency_of_a_ramp_by_hand():
    ramp = np.tile(np.arange(8, dtype=float) * 3, (5, 1))  # +3 per column, rows equal
    assert spatial_frequency(ramp) == pytest.approx(3.0)  # RF = 3, CF = 0
    assert spatial_frequency(ramp.T) == pytest.approx(3.0)


@pytest.mark.torch_free
def test_average_gradient_of_a_ramp_by_hand():
    ramp = np.tile(np.arange(6, dtype=float) * 2, (4, 1))  # gradient 2 everywhere (also at borders)
    expected = (np.sqrt(4 / 2) * 24) / (3 * 5)
    assert average_gradient(ramp) == pytest.approx(expected)


@pytest.mark.torch_free
def test_entropy_of_two_equal_levels_is_one_bit():
    x = np.zeros((4, 4))
    x[:, :2] = 255
    assert entropy(x) == pytest.approx(1.0)


@pytest.mark.torch_free
def test_symmetry_in_the_sources(textured):
    a, b = textured
    f = (a + b) / 2
    ab, ba = evaluate(a, b, f), evaluate(b, a, f)
    for key in METRICS:
        assert ab[key] == pytest.approx(ba[key], rel=1e-9), key


@pytest.mark.torch_free
def test_better_fusion_scores_higher(textured):
    a, b = textured
    noisy = np.clip((a + b) / 2 + np.random.default_rng(1).normal(0, 40, a.shape), 0, 255)
    assert qabf(a, b, laplacian_pyramid(a / 255, b / 255) * 255) > qabf(a, b, noisy)


@pytest.mark.torch_free
def test_baselines_on_tiny_arrays():
    a = np.array([[0.0, 0.2], [0.4, 1.0]])
    b = np.array([[0.5, 0.1], [0.4, 0.0]])
    np.testing.assert_allclose(average(a, b), [[0.25, 0.15], [0.4, 0.5]])
    np.testing.assert_allclose(maximum(a, b), [[0.5, 0.2], [0.4, 1.0]])
    x = np.random.default_rng(0).random((32, 48)).astype(np.float32)
    np.testing.assert_allclose(laplacian_pyramid(x, x), x, atol=1e-5)  # fusing an image with itself


@pytest.mark.torch_free
def test_baseline_fuser_keeps_colour():
    rng = np.random.default_rng(0)
    mri = rng.integers(0, 256, (32, 32), dtype=np.uint8)
    pet = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    assert BaselineFuser("max").fuse(mri, pet).shape == (32, 32, 3)
    assert BaselineFuser("average").fuse(mri, mri).shape == (32, 32)
    with pytest.raises(ValueError, match="unknown baseline"):
        BaselineFuser("dwt-9000")


def test_small_images_score_the_scales_they_have():
    # VIF's four scales need 41 pixels; smaller images (down to one 17×17 window) score the
    # scales they have instead of failing, and the torch loss agrees with the metric.
    import torch

    from cminet.losses import vif

    rng = np.random.default_rng(2)
    for size in (17, 24, 40):
        a = rng.random((size, size)) * 255
        f = np.clip(0.7 * a + 30 * rng.random(a.shape), 0, 255)
        scores = evaluate(a, a[::-1], f)
        assert all(np.isfinite(v) for v in scores.values())
        assert 0 < vif_pixel(a, f) < 1
        t = vif(torch.from_numpy(a / 255)[None, None], torch.from_numpy(f / 255)[None, None]).item()
        assert t == pytest.approx(vif_pixel(a, f), rel=1e-9)
