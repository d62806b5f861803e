"""The colour modes on subjects no weights were trained or chosen on: the reporting split of
:mod:`cminet.volume_pairs` (the real single-subject T1 with the real SPM PET and SPECT
templates, rendered as ``cminet fuse-volume`` shows them), scored by ``cminet evaluate`` in
each mode.

    python benchmarks/experiments/volume_pairs_colour_modes.py [--data DIR] [--weights W ...]

``--data``: pairs written by ``python -m cminet.volume_pairs`` (default: written to a temp
folder from ../shared/data/volumes). ``--weights``: checkpoints to score (default: the
shipped ones); each gets its own table rows.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from cminet.volume_pairs import write_volume_pairs

VOLUMES = Path(__file__).resolve().parents[3] / "shared" / "data" / "volumes"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", type=Path, help="volume pairs (python -m cminet.volume_pairs)")
    parser.add_argument("--weights", nargs="*", default=[None], help="checkpoints (default: the shipped weights)")
    parser.add_argument("--split", default="test", choices=["test", "val"])
    parser.add_argument("--out", type=Path, default=None, help="keep the reports here")
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="volume-pairs-"))
    data = args.data
    if data is None:
        data = out / "data"
        write_volume_pairs(VOLUMES, data)
    print("| weights | type | mode | ColourDE (Laplacian) | rank over 4 (max rule) | rank over 5 (max rule) |")
    print("|---|---|---|---|---|---|")
    for weights in args.weights:
        for mode in ("balanced", "strict"):
            report_dir = out / f"eval-{Path(weights).stem if weights else 'shipped'}-{mode}"
            command = [sys.executable, "-m", "cminet.cli", "evaluate", "--data", str(data), "--split", args.split,
                       "--pairs", "pet_mri,spect_mri", "--colour", mode, "--out", str(report_dir)]
            if weights:
                command += ["--weights", str(weights)]
            subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            report = json.loads((report_dir / "summary.json").read_text())
            for pair_type in sorted(report["summary"]):
                stats, ranks = report["summary"][pair_type], report["ranks"][pair_type]["ranks"]
                print(f"| {Path(weights).name if weights else 'shipped'} | {pair_type} | {mode} | "
                      f"{stats['cminet']['ColourDE']['mean']:.2f} ({stats['laplacian']['ColourDE']['mean']:.2f}) | "
                      f"{ranks['cminet']['mean_rank']:.2f} ({ranks['max']['mean_rank']:.2f}) | "
                      f"{ranks['cminet']['mean_rank5']:.2f} ({ranks['max']['mean_rank5']:.2f}) |")


if __name__ == "__main__":
    main()
