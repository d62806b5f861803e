"""`cminet serve` (a real tritonserver through PyTriton) and `cminet fuse --server`.

The server runs in its own environment, ``.venv-serve`` (``make test`` builds it with
``pip install -e '.[serve]'``): PyTriton 0.7 requires numpy < 2, and serving needs no torch.
The tests are its clients from this environment (``cminet[triton]``), on 127.0.0.1 only,
with bounded request counts."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sysconfig
import threading
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from cminet.cli import main
from cminet.runtime import Fuser
from cminet.runtime.backends.triton import server_message, split_url
from cminet.runtime.errors import ServerError
from cminet.runtime.folders import PAIR_TYPES, SAMPLES_DIR, list_pairs
from cminet.runtime.imaging import read_image
from cminet.serve import free_port, model_counters, python_library_env, start_server, stop_server

from .test_triton import shipped_fp32_onnx

REPO = Path(__file__).resolve().parents[1]
SERVE_PYTHON = Path(os.environ.get("CMINET_SERVE_PYTHON", REPO / ".venv-serve" / "bin" / "python")).absolute()
CLIENTS, REQUESTS_EACH, SIDE = 8, 2, 128  # 16 concurrent requests: a few seconds on 2 cores


@pytest.fixture(scope="module")
def onnx_model(tmp_path_factory) -> Path:
    return shipped_fp32_onnx(tmp_path_factory)


@pytest.fixture(scope="module")
def server(onnx_model, tmp_path_factory):
    """``cminet serve`` from the serving environment, with Prometheus metrics on."""
    pytest.importorskip("tritonclient.http", reason="pip install 'cminet[triton]'")
    if not SERVE_PYTHON.is_file():
        message = f"no serving environment at {SERVE_PYTHON} (make .venv-serve/bin/.installed)"
        if os.environ.get("CI"):
            pytest.fail(message)  # CI builds it: a missing one is a broken Makefile, not a skip
        pytest.skip(message)
    port, metrics_port = free_port(), free_port()
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    try:
        process = start_server("--model", str(onnx_model), "--metrics-port", str(metrics_port), "--max-batch-size",
                               "8", port=port, python=str(SERVE_PYTHON), log_path=log, timeout=180)
    except ServerError as exc:
        pytest.fail(f"{exc}\n{log.read_text()[-3000:]}")
    yield {"url": f"http://127.0.0.1:{port}", "port": port, "metrics_port": metrics_port, "process": process,
           "log": log}
    stop_server(process)


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.mark.slow
def test_fuse_server_matches_local_fusion_on_the_samples(server, onnx_model, tmp_path):
    out = tmp_path / "served"
    result = CliRunner().invoke(main, ["fuse", "--server", server["url"], "--samples", "--out", str(out)])
    assert result.exit_code == 0, result.output
    refs = list_pairs(SAMPLES_DIR, PAIR_TYPES, "all")
    # A Triton model does not say which network it is, so the client cannot know its token
    # grid and runs every pixel (runtime.content): like local fusion without skipping air.
    with Fuser(onnx_model, backend="ort-cpu", skip_air=False) as local:
        for ref in refs:
            expected = local.fuse(read_image(ref.mri_path), read_image(ref.other_path))
            served = read_image(out / ref.pair / ref.name)
            assert served.shape == expected.shape == ((256, 256) if ref.pair == "ct_mri" else (256, 256, 3)), ref.name
            assert np.abs(served.astype(int) - expected.astype(int)).max() <= 1, ref.name

    single = tmp_path / "one.png"
    ref = refs[0]
    result = CliRunner().invoke(main, ["fuse", "--server", server["url"], str(ref.mri_path), str(ref.other_path),
                                       "-o", str(single)])
    assert result.exit_code == 0, result.output
    assert np.array_equal(read_image(single), read_image(out / ref.pair / ref.name))

    # The colour modes run on the client, served or local alike.
    ref = next(r for r in refs if r.pair == "spect_mri")
    result = CliRunner().invoke(main, ["fuse", "--server", server["url"], "--colour", "strict", str(ref.mri_path),
                                       str(ref.other_path), "-o", str(single)])
    assert result.exit_code == 0, result.output
    with Fuser(onnx_model, backend="ort-cpu", colour="strict", skip_air=False) as local:
        strict = local.fuse(read_image(ref.mri_path), read_image(ref.other_path))
    assert np.abs(read_image(single).astype(int) - strict).max() <= 1
    assert not np.array_equal(strict, read_image(out / ref.pair / ref.name))  # strict is not balanced


@pytest.mark.slow
def test_concurrent_requests_are_batched(server, onnx_model):
    rng = np.random.default_rng(0)
    pairs = [tuple(rng.random((1, 1, SIDE, SIDE), dtype=np.float32) for _ in range(2)) for _ in range(CLIENTS)]
    with Fuser(onnx_model, backend="ort-cpu") as local:
        expected = [local.infer(a, b) for a, b in pairs]
    before = model_counters(server["metrics_port"])
    results: dict[int, list] = {}
    start = threading.Barrier(CLIENTS)

    def client(k: int) -> None:
        with Fuser(server["url"]) as remote:
            start.wait(timeout=60)
            results[k] = [remote.infer(*pairs[k]) for _ in range(REQUESTS_EACH)]

    threads = [threading.Thread(target=client, args=(k,)) for k in range(CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert sorted(results) == list(range(CLIENTS)), "a client failed or timed out"
    for k, outputs in results.items():
        for out in outputs:  # batched with other clients' pairs, the result is still this pair's
            np.testing.assert_allclose(out, expected[k], atol=1e-4)
    after = model_counters(server["metrics_port"])
    requests = after["nv_inference_count"] - before["nv_inference_count"]
    executions = after["nv_inference_exec_count"] - before["nv_inference_exec_count"]
    assert requests == CLIENTS * REQUESTS_EACH
    assert executions < requests, f"dynamic batching formed no batch ({executions:.0f} runs for {requests:.0f})"


@pytest.mark.slow
def test_bad_requests_get_one_line_errors_and_the_server_keeps_serving(server):
    import tritonclient.http as http

    good = np.random.default_rng(1).random((1, 1, 32, 32), dtype=np.float32)
    two_channels = np.concatenate([good, good], axis=1)
    with Fuser(server["url"]) as fuser:
        # run_impl sends what it is given (Backend.run would check it here first): Triton
        # checks dtypes and shapes, the runtime in the server checks the rest.
        remote = fuser.backend
        for mri, other, words in ((good.astype(np.int32), good.astype(np.int32), "expects 'FP32'"),
                                  (two_channels, two_channels, "expected shape N×1×H×W"),
                                  (good, good[..., :24], "input shapes differ")):
            with pytest.raises(ServerError, match=re.escape(words)) as caught:
                remote.run_impl(mri, other)
            assert "\n" not in str(caught.value) and "Traceback" not in str(caught.value), caught.value
        only_mri = http.InferInput("mri", list(good.shape), "FP32")
        only_mri.set_data_from_numpy(good)
        with pytest.raises(Exception) as caught:
            remote._client().infer("cminet", [only_mri])
        assert "missing required input(s) ['other']" in server_message(caught.value)
        assert fuser.infer(good, good).shape == good.shape  # still serving


def post_infer(url: str, body: bytes, headers: dict | None = None, path: str = "/v2/models/cminet/infer"):
    """One raw POST: (status, parsed JSON body)."""
    import http.client
    import json

    address, _, _ = split_url(url)
    host, port = address.rsplit(":", 1)
    connection = http.client.HTTPConnection(host, int(port), timeout=120)
    try:
        connection.request("POST", path, body=body, headers={"Content-Type": "application/json", **(headers or {})})
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


def binary_request(mri: np.ndarray, other: np.ndarray) -> tuple[bytes, dict]:
    """A KServe v2 body with both inputs as binary FP32 (what tritonclient sends)."""
    import json

    header = json.dumps({"inputs": [{"name": name, "shape": list(x.shape), "datatype": "FP32",
                                     "parameters": {"binary_data_size": x.nbytes}}
                                    for name, x in (("mri", mri), ("other", other))],
                         "outputs": [{"name": "fused", "parameters": {"binary_data": True}}]}).encode()
    return header + mri.tobytes() + other.tobytes(), {"Inference-Header-Content-Length": str(len(header))}


def server_rss_mb(process: subprocess.Popen) -> float:
    """Resident memory of `cminet serve`'s whole process group: the Python process (runtime
    and front), tritonserver and its Python backend stub."""
    found = subprocess.run(["pgrep", "-g", str(process.pid)], capture_output=True, text=True).stdout.split()
    total_kb = 0
    for pid in found:
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue  # ended meanwhile
        total_kb += int(re.search(r"^VmRSS:\s+(\d+) kB", status, re.MULTILINE).group(1))
    return total_kb / 1024


@pytest.mark.slow
def test_deeply_nested_json_is_refused_and_tritonserver_survives(server):
    # 100 KB bodies. tritonserver's JSON parser reads an input's data recursively and died on
    # the first; the front checks every body it passes on, not only inference requests.
    nested_data = b'{"inputs":[{"name":"mri","shape":[1,1,16,16],"datatype":"FP32","data":%s}]}'
    for path, body, depth in (("/v2/models/cminet/infer", nested_data % (b"[" * 50_000 + b"]" * 50_000), 50_003),
                              ("/v2/repository/index", b"[" * 30_000 + b"]" * 30_000, 30_000)):
        status, answer = post_infer(server["url"], body, path=path)
        assert status == 400 and f"nests {depth} levels deep" in answer["error"], (status, answer)
    assert server["process"].poll() is None, server["log"].read_text()[-3000:]
    good = np.random.default_rng(2).random((1, 1, 32, 32), dtype=np.float32)
    with Fuser(server["url"]) as remote:
        assert remote.infer(good, good).shape == good.shape  # still serving


@pytest.mark.slow
def test_refused_requests_do_not_grow_the_server(server):
    """Triton's Python backend keeps the inputs of a request refused there; the front refuses
    them before Triton, so refused requests cost the server nothing that stays."""
    side = 1024  # 8 MB of inputs per request: cheap to send, plain to see if each one stayed
    mri = np.zeros((1, 1, side, side), dtype=np.float32)
    refused = [binary_request(mri, mri[..., :side - 16].copy()),  # sizes differ
               binary_request(np.full_like(mri, np.nan), mri)]  # NaN
    server_rss_mb(server["process"])
    post_infer(server["url"], *refused[0])  # first sight of a size: buffers that are then reused
    before = server_rss_mb(server["process"])
    statuses = [post_infer(server["url"], *refused[k % 2])[0] for k in range(10)]
    grown = server_rss_mb(server["process"]) - before
    assert grown < 40, f"the server grew by {grown:.0f} MB over 10 refused {side}×{side} requests"
    assert statuses == [400] * 10


@pytest.mark.slow
def test_errors_are_cminets_one_line_without_traceback_or_paths(server):
    import tritonclient.http as http

    with Fuser(server["url"]) as fuser:
        client = fuser.backend._client()
        for side, words in ((0, "empty input of shape 1×1×0×0"), (8, "outside the model's profile")):
            inputs = []
            for name in ("mri", "other"):
                tensor = http.InferInput(name, [1, 1, side, side], "FP32")
                tensor.set_data_from_numpy(np.zeros((1, 1, side, side), dtype=np.float32))
                inputs.append(tensor)
            with pytest.raises(Exception) as caught:
                client.infer("cminet", inputs)
            message = caught.value.message()
            assert words in message and "\n" not in message, message
            assert "Traceback" not in message and "/" not in message, message
    # A body declared larger than any image fits is answered before it is sent.
    status, answer = post_infer(server["url"], b"", {"Content-Length": str(2**40)})
    assert status == 413 and "over this server's limit" in answer["error"], (status, answer)


@pytest.mark.slow
def test_unreachable_or_wrong_model_is_one_line(server, tmp_path):
    closed = free_port()
    sample = SAMPLES_DIR / "ct_mri/mri/34010.png", SAMPLES_DIR / "ct_mri/other/34010.png"
    for args, words in (([f"http://127.0.0.1:{closed}"], "no Triton server answers"),
                        ([server["url"], "--server-model", "cminet_trt"], "model 'cminet_trt' is not ready")):
        result = CliRunner().invoke(main, ["fuse", "--server", args[0], *args[1:], *map(str, sample),
                                           "-o", str(tmp_path / "x.png")])
        assert result.exit_code == 1 and words in result.output, result.output
        assert result.output.count("\n") == 1


@pytest.mark.slow
def test_a_taken_port_is_one_line(server):
    result = subprocess.run([str(SERVE_PYTHON), "-m", "cminet", "serve", "--port", str(server["port"])],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert result.stderr.strip() == f"error: --port {server['port']}: cannot listen on 127.0.0.1:{server['port']} " \
                                    "(Address already in use)"


@pytest.mark.slow
def test_shutdown_closes_the_ports(server):
    """Last in this file: stops the module's server the way Ctrl-C does."""
    assert port_open(server["port"]) and port_open(server["metrics_port"])
    assert stop_server(server["process"]) == 0, server["log"].read_text()[-3000:]
    assert "server stopped" in server["log"].read_text()
    assert not port_open(server["port"]) and not port_open(server["metrics_port"])


