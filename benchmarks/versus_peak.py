"""CMINet's CPU latency beside this machine's sgemm rate and IFCNN, measured interleaved.

On a shared machine (other processes, a VM's neighbours) latency drifts by 1.5x within
minutes, so numbers taken one after the other compare conditions, not methods. Here
every method and a numpy sgemm run in ONE process in alternating blocks (A B C D, D C B A,
...), each block one untimed call then ``per_block`` timed calls; a method's latency is the
median of its block medians, and the spread of block medians is reported beside it. The
sgemm rate measured between the blocks is the compute roof the latency is set against.

Methods at each size: the shipped FP32 ONNX on ONNX Runtime with the settings cminet used
with ONNX Runtime's defaults (``before``: intra-op threads spinning), with today's settings
(:data:`~cminet.runtime.backends.onnxruntime.ORT_SESSION_CONFIG`), on OpenVINO where installed, and
IFCNN (:mod:`cminet.benchmarks.ifcnn`, a timing reference with random weights) on ONNX
Runtime with today's settings.

The issue's goal, printed as PASS/FAIL: at 256², batch 1, the fastest cminet path takes no
longer than sgemm needs for 2 × the model's FLOPs (i.e. ≥ 50 % of the matmul rate), which
also makes it ≥ 2x faster than IFCNN (17.0 vs 4.3 GFLOPs).

``python -m cminet.benchmarks.versus_peak SPEC_JSON`` prints one ``RESULT {...}`` line;
:func:`run_versus_peak` starts it in a fresh process (no idle BLAS threads of the parent).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

GOAL_SIZE = (256, 256)
GOAL_FLOP_FACTOR = 2.0  # latency ≤ sgemm time for 2 × the model's FLOPs
SGEMM_N = 1024  # numpy FP32 GEMM of this side: 2.1 GFLOP a call
BEFORE = {"session.intra_op.allow_spinning": "1"}  # ONNX Runtime's default, cminet's before spinning was turned off


def _ort_session(path: str, threads: int, config: dict[str, str]):
    """An ONNX Runtime CPU session with the backend's options and ``config`` entries."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.enable_mem_pattern = False
    options.log_severity_level = 3
    for key, value in config.items():
        options.add_session_config_entry(key, value)
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def methods(model: str, ifcnn: str | None, threads: int) -> dict[str, Callable[[np.ndarray, np.ndarray], object]]:
    from cminet.runtime.backends.base import missing_requirement, open_backend
    from cminet.runtime.backends.onnxruntime import ORT_SESSION_CONFIG

    found: dict[str, Callable] = {}
    before = _ort_session(model, threads, BEFORE)
    found["ort-cpu spinning"] = lambda a, b: before.run(None, {"mri": a, "other": b})
    for name in ("ort-cpu", "ov-cpu"):
        if missing_requirement(name) is None:
            backend = open_backend(name, model, threads=threads)
            found[name] = backend.run
    if ifcnn:
        reference = _ort_session(ifcnn, threads, ORT_SESSION_CONFIG)
        found["IFCNN ort-cpu"] = lambda a, b: reference.run(None, {"mri": a, "other": b})
    return found


def sgemm_runner() -> Callable[[], float]:
    """One numpy FP32 GEMM; returns its GFLOP/s."""
    a = np.random.default_rng(0).random((SGEMM_N, SGEMM_N), dtype=np.float32)

    def run() -> float:
        start = time.perf_counter()
        a @ a
        return 2 * SGEMM_N**3 / (time.perf_counter() - start) / 1e9

    return run


def measure(spec: dict) -> dict:
    """The interleaved measurement itself (in the worker process)."""
    found = methods(spec["model"], spec.get("ifcnn"), spec["threads"])
    sgemm = sgemm_runner()
    sgemm()
    rng = np.random.default_rng(0)
    sizes = []
    for height, width in spec["sizes"]:
        a, b = (rng.random((1, 1, height, width), dtype=np.float32) for _ in range(2))
        names = list(found)
        blocks: dict[str, list[float]] = {name: [] for name in names}
        rates: list[float] = []
        for i in range(spec["blocks"]):
            for name in names if i % 2 == 0 else names[::-1]:
                time.sleep(0.05)  # let the previous method's idle threads go to sleep
                found[name](a, b)
                times = []
                for _ in range(spec["per_block"]):
                    start = time.perf_counter()
                    found[name](a, b)
                    times.append(1e3 * (time.perf_counter() - start))
                blocks[name].append(float(np.median(times)))
            time.sleep(0.05)
            sgemm()
            rates.append(float(np.median([sgemm() for _ in range(spec["per_block"])])))
            time.sleep(0.2)  # BLAS worker threads spin for a while after a GEMM
        sizes.append({"height": height, "width": width, "block_ms": blocks, "sgemm_gflops": rates})
    return {"sizes": sizes, "threads": spec["threads"], "blocks": spec["blocks"], "per_block": spec["per_block"]}


