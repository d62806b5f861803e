"""The CMINet training loss, from the paper:

    L = w_ssim · (1 − SSIM(f, max(a, b))) + w_tex · L_TEX + w_pix · L_PIX

* L_TEX = mean | |∇f| − max(|∇a|, |∇b|) |, with |∇| = |Sobel_x| + |Sobel_y|. The paper
  writes a norm; we take the mean absolute difference so the loss does not grow with the
  crop size.
* L_PIX = mean((f − a)²) + mean((f − b)²).
* L_GRAD = mean |∇f − ∇s| with ∇s, per pixel, the Sobel gradient *vector* of whichever
  source has the stronger edge there (not in the paper; weight 0 by default). Unlike
  L_TEX it also asks for the edge's direction, which is what Qabf scores.
* L_INT = mean |f − max(a, b)| (not in the paper; weight 0 by default). L_PIX is smallest at
  the average of the sources, which dims whichever modality is bright (CT bone, PET
  uptake); L_INT pulls intensities toward the brighter source instead.
* L_VIF = 2 − VIF(a, f) − VIF(b, f), with :func:`vif` the differentiable twin of the
  evaluation metric (multi-scale pixel-domain VIF of Sheikh & Bovik; not in the paper;
  weight 0 by default). It asks f to carry each source's local structure *linearly*: the
  texture term alone let the network paint MRI detail over the CT/PET structure, which
  the VIF and MI of the other source measure as lost information.
* L_QABF = 1 − Qabf(a, b, f), with :func:`qabf` the differentiable twin of the Xydeas–Petrović
  edge-transfer metric (not in the paper; weight 0 by default): it keeps each source's
  edges at their own strength and orientation while L_VIF pulls towards the sources.

* L_COLOUR = Σ m·(G_σ ∗ (f − b))² / Σ m, over the functional source's coloured pixels m (the
  PET/SPECT colour mask; 0 for CT), G_σ a Gaussian low-pass (σ = ``colour_sigma`` px; not
  in the paper; weight 0 by default). The fused Y is shown with the source's chroma, so wherever f's local
  mean brightness drifts from the functional image's, the colour scale reads wrong (yellow
  turns olive, red dims): this term holds the functional image's local brightness in its
  support and leaves the detail above σ free for the MRI's structure (a base/detail split).
  Squared, so the balance with the structure terms is gradual: with the absolute value the
  network switched between all-MRI and all-SPECT inside the SPECT's colour (measured: weight
  300 left it all-MRI, 600 made it all-SPECT, σ = 5), nothing in between.

Default weights are the paper's: 10, 100, 1 (and 0 for L_INT, L_GRAD, L_VIF, L_QABF). Images
are in [0, 1].
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from cminet.runtime.colour import EDGE_SIGMA, EDGE_TAU, HOLD_SIGMA, SOBEL_X, gaussian_kernel


def gaussian_1d(size: int, sigma: float) -> torch.Tensor:
    """Normalised 1-D Gaussian (float64); the 2-D window is its outer product."""
    coords = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    return g / g.sum()


def gaussian_window(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    g = gaussian_1d(size, sigma).float()
    return (g[:, None] * g[None, :])[None, None]  # 1×1×size×size


def ssim(x: torch.Tensor, y: torch.Tensor, data_range: float = 1.0, window: int = 11, sigma: float = 1.5):
    """Mean SSIM (Wang et al. 2004: Gaussian 11×11 window σ = 1.5, K1 = 0.01, K2 = 0.03)
    over the valid region of N×1×H×W images."""
    kernel = gaussian_window(window, sigma).to(x)
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mu_x, mu_y = F.conv2d(x, kernel), F.conv2d(y, kernel)
    var_x = F.conv2d(x * x, kernel) - mu_x**2
    var_y = F.conv2d(y * y, kernel) - mu_y**2
    cov = F.conv2d(x * y, kernel) - mu_x * mu_y
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return ssim_map.mean()


_SOBEL_X = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])


def sobel(x: torch.Tensor) -> torch.Tensor:
    """Sobel x and y responses of N×1×H×W images (replicate padding) → N×2×H×W."""
    kernel = torch.stack([_SOBEL_X, _SOBEL_X.T])[:, None].to(x)
    return F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), kernel)


def gradient_magnitude(x: torch.Tensor) -> torch.Tensor:
    """|Sobel_x| + |Sobel_y| of N×1×H×W images (replicate padding, same size out)."""
    return sobel(x).abs().sum(dim=1, keepdim=True)


def _blur_valid(x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian filter, 'valid' region (MATLAB ``filter2(win, x, 'valid')``)."""
    g = g.to(x)
    x = F.conv2d(x, g.view(1, 1, 1, -1))
    return F.conv2d(x, g.view(1, 1, -1, 1))


