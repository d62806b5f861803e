"""``run_benchmark()``: latency, memory and drift for every backend on this machine, as a
dict. ``cminet-bench`` (:mod:`cminet.benchmarks.cli`) is a thin printer around it.

    from cminet.benchmarks.bench import run_benchmark
    report = run_benchmark(sizes=[(256, 256)], batches=[1])   # every backend present
    report["results"][0]["latency_ms"]["p50"]

Each backend runs in its own process (:mod:`cminet.benchmarks.worker`). Models: the shipped
ONNX (FP32, FP16) unless ``weights`` (exported here, needs torch) or ``models`` (your own
.onnx / .engine files, e.g. on a device) are given. Drift is measured against the FP32
PyTorch reference outputs that ``cminet-export`` writes beside the ONNX (and the wheel
ships), so it needs no torch either.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from cminet.runtime import memory
from cminet.runtime.backends.base import missing_requirement
from cminet.runtime.contract import (
    BACKENDS,
    META_WEIGHTS_SHA256,
    MIN_SIDE,
    PRECISIONS,
    REFERENCE_FILE,
    SHIPPED_ONNX,
    SHIPPED_WEIGHTS,
    ContractError,
    model_kind,
    shipped_dir,
    shipped_onnx,
)
from cminet.runtime.errors import CMINetError, SizeLimitError

from .machine import describe
from .stats import fit_exponent

SAMPLE = ("pet_mri", "41066.png")  # the cold-start image pair


# Asked in a child process, so that this one never imports torch, TensorRT or CUDA (each
# benchmark row runs in a worker of its own): every backend's own verdict.
_VERDICTS = ("import json, sys\nfrom cminet.runtime.backends.base import unavailable_reason\n"
             "print(json.dumps({name: unavailable_reason(name) for name in sys.argv[1:]}))")


def available_backends() -> list[tuple[str, str]]:
    """(backend, precision) pairs this machine can run: every backend of the table that says
    it can (:func:`~cminet.runtime.backends.base.unavailable_reason`), in each precision it
    offers. A server (``triton``) needs a URL: ``cminet serve --benchmark`` measures that."""
    names = [name for name, spec in BACKENDS.items() if spec.runs != "url"]
    proc = subprocess.run([sys.executable, "-c", _VERDICTS, *names], capture_output=True, text=True, timeout=300)
    try:
        verdicts = json.loads(proc.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        raise CMINetError(f"could not ask the backends whether they run here: {proc.stderr.strip()[-300:]}") from None
    return [(name, precision) for name in names if verdicts.get(name) is None
            for precision in BACKENDS[name].precisions]


def _whole(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_sizes(sizes) -> list[tuple[int, int]]:
    """[(H, W), ...] with both sides whole numbers ≥ MIN_SIDE, or a ContractError."""
    bad = ContractError(f"sizes: expected a list of (H, W) pairs of whole numbers ≥ {MIN_SIDE}, got {sizes!r}")
    if isinstance(sizes, str | bytes) or not sizes:
        raise bad
    try:
        pairs = [(h, w) for h, w in sizes]
    except (TypeError, ValueError):
        raise bad from None
    if any(not (_whole(h) and _whole(w)) or min(h, w) < MIN_SIDE for h, w in pairs):
        raise bad
    return pairs


def check_memory(chosen: list[tuple[str, str]], sizes: list[tuple[int, int]], batches: list[int]) -> None:
    """Refuse, before anything runs, a size and batch the machine cannot hold whole (the
    benchmark measures whole images; ``cminet fuse`` tiles larger ones)."""
    from cminet.runtime.tiling import SizePolicy

    for backend, precision in chosen:
        if BACKENDS[backend].gpu:
            continue  # a GPU's memory is checked against the device when the backend runs
        policy = SizePolicy(backend, precision)
        for height, width in sizes:
            for n in batches:
                if not policy.fits(n, height, width):
                    raise SizeLimitError(f"--sizes/--batch {n}×{height}×{width}: {policy.explain(n, height, width)}"
                                         "; the benchmark runs whole images")


def select_backends(wanted: list[str] | None) -> list[tuple[str, str]]:
    present = available_backends()
    if not wanted:
        return present
    unknown = [b for b in wanted if b not in BACKENDS]
    if unknown:
        raise ContractError(f"backends: unknown {', '.join(unknown)} (choose from {', '.join(BACKENDS)})")
    missing = [b for b in wanted if b not in {name for name, _ in present}]
    if missing:
        reasons = [f"{b} ({BACKENDS[b].install})" if missing_requirement(b) else f"{b} (no usable GPU/provider)"
                   for b in missing]
        raise CMINetError(f"backend(s) not available on this machine: {'; '.join(reasons)}")
    return [(b, p) for b, p in present if b in wanted]


def given_models(models: list[str]) -> dict[str, str]:
    """The user's model files by what they are ('fp32', 'fp16', 'engine', 'weights'), each
    checked (exists, known type, an ONNX passes the runtime's I/O contract)."""
    files: dict[str, str] = {}
    for path in models:
        kind = model_kind(path)
        if not Path(path).is_file():
            raise CMINetError(f"{path}: no such model file")
        if kind == "onnx":
            files[_onnx_precision(path)] = str(path)
        else:
            files[kind] = str(path)
    return files


def prepare_models(backends: list[tuple[str, str]], workdir: Path, weights: str | None,
                   models: list[str] | dict[str, str]) -> dict[str, str]:
    """Which file each model kind/precision uses: keys 'weights', 'fp32', 'fp16', 'engine'.

    Given ``models`` win; else ONNX exported from ``weights`` (cached by their hash, needs
    torch) or the shipped ONNX; an engine is built from the FP16 ONNX where a tensorrt
    backend is asked for and none was given."""
    files = dict(models) if isinstance(models, dict) else given_models(models)
    needs_torch = any(BACKENDS[b].runs == "weights" for b, _ in backends)
    if weights or needs_torch:
        files.setdefault("weights", str(weights or shipped_dir() / SHIPPED_WEIGHTS))
    if weights:
        folder = workdir / hashlib.sha256(Path(weights).read_bytes()).hexdigest()[:12]
        if not (folder / SHIPPED_ONNX["fp16"]).is_file() or not (folder / REFERENCE_FILE).is_file():
            _export(weights, folder)
        for precision in PRECISIONS:
            files.setdefault(precision, str(folder / SHIPPED_ONNX[precision]))
    for precision in PRECISIONS:
        files.setdefault(precision, str(shipped_onnx(precision)))
    if any(b == "tensorrt" for b, _ in backends) and "engine" not in files:
        from cminet.export.tensorrt_build import build_engine

        engine = Path(files["fp16"]).parent / "cminet_fp16.engine"
        if Path(files["fp16"]).parent == shipped_dir():
            engine = workdir / "shipped" / "cminet_fp16.engine"
        files["engine"] = str(build_engine(files["fp16"], engine).engine)
    return files


def _onnx_metadata(path: str) -> dict[str, str]:
    """The model's metadata_props, read with ONNX Runtime (the base install has no onnx)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # ORT prints an "EP Error" banner for bad files
            session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # ORT raises private exception types for bad files
        raise CMINetError(f"{path}: not a loadable ONNX model ({str(exc).strip().splitlines()[0][:200]})") from None
    return dict(session.get_modelmeta().custom_metadata_map)


def _onnx_precision(path: str) -> str:
    """fp32 or fp16, from a model that passes the runtime's I/O contract (else ModelFileError)."""
    from cminet.runtime.backends.onnxruntime import OnnxRuntimeBackend

    backend = OnnxRuntimeBackend(Path(path), "ort-cpu", threads=1, optimization="disable")
    precision = backend.precision
    backend.close()
    return precision if precision in PRECISIONS else "fp32"


def _export(weights: str, folder: Path) -> None:
    """FP32 + FP16 ONNX and the drift reference for ``weights`` (the torch side)."""
    import torch

    torch.set_num_threads(1)  # idle OpenMP workers here would steal cores from the timed workers
    from cminet.export.fp16 import convert_fp16
    from cminet.export.onnx_export import export_onnx
    from cminet.export.verify import write_reference
    from cminet.fusion import load_pretrained

    model = load_pretrained(weights)
    digest = hashlib.sha256(Path(weights).read_bytes()).hexdigest()
    fp32 = export_onnx(model, folder / SHIPPED_ONNX["fp32"], weights_sha256=digest)
    convert_fp16(fp32, folder / SHIPPED_ONNX["fp16"])
    write_reference(model, folder / REFERENCE_FILE, weights_sha256=digest)


def model_for(backend: str, precision: str, files: dict[str, str]) -> str:
    runs = BACKENDS[backend].runs
    return files[runs] if runs in ("weights", "engine") else files[precision]


def reference_for(model: str, export_dir: Path) -> tuple[str | None, str]:
    """The drift reference for ``model`` and where it came from: beside the model, in the
    folder its ONNX were exported to, or the shipped one, whichever belongs to the same
    weights; None (with the reason) when none does."""
    import numpy as np

    candidates = [Path(model).with_name(REFERENCE_FILE), export_dir / REFERENCE_FILE, shipped_dir() / REFERENCE_FILE]
    expected = _weights_sha(model)
    for path in candidates:
        if not path.is_file():
            continue
        with np.load(path) as data:
            have = str(data["weights_sha256"]) if "weights_sha256" in data else None
        if expected is None or have is None or have == expected:
            return str(path), f"{path} (FP32 PyTorch)"
    return None, f"no reference outputs for {model} (cminet-export writes {REFERENCE_FILE} beside the ONNX)"


def _weights_sha(model: str) -> str | None:
    kind = model_kind(model)
    if kind == "weights":
        return hashlib.sha256(Path(model).read_bytes()).hexdigest()
    if kind == "onnx":
        return _onnx_metadata(model).get(META_WEIGHTS_SHA256)
    return None  # engines: trust the reference beside them


def run_worker(args: list[str], spec: dict, timeout: float) -> tuple[dict, float]:
    """Run a worker; return its RESULT and the wall time at spawn."""
    started = time.time()
    proc = subprocess.run([sys.executable, "-m", "cminet.benchmarks.worker", *args, json.dumps(spec)],
                          capture_output=True, text=True, timeout=timeout)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode or not lines:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise CMINetError(f"{spec['backend']} {spec['precision']}: worker failed: {last}")
    return json.loads(lines[-1][len("RESULT "):]), started


def graph_flops(onnx_path: str, sizes: list[tuple[int, int]]) -> dict[tuple[int, int], int]:
    """FLOPs per size (batch 1) counted from the ONNX graph; {} where onnx/onnxslim are missing."""
    import importlib.util

    if any(importlib.util.find_spec(m) is None for m in ("onnx", "onnxslim")):
        return {}
    from .onnx_cost import onnx_flops

    return {(h, w): onnx_flops(onnx_path, h, w) for h, w in sizes}


def goal_check(rows: list[dict], peak_gflops: float) -> dict | None:
    """The sgemm goal at 256², batch 1 (retired as a target, kept as a measurement): the
    fastest CPU runtime backend's p50 against the time this machine's sgemm (at its measured
    peak) needs for 2 × the model's FLOPs."""
    from .versus_peak import GOAL_FLOP_FACTOR, GOAL_SIZE

    candidates = [r for r in rows if (r["height"], r["width"]) == GOAL_SIZE and r["batch"] == 1 and r.get("flops")
                  and not BACKENDS[r["backend"]].gpu and BACKENDS[r["backend"]].runtime]
    if not candidates or not peak_gflops:
        return None
    best = min(candidates, key=lambda r: r["latency_ms"]["p50"])
    budget_ms = GOAL_FLOP_FACTOR * best["flops"] / (peak_gflops * 1e6)
    ratio = best["latency_ms"]["p50"] / budget_ms
    return {"backend": best["backend"], "precision": best["precision"], "p50_ms": best["latency_ms"]["p50"],
            "budget_ms": budget_ms, "ratio": ratio, "passed": ratio <= 1.0}


def model_costs(weights: str | None, sizes: list[tuple[int, int]]) -> dict:
    """FLOPs and bytes per size, counted with PyTorch; {} on a torch-free install."""
    if weights is None or missing_requirement("torch-cpu"):
        return {}
    from cminet.fusion import load_pretrained

    from .cost import model_cost

    model = load_pretrained(weights)
    return {(h, w): model_cost(model, h, w) for h, w in sizes}


def scaling_report(rows: list[dict]) -> dict:
    """Per backend/precision/batch: fitted exponent of latency (and RSS) against pixels."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["backend"], r["precision"], r["batch"]), []).append(r)
    out = {}
    for (backend, precision, batch), rs in groups.items():
        if len({(r["height"], r["width"]) for r in rs}) < 2:
            continue
        pixels = [r["height"] * r["width"] for r in rs]
        out[f"{backend}/{precision}/b{batch}"] = {
            "latency_exponent": fit_exponent(pixels, [r["latency_ms"]["p50"] for r in rs]),
            "rss_exponent": fit_exponent(pixels, [r["peak_rss_mb"] for r in rs]),
        }
    return out


def run_benchmark(backends: list[str] | None = None, sizes: list[tuple[int, int]] = ((256, 256),),
                  batches: list[int] = (1,), warmup: int = 5, iters: int = 30, weights: str | None = None,
                  models: list[str] = (), drift: bool = True, workdir: str | Path = ".cminet-bench",
                  threads: int | None = None, op_profile: bool = False, backend_options: dict | None = None,
                  progress: Callable[[str], None] = lambda message: None) -> dict:
    """Measure every (backend, precision) asked for (default: all present); return the
    report dict (machine, models, results, skipped, scaling, costs). ``backend_options``
    (e.g. ``{"cuda_graphs": False}``, ``{"compile": True}``) go to the backends that take them."""
    for name, value in (("warmup", warmup), ("iters", iters)):
        if not _whole(value) or value < (1 if name == "iters" else 0):
            raise ContractError(f"{name}: expected a whole number ≥ {1 if name == 'iters' else 0}, got {value!r}")
    if isinstance(batches, str | bytes) or not batches or any(not _whole(b) or b < 1 for b in batches):
        raise ContractError(f"batches: expected whole numbers ≥ 1, got {batches!r}")
    sizes = check_sizes(sizes)
    if threads is not None and (not _whole(threads) or threads < 1):
        raise ContractError(f"threads: expected None (all cores) or a whole number ≥ 1, got {threads!r}")
    if isinstance(backends, str) or isinstance(models, str):
        raise ContractError("backends, models: expected lists of names / paths, not one string")
    unknown = [b for b in backends or [] if b not in BACKENDS]
    if unknown:
        raise ContractError(f"backends: unknown {', '.join(map(str, unknown))} (choose from {', '.join(BACKENDS)})")
    # Sizes that cannot fit are refused before the (slow) probing of backends.
    candidates = [(b, p) for b in backends for p in BACKENDS[b].precisions] if backends else [
        (b, p) for b, p in memory.COSTS
        if BACKENDS[b].runtime and not BACKENDS[b].gpu and missing_requirement(b) is None]
    check_memory(candidates, sizes, list(batches))
    chosen = select_backends(list(backends) if backends else None)
    given = given_models(list(models))  # the user's files are checked before anything is printed
    workdir = Path(workdir)
    progress("preparing models")
    files = prepare_models(chosen, workdir, weights, given)
    progress("measuring the machine (matmul peak)")
    machine = describe()
    costs = model_costs(files.get("weights"), list(sizes))
    flops = graph_flops(files["fp32"], list(sizes))  # the GFLOP/s column's numerator
    threads = threads or os.cpu_count()
    sample_root = shipped_dir().parent / "samples" / SAMPLE[0]
    rows: list[dict] = []
    skipped: list[str] = []
    drift_notes: dict[str, str] = {}
    for backend, precision in chosen:
        progress(f"{backend} {precision}")
        model = model_for(backend, precision, files)
        reference, note = reference_for(model, Path(files["fp32"]).parent) if drift else (None, "drift not asked for")
        drift_notes[f"{backend}/{precision}"] = note
        spec = {"backend": backend, "precision": precision, "model": model, "sizes": [list(s) for s in sizes],
                "batches": list(batches), "warmup": warmup, "iters": iters, "threads": threads,
                "reference": reference, "sample_mri": str(sample_root / "mri" / SAMPLE[1]),
                "sample_other": str(sample_root / "other" / SAMPLE[1]), "options": dict(backend_options or {})}
        try:
            measured, _ = run_worker([], spec, timeout=3600)
            cold, spawned = run_worker(["--cold"], spec, timeout=600)
        except (CMINetError, subprocess.TimeoutExpired) as exc:
            skipped.append(str(exc))
            continue
        size_mb = Path(model).stat().st_size / 2**20
        for row in measured["rows"]:
            cost = costs.get((row["height"], row["width"]))
            row.update(cold_start_s=cold["finished_at"] - spawned, file_mb=size_mb, model=model,
                       drift=measured["drift"], backend_info=measured["info"], mode=measured["info"].get("mode"))
            if cost:
                row.update(parameters=cost["parameters"])
            count = flops.get((row["height"], row["width"])) or (cost or {}).get("flops")
            if count:
                achieved = count * row["batch"] / (row["latency_ms"]["p50"] * 1e6)
                row.update(flops=count * row["batch"], achieved_gflops=achieved,
                           peak_share=achieved / machine["matmul_peak_gflops"])
            rows.append(row)
    if not rows:
        raise CMINetError("no backend could be measured: " + "; ".join(skipped))
    breakdown: dict[str, dict[str, float]] = {}
    if op_profile and "fp32" in files:
        from .op_profile import ort_op_breakdown, ov_op_breakdown

        h, w = sizes[0]
        progress(f"profiling ops at {h}×{w}")
        breakdown["ort-cpu"] = ort_op_breakdown(files["fp32"], h, w, threads=threads)
        if missing_requirement("ov-cpu") is None:
            breakdown["ov-cpu"] = ov_op_breakdown(files["fp32"], h, w, threads=threads)
    return {"machine": machine, "models": files, "drift_reference": drift_notes,
            "goal": goal_check(rows, machine["matmul_peak_gflops"]),
            "costs": [{"height": h, "width": w, **c} for (h, w), c in costs.items()],
            "results": rows, "scaling": scaling_report(rows), "op_time_share": breakdown,
            "skipped": skipped}
