"""PyTorch eager behind the runtime's :class:`~cminet.runtime.backends.base.Backend`
interface: the FP32 reference every other backend is compared with, and what
``cminet-bench`` measures as ``torch-cpu`` / ``torch-cuda``.

It lives on the torch side and is reached through the registry
(:data:`cminet.runtime.contract.BACKENDS`), so importing the runtime never imports torch.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from cminet.fusion import load_pretrained
from cminet.model import CMINet
from cminet.runtime.backends.base import Backend, BackendUnavailable
from cminet.runtime.contract import ContractError, backend_spec
from cminet.runtime.errors import SizeLimitError


class TorchBackend(Backend):
    def __init__(self, path: Path, name: str = "torch-cpu", device: int | None = None, threads: int | None = None,
                 precision: str | None = None):
        spec = backend_spec(name)
        if device is not None and name == "torch-cpu":
            raise ContractError("device: torch-cpu runs on the CPU; a CUDA device needs torch-cuda")
        if threads is not None and name == "torch-cuda":
            raise ContractError("threads: torch-cuda runs on the GPU; CPU threads are for torch-cpu")
        precision = precision or "fp32"
        if precision not in spec.precisions:
            raise BackendUnavailable(f"{name}: precision {precision!r} not offered ({', '.join(spec.precisions)})")
        if name == "torch-cuda":
            if not torch.cuda.is_available():
                raise BackendUnavailable("torch-cuda: this torch build sees no CUDA GPU")
            self.device = torch.device(f"cuda:{device or 0}")
        else:
            self.device = torch.device("cpu")
            if threads:
                torch.set_num_threads(threads)
        self.name, self.precision = name, precision
        self.dtype = torch.float16 if precision == "fp16" else torch.float32
        self.model = load_pretrained(path, device=str(self.device)).to(self.dtype)
        self.config_json = self.model.config.to_json()

    @classmethod
    def from_model(cls, model: CMINet) -> TorchBackend:
        """A backend on a model already in memory (its device and dtype as they are)."""
        backend = cls.__new__(cls)
        param = next(model.parameters())
        backend.model, backend.device, backend.dtype = model.eval(), param.device, param.dtype
        backend.name = "torch-cuda" if param.device.type == "cuda" else "torch-cpu"
        backend.precision = "fp16" if param.dtype == torch.float16 else "fp32"
        backend.config_json = model.config.to_json()
        return backend

    @classmethod
    def unavailable(cls, name: str) -> str | None:
        if name == "torch-cuda" and not torch.cuda.is_available():
            return "torch-cuda: this torch build sees no CUDA GPU"
        return None

    @torch.no_grad()
    def run_impl(self, mri: np.ndarray, other: np.ndarray) -> np.ndarray:
        a = torch.from_numpy(mri).to(self.device, self.dtype)
        b = torch.from_numpy(other).to(self.device, self.dtype)
        try:
            return self.model(a, b).float().cpu().numpy()  # .cpu() waits for the GPU
        except (torch.OutOfMemoryError, RuntimeError) as exc:
            if not isinstance(exc, torch.OutOfMemoryError) and "allocate" not in str(exc):
                raise
            raise SizeLimitError(f"out of {self.device.type.upper()} memory for a {a.shape[2]}×{a.shape[3]} "
                                 "image; fuse it in smaller tiles (tile=512, cminet fuse --tile 512)") from None

    def gpu_memory_mb(self) -> float | None:
        if self.device.type != "cuda":
            return None
        return torch.cuda.max_memory_allocated(self.device) / 2**20

    def info(self) -> dict:
        return {"torch": torch.__version__, "device": str(self.device), "threads": torch.get_num_threads()}
