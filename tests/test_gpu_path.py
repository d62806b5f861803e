"""The GPU path (engine build, native TensorRT runtime, CUDA buffers, threads) on test
doubles of TensorRT 10.3 / 11.x, cuda-python 12.6+ / 13 and pycuda (tests/gpu_doubles).

What these tests prove: that cminet calls TensorRT and CUDA with the right names,
arguments and order; that data reaches the "device" only through the copies, comes back
only after the stream is synchronised, and that every buffer, stream and context is
released; that mismatched engines, profiles, drivers and bindings are refused in one line.
What they cannot prove: kernels, FP16 numerics on a GPU, timing. The doubles' engine runs
ONNX Runtime on the CPU over the same FP16 ONNX; `make gpu-check` is the real-GPU check.
"""

from __future__ import annotations

import configparser
import contextlib
import json
import subprocess
import sys
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from cminet.runtime.contract import SIDECAR_KEYS, ContractError, sidecar_path
from cminet.runtime.errors import ModelFileError
from tests.gpu_doubles import gpu_doubles_fixture, installed, subprocess_env  # noqa: F401 - the fixture

REPO = Path(__file__).resolve().parents[1]
SHAPES = [(1, 1, 32, 32), (2, 1, 48, 64), (1, 1, 16, 24)]  # several sizes, batch > 1, non-square


@pytest.fixture(scope="session")
def fp16_onnx(tmp_path_factory) -> Path:
    """The FP16 ONNX of a small CMINet (same graph structure as the shipped one, fewer
    channels so the CPU stand-in for the engine runs in milliseconds)."""
    import torch

    from cminet.export.fp16 import convert_fp16
    from cminet.export.onnx_export import export_onnx
    from cminet.model import CMINet, CMINetConfig

    torch.manual_seed(0)
    model = CMINet(CMINetConfig(channels=8, embed_dim=16, num_heads=2, growth=4)).eval()
    folder = tmp_path_factory.mktemp("gpu-onnx")
    return convert_fp16(export_onnx(model, folder / "cminet.onnx"), folder / "cminet_fp16.onnx")


def reference(onnx: Path, mri: np.ndarray, other: np.ndarray) -> np.ndarray:
    """ONNX Runtime CPU on the same FP16 ONNX: what the double's engine must reproduce."""
    session = ort.InferenceSession(str(onnx), providers=["CPUExecutionProvider"])
    dtype = np.float16 if session.get_inputs()[0].type == "tensor(float16)" else np.float32
    return session.run(None, {"mri": mri.astype(dtype), "other": other.astype(dtype)})[0].astype(np.float32)


def inputs(shape, seed=0):
    rng = np.random.default_rng(seed)
    return rng.random(shape, dtype=np.float32), rng.random(shape, dtype=np.float32)


def build(onnx: Path, folder: Path, **kwargs) -> Path:
    from cminet.export.tensorrt_build import build_engine

    return build_engine(onnx, folder / "cminet_fp16.engine", **kwargs).engine


def assert_all_released(gpu) -> None:
    assert gpu.live_device_allocations() == [], [(a.what, a.size) for a in gpu.live_device_allocations()]
    assert gpu.live_pinned() == 0
    assert [d.primary_retains for d in gpu.devices] == [0] * len(gpu.devices)
    assert gpu.context_stack() == []  # nothing left pushed on this thread (pycuda)
    assert gpu.streams == {}


@contextlib.contextmanager
def strict_warnings():
    """cuda-bindings 13 deprecates int(cudaStream_t) (the 13 double warns on it): fail on it."""
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=r"int\(cudaStream_t\)", category=DeprecationWarning)
        yield