def test_stub_finds_this_interpreters_libpython():
    libdir = sysconfig.get_config_var("LIBDIR")
    env = python_library_env({"LD_LIBRARY_PATH": f"/opt/x:{libdir}"})
    assert env["LD_LIBRARY_PATH"] == f"{libdir}:/opt/x"  # first, and only once
    assert python_library_env({})["LD_LIBRARY_PATH"] == libdir


def test_server_urls():
    assert split_url("http://127.0.0.1:8000") == ("127.0.0.1:8000", False, "cminet")
    assert split_url("localhost:9000/cminet_onnx") == ("localhost:9000", False, "cminet_onnx")
    assert split_url("https://triton.example") == ("triton.example:443", True, "cminet")
    with pytest.raises(ServerError, match="expected http://HOST:PORT"):
        split_url("ftp://host")


def _serve_alone(tmp_path, env=None) -> tuple[subprocess.Popen, int, Path]:
    """A `cminet serve` of its own (the module's server keeps serving the other tests)."""
    if not SERVE_PYTHON.is_file():
        pytest.skip(f"no serving environment at {SERVE_PYTHON}")
    port, log = free_port(), tmp_path / "serve.log"
    with log.open("wb") as sink:
        process = subprocess.Popen([str(SERVE_PYTHON), "-m", "cminet", "serve", "--port", str(port), "--backend",
                                    "ort-cpu"], stdout=sink, stderr=subprocess.STDOUT, start_new_session=True,
                                   env=env, cwd=tmp_path)
    from cminet.serve import wait_until_ready

    try:
        wait_until_ready(f"http://127.0.0.1:{port}", timeout=180, process=process)
    except Exception:
        stop_server(process)
        pytest.fail(log.read_text()[-3000:])
    return process, port, log


