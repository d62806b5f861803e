"""``make gpu-check``: everything a CPU cannot prove, measured on a real NVIDIA GPU in a few
minutes, written to ``benchmarks/results/<gpu>-<date>.json`` (``--out DIR`` elsewhere).

    PYTHONPATH=. python -m cminet.benchmarks.gpu_check            # what `make gpu-check` runs
    python -m cminet.benchmarks.report benchmarks/results/<gpu>-<date>.json   # → markdown rows (docs/export-and-gpu.md)

Stage A (any CUDA GPU):
  torch-latency      PyTorch CUDA FP32 / FP16 latency (CUDA events) at 256², 512², 1024², and 4×1024²
  pinned-round-trip  cuda-python (or pycuda) pinned host → device → host, bytes compared, GB/s
  ort-cuda-parity    ONNX Runtime's CUDA provider vs its CPU one on the FP32 ONNX (where installed)
  runtime-threads    cminet.runtime.cuda buffers and streams used from two threads at once, no leak
Stage B (TensorRT importable):
  engine-build       strongly typed FP16 engine, default 4×1024² profile: FP16 layer count, build
                     time, device_memory_size_v2
  engine-parity      native TensorRT vs ONNX Runtime CPU on the same FP16 ONNX (≥ 40 dB PSNR)
  engine-latency     native TensorRT at the same sizes as torch-latency
  version-refusal    an engine whose sidecar names another TensorRT is refused in one line
  ort-trt-vs-native  ONNX Runtime's TensorRT provider on the FP16 ONNX vs the native engine

Each skipped step prints one line with the reason; a failed check exits 1. Without a GPU it
says so and exits 0. Models: the shipped ONNX pair (cminet/weights/) when present, else an
export of the shipped weights with torch into a temporary folder (``--onnx-dir`` overrides).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from datetime import datetime, timezone
from importlib import util
from pathlib import Path
from typing import Any

import numpy as np

from cminet.runtime.backends.base import open_backend
from cminet.runtime.compare import compare, psnr
from cminet.runtime.contract import TOLERANCES
from cminet.runtime.files import write_bytes_atomic

from .machine import cpu_model, git_commit, versions
from .stats import latency_summary, throughput_ips

RESULTS_DIR = Path(__file__).resolve().parent / "results"
SIZES = ((256, 1), (512, 1), (1024, 1), (1024, 4))  # (side, batch); 4×1024² is the default engine profile's max


class Skip(Exception):  # noqa: N818 - a step's "not here, because ..."
    """This step cannot run on this machine; the message says why."""


class Check:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.sizes = ((256, 1),) if args.quick else SIZES
        self.iters = 3 if args.quick else 20
        self.steps: dict[str, Any] = {}
        self.rows: list[dict] = []
        self.skipped: list[dict] = []
        self.failed: list[dict] = []
        self.workdir = Path(tempfile.mkdtemp(prefix="cminet-gpu-check-"))
        self._onnx: dict[str, Path] = {}
        self.cuda: Any = None
        self.engine: Path | None = None

    # -- running steps ------------------------------------------------------------------
    def step(self, name: str, run: Callable[[], Any]) -> None:
        started = time.monotonic()
        try:
            result = run()
        except Skip as why:
            self.skipped.append({"step": name, "reason": str(why)})
            print(f"skipped {name}: {why}", flush=True)
            return
        except Exception as exc:  # noqa: BLE001 - report every failure, keep checking the rest
            message = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            self.failed.append({"step": name, "error": message})
            print(f"FAILED {name}: {message}", flush=True)
            return
        self.steps[name] = {**(result or {}), "seconds": round(time.monotonic() - started, 2)}
        print(f"ok {name}: {_summary(result)}", flush=True)

    # -- inputs ---------------------------------------------------------------------------
    def onnx(self, precision: str) -> Path:
        """The FP32 / FP16 ONNX: --onnx-dir, the shipped pair, or an export made here."""
        from cminet.runtime.contract import SHIPPED_ONNX, shipped_onnx

        candidates = [Path(self.args.onnx_dir) / SHIPPED_ONNX[precision]] if self.args.onnx_dir else []
        candidates.append(shipped_onnx(precision))
        for path in candidates:
            if path.is_file():
                return path
        if precision not in self._onnx:
            self._export()
        return self._onnx[precision]

    def _export(self) -> None:
        if util.find_spec("torch") is None:
            raise Skip("no shipped ONNX and no torch to export one")
        from cminet.export.onnx_export import export_onnx
        from cminet.fusion import load_pretrained

        slim = util.find_spec("onnxslim") is not None
        fp32 = export_onnx(load_pretrained(), self.workdir / "cminet.onnx", simplify=slim)
        self._onnx["fp32"] = fp32
        if util.find_spec("onnxconverter_common") is None:
            raise Skip("no shipped FP16 ONNX, and onnxconverter-common (to make one) is not installed")
        from cminet.export.fp16 import convert_fp16

        self._onnx["fp16"] = convert_fp16(fp32, self.workdir / "cminet_fp16.onnx", simplify=slim)

    @staticmethod
    def sample() -> tuple[np.ndarray, np.ndarray]:
        from cminet.runtime.folders import SAMPLES_DIR
        from cminet.runtime.imaging import prepare_pair, read_image

        pair = prepare_pair(read_image(SAMPLES_DIR / "pet_mri/mri/41066.png"),
                            read_image(SAMPLES_DIR / "pet_mri/other/41066.png"))
        return pair.mri[None, None], pair.other[None, None]

    def time_calls(self, call: Callable[[], Any], sync: Callable[[], Any] = lambda: None) -> list[float]:
        """Wall-clock ms per call (each call synchronises), 3 warm-ups, up to --iters or 2 s."""
        for _ in range(3):
            call()
        sync()
        times: list[float] = []
        started = time.perf_counter()
        while len(times) < self.iters and (len(times) < 3 or time.perf_counter() - started < 2.0):
            t0 = time.perf_counter()
            call()
            sync()
            times.append(1e3 * (time.perf_counter() - t0))
        return times

    def row(self, backend: str, precision: str, side: int, batch: int, times: list[float], gpu_mb: float | None,
            timing: str) -> dict:
        latency = latency_summary(times)
        row = {"backend": backend, "precision": precision, "height": side, "width": side, "batch": batch,
               "latency_ms": latency, "throughput_ips": throughput_ips(batch, latency["p50"]), "gpu_mem_mb": gpu_mb,
               "timing": timing, "iterations": len(times)}
        self.rows.append(row)
        return row

    # -- stage A --------------------------------------------------------------------------
    def torch_latency(self) -> dict:
        """torch-cuda in each mode (eager, CUDA-graph replay, torch.compile), FP32 and FP16:
        CUDA-event latency with the inputs already on the GPU, peak GPU memory, and the max
        |Δ| of the shipped samples against the CPU FP32 reference."""
        if util.find_spec("torch") is None:
            raise Skip("torch is not installed")
        import torch

        if not torch.cuda.is_available():
            raise Skip(f"torch {torch.__version__} sees no CUDA device")
        from cminet.fusion import DEFAULT_WEIGHTS
        from cminet.runtime.compare import load_reference
        from cminet.runtime.contract import REFERENCE_FILE, shipped_dir
        from cminet.torch_backend import compile_unavailable

        device = torch.device("cuda", self.args.device)
        reference = load_reference(shipped_dir() / REFERENCE_FILE)
        done, skipped = [], {}
        modes = {"eager": {"cuda_graphs": False}, "graph": {"cuda_graphs": True}, "compile": {"compile": True}}
        for precision in ("fp32", "fp16"):
            for mode, options in modes.items():
                reason = compile_unavailable(device) if mode == "compile" else None
                if reason:
                    skipped[f"{mode} {precision}"] = reason
                    continue
                backend = open_backend("torch-cuda", DEFAULT_WEIGHTS, device=self.args.device, precision=precision,
                                       **options)
                try:
                    drift = max(float(np.abs(backend.run(a, b) - want).max()) for _, a, b, want in reference)
                    for side, batch in self.sizes:
                        self.torch_row(backend, precision, mode, side, batch, drift, device)
                        done.append(f"{precision} {mode} {batch}×{side}²")
                finally:
                    backend.close()
                    torch.cuda.empty_cache()
        return {"configs": done, "skipped_modes": skipped, "device": torch.cuda.get_device_name(device)}

    def torch_row(self, backend: Any, precision: str, mode: str, side: int, batch: int, drift: float,
                  device: Any) -> None:
        import torch

        dtype = torch.float16 if precision == "fp16" else torch.float32
        a = torch.rand(batch, 1, side, side, device=device, dtype=dtype)
        b = torch.rand(batch, 1, side, side, device=device, dtype=dtype)
        started = time.perf_counter()
        backend.forward_tensors(a, b)  # a graph's capture or a compile happens here: the cold start
        torch.cuda.synchronize(device)
        cold_s = time.perf_counter() - started
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        events: list[float] = []

        def call() -> None:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            backend.forward_tensors(a, b)
            end.record()
            end.synchronize()
            events.append(start.elapsed_time(end))

        self.time_calls(call)
        peak = (torch.cuda.max_memory_allocated(device) - base) / 2**20
        row = self.row("torch-cuda", precision, side, batch, events[3:], peak, "CUDA events, inputs on the GPU")
        row.update(mode=mode, peak_gpu_mb=peak, max_abs_vs_cpu_fp32=drift, cold_start_s=cold_s)

    def open_cuda(self) -> Any:
        from cminet.runtime.cuda import CudaUnavailable, open_cuda

        if self.cuda is None:
            try:
                self.cuda = open_cuda(self.args.device)
            except CudaUnavailable as exc:
                raise Skip(str(exc)) from None
        return self.cuda

    def pinned_round_trip(self) -> dict:
        cuda = self.open_cuda()
        nbytes = (8 if self.args.quick else 64) << 20
        with cuda.activate():
            src, dst = cuda.pinned_empty(nbytes, np.uint8), cuda.pinned_empty(nbytes, np.uint8)
            src[:] = np.random.default_rng(0).integers(0, 256, nbytes, dtype=np.uint8)
            dst[:] = 0
            ptr, stream = cuda.malloc(nbytes), cuda.create_stream()
            try:
                t0 = time.perf_counter()
                cuda.htod_async(ptr, src, stream)
                cuda.synchronize(stream)
                t1 = time.perf_counter()
                cuda.dtoh_async(dst, ptr, stream)
                cuda.synchronize(stream)
                t2 = time.perf_counter()
                same = bool(np.array_equal(src, dst))
            finally:
                cuda.free(ptr)
                cuda.free_pinned(src)
                cuda.free_pinned(dst)
                cuda.destroy_stream(stream)
        if not same:
            raise AssertionError("bytes differ after host → device → host")
        return {"bindings": cuda.name, "mib": nbytes >> 20, "htod_gb_s": round(nbytes / (t1 - t0) / 1e9, 2),
                "dtoh_gb_s": round(nbytes / (t2 - t1) / 1e9, 2), "bytes_equal": same}

    def ort_cuda_parity(self) -> dict:
        import onnxruntime as ort

        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise Skip(f"onnxruntime {ort.__version__} has no CUDA provider (CPU build)")
        model, (a, b) = self.onnx("fp32"), self.sample()
        gpu = open_backend("ort-cuda", model, device=self.args.device)
        cpu = open_backend("ort-cpu", model)
        return self.parity(cpu.run(a, b), gpu.run(a, b), "fp32", "ort-cuda vs ort-cpu FP32",
                           providers=getattr(gpu, "providers", None))

    @staticmethod
    def parity(want: np.ndarray, got: np.ndarray, precision: str, what: str, **extra) -> dict:
        """The contract's comparison (:func:`cminet.runtime.compare.compare`) against its
        tolerance for ``precision``; raises when it does not hold."""
        comparison, tolerance = compare(want, got), TOLERANCES[precision]
        result: dict[str, Any] = {"max_abs": comparison.max_abs, "psnr_db": comparison.psnr_db,
                                  "grey_levels": comparison.grey_levels, **extra}
        if not comparison.passed(tolerance):
            raise AssertionError(f"{what}: {comparison.summary()} (tolerance max |Δ| {tolerance.max_abs:g}, "
                                 f"PSNR ≥ {tolerance.min_psnr_db:g} dB)")
        return result

    def runtime_threads(self) -> dict:
        cuda = self.open_cuda()
        with cuda.activate():
            free_before, _ = cuda.mem_info()
        errors: list[str] = []

        def worker(seed: int) -> None:
            rng = np.random.default_rng(seed)
            try:
                with cuda.activate():
                    host_in, host_out = cuda.pinned_empty(1 << 20, np.float32), cuda.pinned_empty(1 << 20, np.float32)
                    ptr, stream = cuda.malloc(host_in.nbytes), cuda.create_stream()
                    for _ in range(20):
                        host_in[:] = rng.random(host_in.size, dtype=np.float32)
                        cuda.htod_async(ptr, host_in, stream)
                        cuda.dtoh_async(host_out, ptr, stream)
                        cuda.synchronize(stream)
                        if not np.array_equal(host_in, host_out):
                            errors.append(f"thread {seed}: round trip differs")
                            break
                    cuda.free(ptr)
                    cuda.free_pinned(host_in)
                    cuda.free_pinned(host_out)
                    cuda.destroy_stream(stream)
            except Exception as exc:  # noqa: BLE001 - reported below
                errors.append(f"thread {seed}: {type(exc).__name__}: {exc}")

        threads = [threading.Thread(target=worker, args=(seed,)) for seed in (1, 2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise AssertionError("; ".join(errors))
        with cuda.activate():
            leaked_mb = max(0, free_before - cuda.mem_info()[0]) / 2**20
        return {"threads": 2, "round_trips_each": 20, "device_mb_not_returned": round(leaked_mb, 2)}

    # -- stage B --------------------------------------------------------------------------
    def needs_tensorrt(self) -> None:
        from cminet.runtime.backends.tensorrt import tensorrt_status

        ok, reason = tensorrt_status(self.args.device)
        if not ok:
            raise Skip(reason)

    def engine_build(self) -> dict:
        self.needs_tensorrt()
        from cminet.export.tensorrt_build import build_engine

        build = build_engine(self.onnx("fp16"), self.workdir / "cminet_fp16.engine", device=self.args.device)
        self.engine = build.engine
        return {"fp16_layers": build.fp16_layers, "total_layers": build.total_layers,
                "build_seconds": round(build.build_seconds, 1),
                "device_memory_size_v2_mb_for_4x1024x1024": round(build.device_memory_bytes / 2**20, 1)}

    def _engine(self) -> Path:
        if self.engine is None:
            raise Skip("no engine (engine-build did not run)")
        return self.engine

    def engine_parity(self) -> dict:
        engine, (a, b) = self._engine(), self.sample()
        trt = open_backend("tensorrt", engine, device=self.args.device)
        try:
            got = trt.run(a, b)
        finally:
            trt.close()
        want = open_backend("ort-cpu", self.onnx("fp16")).run(a, b)
        return self.parity(want, got, "fp16", "engine vs ORT CPU FP16", size=list(a.shape))

    def engine_latency(self) -> dict:
        trt = open_backend("tensorrt", self._engine(), device=self.args.device)
        try:
            rng = np.random.default_rng(0)
            for side, batch in self.sizes:
                a = rng.random((batch, 1, side, side), dtype=np.float32).astype(trt.input_dtype)
                b = rng.random((batch, 1, side, side), dtype=np.float32).astype(trt.input_dtype)
                def call(a: np.ndarray = a, b: np.ndarray = b) -> np.ndarray:
                    return trt.run(a, b)

                times = self.time_calls(call)
                self.row("tensorrt", "fp16", side, batch, times, trt.gpu_memory_mb(),
                         "wall clock, host → device → host included")
            return {"configs": len(self.sizes), "gpu_memory_parts_mb": trt.info()["gpu_memory_parts_mb"]}
        finally:
            trt.close()

    def version_refusal(self) -> dict:
        from cminet.runtime.contract import sidecar_path
        from cminet.runtime.errors import ModelFileError

        engine = self._engine()
        copy = self.workdir / "other-version.engine"
        shutil.copyfile(engine, copy)
        meta = json.loads(sidecar_path(engine).read_text())
        sidecar_path(copy).write_text(json.dumps({**meta, "tensorrt_version": "0.0.0"}))
        try:
            open_backend("tensorrt", copy, device=self.args.device).close()
        except ModelFileError as exc:
            if "built with TensorRT 0.0.0" not in str(exc):
                raise
            return {"message": str(exc)}
        raise AssertionError("an engine whose sidecar names TensorRT 0.0.0 was accepted")

    def ort_trt_vs_native(self) -> dict:
        import onnxruntime as ort

        if "TensorrtExecutionProvider" not in ort.get_available_providers():
            raise Skip(f"onnxruntime {ort.__version__} has no TensorRT provider")
        (a, b), engine = self.sample(), self._engine()
        ep = open_backend("ort-trt", self.onnx("fp16"), device=self.args.device)
        native = open_backend("tensorrt", engine, device=self.args.device)
        try:
            x, y = a.astype(ep.input_dtype), b.astype(ep.input_dtype)
            got_ep, got_native = ep.run(x, y), native.run(a, b)
            ep_times = self.time_calls(lambda: ep.run(x, y))
            self.row("ort-trt", "fp16", a.shape[-1], 1, ep_times, None, "wall clock, host → device → host included")
        finally:
            native.close()
        return {"providers": getattr(ep, "providers", None), "psnr_db_vs_native": psnr(got_native, got_ep),
                "p50_ms": latency_summary(ep_times)["p50"]}

    # -- report ---------------------------------------------------------------------------
    def machine(self) -> dict:
        info: dict[str, Any] = {"cpu": cpu_model(), "cpu_cores": os.cpu_count(), "python": platform.python_version(),
                                "versions": versions(), "git_commit": git_commit(),
                                "date": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        if self.cuda is not None:
            with self.cuda.activate():
                device = self.cuda.device_info()
            info.update(gpu=device.name, compute_capability=device.compute_capability,
                        gpu_memory_mb=round(device.total_memory_mb), cuda_bindings=self.cuda.name)
        elif "torch-latency" in self.steps:
            info["gpu"] = self.steps["torch-latency"]["device"]
        return info

    def close(self) -> None:
        if self.cuda is not None:
            self.cuda.close()
        shutil.rmtree(self.workdir, ignore_errors=True)


def _summary(result: Any) -> str:
    if not result:
        return "done"
    return ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in result.items()
                     if not isinstance(v, dict | list))[:200]


def find_gpu(device: int) -> str | None:
    """None when there is a usable NVIDIA GPU, else why not."""
    reasons = []
    if util.find_spec("torch") is not None:
        import torch

        if torch.cuda.is_available():
            return None
        reasons.append(f"torch {torch.__version__} sees no CUDA device")
    from cminet.runtime.cuda import CudaUnavailable, open_cuda

    try:
        open_cuda(device).close()
        return None
    except CudaUnavailable as exc:
        reasons.append(str(exc))
    return "; ".join(reasons)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cminet.benchmarks.gpu_check", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=RESULTS_DIR, help="folder for <gpu>-<date>.json (%(default)s)")
    parser.add_argument("--onnx-dir", help="folder with cminet.onnx / cminet_fp16.onnx (default: the shipped ones)")
    parser.add_argument("--device", type=int, default=0, help="CUDA device index")
    parser.add_argument("--quick", action="store_true", help="256² only, 3 iterations (a smoke run)")
    args = parser.parse_args(argv)

    started = time.monotonic()
    why_not = find_gpu(args.device)
    if why_not is not None:
        print(f"gpu-check: no NVIDIA GPU here, nothing to check ({why_not})")
        return 0
    check = Check(args)
    try:
        for name, run in (("torch-latency", check.torch_latency), ("pinned-round-trip", check.pinned_round_trip),
                          ("ort-cuda-parity", check.ort_cuda_parity), ("runtime-threads", check.runtime_threads),
                          ("engine-build", check.engine_build), ("engine-parity", check.engine_parity),
                          ("engine-latency", check.engine_latency), ("version-refusal", check.version_refusal),
                          ("ort-trt-vs-native", check.ort_trt_vs_native)):
            check.step(name, run)
        machine = check.machine()
    finally:
        check.close()
    report = {"kind": "gpu-check", "machine": machine, "results": check.rows, "steps": check.steps,
              "skipped": check.skipped, "failed": check.failed, "seconds": round(time.monotonic() - started, 1)}
    slug = re.sub(r"[^a-z0-9]+", "-", str(machine.get("gpu") or "gpu").lower()).strip("-")
    target = args.out / f"{slug}-{machine['date'][:10]}.json"
    write_bytes_atomic(target, (json.dumps(report, indent=2) + "\n").encode())
    print(f"wrote {target} ({len(check.steps)} steps ok, {len(check.skipped)} skipped, {len(check.failed)} failed, "
          f"{report['seconds']:.0f} s)")
    return 1 if check.failed else 0


if __name__ == "__main__":
    sys.exit(main())
