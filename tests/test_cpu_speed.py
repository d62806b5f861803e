"""CPU speed: ONNX Runtime's session settings, the OpenVINO backend (ov-cpu) and
how backend="auto" chooses between them, the FLOP count from the ONNX graph, the
interleaved latency-vs-sgemm comparison, and the INT8 export gate."""

import json
import sys
import warnings

import numpy as np
import pytest

from cminet.runtime import Fuser, ModelFileError
from cminet.runtime.backends import choice
from cminet.runtime.backends.base import BackendUnavailable, missing_requirement, open_backend
from cminet.runtime.backends.onnxruntime import ORT_SESSION_CONFIG
from cminet.runtime.compare import drift, load_reference
from cminet.runtime.contract import TOLERANCES, ContractError

needs_openvino = pytest.mark.skipif(missing_requirement("ov-cpu") is not None,
                                    reason="openvino is not installed (pip install 'cminet[openvino]')")


# -- ONNX Runtime session settings --------------------------------------------------------
def test_ort_sessions_do_not_spin(random_export):
    backend = open_backend("ort-cpu", random_export["fp32"], threads=2)
    try:
        assert backend.info()["session_config"] == ORT_SESSION_CONFIG
        assert ORT_SESSION_CONFIG["session.intra_op.allow_spinning"] == "0"
    finally:
        backend.close()


# -- the OpenVINO backend -----------------------------------------------------------------
@needs_openvino
def test_ov_cpu_matches_pytorch_within_the_fp32_tolerance(random_export):
    with Fuser(random_export["fp32"], backend="ov-cpu", threads=2) as fuser:
        assert fuser.backend.name == "ov-cpu" and fuser.backend.precision == "fp32"
        info = fuser.info
        assert info["inference_precision"] == "f32" and info["threads"] == 2 and info["openvino"]
        result = drift(lambda a, b: fuser.infer(a, b), load_reference(random_export["reference"]))
        assert result.passed(TOLERANCES["fp32"]), result.summary()
        # Dynamic H and W (unaligned, non-square), batches, and an output that is our own copy.
        rng = np.random.default_rng(0)
        a, b = (rng.random((2, 1, 40, 72), dtype=np.float32) for _ in range(2))
        first = fuser.infer(a, b)
        assert first.shape == a.shape and first.dtype == np.float32
        fuser.infer(b, a)
        np.testing.assert_array_equal(first, fuser.infer(a, b))


@needs_openvino
def test_ov_cpu_splits_convolutions_over_concatenations_exactly(random_export, random_model):
    import openvino as ov

    from cminet.runtime.backends.openvino import split_concat_convolutions

    def concat_convs(model):
        return [op for op in model.get_ordered_ops() if op.get_type_name() == "Convolution"
                and op.input_value(0).get_node().get_type_name() == "Concat"]

    model = ov.Core().read_model(str(random_export["fp32"]))
    before = concat_convs(model)
    cfg = random_model.config
    # Per interaction: the dense layers after the first, the 1×1 fusion and every GDA merge; plus
    # the head. Not the spatial attention's 7×7 conv over its 2-channel (mean, max) map.
    expected = cfg.interactions * (2 * cfg.dense_layers) + 1
    assert split_concat_convolutions(model) == expected
    left = concat_convs(model)
    assert len(left) == len(before) - expected
    assert all(op.input_value(0).get_partial_shape()[1].get_length() == 2 for op in left)
    # The rewritten graph computes the same function (the FP32 drift test runs it end to end).
    backend = open_backend("ov-cpu", random_export["fp32"], threads=1)
    assert backend.info()["split_concat_convolutions"] == expected
    backend.close()