# -- build, run, parity, threads: every flavour --------------------------------------------
def test_engine_build_run_threads_and_release(gpu_doubles, fp16_onnx, tmp_path):
    """Build with the builder module, run through Fuser: outputs equal ONNX Runtime CPU on
    the same FP16 ONNX at several shapes and batch 2, from this thread and from two others
    at once; afterwards every device buffer, pinned buffer, stream and context is gone."""
    from cminet.export.tensorrt_build import tensorrt_status
    from cminet.runtime import Fuser

    gpu = gpu_doubles
    ok, reason = tensorrt_status()
    assert ok, reason
    assert_all_released(gpu)  # the status check opened CUDA and closed it again
    with strict_warnings():
        engine = build(fp16_onnx, tmp_path)
    assert_all_released(gpu)
    meta = json.loads(sidecar_path(engine).read_text())
    assert set(SIDECAR_KEYS) <= set(meta) and meta["strongly_typed"] is True
    assert 0 < meta["fp16_layers"] < meta["total_layers"]  # FP16 compute, some layers kept FP32

    with strict_warnings(), Fuser(engine) as fuser:
        assert fuser.info["backend"] == "tensorrt"
        for shape in SHAPES:
            a, b = inputs(shape)
            np.testing.assert_array_equal(fuser.infer(a, b), reference(fp16_onnx, a, b))

        def job(seed):
            a, b = inputs(SHAPES[1], seed)
            return fuser.infer(a, b), reference(fp16_onnx, a, b)

        with ThreadPoolExecutor(2) as pool:  # two threads at once, neither the constructing one
            for got, want in pool.map(job, [1, 2, 3, 4]):
                np.testing.assert_array_equal(got, want)
    assert_all_released(gpu)


def test_pinned_and_device_buffers_do_not_pile_up_across_shapes(fp16_onnx, tmp_path):
    """Audit item 4: a larger shape replaces the device *and* the pinned buffers; smaller
    ones reuse them. Three of each stay alive, however many shapes come."""
    from cminet.runtime.backends.tensorrt import TensorRTBackend

    with installed("trt10.3-cudapython12") as gpu:
        backend = TensorRTBackend(build(fp16_onnx, tmp_path))
        for shape in [(1, 1, 16, 16), (1, 1, 32, 32), (1, 1, 16, 16), (2, 1, 32, 32), (1, 1, 48, 48), (1, 1, 32, 32)]:
            backend.run(*inputs(shape))
            assert gpu.live_pinned() == 3
            assert len(gpu.live_device_allocations("buffer")) == 3
        backend.close()
        assert_all_released(gpu)


def test_gpu_memory_is_weights_activations_and_io_buffers(fp16_onnx, tmp_path):
    """Audit item 10: gpu_memory_mb() is the device memory this backend allocated (engine
    weights + context activations + I/O buffers), the same quantity as the other GPU
    backends report, not the activations alone and not pinned host memory."""
    from cminet.runtime.backends.tensorrt import TensorRTBackend

    with installed("trt10.3-cudapython12") as gpu:
        backend = TensorRTBackend(build(fp16_onnx, tmp_path))
        backend.run(*inputs((2, 1, 48, 64)))
        ledger = sum(a.size for a in gpu.live_device_allocations())
        assert {a.what for a in gpu.live_device_allocations()} == {"engine weights", "activations", "buffer"}
        assert backend.gpu_memory_mb() == pytest.approx(ledger / 2**20)
        backend.close()


# -- negative controls: break the data flow, watch parity fail --------------------------
@pytest.mark.parametrize("drop", ["synchronize", "htod_async"])
def test_negative_control_dropping_a_copy_or_the_synchronise_breaks_parity(fp16_onnx, tmp_path, monkeypatch, drop):
    """The doubles only move data on a stream copy and only at synchronise, so a runtime
    that skips either returns garbage (NaN from fresh buffers, or the previous result)."""
    from cminet.runtime.backends.tensorrt import TensorRTBackend
    from cminet.runtime.cuda import CudaPython

    with installed("trt10.3-cudapython12"):
        backend = TensorRTBackend(build(fp16_onnx, tmp_path))
        a, b = inputs((1, 1, 32, 32))
        np.testing.assert_array_equal(backend.run(a, b), reference(fp16_onnx, a, b))  # intact: equal
        monkeypatch.setattr(CudaPython, drop, lambda *args: None)
        c, d = inputs((1, 1, 32, 32), seed=7)
        assert not np.allclose(backend.run(c, d), reference(fp16_onnx, c, d), equal_nan=False)
        monkeypatch.undo()
        backend.close()


