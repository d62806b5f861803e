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
from cminet.runtime.backends.base import Backend, BackendUnavailable
from cminet.runtime.contract import backend_spec


class TorchBackend(Backend):
    def __init__(self, path: Path, name: str = "torch-cpu", device: int = 0, threads: int | None = None,
                 precision: str | None = None, **_options):
        spec = backend_spec(name)
        precision = precision or "fp32"
        if precision not in spec.precisions:
            raise BackendUnavailable(f"{name}: precision {precision!r} not offered ({', '.join(spec.precisions)})")
        if name == "torch-cuda":
            if not torch.cuda.is_available():
                raise BackendUnavailable("torch-cuda: this torch build sees no CUDA GPU")
            self.device = torch.device(f"cuda:{device}")
        else:
            self.device = torch.device("cpu")
            if threads:
                torch.set_num_threads(threads)
        self.name, self.precision = name, precision
        self.dtype = torch.float16 if precision == "fp16" else torch.float32
        self.model = load_pretrained(path, device=str(self.device)).to(self.dtype)

    @torch.no_grad()
    def run(self, mri: np.ndarray, other: np.ndarray) -> np.ndarray:
        a = torch.from_numpy(np.ascontiguousarray(mri)).to(self.device, self.dtype)
        b = torch.from_numpy(np.ascontiguousarray(other)).to(self.device, self.dtype)
        return self.model(a, b).float().cpu().numpy()  # .cpu() waits for the GPU

    def gpu_memory_mb(self) -> float | None:
        if self.device.type != "cuda":
            return None
        return torch.cuda.max_memory_allocated(self.device) / 2**20

    def info(self) -> dict:
        return {"torch": torch.__version__, "device": str(self.device), "threads": torch.get_num_threads()}
