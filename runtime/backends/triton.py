"""Backend ``triton``: the network on a Triton Inference Server, over HTTP (``tritonclient``).

``Fuser("http://127.0.0.1:8000")`` talks to ``cminet serve`` (model ``cminet``);
``Fuser("http://host:8000/cminet_onnx")`` to a ``tritonserver`` serving the repository
``cminet-export --triton`` writes. What is served is the network alone (inputs ``mri`` and
``other``, N×1×H×W in [0, 1]; output ``fused``), so preparation, tiling, the colour hold and
the checks run in the :class:`~cminet.runtime.Fuser` of the client, exactly as for a local
model. The precision and the accepted shapes come from the server's model metadata.
"""

from __future__ import annotations

import re
import threading
from urllib.parse import urlsplit

import numpy as np

from ..contract import INPUT_NAMES, OUTPUT_NAME, TRITON_MODEL, TRITON_PORT
from ..errors import ServerError, first_line
from .base import Backend, profile_from_dims

DEFAULT_TIMEOUT_S = 60.0


def split_url(url: str) -> tuple[str, bool, str]:
    """'http://host:8000[/model]', 'https://host' or 'host:8000' → ('host:8000', ssl, model)."""
    parts = urlsplit(url if "://" in url else f"http://{url}")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ServerError(f"server {url!r}: expected http://HOST:PORT[/MODEL]")
    ssl = parts.scheme == "https"
    try:
        port = parts.port or (443 if ssl else TRITON_PORT)
    except ValueError:
        raise ServerError(f"server {url!r}: bad port") from None
    model = parts.path.strip("/")
    if "/" in model:
        raise ServerError(f"server {url!r}: expected at most one path part, the model name")
    return f"{parts.hostname}:{port}", ssl, model or TRITON_MODEL


class TritonBackend(Backend):
    """One HTTP client per thread (``tritonclient``'s is not thread-safe), opened on first use."""

    def __init__(self, url: str, name: str = "triton", timeout: float | None = None):
        try:
            import tritonclient.http as httpclient
        except ImportError:
            raise ServerError("a server URL needs the Triton client: pip install 'cminet[triton]'") from None
        self.name, self.url = name, str(url)
        self.address, self.ssl, self.model_name = split_url(self.url)
        self.timeout = DEFAULT_TIMEOUT_S if timeout is None else float(timeout)
        self._http = httpclient
        self._local = threading.local()
        self._clients: list = []
        self._lock = threading.Lock()
        client = self._client()
        try:
            ready = client.is_model_ready(self.model_name)
        except Exception as exc:  # connection refused, DNS, timeouts: gevent raises several types
            self.close()
            raise ServerError(f"{self.url}: no Triton server answers ({first_line(exc, 300)})") from None
        if not ready:
            try:  # the repository index may be restricted (PyTriton restricts it)
                listed = client.get_model_repository_index()
                ready_models = ", ".join(sorted(m["name"] for m in listed if m.get("state") == "READY")) or "none"
            except Exception:  # noqa: BLE001 - only for the message
                ready_models = "not listed by the server"
            self.close()
            raise ServerError(f"{self.url}: model {self.model_name!r} is not ready there "
                              f"(ready models: {ready_models}; name one as http://HOST:PORT/MODEL)")
        self._read_metadata(client)

    def _read_metadata(self, client) -> None:
        """Input dtype, precision and shape range from the server's model metadata."""
        try:
            inputs = {tensor["name"]: tensor for tensor in client.get_model_metadata(self.model_name)["inputs"]}
            tensor = inputs[INPUT_NAMES[0]]
        except Exception as exc:  # noqa: BLE001 - a model without the cminet inputs is not ours
            self.close()
            raise ServerError(f"{self.url}: model {self.model_name!r} is not a cminet model "
                              f"({first_line(exc, 200)})") from None
        self.input_dtype = np.dtype(np.float16 if tensor.get("datatype") == "FP16" else np.float32)
        self.precision = "fp16" if self.input_dtype == np.float16 else "fp32"
        dims = [int(d) for d in tensor.get("shape", [])]
        self.profile = profile_from_dims(dims if len(dims) == 4 else [-1, 1, -1, -1])

    def _client(self):
        client = getattr(self._local, "client", None)
        if client is None:
            client = self._http.InferenceServerClient(self.address, ssl=self.ssl, connection_timeout=self.timeout,
                                                      network_timeout=self.timeout)
            self._local.client = client
            with self._lock:
                self._clients.append(client)
        return client

    def run_impl(self, mri: np.ndarray, other: np.ndarray) -> np.ndarray:
        from tritonclient.utils import InferenceServerException, np_to_triton_dtype

        inputs = []
        for tensor_name, array in zip(INPUT_NAMES, (mri, other), strict=True):
            tensor = self._http.InferInput(tensor_name, list(array.shape), np_to_triton_dtype(array.dtype))
            tensor.set_data_from_numpy(array, binary_data=True)
            inputs.append(tensor)
        wanted = [self._http.InferRequestedOutput(OUTPUT_NAME, binary_data=True)]
        try:
            result = self._client().infer(self.model_name, inputs, outputs=wanted)
        except InferenceServerException as exc:
            raise ServerError(f"{self.url}: {server_message(exc)}") from None
        except Exception as exc:  # the connection dropped mid-request
            raise ServerError(f"{self.url}: request failed ({first_line(exc, 300)})") from None
        return result.as_numpy(OUTPUT_NAME)

    def info(self) -> dict:
        import tritonclient

        return {"server": self.url, "model": self.model_name,
                "tritonclient": getattr(tritonclient, "__version__", "?")}

    def close(self) -> None:
        with self._lock:
            clients, self._clients = self._clients, []
        for client in clients:
            client.close()
        self._local = threading.local()


def server_message(exc) -> str:
    """Triton's error in one line (see :func:`one_line_error`)."""
    text = exc.message() if hasattr(exc, "message") and callable(exc.message) else str(exc)
    return one_line_error(text or "") or type(exc).__name__


def one_line_error(text: str) -> str:
    """A Triton error message in one line. Checks Triton makes itself (names, dtypes, shapes)
    come as one line already; an error raised in a Python backend comes as a traceback,
    whose last ``SomeError: message`` line is what the client needs."""
    raised = [m.group(1) for m in _RAISED.finditer(text)]
    line = _REQUEST_ID.sub("", raised[-1] if raised else (text.strip().splitlines() or [""])[0])
    return line.split(" NOTE: ")[0][:300]  # Triton appends a paragraph on batch dimensions to shape errors


_RAISED = re.compile(r"^[A-Za-z_][\w.]*(?:Error|Exception): (.+)$", re.MULTILINE)
_REQUEST_ID = re.compile(r"^\[request id: [^\]]*\] ")

__all__ = ["TritonBackend", "one_line_error", "server_message", "split_url"]