def test_negative_control_pycuda_context_held_by_one_thread_fails_elsewhere(fp16_onnx, tmp_path, monkeypatch):
    """Audit item 5: with pycuda the context must be pushed on the calling thread. The old
    code pushed it once in the constructor; emulate that and a second thread fails with
    'invalid device context', exactly the bug the per-call activate() fixes."""
    from cminet.runtime.backends.tensorrt import TensorRTBackend
    from cminet.runtime.cuda import PyCuda

    with installed("trt10.3-pycuda") as gpu:
        engine = build(fp16_onnx, tmp_path)
        monkeypatch.setattr(PyCuda, "activate", lambda self: contextlib.nullcontext())
        import pycuda.driver as drv

        drv.init()
        ctx = drv.Device(0).retain_primary_context()
        ctx.push()  # the constructing thread holds the context, as before the fix
        backend = TensorRTBackend(engine)
        a, b = inputs((1, 1, 32, 32))
        backend.run(a, b)  # fine on this thread
        errors = []

        def other_thread():
            try:
                backend.run(a, b)
            except drv.LogicError as exc:
                errors.append(str(exc))

        worker = threading.Thread(target=other_thread)
        worker.start()
        worker.join()
        assert len(errors) == 1 and "invalid device context" in errors[0]
        monkeypatch.undo()
        backend.close()
        drv.Context.pop()
        ctx.detach()
        assert_all_released(gpu)


# -- refusals: sidecar, profile, bindings, driver -----------------------------------------
def _one_line(exc_info) -> str:
    text = str(exc_info.value)
    assert "\n" not in text
    return text


def test_sidecar_mismatches_are_refused_before_deserialising(fp16_onnx, tmp_path):
    """Audit item 8: a stale engine (sha256), another TensorRT, another GPU model or another
    compute capability is refused in one line, and TensorRT never sees the bytes."""
    from cminet.runtime.backends.tensorrt import TensorRTBackend

    with installed("trt10.3-cudapython12") as gpu:
        engine = build(fp16_onnx, tmp_path)
        good = json.loads(sidecar_path(engine).read_text())
        cases = {
            "engine_sha256": ({**good, "engine_sha256": "0" * 64}, "does not match its sidecar"),
            "tensorrt": ({**good, "tensorrt_version": "10.0.1.6"}, "built with TensorRT 10.0.1.6"),
            "gpu model": ({**good, "gpu": {**good["gpu"], "name": "NVIDIA GeForce RTX 3090"}},
                          "built on NVIDIA GeForce RTX 3090, this GPU is NVIDIA Jetson Orin Nano"),
            "compute capability": ({**good, "gpu": {**good["gpu"], "compute_capability": "8.6"}},
                                   "built for compute capability 8.6"),
            "old sidecar": ({k: v for k, v in good.items() if k != "engine_sha256"}, "sidecar lacks engine_sha256"),
        }
        for meta, message in cases.values():
            sidecar_path(engine).write_text(json.dumps(meta))
            with pytest.raises(ModelFileError) as caught:
                TensorRTBackend(engine)
            assert message in _one_line(caught)
        assert gpu.calls.get("deserialize_cuda_engine", 0) == 1  # only the builder's own inspection
        assert_all_released(gpu)


def test_profiles_are_validated_in_one_place(fp16_onnx, tmp_path):
    """Audit item 9: min ≤ opt ≤ max and ≥ 16 px, checked by contract.validate_profile for the
    module (before TensorRT is touched) and at run time against the engine's profile."""
    from cminet.export.tensorrt_build import build_engine
    from cminet.runtime import Fuser

    with installed("trt10.3-cudapython12") as gpu:
        with pytest.raises(ContractError, match="min ≤ opt ≤ max"):
            build_engine(fp16_onnx, tmp_path / "x.engine", (1, 16, 16), (1, 512, 512), (1, 256, 256))
        with pytest.raises(ContractError, match="16"):
            build_engine(fp16_onnx, tmp_path / "x.engine", (1, 8, 8), (1, 16, 16), (1, 32, 32))
        assert gpu.calls.get("Builder", 0) == 0
        engine = build(fp16_onnx, tmp_path, max_shape=(2, 64, 64), opt_shape=(1, 32, 32))
        with Fuser(engine) as fuser:
            with pytest.raises(ContractError, match="outside the model's profile"):
                fuser.infer(*inputs((4, 1, 32, 32)))
            assert gpu.calls.get("execute_async_v3", 0) == 0


