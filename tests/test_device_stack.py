"""What a device integrator types first, end to end through the installed console scripts:
``cminet fuse`` (one pair, ``--samples``, ``--data``), ``cminet fuse-volume`` on real
volumes, ``cminet-bench --quick``, ``cminet doctor`` and the Python API.

All torch-free: ``make test-stacks`` runs them in fresh environments of each device stack
(``tests/stacks/``); here, in the development environment, the commands run with torch and
the other [train] packages hidden, as on a device. The declared lower bounds are checked
against the JetPack 6 stack's pins, so the matrix installs exactly what setup.cfg promises.
"""

from __future__ import annotations

import configparser
import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from cminet.runtime.folders import SAMPLES_DIR

from .conftest import REPO, STACK
from .gpu_doubles import subprocess_env
from .helpers import TRAIN_ONLY_MODULES, torch_free_env, write_dataset

pytestmark = pytest.mark.torch_free

BIN = Path(sys.executable).parent
VOLUMES = REPO.parent / "shared" / "data" / "volumes"
PET_MRI = SAMPLES_DIR / "pet_mri/mri/41066.png"
PET = SAMPLES_DIR / "pet_mri/other/41066.png"


def console(tool: str, *args, tmp_path: Path, env: dict | None = None, timeout: int = 300):
    """Run an installed console script (``cminet``, ``cminet-bench``) as a user would, from
    a folder outside the checkout."""
    script = BIN / tool
    if not script.is_file():
        pytest.fail(f"{script} is missing: the install did not create the {tool} console script")
    return subprocess.run([str(script), *map(str, args)], capture_output=True, text=True, timeout=timeout,
                          cwd=tmp_path, env=env if env is not None else device_env(tmp_path))


def device_env(tmp_path: Path) -> dict:
    """No torch nor the rest of [train], as on a device; OpenVINO stays where installed."""
    return torch_free_env(tmp_path, hide=TRAIN_ONLY_MODULES)


def ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


# -- the commands ----------------------------------------------------------------------------
def test_bare_cminet_shows_the_help(tmp_path):
    proc = console("cminet", tmp_path=tmp_path)
    assert proc.returncode in (0, 2), proc.stderr  # click 8.1 exits 0 after the help, 8.2 and later 2
    assert "Traceback" not in proc.stderr and "fuse-volume" in proc.stdout + proc.stderr


def test_a_missing_input_is_one_line_not_a_traceback(tmp_path):
    proc = console("cminet", "fuse", tmp_path / "missing.png", PET, "-o", tmp_path / "out.png", tmp_path=tmp_path)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.startswith("error:") and "missing.png" in proc.stderr and len(proc.stderr.splitlines()) == 1


def test_fuse_one_pair_matches_the_python_api(tmp_path):
    from cminet.runtime import Fuser
    from cminet.runtime.imaging import read_image

    out = tmp_path / "fused.png"
    ok(console("cminet", "fuse", PET_MRI, PET, "-o", out, tmp_path=tmp_path))
    fused = cv2.imread(str(out), cv2.IMREAD_UNCHANGED)
    assert fused.shape == (256, 256, 3)
    with Fuser() as fuser:
        expected = fuser.fuse(read_image(PET_MRI), read_image(PET))
    assert np.abs(read_image(out).astype(int) - expected.astype(int)).max() <= 1


def test_fuse_samples_writes_every_pair(tmp_path):
    ok(console("cminet", "fuse", "--samples", "--out", tmp_path / "out", tmp_path=tmp_path))
    expected = sorted(p.relative_to(SAMPLES_DIR).as_posix().replace("/mri/", "/")
                      for p in SAMPLES_DIR.glob("*/mri/*.png"))
    written = sorted(p.relative_to(tmp_path / "out").as_posix() for p in (tmp_path / "out").rglob("*.png"))
    assert written == expected and len(written) >= 3


def test_fuse_data_folder(tmp_path):
    root = write_dataset(tmp_path / "data", n=4)
    ok(console("cminet", "fuse", "--data", root, "--out", tmp_path / "out", tmp_path=tmp_path))
    assert len(list((tmp_path / "out").rglob("*.png"))) == 2  # the test split: one pair of each type


def test_bench_quick_measures_the_cpu_backends(tmp_path):
    result = tmp_path / "bench.json"
    proc = ok(console("cminet-bench", "--quick", "--json", result, "--workdir", tmp_path / "work",
                      tmp_path=tmp_path))
    rows = json.loads(result.read_text())["results"]
    ort = [r for r in rows if r["backend"] == "ort-cpu" and r["precision"] == "fp32"]
    assert ort and ort[0]["latency_ms"]["p50"] > 0 and ort[0]["drift"]["max_abs"] < 1e-4, proc.stdout
    if STACK in ("jetpack6", "newest"):  # both install [openvino]: its backend must have been measured
        assert any(r["backend"] == "ov-cpu" for r in rows), proc.stdout