@needs_openvino
def test_ov_cpu_compiles_each_input_shape_statically_and_keeps_the_last_few(random_export, monkeypatch):
    from cminet.runtime.backends import openvino as ov_backend

    monkeypatch.setattr(ov_backend, "STATIC_SHAPES_KEPT", 2)
    backend = open_backend("ov-cpu", random_export["fp32"], threads=1)
    try:
        rng = np.random.default_rng(1)
        outputs = {}
        for shape in [(1, 1, 32, 48), (2, 1, 24, 16), (1, 1, 40, 40)]:
            a, b = (rng.random(shape, dtype=np.float32) for _ in range(2))
            outputs[shape] = (a, b, backend.run(a, b))
            port = backend.requests[shape].get_compiled_model().inputs[0]
            assert port.get_partial_shape().is_static and tuple(port.get_shape()) == shape
        assert list(backend.requests) == [(2, 1, 24, 16), (1, 1, 40, 40)]  # the oldest shape dropped
        backend.run(*outputs[(2, 1, 24, 16)][:2])  # used again: now the most recent
        a, b, before = outputs[(1, 1, 32, 48)]
        again = backend.run(a, b)
        np.testing.assert_array_equal(again, before)  # compiled again: the same numbers
        assert list(backend.requests) == [(2, 1, 24, 16), (1, 1, 32, 48)]  # least recently used dropped
        backend.run(b, a)
        np.testing.assert_array_equal(again, before)  # run() returns a copy, not the request's buffer
    finally:
        backend.close()


@needs_openvino
def test_ov_cpu_serves_several_threads_at_once(random_export):
    from concurrent.futures import ThreadPoolExecutor

    backend = open_backend("ov-cpu", random_export["fp32"], threads=1)
    try:
        rng = np.random.default_rng(2)
        jobs = [tuple(rng.random(shape, dtype=np.float32) for _ in range(2))
                for shape in [(1, 1, 32, 32), (1, 1, 48, 32)] * 4]
        alone = [backend.run(a, b) for a, b in jobs]
        with ThreadPoolExecutor(4) as pool:
            together = list(pool.map(lambda job: backend.run(*job), jobs))
        for one, other in zip(alone, together, strict=True):
            np.testing.assert_array_equal(one, other)
    finally:
        backend.close()


@needs_openvino
def test_ov_cpu_refuses_what_it_cannot_run(random_export, tmp_path):
    with pytest.raises(BackendUnavailable, match="runs FP32 ONNX") as info:
        open_backend("ov-cpu", random_export["fp16"])
    assert "\n" not in str(info.value)
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x00\xff" * 500)
    with pytest.raises(ModelFileError, match="not a loadable ONNX"):
        open_backend("ov-cpu", garbage)
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    foreign = tmp_path / "foreign.onnx"
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), foreign)
    with pytest.raises(ModelFileError, match="not a cminet model"):
        open_backend("ov-cpu", foreign)
    with pytest.raises(ContractError, match="threads"):
        open_backend("ov-cpu", random_export["fp32"], threads=0)


def test_ov_cpu_missing_is_one_line_naming_the_extra(monkeypatch, random_export):
    monkeypatch.setitem(sys.modules, "openvino", None)  # as if not installed
    monkeypatch.setattr("importlib.util.find_spec", lambda name, *a: None if name == "openvino" else object())
    with pytest.raises(BackendUnavailable, match=r"cminet\[openvino\]"):
        open_backend("ov-cpu", random_export["fp32"])