@pytest.mark.parametrize("argv, message", [
    (["--max-shape", "1x8x8"], "--max-shape: shape '1x8x8': need N ≥ 1 and H, W ≥ 16"),
    (["--opt-shape", "1x512x512", "--max-shape", "1x256x256"], "min ≤ opt ≤ max"),
])
def test_builder_cli_rejects_bad_profiles_in_one_line(fp16_onnx, tmp_path, argv, message):
    proc = subprocess.run([sys.executable, "-m", "cminet.export.tensorrt_build", str(fp16_onnx),
                           str(tmp_path / "x.engine"), *argv], capture_output=True, text=True,
                          env=subprocess_env("trt10.3-cudapython12"), cwd=REPO, timeout=120)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()] and message in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.torch_free
def test_bindings_too_old_or_too_new_for_the_driver_say_what_to_install():
    """Audit item 6: cuda-python before 12.6.1 has no cuda.bindings; 13.x on a CUDA 12 driver
    fails with cudaErrorInsufficientDriver. Both name the pin that works."""
    from cminet.runtime.cuda import CudaUnavailable, open_cuda

    with installed("tensorrt=10.3;cuda=cuda-python-12.5"), pytest.raises(CudaUnavailable) as caught:
        open_cuda(0)
    assert "cuda-python 12.5.0 predates cuda.bindings (12.6.1)" in caught.value.args[0]
    assert "cuda-python>=12.6.1,<13" in caught.value.args[0]
    with installed("tensorrt=11.1;cuda=cuda-python-13;driver=12.6"), pytest.raises(CudaUnavailable) as caught:
        open_cuda(0)
    assert "needs a newer driver than this one (CUDA 12.6): pip install 'cuda-python>=12.6.1,<13'" in _one_line(caught)
    with installed("tensorrt=10.3;cuda=cuda-python-12.6;gpus=0") as gpu:
        from cminet.export.tensorrt_build import tensorrt_status

        ok, reason = tensorrt_status()
        assert not ok and "no usable CUDA GPU" in reason and "cudaErrorNoDevice" in reason
        assert_all_released(gpu)


@pytest.mark.torch_free
def test_extras_pin_cuda_python_per_platform():
    """Audit item 6: 12.6.1 or newer everywhere; below 13 on aarch64 (JetPack 6's CUDA 12 driver)."""
    from packaging.requirements import Requirement

    config = configparser.ConfigParser()
    config.read(REPO / "setup.cfg")
    extras = config["options.extras_require"]
    for extra in ("gpu", "trt"):
        reqs = [Requirement(line) for line in extras[extra].splitlines() if line.strip().startswith("cuda-python")]
        for machine, allowed, refused in (("aarch64", "12.6.1", ["12.6.0", "13.0.0"]),
                                          ("x86_64", "13.0.0", ["12.6.0"])):
            active = [r for r in reqs if r.marker is None or r.marker.evaluate({"platform_machine": machine})]
            assert len(active) == 1, (extra, machine)
            assert active[0].specifier.contains(allowed) and not any(active[0].specifier.contains(v) for v in refused)


# -- ONNX Runtime's TensorRT provider (audit item 7) ------------------------------------------
@pytest.mark.torch_free
def test_ort_trt_provider_keeps_strong_typing_and_gets_the_profile():
    from cminet.runtime.backends.onnxruntime import provider_chain

    chain = provider_chain("ort-trt", Path("/models/cminet_fp16.onnx"), device=1)
    (trt_name, trt), (cuda_name, cuda), cpu = chain
    assert (trt_name, cuda_name, cpu) == ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
    assert not trt.get("trt_fp16_enable") and not trt.get("trt_int8_enable")  # strongly typed network
    assert trt["device_id"] == 1 and cuda["device_id"] == 1
    assert trt["trt_profile_min_shapes"] == "mri:1x1x16x16,other:1x1x16x16"
    assert trt["trt_profile_opt_shapes"] == "mri:1x1x256x256,other:1x1x256x256"
    assert trt["trt_profile_max_shapes"] == "mri:4x1x1024x1024,other:4x1x1024x1024"


