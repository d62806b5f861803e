"""How long ``fuse-volume`` takes against the network alone: ``cminet-bench --volume MRI OTHER``.

The yardstick is the runtime's own time for one whole axial slice of the MRI's grid (the
network on that slice's real inputs, median of many calls) times the number of slices: what
fusing the volume slice by slice would cost if nothing else took time and every pixel were
computed. ``fuse_volume`` (reading both files, windows, resampling, the network, colour) is
timed from the file paths, with air skipped (the default) and with every pixel computed,
in alternating rounds so that both see the same machine load. The ratio is wall time over
the yardstick; below 1 means not computing air paid for everything else and more.
"""

from __future__ import annotations

import statistics
import time
import warnings
from pathlib import Path

import numpy as np

from cminet.runtime import Fuser
from cminet.runtime.volume import SlicePair, fuse_volume, load_volume, resolve_modality

SLICE_CALLS = 10  # whole-slice network calls per round (after one warm-up)


def run_volume_speed(mri: str | Path, other: str | Path, modality: str | None = None, backend: str = "auto",
                     threads: int | None = None, rounds: int = 3) -> dict:
    mri_volume, other_volume = load_volume(mri, "MRI"), load_volume(other, "OTHER")
    modality = resolve_modality(modality, other_volume)
    pair = SlicePair(mri_volume, other_volume, modality)
    depth, height, width = pair.grid.shape
    middle = pair.network_inputs(depth // 2, depth // 2 + 1)
    slice_times: list[float] = []
    walls: dict[bool, list[float]] = {True: [], False: []}
    network: dict[bool, list[float]] = {True: [], False: []}
    with Fuser(backend=backend, threads=threads, skip_air=True) as cropped, \
            Fuser(backend=backend, threads=threads, skip_air=False) as whole:
        for fuser in (cropped, whole):  # warm-up: first calls plan memory for each shape
            fuse_volume(mri, other, model=fuser, modality=modality)
        for _ in range(rounds):
            whole.infer(middle.mri[:, None], middle.other[:, None])
            for _ in range(SLICE_CALLS):
                started = time.perf_counter()
                whole.infer(middle.mri[:, None], middle.other[:, None])
                slice_times.append(time.perf_counter() - started)
            for skip, fuser in ((True, cropped), (False, whole)):
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # e.g. partial overlap: said by fuse-volume, not here
                    started = time.perf_counter()
                    fused = fuse_volume(mri, other, model=fuser, modality=modality)
                walls[skip].append(time.perf_counter() - started)
                network[skip].append(fused.info["network_seconds"])
        info = cropped.info
    one_slice = statistics.median(slice_times)
    yardstick = depth * one_slice
    result = {"mri": str(mri), "other": str(other), "modality": modality, "grid": [depth, height, width],
              "backend": info["backend"], "precision": info["precision"], "threads": threads, "rounds": rounds,
              "whole_slice_ms_p50": round(one_slice * 1000, 2),
              "whole_slice_ms_range": [round(min(slice_times) * 1000, 2), round(max(slice_times) * 1000, 2)],
              "yardstick_s": round(yardstick, 3)}
    for skip, name in ((True, "skip_air"), (False, "every_pixel")):
        wall = statistics.median(walls[skip])
        result[name] = {"wall_s": [round(w, 3) for w in walls[skip]],
                        "network_s": [round(n, 3) for n in network[skip]],
                        "ratio": round(wall / yardstick, 3)}
    return result


def print_volume_speed(result: dict, echo=print) -> None:
    depth, height, width = result["grid"]
    echo(f"{Path(result['mri']).name} + {Path(result['other']).name} ({result['modality']}): {depth} axial slices "
         f"of {height}×{width}, {result['backend']} {result['precision']}")
    echo(f"one whole slice: {result['whole_slice_ms_p50']:.1f} ms p50 → yardstick {depth} × that = "
         f"{result['yardstick_s']:.2f} s")
    for name in ("skip_air", "every_pixel"):
        entry = result[name]
        echo(f"fuse_volume, {name.replace('_', ' ')}: median {np.median(entry['wall_s']):.2f} s "
             f"(network {np.median(entry['network_s']):.2f} s) = {entry['ratio']:.2f}× the yardstick")
