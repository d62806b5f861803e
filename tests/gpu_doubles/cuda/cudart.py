"""Test double of ``cuda.cudart``: present only in the cuda-python-12.5 flavour (cuda-python
before 12.6.1, which had no ``cuda.bindings``). Importing it is all cminet ever does."""

import fake_gpu

if fake_gpu.gpu().config.cuda != "cuda-python-12.5":
    raise ModuleNotFoundError("No module named 'cuda.cudart'", name="cuda.cudart")
