"""What ``backend="auto"`` runs an FP32 ONNX with on a CPU: ``ort-cpu`` or ``ov-cpu``.

Neither is faster everywhere: on one 2-core EPYC, OpenVINO took 0.66-1.3x ONNX Runtime's
latency on a quiet machine and 1.03-1.72x while other processes shared it
(docs/cpu-performance.md), and a network without the attention gates runs faster on OpenVINO.
So the rule is a measurement, not a preference: where OpenVINO is installed, the first
``auto`` open of a model on a machine times both backends on it, interleaved (A, B,
A, B ... so that load from other processes hits both alike), at 256², and picks ov-cpu only
when its median latency is at most ``AUTO_CPU_SPEEDUP`` of ONNX Runtime's. The verdict is
cached per model file (its sha256), CPU, thread count and library versions in
``$XDG_CACHE_HOME/cminet/cpu_backend.json`` (default ``~/.cache``), so it costs a few
seconds once; delete the file to measure again. ``CMINET_CPU_BACKEND=ort-cpu`` (or
``ov-cpu``) in the environment skips the measurement and says which.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import time
import warnings
from collections.abc import Callable
from importlib import metadata
from pathlib import Path

import numpy as np

from ..contract import AUTO_CPU_SPEEDUP, ContractError
from ..cpuinfo import cpuinfo_field
from ..errors import CMINetError, first_line
from ..files import write_text_atomic
from .base import missing_requirement, open_backend

CANDIDATES = ("ort-cpu", "ov-cpu")  # the first is the default, kept on a tie
PROBE_SIZE = 256  # the reference size; large enough that per-call overheads do not decide
ROUNDS = 5  # interleaved rounds; each runs every candidate twice, the second timed
CACHE_FILE = "cpu_backend.json"
OVERRIDE_ENV = "CMINET_CPU_BACKEND"  # pins the choice (and skips the measurement)
# Part of the cache key: bump it when a candidate's speed changes in our own code, so verdicts
# measured before are not reused (2: ov-cpu compiles each input shape statically).
MEASURE_VERSION = 2


MAX_CACHE_BYTES = 1 << 20


def cache_path() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root) / "cminet" / CACHE_FILE


def _cpu_name() -> str:
    return cpuinfo_field("model name") or platform.processor() or platform.machine()


def choice_key(path: Path, threads: int) -> str:
    """What the verdict depends on: the model's bytes, the CPU, the threads, the libraries."""
    versions = []
    for dist in ("onnxruntime", "openvino"):
        try:
            versions.append(f"{dist}={metadata.version(dist)}")
        except metadata.PackageNotFoundError:
            versions.append(f"{dist}=none")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return "|".join([digest, _cpu_name(), f"{os.cpu_count()} cpus", f"{threads} threads", *versions,
                     f"measure v{MEASURE_VERSION}"])


def interleaved_medians(runners: dict[str, Callable[[], object]], rounds: int = ROUNDS) -> dict[str, float]:
    """Median seconds per call of each runner, timed in alternating order (one untimed call
    before each timed one, so each backend is warm when its turn comes)."""
    times: dict[str, list[float]] = {name: [] for name in runners}
    names = list(runners)
    for i in range(rounds):
        for name in names if i % 2 == 0 else names[::-1]:
            runners[name]()
            start = time.perf_counter()
            runners[name]()
            times[name].append(time.perf_counter() - start)
    return {name: float(np.median(t)) for name, t in times.items()}


def measure_cpu_backends(path: Path, threads: int) -> dict[str, float]:
    """Median latency (s) of each candidate on ``path`` at PROBE_SIZE², interleaved."""
    rng = np.random.default_rng(0)
    a, b = (rng.random((1, 1, PROBE_SIZE, PROBE_SIZE), dtype=np.float32) for _ in range(2))
    backends = {name: open_backend(name, path, threads=threads) for name in CANDIDATES}
    try:
        return interleaved_medians({name: (lambda x=x: x.run(a, b)) for name, x in backends.items()})
    finally:
        for backend in backends.values():
            backend.close()


def pick(latencies: dict[str, float]) -> str:
    default, challenger = CANDIDATES
    return challenger if latencies[challenger] <= AUTO_CPU_SPEEDUP * latencies[default] else default


def cpu_backend(path: str | os.PathLike, threads: int | None = None,
                measure: Callable[[Path, int], dict[str, float]] = measure_cpu_backends) -> str:
    """``ort-cpu`` or ``ov-cpu`` for the FP32 ONNX at ``path`` (see the module's docstring);
    ``ort-cpu`` without measuring where OpenVINO is not installed or the model is not FP32."""
    pinned = os.environ.get(OVERRIDE_ENV, "")
    if pinned:
        if pinned not in CANDIDATES:
            raise ContractError(f"{OVERRIDE_ENV}={pinned!r}: expected one of {', '.join(CANDIDATES)}")
        return pinned
    if missing_requirement("ov-cpu"):
        return CANDIDATES[0]
    path, threads = Path(path), threads or os.cpu_count() or 1
    key = choice_key(path, threads)
    cache = cache_path()
    # Only a regular file of sane size is a cache: a FIFO there would block every fuse, a
    # folder or a huge or deeply nested file would fail it. Junk is measured over, not obeyed.
    usable = cache.is_file() or not cache.exists()
    try:
        known = json.loads(cache.read_text()) if cache.is_file() and cache.stat().st_size < MAX_CACHE_BYTES else {}
    except (OSError, ValueError, RecursionError):
        known = {}
    if not isinstance(known, dict):
        known = {}
    if isinstance(known.get(key), dict) and known[key].get("backend") in CANDIDATES:
        return known[key]["backend"]
    try:
        latencies = measure(path, threads)
        verdict = {"backend": pick(latencies), "latency_s": latencies, "size": PROBE_SIZE, "rounds": ROUNDS}
    except CMINetError as exc:  # e.g. an FP16 model, which ov-cpu does not run: nothing to compare
        verdict = {"backend": CANDIDATES[0], "reason": str(exc)}
    except Exception as exc:  # OpenVINO failing on a model must not stop auto from fusing with ORT
        warnings.warn(f"auto: ov-cpu could not be measured on {path} ({first_line(exc)}); using ort-cpu",
                      RuntimeWarning, stacklevel=2)
        return CANDIDATES[0]  # not cached: a later OpenVINO may run it
    known[key] = verdict
    if usable:
        try:
            cache.parent.mkdir(parents=True, exist_ok=True)
            write_text_atomic(cache, json.dumps(known, indent=1) + "\n")
        except (OSError, CMINetError):
            pass  # a read-only home: measure again next time rather than fail the fuse
    return verdict["backend"]
