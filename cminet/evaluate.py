"""``cminet evaluate``: the model against classical baselines (and any other method's
outputs) with the standard fusion metrics, per pair type.

Metrics are computed on grey / Y images in 0–255: the MRI, the CT or PET/SPECT Y, and the
Y of each method's fused output as written to disk (uint8), so every method is judged on
the same footing. For PET/SPECT pairs the functional colour fidelity
(:func:`cminet.metrics.colour_fidelity`: CIELAB ΔE and lightness ratio over the source's
coloured pixels) is reported beside the nine; it is NaN for CT. ``shifted`` adds
transformed copies of every colour pair (another palette, MRI contrast, functional scale and
resolution: :func:`cminet.augment.shifted_rgb_pair`), named ``<name>~<palette>``.
Writes ``metrics.csv`` (one row per image and method), ``summary.json``, ``summary.md`` and
``comparison.png``.
"""

from __future__ import annotations

import csv
import json
from collections import defaultdict
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from cminet.augment import shifted_rgb_pair
from cminet.metrics import COLOUR_METRICS, METRICS, colour_fidelity, evaluate
from cminet.runtime.errors import CMINetError
from cminet.runtime.files import atomic_output, write_text_atomic
from cminet.runtime.folders import Fuses, PairRef
from cminet.runtime.imaging import prepare_pair, read_image, rgb_to_ycbcr, write_image
from cminet.runtime.modality import from_pair_type

RANKED = ("MI", "VIF", "Qabf", "SF")  # the paper's four, higher is better
COLOUR_RANKED = "ColourDE"  # functional colour ΔE, lower is better: the fifth for PET/SPECT
RANKED_WITH_COLOUR = (*RANKED, COLOUR_RANKED)
REPORTED = (*METRICS, *COLOUR_METRICS)


