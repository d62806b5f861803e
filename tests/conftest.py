"""Shared fixtures. The models here are never the max rule: an untrained max-residual
CMINet outputs exactly max(a, b) (its last convolution starts at zero), and a comparison
of two max rules cannot catch a wrong network. ``random_model`` gets a random non-zero
last layer; ``shipped_model`` is the trained default weights."""

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "harvard"

os.environ.setdefault("OMP_NUM_THREADS", "2")
# backend="auto" on a CPU would time ort-cpu against ov-cpu once per model file (seconds each,
# and the suite exports many); tests/test_cpu_speed.py tests that choice with this unset.
os.environ.setdefault("CMINET_CPU_BACKEND", "ort-cpu")
# Set by `make test-stacks` (tests/stacks/run.py): the name of the device stack under test.
STACK = os.environ.get("CMINET_STACK")


def pytest_configure(config):
    if STACK:
        import cminet

        if Path(cminet.__file__).resolve().parent == REPO / "cminet":
            raise pytest.UsageError(f"stack {STACK}: cminet was imported from the checkout ({cminet.__file__}), "
                                    "not from the environment under test; run pytest with --import-mode=append")


@pytest.fixture(scope="session")
def data_root() -> Path:
    if not DATA.is_dir():
        pytest.skip(f"dataset not found at {DATA}")
    return DATA


@pytest.fixture(scope="session")
def random_model():
    """Default config, random weights everywhere, the last convolution included."""
    from .helpers import non_max_rule_model

    return non_max_rule_model()


@pytest.fixture(scope="session")
def shipped_model():
    from cminet.fusion import load_pretrained

    return load_pretrained()


@pytest.fixture(scope="session")
def random_export(random_model, tmp_path_factory):
    """``random_model`` exported as the CLI does: FP32 + FP16 ONNX and the drift reference."""
    from cminet.export.fp16 import convert_fp16
    from cminet.export.onnx_export import export_onnx
    from cminet.export.verify import write_reference
    from cminet.runtime.contract import REFERENCE_FILE, SHIPPED_ONNX

    folder = tmp_path_factory.mktemp("random_export")
    fp32 = export_onnx(random_model, folder / SHIPPED_ONNX["fp32"])
    fp16 = convert_fp16(fp32, folder / SHIPPED_ONNX["fp16"])
    return {"fp32": fp32, "fp16": fp16, "reference": write_reference(random_model, folder / REFERENCE_FILE)}
