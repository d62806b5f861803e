"""cminet.runtime: the torch-free fusion runtime for devices (numpy + OpenCV + ONNX Runtime,
or TensorRT + cuda-python / pycuda). Importing it never imports PyTorch.

    from cminet.runtime import Fuser
    fused = Fuser("cminet.onnx").fuse(mri, pet)
"""

from .backends.base import BackendUnavailable
from .errors import CMINetError, ImageError, ModelFileError
from .fuser import BACKENDS, Fuser

__all__ = ["BACKENDS", "BackendUnavailable", "CMINetError", "Fuser", "ImageError", "ModelFileError"]
