"""Test double of the ``cuda`` package of cuda-python (see ``fake_gpu`` for the flavours).

cuda-python 12.6.1 moved the bindings to ``cuda.bindings.{driver,runtime}``; releases
before that only had ``cuda.cudart``/``cuda.cuda`` (removed again in 13.0). Which of the
two is importable here follows ``CMINET_GPU_DOUBLES``'s ``cuda=`` value.
"""

import fake_gpu

_flavour = fake_gpu.gpu().config.cuda or ""
if _flavour == "cuda-python-12.5":
    __version__ = "12.5.0"
