"""Latency statistics and the scaling fit. Pure numpy: used by workers and the report."""

from __future__ import annotations

import numpy as np


def latency_summary(samples_ms: list[float] | np.ndarray) -> dict:
    """p50/p90/p99/mean of per-call latencies in ms (numpy's linear-interpolation percentiles)."""
    x = np.asarray(samples_ms, dtype=np.float64)
    if x.size == 0:
        raise ValueError("no latency samples")
    p50, p90, p99 = np.percentile(x, [50, 90, 99])
    return {"p50": float(p50), "p90": float(p90), "p99": float(p99), "mean": float(x.mean()), "n": int(x.size)}


def throughput_ips(batch: int, p50_ms: float) -> float:
    """Images (pairs) per second at the median latency."""
    return 1000.0 * batch / p50_ms


def fit_exponent(pixels: list[float], values: list[float]) -> float:
    """Least-squares slope of log(value) against log(pixels): 1.0 = linear in pixel count,
    2.0 = quadratic (full global attention would head there)."""
    if len(pixels) < 2:
        raise ValueError("need at least two sizes to fit an exponent")
    slope, _ = np.polyfit(np.log(np.asarray(pixels, float)), np.log(np.asarray(values, float)), 1)
    return float(slope)
