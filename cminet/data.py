"""Paired fusion data over the ``<root>/<pair>/{mri,other}/<name>.png`` layout.

``<root>/<pair>/train.txt`` and ``test.txt`` list file names, one per line. Any folder laid
out this way works, so users can train on their own co-registered pairs. Pair types are
kept apart by always keying a sample on ``(pair, name)``: file names repeat across types.

The network sees grey MRI and grey CT, or the BT.601 Y channel of PET/SPECT. Each item also
carries the functional source's colour weight (1 on its coloured pixels, CIELAB chroma ≥ 20,
0 where grey, all zero for CT: :func:`cminet.runtime.colour.colour_weight`), which the colour
hold and the colour loss term use.

Training crops go through :class:`cminet.augment.Augment` (subject and scanner change);
validation can add transformed copies of its colour pairs (:func:`cminet.augment.shifted_copies`).
"""

from __future__ import annotations

import random
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from cminet.augment import Augment, shifted_copies
from cminet.runtime.errors import CMINetError
from cminet.runtime.folders import PairRef, discover_pairs, list_pairs
from cminet.runtime.imaging import prepare_pair, read_image
from cminet.runtime.modality import from_pair_type

__all__ = ["FusionPairs", "load_pair", "split_validation", "training_split", "validation_split"]

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


def validation_split(root, pairs, fraction: float = 0.1, seed: int = 0) -> tuple[list, list]:
    """(training, validation) pairs of the pair types ``pairs`` under ``root``.

    A pair type whose folder has a ``val.txt`` beside ``train.txt`` is split as those lists
    say: the data's maker held whole subjects or volumes out (:mod:`cminet.volume_pairs`
    does). The others' train split is carved by :func:`split_validation` over *every* such
    pair type in ``root``, then narrowed to ``pairs``.

    Why every type: :func:`split_validation` draws the held-out cases of all types from one
    seeded shuffle, so carving ``spect_mri`` alone picks other SPECT cases than carving all
    three types does. ``cminet evaluate --split val --pairs spect_mri`` would then score
    "validation" pairs that a run on all types trained on, and ``cminet train --pairs
    spect_mri --init`` from such a run would validate on its training cases. Carved this way,
    a type's validation cases depend on the data folder, not on ``--pairs``."""
    root = Path(root)
    every = [p for p in discover_pairs(root) if (root / p / "train.txt").is_file()]
    listed = {p for p in every if (root / p / "val.txt").is_file()}
    carved = sorted({*every, *pairs} - listed)
    train, val = split_validation(list_pairs(root, carved, "train"), fraction, seed) if carved else ([], [])
    keep = set(pairs)
    held = sorted(listed & keep)
    return ([r for r in train if r.pair in keep] + list_pairs(root, held, "train"),
            [r for r in val if r.pair in keep] + list_pairs(root, held, "val"))


def training_split(roots, pairs, fraction: float = 0.1, seed: int = 0) -> tuple[list, list]:
    """:func:`validation_split` of each data folder in ``roots``, joined: the pair types
    ``pairs`` that each folder has (every type must be in at least one)."""
    train: list[PairRef] = []
    val: list[PairRef] = []
    found: set[str] = set()
    for root in roots:
        present = [p for p in pairs if (Path(root) / p / "train.txt").is_file()]
        found.update(present)
        if present:
            t, v = validation_split(root, present, fraction, seed)
            train += t
            val += v
    missing = [p for p in pairs if p not in found]
    if missing:
        raise CMINetError(f"no train split of {', '.join(missing)}: no such split file {missing[0]}/train.txt in "
                          f"{', '.join(map(str, roots))}")
    return train, val


def load_pair(ref: PairRef) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Read one pair as float32 (MRI, other-Y, colour mask) in [0, 1]: the mask is the
    functional source's colour weight (:func:`cminet.runtime.colour.colour_weight`: 1 on
    its coloured pixels, 0 where grey, and all 0 for a CT). Raises ImageError naming the file."""
    prepared = prepare_pair(read_image(ref.mri_path), read_image(ref.other_path))
    row = from_pair_type(ref.pair)  # the modality table decides; a folder it does not know, the image
    functional = row.functional if row is not None else prepared.colour is not None
    mask = prepared.colour if functional and prepared.colour is not None else np.zeros_like(prepared.other)
    return prepared.mri, prepared.other, mask


class FusionPairs(torch.utils.data.Dataset):
    """In-memory pairs. With ``crop`` set, each item is a random crop with a random flip and
    90° rotation (training), then ``augment`` if given; without, each item is the whole pair
    (validation). ``shifted`` adds that many transformed copies of every colour pair
    (validation that sees palette, contrast and resolution change; see :func:`shifted_copies`).

    Items are ``(a, b, mask)`` float32 tensors of shape 1×H×W in [0, 1]."""

    def __init__(self, refs: list[PairRef], crop: int | None = None, seed: int = 0,
                 augment: Augment | None = None, shifted: int = 0):
        if not refs:
            raise CMINetError("no image pairs to load (check --data and --pairs)")
        self.images = [np.stack(load_pair(ref)) for ref in refs]  # 3×H×W each: MRI, other, mask
        self.refs = list(refs)
        for i, (ref, image) in enumerate(zip(refs, list(self.images), strict=True)):
            if shifted and image[2].any():
                for copy in shifted_copies(*image, seed=seed * 100_003 + i, copies=shifted):
                    self.images.append(np.stack(copy))
                    self.refs.append(ref)
        self.augment = augment
        self.crop = crop
        self.rng = np.random.default_rng(seed)
        small = [r for r, im in zip(self.refs, self.images, strict=True) if crop and min(im.shape[1:]) < crop]
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
            if self.augment:
                pair = np.stack(self.augment(*np.ascontiguousarray(pair), rng=self.rng))
        pair = torch.from_numpy(np.ascontiguousarray(pair))
        return pair[0:1], pair[1:2], pair[2:3]
