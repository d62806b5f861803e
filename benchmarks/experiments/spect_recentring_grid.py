"""Issue #15 experiment behind docs/colour-experiments.md, "A wider SPECT selection set": can a
smooth lightness correction after the colour hold bring the fused SPECT (and PET) colours
within the Laplacian pyramid's ColourDE while CMINet keeps the best mean rank? Scores the
shipped network (ONNX Runtime, torch-free) on selection sets carved from the train split
only; the test split is never read. Not product code and not a test.

    python benchmarks/experiments/spect_recentring_grid.py grid --set val    --pair spect_mri
    python benchmarks/experiments/spect_recentring_grid.py grid --set train4 --pair spect_mri
    python benchmarks/experiments/spect_recentring_grid.py grid --set cases:3,11,35 --pair spect_mri --variants raw,h4
    python benchmarks/experiments/spect_recentring_grid.py grid ... --json FILE.json  # append the rows

Sets (each pair plus one shifted copy, as ``cminet evaluate --shifted 1``):

* ``val``: the validation pairs ``cminet train`` holds out (whole cases; PET: slice blocks);
* ``train4``: every 4th training pair left after carving validation (the network trained on
  these; the correction runs at inference, so what is measured is what it changes);
* ``cases:A,B``: every training pair of the named cases.

Variants: ``raw`` (the network, no hold), ``h4`` (the shipped hold), ``rc:S:beta:d`` (the
shipped hold, then ``y += beta * c * min(0, Gbar_S(b - y) + d)``: ``Gbar_S`` a Gaussian mean
of width S px over the coloured pixels only (normalised convolution), ``c`` the colour
weight, ``b`` the functional Y, ``d`` a dead band that leaves small excesses alone).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from cminet.baselines import BASELINES
from cminet.data import validation_split
from cminet.evaluate import luma, pair_variants, rank, summarise
from cminet.metrics import colour_fidelity, evaluate
from cminet.runtime.colour import coloured_mean, hold_functional_base
from cminet.runtime.fuser import Fuser
from cminet.runtime.imaging import finish_output, prepare_pair, read_image

DATA = Path(__file__).resolve().parents[3] / "shared" / "data" / "harvard"
GRID = ["raw", "h4"] + [f"rc:{s}:{beta}:{d}" for s in (8, 16, 32) for beta in (0.5, 1)
                        for d in (0, 0.02, 0.04, 0.06, 0.08, 0.12)]


def selection(data: Path, name: str, pair: str) -> list:
    train, val = validation_split(data, [pair])
    if name == "val":
        return val
    if name == "train4":
        return train[::4]
    if name.startswith("cases:"):
        wanted = set(name.split(":", 1)[1].split(","))
        return [r for r in train if r.case in wanted]
    raise SystemExit(f"unknown set {name!r}: val, train4 or cases:A,B,...")


def scored_items(refs: list, shifted: int = 1) -> list[dict]:
    """Per pair and shifted copy: the prepared pair, the raw network output and the
    baselines' scores (computed once; variants only re-finish the network's output)."""
    fuser = Fuser(backend="ort-cpu")
    items = []
    for ref in refs:
        # the pair and the copies `cminet evaluate --shifted` scores
        for _, mri, other in pair_variants(ref, read_image(ref.mri_path), read_image(ref.other_path), shifted):
            pair = prepare_pair(mri, other)
            base = {name: score(pair, other, finish_output(rule(pair.mri, pair.other), pair.chroma))
                    for name, rule in BASELINES.items()}
            items.append({"pair": pair, "other": other, "raw": fuser._network(pair.mri, pair.other, None),
                          "baselines": base})
    return items


def score(pair, other_rgb: np.ndarray, fused: np.ndarray) -> dict:
    return {**evaluate(pair.mri * 255.0, pair.other * 255.0, luma(fused)), **colour_fidelity(other_rgb, fused)}


def finished(variant: str, raw: np.ndarray, pair) -> np.ndarray:
    if variant == "raw":
        return raw
    held = hold_functional_base(raw, pair.other, pair.hold)
    if variant == "h4":
        return held
    s, beta, d = map(float, variant.split(":")[1:])
    excess = np.minimum(0.0, coloured_mean(pair.other - held, pair.colour, s) + d)
    return held + beta * pair.colour * excess


def grid_row(items: list[dict], variant: str) -> dict:
    """Mean metrics of CMINet (this variant) and the baselines, and the mean ranks
    (:func:`cminet.evaluate.summarise` and :func:`~cminet.evaluate.rank`, as `cminet evaluate`)."""
    rows = [{"pair": "set", "method": "cminet", **score(it["pair"], it["other"], finish_output(
        finished(variant, it["raw"], it["pair"]), it["pair"].chroma))} for it in items]
    rows += [{"pair": "set", "method": name, **it["baselines"][name]} for it in items for name in BASELINES]
    summary = summarise(rows)
    ranks = rank(summary)["set"]
    mean = {m: {k: v["mean"] for k, v in stats.items()} for m, stats in summary["set"].items()}
    return {"variant": variant, "n": len(items), "mean": mean,
            "mean_rank": {m: r["mean_rank"] for m, r in ranks["ranks"].items()},
            "best_outright": ranks["best"] == "cminet"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["grid"])
    parser.add_argument("--set", required=True)
    parser.add_argument("--pair", required=True, choices=["pet_mri", "spect_mri"])
    parser.add_argument("--variants", default=",".join(GRID))
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--json", type=Path, help="append the rows to this JSON file")
    args = parser.parse_args()
    start = time.perf_counter()
    items = scored_items(selection(args.data, args.set, args.pair))
    print(f"{args.set} {args.pair}: {len(items)} pairs and copies, network run in {time.perf_counter() - start:.0f} s")
    rows = []
    for variant in args.variants.split(","):
        row = grid_row(items, variant)
        c, lap, mx = row["mean"]["cminet"], row["mean"]["laplacian"], row["mean"]["max"]
        print(f"{variant:16s} ColourDE {c['ColourDE']:6.2f} (Laplacian {lap['ColourDE']:6.2f})  "
              f"rank {row['mean_rank']['cminet']:.2f}{' best' if row['best_outright'] else '     '} "
              f"(max {row['mean_rank']['max']:.2f})  MI {c['MI']:.3f}  VIF {c['VIF']:.3f} (max {mx['VIF']:.3f})  "
              f"Qabf {c['Qabf']:.3f} (max {mx['Qabf']:.3f})  SF {c['SF']:.2f}", flush=True)
        rows.append({"set": args.set, "pair": args.pair, **row})
    if args.json:
        old = json.loads(args.json.read_text()) if args.json.is_file() else {"rows": []}
        old["rows"] += rows
        args.json.write_text(json.dumps(old, indent=1) + "\n")
        print(f"wrote {len(rows)} rows to {args.json}")


if __name__ == "__main__":
    main()
