"""Issue #17, CPU speed: ONNX Runtime's session settings, the OpenVINO backend (ov-cpu) and
how backend="auto" chooses between them, the FLOP count from the ONNX graph, the
interleaved latency-vs-sgemm comparison, and the INT8 export gate."""

import json
import sys

import numpy as np
import pytest

from cminet.runtime import Fuser, ModelFileError
from cminet.runtime.backends import choice
from cminet.runtime.backends.base import BackendUnavailable, missing_requirement, open_backend
from cminet.runtime.compare import drift, load_reference
from cminet.runtime.contract import ORT_SESSION_CONFIG, TOLERANCES, ContractError

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


def test_pick_needs_a_clear_win_for_openvino():
    assert choice.pick({"ort-cpu": 0.100, "ov-cpu": 0.089}) == "ov-cpu"
    assert choice.pick({"ort-cpu": 0.100, "ov-cpu": 0.095}) == "ort-cpu"  # within noise: the base install
    assert choice.pick({"ort-cpu": 0.100, "ov-cpu": 0.200}) == "ort-cpu"


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


@needs_openvino
def test_auto_really_measures_and_keeps_fp16_on_ort(fresh_choice, random_export):
    picked = choice.cpu_backend(random_export["fp32"], 2)
    entry = next(iter(json.loads(fresh_choice.read_text()).values()))
    assert picked == entry["backend"] == choice.pick(entry["latency_s"])
    assert all(0 < t < 30 for t in entry["latency_s"].values())
    assert choice.cpu_backend(random_export["fp16"], 2) == "ort-cpu"  # ov-cpu runs FP32 only


def test_auto_pin_and_no_openvino(fresh_choice, random_export, monkeypatch):
    def never(path, threads):
        raise AssertionError("measured")

    monkeypatch.setenv(choice.OVERRIDE_ENV, "ort-cpu")
    assert choice.cpu_backend(random_export["fp32"], 2, measure=never) == "ort-cpu"
    monkeypatch.setenv(choice.OVERRIDE_ENV, "tvm")
    with pytest.raises(ContractError, match=choice.OVERRIDE_ENV):
        choice.cpu_backend(random_export["fp32"], 2, measure=never)
    monkeypatch.delenv(choice.OVERRIDE_ENV)
    monkeypatch.setattr(choice, "missing_requirement", lambda name: "openvino")
    assert choice.cpu_backend(random_export["fp32"], 2, measure=never) == "ort-cpu"
    assert not fresh_choice.exists()
