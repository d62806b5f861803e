"""How much memory fusing an image takes and how much this machine has: the runtime's size
limits are derived from these two numbers, not hard-coded.

Peak working memory of one network call on N×1×H×W, above the loaded model, is modelled as

    bytes ≈ overhead + per_pixel × N·Hp·Wp + per_attention_element × N·heads·T·T/kv²

with Hp, Wp the sides padded to the network's multiple and T = Hp·Wp/p² the token count.
The last term is the attention matrix (queries × pooled keys): it grows with the square of
the token count, so it is 60 % of the total at 1024² and 90 % at 2048². The coefficients
were measured (peak RSS above the loaded model, one process per size, 128² … 1280²; the
docs/bad-input.md has the numbers) and rounded up, so the estimate errs high.

GPU backends keep their activations in GPU memory, which this module does not model: their
limit is the engine's profile, and an out-of-memory failure is reported as one line.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, fields
from pathlib import Path

from .contract import PAD_MULTIPLE, ContractError
from .errors import SizeLimitError

LIMIT_VARIABLE = "CMINET_MAX_MEMORY"
BUDGET_FRACTION = 0.75  # of the memory available now: the rest is for the OS and other programs
GIB = 2**30


MAX_CONFIG_VALUE = 4096  # channels, heads, patch size, pooling: far above any CMINet's


@dataclass(frozen=True)
class NetworkShape:
    """The hyper-parameters that set a CMINet's activation memory (the shipped config's
    values by default; an exported ONNX carries its own in its metadata)."""

    channels: int = 16
    num_heads: int = 3
    patch_size: int = 8
    kv_pool: int = 2

    @classmethod
    def from_config_json(cls, text: str | None) -> NetworkShape:
        """From ``cminet.config`` metadata (a CMINetConfig as JSON); defaults if absent or
        unreadable (a foreign model: the estimate is then the shipped model's). A value no
        network can have (0, negative, absurdly large, not a whole number) is refused: the
        metadata comes with a file and is checked like any other input."""
        try:
            data = json.loads(text) if text and len(text) < 1 << 16 else {}
        except (ValueError, RecursionError):
            return cls()
        if not isinstance(data, dict):
            return cls()
        values = {}
        for f in fields(cls):
            if f.name not in data:
                continue
            value = data[f.name]
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_CONFIG_VALUE:
                raise ContractError(f"model metadata: {f.name} = {value!r}; a CMINet has a whole number from 1 to "
                                    f"{MAX_CONFIG_VALUE}")
            values[f.name] = value
        return cls(**values)

    def attention_elements(self, n: int, height: int, width: int) -> int:
        hp, wp = padded(height, self.patch_size * self.kv_pool), padded(width, self.patch_size * self.kv_pool)
        tokens = (hp // self.patch_size) * (wp // self.patch_size)
        return n * self.num_heads * tokens * (tokens // self.kv_pool**2)


@dataclass(frozen=True)
class MemoryCost:
    """Measured coefficients of the model above for one backend and precision."""

    per_pixel: float  # bytes per padded input pixel (convolution activations)
    per_attention_element: float  # bytes per attention-matrix element
    overhead: float = 64 * 2**20  # allocator arenas, I/O copies


# (backend, precision) → cost, for ONNX Runtime 1.32 and torch 2.13 on x86 CPUs. per_pixel
# is fitted to peak RSS above the loaded model at 128² … 768² and rounded up; the attention
# term is the upper bound of the scores and their softmax alive together (2 × 4 bytes; FP16
# adds its casts), which the measurements at 1024² and 1280² approach from below.
COSTS = {
    ("ort-cpu", "fp32"): MemoryCost(per_pixel=700, per_attention_element=8.0),
    ("ort-cpu", "fp16"): MemoryCost(per_pixel=750, per_attention_element=10.0),  # FP16 scores, FP32 Softmax
    ("torch-cpu", "fp32"): MemoryCost(per_pixel=800, per_attention_element=8.0),
    # OpenVINO 2026.4 CPU: peak RSS above the compiled model 47 / 168 / 651 MB at 256² / 512² /
    # 1024² (ORT: 49 / 225 / 1881): it never holds the whole attention matrix, so that term is
    # small; 1.0 keeps the estimate above every measurement.
    ("ov-cpu", "fp32"): MemoryCost(per_pixel=700, per_attention_element=1.0),
    # GPU memory, against the device's free memory. Measured on an H200 (torch 2.11 + CUDA 13,
    # shipped weights, 1×1024²): PyTorch with fused attention peaks at 512 MB in FP16 and 966 MB
    # in FP32 (no score matrix); the explicit form, which ONNX Runtime's CUDA and TensorRT
    # providers also run, at 1060 / 2098 MB: the score matrix's 201 M elements cost 2.9 / 5.9
    # bytes each. TensorRT engines allocate their activations at load for the profile's
    # largest shape (checked then), so a call needs nothing more.
    ("torch-cuda", "fp16"): MemoryCost(per_pixel=512, per_attention_element=0.0),
    ("torch-cuda", "fp32"): MemoryCost(per_pixel=966, per_attention_element=0.0),
    ("ort-cuda", "fp16"): MemoryCost(per_pixel=512, per_attention_element=2.9),
    ("ort-cuda", "fp32"): MemoryCost(per_pixel=966, per_attention_element=5.9),
    ("ort-trt", "fp16"): MemoryCost(per_pixel=512, per_attention_element=2.9),
}


def padded(side: int, multiple: int = PAD_MULTIPLE) -> int:
    return -(-side // multiple) * multiple


def network_peak_bytes(n: int, height: int, width: int, backend: str, precision: str,
                       shape: NetworkShape | None = None) -> int | None:
    """Estimated peak working memory of one call, or None where it is not modelled (GPU)."""
    cost = COSTS.get((backend, precision))
    if cost is None:
        return None
    shape = shape or NetworkShape()
    multiple = shape.patch_size * shape.kv_pool
    pixels = n * padded(height, multiple) * padded(width, multiple)
    per_pixel = cost.per_pixel * shape.channels / NetworkShape.channels
    return int(cost.overhead + per_pixel * pixels + cost.per_attention_element * shape.attention_elements(n, height,
                                                                                                              width))


def available_bytes() -> int | None:
    """Memory a new allocation can get now: MemAvailable, capped by a cgroup (container)
    limit; None where neither can be read (then nothing is refused for memory)."""
    found = []
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    found.append(int(line.split()[1]) * 1024)
    except OSError:
        pass
    for limit_file, usage_file in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                                   ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                                    "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        try:
            limit = Path(limit_file).read_text().strip()
            if limit.isdigit() and int(limit) < 2**60:
                found.append(max(0, int(limit) - int(Path(usage_file).read_text().strip())))
        except (OSError, ValueError):
            continue
    if not found and hasattr(os, "sysconf"):
        try:
            found.append(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
        except (ValueError, OSError):
            pass
    return min(found) if found else None


def budget_bytes() -> int | None:
    """What one fusion may use: :data:`BUDGET_FRACTION` of the available memory, and at most
    ``$CMINET_MAX_MEMORY`` (e.g. ``4G``) where that is set."""
    available = available_bytes()
    budget = None if available is None else int(available * BUDGET_FRACTION)
    limit = os.environ.get(LIMIT_VARIABLE)
    if limit:
        cap = parse_bytes(limit, LIMIT_VARIABLE)
        budget = cap if budget is None else min(budget, cap)
    return budget


def parse_bytes(text: str, name: str) -> int:
    """'4G', '512M', '1.5GiB', '1000000' → bytes (binary units)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?\s*", text, re.IGNORECASE)
    if not match:
        raise ContractError(f"{name}: expected a size like 4G or 512M, got {text!r}")
    return int(float(match[1]) * 1024 ** " KMGT".index(match[2].upper() or " "))


def largest_square(backend: str, precision: str, budget: int, shape: NetworkShape | None = None,
                   n: int = 1) -> int:
    """The largest side (a multiple of 16) whose N×side² call fits ``budget``; 0 if none."""
    lo, hi = 0, 1 << 20
    while lo < hi:  # the cost only grows with the side: bisect
        mid = (lo + hi + 1) // 2
        need = network_peak_bytes(n, mid * PAD_MULTIPLE, mid * PAD_MULTIPLE, backend, precision, shape)
        if need is not None and need <= budget:
            lo = mid
        else:
            hi = mid - 1
    return lo * PAD_MULTIPLE


def human(nbytes: float) -> str:
    """1536 → '1.5 KiB', 3.2e9 → '3.0 GiB'."""
    value = float(nbytes)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} PiB"


def check_fits(nbytes: int, what: str) -> None:
    """:class:`SizeLimitError` when ``nbytes`` exceed this machine's budget."""
    budget = budget_bytes()
    if budget is not None and nbytes > budget:
        raise SizeLimitError(f"{what}: needs about {human(nbytes)} of memory, {human(budget)} is available "
                              "for it on this machine")


# Pre- and post-processing of one pair (uint8 inputs, YCbCr floats, network inputs, output,
# chroma, the RGB result) and the tile accumulators: bytes per pixel, rounded up.
IMAGE_BYTES_PER_PIXEL = 64


def check_image_fits(height: int, width: int, what: str) -> None:
    """Refuse an image whose pixels alone (before the network) would not fit in memory."""
    check_fits(IMAGE_BYTES_PER_PIXEL * height * width, f"{what} of {height}×{width} pixels")