class FolderMethod:
    """Another method's fused images, laid out as ``<dir>/<pair>/<name>.png``."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise CMINetError(f"{self.folder}: no such folder of fused images")

    def fused_for(self, ref: PairRef) -> np.ndarray:
        return read_image(self.folder / ref.pair / Path(ref.name).with_suffix(".png").name)


def luma(image: np.ndarray) -> np.ndarray:
    """Grey as float, or the BT.601 Y of an RGB image, in 0–255."""
    return rgb_to_ycbcr(image)[..., 0] if image.ndim == 3 else image.astype(np.float64)


def functional_pair(ref: PairRef, other: np.ndarray) -> bool:
    """A pair whose other image is a functional colour image: PET or SPECT by its folder
    (:mod:`cminet.runtime.modality`), or, for a folder the table does not know, by colour."""
    row = from_pair_type(ref.pair)
    return (row.functional if row is not None else True) and other.ndim == 3


def pair_variants(ref: PairRef, mri: np.ndarray, other: np.ndarray, shifted: int):
    """(name, MRI, other) for the pair as read and, for a functional pair, its shifted copies."""
    yield ref.name, mri, other
    if functional_pair(ref, other) and shifted:
        seed = sum(map(ord, f"{ref.pair}/{ref.name}"))  # stable across runs and machines
        for k in range(shifted):
            mri_k, other_k, palette = shifted_rgb_pair(mri, other, seed * 7919 + k)
            yield f"{ref.name}~{palette}", mri_k, other_k


def run_evaluation(refs: list[PairRef], methods: dict[str, Fuses | FolderMethod], progress: bool = True,
                   shifted: int = 0):
    """Metrics for every pair and method. Returns (rows, fused images kept for the sheet,
    failures). ``shifted``: transformed copies per colour pair, scored by the methods that
    fuse (not by folders of precomputed outputs, which have no copies)."""
    rows, failures = [], []
    images: dict[PairRef, dict[str, np.ndarray]] = {}
    for ref in tqdm(refs, desc="evaluating", unit="pair", disable=not progress):
        try:
            mri0, other0 = read_image(ref.mri_path), read_image(ref.other_path)
            as_read = prepare_pair(mri0, other0)
        except CMINetError as exc:
            failures.append((f"{ref.pair}/{ref.name}", str(exc)))
            continue
        images[ref] = {"MRI": mri0, "other": other0}
        for name, mri, other in pair_variants(ref, mri0, other0, shifted):
            copy = name != ref.name
            pair = prepare_pair(mri, other) if copy else as_read
            a, b = pair.mri * 255.0, pair.other * 255.0
            for method_name, method in methods.items():
                if copy and isinstance(method, FolderMethod):
                    continue
                try:
                    fused = method.fused_for(ref) if isinstance(method, FolderMethod) else method.fuse(mri, other)
                    f = luma(fused)
                    if f.shape != a.shape:
                        raise CMINetError(f"fused image is {f.shape}, sources are {a.shape}")
                except CMINetError as exc:
                    failures.append((f"{method_name}: {ref.pair}/{name}", str(exc)))
                    continue
                if not copy:
                    images[ref][method_name] = fused
                colour = (colour_fidelity(other, fused) if functional_pair(ref, other) and fused.ndim == 3
                          else dict.fromkeys(COLOUR_METRICS, float("nan")))
                rows.append({"pair": ref.pair, "name": name, "method": method_name, **evaluate(a, b, f), **colour})
    return rows, images, failures


def summarise(rows: list[dict]) -> dict:
    """{pair: {method: {metric: (mean, std, n)}}}."""
    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for r in rows:
        groups[(r["pair"], r["method"])].append(r)
    summary: dict = defaultdict(dict)
    for (pair, method), rs in groups.items():
        summary[pair][method] = {}
        for m in REPORTED:
            values = np.array([r[m] for r in rs], dtype=np.float64)
            values = values[np.isfinite(values)]  # colour metrics are NaN for grey pairs
            if len(values):
                summary[pair][method][m] = {"mean": float(values.mean()), "std": float(values.std()), "n": len(values)}
    return dict(summary)


def rank(summary: dict) -> dict:
    """Per pair type: each method's rank (1 = best) on MI, VIF, Qabf, SF and the mean rank."""
    out = {}
    for pair, methods in summary.items():
        ranks = {m: {} for m in methods}
        for metric in RANKED:
            order = sorted(methods, key=lambda m: -methods[m][metric]["mean"])
            for position, method in enumerate(order, start=1):
                ranks[method][metric] = position
        for method in ranks:
            ranks[method]["mean_rank"] = float(np.mean([ranks[method][k] for k in RANKED]))
        best = min(ranks, key=lambda m: ranks[m]["mean_rank"])
        tied = [m for m in ranks if ranks[m]["mean_rank"] == ranks[best]["mean_rank"]]
        out[pair] = {"ranks": ranks, "best": best if len(tied) == 1 else None, "tied": tied}
        # PET/SPECT: the four plus functional colour ΔE (lower is better), where every method has it.
        if all(np.isfinite(methods[m].get(COLOUR_RANKED, {}).get("mean", np.nan)) for m in methods):
            order = sorted(methods, key=lambda m: methods[m][COLOUR_RANKED]["mean"])
            for position, method in enumerate(order, start=1):
                ranks[method][COLOUR_RANKED] = position
                ranks[method]["mean_rank5"] = float(np.mean([ranks[method][k] for k in RANKED_WITH_COLOUR]))
            best5 = min(ranks, key=lambda m: ranks[m]["mean_rank5"])
            tied5 = [m for m in ranks if ranks[m]["mean_rank5"] == ranks[best5]["mean_rank5"]]
            out[pair].update(best5=best5 if len(tied5) == 1 else None, tied5=tied5)
    return out


