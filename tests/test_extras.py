"""Each extra of setup.cfg is complete on its own: a command run with only the base install
and that extra (every package that only *other* extras bring is made unimportable) works.

The development environment has every extra at once, which hides an extra that forgot a
package another extra happens to bring (training once needed pydicom, which only [volume]
declared). The hidden set is computed from the installed metadata, so it follows setup.cfg.
"""

from __future__ import annotations

import importlib.metadata
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement

from .helpers import write_dataset

EXTRAS_HERE = ("train", "volume", "openvino", "triton", "dev")  # what `make test` installs


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def closure(extras: tuple[str, ...]) -> set[str]:
    """Installed distributions that ``pip install 'cminet[extras]'`` brings (cminet excluded)."""
    seen: set[str] = set()
    todo: list[tuple[str, frozenset[str]]] = [("cminet", frozenset(extras))]
    while todo:
        name, wanted = todo.pop()
        try:
            requires = importlib.metadata.requires(name) or []
        except importlib.metadata.PackageNotFoundError:
            continue  # not installed here (a platform-specific dependency): nothing to hide
        for line in requires:
            req = Requirement(line)
            if req.marker and not any(req.marker.evaluate({**default_environment(), "extra": e})
                                      for e in (wanted or {""})):
                continue
            dist = _norm(req.name)
            if dist not in seen:
                seen.add(dist)
                todo.append((dist, frozenset(req.extras)))
    return seen - {"cminet"}


def modules_of(distributions: set[str]) -> set[str]:
    """Top-level import names of ``distributions``."""
    return {module for module, dists in importlib.metadata.packages_distributions().items()
            if any(_norm(d) in distributions for d in dists)}


def only_extra_env(tmp_path: Path, extra: str) -> dict:
    """Environment for a subprocess that sees the base install and ``extra`` only."""
    keep = modules_of(closure((extra,)))
    hide = sorted(modules_of(closure(EXTRAS_HERE)) - keep - {"_distutils_hack", "pkg_resources", "setuptools"})
    site = tmp_path / f"only_{extra}"
    site.mkdir()
    (site / "sitecustomize.py").write_text(f"import sys\nfor name in {hide!r}:\n    sys.modules[name] = None\n")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(site), *filter(None, [env.get("PYTHONPATH")])])
    return env


def test_hiding_follows_the_declared_extras():
    """The mechanism itself: [volume] alone hides torch and OpenVINO and keeps pydicom;
    [train] keeps torch and pydicom (its colour augmentation reads the DICOM palettes)."""
    volume, train = modules_of(closure(("volume",))), modules_of(closure(("train",)))
    everything = modules_of(closure(EXTRAS_HERE))
    assert {"pydicom", "nibabel", "highdicom"} <= volume and "torch" not in volume and "openvino" not in volume
    assert {"torch", "safetensors", "onnx", "pydicom"} <= train and "openvino" not in train
    assert {"openvino", "tritonclient", "torch"} <= everything


@pytest.mark.slow
def test_training_needs_only_the_train_extra(tmp_path):
    pytest.importorskip("torch")
    root = write_dataset(tmp_path / "data", pairs=("ct_mri", "pet_mri"), n=6, size=48)
    argv = [sys.executable, "-m", "cminet.cli", "train", "--data", str(root), "--out", str(tmp_path / "run"),
            "--epochs", "1", "--batch-size", "2", "--crop", "32"]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=600, cwd=tmp_path,
                          env=only_extra_env(tmp_path, "train"))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert (tmp_path / "run" / "last.json").is_file()
