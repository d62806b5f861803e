"""Test doubles of ``tensorrt``, ``cuda.bindings.runtime`` and ``pycuda.driver`` on one fake
GPU (``fake_gpu.py`` says what is modelled and what is not). They prove call shapes and
data flow through the cminet GPU code, not kernels or timing.

Two ways in:

* a subprocess: prepend this folder to ``PYTHONPATH`` and pick a flavour with
  ``CMINET_GPU_DOUBLES`` (:func:`subprocess_env` does both), e.g.::

      PYTHONPATH=tests/gpu_doubles CMINET_GPU_DOUBLES='tensorrt=11.1;cuda=cuda-python-13;driver=13.0' \\
          python -m cminet.export.tensorrt_build cminet_fp16.onnx cminet_fp16.engine

* in-process: the ``gpu_doubles`` pytest fixture (parametrised over :data:`FLAVOURS`) or
  the :func:`installed` context manager, which put the doubles first on ``sys.path``,
  forget any real or earlier copies of the modules, and restore everything afterwards.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import sys
from pathlib import Path

import pytest

DOUBLES_DIR = Path(__file__).resolve().parent
# fake_gpu's constants, read without importing it as the top-level module the doubles share.
_spec = importlib.util.spec_from_file_location("_cminet_fake_gpu_constants", DOUBLES_DIR / "fake_gpu.py")
_constants = sys.modules[_spec.name] = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_constants)
FLAVOURS: dict[str, str] = _constants.FLAVOURS
ENV: str = _constants.ENV
_DOUBLED = ("tensorrt", "cuda", "pycuda", "fake_gpu")


def subprocess_env(flavour: str, base: dict | None = None) -> dict:
    """Environment for a child process that should import the doubles (``flavour``: a key of
    :data:`FLAVOURS` or a raw ``CMINET_GPU_DOUBLES`` value)."""
    env = dict(os.environ if base is None else base)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, (str(DOUBLES_DIR), env.get("PYTHONPATH"))))
    env[ENV] = FLAVOURS.get(flavour, flavour)
    return env


def _forget() -> None:
    for name in list(sys.modules):
        if name.split(".")[0] in _DOUBLED:
            del sys.modules[name]


@contextlib.contextmanager
def installed(flavour: str):
    """Within the block ``import tensorrt`` / ``cuda.bindings`` / ``pycuda.driver`` give the
    doubles of ``flavour``; yields the fake GPU for assertions (live allocations, calls)."""
    saved_env = os.environ.get(ENV)
    saved_modules = {n: m for n, m in sys.modules.items() if n.split(".")[0] in _DOUBLED}
    os.environ[ENV] = FLAVOURS.get(flavour, flavour)
    _forget()
    sys.path.insert(0, str(DOUBLES_DIR))
    try:
        import fake_gpu as fresh

        yield fresh.configure()
    finally:
        sys.path.remove(str(DOUBLES_DIR))
        _forget()
        sys.modules.update(saved_modules)
        if saved_env is None:
            os.environ.pop(ENV, None)
        else:
            os.environ[ENV] = saved_env


@pytest.fixture(name="gpu_doubles", params=sorted(FLAVOURS))
def gpu_doubles_fixture(request):
    """``gpu_doubles``: the doubles in-process, once per flavour; the value is the fake GPU.
    Import this function into a test module (any name) to make the fixture available."""
    with installed(request.param) as gpu:
        gpu.flavour = request.param
        yield gpu
