"""What one forward pass costs, counted (not timed) with PyTorch: FLOPs, bytes moved, and
attention's share. These feed the roofline estimates and the GFLOP/s column."""

from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode

from cminet.model import CMINet, on_meta


@torch.no_grad()
def model_cost(model: CMINet, height: int, width: int, batch: int = 1, bytes_per_value: int = 4) -> dict:
    """FLOPs (FlopCounterMode: 2 per multiply-add of convs and matmuls), the FLOPs inside the
    attention modules, and bytes moved: every leaf module's inputs and outputs read/written
    once plus the weights, at ``bytes_per_value`` (4 FP32, 2 FP16). The byte count assumes no
    fusion between layers, so it is an upper bound on what a fused engine moves. Counted on
    the meta device: any size costs no memory and a fraction of a second."""
    params = sum(p.numel() for p in model.parameters())
    model, a = on_meta(model, batch, height, width)
    moved = [0]

    def count_io(module, inputs, output):
        tensors = [t for t in inputs if torch.is_tensor(t)] + ([output] if torch.is_tensor(output) else [])
        moved[0] += sum(t.numel() for t in tensors) * bytes_per_value

    leaves = [m for m in model.modules() if not list(m.children())]
    hooks = [m.register_forward_hook(count_io) for m in leaves]
    counter = FlopCounterMode(display=False)
    try:
        with counter:
            model(a, a)
    finally:
        for h in hooks:
            h.remove()
    counts = counter.get_flop_counts()
    total = sum(counts["Global"].values())
    attention = sum(sum(v.values()) for k, v in counts.items() if k.endswith(".attn"))
    return {
        "flops": int(total),
        "attention_flops": int(attention),
        "attention_share": attention / total if total else 0.0,
        "bytes_moved": int(moved[0] + params * bytes_per_value),
        "parameters": params,
    }
