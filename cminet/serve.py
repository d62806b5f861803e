"""Fusion as a service on NVIDIA Triton Inference Server: ``cminet serve`` and its client.

    cminet serve --port 8000                                  # a real tritonserver, one command
    cminet fuse --server http://127.0.0.1:8000 mri.png pet.png -o fused.png

Server: NVIDIA's PyTriton (``pip install 'cminet[serve]'``) starts the ``tritonserver`` its
wheel bundles; Triton's Python backend hands each batch to the torch-free runtime
(:class:`cminet.runtime.Fuser`) running in this process. Triton's dynamic batcher groups
concurrent requests of one image size into one network call.

What is served is the network, exactly as in the model repository ``cminet-export
--triton`` writes: inputs ``mri`` and ``other`` (FP32, N×1×H×W in [0, 1]), output
``fused``. The colour handling (PET/SPECT Y in, Cb/Cr put back) stays in the client,
:class:`TritonFuser`, as in local fusion, so one client talks to ``cminet serve`` and to a
tritonserver serving that repository alike (``--server-model cminet_onnx`` there).
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import sysconfig
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np

from cminet.export.triton import IO_DIMS, QUEUE_DELAY_US
from cminet.runtime.contract import INPUT_NAMES, OUTPUT_NAME
from cminet.runtime.errors import CMINetError
from cminet.runtime.imaging import finish_fused, prepare_pair

MODEL_NAME = "cminet"
DEFAULT_PORT = 8000
DEFAULT_MAX_BATCH = 8


class ServerError(CMINetError):
    """A Triton server that cannot be reached, does not serve the model, or refused a request."""


# -- server ---------------------------------------------------------------------------------
def python_library_env(env: dict | None = None) -> dict:
    """``env`` (default: ``os.environ``) with this interpreter's LIBDIR first on
    ``LD_LIBRARY_PATH``.

    PyTriton's backend stub links ``libpython3.X.so`` and the dynamic loader finds the
    system's one first; under a Python built elsewhere (pyenv, conda) that is a different
    build and the stub fails with ``'_thread.RLock' object has no attribute
    '_recursion_count'`` (PyTriton issue #51). tritonserver and the stub inherit this."""
    env = dict(os.environ if env is None else env)
    libdir = sysconfig.get_config_var("LIBDIR")
    paths = [p for p in env.get("LD_LIBRARY_PATH", "").split(os.pathsep) if p]
    if libdir and Path(libdir).is_dir():
        env["LD_LIBRARY_PATH"] = os.pathsep.join([libdir, *(p for p in paths if p != libdir)])
    return env


def serve(model: str | Path | None = None, host: str = "127.0.0.1", port: int = DEFAULT_PORT,
          grpc_port: int | None = None, metrics_port: int | None = None, max_batch_size: int = DEFAULT_MAX_BATCH,
          backend: str = "auto", threads: int | None = None, log=print) -> None:
    """Serve ``model`` (None: the runtime's default model) as Triton model ``cminet`` over
    HTTP on ``host:port`` (and gRPC / Prometheus metrics where their ports are given) until
    SIGINT or SIGTERM; then stop tritonserver and return."""
    try:
        from pytriton.decorators import batch
        from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
        from pytriton.triton import Triton, TritonConfig
    except ImportError:
        raise ServerError("cminet serve needs PyTriton: pip install 'cminet[serve]' (best in its own "
                          "environment: it requires numpy < 2)") from None
    from cminet.runtime import Fuser

    for option, number in (("--port", port), ("--grpc-port", grpc_port), ("--metrics-port", metrics_port)):
        if number is not None:
            _check_port_free(host, number, option)
    fuser = Fuser(model, backend=backend, threads=threads) if model else Fuser(backend=backend, threads=threads)

    @batch
    def infer(mri: np.ndarray, other: np.ndarray) -> dict:
        # Triton has already checked names, FP32 and N×1×H×W; the runtime checks the rest
        # (equal sizes, H, W ≥ 16, NaN/Inf) and its one-line error goes back to the client.
        return {OUTPUT_NAME: fuser.infer(mri, other)}

    os.environ.update(python_library_env())  # before tritonserver starts: it copies os.environ
    config = TritonConfig(http_address=host, http_port=port, allow_grpc=grpc_port is not None,
                          grpc_address=host, grpc_port=grpc_port, allow_metrics=metrics_port is not None,
                          metrics_port=metrics_port, exit_timeout_secs=5)
    tensors = [Tensor(name=name, dtype=np.float32, shape=IO_DIMS) for name in INPUT_NAMES]
    # SIGTERM (docker stop, systemd, kill) shuts down as cleanly as Ctrl-C; SIGINT is set
    # too because a shell starts background jobs with it ignored.
    previous = {sig: signal.signal(sig, _raise_keyboard_interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        with Triton(config=config) as triton:
            try:
                triton.bind(model_name=MODEL_NAME, infer_func=infer, inputs=tensors,
                            outputs=[Tensor(name=OUTPUT_NAME, dtype=np.float32, shape=IO_DIMS)],
                            config=ModelConfig(max_batch_size=max_batch_size,
                                               batcher=DynamicBatcher(max_queue_delay_microseconds=QUEUE_DELAY_US)))
            except Exception as exc:  # tritonclient's InferenceServerException with the backend's traceback
                raise ServerError(f"tritonserver could not load the model: {server_message(exc)} "
                                  "(its log is above)") from None
            info = fuser.info
            log(f"serving {info['model']} ({info['backend']}, {info['precision']}) as Triton model "
                f"'{MODEL_NAME}' on http://{host}:{port}" + (f", grpc {host}:{grpc_port}" if grpc_port else "")
                + (f", metrics :{metrics_port}" if metrics_port else "")
                + f"; dynamic batching up to {max_batch_size}; Ctrl-C stops")
            triton.serve()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        fuser.close()
    log("server stopped")


def _raise_keyboard_interrupt(signum, frame):
    raise KeyboardInterrupt


def _check_port_free(host: str, port: int, option: str) -> None:
    """Fail in one line before tritonserver does so in a page of logs."""
    with socket.socket() as s:
        try:
            s.bind((host, port))
        except OSError as exc:
            raise ServerError(f"{option} {port}: cannot listen on {host}:{port} ({exc.strerror})") from None


# -- client ---------------------------------------------------------------------------------
def split_url(url: str) -> tuple[str, bool]:
    """'http://host:8000', 'https://host' or 'host:8000' → ('host:8000', ssl)."""
    parts = urlsplit(url if "://" in url else f"http://{url}")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ServerError(f"--server {url!r}: expected http://HOST:PORT")
    ssl = parts.scheme == "https"
    try:
        port = parts.port or (443 if ssl else DEFAULT_PORT)
    except ValueError:
        raise ServerError(f"--server {url!r}: bad port") from None
    return f"{parts.hostname}:{port}", ssl


class TritonFuser:
    """The same ``fuse(mri, other)`` as :class:`cminet.runtime.Fuser`, with the network on a
    Triton server (HTTP, ``tritonclient``). Colour handling and checks run here.

    One instance per thread: the HTTP client is not shared between threads."""

    def __init__(self, url: str, model_name: str = MODEL_NAME, timeout: float = 60.0):
        try:
            import tritonclient.http as httpclient
        except ImportError:
            raise ServerError("--server needs the Triton client: pip install 'cminet[triton]'") from None
        self.url, self.model_name = url, model_name
        address, ssl = split_url(url)
        self._http = httpclient
        self.client = httpclient.InferenceServerClient(address, ssl=ssl, connection_timeout=timeout,
                                                       network_timeout=timeout)
        try:
            ready = self.client.is_model_ready(model_name)
        except Exception as exc:  # connection refused, DNS, timeouts: gevent raises several types
            self.client.close()
            raise ServerError(f"--server {url}: no Triton server answers ({_first_line(exc)})") from None
        if not ready:
            try:  # the repository index may be restricted (PyTriton restricts it)
                listed = self.client.get_model_repository_index()
                ready_models = ", ".join(sorted(m["name"] for m in listed if m.get("state") == "READY")) or "none"
            except Exception:
                ready_models = "not listed by the server"
            self.client.close()
            raise ServerError(f"--server {url}: model {model_name!r} is not ready there "
                              f"(ready models: {ready_models}; choose one with --server-model)")

    def infer(self, mri: np.ndarray, other: np.ndarray) -> np.ndarray:
        """The network on float32 N×1×H×W arrays in [0, 1], on the server."""
        from tritonclient.utils import InferenceServerException

        inputs = []
        for name, array in zip(INPUT_NAMES, (mri, other), strict=True):
            tensor = self._http.InferInput(name, list(array.shape), _triton_dtype(array.dtype))
            tensor.set_data_from_numpy(np.ascontiguousarray(array), binary_data=True)
            inputs.append(tensor)
        wanted = [self._http.InferRequestedOutput(OUTPUT_NAME, binary_data=True)]
        try:
            result = self.client.infer(self.model_name, inputs, outputs=wanted)
        except InferenceServerException as exc:
            raise ServerError(f"{self.url}: {server_message(exc)}") from None
        except Exception as exc:  # the connection dropped mid-request
            raise ServerError(f"{self.url}: request failed ({_first_line(exc)})") from None
        return result.as_numpy(OUTPUT_NAME)

    def fuse(self, mri: np.ndarray, other: np.ndarray) -> np.ndarray:
        """uint8 MRI + CT (grey) or PET/SPECT (RGB) → uint8 grey or RGB, as local fusion."""
        pair = prepare_pair(mri, other)
        out = self.infer(pair.mri[None, None], pair.other[None, None])
        return finish_fused(out[0, 0], pair)

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> TritonFuser:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _triton_dtype(dtype: np.dtype) -> str:
    """numpy dtype → Triton's name ('FP32', ...); the server checks it against the model."""
    from tritonclient.utils import np_to_triton_dtype

    return np_to_triton_dtype(np.dtype(dtype)) or str(dtype)


def server_message(exc) -> str:
    """Triton's error in one line. Checks Triton makes itself (names, dtypes, shapes) come
    as one line already; an error raised in the Python backend comes as a traceback, whose
    last ``SomeError: message`` line is what the client needs."""
    text = exc.message() if hasattr(exc, "message") and callable(exc.message) else str(exc)
    raised = [m.group(1) for m in _RAISED.finditer(text or "")]
    line = _REQUEST_ID.sub("", raised[-1] if raised else _first_line(text))
    return line.split(" NOTE: ")[0][:300]  # Triton appends a paragraph on batch dimensions to shape errors


_RAISED = re.compile(r"^[A-Za-z_][\w.]*(?:Error|Exception): (.+)$", re.MULTILINE)
_REQUEST_ID = re.compile(r"^\[request id: [^\]]*\] ")


def _first_line(exc) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


def wait_until_ready(url: str, model_name: str = MODEL_NAME, timeout: float = 120.0,
                     process: subprocess.Popen | None = None) -> None:
    """Poll Triton's ``/v2/models/<name>/ready`` (standard library only) until it answers
    200; raise if ``process`` (the server) exits or ``timeout`` passes first."""
    address, ssl = split_url(url)
    ready = f"{'https' if ssl else 'http'}://{address}/v2/models/{model_name}/ready"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise ServerError(f"the server exited with code {process.returncode} before it was ready")
        try:
            with urllib.request.urlopen(ready, timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.25)
    raise ServerError(f"{url}: model {model_name!r} not ready after {timeout:.0f} s")


def start_server(*args: str, port: int, host: str = "127.0.0.1", timeout: float = 120.0,
                 python: str = sys.executable, log_path: Path | None = None) -> subprocess.Popen:
    """``python -m cminet serve --host HOST --port PORT ARGS`` in a child process, returned
    once the model is ready (its output goes to ``log_path``, else is discarded). Stop it
    with :func:`stop_server`."""
    out = open(log_path, "wb") if log_path else subprocess.DEVNULL  # noqa: SIM115 (the child keeps it)
    process = subprocess.Popen([python, "-m", "cminet", "serve", "--host", host, "--port", str(port), *args],
                               stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_until_ready(f"http://{host}:{port}", timeout=timeout, process=process)
    except BaseException:
        stop_server(process)
        raise
    return process


def stop_server(process: subprocess.Popen, timeout: float = 30.0) -> int:
    """SIGINT (what Ctrl-C sends), then SIGKILL for the process group if it hangs."""
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    return process.returncode


def model_counters(metrics_port: int, host: str = "127.0.0.1", model_name: str = MODEL_NAME) -> dict[str, float]:
    """Triton's Prometheus counters for one model: ``nv_inference_count`` (pairs inferred),
    ``nv_inference_exec_count`` (network runs: fewer when requests were batched) and
    ``nv_inference_request_success``."""
    with urllib.request.urlopen(f"http://{host}:{metrics_port}/metrics", timeout=10) as response:
        text = response.read().decode()
    counters = {}
    for name in ("nv_inference_count", "nv_inference_exec_count", "nv_inference_request_success"):
        found = re.search(rf'^{name}{{[^}}]*model="{re.escape(model_name)}"[^}}]*}} (\S+)$', text, re.MULTILINE)
        if found:
            counters[name] = float(found.group(1))
    return counters


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


# -- load test ------------------------------------------------------------------------------
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
    from cminet.runtime import Fuser

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
                         *run_load(lambda: TritonFuser(url).infer, n, seconds, inputs,
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