def vif_terms(ref: torch.Tensor, dist: torch.Tensor, sigma_nsq: float = 2.0, eps: float = 1e-10):
    """Per-image numerator and denominator of the multi-scale pixel-domain VIF.

    The same computation as :func:`cminet.metrics.vif_pixel` (a port of Sheikh & Bovik's
    ``vifp_mscale.m``), written in torch so it can be a loss. ``ref`` and ``dist`` are
    N×1×H×W on the 0–255 scale. Scales the image has become too small for add nothing, as
    in the reference (whose 'valid' filters return empty maps there); all four scales need
    H, W ≥ 41. VIF = num / den; returns ``(num, den)`` of shape N so crops can be pooled.
    """
    num = den = ref.new_zeros(ref.shape[0])
    for scale in range(1, 5):
        n = 2 ** (4 - scale + 1) + 1
        g = gaussian_1d(n, n / 5.0)
        if scale > 1:
            if min(ref.shape[-2:]) < n:
                break
            ref = _blur_valid(ref, g)[..., ::2, ::2]
            dist = _blur_valid(dist, g)[..., ::2, ::2]
        if min(ref.shape[-2:]) < n:
            break
        mu1, mu2 = _blur_valid(ref, g), _blur_valid(dist, g)
        s1 = (_blur_valid(ref * ref, g) - mu1 * mu1).clamp(min=0)
        s2 = (_blur_valid(dist * dist, g) - mu2 * mu2).clamp(min=0)
        s12 = _blur_valid(ref * dist, g) - mu1 * mu2
        # The reference's special cases, in its order: flat reference, flat distorted image,
        # negative gain. torch.where keeps gradients finite on the masked branches.
        low1, low2 = s1 < eps, s2 < eps
        gain = s12 / (s1 + eps)
        sv = s2 - gain * s12
        gain = torch.where(low1 | low2, torch.zeros_like(gain), gain)
        sv = torch.where(low1, s2, sv)
        s1 = torch.where(low1, torch.zeros_like(s1), s1)
        sv = torch.where(low2, torch.zeros_like(sv), sv)
        negative = gain < 0
        sv = torch.where(negative, s2, sv)
        gain = torch.where(negative, torch.zeros_like(gain), gain)
        sv = sv.clamp(min=eps)
        num = num + torch.log10(1 + gain * gain * s1 / (sv + sigma_nsq)).sum(dim=(1, 2, 3))
        den = den + torch.log10(1 + s1 / sigma_nsq).sum(dim=(1, 2, 3))
    return num, den


def vif(ref: torch.Tensor, dist: torch.Tensor, sigma_nsq: float = 2.0) -> torch.Tensor:
    """VIF of each image of a batch of N×1×H×W images in [0, 1] (the metric's 0–255 scale
    is applied inside). Matches :func:`cminet.metrics.vif_pixel`."""
    num, den = vif_terms(ref * 255.0, dist * 255.0, sigma_nsq)
    return torch.where(den > 0, num / den.clamp(min=1e-12), torch.zeros_like(num))


def crop_vif(ref: torch.Tensor, dist: torch.Tensor, sigma_nsq: float = 2.0, min_share: float = 0.05) -> torch.Tensor:
    """Mean VIF over a batch of crops, each crop scored on its own as the evaluation scores
    each image. Crops with almost no structure (VIF denominator below ``min_share`` of the
    batch mean: flat background) carry no information to keep and are left out; pooling
    all crops into one ratio instead lets the high-contrast pair types drown out the rest."""
    num, den = vif_terms(ref * 255.0, dist * 255.0, sigma_nsq, eps=1e-6)
    keep = den > min_share * den.mean()
    if not keep.any():
        return num.sum() * 0.0
    return (num[keep] / den[keep]).mean()


