"""The torch backends: exact FP32, CUDA-graph replay per input shape (its cache and locking
proven here with a stand-in for the capture, which needs a GPU), and torch.compile."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from cminet import torch_backend
from cminet.fusion import DEFAULT_WEIGHTS, load_pretrained
from cminet.runtime import Fuser
from cminet.runtime.contract import ContractError
from cminet.torch_backend import GRAPHS_KEPT, TorchBackend, exact_fp32


@pytest.fixture(scope="module")
def model():
    return load_pretrained()


def test_exact_fp32_turns_tf32_off_and_restores_it():
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    try:
        with exact_fp32():
            assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = False, True


class StandInGraph:
    """What CudaGraph offers, on the CPU: static input/output buffers, replayed per call."""

    captures: list[tuple[int, ...]] = []
    tf32_at_capture: list[bool] = []

    def __init__(self, forward, shape, device, dtype):
        StandInGraph.captures.append(shape)
        StandInGraph.tf32_at_capture.append(torch.backends.cuda.matmul.allow_tf32)
        self.forward, self.a, self.b = forward, torch.zeros(shape, dtype=dtype), torch.zeros(shape, dtype=dtype)
        self.out = torch.zeros(shape, dtype=dtype)

    def __call__(self, a, b):
        self.a.copy_(a)
        self.b.copy_(b)
        self.out.copy_(self.forward(self.a, self.b))
        return self.out


def test_graphs_are_captured_once_per_shape_and_the_last_four_kept(model, monkeypatch):
    monkeypatch.setattr(torch_backend, "CudaGraph", StandInGraph)
    StandInGraph.captures, StandInGraph.tf32_at_capture = [], []
    backend = TorchBackend.from_model(model)
    backend._setup(cuda_graphs=True)
    eager = TorchBackend.from_model(model)
    rng = np.random.default_rng(0)
    shapes = [(1, 1, 32, 32), (1, 1, 32, 48), (1, 1, 32, 32), (1, 1, 48, 32), (2, 1, 32, 32), (1, 1, 64, 32),
              (1, 1, 32, 32)]
    torch.backends.cuda.matmul.allow_tf32 = True
    try:
        first = None
        for shape in shapes:
            a, b = (rng.random(shape, dtype=np.float32) for _ in range(2))
            out = backend.run(a, b)
            np.testing.assert_allclose(out, eager.run(a, b), atol=1e-6)
            if shape == (1, 1, 32, 32):
                if first is None:
                    first, kept = out, out.copy()
                else:
                    assert np.array_equal(first, kept)  # a returned result is a copy, not the graph's buffer
    finally:
        torch.backends.cuda.matmul.allow_tf32 = False
    assert StandInGraph.captures == [(1, 1, 32, 32), (1, 1, 32, 48), (1, 1, 48, 32), (2, 1, 32, 32), (1, 1, 64, 32)]
    assert len(backend._graphs) == GRAPHS_KEPT and backend.info()["mode"] == "graph"
    assert not any(StandInGraph.tf32_at_capture)  # FP32 graphs are captured exact


def test_one_graph_serves_several_threads_in_turn(model, monkeypatch):
    monkeypatch.setattr(torch_backend, "CudaGraph", StandInGraph)
    backend = TorchBackend.from_model(model)
    backend._setup(cuda_graphs=True)
    rng = np.random.default_rng(1)
    jobs = [tuple(rng.random((1, 1, 32, 32), dtype=np.float32) for _ in range(2)) for _ in range(8)]
    alone = [TorchBackend.from_model(model).run(a, b) for a, b in jobs]
    results: dict[int, np.ndarray] = {}

    def work(k):
        results[k] = backend.run(*jobs[k])

    threads = [threading.Thread(target=work, args=(k,)) for k in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for k, expected in enumerate(alone):
        np.testing.assert_allclose(results[k], expected, atol=1e-6)


def test_graph_and_compile_options_are_refused_where_they_cannot_run():
    with pytest.raises(ContractError, match="CUDA graphs need torch-cuda"):
        Fuser(DEFAULT_WEIGHTS, options={"cuda_graphs": True})
    with pytest.raises(ContractError, match="choose one"):
        Fuser(DEFAULT_WEIGHTS, backend="torch-cuda", options={"cuda_graphs": True, "compile": True})
    with pytest.raises(ContractError, match="compile: the ort-cpu backend cannot honour"):
        Fuser(backend="ort-cpu", options={"compile": True})


def test_compile_unavailable_is_one_line(monkeypatch):
    monkeypatch.setattr(torch_backend, "compile_unavailable", lambda device: "no compiler here")
    from cminet.runtime.backends.base import BackendUnavailable

    with pytest.raises(BackendUnavailable, match="torch-cpu: compile: no compiler here"):
        Fuser(DEFAULT_WEIGHTS, options={"compile": True})


@pytest.mark.slow
def test_compile_on_the_cpu_inductor_matches_eager_and_reports_its_compile_time():
    if torch_backend.compile_unavailable(torch.device("cpu")):
        pytest.skip(torch_backend.compile_unavailable(torch.device("cpu")))
    rng = np.random.default_rng(2)
    a, b = (rng.random((1, 1, 48, 48), dtype=np.float32) for _ in range(2))
    with Fuser(DEFAULT_WEIGHTS) as eager, Fuser(DEFAULT_WEIGHTS, options={"compile": True}) as compiled:
        np.testing.assert_allclose(compiled.infer(a, b), eager.infer(a, b), atol=1e-5)
        np.testing.assert_allclose(compiled.infer(b, a), eager.infer(b, a), atol=1e-5)
        info = compiled.info
    assert info["mode"] == "compile" and info["compile_seconds"]["1×1×48×48"] > 0
