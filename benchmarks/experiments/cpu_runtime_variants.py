"""Issue #17 experiments behind docs/cpu-performance.md: each one times variants
interleaved in one process (A, B, C, then C, B, A, ...) so load from other processes hits
them alike, at batch 1 and 2 threads. Timing only: these are not product code and not tests.

    python benchmarks/experiments/cpu_runtime_variants.py ov-static  [--size 256]  # dynamic vs static OpenVINO
    python benchmarks/experiments/cpu_runtime_variants.py ov-split   [--size 256]  # ov-cpu with / without the split
    python benchmarks/experiments/cpu_runtime_variants.py channels                 # channel-count variants
    python benchmarks/experiments/cpu_runtime_variants.py mnn        # pip install MNN  (converts with mnnconvert)
    python benchmarks/experiments/cpu_runtime_variants.py ncnn       # pip install ncnn pnnx (exports from PyTorch)
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from unittest import mock

import numpy as np

SHIPPED_ONNX = Path(__file__).resolve().parents[2] / "cminet" / "weights" / "cminet.onnx"
THREADS = 2
GOAL_GFLOP = 2 * 4.32  # the budget: sgemm time for 2 × the shipped model's FLOPs at 256²


def inputs(size: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.random((1, 1, size, size), dtype=np.float32), rng.random((1, 1, size, size), dtype=np.float32)


def sgemm_gflops() -> float:
    """Best of five 1024³ FP32 matmuls (numpy), GFLOP/s."""
    x = np.random.default_rng(1).random((1024, 1024), dtype=np.float32)
    best = 0.0
    for _ in range(5):
        start = time.perf_counter()
        x @ x
        best = max(best, 2 * 1024**3 / (time.perf_counter() - start) / 1e9)
    return best


def interleaved(runners: dict[str, Callable[[], object]], blocks: int, per_block: int = 4) -> None:
    """Print each runner's median latency and block-median range, plus the goal budget."""
    times: dict[str, list[float]] = {name: [] for name in runners}
    block_medians: dict[str, list[float]] = {name: [] for name in runners}
    rates = []
    for block in range(blocks):
        rates.append(sgemm_gflops())
        for name in (list(runners) if block % 2 == 0 else list(runners)[::-1]):
            runners[name]()  # warm: the first call of a block compiles or fills caches
            samples = []
            for _ in range(per_block):
                start = time.perf_counter()
                runners[name]()
                samples.append(time.perf_counter() - start)
            times[name] += samples
            block_medians[name].append(1e3 * float(np.median(samples)))
    rate = float(np.median(rates))
    print(f"sgemm {rate:.0f} GFLOP/s (median of the blocks); budget at 256² {1e3 * GOAL_GFLOP / rate:.1f} ms")
    for name, values in times.items():
        print(f"{name:34s} p50 {1e3 * np.median(values):7.1f} ms   blocks "
              f"{min(block_medians[name]):.0f}-{max(block_medians[name]):.0f}")


def ort_cpu():
    """The runtime's own ort-cpu backend on the shipped ONNX (its session settings included)."""
    from cminet.runtime.backends.base import open_backend

    return open_backend("ort-cpu", SHIPPED_ONNX, threads=THREADS)


def ov_static(args) -> None:
    """The shipped ONNX on OpenVINO compiled with dynamic N/H/W and compiled for one shape."""
    import openvino as ov

    from cminet.runtime.backends.openvino import OV_CPU_CONFIG
    from cminet.runtime.contract import INPUT_NAMES

    a, b = inputs(args.size)
    feeds = dict(zip(INPUT_NAMES, (a, b), strict=True))
    core, config = ov.Core(), {**OV_CPU_CONFIG, "INFERENCE_NUM_THREADS": THREADS}
    dynamic = core.compile_model(core.read_model(str(SHIPPED_ONNX)), "CPU", config).create_infer_request()
    model = core.read_model(str(SHIPPED_ONNX))
    model.reshape({name: list(a.shape) for name in INPUT_NAMES})
    static = core.compile_model(model, "CPU", config).create_infer_request()
    ort = ort_cpu()
    interleaved({"ort-cpu": lambda: ort.run(a, b), "OpenVINO dynamic shapes": lambda: dynamic.infer(feeds),
                 "OpenVINO static shape": lambda: static.infer(feeds)}, args.blocks)