def test_fuse_volume_on_a_real_mri_and_pet(tmp_path):
    pytest.importorskip("nibabel", reason="pip install 'cminet[volume]'")
    import nibabel as nib

    mri, pet = VOLUMES / "spm12/single_subj_T1.nii.gz", VOLUMES / "spm12/template_PET.nii.gz"
    if not mri.is_file():
        pytest.skip(f"real volumes not found at {VOLUMES}")
    out = tmp_path / "fused.nii.gz"
    ok(console("cminet", "fuse-volume", mri, pet, "--modality", "pet", "-o", out, "--dicom-out", tmp_path / "dicom",
               "--png-dir", tmp_path / "png", tmp_path=tmp_path))
    image = nib.load(out)
    assert image.shape == nib.load(mri).shape == (91, 109, 91)
    rgb = np.asarray(image.dataobj)
    assert rgb.dtype.names == ("R", "G", "B")
    assert (rgb["R"].astype(int) - rgb["B"]).mean() > 5  # HOT_IRON colour, not a grey copy of the MRI
    assert len(list((tmp_path / "dicom").glob("*.dcm"))) == 91
    assert (tmp_path / "png" / "montage.png").is_file()


def test_python_api(tmp_path):
    from cminet.runtime import Fuser

    rng = np.random.default_rng(0)
    with Fuser() as fuser:
        a, b = (rng.random((1, 1, 64, 64), dtype=np.float32) for _ in range(2))
        fused = fuser.infer(a, b)
        assert fused.shape == (1, 1, 64, 64) and fused.dtype == np.float32 and np.isfinite(fused).all()
        assert fuser.info["backend"] == "ort-cpu"


def test_serve_and_fuse_with_the_server_from_one_install(tmp_path):
    """`pip install 'cminet[serve]'` alone gives a server and its client (PyTriton holds
    numpy < 2 there, and the runtime must still work beside it)."""
    import importlib.util

    if importlib.util.find_spec("pytriton") is None:
        if STACK == "serve":
            pytest.fail("the serve stack has no pytriton: cminet[serve] did not install it")
        pytest.skip("pip install 'cminet[serve]' (the serve stack of make test-stacks)")
    from cminet.runtime import Fuser
    from cminet.runtime.imaging import read_image
    from cminet.serve import free_port, stop_server, wait_until_ready

    port, log = free_port(), tmp_path / "serve.log"
    with log.open("wb") as sink:
        server = subprocess.Popen([str(BIN / "cminet"), "serve", "--port", str(port), "--backend", "ort-cpu"],
                                  stdout=sink, stderr=subprocess.STDOUT, cwd=tmp_path, start_new_session=True)
    try:
        wait_until_ready(f"http://127.0.0.1:{port}", timeout=180, process=server)
        out = tmp_path / "served.png"
        ok(console("cminet", "fuse", PET_MRI, PET, "-o", out, "--server", f"http://127.0.0.1:{port}",
                   tmp_path=tmp_path))
    except Exception:
        print(log.read_text()[-3000:])
        raise
    finally:
        stop_server(server)
    with Fuser(skip_air=False) as local:  # served fusion runs every pixel (docs/serving.md)
        expected = local.fuse(read_image(PET_MRI), read_image(PET))
    assert np.abs(read_image(out).astype(int) - expected.astype(int)).max() <= 1


# -- cminet doctor ---------------------------------------------------------------------------
def doctor_json(tmp_path, env=None) -> tuple[dict, subprocess.CompletedProcess]:
    proc = console("cminet", "doctor", "--json", tmp_path=tmp_path, env=env)
    assert "Traceback" not in proc.stderr, proc.stderr
    return json.loads(proc.stdout), proc


def by_name(report: dict, section: str) -> dict:
    return {c["name"]: c for c in report["checks"] if c["section"] == section}


def test_doctor_reports_this_environment(tmp_path):
    import onnxruntime

    proc = ok(console("cminet", "doctor", tmp_path=tmp_path))
    assert "ready: cminet fuse runs here" in proc.stdout
    report, proc = doctor_json(tmp_path)
    assert proc.returncode == 0
    software, backends, models = (by_name(report, s) for s in ("software", "backends", "models"))
    assert software["numpy"]["status"] == "ok" and software["numpy"]["detail"].startswith(np.__version__)
    assert software["onnxruntime"]["detail"].startswith(onnxruntime.__version__)
    assert "CPUExecutionProvider" in software["onnxruntime"]["detail"]
    assert software["torch"]["status"] == "info"  # hidden here, absent on a device: optional either way
    assert backends["ort-cpu"]["status"] == "ok" and backends["torch-cpu"]["status"] == "info"
    assert backends["tensorrt"]["status"] == "info" and "pip install 'cminet[trt]'" in backends["tensorrt"]["detail"]
    for model in ("cminet.onnx", "cminet_fp16.onnx"):
        assert models[model]["status"] == "ok" and "sha256" in models[model]["detail"]
    assert report["gpu"] is None and report["next"] == []