# The metric's Sobel pair: x as above, y pointing up (rows top to bottom: +1 +2 +1 … −1 −2 −1).
_SOBEL_METRIC = torch.stack([_SOBEL_X, -_SOBEL_X.T])


def _edge_strength_and_angle(x: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Sobel strength and orientation as the metric computes them (zero padding, cross-
    correlation like OpenCV's filter2D, angle = atan(gy / gx) with π/2 where gx = 0)."""
    g = F.conv2d(x, _SOBEL_METRIC[:, None].to(x), padding=1)  # zero padding
    gx, gy = g[:, :1], g[:, 1:]
    strength = torch.sqrt(gx * gx + gy * gy + eps)
    flat = gx == 0
    angle = torch.where(flat, torch.full_like(gx, math.pi / 2), torch.atan(gy / torch.where(flat, 1.0, gx)))
    return strength, angle


def _edge_preservation(g_src, a_src, g_f, a_f):
    rel = torch.minimum(g_src, g_f) / torch.maximum(g_src, g_f)  # the metric's two-sided ratio
    orient = 1 - (a_src - a_f).abs() / (math.pi / 2)
    q_g = 0.9994 / (1 + torch.exp(-15.0 * (rel - 0.5)))
    q_a = 0.9879 / (1 + torch.exp(-22.0 * (orient - 0.8)))
    return q_g * q_a


def qabf_terms(a: torch.Tensor, b: torch.Tensor, f: torch.Tensor, eps: float = 1e-12):
    """Per-image numerator and denominator of Xydeas–Petrović Q^{AB/F} (L = 1), the same
    computation as :func:`cminet.metrics.qabf` in torch. Inputs N×1×H×W on one scale."""
    ga, aa = _edge_strength_and_angle(a, eps)
    gb, ab = _edge_strength_and_angle(b, eps)
    gf, af = _edge_strength_and_angle(f, eps)
    num = (_edge_preservation(ga, aa, gf, af) * ga + _edge_preservation(gb, ab, gf, af) * gb).sum(dim=(1, 2, 3))
    return num, (ga + gb).sum(dim=(1, 2, 3))


def qabf(a: torch.Tensor, b: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """Qabf of each image of a batch (images in [0, 1]; the 0–255 scale is applied inside,
    since the metric's strengths are on that scale). Matches :func:`cminet.metrics.qabf`."""
    num, den = qabf_terms(a * 255.0, b * 255.0, f * 255.0)
    return num / den.clamp(min=1e-12)


def pooled_qabf(a: torch.Tensor, b: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """One Qabf for a batch of crops (Σ num / Σ den), so edge-free crops weigh nothing."""
    num, den = qabf_terms(a * 255.0, b * 255.0, f * 255.0, eps=1e-6)
    return num.sum() / den.sum().clamp(min=1e-6)


COLOUR_SIGMA = 2.0  # px: L_COLOUR holds the functional brightness at scales above this


@dataclass
class LossWeights:
    ssim: float = 10.0
    texture: float = 100.0
    pixel: float = 1.0
    intensity: float = 0.0
    gradient: float = 0.0
    vif: float = 0.0
    qabf: float = 0.0
    colour: float = 0.0
    colour_sigma: float = COLOUR_SIGMA
    fov: float = 0.0  # field-of-view consistency (cminet.train.field_of_view_gap)


def _low_pass(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian low-pass with the runtime's kernel and mirrored borders, same size out."""
    kernel = torch.from_numpy(gaussian_kernel(sigma))
    return _blur_valid(F.pad(x, (kernel.numel() // 2,) * 4, mode="reflect"), kernel)


def edge_release(a: torch.Tensor) -> torch.Tensor:
    """:func:`cminet.runtime.colour.edge_release` of N×1×H×W MRI in torch: 1 on its edges."""
    sobel = torch.from_numpy(np.stack([SOBEL_X, SOBEL_X.T])[:, None]).to(a)
    g = F.conv2d(F.pad(a, (1, 1, 1, 1), mode="reflect"), sobel)
    magnitude = torch.sqrt(g.square().sum(dim=1, keepdim=True))
    return (_low_pass(magnitude, EDGE_SIGMA) / EDGE_TAU).clamp(0.0, 1.0)


def colour_hold(f: torch.Tensor, a: torch.Tensor, b: torch.Tensor, colour: torch.Tensor | None,
                sigma: float = HOLD_SIGMA) -> torch.Tensor:
    """The runtime's colour hold (:func:`cminet.runtime.imaging.finish_fused`) in torch, so
    training sees the output a user gets: ``f + w · G_σ ∗ (b − f)`` with
    ``w = colour · (1 − edge_release(a))``, on N×1×H×W tensors, same kernels and mirrored
    borders; ``f`` when ``colour`` is None. No gradient flows into the weight (it is made of
    the inputs alone)."""
    if colour is None:
        return f
    weight = colour * (1.0 - edge_release(a))
    return f + weight * _low_pass(b - f, sigma)


def colour_base(f: torch.Tensor, b: torch.Tensor, mask: torch.Tensor, sigma: float = COLOUR_SIGMA) -> torch.Tensor:
    """L_COLOUR: mean squared low-pass(f − b) over the mask (0 where the mask is empty)."""
    return (mask * _low_pass(f - b, sigma).square()).sum() / mask.sum().clamp(min=1.0)


class FusionLoss(torch.nn.Module):
    """Returns the total loss and each weighted-in term (unweighted) for logging."""

    def __init__(self, weights: LossWeights | None = None):
        super().__init__()
        self.weights = weights or LossWeights()

    def forward(self, f: torch.Tensor, a: torch.Tensor, b: torch.Tensor,
                mask: torch.Tensor | None = None, raw: torch.Tensor | None = None) -> tuple[torch.Tensor, dict]:
        """``mask``: the functional source's coloured pixels (N×1×H×W), for L_COLOUR.
        ``raw``: the network's output before the colour hold, when ``f`` is after it. L_COLOUR
        is then taken on ``raw``: the held output has the functional base by construction,
        so this pins the network's own base to the functional image (the field-of-view term
        in :func:`cminet.train.scored_output` keeps it independent of the crop instead)."""
        l_ssim = 1.0 - ssim(f, torch.maximum(a, b))
        target_grad = torch.maximum(gradient_magnitude(a), gradient_magnitude(b))
        l_tex = (gradient_magnitude(f) - target_grad).abs().mean()
        l_pix = F.mse_loss(f, a) + F.mse_loss(f, b)
        l_int = (f - torch.maximum(a, b)).abs().mean()
        ga, gb = sobel(a), sobel(b)
        stronger = (ga.abs().sum(1, keepdim=True) >= gb.abs().sum(1, keepdim=True)).to(ga)
        l_grad = (sobel(f) - (stronger * ga + (1 - stronger) * gb)).abs().mean()
        w = self.weights
        total = (w.ssim * l_ssim + w.texture * l_tex + w.pixel * l_pix + w.intensity * l_int
                 + w.gradient * l_grad)
        terms = {"ssim": l_ssim.item(), "texture": l_tex.item(), "pixel": l_pix.item(), "intensity": l_int.item(),
                 "gradient": l_grad.item(), "vif": float("nan"), "qabf": float("nan"),
                 "colour": float("nan")}
        if w.vif:  # the most expensive term: computed only when it counts
            l_vif = 2.0 - crop_vif(a, f) - crop_vif(b, f)
            total = total + w.vif * l_vif
            terms["vif"] = l_vif.item()
        if w.qabf:
            l_qabf = 1.0 - pooled_qabf(a, b, f)
            total = total + w.qabf * l_qabf
            terms["qabf"] = l_qabf.item()
        if w.colour and mask is not None:
            l_colour = colour_base(f if raw is None else raw, b, mask, w.colour_sigma)
            total = total + w.colour * l_colour
            terms["colour"] = l_colour.item()
        return total, terms
