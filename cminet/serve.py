"""Fusion as a service on NVIDIA Triton Inference Server: ``cminet serve``.

    cminet serve --port 8000                                  # a real tritonserver, one command
    cminet fuse --server http://127.0.0.1:8000 mri.png pet.png -o fused.png

Server: NVIDIA's PyTriton (``pip install 'cminet[serve]'``) starts the ``tritonserver`` its
wheel bundles; Triton's Python backend hands each batch to the torch-free runtime
(:class:`cminet.runtime.Fuser`) running in this process. Triton's dynamic batcher groups
concurrent requests of one image size into one network call.

What is served is the network, exactly as in the model repository ``cminet-export
--triton`` writes: inputs ``mri`` and ``other`` (FP32, N×1×H×W in [0, 1]), output
``fused``. The colour handling (PET/SPECT Y in, Cb/Cr put back), tiling and checks stay in
the client, ``Fuser("http://HOST:PORT")`` (:mod:`cminet.runtime.backends.triton`), as in local
fusion, so one client talks to ``cminet serve`` and to a tritonserver serving that repository
alike (``http://HOST:PORT/cminet_onnx`` there). The load benchmark is
:mod:`cminet.benchmarks.serve_load`.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np

from cminet.runtime.backends.triton import server_message, split_url
from cminet.runtime.contract import (
    INPUT_NAMES,
    IO_CHANNELS,
    IO_RANK,
    OUTPUT_NAME,
    TRITON_IO_DIMS,
    TRITON_MODEL,
    TRITON_PORT,
    TRITON_QUEUE_DELAY_US,
)
from cminet.runtime.errors import ImageError, ServerError, SizeLimitError
from cminet.serve_front import start_front

MODEL_NAME = TRITON_MODEL
DEFAULT_PORT = TRITON_PORT
DEFAULT_MAX_BATCH = 8


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
        # The front checked each request's shapes and values, and the Triton checked names and
        # FP32; what is left to refuse is a batch the dynamic batcher made too large for memory
        # from requests that each fit: those run one request at a time instead.
        try:
            return {OUTPUT_NAME: fuser.infer(mri, other)}
        except SizeLimitError:
            if len(mri) == 1:
                raise
        return {OUTPUT_NAME: np.concatenate([fuser.infer(mri[k:k + 1], other[k:k + 1]) for k in range(len(mri))])}

    # tritonserver's HTTP listens privately; clients reach the front (cminet.serve_front),
    # which refuses what would crash tritonserver, leak in its Python backend or come back
    # as a traceback.
    triton_http_port = free_port()
    largest_side = fuser.size_policy().largest_square() or FALLBACK_MAX_SIDE
    os.environ.update(python_library_env())  # before tritonserver starts: it copies os.environ
    config = TritonConfig(http_address="127.0.0.1", http_port=triton_http_port, allow_grpc=grpc_port is not None,
                          grpc_address=host, grpc_port=grpc_port, allow_metrics=metrics_port is not None,
                          metrics_port=metrics_port, exit_timeout_secs=5)
    tensors = [Tensor(name=name, dtype=np.float32, shape=TRITON_IO_DIMS) for name in INPUT_NAMES]
    # SIGTERM (docker stop, systemd, kill) shuts down as cleanly as Ctrl-C; SIGINT is set
    # too because a shell starts background jobs with it ignored.
    previous = {sig: signal.signal(sig, _raise_keyboard_interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}
    _STOP_ASKED.clear()
    # PyTriton's sockets and files live in a workspace of ours: short enough for a Unix socket
    # path wherever the cache or TMPDIR is, private (mode 0700, and umask 077 for what PyTriton
    # and tritonserver create in it and in /dev/shm, where request tensors pass), and removed
    # however the server ends.
    private = Path(tempfile.mkdtemp(prefix="cminet-serve-", dir=_short_temp_dir()))
    umask = os.umask(0o077)
    try:
        with Triton(config=config, workspace=private / "w") as triton:  # PyTriton makes the folder itself
            try:
                triton.bind(model_name=MODEL_NAME, infer_func=infer, inputs=tensors,
                            outputs=[Tensor(name=OUTPUT_NAME, dtype=np.float32, shape=TRITON_IO_DIMS)],
                            config=ModelConfig(max_batch_size=max_batch_size,
                                               batcher=DynamicBatcher(max_queue_delay_microseconds=TRITON_QUEUE_DELAY_US)))
            except Exception as exc:  # tritonclient's InferenceServerException with the backend's traceback
                raise ServerError(f"tritonserver could not load the model: {server_message(exc)} "
                                  "(its log is above)") from None
            try:
                front = start_front(host, port, triton_http_port, largest_side,
                                    lambda mri, other: check_request_shapes(fuser, mri, other))
            except OSError as exc:
                raise ServerError(f"--port {port}: cannot listen on {host}:{port} ({exc.strerror})") from None
            info = fuser.info
            log(f"serving {info['model']} ({info['backend']}, {info['precision']}) as Triton model "
                f"'{MODEL_NAME}' on http://{host}:{port}" + (f", grpc {host}:{grpc_port}" if grpc_port else "")
                + (f", metrics :{metrics_port}" if metrics_port else "")
                + f"; dynamic batching up to {max_batch_size}; Ctrl-C stops")
            try:
                triton.serve()
            finally:
                front.shutdown()
                front.server_close()
        if not _STOP_ASKED.is_set():  # serve() also returns when tritonserver itself dies
            raise ServerError("tritonserver stopped unexpectedly (its log is above); the server is down")
    finally:
        os.umask(umask)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        fuser.close()
        shutil.rmtree(private, ignore_errors=True)
    log("server stopped")


def check_request_shapes(fuser, mri: tuple[int, ...], other: tuple[int, ...]) -> None:
    """The runtime's checks of one request, made on its declared shapes before Triton sees
    it (the runtime makes them again on the arrays): N×1×H×W, equal, not empty, within the
    model's profile (sides ≥ 16) and within this machine's memory."""
    for label, shape in (("mri", mri), ("other", other)):
        if len(shape) != IO_RANK or shape[1] != IO_CHANNELS:
            raise ImageError(f"{label}: expected shape N×1×H×W, got {'×'.join(map(str, shape)) or 'a scalar'}")
    if mri != other:
        raise ImageError(f"input shapes differ: mri {'×'.join(map(str, mri))}, other {'×'.join(map(str, other))}")
    n, _, height, width = mri
    if 0 in mri:
        raise ImageError(f"empty input of shape {n}×1×{height}×{width}: images need at least 16×16 pixels")
    fuser.backend.profile.check(mri)
    fuser.size_policy().check_whole(n, height, width)


FALLBACK_MAX_SIDE = 8192  # where this machine's memory cannot be read (the runtime then refuses nothing for memory)
_STOP_ASKED = threading.Event()  # SIGINT / SIGTERM arrived: serve() returning is the stop asked for
UNIX_SOCKET_ROOM = 60  # characters a workspace path may take: sockets inside add ~40 of the 107 allowed


def _short_temp_dir() -> str:
    """The temporary folder, or /tmp where its path would not leave room for socket names."""
    folder = tempfile.gettempdir()
    return folder if len(folder) <= UNIX_SOCKET_ROOM else "/tmp"


def _raise_keyboard_interrupt(signum, frame):
    _STOP_ASKED.set()
    raise KeyboardInterrupt


def _check_port_free(host: str, port: int, option: str) -> None:
    """Fail in one line before tritonserver does so in a page of logs."""
    with socket.socket() as s:
        # As the front and tritonserver bind: connections closed a moment ago (TIME_WAIT)
        # do not make a port taken; a listener does.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            raise ServerError(f"{option} {port}: cannot listen on {host}:{port} ({exc.strerror})") from None


def wait_until_ready(url: str, model_name: str = MODEL_NAME, timeout: float = 120.0,
                     process: subprocess.Popen | None = None) -> None:
    """Poll Triton's ``/v2/models/<name>/ready`` (standard library only) until it answers
    200; raise if ``process`` (the server) exits or ``timeout`` passes first."""
    address, ssl, _ = split_url(url)
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


