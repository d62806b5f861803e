"""Dataset folders and batch fusion, torch-free: what ``cminet fuse --model`` runs on a
device, and what the PyTorch side (``cminet.data``, ``cminet.fusion``) builds on.

Layout: ``<root>/<pair>/mri/<name>.png``, ``<root>/<pair>/other/<name>.png`` and optional
``<root>/<pair>/train.txt`` / ``test.txt`` listing file names. Pair types are kept apart by
always keying a pair on ``(pair, name)``: file names repeat across types.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Protocol

import numpy as np
from tqdm import tqdm

from .errors import CMINetError
from .files import check_not_an_input
from .imaging import read_image, write_image
from .modality import PAIR_TYPES as MODALITY_PAIR_TYPES

SAMPLES_DIR = Path(str(resources.files("cminet") / "samples"))  # three test pairs shipped with cminet


PAIR_TYPES = MODALITY_PAIR_TYPES  # ct_mri, pet_mri, spect_mri


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
    if not root.is_dir():
        raise CMINetError(f"{root}: no such folder")
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
        if not _plain_name(pair):
            raise CMINetError(f"pair type {pair!r}: expected a folder name under {root} such as {PAIR_TYPES[0]}")
        folder = root / pair
        if not (folder / "mri").is_dir() or not (folder / "other").is_dir():
            raise CMINetError(f"{folder}: expected {pair}/mri/ and {pair}/other/ folders")
        if split == "all":
            names = sorted(p.name for p in (folder / "mri").iterdir() if p.is_file())
        else:
            listing = folder / f"{split}.txt"
            if not listing.is_file():
                raise CMINetError(f"{listing}: no such split file (use --split all for every pair)")
            try:
                names = [line.strip() for line in listing.read_text().splitlines() if line.strip()]
            except UnicodeDecodeError:
                raise CMINetError(f"{listing}: not a text file of image names") from None
            odd = next((n for n in names if not _plain_name(n)), None)
            if odd is not None:
                raise CMINetError(f"{listing}: {odd!r} is not a file name in {pair}/mri/")
        refs += [PairRef(root, pair, name) for name in names]
    return refs


def _plain_name(name: str) -> bool:
    """A file or folder name, not a path: nothing read or written may escape the root."""
    return bool(name) and name not in (".", "..") and "/" not in name and "\\" not in name


class Fuses(Protocol):
    """Anything that fuses two uint8 images: ``cminet.runtime.Fuser``, ``cminet.fusion.TorchFuser``
    or a baseline."""

    def fuse(self, mri: np.ndarray, other: np.ndarray) -> np.ndarray: ...


def fuse_files(fuser: Fuses, mri_path: str | Path, other_path: str | Path, out_path: str | Path) -> np.ndarray:
    """Read a pair, fuse it, write ``out_path`` atomically. Errors name the offending file.
    The output is never one of the inputs (through a symlink either)."""
    check_not_an_input(out_path, (mri_path, other_path))
    mri, other = read_image(mri_path), read_image(other_path)
    try:
        fused = fuser.fuse(mri, other)
    except CMINetError as exc:
        raise CMINetError(f"{mri_path} + {other_path}: {exc}") from None
    write_image(out_path, fused)
    return fused


@dataclass
class BatchReport:
    written: list[Path] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)  # (pair, reason)


def fuse_folder(fuser: Fuses, refs, out_dir: str | Path, progress: bool = True) -> BatchReport:
    """Fuse every :class:`PairRef` into ``<out>/<pair>/<name>``; a bad pair is
    recorded and skipped, never fatal."""
    report = BatchReport()
    for ref in tqdm(refs, desc="fusing", unit="pair", disable=not progress):
        target = Path(out_dir) / ref.pair / Path(ref.name).with_suffix(".png").name
        try:
            fuse_files(fuser, ref.mri_path, ref.other_path, target)
            report.written.append(target)
        except (CMINetError, OSError) as exc:
            report.failed.append((f"{ref.pair}/{ref.name}", str(exc)))
    return report
