"""Test double of pycuda (only ``pycuda.driver``); importable in the ``cuda=pycuda`` flavour."""

import fake_gpu

if fake_gpu.gpu().config.cuda != "pycuda":
    raise ModuleNotFoundError("No module named 'pycuda'", name="pycuda")
VERSION = (2024, 1)