@pytest.mark.parametrize("flavour", ["trt10.3-cudapython12", "trt10.3-pycuda", "trt11.1-cudapython13"])
def test_doctor_finds_the_gpu_and_the_tensorrt_backend_on_the_doubles(tmp_path, flavour):
    report, proc = doctor_json(tmp_path, env=subprocess_env(flavour, device_env(tmp_path)))
    assert proc.returncode == 0, proc.stdout
    gpu = report["gpu"]
    assert gpu["compute_capability"] in ("8.7", "9.0") and gpu["memory_mb"] > 1000
    assert gpu["driver_cuda"] == ("13.0" if "13" in flavour else "12.6")
    assert gpu["via"] == ("pycuda" if "pycuda" in flavour else "cuda-python")
    software, backends = by_name(report, "software"), by_name(report, "backends")
    assert software["tensorrt"]["status"] == "ok" and software["tensorrt"]["detail"].startswith(flavour[3:7])
    assert backends["tensorrt"]["status"] == "ok"
    assert backends["ort-cuda"]["status"] == "info"  # CPU ONNX Runtime: no CUDA provider


def test_doctor_survives_libraries_that_import_but_fail(tmp_path):
    """A broken ONNX Runtime (a missing shared library, as after a partial JetPack upgrade) and
    an OpenVINO whose Core cannot start are lines of the report with the fix, not tracebacks."""
    fakes = tmp_path / "fakes"
    (fakes / "onnxruntime").mkdir(parents=True)
    (fakes / "onnxruntime" / "__init__.py").write_text(
        "raise ImportError('libonnxruntime.so.1.17.0: cannot open shared object file')\n")
    (fakes / "openvino").mkdir()
    (fakes / "openvino" / "__init__.py").write_text(
        "__version__ = '2025.0.0'\nclass Core:\n    def __init__(self):\n"
        "        raise RuntimeError('Failed to load plugin libopenvino_intel_cpu_plugin.so')\n")
    env = dict(os.environ, PYTHONPATH=str(fakes))  # torch_free_env would hide openvino itself
    report, proc = doctor_json(tmp_path, env=env)
    assert proc.returncode == 1
    software, backends = by_name(report, "software"), by_name(report, "backends")
    assert software["onnxruntime"]["status"] == "broken"
    assert "cannot open shared object" in software["onnxruntime"]["detail"]
    assert software["openvino"]["status"] == "broken" and "Failed to load plugin" in software["openvino"]["detail"]
    assert backends["ort-cpu"]["status"] == "missing" and backends["ov-cpu"]["status"] == "info"
    assert "pip install cminet" in report["next"] and "pip install 'cminet[openvino]'" in report["next"]
    text = console("cminet", "doctor", tmp_path=tmp_path, env=env)
    assert text.returncode == 1 and "Traceback" not in text.stderr + text.stdout
    assert "to do next:" in text.stdout and "BROKEN" in text.stdout


# -- the stacks themselves ---------------------------------------------------------------------
def declared_minimums() -> dict[str, str]:
    """Lower bounds of the base install and of the extras every device stack installs."""
    from packaging.requirements import Requirement

    config = configparser.ConfigParser()
    config.read(REPO / "setup.cfg")
    lines = config["options"]["install_requires"].split("\n")
    for extra in ("volume", "openvino"):
        lines += config["options.extras_require"][extra].split("\n")
    minimums = {}
    for line in filter(None, (raw.strip() for raw in lines)):
        req = Requirement(line)
        (bound,) = [s.version for s in req.specifier if s.operator == ">="]
        minimums[req.name.lower()] = bound
    return minimums


def test_every_declared_minimum_is_what_the_jetpack6_stack_installs():
    pins = {}
    for line in (REPO / "tests/stacks/jetpack6.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, version = line.split("==")
            pins[name.strip().lower()] = version.strip()
    minimums = declared_minimums()
    assert set(pins) == set(minimums)
    for name, bound in minimums.items():
        # "4.8" admits 4.8.0.76 (OpenCV's first 4.8 wheel); anything else must match the pin exactly
        pinned, wanted = pins[name].split("."), bound.split(".")
        assert pinned[:len(wanted)] == wanted, f"{name}: declared >= {bound}, stack pins {pins[name]}"


@pytest.mark.skipif(STACK != "jetpack6", reason="checks the jetpack6 stack's environment")
def test_the_jetpack6_stack_has_the_device_versions():
    import click
    import onnxruntime

    assert sys.version_info[:2] == (3, 10)
    assert np.__version__.startswith("1.26.") and cv2.__version__.startswith("4.8.")
    assert onnxruntime.__version__ == "1.17.0" and click.__version__ == "8.1.0"
