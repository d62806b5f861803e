"""Where the CPU time goes, by operator type: ONNX Runtime's profiler and OpenVINO's
performance counters, on the same FP32 ONNX.

Few-channel convolutions and many small element-wise ops keep a CPU far from its matmul
peak; this breakdown says which ops cost the time so that claim is measured, not guessed.
Both runtimes rewrite the graph first (ONNX Runtime's NCHWc convolutions with
ReorderInput/ReorderOutput around them; OpenVINO's fused Convolution+Eltwise nodes), so
the op types are each runtime's own, after its fusions.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np


def _shares(totals: dict[str, float]) -> dict[str, float]:
    total = sum(totals.values()) or 1.0
    return dict(sorted(((k, v / total) for k, v in totals.items()), key=lambda kv: -kv[1]))


def _inputs(height: int, width: int, dtype) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return tuple(rng.random((1, 1, height, width)).astype(dtype) for _ in range(2))  # type: ignore[return-value]


def ort_op_breakdown(onnx_path: str | Path, height: int, width: int, runs: int = 10,
                     threads: int | None = None) -> dict[str, float]:
    """{op_type: share of summed kernel time} over ``runs`` inferences (after one warm-up),
    with the session settings the ort-cpu backend uses."""
    import onnxruntime as ort

    from cminet.runtime.backends.onnxruntime import ORT_SESSION_CONFIG, session_input_dtype
    from cminet.runtime.contract import INPUT_NAMES

    options = ort.SessionOptions()
    options.enable_profiling = True
    options.intra_op_num_threads = threads or os.cpu_count() or 1
    options.log_severity_level = 3
    for key, value in ORT_SESSION_CONFIG.items():
        options.add_session_config_entry(key, value)
    with tempfile.TemporaryDirectory(prefix="cminet-profile-") as folder:
        options.profile_file_prefix = str(Path(folder) / "ort_profile")
        session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
        feeds = dict(zip(INPUT_NAMES, _inputs(height, width, session_input_dtype(session)), strict=True))
        for _ in range(runs + 1):
            session.run(None, feeds)
        events = json.loads(Path(session.end_profiling()).read_text())
    totals: dict[str, float] = defaultdict(float)
    for event in events:
        if event.get("cat") == "Node" and event.get("name", "").endswith("_kernel_time"):
            totals[event.get("args", {}).get("op_name", "?")] += event.get("dur", 0)
    return _shares(totals)


def ov_op_breakdown(onnx_path: str | Path, height: int, width: int, runs: int = 10,
                    threads: int | None = None) -> dict[str, float]:
    """{OpenVINO node type: share of measured time} over ``runs`` inferences (after one
    warm-up), from the CPU plugin's performance counters: the ov-cpu backend itself (its
    settings and graph, compiled for this input shape) with the counters switched on."""
    import openvino as ov

    from cminet.runtime.backends.openvino import OpenVINOBackend
    from cminet.runtime.contract import INPUT_NAMES

    backend = OpenVINOBackend(Path(onnx_path), threads=threads, plugin_config={"PERF_COUNT": True})
    request = backend.request_for((1, 1, height, width))
    feeds = dict(zip(INPUT_NAMES, _inputs(height, width, np.float32), strict=True))
    request.infer(feeds)
    totals: dict[str, float] = defaultdict(float)
    for _ in range(runs):
        request.infer(feeds)
        for info in request.get_profiling_info():  # counters of the last inference
            if info.status == ov.ProfilingInfo.Status.EXECUTED:
                totals[info.node_type] += info.real_time.total_seconds()
    backend.close()
    return _shares(totals)
