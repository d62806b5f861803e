import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from cminet.benchmarks.roofline import DeviceProfile, estimate, load_profiles
from cminet.benchmarks.stats import fit_exponent, latency_summary, throughput_ips
from cminet.runtime.compare import psnr
from cminet.runtime.contract import TOLERANCES

from .helpers import tiny_checkpoint


@pytest.mark.torch_free
def test_percentiles_on_known_samples():
    s = latency_summary(list(range(1, 101)))  # 1..100 ms
    assert s["p50"] == pytest.approx(50.5)
    assert s["p90"] == pytest.approx(90.1)
    assert s["p99"] == pytest.approx(99.01)
    assert s["mean"] == pytest.approx(50.5) and s["n"] == 100
    assert throughput_ips(4, 20.0) == pytest.approx(200.0)
    with pytest.raises(ValueError):
        latency_summary([])


@pytest.mark.torch_free
def test_scaling_exponent_and_psnr():
    pixels = [64**2, 128**2, 256**2]
    assert fit_exponent(pixels, [3 * p for p in pixels]) == pytest.approx(1.0)
    assert fit_exponent(pixels, [p**2 for p in pixels]) == pytest.approx(2.0)
    x = np.zeros((4, 4))
    assert psnr(x, x) == float("inf")
    assert psnr(x, x + 0.1) == pytest.approx(20.0)


@pytest.mark.torch_free
def test_roofline_on_a_made_up_device():
    dev = DeviceProfile("toy", "Toy GPU", fp32_tflops=1.0, fp16_tflops=4.0, bandwidth_gbs=100.0, memory_gb=1,
                        source="made up")
    compute = estimate(dev, flops=4e12, bytes_moved=1e9, precision="fp16")  # 1 s compute vs 10 ms memory
    assert compute["latency_ms"] == pytest.approx(1000.0) and compute["bound"] == "compute"
    memory = estimate(dev, flops=1e9, bytes_moved=1e11, precision="fp32")  # 1 ms compute vs 1 s memory
    assert memory["latency_ms"] == pytest.approx(1000.0) and memory["bound"] == "memory"
    assert memory["kind"] == "estimate" and memory["ridge_point"] == pytest.approx(10.0)


@pytest.mark.torch_free
def test_shipped_profiles_are_complete():
    profiles = load_profiles()
    assert {"orin-nano-8gb", "orin-nx-16gb", "agx-orin-64gb", "t4", "rtx-3090", "a100", "h100"} <= set(profiles)
    for p in profiles.values():
        assert p.fp16_tflops >= p.fp32_tflops > 0 and p.bandwidth_gbs > 0 and p.source


@pytest.mark.slow
def test_run_benchmark_api_measures_latency_and_drift(tmp_path):
    """torch, ORT FP32 and ORT FP16 on a small non-max-rule checkpoint: the drift column
    tells them apart (torch is the reference itself, FP32 within its tolerance, FP16
    measurably further off)."""
    from cminet.benchmarks.bench import run_benchmark

    weights = tiny_checkpoint(tmp_path / "tiny.safetensors")
    report = run_benchmark(["torch-cpu", "ort-cpu"], [(32, 32)], [1, 2], warmup=1, iters=3, weights=str(weights),
                           workdir=tmp_path / "work")
    assert {"cpu", "gpu", "versions", "git_commit", "matmul_peak_gflops"} <= set(report["machine"])
    rows = report["results"]
    assert {(r["backend"], r["precision"], r["batch"]) for r in rows} == {
        (b, p, n) for b, p in (("torch-cpu", "fp32"), ("ort-cpu", "fp32"), ("ort-cpu", "fp16")) for n in (1, 2)}
    for r in rows:
        assert r["latency_ms"]["n"] == 3 and r["throughput_ips"] > 0 and r["peak_rss_mb"] > 0
        assert r["cold_start_s"] > 0 and r["height"] == r["width"] == 32 and r["gpu_mem_mb"] is None
        assert r["flops"] > 0 and r["achieved_gflops"] > 0 and r["drift"]["count"] == 3
    drift = {(r["backend"], r["precision"]): r["drift"]["max_abs"] for r in rows}
    # The reference is FP32 PyTorch itself (computed with another thread count).
    assert drift["torch-cpu", "fp32"] <= TOLERANCES["fp32"].max_abs / 10
    assert 0 <= drift["ort-cpu", "fp32"] <= TOLERANCES["fp32"].max_abs
    assert TOLERANCES["fp32"].max_abs < drift["ort-cpu", "fp16"] <= TOLERANCES["fp16"].max_abs
    assert report["skipped"] == []


