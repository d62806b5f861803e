"""The runtime contract: shipped ONNX tied to the shipped weights, a comparator that
catches a wrong network, facts defined once, and a torch-free install that fuses and
benchmarks."""

import hashlib
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from cminet.fusion import DEFAULT_WEIGHTS
from cminet.runtime.compare import compare, drift, load_reference, worst
from cminet.runtime.contract import (
    META_WEIGHTS_SHA256,
    REFERENCE_FILE,
    TOLERANCES,
    ContractError,
    parse_shape,
    parse_size,
    shipped_dir,
    shipped_onnx,
    validate_profile,
)
from cminet.runtime.folders import SAMPLES_DIR

from .helpers import torch_free_env

REPO = Path(__file__).resolve().parents[1]


def _ort(path_or_bytes):
    import onnxruntime as ort

    source = path_or_bytes if isinstance(path_or_bytes, bytes) else str(path_or_bytes)
    return ort.InferenceSession(source, providers=["CPUExecutionProvider"])


def _run(session, a, b):
    return session.run(None, {"mri": a, "other": b})[0]


# -- the shipped ONNX and reference -------------------------------------------------------
def test_shipped_onnx_records_the_shipped_weights():
    digest = hashlib.sha256(DEFAULT_WEIGHTS.read_bytes()).hexdigest()
    props = {p.key: p.value for p in onnx.load(str(shipped_onnx("fp32"))).metadata_props}
    assert props[META_WEIGHTS_SHA256] == digest, "run `make shipped-onnx` after changing the shipped weights"
    with np.load(shipped_dir() / REFERENCE_FILE) as data:
        assert str(data["weights_sha256"]) == digest


def test_shipped_reference_is_the_shipped_weights_through_pytorch(shipped_model):
    reference = load_reference(shipped_dir() / REFERENCE_FILE)
    assert len(reference) == 3
    with torch.no_grad():
        for _, a, b, fused in reference:
            out = shipped_model(torch.from_numpy(a), torch.from_numpy(b)).numpy()
            assert np.abs(out - fused).max() <= 1e-5


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_shipped_onnx_matches_the_reference(precision):
    session = _ort(shipped_onnx(precision))
    result = drift(lambda a, b: _run(session, a, b), load_reference(shipped_dir() / REFERENCE_FILE))
    assert result.passed(TOLERANCES[precision]), result.summary()


def test_shipped_fp16_is_the_fp16_conversion_of_the_shipped_fp32(tmp_path):
    # The FP16 tolerance is loose by nature; this catches a changed FP16 weight exactly.
    from cminet.export.fp16 import convert_fp16

    fresh = _ort(convert_fp16(shipped_onnx("fp32"), tmp_path / "fresh.onnx"))
    shipped = _ort(shipped_onnx("fp16"))
    for _, a, b, _ in load_reference(shipped_dir() / REFERENCE_FILE):
        np.testing.assert_array_equal(_run(shipped, a, b), _run(fresh, a, b))


# -- the comparator catches a wrong network -----------------------------------------------
def _perturbed(proto: onnx.ModelProto, name: str, rng: np.random.Generator) -> bytes:
    model = onnx.ModelProto()
    model.CopyFrom(proto)
    init = next(i for i in model.graph.initializer if i.name == name)
    w = numpy_helper.to_array(init)
    # Noise, not a common scale factor: some weights have exact scale invariances (GADN's α
    # is normalised away, a bias before a LayerNorm ...), which no comparison can see.
    noise = rng.normal(0.0, 0.1 * (float(np.abs(w).mean()) + 1e-2), w.shape).astype(w.dtype)
    init.CopyFrom(numpy_helper.from_array(w + noise, name))
    return model.SerializeToString()


