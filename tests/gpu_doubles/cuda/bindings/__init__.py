"""Test double of ``cuda.bindings`` (cuda-python >= 12.6.1). See ``fake_gpu``."""

import fake_gpu

_flavour = fake_gpu.gpu().config.cuda or ""
if _flavour not in ("cuda-python-12.6", "cuda-python-13"):
    # pycuda-only, none, or cuda-python before 12.6.1: no cuda.bindings package at all.
    raise ModuleNotFoundError("No module named 'cuda.bindings'", name="cuda.bindings")
__version__ = {"cuda-python-12.6": "12.6.1", "cuda-python-13": "13.0.0"}[_flavour]
