"""``cminet doctor``: what this environment has for cminet and what to install next.

One check per line: the Python stack (numpy, OpenCV, ONNX Runtime and its providers, OpenVINO,
TensorRT, the CUDA bindings, torch where present), the GPU through the CUDA bindings, which
cminet backends can run here and why not, and the shipped model files with their sha256.
Each probe runs on its own: a library that is installed but fails to import or initialise
is a ``broken`` line with its first error line, never a traceback, so the report still
comes out on a half-broken device. Torch-free: torch is only reported when installed.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import importlib.util
import platform
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .backends.base import unavailable_reason
from .contract import BACKENDS, REFERENCE_FILE, SHIPPED_ONNX, SHIPPED_WEIGHTS, shipped_dir
from .cuda import explain_missing_bindings, open_cuda
from .errors import first_line

OK, MISSING, BROKEN, INFO = "ok", "missing", "broken", "info"
INSTALL = "pip install 'cminet[{extra}]'"


@dataclass
class Check:
    """One line of the report. ``fix`` is the command that would turn a missing or broken
    line into an ``ok`` one (None where nothing needs doing or nothing can be installed)."""

    section: str
    name: str
    status: str
    detail: str
    fix: str | None = None


@dataclass
class Report:
    checks: list[Check] = field(default_factory=list)
    gpu: dict[str, Any] | None = None  # name, compute capability, memory, driver, via

    def add(self, *args, **kwargs) -> Check:
        check = Check(*args, **kwargs)
        self.checks.append(check)
        return check

    def fixes(self) -> list[str]:
        """The install commands for everything missing or broken, each once, in report order."""
        return list(dict.fromkeys(c.fix for c in self.checks if c.fix and c.status in (MISSING, BROKEN)))

    def as_dict(self) -> dict:
        return {"checks": [asdict(c) for c in self.checks], "gpu": self.gpu, "next": self.fixes()}


def _version_of(distributions: tuple[str, ...]) -> str | None:
    for dist in distributions:
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def _probe(report: Report, section: str, name: str, module: str, distributions: tuple[str, ...],
           fix: str | None, describe: Callable[[Any], str] | None = None, needed: bool = True,
           explain: Callable[[], str] | None = None) -> None:
    """Import ``module`` and describe it in one line of the report: ok, missing or broken.
    ``needed=False`` makes a missing module an ``info`` line: optional, nothing is wrong
    without it. ``explain`` says why a package whose top level is installed lacks ``module``."""
    version = _version_of(distributions)
    try:
        found = importlib.util.find_spec(module.split(".")[0]) is not None
    except (ImportError, ValueError):  # a half-removed package: a module without a spec
        found = False
    if not found:
        report.add(section, name, MISSING if needed else INFO, "not installed", fix)
        return
    try:
        loaded = importlib.import_module(module)
        detail = version or str(getattr(loaded, "__version__", "installed"))
        if describe is not None:
            detail = f"{detail}; {describe(loaded)}"
    except Exception as exc:  # noqa: BLE001 - the point is to report whatever goes wrong
        if isinstance(exc, ModuleNotFoundError) and exc.name and (module + ".").startswith(exc.name + "."):
            # The top-level package is there but not this module: cuda-python before 12.6.1 has
            # `cuda` without `cuda.bindings`. Not installed, as far as cminet is concerned.
            report.add(section, name, MISSING if needed else INFO, explain() if explain else f"no {module}", fix)
        else:
            report.add(section, name, BROKEN,
                       f"{version or 'installed'} but {type(exc).__name__}: {first_line(exc)}", fix)
        return
    report.add(section, name, OK, detail)


def _ort_providers(ort) -> str:
    return "providers " + ", ".join(ort.get_available_providers())


def _openvino_devices(ov) -> str:
    return "devices " + ", ".join(ov.Core().available_devices)


def _torch_cuda(torch) -> str:
    if not torch.cuda.is_available():
        return "CPU only"
    return f"CUDA {torch.version.cuda}, {torch.cuda.get_device_name(0)}"


def _software(report: Report) -> None:
    section = "software"
    report.add(section, "python", OK, f"{platform.python_version()} ({sys.executable}, {platform.machine()})")
    import cminet

    report.add(section, "cminet", OK, f"{cminet.__version__} ({Path(cminet.__file__).parent})")
    base = "pip install cminet"
    _probe(report, section, "numpy", "numpy", ("numpy",), base)
    _probe(report, section, "opencv", "cv2", ("opencv-python-headless", "opencv-python",
                                              "opencv-contrib-python-headless", "opencv-contrib-python"), base)
    _probe(report, section, "onnxruntime", "onnxruntime", ("onnxruntime", "onnxruntime-gpu"), base, _ort_providers)
    _probe(report, section, "openvino", "openvino", ("openvino",), INSTALL.format(extra="openvino"),
           _openvino_devices, needed=False)
    _probe(report, section, "tensorrt", "tensorrt", ("tensorrt", "tensorrt-cu12", "tensorrt-cu13"),
           INSTALL.format(extra="trt") + " (JetPack ships it)", needed=False)
    _probe(report, section, "cuda-python", "cuda.bindings", ("cuda-bindings", "cuda-python"),
           INSTALL.format(extra="gpu"), needed=False, explain=explain_missing_bindings)
    _probe(report, section, "pycuda", "pycuda", ("pycuda",), None, needed=False)
    _probe(report, section, "torch", "torch", ("torch",), INSTALL.format(extra="train"), _torch_cuda, needed=False)
    for module, extra in (("nibabel", "volume"), ("pydicom", "volume"), ("highdicom", "volume"),
                          ("tritonclient", "triton")):
        _probe(report, section, module, module, (module,), INSTALL.format(extra=extra), needed=False)


def _gpu(report: Report) -> None:
    """The GPU through the CUDA bindings the TensorRT backend uses (cuda-python, else pycuda)."""
    try:
        with open_cuda(0) as cuda:
            info = cuda.device_info()
            driver = cuda.driver_version()
            report.gpu = {"name": info.name, "compute_capability": info.compute_capability,
                          "memory_mb": round(info.total_memory_mb), "driver_cuda": driver, "via": cuda.name}
    except Exception as exc:  # noqa: BLE001 - no bindings, no driver, no device: all one line
        report.add("gpu", "gpu", INFO, first_line(exc, 300))
        return
    report.add("gpu", "gpu", OK, f"{info.name}, compute capability {info.compute_capability}, "
                                 f"{info.total_memory_mb / 1024:.1f} GiB, driver CUDA {driver} (via {cuda.name})")


def _backends(report: Report) -> None:
    """Each backend's own verdict (:func:`~cminet.runtime.backends.base.unavailable_reason`)."""
    for name, spec in BACKENDS.items():
        problem = unavailable_reason(name)
        if problem is None:
            report.add("backends", name, OK, spec.summary)
        else:
            # Only the base install's backend is required; the rest are choices for the device.
            needed = name == "ort-cpu"
            report.add("backends", name, MISSING if needed else INFO, problem.removeprefix(f"{name}: "),
                       spec.install if needed else None)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _models(report: Report) -> None:
    folder = shipped_dir()
    for file in (*SHIPPED_ONNX.values(), SHIPPED_WEIGHTS, REFERENCE_FILE):
        path = folder / file
        if not path.is_file():
            report.add("models", file, BROKEN, f"missing from {folder}", "pip install --force-reinstall cminet")
            continue
        try:
            report.add("models", file, OK, f"{path.stat().st_size / 2**20:.2f} MiB, sha256 {_sha256(path)[:16]}")
        except OSError as exc:
            report.add("models", file, BROKEN, f"unreadable: {first_line(exc)}", "pip install --force-reinstall cminet")


def diagnose() -> Report:
    """Run every check; never raises for what the environment lacks."""
    report = Report()
    _software(report)
    _gpu(report)
    _backends(report)
    _models(report)
    return report


def render(report: Report) -> str:
    """The report as one screen of text: a block per section, then what to do next."""
    lines: list[str] = []
    width = max(len(c.name) for c in report.checks)
    for section in dict.fromkeys(c.section for c in report.checks):
        lines.append(f"{section}:")
        for check in (c for c in report.checks if c.section == section):
            mark = {OK: "ok", MISSING: "MISSING", BROKEN: "BROKEN", INFO: "-"}[check.status]
            lines.append(f"  {check.name:<{width}}  {mark:<7}  {check.detail}")
    fixes = report.fixes()
    lines.append("")
    if fixes:
        lines.append("to do next:")
        lines.extend(f"  {fix}" for fix in fixes)
    else:
        usable = [c.name for c in report.checks if c.section == "backends" and c.status == OK]
        lines.append(f"ready: cminet fuse runs here (backends: {', '.join(usable)})")
    return "\n".join(lines)


__all__ = ["Check", "Report", "diagnose", "render"]