def ov_split(args) -> None:
    """ort-cpu, ov-cpu as shipped (static + split) and ov-cpu without the concatenation split."""
    from cminet.runtime.backends import openvino as ov_backend
    from cminet.runtime.backends.base import open_backend

    a, b = inputs(args.size)
    backends = {"ort-cpu": open_backend("ort-cpu", SHIPPED_ONNX, threads=THREADS),
                "ov-cpu (static shapes, split)": open_backend("ov-cpu", SHIPPED_ONNX, threads=THREADS)}
    with mock.patch.object(ov_backend, "split_concat_convolutions", lambda model: 0):
        backends["ov-cpu static shapes, no split"] = open_backend("ov-cpu", SHIPPED_ONNX, threads=THREADS)
    interleaved({name: (lambda x=x: x.run(a, b)) for name, x in backends.items()}, args.blocks)


CHANNEL_VARIANTS = {
    "shipped: channels 16, growth 8, L 3": {},
    "growth 16, 2 dense layers": {"growth": 16, "dense_layers": 2},
    "growth 16, 3 dense layers": {"growth": 16},
    "growth 8, 2 dense layers": {"dense_layers": 2},
    "channels 8": {"channels": 8},
    "K = 2 interactions (not the paper)": {"interactions": 2},
}


def channels(args) -> None:
    """Channel-count variants of the paper's structure, random weights, on both CPU backends."""
    import torch

    from cminet.export.onnx_export import export_onnx
    from cminet.model import CMINet, CMINetConfig, count_flops
    from cminet.runtime.backends.base import open_backend

    torch.manual_seed(0)
    a, b = inputs(256)
    runners = {}
    with tempfile.TemporaryDirectory() as folder:
        for index, (name, overrides) in enumerate(CHANNEL_VARIANTS.items()):
            model = CMINet(CMINetConfig(**overrides)).eval()
            with torch.no_grad():  # off the max rule: every layer's output matters
                for p in model.parameters():
                    p.add_(0.01 * torch.randn_like(p))
            path = export_onnx(model, Path(folder) / f"variant{index}.onnx")
            gflop = count_flops(model) / 1e9
            for backend in ("ort-cpu", "ov-cpu"):
                opened = open_backend(backend, path, threads=THREADS)
                runners[f"{name} [{gflop:.2f} GFLOP] {backend}"] = lambda x=opened: x.run(a, b)
        interleaved(runners, args.blocks, per_block=3)


def mnn(args) -> None:
    """MNN 3.x on the shipped ONNX (converted with mnnconvert) against ONNX Runtime."""
    import MNN.expr as expr
    import MNN.nn as mnn_nn

    a, b = inputs(args.size)
    with tempfile.TemporaryDirectory() as folder:
        converted = Path(folder) / "cminet.mnn"
        tool = shutil.which("mnnconvert") or str(Path(sys.executable).parent / "mnnconvert")
        subprocess.run([tool, "-f", "ONNX", "--modelFile", str(SHIPPED_ONNX), "--MNNModel", str(converted),
                        "--bizCode", "cminet"], check=True, capture_output=True)
        runtime = mnn_nn.create_runtime_manager(({"backend": "CPU", "numThread": THREADS, "precision": "high"},))
        module = mnn_nn.load_module_from_file(str(converted), ["mri", "other"], ["fused"], runtime_manager=runtime,
                                              shape_mutable=True)

    def run_mnn() -> np.ndarray:
        out = module.forward([expr.const(a, list(a.shape), expr.NCHW), expr.const(b, list(b.shape), expr.NCHW)])[0]
        return np.array(expr.convert(out, expr.NCHW).read(), copy=True).reshape(a.shape)

    ort = ort_cpu()
    print(f"MNN max |Δ| against ORT: {np.abs(run_mnn() - ort.run(a, b)).max():.1e}")
    interleaved({"ort-cpu": lambda: ort.run(a, b), "MNN": run_mnn}, args.blocks)


