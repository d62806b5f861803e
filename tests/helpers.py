"""Small builders shared by the tests: synthetic datasets and checkpoints."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np


def synthetic_pair(rng: np.random.Generator, size: int = 48, colour: bool = False):
    """A blob-and-stripes MRI and a bright-ring 'CT' (or pseudo-colour 'PET') of one grid."""
    yy, xx = np.mgrid[:size, :size]
    centre = size / 2 + rng.uniform(-3, 3, 2)
    r = np.hypot(yy - centre[0], xx - centre[1])
    mri = (120 + 80 * np.sin(xx / 3.0 + rng.uniform(0, 6)) * (r < size * 0.4)).clip(0, 255).astype(np.uint8)
    ring = ((r > size * 0.35) & (r < size * 0.42)) * 230.0
    other = ring.astype(np.uint8)
    if colour:
        other = cv2.applyColorMap((255 - r * 255 / r.max()).astype(np.uint8), cv2.COLORMAP_JET)[..., ::-1]
        other = np.ascontiguousarray(other)
    return mri, other


def write_dataset(root: Path, pairs=("ct_mri", "pet_mri"), n: int = 6, size: int = 48, seed: int = 0,
                  cases: int = 3) -> Path:
    """``root/<pair>/{mri,other}/<case><slice>.png`` (``n`` pairs over ``cases`` cases) with
    train.txt (all but the last) and test.txt (the last)."""
    rng = np.random.default_rng(seed)
    for pair in pairs:
        (root / pair / "mri").mkdir(parents=True, exist_ok=True)
        (root / pair / "other").mkdir(parents=True, exist_ok=True)
        names = []
        for i in range(n):
            name = f"{i % cases + 1}{i:03d}.png"
            mri, other = synthetic_pair(rng, size, colour=pair != "ct_mri")
            cv2.imwrite(str(root / pair / "mri" / name), mri)
            cv2.imwrite(str(root / pair / "other" / name), other[..., ::-1] if other.ndim == 3 else other)
            names.append(name)
        (root / pair / "train.txt").write_text("\n".join(names[:-1]) + "\n")
        (root / pair / "test.txt").write_text(names[-1] + "\n")
    return root


def tiny_checkpoint(path: Path, seed: int = 0) -> Path:
    """A small-config checkpoint that is not the max rule (see :func:`non_max_rule_model`)."""
    from cminet.checkpoint import save_checkpoint
    from cminet.model import CMINetConfig

    config = CMINetConfig(channels=8, embed_dim=16, num_heads=2, growth=4)
    return save_checkpoint(non_max_rule_model(seed, config), path)


def non_max_rule_model(seed: int = 0, config=None):
    """A CMINet whose output is far from max(a, b) and depends on every weight: random
    weights, the last convolution included (an untrained max-residual model is exactly
    the max rule, and comparing two max rules cannot catch a wrong network)."""
    import torch

    from cminet.model import CMINet

    torch.manual_seed(seed)
    model = CMINet(config).eval()
    with torch.no_grad():
        # Every parameter moved off its initial value (zero-initialised gains, all-ones
        # LayerNorm scales and the zero last convolution included), so each one matters.
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.1)
        model.tail[-1].weight.normal_(0.0, 0.2)
        a, b = torch.rand(1, 1, 32, 32), torch.rand(1, 1, 32, 32)
        gap = (model(a, b) - torch.maximum(a, b)).abs().mean().item()
    assert gap > 1e-2, f"fixture model is too close to the max rule ({gap:.1e})"
    return model


# What `pip install .` does not bring: the [train] extra's packages, and OpenVINO ([openvino]).
TRAIN_ONLY_MODULES = ("torch", "safetensors", "onnx", "onnxscript", "onnxconverter_common", "onnxslim", "matplotlib")
BASE_INSTALL_HIDES = (*TRAIN_ONLY_MODULES, "openvino")


def torch_free_env(tmp_path: Path, hide: tuple[str, ...] = BASE_INSTALL_HIDES) -> dict:
    """Environment for a subprocess that behaves like the base install (`pip install .`):
    a sitecustomize sets ``sys.modules[name] = None`` for torch, the rest of the [train]
    extra and openvino (or ``hide``) (so ``import torch`` fails and ``importlib.util.find_spec('torch')`` is None),
    inherited by any child process."""
    import os

    site = tmp_path / "no_torch_site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(f"import sys\nfor name in {hide!r}:\n"
                                           "    sys.modules[name] = None\n")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(site), *filter(None, [env.get("PYTHONPATH")])])
    return env