def markdown(summary: dict, ranks: dict) -> str:
    lines = []
    for pair in sorted(summary):
        methods = summary[pair]
        n = next(iter(methods.values()))["EN"]["n"]
        shown = [m for m in REPORTED if all(m in stats for stats in methods.values())]
        lines += [f"### {pair} ({n} pairs, mean ± std; MI in nats"
                  + ("; ColourDE: CIELAB ΔE to the PET/SPECT colours, lower is better" if "ColourDE" in shown else "")
                  + ")", "", "| method | " + " | ".join(shown) + " |", "|---" * (len(shown) + 1) + "|"]
        for method, stats in methods.items():
            cells = [f"{stats[m]['mean']:.3f} ± {stats[m]['std']:.3f}" for m in shown]
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
        five = "best5" in ranks[pair]
        ranked = RANKED_WITH_COLOUR if five else RANKED
        lines += ["", f"Ranks on {', '.join(ranked)} (1 = best):", "",
                  "| method | " + " | ".join(ranked) + " | mean rank (4) |" + (" mean rank (5) |" if five else ""),
                  "|---" * (len(ranked) + 2 + five) + "|"]
        for method, r in sorted(ranks[pair]["ranks"].items(), key=lambda kv: kv[1]["mean_rank"]):
            lines.append(f"| {method} | " + " | ".join(str(r[k]) for k in ranked) + f" | {r['mean_rank']:.2f} |"
                         + (f" {r['mean_rank5']:.2f} |" if five else ""))
        best = ranks[pair]["best"]
        lines += ["", f"Best mean rank: **{best}**" if best else f"Tied: {', '.join(ranks[pair]['tied'])}"]
        if five:
            best5 = ranks[pair]["best5"]
            lines.append(f"Best mean rank over five: **{best5}**" if best5 else
                         f"Tied over five: {', '.join(ranks[pair]['tied5'])}")
        lines.append("")
    return "\n".join(lines)


def comparison_sheet(images: dict, columns: list[str], path: Path, per_pair_type: int = 2, tile: int = 192):
    """A PNG grid: one row per pair (a few per pair type), columns MRI, other, each method."""
    chosen: dict[str, list] = defaultdict(list)
    for ref in images:
        if len(chosen[ref.pair]) < per_pair_type and all(c in images[ref] for c in columns):
            chosen[ref.pair].append(ref)
    refs = [r for pair in sorted(chosen) for r in chosen[pair]]
    if not refs:
        return None
    label_h = 24
    sheet = np.full((label_h + len(refs) * tile, len(columns) * tile, 3), 255, np.uint8)
    for j, name in enumerate(columns):
        cv2.putText(sheet, _label(name), (j * tile + 6, 17), cv2.FONT_HERSHEY_SIMPLEX, 0.55, (0, 0, 0), 1,
                    cv2.LINE_AA)
    for i, ref in enumerate(refs):
        for j, name in enumerate(columns):
            img = images[ref][name]
            rgb = img if img.ndim == 3 else np.repeat(img[..., None], 3, axis=2)
            y = label_h + i * tile
            sheet[y : y + tile, j * tile : (j + 1) * tile] = cv2.resize(rgb, (tile, tile), interpolation=cv2.INTER_AREA)
        cv2.putText(sheet, _label(f"{ref.pair}/{ref.name}"), (4, label_h + i * tile + tile - 6),
                    cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 0), 1, cv2.LINE_AA)
    write_image(path, sheet)
    return path


def _label(text: str) -> str:
    """Text OpenCV can draw: its Hershey fonts are ASCII, and a file name that is not valid
    UTF-8 (a lone surrogate in Python) crashes ``cv2.putText``."""
    return text.encode("ascii", "replace").decode("ascii")


def write_outputs(out: Path, rows: list[dict], summary: dict, ranks: dict, meta: dict) -> None:
    """metrics.csv, summary.json and summary.md in ``out``, each written atomically."""
    with atomic_output(out / "metrics.csv") as tmp, tmp.open("w", newline="", errors="surrogateescape") as fh:
        writer = csv.DictWriter(fh, fieldnames=["pair", "name", "method", *REPORTED])
        writer.writeheader()
        writer.writerows(rows)
    write_text_atomic(out / "summary.json", json.dumps({**meta, "summary": summary, "ranks": ranks}, indent=2) + "\n")
    write_text_atomic(out / "summary.md", markdown(summary, ranks))
