"""Describe the machine a benchmark ran on, and measure its matmul peak for context."""

from __future__ import annotations

import os
import platform
import re
import subprocess
import time
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

import numpy as np

from cminet.runtime.cpuinfo import cpuinfo_field


def cpu_model() -> str:
    return cpuinfo_field("model name") or platform.processor() or "unknown CPU"


def memory_gb() -> float | None:
    try:
        kib = int(re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text()).group(1))
    except (OSError, AttributeError):
        return None
    return round(kib / 2**20, 1)


def gpu_name() -> str | None:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,compute_cap", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None


def versions() -> dict:
    found = {"python": platform.python_version()}
    names = ("cminet", "numpy", "torch", "onnxruntime", "onnxruntime-gpu", "openvino", "onnx", "tensorrt",
             "opencv-python-headless")
    for dist in names:
        try:
            found[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return found


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None


def matmul_peak_gflops(n: int = 1024, seconds: float = 2.0) -> float:
    """Best FP32 GEMM rate numpy's BLAS reaches here: the practical compute roof of this CPU."""
    a = np.random.default_rng(0).random((n, n), dtype=np.float32)
    a @ a  # warm up the BLAS threads
    best, end = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < end:
        t0 = time.perf_counter()
        a @ a
        best = max(best, 2 * n**3 / (time.perf_counter() - t0) / 1e9)
    return best


def matmul_peak_in_subprocess() -> float:
    """Measure the peak in a child process: BLAS worker threads keep spinning after a GEMM,
    and in the benchmark's parent they would steal cores from the backend workers."""
    import sys

    code = "from cminet.benchmarks.machine import matmul_peak_gflops; print(matmul_peak_gflops())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    return float(out.stdout.strip().splitlines()[-1])


def describe() -> dict:
    gpu = gpu_name()
    info = {
        "cpu": cpu_model(),
        "cpu_cores": os.cpu_count(),
        "memory_gb": memory_gb(),
        "gpu": gpu,
        "platform": platform.platform(),
        "versions": versions(),
        "git_commit": git_commit(),
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    info["matmul_peak_gflops"] = round(matmul_peak_in_subprocess(), 1)
    return info


def machine_slug(info: dict) -> str:
    """Short file-name-safe name: the GPU if any, else the CPU and core count."""
    name = info.get("gpu") or f"{info['cpu']}-{info['cpu_cores']}core"
    name = re.sub(r"\(R\)|\(TM\)|CPU|@.*|Processor", "", name.split(",")[0])
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
