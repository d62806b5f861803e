"""One backend, measured in its own process so peak RSS and GPU memory don't mix.

``cminet-bench`` starts ``python -m cminet.benchmarks.worker SPEC_JSON`` once per backend
and precision, and once more with ``--cold`` for the cold-start time. The worker prints one
``RESULT {...}`` line. Runtime backends (ort-*, tensorrt) never import torch here, so
their RSS is what a device application would see.
"""

from __future__ import annotations

import json
import resource
import sys
import time

import numpy as np

from .stats import latency_summary, psnr, throughput_ips

TORCH_BACKENDS = ("torch-cpu", "torch-cuda")


class Runner:
    """``run(a, b)``: float32 N×1×H×W numpy in, numpy out, synchronised before returning."""

    gpu = False

    def __init__(self, backend: str, precision: str, model: str, threads: int | None):
        self.backend, self.precision = backend, precision
        if backend in TORCH_BACKENDS:
            import torch

            from cminet.fusion import load_pretrained

            if threads:
                torch.set_num_threads(threads)
            self.torch = torch
            self.device = torch.device("cuda" if backend == "torch-cuda" else "cpu")
            self.gpu = self.device.type == "cuda"
            self.dtype = torch.float16 if precision == "fp16" else torch.float32
            self.model = load_pretrained(model, device=str(self.device)).to(self.dtype)
        else:
            from cminet.runtime import Fuser

            self.fuser = Fuser(model, backend=backend, threads=threads)
            self.gpu = backend != "ort-cpu"

    def run(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        if self.backend not in TORCH_BACKENDS:
            return self.fuser.infer(a, b)
        torch = self.torch
        with torch.no_grad():
            ta = torch.from_numpy(a).to(self.device, self.dtype)
            tb = torch.from_numpy(b).to(self.device, self.dtype)
            out = self.model(ta, tb).float().cpu().numpy()  # .cpu() synchronises
        return out

    def gpu_event_latency_ms(self, a: np.ndarray, b: np.ndarray, iters: int) -> list[float] | None:
        """Device-side latency with CUDA events (torch-cuda only; inputs already on the GPU)."""
        if self.backend != "torch-cuda":
            return None
        torch = self.torch
        ta = torch.from_numpy(a).to(self.device, self.dtype)
        tb = torch.from_numpy(b).to(self.device, self.dtype)
        times = []
        with torch.no_grad():
            for _ in range(iters):
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                self.model(ta, tb)
                end.record()
                torch.cuda.synchronize()
                times.append(start.elapsed_time(end))
        return times

    def gpu_memory_mb(self) -> float | None:
        if not self.gpu:
            return None
        if self.backend == "torch-cuda":
            return self.torch.cuda.max_memory_allocated() / 2**20
        info = getattr(self.fuser, "info", {}) or {}
        if info.get("gpu_mem_bytes") is not None:
            return info["gpu_mem_bytes"] / 2**20
        return _device_memory_used_mb()


def _device_memory_used_mb() -> float | None:
    """Used device memory via cuda-python (whole-device view; includes the CUDA context)."""
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        return None
    err, free, total = cudart.cudaMemGetInfo()
    return None if int(err) else (total - free) / 2**20


def peak_rss_mb() -> float:
    """This process's peak resident set size. VmHWM, not getrusage: Linux carries
    ru_maxrss across fork + exec, so a worker would report its parent's peak."""
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux, bytes on macOS


def measure(spec: dict) -> list[dict]:
    runner = Runner(spec["backend"], spec["precision"], spec["model"], spec.get("threads"))
    rng = np.random.default_rng(0)
    rows = []
    for height, width in spec["sizes"]:
        for batch in spec["batches"]:
            a = rng.random((batch, 1, height, width), dtype=np.float32)
            b = rng.random((batch, 1, height, width), dtype=np.float32)
            for _ in range(spec["warmup"]):
                runner.run(a, b)
            times, started = [], time.perf_counter()
            while len(times) < spec["iters"] or (time.perf_counter() - started < spec.get("min_seconds", 0)
                                                  and len(times) < 10 * spec["iters"]):
                t0 = time.perf_counter()
                runner.run(a, b)
                times.append(1e3 * (time.perf_counter() - t0))
            latency = latency_summary(times)
            row = {
                "backend": spec["backend"], "precision": spec["precision"], "height": height, "width": width,
                "batch": batch, "latency_ms": latency, "throughput_ips": throughput_ips(batch, latency["p50"]),
                "peak_rss_mb": peak_rss_mb(), "gpu_mem_mb": runner.gpu_memory_mb(),
            }
            events = runner.gpu_event_latency_ms(a, b, spec["iters"])
            if events:
                row["gpu_latency_ms"] = latency_summary(events)
            rows.append(row)
            print(f"PROGRESS {spec['backend']} {spec['precision']} {height}x{width} b{batch}", flush=True)
    if spec.get("reference"):
        drift = measure_drift(runner, spec["reference"])
        for row in rows:
            row["drift"] = drift
    return rows


def measure_drift(runner: Runner, reference_npz: str) -> dict:
    """Worst case over the shipped sample pairs, against the FP32 PyTorch outputs."""
    from cminet.metrics import evaluate

    ref = np.load(reference_npz)
    worst = {"max_abs": 0.0, "psnr_db": float("inf"), "mi_change": 0.0, "qabf_change": 0.0}
    for i in range(int(ref["count"])):
        a, b, expected = ref[f"mri_{i}"], ref[f"other_{i}"], ref[f"ref_{i}"]
        got = runner.run(a, b).astype(np.float32)
        worst["max_abs"] = max(worst["max_abs"], float(np.abs(got - expected).max()))
        worst["psnr_db"] = min(worst["psnr_db"], psnr(expected, got))
        a255, b255 = a[0, 0] * 255.0, b[0, 0] * 255.0
        m_ref = evaluate(a255, b255, np.clip(expected[0, 0], 0, 1) * 255.0)
        m_got = evaluate(a255, b255, np.clip(got[0, 0], 0, 1) * 255.0)
        for key, name in (("mi_change", "MI"), ("qabf_change", "Qabf")):
            change = m_got[name] - m_ref[name]
            if abs(change) >= abs(worst[key]):
                worst[key] = float(change)
    worst["pairs"] = int(ref["count"])
    return worst


def cold_start(spec: dict) -> dict:
    """Import → load → first fused image, in this fresh process (started by the parent,
    which adds the interpreter start-up it measured)."""
    t0 = time.perf_counter()
    from cminet.runtime.imaging import finish_output, prepare_pair, read_image

    runner = Runner(spec["backend"], spec["precision"], spec["model"], spec.get("threads"))
    pair = prepare_pair(read_image(spec["sample_mri"]), read_image(spec["sample_other"]))
    out = runner.run(pair.mri[None, None], pair.other[None, None])
    finish_output(out[0, 0], pair.chroma)
    return {"in_process_s": time.perf_counter() - t0, "finished_at": time.time()}


def main(argv: list[str]) -> int:
    cold = argv and argv[0] == "--cold"
    spec = json.loads(argv[-1])
    result = cold_start(spec) if cold else measure(spec)
    print("RESULT " + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
