"""Paired fusion data over the ``<root>/<pair>/{mri,other}/<name>.png`` layout.

``<root>/<pair>/train.txt`` and ``test.txt`` list file names, one per line. Any folder laid
out this way works, so users can train on their own co-registered pairs. Pair types are
kept apart by always keying a sample on ``(pair, name)``: file names repeat across types.

The network sees grey MRI and grey CT, or the BT.601 Y channel of PET/SPECT.
"""

from __future__ import annotations

import random
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cminet.runtime.errors import CMINetError
from cminet.runtime.imaging import prepare_pair, read_image

PAIR_TYPES = ("ct_mri", "pet_mri", "spect_mri")


@dataclass(frozen=True)
class PairRef:
    """One co-registered pair on disk."""

    root: Path
    pair: str  # pair type, e.g. "pet_mri"
    name: str  # file name, e.g. "25016.png"

    @property
    def mri_path(self) -> Path:
        return self.root / self.pair / "mri" / self.name

    @property
    def other_path(self) -> Path:
        return self.root / self.pair / "other" / self.name

    @property
    def case(self) -> str:
        """Case id: the file-name prefix before the last three digits (slice number)."""
        stem = Path(self.name).stem
        return stem[:-3] if len(stem) > 3 and stem.isdigit() else stem


def discover_pairs(root: str | Path) -> tuple[str, ...]:
    """Pair-type folders under ``root`` (those holding both ``mri/`` and ``other/``)."""
    root = Path(root)
    found = tuple(sorted(d.name for d in root.iterdir() if (d / "mri").is_dir() and (d / "other").is_dir()))
    if not found:
        raise CMINetError(f"{root}: no <pair>/mri/ + <pair>/other/ folders found")
    return found


def list_pairs(root: str | Path, pairs: list[str] | tuple[str, ...], split: str) -> list[PairRef]:
    """Pairs of ``split`` ("train" or "test") for each pair type, or every pair in the
    folder when the split file is absent and ``split == "all"``."""
    root = Path(root)
    refs: list[PairRef] = []
    for pair in pairs:
        folder = root / pair
        if not (folder / "mri").is_dir() or not (folder / "other").is_dir():
            raise CMINetError(f"{folder}: expected {pair}/mri/ and {pair}/other/ folders")
        if split == "all":
            names = sorted(p.name for p in (folder / "mri").iterdir() if p.is_file())
        else:
            listing = folder / f"{split}.txt"
            if not listing.is_file():
                raise CMINetError(f"{listing}: no such split file (use --split all for every pair)")
            names = [line.strip() for line in listing.read_text().splitlines() if line.strip()]
        refs += [PairRef(root, pair, name) for name in names]
    return refs


def split_validation(refs: list[PairRef], fraction: float = 0.1, seed: int = 0) -> tuple[list, list]:
    """Carve validation pairs out of the training pairs (never from the test split).

    Per pair type, whole cases (file-name prefixes) go to validation until ``fraction`` of
    that type's pairs is reached, so validation slices have no neighbours in training.
    Where a type has fewer than four cases (pet_mri is one subject in three orientations),
    the last ``fraction`` of each case's slices is held out as one contiguous block instead.
    """
    rng = random.Random(seed)
    by_type: dict[str, dict[str, list[PairRef]]] = defaultdict(lambda: defaultdict(list))
    for ref in refs:
        by_type[ref.pair][ref.case].append(ref)
    train, val = [], []
    for pair in sorted(by_type):
        cases = by_type[pair]
        total = sum(len(v) for v in cases.values())
        if len(cases) >= 4:
            order = sorted(cases)
            rng.shuffle(order)
            held = 0
            for case in order:
                target = val if held < fraction * total else train
                held += len(cases[case]) if target is val else 0
                target.extend(cases[case])
        else:
            for case in sorted(cases):
                slices = sorted(cases[case], key=lambda r: r.name)
                cut = len(slices) - max(1, round(fraction * len(slices)))
                train += slices[:cut]
                val += slices[cut:]
    return train, val


def load_pair(ref: PairRef) -> tuple[np.ndarray, np.ndarray]:
    """Read one pair as float32 (MRI, other-Y) in [0, 1]. Raises ImageError naming the file."""
    prepared = prepare_pair(read_image(ref.mri_path), read_image(ref.other_path))
    return prepared.mri, prepared.other


class FusionPairs(torch.utils.data.Dataset):
    """In-memory pairs. With ``crop`` set, each item is a random crop with a random flip and
    90° rotation (training); without, each item is the whole pair (validation).

    Items are ``(a, b)`` float32 tensors of shape 1×H×W in [0, 1]."""

    def __init__(self, refs: list[PairRef], crop: int | None = None, seed: int = 0):
        if not refs:
            raise CMINetError("no image pairs to load (check --data and --pairs)")
        self.refs = refs
        self.images = [np.stack(load_pair(ref)) for ref in refs]  # 2×H×W each
        self.crop = crop
        self.rng = np.random.default_rng(seed)
        small = [r for r, im in zip(refs, self.images, strict=True) if crop and min(im.shape[1:]) < crop]
        if small:
            raise CMINetError(f"{small[0].mri_path}: smaller than the {crop}×{crop} training crop")

    def __len__(self) -> int:
        return len(self.refs)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        pair = self.images[index]
        if self.crop:
            _, h, w = pair.shape
            top = int(self.rng.integers(0, h - self.crop + 1))
            left = int(self.rng.integers(0, w - self.crop + 1))
            pair = pair[:, top : top + self.crop, left : left + self.crop]
            if self.rng.random() < 0.5:
                pair = pair[:, :, ::-1]
            pair = np.rot90(pair, k=int(self.rng.integers(0, 4)), axes=(1, 2))
        pair = torch.from_numpy(np.ascontiguousarray(pair))
        return pair[0:1], pair[1:2]
