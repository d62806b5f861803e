"""The colour modes on subjects the network never saw: axial slices of the real MNI-space
volumes in ../shared/data/volumes (a single-subject T1, the T1 and T2 templates) with the SPM
PET and SPECT templates, rendered as a device would show them (whole-volume windows, the
HOT_IRON palette), written as a dataset and scored by ``cminet evaluate`` in each mode.

    python benchmarks/experiments/volume_pairs_colour_modes.py [--out DIR] [--every 6]

Every ``--every``-th axial slice whose head covers at least a third of the slice is used, at
the volumes' own 2 mm grid (109×91 px). Nothing here was used to train or choose anything.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from cminet.runtime.imaging import write_image
from cminet.runtime.volume import SlicePair, load_volume

VOLUMES = Path(__file__).resolve().parents[3] / "shared" / "data" / "volumes"
MRIS = {"subj": "spm12/single_subj_T1.nii.gz", "t1": "spm12/template_T1.nii.gz", "t2": "spm12/template_T2.nii.gz"}
FUNCTIONAL = {"pet_mri": ("spm12/template_PET.nii.gz", "pet"), "spect_mri": ("spm12/template_SPECT.nii.gz", "spect")}


def write_pairs(root: Path, every: int) -> dict[str, int]:
    counts = {}
    for pair_type, (functional_file, modality) in FUNCTIONAL.items():
        names = []
        for (mri_name, mri_file) in MRIS.items():
            pair = SlicePair(load_volume(VOLUMES / mri_file), load_volume(VOLUMES / functional_file), modality)
            depth, rows, columns = pair.grid.shape
            r, c = np.arange(rows)[:, None], np.arange(columns)[None, :]
            for z in range(0, depth, every):
                mri = pair.mri_slices(z, z + 1)[0]
                if np.mean(mri > 25) < 1 / 3:  # mostly air or skull top: not a slice anyone reads
                    continue
                name = f"{mri_name}{z:03d}.png"
                for kind, image in (("mri", mri), ("other", pair.other_at(z, r, c))):
                    (root / pair_type / kind).mkdir(parents=True, exist_ok=True)
                    write_image(root / pair_type / kind / name, np.ascontiguousarray(image))
                names.append(name)
        (root / pair_type / "test.txt").write_text("\n".join(names) + "\n")
        counts[pair_type] = len(names)
    return counts


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=None, help="keep the pairs and the reports here (default: a temp folder)")
    parser.add_argument("--every", type=int, default=6)
    args = parser.parse_args()
    root = Path(args.out or tempfile.mkdtemp(prefix="volume-pairs-"))
    counts = write_pairs(root / "data", args.every)
    print(f"pairs: {counts} in {root / 'data'}")
    for mode in ("balanced", "strict"):
        out = root / f"eval-{mode}"
        subprocess.run([sys.executable, "-m", "cminet.cli", "evaluate", "--data", str(root / "data"), "--split", "test",
                        "--colour", mode, "--out", str(out)], check=True, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
        report = json.loads((out / "summary.json").read_text())
        for pair_type in sorted(report["summary"]):
            stats, ranks = report["summary"][pair_type], report["ranks"][pair_type]["ranks"]
            colour = ", ".join(f"{m} {s['ColourDE']['mean']:.2f}" for m, s in stats.items() if "ColourDE" in s)
            four = ", ".join(f"{m} {r['mean_rank']:.2f}" for m, r in ranks.items())
            five = ", ".join(f"{m} {r['mean_rank5']:.2f}" for m, r in ranks.items() if "mean_rank5" in r)
            print(f"{mode:<9} {pair_type:<10} ColourDE: {colour}\n{'':20}rank 4: {four}\n{'':20}rank 5: {five}")


if __name__ == "__main__":
    main()
