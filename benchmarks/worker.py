"""One backend, measured in its own process so peak RSS and GPU memory don't mix.

:func:`cminet.benchmarks.bench.run_benchmark` starts ``python -m cminet.benchmarks.worker
SPEC_JSON`` once per backend and precision, and once more with ``--cold`` for the cold-start
time. The worker opens the backend through the runtime's registry (the same
:class:`~cminet.runtime.backends.base.Backend` interface ``Fuser`` uses), so the runtime
backends never import torch here and their RSS is what a device application would see.
It prints one ``RESULT {...}`` line.
"""

from __future__ import annotations

import json
import resource
import sys
import time

import numpy as np

from .stats import latency_summary, throughput_ips


def open_spec_backend(spec: dict):
    from cminet.runtime.backends.base import backend_options, open_backend

    # The bench's --threads is for the CPU backends, --no-cuda-graphs / --compile for torch: each
    # backend gets those of them it takes.
    accepted = backend_options(spec["backend"])
    options = {key: value for key, value in {"threads": spec.get("threads"), **spec.get("options", {})}.items()
               if key in accepted}
    return open_backend(spec["backend"], spec["model"], precision=spec["precision"], **options)


def run_once(backend, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """One synchronised inference (every backend's ``run`` returns host data)."""
    dtype = backend.input_dtype
    return backend.run(a.astype(dtype, copy=False), b.astype(dtype, copy=False))


class DeviceMemory:
    """GPU memory this process holds, as the device sees it (cudaMemGetInfo), above a
    baseline taken after the CUDA context exists and before the model is loaded: the same
    quantity for every GPU backend (weights, activations / engine memory, buffers and
    allocator caches), the context itself excluded."""

    def __init__(self, gpu: bool):
        self.query = _mem_get_info() if gpu else None
        self.baseline = self.query() if self.query else None

    def used_mb(self) -> float | None:
        if self.query is None or self.baseline is None:
            return None
        return max(0.0, self.query() - self.baseline)


def _mem_get_info():
    """A function returning device-used MB, with the CUDA context already current; None
    where no CUDA bindings (cuda-python, pycuda, or torch's) see a GPU."""
    from cminet.runtime.cuda import CudaUnavailable, open_cuda

    try:
        cuda = open_cuda(0)  # cuda-python, else pycuda: what the TensorRT backend uses
    except CudaUnavailable:
        cuda = None
    if cuda is not None:
        def used() -> float:
            with cuda.activate():
                free, total = cuda.mem_info()
            return (total - free) / 2**20

        return used
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None

    def used_torch() -> float:
        free, total = torch.cuda.mem_get_info()
        return (total - free) / 2**20

    return used_torch


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


def measure(spec: dict) -> dict:
    from cminet.runtime.contract import backend_spec

    memory = DeviceMemory(backend_spec(spec["backend"]).gpu)
    backend = open_spec_backend(spec)
    rng = np.random.default_rng(0)
    rows = []
    for height, width in spec["sizes"]:
        for batch in spec["batches"]:
            a = rng.random((batch, 1, height, width), dtype=np.float32)
            b = rng.random((batch, 1, height, width), dtype=np.float32)
            for _ in range(spec["warmup"]):
                run_once(backend, a, b)
            times = []
            for _ in range(spec["iters"]):
                t0 = time.perf_counter()
                run_once(backend, a, b)
                times.append(1e3 * (time.perf_counter() - t0))
            latency = latency_summary(times)
            rows.append({
                "backend": spec["backend"], "precision": spec["precision"], "height": height, "width": width,
                "batch": batch, "latency_ms": latency, "throughput_ips": throughput_ips(batch, latency["p50"]),
                "peak_rss_mb": peak_rss_mb(), "gpu_mem_mb": memory.used_mb(),
            })
            print(f"PROGRESS {spec['backend']} {spec['precision']} {height}x{width} b{batch}", flush=True)
    drift = None
    if spec.get("reference"):
        from cminet.runtime.compare import drift as measure_drift
        from cminet.runtime.compare import load_reference

        drift = measure_drift(lambda x, y: run_once(backend, x, y), load_reference(spec["reference"])).as_dict()
    backend_info = backend.info()
    backend.close()
    return {"rows": rows, "drift": drift, "info": backend_info}


def cold_start(spec: dict) -> dict:
    """Import → load → first fused image, in this fresh process (started by the parent,
    which adds the interpreter start-up it measured)."""
    t0 = time.perf_counter()
    from cminet.runtime.imaging import finish_fused, prepare_pair, read_image

    backend = open_spec_backend(spec)
    pair = prepare_pair(read_image(spec["sample_mri"]), read_image(spec["sample_other"]))
    out = run_once(backend, pair.mri[None, None], pair.other[None, None])
    finish_fused(out[0, 0], pair)
    return {"in_process_s": time.perf_counter() - t0, "finished_at": time.time()}


def main(argv: list[str]) -> int:
    cold = argv and argv[0] == "--cold"
    spec = json.loads(argv[-1])
    result = cold_start(spec) if cold else measure(spec)
    print("RESULT " + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