@pytest.mark.torch_free
def test_ort_io_binding_puts_the_output_on_the_sessions_device():
    from cminet.runtime.backends.onnxruntime import OnnxRuntimeBackend

    bound = {}

    class Binding:
        def bind_cpu_input(self, name, value):
            pass

        def bind_output(self, name, device_type="cpu", device_id=0, *rest):
            bound.update(name=name, device_type=device_type, device_id=device_id)

        def copy_outputs_to_cpu(self):
            return [np.zeros((1, 1, 16, 16), np.float32)]

    class Session:
        def io_binding(self):
            return Binding()

        def run_with_iobinding(self, binding):
            pass

    backend = OnnxRuntimeBackend.__new__(OnnxRuntimeBackend)
    backend.session, backend.use_binding, backend.output_name, backend.device = Session(), True, "fused", 1
    backend.run(*inputs((1, 1, 16, 16)))
    assert bound == {"name": "fused", "device_type": "cuda", "device_id": 1}


# -- the commands, in child processes ------------------------------------------------------
def test_device_builder_command_on_tensorrt_11_needs_no_torch(fp16_onnx, tmp_path):
    code = ("import sys; from cminet.export.tensorrt_build import main; rc = main(sys.argv[1:]); "
            "assert 'torch' not in sys.modules, 'torch imported'; sys.exit(rc)")
    proc = subprocess.run([sys.executable, "-W", "error::DeprecationWarning", "-c", code, str(fp16_onnx),
                           str(tmp_path / "e.engine"), "--max-shape", "2x512x512"], capture_output=True, text=True,
                          env=subprocess_env("trt11.1-cudapython13"), cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "layers FP16" in proc.stdout
    meta = json.loads(sidecar_path(tmp_path / "e.engine").read_text())
    assert meta["tensorrt_version"].startswith("11.1") and meta["profile"]["max"] == [2, 512, 512]


@pytest.mark.slow
def test_cminet_export_engine_yes_builds_on_the_doubles(tmp_path):
    """`cminet-export --fp16 --engine yes` end to end (PyTorch export, FP16, verification,
    engine) in a child process that imports the doubles."""
    import torch

    from cminet.checkpoint import save_checkpoint
    from cminet.model import CMINet, CMINetConfig

    torch.manual_seed(0)
    weights = save_checkpoint(CMINet(CMINetConfig(channels=8, embed_dim=16, num_heads=2, growth=4)),
                              tmp_path / "w.safetensors")
    code = "from cminet.export.cli import main; main()"
    proc = subprocess.run([sys.executable, "-c", code, "--weights", str(weights), "--out", str(tmp_path / "out"),
                           "--fp16", "--engine", "yes", "--no-verify", "--no-slim", "--max-shape", "1x256x256"],
                          capture_output=True, text=True, env=subprocess_env("trt10.3-pycuda"), cwd=REPO,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads((tmp_path / "out/export_report.json").read_text())
    assert report["engine"]["built"] is True and report["engine"]["fp16_layers"] > 0
    assert (tmp_path / "out/cminet_fp16.engine.json").is_file()


# -- make gpu-check ---------------------------------------------------------------------------
@pytest.mark.torch_free
def test_gpu_check_without_a_gpu_exits_0_and_says_so(tmp_path):
    proc = subprocess.run(["make", "-s", "gpu-check", f"PYTHON={sys.executable}", f"GPU_CHECK_ARGS=--out {tmp_path}"],
                          capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "gpu-check: no NVIDIA GPU here, nothing to check (" in proc.stdout
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_gpu_check_on_the_doubles_runs_stage_b_and_reports(fp16_onnx, tmp_path):
    """On pycuda + TensorRT 10.3 doubles (no torch CUDA, no ORT GPU providers): the CUDA and
    TensorRT steps run, the others print one line each saying why they were skipped, and
    the JSON renders as README rows. The numbers are the doubles', not a GPU's."""
    import shutil

    onnx_dir = tmp_path / "onnx"
    onnx_dir.mkdir()
    shutil.copy(fp16_onnx, onnx_dir / "cminet_fp16.onnx")
    shutil.copy(fp16_onnx.with_name("cminet.onnx"), onnx_dir / "cminet.onnx")
    proc = subprocess.run([sys.executable, "-m", "cminet.benchmarks.gpu_check", "--quick", "--out", str(tmp_path),
                           "--onnx-dir", str(onnx_dir)], capture_output=True, text=True,
                          env=subprocess_env("trt10.3-pycuda"), cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    skipped = [line for line in proc.stdout.splitlines() if line.startswith("skipped ")]
    assert [line.split(":")[0] for line in skipped] == ["skipped torch-latency", "skipped ort-cuda-parity",
                                                        "skipped ort-trt-vs-native"]
    (result,) = tmp_path.glob("nvidia-jetson-orin-nano-*.json")
    report = json.loads(result.read_text())
    assert set(report["steps"]) == {"pinned-round-trip", "runtime-threads", "engine-build", "engine-parity",
                                    "engine-latency", "version-refusal"}
    assert report["steps"]["engine-build"]["fp16_layers"] > 0 and report["failed"] == []
    rendered = subprocess.run([sys.executable, "-m", "cminet.benchmarks.report", str(result)], capture_output=True,
                              text=True, cwd=REPO, timeout=60).stdout
    assert "| tensorrt | fp16 | 256×256 | 1 |" in rendered and "skipped torch-latency:" in rendered


@pytest.mark.slow
@pytest.mark.parametrize("flavour", ["trt10.3-pycuda", "trt11.1-cudapython13"])
def test_bench_measures_the_engine_with_only_tensorrt_and_cuda_bindings(tmp_path, flavour):
    """Audit items 1 and 2: ``cminet-bench --backends tensorrt`` on a machine like a Jetson
    (TensorRT + cuda-python or pycuda, CPU-only torch and ONNX Runtime) finds the backend,
    builds the engine from the shipped FP16 ONNX, hands the worker the engine's path (not
    a description of the build) and reports latency, GPU memory and drift."""
    from cminet.runtime.contract import TOLERANCES

    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, "-m", "cminet.benchmarks.cli", "--backends", "tensorrt", "--quick",
                           "--iters", "3", "--json", str(out), "--workdir", str(tmp_path / "work")],
                          capture_output=True, text=True, timeout=600, env=subprocess_env(flavour), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(out.read_text())
    assert report["skipped"] == []
    (row,) = report["results"]
    assert (row["backend"], row["precision"]) == ("tensorrt", "fp16") and row["model"].endswith(".engine")
    assert row["latency_ms"]["p50"] > 0 and row["gpu_mem_mb"] is not None
    assert 0 < row["drift"]["max_abs"] <= TOLERANCES["fp16"].max_abs and row["drift"]["count"] == 3


# -- the GPU memory model -----------------------------------------------------------------------
ORIN_NANO_1GB = "tensorrt=10.3;cuda=cuda-python-12.6;driver=12.6;gpu=Jetson Orin Nano@8.7@1024"


def test_gpu_backends_tile_against_the_devices_free_memory(fp16_onnx, tmp_path):
    """A GPU backend's budget is its device's free memory read through the CUDA bindings (a
    small fake GPU here), not the host's: sizes a CPU would fuse whole are tiled or refused in
    one line before anything is allocated."""
    from cminet.runtime import Fuser
    from cminet.runtime.cuda import open_cuda
    from cminet.runtime.errors import SizeLimitError
    from cminet.runtime.tiling import SizePolicy

    with installed(ORIN_NANO_1GB) as gpu:
        with open_cuda(0) as cuda:
            free = cuda.mem_info()[0]
        engine = build(fp16_onnx, tmp_path, max_shape=(1, 64, 64), opt_shape=(1, 32, 32))
        with Fuser(engine) as fuser:
            policy = fuser.size_policy()
            assert policy.where == "on the GPU" and 0 < policy.budget <= 0.75 * 1024 * 2**20
        assert_all_released(gpu)
    budget = int(0.75 * free)
    fused = SizePolicy("torch-cuda", "fp16", budget=budget, where="on the GPU")
    explicit = SizePolicy("ort-cuda", "fp16", budget=budget, where="on the GPU")
    host = SizePolicy("torch-cuda", "fp16", budget=64 * 2**30)
    assert fused.plan(512, 512) is None and host.plan(2048, 2048) is None  # fits whole on a big machine
    plan = fused.plan(2048, 2048)  # about 2 GB of activations: tiles on the 1 GB GPU
    assert plan is not None and plan.count > 1
    with pytest.raises(SizeLimitError, match="available on the GPU"):
        fused.plan(2048, 2048, tile="off")
    assert explicit.largest_square() < fused.largest_square()  # the score matrix costs GPU memory too