def test_perturbing_any_exported_weight_is_flagged(random_export, random_model):
    """Every weight of the exported FP32 graph matters: noise on any one of them moves the
    output beyond the FP32 tolerance against PyTorch."""
    proto = onnx.load(str(random_export["fp32"]))
    # The model's parameters: float initializers that are not folded constants ("/..." names
    # hold shapes, pads and scalars such as GELU's 1/√2).
    weights = [i.name for i in proto.graph.initializer if int(np.prod(i.dims)) > 1
               and i.data_type == onnx.TensorProto.FLOAT and not i.name.startswith("/")]
    assert len(weights) > 90
    rng = np.random.default_rng(0)
    a, b = (rng.random((1, 1, 48, 48), dtype=np.float32) for _ in range(2))
    with torch.no_grad():
        expected = random_model(torch.from_numpy(a), torch.from_numpy(b)).numpy()
    assert compare(expected, _run(_ort(random_export["fp32"]), a, b)).passed(TOLERANCES["fp32"])
    unnoticed = [name for name in weights
                 if compare(expected, _run(_ort(_perturbed(proto, name, rng)), a, b)).passed(TOLERANCES["fp32"])]
    assert unnoticed == []


def test_comparison_reports_metric_changes_and_worst_case():
    rng = np.random.default_rng(1)
    a, b = (rng.random((1, 1, 40, 40)).astype(np.float32) for _ in range(2))
    ref = np.maximum(a, b)
    same = compare(ref, ref.copy(), (a, b))
    assert same.max_abs == 0 and same.psnr_db == float("inf") and same.grey_levels == 0
    assert all(v == 0 for v in same.metric_change.values())
    off = compare(ref, np.clip(ref + 0.02, 0, 1), (a, b))
    assert off.max_abs == pytest.approx(0.02, abs=1e-6) and 30 < off.psnr_db < 40 and off.grey_levels in (5, 6)
    assert not off.passed(TOLERANCES["fp16"]) and same.passed(TOLERANCES["fp32"])
    both = worst([same, off])
    assert both.max_abs == off.max_abs and both.psnr_db == off.psnr_db and both.count == 2
    nan = compare(ref, np.full_like(ref, np.nan))
    assert not nan.passed(TOLERANCES["fp16"])
    with pytest.raises(ValueError, match="shape"):
        compare(ref, ref[..., :20])


# -- facts defined once -------------------------------------------------------------------
def _sources(home: str):
    for folder in ("cminet", "runtime", "export", "benchmarks"):
        yield from (p for p in (REPO / folder).rglob("*.py") if p.relative_to(REPO).as_posix() != home)


@pytest.mark.parametrize("pattern,what,home", [
    (r"""\(\s*["']mri["']\s*,\s*["']other["']""", "input names", "runtime/contract.py"),
    (r"""["']ort-cpu["']\s*,\s*["']ort-cuda["']""", "backend names", "runtime/contract.py"),
    (r"""["']cminet\.(precision|config|io_dtype)["']""", "metadata keys", "runtime/contract.py"),
    (r"""["']cminet-engine-v1["']""", "sidecar format", "runtime/contract.py"),
    (r"""(?<![\w.])1e-4\b""", "the FP32 tolerance", "runtime/contract.py"),
    (r"""def (parse_size|parse_shape)\(""", "size parsing", "runtime/contract.py"),
    (r"""def _?psnr\(""", "PSNR", "runtime/compare.py"),
])
def test_facts_are_defined_once(pattern, what, home):
    offenders = [str(p.relative_to(REPO)) for p in _sources(home) if re.search(pattern, p.read_text())]
    assert offenders == [], f"{what} defined outside {home}"


