"""Test double of ``cuda.bindings.utils`` (added in cuda-bindings 12.9.1 / 13.0.0; the
cuda-python-12.6 flavour, like the real 12.6.x, has no such module).

``get_cuda_native_handle(obj)`` is the documented replacement for ``int(cuda_obj)``, which
13.0.0's release notes deprecate ("subject to future removal")."""

import fake_gpu

if fake_gpu.gpu().config.cuda != "cuda-python-13":
    raise ModuleNotFoundError("No module named 'cuda.bindings.utils'", name="cuda.bindings.utils")


def get_cuda_native_handle(obj) -> int:
    return obj._handle
