"""PyTorch behind the runtime's :class:`~cminet.runtime.backends.base.Backend` interface: the
FP32 reference every other backend is compared with, and what ``cminet-bench`` measures as
``torch-cpu`` / ``torch-cuda``.

On the GPU the reference is exact: FP32 runs with TF32 off (TF32 matmuls and convolutions
put the shipped model 5.5e-4 from the CPU, beyond the FP32 tolerance; with it off, 1.5e-6 —
measured on an H200). Training keeps PyTorch's own TF32 setting: it is faster and a trained
model's weights do not need bit-level agreement. Eager PyTorch launches ~550 kernels per
256² forward, so on the GPU each input shape is captured once as a CUDA graph and replayed
(the last few shapes kept, like ov-cpu's compilations); ``cuda_graphs=False`` runs eager.
``compile=True`` runs ``torch.compile`` instead (mode ``reduce-overhead``: its own graphs on
CUDA), refused in one line where the compiler it needs is missing; its first call per shape
compiles (tens of seconds), which the bench reports as cold start.

It lives on the torch side and is reached through the registry
(:data:`cminet.runtime.contract.BACKENDS`), so importing the runtime never imports torch.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch

from cminet.fusion import load_pretrained
from cminet.model import CMINet
from cminet.runtime.backends.base import Backend, BackendUnavailable, ShapeCache
from cminet.runtime.contract import ContractError, backend_spec
from cminet.runtime.errors import SizeLimitError

GRAPHS_KEPT = 4  # CUDA graphs held at once (each holds its activations' memory)
WARMUP_RUNS = 2  # before a capture: allocations and cuDNN's algorithm choice happen outside it


@contextlib.contextmanager
def exact_fp32(enabled: bool = True) -> Iterator[None]:
    """TF32 off for matmuls and cuDNN inside the block (process-wide flags, restored after)."""
    if not enabled:
        yield
        return
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def compile_unavailable(device: torch.device) -> str | None:
    """Why ``torch.compile`` (inductor) cannot run on ``device`` here, or None."""
    if importlib.util.find_spec("torch._inductor") is None:
        return f"this torch {torch.__version__} has no inductor"
    if device.type == "cuda" and importlib.util.find_spec("triton") is None:
        return "torch.compile on CUDA needs the triton package (pip install triton)"
    if device.type == "cpu" and not any(shutil.which(c) for c in (os.environ.get("CXX", ""), "g++", "c++", "clang++")
                                        if c):
        return "torch.compile on the CPU needs a C++ compiler (g++ or clang++)"
    return None


class CudaGraph:
    """One forward pass captured for one input shape: static input and output tensors on the
    device; a call copies the inputs in, replays the graph and copies the output out."""

    def __init__(self, forward: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], shape: tuple[int, ...],
                 device: torch.device, dtype: torch.dtype):
        self.a = torch.zeros(shape, device=device, dtype=dtype)
        self.b = torch.zeros(shape, device=device, dtype=dtype)
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            for _ in range(WARMUP_RUNS):
                forward(self.a, self.b)
        torch.cuda.current_stream(device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.out = forward(self.a, self.b)

    def __call__(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        self.a.copy_(a)
        self.b.copy_(b)
        self.graph.replay()
        return self.out


class TorchBackend(Backend):
    def __init__(self, path: Path, name: str = "torch-cpu", device: int | None = None, threads: int | None = None,
                 precision: str | None = None, cuda_graphs: bool | None = None, compile: bool = False):
        spec = backend_spec(name)
        if device is not None and name == "torch-cpu":
            raise ContractError("device: torch-cpu runs on the CPU; a CUDA device needs torch-cuda")
        if threads is not None and name == "torch-cuda":
            raise ContractError("threads: torch-cuda runs on the GPU; CPU threads are for torch-cpu")
        if cuda_graphs and name != "torch-cuda":
            raise ContractError(f"cuda_graphs: {name} runs on the CPU; CUDA graphs need torch-cuda")
        if cuda_graphs and compile:
            raise ContractError("cuda_graphs and compile: choose one (torch.compile's reduce-overhead mode captures "
                                "its own graphs)")
        precision = precision or "fp32"
        if precision not in spec.precisions:
            raise BackendUnavailable(f"{name}: precision {precision!r} not offered ({', '.join(spec.precisions)})")
        if name == "torch-cuda":
            if not torch.cuda.is_available():
                raise BackendUnavailable("torch-cuda: this torch build sees no CUDA GPU")
            self.device = torch.device(f"cuda:{device or 0}")
        else:
            self.device = torch.device("cpu")
            if threads:
                torch.set_num_threads(threads)
        self.name, self.precision = name, precision
        self.dtype = torch.float16 if precision == "fp16" else torch.float32
        self.model = load_pretrained(path, device=str(self.device)).to(self.dtype)
        self.config_json = self.model.config.to_json()
        self._setup(cuda_graphs=name == "torch-cuda" if cuda_graphs is None else cuda_graphs, compile=compile)

    def _setup(self, cuda_graphs: bool = False, compile: bool = False) -> None:
        self.mode = "compile" if compile else "graph" if cuda_graphs else "eager"
        self.compiles_per_shape = self.mode != "eager"
        self._lock = threading.RLock()  # a graph's static buffers serve one call at a time
        self._forward: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = self.model
        self.compile_seconds: dict[tuple[int, ...], float] = {}  # first call per shape, where compiled
        if compile:
            reason = compile_unavailable(self.device)
            if reason:
                raise BackendUnavailable(f"{self.name}: compile: {reason}")
            mode = "reduce-overhead" if self.device.type == "cuda" else "default"
            self._forward = torch.compile(self.model, mode=mode, dynamic=False)
        self._graphs = ShapeCache(GRAPHS_KEPT, self._capture)

    def _capture(self, shape: tuple[int, ...]) -> CudaGraph:
        with exact_fp32(self.dtype == torch.float32):
            return CudaGraph(self.model, shape, self.device, self.dtype)

    @classmethod
    def from_model(cls, model: CMINet) -> TorchBackend:
        """A backend on a model already in memory (its device and dtype as they are), eager."""
        backend = cls.__new__(cls)
        param = next(model.parameters())
        backend.model, backend.device, backend.dtype = model.eval(), param.device, param.dtype
        backend.name = "torch-cuda" if param.device.type == "cuda" else "torch-cpu"
        backend.precision = "fp16" if param.dtype == torch.float16 else "fp32"
        backend.config_json = model.config.to_json()
        backend._setup()
        return backend

    @classmethod
    def unavailable(cls, name: str) -> str | None:
        if name == "torch-cuda" and not torch.cuda.is_available():
            return "torch-cuda: this torch build sees no CUDA GPU"
        return None

    @torch.no_grad()
    def forward_tensors(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """The network on tensors already on this backend's device and dtype, in its mode
        (eager, graph replay or compiled); what ``make gpu-check`` times with CUDA events.
        A graph's output is its static buffer: read it before the next call."""
        shape = tuple(a.shape)
        with self._lock, exact_fp32(self.dtype == torch.float32):
            if self.mode == "graph":
                return self._graphs.get_or_make(shape)(a, b)
            if self.mode == "compile" and shape not in self.compile_seconds:
                started = time.perf_counter()
                out = self._forward(a, b)
                self.compile_seconds[shape] = time.perf_counter() - started
                return out
            return self._forward(a, b)

    @torch.no_grad()
    def run_impl(self, mri: np.ndarray, other: np.ndarray) -> np.ndarray:
        a = torch.from_numpy(mri).to(self.device, self.dtype)
        b = torch.from_numpy(other).to(self.device, self.dtype)
        try:
            with self._lock if self.mode == "graph" else contextlib.nullcontext():  # (re-entrant below)
                out = self.forward_tensors(a, b)
                # .cpu() waits for the GPU; a graph's output buffer is overwritten by the next
                # replay, so it is always copied out.
                result = out.float().cpu().numpy()
                return result.copy() if self.mode == "graph" and result.base is not None else result
        except (torch.OutOfMemoryError, RuntimeError) as exc:
            if not isinstance(exc, torch.OutOfMemoryError) and "allocate" not in str(exc):
                raise
            raise SizeLimitError(f"out of {self.device.type.upper()} memory for a {a.shape[2]}×{a.shape[3]} "
                                 "image; fuse it in smaller tiles (tile=512, cminet fuse --tile 512)") from None

    def device_free_bytes(self) -> int | None:
        if self.device.type != "cuda":
            return None
        return int(torch.cuda.mem_get_info(self.device)[0])

    def gpu_memory_mb(self) -> float | None:
        if self.device.type != "cuda":
            return None
        return torch.cuda.max_memory_allocated(self.device) / 2**20

    def info(self) -> dict:
        return {"torch": torch.__version__, "device": str(self.device), "threads": torch.get_num_threads(),
                "mode": self.mode, "graphs": len(self._graphs),
                "compile_seconds": {"×".join(map(str, k)): round(v, 2) for k, v in self.compile_seconds.items()}}

    def close(self) -> None:
        self._graphs.clear()