def ncnn(args) -> None:
    """ncnn on the shipped weights (pnnx export from PyTorch) against ONNX Runtime."""
    import ncnn as ncnn_lib
    import pnnx
    import torch
    import torch.nn.functional as F

    from cminet.fusion import load_pretrained
    from cminet.model import Attention

    def attention_for_pnnx(self, x, h, w):
        # Keys and values sliced instead of unbound: pnnx has no ncnn layer for torch.unbind.
        n, length, dim = x.shape
        q = self.q(x).reshape(n, length, self.num_heads, self.head_dim).transpose(1, 2)
        pooled = F.avg_pool2d(x.transpose(1, 2).reshape(n, dim, h, w), self.kv_pool).flatten(2).transpose(1, 2)
        kv = self.kv(pooled)
        k = kv[..., :dim].reshape(n, -1, self.num_heads, self.head_dim).transpose(1, 2)
        v = kv[..., dim:].reshape(n, -1, self.num_heads, self.head_dim).transpose(1, 2)
        attn = torch.softmax((q * self.scale) @ k.transpose(-2, -1), dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(n, length, dim))

    class AlignedCore(torch.nn.Module):
        """The network without its pad/crop (sizes here are multiples of 16)."""

        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, a, b):
            m = self.model
            out = m.tail(m.cnn(m.head(torch.cat([m.branch_a(a), m.branch_b(b)], dim=1))))
            return torch.clamp(torch.maximum(a, b) + out, 0.0, 1.0)

    a, b = inputs(args.size)
    with tempfile.TemporaryDirectory() as folder, mock.patch.object(Attention, "forward", attention_for_pnnx):
        core = AlignedCore(load_pretrained().eval())
        pnnx.export(core, str(Path(folder) / "core.pt"), (torch.from_numpy(a), torch.from_numpy(b)),
                    (torch.rand(1, 1, 512, 512), torch.rand(1, 1, 512, 512)))
        nets = {}
        for label, winograd in (("ncnn (Winograd)", True), ("ncnn (no Winograd)", False)):
            net = ncnn_lib.Net()
            net.opt.num_threads, net.opt.use_vulkan_compute = THREADS, False
            net.opt.use_winograd_convolution = winograd
            net.load_param(str(Path(folder) / "core.ncnn.param"))
            net.load_model(str(Path(folder) / "core.ncnn.bin"))
            nets[label] = net

    def runner(net):
        def run() -> np.ndarray:
            ex = net.create_extractor()
            ex.input("in0", ncnn_lib.Mat(a[0]).clone())
            ex.input("in1", ncnn_lib.Mat(b[0]).clone())
            return np.array(ex.extract("out0")[1]).reshape(a.shape)
        return run

    ort = ort_cpu()
    reference = ort.run(a, b)
    runners = {"ort-cpu": lambda: ort.run(a, b)}
    for label, net in nets.items():
        runners[label] = runner(net)
        print(f"{label} max |Δ| against ORT: {np.abs(runners[label]() - reference).max():.1e}")
    interleaved(runners, args.blocks)


EXPERIMENTS = {"ov-static": ov_static, "ov-split": ov_split, "channels": channels, "mnn": mnn, "ncnn": ncnn}

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("experiment", choices=EXPERIMENTS)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--blocks", type=int, default=6)
    cli = parser.parse_args()
    EXPERIMENTS[cli.experiment](cli)
