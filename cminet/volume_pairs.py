"""Functional–anatomical training pairs from co-registered volumes, held out by volume.

The Harvard atlas has one PET subject. This module renders more subjects' worth of PET-MRI
and SPECT-MRI pairs from real volumes that share one space (MNI152), so any MRI pairs with
any functional map without registration:

- functional images **simulated from tissue maps**: uptake ``g·GM + w·WM + c·CSF`` with
  grey:white ratios of FDG PET (2.5–4 : 1) or perfusion SPECT (1.5–2 : 1), a little
  extra-cerebral uptake, the scanner's blur (PET 4–8 mm FWHM, SPECT 8–14 mm), noise, a
  display window and one of the DICOM standard palettes, each drawn at random per volume;
- the real **PET and SPECT templates**, rendered as a device would show them.

Each axial slice is rendered as ``cminet fuse-volume`` renders it (:class:`SlicePair`:
whole-volume windows, the palette applied to the windowed values), and written in the
``<pair>/{mri,other}/<name>.png`` layout ``cminet train`` and ``cminet evaluate`` read. Which
split a pair lands in is decided by whole volumes, never by slice:

- ``train.txt``: the training MRI with simulated functional volumes;
- ``val.txt``: *other MRIs* with functional volumes simulated from other draws
  (``cminet train`` validates on these; ``cminet evaluate --split val`` scores them);
- ``test.txt``: a third MRI, the real single subject, with the real PET and SPECT templates,
  neither of which any training or validation pair contains: for reporting only.

    python -m cminet.volume_pairs ../shared/data/volumes data/volume_pairs
    cminet train --data ../shared/data/harvard --data data/volume_pairs --out runs/volumes ...

The recipe (which file goes where) is :data:`RECIPE`; the simulation is :func:`simulate_functional`.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np

from cminet.runtime.errors import CMINetError
from cminet.runtime.imaging import write_image
from cminet.runtime.palettes import DICOM_PALETTES
from cminet.runtime.volume import SlicePair, head_mask
from cminet.runtime.volume_io import Volume, load_volume

TISSUE_MAPS = {"grey": "clinical/scgrey.nii.gz", "white": "clinical/scwhite.nii.gz", "csf": "clinical/sccsf.nii.gz"}
FUNCTIONAL_TYPES = {"pet": "pet_mri", "spect": "spect_mri"}


@dataclass(frozen=True)
class Split:
    """The volumes of one split: MRIs (name → file) with simulated functional volumes
    (``simulated`` draws per modality and MRI, from ``seed``) and/or real ones."""

    mris: dict[str, str]
    simulated: int = 0
    seed: int = 0
    real: dict[str, str] | None = None  # modality → file
    every: int = 1  # every n-th axial slice
    upscale: int = 1  # in-plane factor (2 mm volumes rendered at ~1 mm, as the Harvard slices are)
    repeats: int = 1  # how many of a modality's draws see each slice (each with its own functional image)


RECIPE = {
    # The 1 mm ICBM 2009 template is the sharpest MRI here: the one training anatomy.
    "train": Split({"mni": "niivue/MNI152_2009_template.nii.gz"}, simulated=6, seed=1, repeats=3),
    # The SPM T1/T2 templates: other MRIs (and a T2 contrast), other simulated draws.
    "val": Split({"t1": "spm12/template_T1.nii.gz", "t2": "spm12/template_T2.nii.gz"}, simulated=3, seed=2,
                 every=2, upscale=2),
    # A real subject with the real tracer templates: no volume of it is in train or val.
    "test": Split({"subj": "spm12/single_subj_T1.nii.gz"},
                  real={"pet": "spm12/template_PET.nii.gz", "spect": "spm12/template_SPECT.nii.gz"}, every=3,
                  upscale=2),
}
MIN_HEAD_SHARE = 1 / 3  # a slice that is mostly air or the skull's top is not one anyone reads


@dataclass(frozen=True)
class Uptake:
    """One simulated functional volume's parameters (drawn by :func:`draw_uptake`)."""

    modality: str
    grey_white: float  # grey-matter uptake over white-matter uptake
    csf: float  # CSF uptake, as a share of white matter's
    scalp: float  # extra-cerebral (scalp, muscle) uptake, as a share of white matter's
    fwhm_mm: float
    noise: float  # noise σ before the blur, as a share of grey-matter uptake
    palette: str
    window_top: float  # display window top, as a factor on the device's default (99.9th percentile in the head)


