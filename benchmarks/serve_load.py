"""``cminet serve --benchmark``: requests/s and latency of the local runtime and of
``cminet serve`` under 1, 4 and 8 concurrent clients (the serving table in the docs)."""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cminet.runtime import Fuser
from cminet.runtime.contract import INPUT_NAMES
from cminet.serve import DEFAULT_MAX_BATCH, free_port, model_counters, start_server, stop_server


@dataclass
class LoadResult:
    target: str  # "local runtime" or "Triton (HTTP)"
    clients: int
    requests: int
    seconds: float
    latencies_ms: list[float]
    mean_batch: float | None = None  # pairs per network run, from Triton's counters

    @property
    def requests_per_s(self) -> float:
        return self.requests / self.seconds

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.latencies_ms, q))


def run_load(make_infer, clients: int, seconds: float, inputs: tuple[np.ndarray, np.ndarray],
             warmup: int = 2, on_start=None) -> tuple[int, float, list[float]]:
    """``clients`` threads, each with its own ``make_infer()``, warm up with ``warmup``
    requests, then send one request after another for ``seconds``, all starting together
    (``on_start()`` runs just before); returns (requests, wall seconds, latencies in ms)."""
    latencies: list[list[float]] = [[] for _ in range(clients)]
    errors: list[Exception] = []
    warmed, go = threading.Barrier(clients + 1), threading.Event()
    deadline = [0.0]

    def client(k: int) -> None:
        try:
            infer = make_infer()
            for _ in range(warmup):
                infer(*inputs)
        except Exception as exc:
            errors.append(exc)
        warmed.wait()
        go.wait()
        try:
            while not errors and time.monotonic() < deadline[0]:
                t = time.perf_counter()
                infer(*inputs)
                latencies[k].append((time.perf_counter() - t) * 1e3)
        except Exception as exc:
            errors.append(exc)

    threads = [threading.Thread(target=client, args=(k,), daemon=True) for k in range(clients)]
    for t in threads:
        t.start()
    warmed.wait()
    if on_start is not None:
        on_start()
    began = time.monotonic()
    deadline[0] = began + seconds
    go.set()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    flat = [x for per in latencies for x in per]
    return len(flat), time.monotonic() - began, flat


def benchmark(model: str | Path | None = None, size: int = 256, clients: tuple[int, ...] = (1, 4, 8),
              seconds: float = 10.0, max_batch_size: int = DEFAULT_MAX_BATCH, log=print) -> list[LoadResult]:
    """Requests/s and latency of one H×W = size² pair per request, for each number of
    concurrent clients: first against the runtime in this process (clients call
    ``Fuser.infer`` from threads), then against ``cminet serve`` in a child process."""
    log(f"1-minute load average before: {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    rng = np.random.default_rng(0)
    inputs = tuple(rng.random((1, 1, size, size), dtype=np.float32) for _ in INPUT_NAMES)
    results = []
    with (Fuser(model) if model else Fuser()) as fuser:
        model_path = str(fuser.path)
        for n in clients:
            log(f"local runtime, {n} client(s) ...")
            results.append(LoadResult("local runtime", n, *run_load(lambda: fuser.infer, n, seconds, inputs)))
    port, metrics_port = free_port(), free_port()
    log(f"starting cminet serve on 127.0.0.1:{port} ...")
    server = start_server("--model", model_path, "--max-batch-size", str(max_batch_size),
                          "--metrics-port", str(metrics_port), port=port)
    url = f"http://127.0.0.1:{port}"

    def served(n: int) -> LoadResult:
        before: dict = {}  # Triton's counters once the clients are warm
        row = LoadResult("cminet serve (Triton, HTTP)", n,
                         *run_load(lambda: Fuser(url).infer, n, seconds, inputs,
                                   on_start=lambda: before.update(model_counters(metrics_port))))
        after = model_counters(metrics_port)
        runs = after["nv_inference_exec_count"] - before["nv_inference_exec_count"]
        row.mean_batch = (after["nv_inference_count"] - before["nv_inference_count"]) / max(runs, 1)
        return row

    try:
        for n in clients:
            log(f"Triton over HTTP, {n} client(s) ...")
            results.append(served(n))
    finally:
        stop_server(server)
    log(f"1-minute load average after: {os.getloadavg()[0]:.2f}")
    return results


def markdown_table(results: list[LoadResult], size: int) -> str:
    rows = [f"| target ({size}×{size}, 1 pair per request) | clients | requests/s | p50 ms | p99 ms | requests "
            "| pairs per network run |",
            "|---|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        batch = "1 (no batching)" if r.mean_batch is None else f"{r.mean_batch:.2f}"
        rows.append(f"| {r.target} | {r.clients} | {r.requests_per_s:.1f} | {r.percentile(50):.1f} | "
                    f"{r.percentile(99):.1f} | {r.requests} | {batch} |")
    return "\n".join(rows)
