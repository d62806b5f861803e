"""The HTTP front of ``cminet serve``: what clients reach, in front of a private tritonserver.

tritonserver 2.51 (the one PyTriton 0.7 bundles) has no request size or JSON depth limit of
its own, and three things go wrong when a hostile or careless request reaches it:

- its JSON parser recurses, so one body nested tens of thousands of levels deep crashes it;
- a request the Python backend refuses keeps its input tensors in the backend's shared
  memory (PyTriton raises from ``execute``, and Triton's Python backend does not free a
  raising batch's inputs), so refused large images grow the server by their size each time;
- PyTriton formats every error it returns as a Python traceback with the server's paths.

So tritonserver's HTTP listens on 127.0.0.1 on a port of its own, and this front listens on
the address the user gave. Before a request reaches Triton it refuses bodies larger than the
largest image the server fuses (413), JSON nested deeper than a KServe v2 request needs,
compressed bodies it cannot inspect, and inference requests whose declared shapes or binary
data the runtime would refuse (400), each with one-line ``{"error": "..."}`` bodies, Triton's
own error format. Everything else (the binary tensor extension included) goes to Triton
unchanged, and error bodies coming back are cut to their last meaningful line.
"""

from __future__ import annotations

import http.client
import json
import re
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from math import prod

import numpy as np

from cminet.runtime.backends.triton import one_line_error
from cminet.runtime.contract import INPUT_NAMES
from cminet.runtime.errors import CMINetError

# A KServe v2 inference request is an object holding a list of input objects, each holding
# a shape list, a parameters object and a data list, which may be nested once per dimension
# (N×1×H×W: four levels). Nine levels leave room; tens of thousands crash tritonserver.
MAX_JSON_DEPTH = 9
# What any request but an inference one may carry: metadata queries have no body at all.
MAX_OTHER_BODY = 64 * 1024
# Room for the JSON header of an inference request beside its binary tensors.
HEADER_ALLOWANCE = 1024 * 1024
BYTES_PER_VALUE = 4  # FP32, the served model's input type
# An oversized body up to this size is read and dropped, so that the client gets the 413.
MAX_BODY_DROPPED = 1024**3
DROP_CHUNK = 1024 * 1024
# Connections whose bodies may be in memory at once; more wait their turn.
MAX_REQUESTS_IN_FLIGHT = 16
# Seconds a client may take to send its request; seconds Triton may take to answer one.
CLIENT_TIMEOUT_S = 60.0
TRITON_TIMEOUT_S = 600.0

HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade",
              "proxy-authenticate", "proxy-authorization"}
_INFER_PATH = re.compile(r"^/v2/models/[^/]+(?:/versions/[^/]+)?/infer/?$")
_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
# A "data" list of numbers (nested or flat), dropped before the header is parsed so that
# megabytes of values never become Python objects.
_JSON_DATA = re.compile(rb'"data"\s*:\s*\[[-+0-9.eE,\s\[\]]*\]')
_NOT_A_BRACKET = bytes(b for b in range(256) if b not in b"[]{}")

ShapeCheck = Callable[[tuple[int, ...], tuple[int, ...]], None]