def draw_uptake(modality: str, rng: np.random.Generator) -> Uptake:
    """Parameters within what FDG PET (``pet``) or perfusion SPECT (``spect``) shows."""
    pet = modality == "pet"
    return Uptake(
        modality=modality,
        grey_white=float(rng.uniform(2.5, 4.0) if pet else rng.uniform(1.5, 2.0)),
        csf=float(rng.uniform(0.05, 0.3)),
        scalp=float(rng.uniform(0.0, 0.25)),
        fwhm_mm=float(rng.uniform(4.0, 8.0) if pet else rng.uniform(8.0, 14.0)),
        noise=float(rng.uniform(0.02, 0.15)),
        palette=str(rng.choice(sorted(DICOM_PALETTES))),
        window_top=float(rng.uniform(0.8, 1.1)),
    )


def simulate_functional(tissues: dict[str, Volume], head: np.ndarray, uptake: Uptake,
                        rng: np.random.Generator) -> Volume:
    """A functional volume on the tissue maps' grid: uptake by tissue, the scanner's blur and
    noise. ``head``: the extra-cerebral region's mask on that grid (where scalp uptake goes)."""
    grid = tissues["grey"]
    white = 1.0
    values = (uptake.grey_white * white * tissues["grey"].data + white * tissues["white"].data
              + uptake.csf * white * tissues["csf"].data).astype(np.float32)
    values += np.float32(uptake.scalp * white) * head.astype(np.float32)
    values += rng.normal(0.0, uptake.noise * uptake.grey_white, values.shape).astype(np.float32)
    sigma_voxels = uptake.fwhm_mm / (2 * np.sqrt(2 * np.log(2))) / grid.spacing
    values = np.clip(blur3d(values, sigma_voxels), 0, None)
    return Volume(values * np.float32(1000.0), grid.affine, source=f"simulated {uptake.modality}",
                  modality="PT" if uptake.modality == "pet" else "NM")


def blur3d(values: np.ndarray, sigma_voxels) -> np.ndarray:
    """Separable Gaussian blur along each axis (σ in voxels per axis), borders replicated."""
    out = np.ascontiguousarray(values, dtype=np.float32)
    for axis, sigma in enumerate(sigma_voxels):
        if sigma <= 0:
            continue
        moved = np.moveaxis(out, axis, -1)
        flat = np.ascontiguousarray(moved.reshape(-1, moved.shape[-1]))
        size = 2 * int(np.ceil(3 * sigma)) + 1
        flat = cv2.GaussianBlur(flat, (size, 1), sigmaX=float(sigma), sigmaY=0, borderType=cv2.BORDER_REPLICATE)
        out = np.ascontiguousarray(np.moveaxis(flat.reshape(moved.shape), -1, axis))
    return out


def render(mri: Volume, functional: Volume, modality: str, palette: str, window_top: float, every: int,
           upscale: int) -> list[tuple[int, np.ndarray, np.ndarray]]:
    """(slice index, MRI uint8, functional RGB uint8) of every ``every``-th readable axial slice."""
    pair = SlicePair(mri, functional, modality, colormap=palette)
    low, high = pair.window
    pair.window = (low, low + (high - low) * window_top)
    depth, rows, columns = pair.grid.shape
    r, c = np.arange(rows)[:, None], np.arange(columns)[None, :]
    slices = []
    for z in range(0, depth, every):
        grey = pair.mri_slices(z, z + 1)[0]
        if np.mean(grey > 25) < MIN_HEAD_SHARE:
            continue
        colour = pair.other_at(z, r, c)
        if upscale > 1:
            size = (columns * upscale, rows * upscale)
            grey = cv2.resize(grey, size, interpolation=cv2.INTER_CUBIC)
            colour = cv2.resize(colour, size, interpolation=cv2.INTER_CUBIC)
        slices.append((z, grey, colour))
    return slices


