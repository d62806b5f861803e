import json

import numpy as np
import pytest
from click.testing import CliRunner

from cminet.benchmarks.roofline import DeviceProfile, estimate, load_profiles
from cminet.benchmarks.stats import fit_exponent, latency_summary, psnr, throughput_ips

from .helpers import tiny_checkpoint


def test_percentiles_on_known_samples():
    s = latency_summary(list(range(1, 101)))  # 1..100 ms
    assert s["p50"] == pytest.approx(50.5)
    assert s["p90"] == pytest.approx(90.1)
    assert s["p99"] == pytest.approx(99.01)
    assert s["mean"] == pytest.approx(50.5) and s["n"] == 100
    assert throughput_ips(4, 20.0) == pytest.approx(200.0)
    with pytest.raises(ValueError):
        latency_summary([])


def test_scaling_exponent_and_psnr():
    pixels = [64**2, 128**2, 256**2]
    assert fit_exponent(pixels, [3 * p for p in pixels]) == pytest.approx(1.0)
    assert fit_exponent(pixels, [p**2 for p in pixels]) == pytest.approx(2.0)
    x = np.zeros((4, 4))
    assert psnr(x, x) == float("inf")
    assert psnr(x, x + 0.1) == pytest.approx(20.0)


def test_roofline_on_a_made_up_device():
    dev = DeviceProfile("toy", "Toy GPU", fp32_tflops=1.0, fp16_tflops=4.0, bandwidth_gbs=100.0, memory_gb=1,
                        source="made up")
    compute = estimate(dev, flops=4e12, bytes_moved=1e9, precision="fp16")  # 1 s compute vs 10 ms memory
    assert compute["latency_ms"] == pytest.approx(1000.0) and compute["bound"] == "compute"
    memory = estimate(dev, flops=1e9, bytes_moved=1e11, precision="fp32")  # 1 ms compute vs 1 s memory
    assert memory["latency_ms"] == pytest.approx(1000.0) and memory["bound"] == "memory"
    assert memory["kind"] == "estimate" and memory["ridge_point"] == pytest.approx(10.0)


def test_shipped_profiles_are_complete():
    profiles = load_profiles()
    assert {"orin-nano-8gb", "orin-nx-16gb", "agx-orin-64gb", "t4", "rtx-3090", "a100", "h100"} <= set(profiles)
    for p in profiles.values():
        assert p.fp16_tflops >= p.fp32_tflops > 0 and p.bandwidth_gbs > 0 and p.source


@pytest.mark.slow
def test_quick_smoke_run_writes_the_json_schema(tmp_path):
    from cminet.benchmarks.cli import main

    weights = tiny_checkpoint(tmp_path / "tiny.safetensors")
    out = tmp_path / "bench.json"
    result = CliRunner().invoke(main, ["--weights", str(weights), "--backends", "torch-cpu,ort-cpu", "--sizes", "32",
                                       "--batch", "1", "--warmup", "1", "--iters", "3", "--json", str(out),
                                       "--workdir", str(tmp_path / "work"), "--profile", "orin-nano-8gb"])
    assert result.exit_code == 0, result.output
    assert "ESTIMATES" in result.output and "p50 ms" in result.output
    report = json.loads(out.read_text())
    assert {"cpu", "gpu", "versions", "git_commit"} <= set(report["machine"])
    rows = report["results"]
    assert {(r["backend"], r["precision"]) for r in rows} == {("torch-cpu", "fp32"), ("ort-cpu", "fp32"),
                                                               ("ort-cpu", "fp16")}
    for r in rows:
        assert set(r["latency_ms"]) >= {"p50", "p90", "p99", "mean"}
        assert r["latency_ms"]["p50"] <= r["latency_ms"]["p99"]
        assert r["throughput_ips"] > 0 and r["peak_rss_mb"] > 0 and r["cold_start_s"] > 0
        assert r["height"] == r["width"] == 32 and r["batch"] == 1 and "gpu_mem_mb" in r
        assert set(r["drift"]) >= {"max_abs", "psnr_db", "mi_change", "qabf_change"}
    torch_row = next(r for r in rows if r["backend"] == "torch-cpu")
    assert torch_row["drift"]["max_abs"] == 0.0  # the reference itself
    fp32 = next(r for r in rows if r["backend"] == "ort-cpu" and r["precision"] == "fp32")
    assert fp32["drift"]["max_abs"] < 1e-4