def summarise(raw: dict, flops: dict[tuple[int, int], dict[str, int]]) -> list[dict]:
    """Per size and method: p50 (median of block medians), spread, effective GFLOP/s, share
    of the sgemm rate, IFCNN ratio; per size the goal ratio (fastest cminet path), block by
    block too. ``flops[(h, w)]`` gives each method's model FLOPs ('cminet', 'ifcnn')."""
    out = []
    for size in raw["sizes"]:
        key = (size["height"], size["width"])
        sgemm = float(np.median(size["sgemm_gflops"]))
        rows = []
        for name, blocks in size["block_ms"].items():
            model_flops = flops[key]["ifcnn" if name.startswith("IFCNN") else "cminet"]
            p50 = float(np.median(blocks))
            gflops = model_flops / (p50 * 1e6)
            rows.append({"method": name, "p50_ms": p50, "block_min_ms": min(blocks), "block_max_ms": max(blocks),
                         "gflops": model_flops / 1e9, "effective_gflops": gflops, "sgemm_share": gflops / sgemm})
        ifcnn = next((r for r in rows if r["method"].startswith("IFCNN")), None)
        cminet = [r for r in rows if not r["method"].startswith("IFCNN") and "before" not in r["method"]]
        for r in rows:
            r["vs_ifcnn"] = ifcnn["p50_ms"] / r["p50_ms"] if ifcnn and r is not ifcnn else None
        fastest = min(cminet, key=lambda r: r["p50_ms"])
        budget_ms = GOAL_FLOP_FACTOR * flops[key]["cminet"] / (sgemm * 1e6)
        per_block = [min(size["block_ms"][r["method"]][i] for r in cminet)
                     / (GOAL_FLOP_FACTOR * flops[key]["cminet"] / (rate * 1e6))
                     for i, rate in enumerate(size["sgemm_gflops"])]
        out.append({"height": key[0], "width": key[1], "sgemm_gflops": sgemm,
                    "sgemm_min_gflops": min(size["sgemm_gflops"]), "sgemm_max_gflops": max(size["sgemm_gflops"]),
                    "rows": rows, "fastest": fastest["method"], "goal_budget_ms": budget_ms,
                    "goal_ratio": fastest["p50_ms"] / budget_ms, "goal_ratio_blocks": per_block})
    return out


def run_versus_peak(model: str, sizes: list[tuple[int, int]], workdir: Path, threads: int | None = None,
                    blocks: int = 6, per_block: int = 5) -> dict:
    """Measure (in a fresh process) and summarise. FLOPs are counted from the ONNX graphs,
    which needs ``onnx`` and ``onnxslim`` (``cminet[train]``); so does building IFCNN."""
    from .ifcnn import FILE, build_ifcnn
    from .onnx_cost import onnx_flops

    ifcnn = Path(workdir) / FILE
    if not ifcnn.is_file():
        build_ifcnn(ifcnn)
    threads = threads or os.cpu_count() or 1
    spec = {"model": str(model), "ifcnn": str(ifcnn), "sizes": [list(s) for s in sizes], "threads": threads,
            "blocks": blocks, "per_block": per_block}
    proc = subprocess.run([sys.executable, "-m", "cminet.benchmarks.versus_peak", json.dumps(spec)],
                          capture_output=True, text=True, timeout=7200)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode or not lines:
        from cminet.runtime.errors import CMINetError

        raise CMINetError(f"interleaved run failed: {(proc.stderr.strip().splitlines() or ['no output'])[-1]}")
    raw = json.loads(lines[-1][len("RESULT "):])
    flops = {(h, w): {"cminet": onnx_flops(model, h, w), "ifcnn": onnx_flops(ifcnn, h, w)} for h, w in sizes}
    return {"model": str(model), "ifcnn": str(ifcnn), "threads": threads, "blocks": blocks, "per_block": per_block,
            "sgemm_n": SGEMM_N, "sizes": summarise(raw, flops)}


def main(argv: list[str]) -> int:
    print("RESULT " + json.dumps(measure(json.loads(argv[-1]))), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