def write_volume_pairs(volumes: Path, out: Path, recipe: dict[str, Split] = RECIPE) -> dict:
    """Render every split of ``recipe`` from the volume folder ``volumes`` into ``out``;
    returns (and writes as ``out/volume_pairs.json``) what went where."""
    volumes, out = Path(volumes), Path(out)
    tissues = {name: load_volume(volumes / file, name) for name, file in TISSUE_MAPS.items()}
    brain = sum(t.data for t in tissues.values())
    listing: dict[str, dict[str, list[str]]] = {pair: {} for pair in FUNCTIONAL_TYPES.values()}
    provenance: dict[str, list] = {}
    for split, spec in recipe.items():
        rng = np.random.default_rng(spec.seed)
        for mri_name, mri_file in spec.mris.items():
            mri = load_volume(volumes / mri_file, "MRI")
            head = _extra_cerebral(mri, tissues["grey"], brain)
            sources: list[tuple[str, str, Volume, str, float, dict]] = []
            for modality in FUNCTIONAL_TYPES:
                for draw in range(spec.simulated):
                    uptake = draw_uptake(modality, rng)
                    volume = simulate_functional(tissues, head, uptake, rng)
                    sources.append((modality, f"s{draw}", volume, uptake.palette, uptake.window_top, asdict(uptake)))
                if spec.real and modality in spec.real:
                    volume = load_volume(volumes / spec.real[modality], modality)
                    sources.append((modality, "r", volume, "HOT_IRON", 1.0, {"file": spec.real[modality]}))
            # One MRI's every slice with every draw would repeat its anatomy too often: each
            # slice goes to ``repeats`` of its modality's draws.
            tags = {m: [s[1] for s in sources if s[0] == m] for m in FUNCTIONAL_TYPES}
            for modality, tag, volume, palette, top, params in sources:
                pair_type = FUNCTIONAL_TYPES[modality]
                same = tags[modality]
                names = []
                for z, grey, colour in render(mri, volume, modality, palette, top, spec.every, spec.upscale):
                    if (z // spec.every - same.index(tag)) % len(same) >= spec.repeats:
                        continue
                    name = f"{split}-{mri_name}-{modality}{tag}-{z:03d}.png"
                    for kind, image in (("mri", grey), ("other", colour)):
                        (out / pair_type / kind).mkdir(parents=True, exist_ok=True)
                        write_image(out / pair_type / kind / name, np.ascontiguousarray(image))
                    names.append(name)
                listing[pair_type].setdefault(split, []).extend(names)
                provenance.setdefault(split, []).append(
                    {"mri": spec.mris[mri_name], "pair": pair_type, "functional": params, "slices": len(names)})
    for pair_type, splits in listing.items():
        for split, names in splits.items():
            (out / pair_type / f"{split}.txt").write_text("\n".join(names) + "\n")
    summary = {"volumes": str(volumes), "recipe": {k: asdict(v) for k, v in recipe.items()},
               "counts": {p: {s: len(n) for s, n in splits.items()} for p, splits in listing.items()},
               "sources": provenance}
    (out / "volume_pairs.json").write_text(json.dumps(summary, indent=1) + "\n")
    return summary


def _extra_cerebral(mri: Volume, grid: Volume, brain: np.ndarray) -> np.ndarray:
    """The head outside the brain on the tissue maps' grid (nearest MRI voxel): where scalp uptake goes."""
    inverse = np.linalg.inv(mri.affine) @ grid.affine
    i, j, k = np.meshgrid(*(np.arange(n) for n in grid.shape), indexing="ij")
    points = np.stack([i, j, k, np.ones_like(i)], axis=-1).reshape(-1, 4) @ inverse.T
    index = np.rint(points[:, :3]).astype(int)
    inside = np.all((index >= 0) & (index < np.array(mri.shape)), axis=1)
    values = np.zeros(len(index), dtype=bool)
    mask = head_mask(mri.data)
    values[inside] = mask[tuple(index[inside].T)]
    return values.reshape(grid.shape) & (brain < 0.5)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("volumes", type=Path, help="folder of MNI-space volumes (../shared/data/volumes)")
    parser.add_argument("out", type=Path, help="new folder for the pairs")
    args = parser.parse_args(argv)
    if args.out.exists() and any(args.out.iterdir()):
        raise SystemExit(f"error: {args.out}: exists and is not empty")
    try:
        summary = write_volume_pairs(args.volumes, args.out)
    except CMINetError as exc:
        raise SystemExit(f"error: {exc}") from None
    print(json.dumps(summary["counts"]))


if __name__ == "__main__":
    main()
