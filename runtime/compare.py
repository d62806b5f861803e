"""One comparator for every "are these two outputs the same network?" question: export
verification, the benchmark's drift column and the tests (Polygraphy's comparator).

    report = compare(reference, candidate, inputs=(mri, other))
    report.passed(TOLERANCES["fp16"])   # max-abs and PSNR within the precision's tolerance
    report.summary()                    # 'max |Δ| 2.1e-03, PSNR 52.3 dB, 2 grey levels, ΔMI −0.0012 ...'

Outputs are network outputs: float N×1×H×W (or H×W) in [0, 1].
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np

from .contract import Tolerance

# The metric changes reported beside the pixel differences (cminet.metrics names).
COMPARED_METRICS = ("MI", "Qabf", "VIF", "SSIM")


def psnr(reference: np.ndarray, test: np.ndarray, peak: float = 1.0) -> float:
    """PSNR in dB of ``test`` against ``reference`` (inf when identical)."""
    mse = float(np.mean((np.asarray(reference, np.float64) - np.asarray(test, np.float64)) ** 2))
    return math.inf if mse == 0 else 10.0 * math.log10(peak**2 / mse)


@dataclass
class Comparison:
    max_abs: float
    mean_abs: float
    psnr_db: float
    grey_levels: int  # largest difference after both are turned into uint8 images
    metric_change: dict[str, float] = field(default_factory=dict)  # candidate − reference, worst case
    count: int = 1  # how many output pairs this covers

    def passed(self, tolerance: Tolerance) -> bool:
        return self.max_abs <= tolerance.max_abs and self.psnr_db >= tolerance.min_psnr_db

    def summary(self) -> str:
        text = f"max |Δ| {self.max_abs:.1e}, PSNR {self.psnr_db:.1f} dB, {self.grey_levels} grey level(s)"
        if self.metric_change:
            text += ", " + ", ".join(f"Δ{k} {v:+.4f}" for k, v in self.metric_change.items())
        return text

    def as_dict(self) -> dict:
        return asdict(self)


def compare(reference: np.ndarray, candidate: np.ndarray, inputs: tuple[np.ndarray, np.ndarray] | None = None
            ) -> Comparison:
    """Compare one output with its reference; with ``inputs`` (the MRI and other network
    inputs) also the change in the fusion metrics each output scores."""
    reference = np.asarray(reference, np.float32)
    candidate = np.asarray(candidate, np.float32)
    if reference.shape != candidate.shape:
        raise ValueError(f"outputs differ in shape: reference {reference.shape}, candidate {candidate.shape}")
    if not np.isfinite(candidate).all():
        return Comparison(math.inf, math.inf, -math.inf, 255, {}, 1)
    diff = np.abs(candidate - reference)
    result = Comparison(float(diff.max()), float(diff.mean()), psnr(reference, candidate),
                        int(np.abs(_grey(candidate) - _grey(reference)).max()))
    if inputs is not None:
        from cminet.metrics import evaluate  # numpy + OpenCV: torch-free

        # Metrics are per image: the first of a batch.
        h, w = reference.shape[-2:]
        a, b = (np.asarray(x, np.float64).reshape(-1, h, w)[0] * 255.0 for x in inputs)
        ref_img, cand_img = (_grey(x).reshape(-1, h, w)[0].astype(np.float64) for x in (reference, candidate))
        want, got = evaluate(a, b, ref_img), evaluate(a, b, cand_img)
        result.metric_change = {k: float(got[k] - want[k]) for k in COMPARED_METRICS}
    return result


def worst(comparisons: list[Comparison]) -> Comparison:
    """The worst case over many comparisons (each field at its worst; metric changes by
    magnitude)."""
    if not comparisons:
        raise ValueError("nothing to compare")
    keys = comparisons[0].metric_change.keys()
    return Comparison(
        max(c.max_abs for c in comparisons), max(c.mean_abs for c in comparisons),
        min(c.psnr_db for c in comparisons), max(c.grey_levels for c in comparisons),
        {k: max((c.metric_change[k] for c in comparisons), key=abs) for k in keys},
        sum(c.count for c in comparisons))


def _grey(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(np.clip(x, 0.0, 1.0) * 255.0), 0, 255).astype(np.int32)


def load_reference(path) -> list[tuple[str, np.ndarray, np.ndarray, np.ndarray]]:
    """The drift reference written by ``cminet-export`` (``reference_outputs.npz``):
    [(name, mri, other, fused)] with N×1×H×W float32 arrays, ``fused`` from FP32 PyTorch."""
    from .errors import ModelFileError

    try:
        with np.load(path) as data:
            names = [str(n) for n in data["names"]]
            return [(n, data[f"mri_{i}"], data[f"other_{i}"], data[f"fused_{i}"]) for i, n in enumerate(names)]
    except (OSError, KeyError, ValueError) as exc:
        raise ModelFileError(f"{path}: not a cminet reference file ({exc})") from None


def drift(run, reference) -> Comparison:
    """Worst-case :class:`Comparison` of ``run(mri, other)`` against every reference output."""
    return worst([compare(fused, run(mri, other), (mri, other)) for _, mri, other, fused in reference])