def test_size_and_profile_parsing():
    assert parse_size("256") == (256, 256) and parse_size("256×320") == (256, 320)
    assert parse_shape("2x64x96") == (2, 64, 96)
    assert validate_profile("1x16x16", (1, 256, 256), "4x1024x1024")[2] == (4, 1024, 1024)
    for bad in ("abc", "8", "0x0", "256x"):
        with pytest.raises(ContractError, match="size"):
            parse_size(bad)
    with pytest.raises(ContractError, match="min ≤ opt ≤ max"):
        validate_profile("1x16x16", "1x256x256", "1x8x8".replace("8x8", "64x64"))
    with pytest.raises(ContractError, match="need N ≥ 1"):
        validate_profile("1x16x16", "1x256x256", "1x8x8")


# -- the torch-free install ---------------------------------------------------------------
def _torch_free(tmp_path, *argv, timeout=300):
    return subprocess.run([sys.executable, *argv], capture_output=True, text=True, timeout=timeout,
                          env=torch_free_env(tmp_path), cwd=tmp_path)


def test_torch_free_fuser_and_cli_use_the_shipped_onnx(tmp_path):
    code = ("import sys\n"
            "from cminet.runtime import Fuser\n"
            "from cminet.runtime.imaging import read_image\n"
            f"mri, pet = read_image({str(SAMPLES_DIR / 'pet_mri/mri/41066.png')!r}), "
            f"read_image({str(SAMPLES_DIR / 'pet_mri/other/41066.png')!r})\n"
            "for precision in ('fp32', 'fp16'):\n"
            "    assert Fuser(precision=precision).fuse(mri, pet).shape == (256, 256, 3)\n"
            "assert sys.modules.get('torch', 'absent') is None\n")
    proc = _torch_free(tmp_path, "-c", code)
    assert proc.returncode == 0, proc.stderr
    proc = _torch_free(tmp_path, "-m", "cminet.cli", "fuse", "--samples", "--out", str(tmp_path / "fused"))
    assert proc.returncode == 0, proc.stderr
    assert len(list((tmp_path / "fused").rglob("*.png"))) == 3


@pytest.mark.slow
def test_torch_free_bench_reports_ort_latency_and_drift(tmp_path):
    import json

    out = tmp_path / "bench.json"
    proc = _torch_free(tmp_path, "-m", "cminet.benchmarks.cli", "--quick", "--iters", "3", "--json", str(out))
    assert proc.returncode == 0, proc.stderr
    report = json.loads(out.read_text())
    rows = {(r["backend"], r["precision"]): r for r in report["results"]}
    assert set(rows) == {("ort-cpu", "fp32"), ("ort-cpu", "fp16")}
    fp32, fp16 = rows["ort-cpu", "fp32"], rows["ort-cpu", "fp16"]
    assert fp32["latency_ms"]["p50"] > 0 and fp32["drift"]["max_abs"] <= TOLERANCES["fp32"].max_abs
    assert 0 < fp16["drift"]["max_abs"] <= TOLERANCES["fp16"].max_abs and fp16["drift"]["count"] == 3
    assert "achieved_gflops" not in fp32  # FLOPs are counted with onnx + onnxslim ([train])


def test_a_source_checkout_imports_the_runtime_and_nothing_else():
    """Uninstalled (no site-packages, only the checkout on sys.path, as `make gpu-check` on
    a bare GPU machine): cminet.runtime/export/benchmarks import from their folders,
    without torch, and the repository root does not leak in as cminet.tests / cminet.cminet."""
    code = ("import sys, importlib.util\n"
            f"sys.path.insert(0, {str(REPO)!r})\n"
            "import cminet.runtime, cminet.runtime.contract\n"
            f"assert cminet.runtime.__file__ == {str(REPO / 'runtime' / '__init__.py')!r}, cminet.runtime.__file__\n"
            "assert importlib.util.find_spec('cminet.benchmarks') and importlib.util.find_spec('cminet.export')\n"
            "for leaked in ('cminet.tests', 'cminet.cminet'):\n"
            "    assert importlib.util.find_spec(leaked) is None, leaked\n"
            "assert 'torch' not in sys.modules\n")
    proc = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True, timeout=60, cwd="/")
    assert proc.returncode == 0, proc.stderr
