"""CMINet: Cross-Modality Interaction Network for medical image fusion.

One file, one model (timm style). The architecture follows the paper summarised in
``shared/seed/cminet-paper-summary.md``; every size is a field of :class:`CMINetConfig`.

    a (MRI) ──stem──patch-embed──[recursive TF block]×T──unembed──┐
                                                                   ├─cat─head─[LFE→CA]×K─tail─► f
    b (CT/Y)──stem──patch-embed──[recursive TF block]×T──unembed──┘

* Intra-modality interaction: one transformer block per modality, applied ``recursions``
  (T) times with shared weights and RNN-like state ``z_t = TF(z_{t-1} + e)``.
* Inter-modality interaction: one parameter-shared LFE → CA pair applied ``interactions``
  (K) times. LFE = densely connected convs with GDA units and a local residual; GDA =
  1×1 conv → spatial + channel attention → GADN (gated adaptive normalisation).

Choices this project made where the paper is silent (see docs/model.md):

* Attention keys/values are average-pooled ``kv_pool``× (spatial-reduction attention,
  as in PVT). Queries stay at full token resolution, so attention stays global, but its
  cost and memory drop by ``kv_pool²``: at 1024×1024 a full token-to-token matrix would be
  16384² per head, which no Jetson-class GPU holds.
* Every statistic is a mean (never a sum), so the model is resolution-invariant and its
  activations stay inside FP16 range at 1024².
* The softmax scale is applied to Q before the matmul (FP16 friendly). PyTorch runs attention
  through ``scaled_dot_product_attention`` (fused kernels, no score matrix in memory); export
  writes it as plain MatMul/Softmax (:func:`explicit_attention`), which TensorRT fuses.
* The tail predicts a correction to the pixel-wise maximum of the inputs (``output =
  "max-residual"``, a global residual; its last conv starts at zero, so an untrained model
  is the max rule). With the paper's plain sigmoid head (``output = "sigmoid"``) the model
  trained here stayed well below the max rule on MI and VIF on validation pairs; the
  residual keeps source intensities and lets the network spend its capacity on structure
  and texture. Measured numbers are in docs/training.md.
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class CMINetConfig:
    """Every hyper-parameter of CMINet. Stored beside the weights in each checkpoint."""

    channels: int = 16          # full-resolution feature channels (stems, head, CNN, tail)
    embed_dim: int = 48         # transformer token width
    num_heads: int = 3          # attention heads (embed_dim must divide evenly)
    patch_size: int = 8         # patch embedding stride p; tokens live at H/p × W/p
    kv_pool: int = 2            # keys/values average-pooled by this factor
    mlp_ratio: float = 2.0      # transformer MLP hidden width = mlp_ratio × embed_dim
    recursions: int = 2         # T: applications of the shared transformer block (paper: 2)
    interactions: int = 3       # K: applications of the shared LFE → CA pair (paper: 3)
    growth: int = 8             # channels added by each dense layer of the LFE
    dense_layers: int = 3       # dense layers (conv + GDA unit) in the LFE
    ca_reduction: int = 4       # channel-attention bottleneck reduction
    sa_kernel: int = 7          # spatial-attention kernel size
    negative_slope: float = 0.1  # LeakyReLU slope
    output: str = "max-residual"  # "max-residual": f = clip(max(a, b) + tail); "sigmoid": f = σ(tail)

    def __post_init__(self) -> None:
        if self.output not in ("max-residual", "sigmoid"):
            raise ValueError(f"output must be 'max-residual' or 'sigmoid', got {self.output!r}")
        if self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim={self.embed_dim} is not divisible by num_heads={self.num_heads}")
        for name in ("channels", "embed_dim", "patch_size", "kv_pool", "recursions", "interactions", "growth"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")

    @property
    def size_multiple(self) -> int:
        """Inputs are padded to a multiple of this inside the model."""
        return self.patch_size * self.kv_pool

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict) -> CMINetConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown CMINetConfig fields: {', '.join(unknown)}")
        return cls(**data)

    @classmethod
    def from_json(cls, text: str) -> CMINetConfig:
        return cls.from_dict(json.loads(text))


# --------------------------------------------------------------------------------------
# Intra-modality interaction: recursive transformer
# --------------------------------------------------------------------------------------


class Attention(nn.Module):
    """Multi-head self-attention over a token grid with pooled keys/values."""

    # Explicit MatMul/Softmax instead of scaled_dot_product_attention: what export uses (see
    # :func:`explicit_attention`), so the ONNX graph stays the plain ops TensorRT and ONNX
    # Runtime fuse on every version cminet supports.
    explicit = False

    def __init__(self, dim: int, num_heads: int, kv_pool: int):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.kv_pool = kv_pool
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        n, length, dim = x.shape
        q = self.q(x).reshape(n, length, self.num_heads, self.head_dim).transpose(1, 2)
        if self.kv_pool > 1:
            grid = x.transpose(1, 2).reshape(n, dim, h, w)
            x = F.avg_pool2d(grid, self.kv_pool).flatten(2).transpose(1, 2)
        k, v = self.kv(x).reshape(n, -1, 2, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        # Scale Q before the matmul: keeps Q·Kᵀ small enough for FP16 engines.
        q = q * self.scale
        if self.explicit:
            out = torch.softmax(q @ k.transpose(-2, -1), dim=-1) @ v
        else:
            # The same maths without the N×heads×L×(L/kv_pool²) score matrix in memory where a
            # fused kernel exists (on an H200 at 1×1024² FP16: 11.1 → 8.1 ms, 1060 → 512 MB).
            out = F.scaled_dot_product_attention(q, k, v, scale=1.0)
        return self.proj(out.transpose(1, 2).reshape(n, length, dim))


@contextlib.contextmanager
def explicit_attention(model: nn.Module) -> Iterator[nn.Module]:
    """Within the block, ``model``'s attention runs as explicit MatMul/Softmax (for export:
    ONNX Runtime 1.17 and TensorRT 10.3 run that graph as shipped; a fused-attention op is
    newer than both). Same outputs within float rounding."""
    modules = [m for m in model.modules() if isinstance(m, Attention)]
    for module in modules:
        module.explicit = True
    try:
        yield model
    finally:
        for module in modules:
            module.explicit = False


class TransformerBlock(nn.Module):
    """Pre-norm transformer block: LN → MHSA → residual, LN → MLP → residual."""

    def __init__(self, dim: int, num_heads: int, kv_pool: int, mlp_ratio: float):
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads, kv_pool)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), h, w)
        return x + self.mlp(self.norm2(x))


class RecursiveTransformerBranch(nn.Module):
    """One modality's branch: stem → patch embed → shared block ×T → unembed (+ stem skip)."""

    def __init__(self, cfg: CMINetConfig):
        super().__init__()
        c, d, p = cfg.channels, cfg.embed_dim, cfg.patch_size
        self.recursions = cfg.recursions
        self.stem = nn.Sequential(nn.Conv2d(1, c, 3, padding=1), nn.LeakyReLU(cfg.negative_slope))
        self.embed = nn.Conv2d(c, d, p, stride=p)
        # Depth-wise conv as positional information: works at any H×W, no size table.
        self.pos = nn.Conv2d(d, d, 3, padding=1, groups=d)
        self.block = TransformerBlock(d, cfg.num_heads, cfg.kv_pool, cfg.mlp_ratio)
        self.unembed = nn.Sequential(nn.Conv2d(d, c * p * p, 1), nn.PixelShuffle(p))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        stem = self.stem(x)
        grid = self.embed(stem)
        grid = grid + self.pos(grid)
        n, d, h, w = grid.shape
        e = grid.flatten(2).transpose(1, 2)  # N × L × D tokens
        z = torch.zeros_like(e)
        for _ in range(self.recursions):  # same weights every step, state carried like an RNN
            z = self.block(z + e, h, w)
        grid = z.transpose(1, 2).reshape(n, d, h, w)
        return self.unembed(grid) + stem