class Refused(Exception):
    """A request the front answers itself: an HTTP status and one line for the client."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def max_body_bytes(max_pixels: int) -> int:
    """The largest inference body worth reading: both inputs of the largest image the
    server fuses, as binary FP32, plus the JSON header."""
    return len(INPUT_NAMES) * BYTES_PER_VALUE * max_pixels + HEADER_ALLOWANCE


def json_depth(text: bytes) -> int:
    """How deeply arrays and objects nest in ``text``, found without recursion (strings,
    which may hold brackets, are blanked first). Malformed JSON gets a number too: Triton
    refuses it afterwards, in one line."""
    brackets = _JSON_STRING.sub(b'""', text).translate(None, _NOT_A_BRACKET)
    if not brackets:
        return 0
    steps = np.frombuffer(brackets, dtype=np.uint8)
    depth = np.cumsum(np.where((steps == ord("[")) | (steps == ord("{")), 1, -1), dtype=np.int64)
    return int(depth.max())


def read_header(body: bytes, header_length: str | None) -> tuple[dict, bytes]:
    """The JSON part of an inference body (all of it, or its first ``header_length`` bytes
    under the binary tensor extension) parsed, and the binary part after it."""
    if header_length is not None:
        if not header_length.isdigit() or int(header_length) > len(body):
            raise Refused(400, f"Inference-Header-Content-Length {header_length!r} does not fit a body of "
                               f"{len(body)} bytes")
        split = int(header_length)
    else:
        split = len(body)
    text, binary = body[:split], body[split:]
    depth = json_depth(text)
    if depth > MAX_JSON_DEPTH:
        raise Refused(400, f"the request's JSON nests {depth} levels deep; an inference request needs at most "
                           f"{MAX_JSON_DEPTH}")
    try:  # the tensor values are Triton's to parse: only the structure is read here
        header = json.loads(_JSON_DATA.sub(b'"data":[]', text)) if text.strip() else {}
    except ValueError:
        return {}, binary  # not JSON: Triton says so in one line
    return (header if isinstance(header, dict) else {}), binary


def declared_inputs(header: dict) -> dict[str, dict]:
    """The request's ``inputs`` by name (entries that are not objects with a name skipped)."""
    inputs = header.get("inputs")
    if not isinstance(inputs, list):
        return {}
    return {entry["name"]: entry for entry in inputs if isinstance(entry, dict) and isinstance(entry.get("name"), str)}


def declared_shape(name: str, entry: dict) -> tuple[int, ...]:
    shape = entry.get("shape")
    if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
        raise Refused(400, f"{name}: shape must be a list of non-negative integers (N×1×H×W), got {shape!r}")
    return tuple(shape)


