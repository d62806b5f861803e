"""Roofline ESTIMATES for named devices from the model's counted FLOPs and bytes moved.

Time ≥ max(FLOPs / peak FLOP/s, bytes / bandwidth). This is a lower bound from spec-sheet
peaks (``profiles.json``), not a measurement: real kernels on few-channel convolutions
reach a fraction of peak. Every output is labelled ``estimate``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources


@dataclass(frozen=True)
class DeviceProfile:
    key: str
    name: str
    fp32_tflops: float
    fp16_tflops: float
    bandwidth_gbs: float
    memory_gb: float
    source: str

    def peak_flops(self, precision: str) -> float:
        return 1e12 * (self.fp16_tflops if precision == "fp16" else self.fp32_tflops)


def load_profiles() -> dict[str, DeviceProfile]:
    text = resources.files("cminet.benchmarks").joinpath("profiles.json").read_text()
    raw = {k: v for k, v in json.loads(text).items() if not k.startswith("_")}
    return {k: DeviceProfile(key=k, **v) for k, v in raw.items()}


def estimate(profile: DeviceProfile, flops: float, bytes_moved: float, precision: str) -> dict:
    """Lower-bound latency (ms) on ``profile`` and which roof binds."""
    compute_s = flops / profile.peak_flops(precision)
    memory_s = bytes_moved / (profile.bandwidth_gbs * 1e9)
    bound = "compute" if compute_s >= memory_s else "memory"
    intensity = flops / bytes_moved if bytes_moved else float("inf")
    ridge = profile.peak_flops(precision) / (profile.bandwidth_gbs * 1e9)
    return {
        "kind": "estimate",
        "device": profile.name,
        "precision": precision,
        "latency_ms": 1e3 * max(compute_s, memory_s),
        "bound": bound,
        "arithmetic_intensity": intensity,
        "ridge_point": ridge,
        "source": profile.source,
    }
