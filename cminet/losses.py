"""The CMINet training loss (SPEC section 4, from the paper):

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

Default weights are the paper's: 10, 100, 1 (and 0 for L_INT). Images are in [0, 1].
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


def gaussian_window(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    coords = torch.arange(size, dtype=torch.float32) - (size - 1) / 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    g = g / g.sum()
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


@dataclass
class LossWeights:
    ssim: float = 10.0
    texture: float = 100.0
    pixel: float = 1.0
    intensity: float = 0.0
    gradient: float = 0.0


class FusionLoss(torch.nn.Module):
    """Returns the total loss and its three terms (unweighted) for logging."""

    def __init__(self, weights: LossWeights | None = None):
        super().__init__()
        self.weights = weights or LossWeights()

    def forward(self, f: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, dict]:
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
                 "gradient": l_grad.item()}
        return total, terms