@pytest.mark.torch_free
def test_cli_prints_the_table_and_estimates(tmp_path, monkeypatch):
    """The printer on a canned report (the measuring is run_benchmark's, tested above)."""
    from cminet.benchmarks import cli

    row = {"backend": "ort-cpu", "precision": "fp32", "height": 64, "width": 64, "batch": 1,
           "latency_ms": {"p50": 2.0, "p90": 2.5, "p99": 3.0, "mean": 2.1, "n": 3}, "throughput_ips": 500.0,
           "peak_rss_mb": 90.0, "gpu_mem_mb": None, "cold_start_s": 0.5, "file_mb": 1.0,
           "drift": {"max_abs": 1e-6, "psnr_db": 120.0, "metric_change": {"MI": 0.0, "Qabf": -0.001}}}
    canned = {"machine": {"cpu": "Toy CPU", "cpu_cores": 2, "gpu": None, "matmul_peak_gflops": 100.0,
                          "date": "2026-01-01T00:00:00Z"},
              "results": [row], "skipped": ["tensorrt fp16: worker failed: x"], "costs": [
                  {"height": 64, "width": 64, "flops": 10**9, "bytes_moved": 10**7, "parameters": 1}],
              "drift_reference": {"ort-cpu/fp32": "ref.npz"}, "scaling": {}, "op_time_share": {}, "goal": None}
    seen = {}

    def fake_run(*args, **kwargs):
        seen.update(args=args, kwargs=kwargs)
        return canned

    monkeypatch.setattr(cli, "run_benchmark", fake_run)
    out = tmp_path / "r.json"
    result = CliRunner().invoke(cli.main, ["--sizes", "64", "--batch", "1", "--profile", "orin-nano-8gb",
                                           "--json", str(out)])
    assert result.exit_code == 0, result.output
    assert "ort-cpu" in result.output and "ESTIMATES" in result.output and "1.0e-06" in result.output
    assert seen["args"][1] == [(64, 64)] and json.loads(out.read_text())["estimates"]
    for bad in (["--sizes", "8"], ["--batch", "0"], ["--sizes", "abc"]):
        result = CliRunner().invoke(cli.main, bad)
        assert result.exit_code == 2 and "Traceback" not in result.output


@pytest.mark.skipif(not (Path(__file__).resolve().parents[2] / "shared/data/volumes/spm12").is_dir(),
                    reason="the real volumes are not here")
def test_volume_mode_times_fuse_volume_against_the_network_on_whole_slices(tmp_path):
    from cminet.benchmarks import cli

    spm = Path(__file__).resolve().parents[2] / "shared/data/volumes/spm12"
    out = tmp_path / "volume.json"
    result = CliRunner().invoke(cli.main, ["--volume", str(spm / "single_subj_T1.nii.gz"),
                                           str(spm / "template_PET.nii.gz"), "--modality", "pet", "--iters", "10",
                                           "--backends", "ort-cpu", "--threads", "1", "--json", str(out)])
    assert result.exit_code == 0, result.output
    assert "91 axial slices of 109×91" in result.output and "× the yardstick" in result.output
    report = json.loads(out.read_text())["volume"]
    assert report["backend"] == "ort-cpu" and report["rounds"] == 1
    for mode in ("skip_air", "every_pixel"):
        assert len(report[mode]["wall_s"]) == 1 and report[mode]["ratio"] > 0
    assert report["yardstick_s"] == pytest.approx(91 * report["whole_slice_ms_p50"] / 1000, rel=1e-3)
