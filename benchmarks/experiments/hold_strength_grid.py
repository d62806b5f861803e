"""How strong should the ``balanced`` colour hold be? ``cminet evaluate`` on validation pairs
with the hold's strength (:data:`cminet.runtime.colour.HOLD_STRENGTH`, the share of the
functional base it puts in) at each value given, printing the mean ranks over four and five
metrics and the functional ColourDE against the Laplacian pyramid's.

    python benchmarks/experiments/hold_strength_grid.py --data ../shared/data/harvard --shifted 1 \\
        --data /path/to/volume_pairs --strengths 1,0.75,0.5 [--weights W]

Validation only (``--split val``): the choice is made here, the test split is never read.
Measured with the shipped weights (2026-12-04; volume pairs from ``python -m cminet.volume_pairs``):
a weaker hold raised ColourDE past the Laplacian's (SPECT volume pairs 11.4 → 16.5 at 0.6,
20.4 at 0.3; Laplacian 15.0) without improving the ranks (SPECT five-metric rank 2.40 → 2.60
→ 2.40, Harvard SPECT 1.60 → 2.00), so the strength stays 1.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from click.testing import CliRunner

import cminet.runtime.colour as colour
from cminet.cli import main as cminet


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", action="append", required=True, help="dataset root (repeat)")
    parser.add_argument("--shifted", type=int, default=1, help="transformed copies of colour pairs (Harvard)")
    parser.add_argument("--strengths", default="1,0.75,0.5")
    parser.add_argument("--weights", default=None)
    parser.add_argument("--colour", default="balanced")
    args = parser.parse_args()
    out = Path(tempfile.mkdtemp(prefix="hold-strength-"))
    for strength in (float(s) for s in args.strengths.split(",")):
        colour.HOLD_STRENGTH = strength
        for root in args.data:
            report_dir = out / f"{Path(root).name}-{strength}"
            command = ["evaluate", "--data", root, "--split", "val", "--colour", args.colour, "--out", str(report_dir),
                       "--shifted", str(args.shifted if "harvard" in root else 0)]
            if args.weights:
                command += ["--weights", args.weights]
            result = CliRunner().invoke(cminet, command)
            if result.exit_code:
                raise SystemExit(result.output)
            report = json.loads((report_dir / "summary.json").read_text())
            cells = []
            for pair in sorted(report["ranks"]):
                ranks, stats = report["ranks"][pair]["ranks"], report["summary"][pair]
                cell = f"{pair} r4 {ranks['cminet']['mean_rank']:.2f} (max {ranks['max']['mean_rank']:.2f})"
                if "mean_rank5" in ranks["cminet"]:
                    delta_e = {m: stats[m]["ColourDE"]["mean"] for m in ("cminet", "laplacian")}
                    cell += (f" r5 {ranks['cminet']['mean_rank5']:.2f} (max {ranks['max']['mean_rank5']:.2f}) "
                             f"ΔE {delta_e['cminet']:.1f} (lap {delta_e['laplacian']:.1f})")
                cells.append(cell)
            print(f"strength {strength:.2f} {Path(root).name}: " + " | ".join(cells), flush=True)


if __name__ == "__main__":
    main()
