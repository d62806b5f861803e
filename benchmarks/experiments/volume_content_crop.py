"""Can fuse-volume skip air? Crops each axial slice of a real MRI + PET pair to its content
(plus a margin), runs the network on the crop, fills the rest with the max rule (what a
max-residual network gives where it adds nothing), and compares with fusing the whole slice.

    python benchmarks/experiments/volume_content_crop.py [--mri M.nii.gz --other P.nii.gz]

Prints, per content rule and margin, the share of slice pixels the network would still see
and the worst differences (0-255 levels, inside the MRI head and outside it) and PSNR over
every 12th slice. Torch-free; reads ../shared/data/volumes by default.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from cminet.runtime import Fuser
from cminet.runtime.compare import psnr
from cminet.runtime.volume import SlicePair, load_volume

VOLUMES = Path(__file__).resolve().parents[3] / "shared" / "data" / "volumes"


def crop_box(mask: np.ndarray, margin: int) -> tuple[int, int, int, int] | None:
    if not mask.any():
        return None
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    height, width = mask.shape
    return (max(rows[0] - margin, 0), min(rows[-1] + 1 + margin, height),
            max(cols[0] - margin, 0), min(cols[-1] + 1 + margin, width))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mri", default=str(VOLUMES / "niivue/MNI152_2009_template.nii.gz"))
    parser.add_argument("--other", default=str(VOLUMES / "spm12/template_PET.nii.gz"))
    parser.add_argument("--modality", default="pet")
    args = parser.parse_args()
    pair = SlicePair(load_volume(args.mri), load_volume(args.other), args.modality)
    depth, height, width = pair.grid.shape
    mri_u8, other_u8 = pair.mri_slices(0, depth), pair.other_slices(0, depth)
    rules = {"MRI >= 8": lambda z: mri_u8[z] >= 8,
             "MRI >= 8 or OTHER >= 26": lambda z: (mri_u8[z] >= 8) | (other_u8[z] >= 26)}
    with Fuser(backend="ort-cpu") as fuser:
        for rule, content in rules.items():
            for margin in (8, 16, 32):
                boxes = [crop_box(content(z), margin) for z in range(depth)]
                share = sum((b[1] - b[0]) * (b[3] - b[2]) for b in boxes if b) / (depth * height * width)
                worst_head = worst_out = 0.0
                psnrs = []
                for z in range(5, depth, 12):
                    inputs = pair.network_inputs(z, z + 1)
                    x, y = inputs.mri[0], inputs.other[0]
                    whole = fuser.infer(x[None, None], y[None, None])[0, 0]
                    out = np.maximum(x, y).astype(np.float32)
                    if boxes[z]:
                        r0, r1, c0, c1 = boxes[z]
                        out[r0:r1, c0:c1] = fuser.infer(x[None, None, r0:r1, c0:c1], y[None, None, r0:r1, c0:c1])[0, 0]
                    diff, head = np.abs(whole - out) * 255, content(z)
                    worst_head = max(worst_head, float(diff[head].max()) if head.any() else 0.0)
                    worst_out = max(worst_out, float(diff[~head].max()) if (~head).any() else 0.0)
                    psnrs.append(psnr(whole, out))
                print(f"{rule:<26} margin {margin:2d}: network sees {share:.2f} of the pixels; worst |Δ| head "
                      f"{worst_head:.1f}, outside {worst_out:.1f} levels; PSNR min {min(psnrs):.1f} dB, "
                      f"median {float(np.median(psnrs)):.1f} dB")


if __name__ == "__main__":
    main()