# -- backend="auto" on a CPU --------------------------------------------------------------
@pytest.fixture
def fresh_choice(tmp_path, monkeypatch):
    """No pinned choice (the suite pins ort-cpu in conftest) and an empty cache."""
    monkeypatch.delenv(choice.OVERRIDE_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path / "cache" / "cminet" / choice.CACHE_FILE


@pytest.mark.torch_free
def test_pick_needs_a_clear_win_for_openvino():
    assert choice.pick({"ort-cpu": 0.100, "ov-cpu": 0.089}) == "ov-cpu"
    assert choice.pick({"ort-cpu": 0.100, "ov-cpu": 0.095}) == "ort-cpu"  # within noise: the base install
    assert choice.pick({"ort-cpu": 0.100, "ov-cpu": 0.200}) == "ort-cpu"


@pytest.mark.torch_free
def test_interleaved_medians_alternate_the_order():
    calls = []
    medians = choice.interleaved_medians({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, rounds=2)
    assert calls == ["a", "a", "b", "b", "b", "b", "a", "a"] and set(medians) == {"a", "b"}


@needs_openvino
def test_auto_measures_once_then_uses_the_cache(fresh_choice, random_export, monkeypatch):
    measured = []

    def fake(path, threads):
        measured.append((path, threads))
        return {"ort-cpu": 0.2, "ov-cpu": 0.1}

    assert choice.cpu_backend(random_export["fp32"], 2, measure=fake) == "ov-cpu"
    assert choice.cpu_backend(random_export["fp32"], 2, measure=fake) == "ov-cpu"
    assert len(measured) == 1
    cached = json.loads(fresh_choice.read_text())
    (entry,) = cached.values()
    assert entry["backend"] == "ov-cpu" and entry["latency_s"] == {"ort-cpu": 0.2, "ov-cpu": 0.1}
    # Another thread count is another question.
    assert choice.cpu_backend(random_export["fp32"], 1, measure=lambda p, t: {"ort-cpu": 0.1, "ov-cpu": 0.2}) \
        == "ort-cpu"
    # Fuser(backend="auto") follows the cached verdict.
    monkeypatch.setattr(choice, "measure_cpu_backends", fake)
    with Fuser(random_export["fp32"], threads=2) as fuser:
        assert fuser.backend.name == "ov-cpu"
    assert len(measured) == 1
    # A change in how our own code runs a candidate invalidates what was measured before it.
    monkeypatch.setattr(choice, "MEASURE_VERSION", choice.MEASURE_VERSION + 1)
    assert choice.cpu_backend(random_export["fp32"], 2, measure=fake) == "ov-cpu"
    assert len(measured) == 2


@needs_openvino
def test_auto_really_measures_and_keeps_fp16_on_ort(fresh_choice, random_export):
    picked = choice.cpu_backend(random_export["fp32"], 2)
    entry = next(iter(json.loads(fresh_choice.read_text()).values()))
    assert picked == entry["backend"] == choice.pick(entry["latency_s"])
    assert all(0 < t < 30 for t in entry["latency_s"].values())
    assert choice.cpu_backend(random_export["fp16"], 2) == "ort-cpu"  # ov-cpu runs FP32 only ...
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # measure=None would fail, and the fallback's warning raise
        assert choice.cpu_backend(random_export["fp16"], 2, measure=None) == "ort-cpu"  # ... cached
    assert len(json.loads(fresh_choice.read_text())) == 2


def test_auto_pin_and_no_openvino(fresh_choice, random_export, monkeypatch):
    def never(path, threads):
        raise AssertionError("measured")

    monkeypatch.setenv(choice.OVERRIDE_ENV, "ort-cpu")
    assert choice.cpu_backend(random_export["fp32"], 2, measure=never) == "ort-cpu"
    monkeypatch.setenv(choice.OVERRIDE_ENV, "tvm")
    with pytest.raises(ContractError, match=choice.OVERRIDE_ENV):
        choice.cpu_backend(random_export["fp32"], 2, measure=never)
    monkeypatch.delenv(choice.OVERRIDE_ENV)

    def broken(path, threads):
        raise RuntimeError("Exception from src/plugins/intel_cpu: unsupported\nsecond line")

    if missing_requirement("ov-cpu") is None:
        with pytest.warns(RuntimeWarning, match=r"ov-cpu could not be measured .* unsupported\); using ort-cpu"):
            assert choice.cpu_backend(random_export["fp32"], 2, measure=broken) == "ort-cpu"
    monkeypatch.setattr(choice, "missing_requirement", lambda name: "openvino")
    assert choice.cpu_backend(random_export["fp32"], 2, measure=never) == "ort-cpu"
    assert not fresh_choice.exists()


# -- FLOPs from the ONNX graph, the IFCNN reference, the goal --------------------------
@pytest.mark.slow  # ~12 s on the 2-core CI machine: onnxslim folds the graph once per size
def test_onnx_flops_agree_with_pytorch_and_ifcnn_is_17_gflops(random_export, random_model, tmp_path):
    from cminet.benchmarks.ifcnn import build_ifcnn
    from cminet.benchmarks.onnx_cost import onnx_flops
    from cminet.model import count_flops

    for h, w, n in ((48, 48, 1), (40, 72, 2)):  # 40×72 pads to 48×80 inside the graph
        assert onnx_flops(random_export["fp32"], h, w, batch=n) == count_flops(random_model, h, w, batch=n)
    assert onnx_flops(random_export["fp16"], 48, 48) == count_flops(random_model, 48, 48)
    ifcnn = build_ifcnn(tmp_path / "ifcnn.onnx")
    assert onnx_flops(ifcnn, 256, 256) / 1e9 == pytest.approx(16.99, abs=0.01)  # the 17.0


def _raw(cminet_ms, ifcnn_ms, rates):
    return {"sizes": [{"height": 256, "width": 256, "sgemm_gflops": rates,
                       "block_ms": {"ort-cpu spinning": [300.0] * len(rates), "ort-cpu": cminet_ms,
                                    "ov-cpu": [200.0] * len(rates), "IFCNN ort-cpu": ifcnn_ms}}]}


@pytest.mark.torch_free
def test_goal_ratio_and_ifcnn_ratio_from_interleaved_blocks():
    from cminet.benchmarks.versus_peak import summarise

    flops = {(256, 256): {"cminet": 4_000_000_000, "ifcnn": 17_000_000_000}}
    # sgemm 100 GFLOP/s: 2 × 4 GFLOP take 80 ms. cminet 60 ms: ratio 0.75, 2× faster than IFCNN's 120 ms.
    (size,) = summarise(_raw([60.0, 58.0, 64.0], [120.0, 118.0, 125.0], [100.0, 90.0, 110.0]), flops)
    rows = {r["method"]: r for r in size["rows"]}
    assert size["fastest"] == "ort-cpu" and size["goal_ratio"] == pytest.approx(0.75)
    assert size["goal_budget_ms"] == pytest.approx(80.0)
    assert rows["ort-cpu"]["vs_ifcnn"] == pytest.approx(2.0) and rows["IFCNN ort-cpu"]["vs_ifcnn"] is None
    assert rows["ort-cpu"]["effective_gflops"] == pytest.approx(4e9 / 60e6)
    assert rows["ort-cpu"]["sgemm_share"] == pytest.approx(4e9 / 60e6 / 100)
    assert rows["IFCNN ort-cpu"]["gflops"] == 17.0
    # Block by block: each block's fastest cminet against that block's sgemm rate.
    assert size["goal_ratio_blocks"] == pytest.approx([60 / 80, 58 / (8000 / 90), 64 / (8000 / 110)])
    # "before" never counts as the fastest path, however fast.
    (slow,) = summarise(_raw([300.0] * 3, [120.0] * 3, [100.0] * 3), flops)
    assert slow["fastest"] == "ov-cpu" and slow["goal_ratio"] == pytest.approx(2.5)


@pytest.mark.torch_free
def test_goal_check_on_bench_rows():
    from cminet.benchmarks.bench import goal_check

    def row(backend, ms, size=256, batch=1):
        return {"backend": backend, "precision": "fp32", "height": size, "width": size, "batch": batch,
                "flops": 4e9 * batch, "latency_ms": {"p50": ms}}

    rows = [row("ort-cpu", 100.0), row("ov-cpu", 70.0), row("torch-cpu", 10.0), row("ort-cuda", 1.0),
            row("ort-cpu", 50.0, size=512), row("ort-cpu", 60.0, batch=4)]
    goal = goal_check(rows, peak_gflops=100.0)
    assert goal["backend"] == "ov-cpu" and goal["budget_ms"] == pytest.approx(80.0)
    assert goal["ratio"] == pytest.approx(70 / 80) and goal["passed"]
    assert not goal_check(rows[:1], 100.0)["passed"]
    assert goal_check([row("ort-cpu", 50.0, size=512)], 100.0) is None


def test_cli_prints_the_interleaved_table_and_the_goal(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from cminet.benchmarks import cli
    from cminet.benchmarks.versus_peak import summarise

    flops = {(256, 256): {"cminet": 4_000_000_000, "ifcnn": 17_000_000_000}}
    interleaved = {"threads": 2, "blocks": 3, "per_block": 2, "sgemm_n": 1024,
                   "sizes": summarise(_raw([90.0, 95.0, 99.0], [120.0] * 3, [100.0] * 3), flops)}
    row = {"backend": "ort-cpu", "precision": "fp32", "height": 256, "width": 256, "batch": 1,
           "latency_ms": {"p50": 90.0, "p90": 95.0, "p99": 99.0, "mean": 92.0, "n": 3}, "throughput_ips": 11.0,
           "peak_rss_mb": 110.0, "gpu_mem_mb": None, "cold_start_s": 0.5, "file_mb": 1.0, "drift": {},
           "flops": 4e9, "achieved_gflops": 44.4, "peak_share": 0.444}
    canned = {"machine": {"cpu": "Toy CPU", "cpu_cores": 2, "gpu": None, "matmul_peak_gflops": 100.0,
                          "date": "2026-01-01T00:00:00Z"}, "models": {"fp32": "m.onnx"},
              "results": [row], "skipped": [], "costs": [], "drift_reference": {}, "scaling": {},
              "op_time_share": {"ort-cpu": {"Conv": 0.6, "Concat": 0.4}, "ov-cpu": {"Convolution": 1.0}},
              "goal": {"backend": "ort-cpu", "precision": "fp32", "p50_ms": 90.0, "budget_ms": 80.0, "ratio": 1.125,
                       "passed": False}}
    monkeypatch.setattr(cli, "run_benchmark", lambda *a, **k: canned)
    monkeypatch.setattr("cminet.benchmarks.versus_peak.run_versus_peak", lambda *a, **k: interleaved)
    result = CliRunner().invoke(cli.main, ["--sizes", "256", "--batch", "1", "--interleaved", "--profile-ops"])
    assert result.exit_code == 0, result.output
    out = result.output
    assert "ratio 1.12 FAIL" in out and "44" in out  # the main table's goal line and %peak column
    assert "Conv 60%" in out and "OpenVINO performance counters): Convolution 100%" in out
    assert "Toy CPU" in out and "IFCNN ort-cpu" in out and "1.26×" in out  # 120 / 95 ms
    assert "ratio 1.19 (blocks 1.12-1.24) FAIL" in out  # 95 ms against 80 ms


def test_op_profiles_of_both_runtimes(random_export):
    from cminet.benchmarks.op_profile import ort_op_breakdown, ov_op_breakdown

    shares = ort_op_breakdown(random_export["fp32"], 32, 32, runs=2, threads=1)
    assert sum(shares.values()) == pytest.approx(1.0) and any("Conv" in op for op in shares)
    if missing_requirement("ov-cpu") is None:
        shares = ov_op_breakdown(random_export["fp32"], 32, 32, runs=2, threads=1)
        assert sum(shares.values()) == pytest.approx(1.0) and "Convolution" in shares


# -- INT8: only where the CPU has VNNI/AMX ------------------------------------------------
@pytest.mark.torch_free
def test_int8_gate_reads_the_cpu_flags():
    from cminet.export.int8 import int8_support

    for flag in ("avx512_vnni", "avx_vnni", "amx_int8"):
        assert int8_support({"avx2", flag}) == (True, f"this CPU has {flag}")
    supported, why = int8_support({"avx2", "fma", "avx512f"})
    assert not supported and "VNNI" in why and "slower than FP32" in why and "\n" not in why


def test_export_refuses_int8_without_vnni_before_writing_anything(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from cminet.export import int8
    from cminet.export.cli import main as export_main

    monkeypatch.setattr(int8, "cpu_flags", lambda: {"avx2", "fma"})  # this EPYC, whatever runs the test
    result = CliRunner().invoke(export_main, ["--out", str(tmp_path / "out"), "--int8", "--calibration", "x"])
    assert result.exit_code != 0 and "--int8: this CPU has no VNNI/AMX" in result.output
    assert "Traceback" not in result.output and not (tmp_path / "out").exists()


def test_int8_quantisation_calibrates_on_training_pairs_only(tmp_path):
    import onnx
    import onnxruntime as ort

    from cminet.export.int8 import calibration_pairs, quantize_int8
    from cminet.export.onnx_export import export_onnx
    from cminet.model import CMINetConfig

    from .helpers import non_max_rule_model, write_dataset

    data = write_dataset(tmp_path / "data", n=4, size=32)
    for pair in ("ct_mri", "pet_mri"):  # a test image read for calibration would now fail loudly
        for name in (data / pair / "test.txt").read_text().split():
            (data / pair / "mri" / name).write_bytes(b"not a png")
    assert len(calibration_pairs(data, count=100)) == 6  # every training pair, no test pair
    pairs = calibration_pairs(data, count=3)
    assert len(pairs) == 3 and all(a.shape == (1, 1, 32, 32) for a, _ in pairs)
    with pytest.raises(Exception, match="train.txt"):
        calibration_pairs(tmp_path)
    model = non_max_rule_model(0, CMINetConfig(channels=8, embed_dim=16, num_heads=2, growth=4))
    fp32 = export_onnx(model, tmp_path / "tiny.onnx")
    int8_path = quantize_int8(fp32, tmp_path / "tiny_int8.onnx", pairs)
    ops = {n.op_type for n in onnx.load(str(int8_path)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= ops
    a, b = pairs[0]
    feeds = {"mri": a, "other": b}
    want = ort.InferenceSession(str(fp32), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    got = ort.InferenceSession(str(int8_path), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    assert got.shape == want.shape and np.isfinite(got).all()
    assert 0 < np.abs(got - want).max() < 0.25  # quantised (not a copy), and still the same network


@pytest.mark.slow
def test_export_int8_where_the_cpu_has_vnni(tmp_path, monkeypatch):
    """The accepted path, with VNNI faked: INT8 ONNX written beside the others, its drift
    against FP32 PyTorch in the report, calibrated on the training pairs."""
    from click.testing import CliRunner

    from cminet.export import int8
    from cminet.export.cli import main as export_main

    from .helpers import tiny_checkpoint, write_dataset

    monkeypatch.setattr(int8, "cpu_flags", lambda: {"avx2", "avx512_vnni"})
    weights = tiny_checkpoint(tmp_path / "tiny.safetensors")
    data = write_dataset(tmp_path / "data", n=3, size=32)
    out = tmp_path / "out"
    result = CliRunner().invoke(export_main, ["--weights", str(weights), "--out", str(out), "--int8",
                                              "--calibration", str(data), "--no-verify"])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "export_report.json").read_text())["int8"]
    assert (out / int8.INT8_FILE).is_file() and report["path"] == str(out / int8.INT8_FILE)
    assert report["cpu"] == "this CPU has avx512_vnni" and report["calibration_pairs"] == 4
    assert report["drift"]["count"] == 3 and report["drift"]["max_abs"] > 0
    missing = CliRunner().invoke(export_main, ["--out", str(tmp_path / "o2"), "--int8"])
    assert missing.exit_code == 2 and "--int8 needs --calibration" in missing.output