def check_inference(body: bytes, header_length: str | None, check_shapes: ShapeCheck) -> None:
    """Refuse what the runtime in the server would refuse, before Triton hands it over."""
    header, binary = read_header(body, header_length)
    inputs = declared_inputs(header)
    if not all(name in inputs for name in INPUT_NAMES):
        return  # Triton names the missing input itself, before the Python backend sees anything
    shapes = [declared_shape(name, inputs[name]) for name in INPUT_NAMES]
    try:
        check_shapes(*shapes)
    except CMINetError as exc:
        raise Refused(400, str(exc)) from None
    offset = 0
    for name in INPUT_NAMES:
        size = (inputs[name].get("parameters") or {}).get("binary_data_size")
        if not isinstance(size, int) or size < 0:
            continue  # JSON data, or a header Triton will refuse
        start, offset = offset, offset + size
        if inputs[name].get("datatype") == "FP32" and size == BYTES_PER_VALUE * prod(shapes[0]) \
                and offset <= len(binary):
            values = np.frombuffer(binary, dtype="<f4", count=size // BYTES_PER_VALUE, offset=start)
            if not np.isfinite(values).all():
                raise Refused(400, f"{name}: the input contains NaN or Inf")


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as tritonclient expects
    timeout = CLIENT_TIMEOUT_S
    server: FrontServer

    def do_GET(self):
        self._forward()

    def do_POST(self):
        self._forward()

    def do_PUT(self):
        self._forward()

    def do_DELETE(self):
        self._forward()

    def do_HEAD(self):
        self._forward()

    def finish(self):
        super().finish()
        self.server.close_triton_connection()

    def log_message(self, format, *args):  # noqa: A002 - the base class's name
        pass  # tritonserver logs requests where asked; one line per request here would drown the log

    def _forward(self) -> None:
        with self.server.in_flight:
            try:
                body = self._read_checked_body()
            except Refused as refusal:
                self._send_error(refusal.status, str(refusal))
                return
            self._relay(body)

    def _read_checked_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            self.close_connection = True
            raise Refused(411, "send the request body with a Content-Length, not chunked")
        if self.headers.get("Content-Encoding", "identity").lower() not in ("", "identity"):
            self.close_connection = True
            raise Refused(415, "send the request body uncompressed (Content-Encoding is not supported here)")
        length_text = self.headers.get("Content-Length", "0").strip()
        if not length_text.isdigit():
            self.close_connection = True
            raise Refused(400, f"bad Content-Length {length_text!r}")
        length = int(length_text)
        is_inference = self.command == "POST" and bool(_INFER_PATH.match(self.path.split("?")[0]))
        limit = self.server.max_inference_body if is_inference else MAX_OTHER_BODY
        if length > limit:
            # Read and drop a body of plausible size so that the client, still sending, gets
            # this answer rather than a broken pipe; answer a larger one at once. Either way the
            # connection closes: what is left unread must not be taken for the next request.
            if length <= MAX_BODY_DROPPED:
                self._drop_body(length)
            self.close_connection = True
            raise Refused(413, f"request body of {length:,} bytes is over this server's limit of {limit:,} "
                               + (f"(two FP32 inputs of {self.server.max_side}×{self.server.max_side} pixels, "
                                  "the largest image it fuses, and their JSON header)" if is_inference
                                  else "for this kind of request"))
        body = self.rfile.read(length) if length else b""
        if len(body) != length:
            self.close_connection = True
            raise Refused(400, f"the request body ended after {len(body):,} of {length:,} bytes")
        if is_inference:
            check_inference(body, self.headers.get("Inference-Header-Content-Length"), self.server.check_shapes)
        elif body:
            depth = json_depth(body)
            if depth > MAX_JSON_DEPTH:
                raise Refused(400, f"the request's JSON nests {depth} levels deep; at most {MAX_JSON_DEPTH} "
                                   "are accepted")
        return body

    def _drop_body(self, length: int) -> None:
        try:
            while length > 0:
                chunk = self.rfile.read(min(length, DROP_CHUNK))
                if not chunk:
                    return
                length -= len(chunk)
        except OSError:
            pass

    def _relay(self, body: bytes) -> None:
        headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP and k.lower() != "host"}
        headers["Content-Length"] = str(len(body))
        try:
            response = self.server.triton_request(self.command, self.path, body, headers)
        except OSError as exc:
            self._send_error(502, f"tritonserver did not answer ({exc.strerror or type(exc).__name__})")
            return
        payload = response.read()
        if response.status >= 400:
            payload = _one_line_error_body(payload)
        self.send_response(response.status)
        for key, value in response.getheaders():
            if key.lower() not in HOP_BY_HOP and key.lower() != "content-length":
                self.send_header(key, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    def _send_error(self, status: int, message: str) -> None:
        payload = json.dumps({"error": message}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)


def _one_line_error_body(payload: bytes) -> bytes:
    """Triton's ``{"error": "..."}`` with the message cut to its last meaningful line (a
    PyTriton traceback ends in the runtime's own message); other bodies are kept."""
    try:
        parsed = json.loads(payload)
    except ValueError:
        return payload
    if not isinstance(parsed, dict) or not isinstance(parsed.get("error"), str):
        return payload
    return json.dumps({**parsed, "error": one_line_error(parsed["error"])}).encode()


class FrontServer(ThreadingHTTPServer):
    """Listens on the user's address and relays checked requests to tritonserver's private
    HTTP port, one kept-alive connection per handler thread."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], triton_port: int, max_side: int, check_shapes: ShapeCheck):
        self.triton_port = triton_port
        self.max_side = max_side
        self.max_inference_body = max_body_bytes(max_side * max_side)
        self.check_shapes = check_shapes
        self.in_flight = threading.BoundedSemaphore(MAX_REQUESTS_IN_FLIGHT)
        self._connections = threading.local()
        super().__init__(address, _Handler)

    def close_triton_connection(self) -> None:
        """Close this thread's connection to tritonserver (its client went away)."""
        connection = getattr(self._connections, "triton", None)
        if connection is not None:
            connection.close()
            self._connections.triton = None

    def triton_request(self, method: str, path: str, body: bytes, headers: dict) -> http.client.HTTPResponse:
        """Send one request to tritonserver; a kept-alive connection it closed meanwhile is
        reopened once."""
        for attempt in (1, 2):
            connection = getattr(self._connections, "triton", None)
            if connection is None:
                connection = http.client.HTTPConnection("127.0.0.1", self.triton_port, timeout=TRITON_TIMEOUT_S)
                self._connections.triton = connection
            try:
                connection.request(method, path, body=body, headers=headers)
                return connection.getresponse()
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                connection.close()
                self._connections.triton = None
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")


def start_front(host: str, port: int, triton_port: int, max_side: int, check_shapes: ShapeCheck) -> FrontServer:
    """The front listening on ``host:port``, serving in a daemon thread; ``shutdown()`` and
    ``server_close()`` stop it."""
    front = FrontServer((host, port), triton_port, max_side, check_shapes)
    threading.Thread(target=front.serve_forever, name="cminet-serve-front", daemon=True).start()
    return front