# --------------------------------------------------------------------------------------
# Inter-modality interaction: interactive CNN
# --------------------------------------------------------------------------------------


class GADN(nn.Module):
    """Gated adaptive normalisation: ``x · (1 + tanh(γ · norm(α · s(x)) + β))``.

    Gated-channel-transform style with per-channel α, β, γ. ``s(x)`` is the channel's
    root-mean-square over H×W (a mean, not the L2 sum of GCT, so it does not grow with the
    image size and stays FP16-safe); ``norm`` divides by the RMS over channels. γ = β = 0
    at initialisation makes the gate the identity.
    """

    def __init__(self, channels: int, eps: float = 1e-5):
        super().__init__()
        self.alpha = nn.Parameter(torch.ones(1, channels, 1, 1))
        self.gamma = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.beta = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        embedding = self.alpha * torch.sqrt(x.pow(2).mean(dim=(2, 3), keepdim=True) + self.eps)
        norm = embedding / torch.sqrt(embedding.pow(2).mean(dim=1, keepdim=True) + self.eps)
        return x * (1.0 + torch.tanh(self.gamma * norm + self.beta))


class SpatialAttention(nn.Module):
    """CBAM-style: a k×k conv over the channel mean and max maps → sigmoid weight map."""

    def __init__(self, kernel: int):
        super().__init__()
        self.conv = nn.Conv2d(2, 1, kernel, padding=kernel // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)
        return x * torch.sigmoid(self.conv(pooled))


class ChannelAttention(nn.Module):
    """Squeeze-and-excitation channel attention (global mean → bottleneck → sigmoid)."""

    def __init__(self, channels: int, reduction: int, negative_slope: float):
        super().__init__()
        hidden = max(channels // reduction, 4)
        # LeakyReLU, not ReLU: with a 4-unit bottleneck a dead ReLU silences the whole unit.
        self.fc = nn.Sequential(
            nn.Conv2d(channels, hidden, 1), nn.LeakyReLU(negative_slope), nn.Conv2d(hidden, channels, 1),
            nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.fc(x.mean(dim=(2, 3), keepdim=True))


class GDA(nn.Module):
    """Gated dual attention unit: 1×1 conv → (spatial ‖ channel attention) → 1×1 merge → GADN."""

    def __init__(self, channels: int, cfg: CMINetConfig):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 1)
        self.spatial = SpatialAttention(cfg.sa_kernel)
        self.channel = ChannelAttention(channels, cfg.ca_reduction, cfg.negative_slope)
        self.merge = nn.Conv2d(2 * channels, channels, 1)
        self.gadn = GADN(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        y = self.merge(torch.cat([self.spatial(y), self.channel(y)], dim=1))
        return self.gadn(y)


class LFE(nn.Module):
    """Local feature extraction: densely connected (conv → act → GDA) layers, 1×1 fusion,
    local residual."""

    def __init__(self, cfg: CMINetConfig):
        super().__init__()
        c, g = cfg.channels, cfg.growth
        self.layers = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(c + i * g, g, 3, padding=1), nn.LeakyReLU(cfg.negative_slope), GDA(g, cfg)
            )
            for i in range(cfg.dense_layers)
        )
        self.fuse = nn.Conv2d(c + cfg.dense_layers * g, c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = [x]
        for layer in self.layers:
            features.append(layer(torch.cat(features, dim=1)))
        return x + self.fuse(torch.cat(features, dim=1))


class InteractiveCNN(nn.Module):
    """One LFE → CA pair, applied ``interactions`` times with the same weights."""

    def __init__(self, cfg: CMINetConfig):
        super().__init__()
        self.interactions = cfg.interactions
        self.lfe = LFE(cfg)
        self.ca = ChannelAttention(cfg.channels, cfg.ca_reduction, cfg.negative_slope)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for _ in range(self.interactions):
            x = self.ca(self.lfe(x))
        return x


# --------------------------------------------------------------------------------------
# The network
# --------------------------------------------------------------------------------------


class CMINet(nn.Module):
    """Fuse ``a`` (MRI) and ``b`` (CT, or the Y channel of PET/SPECT).

    Both inputs are N×1×H×W in [0, 1] with any H, W ≥ 16; the output has the same shape and
    range. Inputs are edge-padded to a multiple of ``config.size_multiple`` and cropped back.
    """

    def __init__(self, config: CMINetConfig | None = None):
        super().__init__()
        self.config = cfg = config or CMINetConfig()
        c = cfg.channels
        self.branch_a = RecursiveTransformerBranch(cfg)
        self.branch_b = RecursiveTransformerBranch(cfg)
        self.head = nn.Sequential(nn.Conv2d(2 * c, c, 3, padding=1), nn.LeakyReLU(cfg.negative_slope))
        self.cnn = InteractiveCNN(cfg)
        self.tail = nn.Sequential(
            nn.Conv2d(c, c, 3, padding=1), nn.LeakyReLU(cfg.negative_slope), nn.Conv2d(c, 1, 3, padding=1)
        )
        if cfg.output == "max-residual":  # start as the max rule; training learns what to add
            self.zero_correction()

    def zero_correction(self) -> None:
        """Zero the tail's last convolution: a max-residual model then outputs exactly the
        max rule while keeping every learned feature (a restart point for fine-tuning)."""
        if self.config.output != "max-residual":
            raise ValueError("zero_correction needs a max-residual model (config.output)")
        nn.init.zeros_(self.tail[-1].weight)
        nn.init.zeros_(self.tail[-1].bias)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        h, w = a.shape[-2:]
        m = self.config.size_multiple
        pad_h, pad_w = (m - h % m) % m, (m - w % m) % m
        # Always pad (by zero when already aligned): no branch on the size, so the exported
        # graph computes the padding from the input shape at run time.
        a = F.pad(a, (0, pad_w, 0, pad_h), mode="replicate")
        b = F.pad(b, (0, pad_w, 0, pad_h), mode="replicate")
        shallow = self.head(torch.cat([self.branch_a(a), self.branch_b(b)], dim=1))
        out = self.tail(self.cnn(shallow))
        if self.config.output == "max-residual":
            fused = torch.clamp(torch.maximum(a, b) + out, 0.0, 1.0)
        else:
            fused = torch.sigmoid(out)
        return fused[..., :h, :w]


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_flops(model: nn.Module, height: int = 256, width: int = 256, batch: int = 1) -> int:
    """FLOPs of one forward pass as ``torch.utils.flop_counter.FlopCounterMode`` counts them
    (2 per multiply-add of convolutions and matmuls; element-wise ops are not counted).

    Counted on the meta device (shapes only: no memory, no arithmetic), so any size works,
    4096² included, in a fraction of a second."""
    from torch.utils.flop_counter import FlopCounterMode

    skeleton, a = on_meta(model, batch, height, width)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        skeleton(a, a)
    return counter.get_total_flops()


def on_meta(model: nn.Module, batch: int, height: int, width: int) -> tuple[nn.Module, torch.Tensor]:
    """A copy of ``model`` on the meta device and an N×1×H×W meta input for it."""
    import copy

    return copy.deepcopy(model).to("meta").eval(), torch.empty(batch, 1, height, width, device="meta")


__all__ = ["CMINet", "CMINetConfig", "count_flops", "count_parameters", "math", "on_meta"]
