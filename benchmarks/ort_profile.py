"""Where ONNX Runtime spends its time, by operator type (ORT's built-in profiler).

Few-channel convolutions and many small element-wise ops keep a CPU far from its matmul
peak; this breakdown says which ops cost the time so that claim is measured, not guessed.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from pathlib import Path

import numpy as np
import onnxruntime as ort

from cminet.runtime.backends.onnxruntime import session_input_dtype


def op_breakdown(onnx_path: str | Path, height: int, width: int, runs: int = 10, threads: int | None = None) -> dict:
    """{op_type: share of summed kernel time} over ``runs`` inferences (after one warm-up)."""
    options = ort.SessionOptions()
    options.enable_profiling = True
    options.intra_op_num_threads = threads or os.cpu_count() or 1
    options.log_severity_level = 3
    options.profile_file_prefix = str(Path(onnx_path).with_name("ort_profile"))
    session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    dtype = session_input_dtype(session)
    rng = np.random.default_rng(0)
    feeds = {i.name: rng.random((1, 1, height, width)).astype(dtype) for i in session.get_inputs()}
    for _ in range(runs + 1):
        session.run(None, feeds)
    trace = Path(session.end_profiling())
    events = json.loads(trace.read_text())
    trace.unlink(missing_ok=True)
    totals: dict[str, float] = defaultdict(float)
    for event in events:
        if event.get("cat") == "Node" and event.get("name", "").endswith("_kernel_time"):
            totals[event.get("args", {}).get("op_name", "?")] += event.get("dur", 0)
    total = sum(totals.values()) or 1.0
    return dict(sorted(((k, v / total) for k, v in totals.items()), key=lambda kv: -kv[1]))