@pytest.mark.slow
def test_a_dead_tritonserver_ends_cminet_serve_with_an_error_and_no_leftovers(tmp_path):
    import signal
    import tempfile

    before = set(Path(tempfile.gettempdir()).glob("cminet-serve-*"))
    process, port, log = _serve_alone(tmp_path)
    found = subprocess.run(["pgrep", "-g", str(process.pid), "-x", "tritonserver"], capture_output=True, text=True)
    assert found.stdout.split(), "no tritonserver in the server's process group"
    os.kill(int(found.stdout.split()[0]), signal.SIGKILL)  # as an OOM killer or a crash would
    assert process.wait(timeout=120) == 1
    text = log.read_text()
    assert text.splitlines()[-1].startswith("error: tritonserver stopped unexpectedly")
    assert set(Path(tempfile.gettempdir()).glob("cminet-serve-*")) == before  # its workspace is gone


@pytest.mark.slow
def test_a_long_temporary_folder_does_not_break_the_servers_sockets(tmp_path):
    deep = tmp_path / ("x" * 60) / ("y" * 60)
    deep.mkdir(parents=True)
    process, port, log = _serve_alone(tmp_path, env={**os.environ, "TMPDIR": str(deep), "PYTRITON_HOME": str(deep),
                                                     "XDG_CACHE_HOME": str(deep)})
    try:
        with Fuser(f"http://127.0.0.1:{port}") as remote:
            a = np.random.default_rng(0).random((1, 1, 32, 32), dtype=np.float32)
            assert remote.infer(a, a).shape == a.shape
    finally:
        assert stop_server(process) == 0, log.read_text()[-2000:]
