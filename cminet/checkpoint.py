"""Checkpoints: weights in ``.safetensors`` (never pickle) with the config in its metadata,
and the same config as a readable ``.json`` beside it.

Training state for ``--resume`` (optimizer moments, epoch, best validation loss) is a
second safetensors file, ``*.state.safetensors``, so resuming never unpickles either.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from cminet.model import CMINet, CMINetConfig
from cminet.runtime.errors import ModelFileError, first_line
from cminet.runtime.files import atomic_output

FORMAT = "cminet-v1"


def _atomic(path: Path, write) -> None:
    with atomic_output(path) as tmp:
        write(str(tmp))


def save_checkpoint(model: CMINet, path: str | Path, info: dict | None = None) -> Path:
    """Write ``path`` (.safetensors) and ``path.with_suffix('.json')`` atomically."""
    path = Path(path)
    config_json = model.config.to_json()
    meta = {"format": FORMAT, "config": config_json, "info": json.dumps(info or {})}
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    _atomic(path, lambda tmp: save_file(tensors, tmp, metadata=meta))
    sidecar = {"format": FORMAT, "config": json.loads(config_json), **(info or {})}
    _atomic(path.with_suffix(".json"), lambda tmp: Path(tmp).write_text(json.dumps(sidecar, indent=2) + "\n"))
    return path


def read_config(path: str | Path) -> CMINetConfig:
    if not isinstance(path, str | Path) or str(path) == "":
        raise ModelFileError(f"weights: expected a .safetensors file path, got {path!r}")
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"{path}: no such weights file" if not path.exists() else f"{path}: not a file")
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
    except (SafetensorError, OSError, ValueError) as exc:
        raise ModelFileError(f"{path}: not a readable .safetensors file ({exc})") from None
    if meta.get("format") != FORMAT or "config" not in meta:
        raise ModelFileError(f"{path}: not a cminet checkpoint (no '{FORMAT}' config in its metadata)")
    try:
        return CMINetConfig.from_json(meta["config"])
    except (ValueError, TypeError, RecursionError) as exc:
        raise ModelFileError(f"{path}: bad config in metadata ({exc})") from None


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> CMINet:
    """Build the model from the checkpoint's own config and load its weights (eval mode)."""
    config = read_config(path)
    check_shapes(path, config)  # before allocating anything the file's config asks for
    try:
        state = load_file(str(path), device=str(device))
    except (SafetensorError, OSError, ValueError) as exc:
        raise ModelFileError(f"{path}: cannot read weights ({exc})") from None
    model = CMINet(config)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise ModelFileError(f"{path}: weights do not match the config ({first})") from None
    check_finite(model, path)
    return model.to(device).eval()


def check_shapes(path: str | Path, config: CMINetConfig) -> None:
    """The tensors the config's model has must be the file's tensors, shape for shape. Checked
    on a model built on the meta device (no memory) from the safetensors header alone, so
    a hostile config (a million channels) is refused instead of allocated."""
    try:
        with safe_open(str(path), framework="pt") as fh:
            stored = {key: tuple(fh.get_slice(key).get_shape()) for key in fh.keys()}
        with torch.device("meta"):
            expected = {k: tuple(v.shape) for k, v in CMINet(config).state_dict().items()}
    except (SafetensorError, OSError, ValueError, TypeError, RuntimeError, OverflowError) as exc:
        raise ModelFileError(f"{path}: not a usable cminet checkpoint ({first_line(exc, 160)})") from None
    if stored != expected:
        missing = sorted(set(expected) - set(stored))
        wrong = sorted(k for k in set(expected) & set(stored) if expected[k] != stored[k])
        detail = (f"missing {missing[0]}" if missing else f"{wrong[0]} is {stored[wrong[0]]}, expected "
                  f"{expected[wrong[0]]}" if wrong else f"unexpected {sorted(set(stored) - set(expected))[0]}")
        raise ModelFileError(f"{path}: weights do not match the config in its metadata ({detail})")


def check_finite(model: torch.nn.Module, source: str | Path) -> None:
    """Refuse weights holding NaN or Inf (a diverged run, a corrupted file): they would fuse
    or export into NaN images. :class:`ModelFileError` names ``source`` and the tensors."""
    bad = [name for name, tensor in model.state_dict().items()
           if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all())]
    if bad:
        shown = ", ".join(bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
        raise ModelFileError(f"{source}: {len(bad)} weight tensor(s) hold NaN or Inf ({shown})")


def save_training_state(path: str | Path, optimizer: torch.optim.Optimizer, info: dict) -> None:
    """Optimizer tensors + JSON-able info (epoch, best loss, ...) in one safetensors file."""
    tensors, scalars = {}, {}
    for idx, state in optimizer.state_dict()["state"].items():
        for key, value in state.items():
            if torch.is_tensor(value):
                tensors[f"{idx}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars[f"{idx}.{key}"] = value
    meta = {"info": json.dumps(info), "scalars": json.dumps(scalars),
            "param_groups": json.dumps(optimizer.state_dict()["param_groups"])}
    _atomic(Path(path), lambda tmp: save_file(tensors, tmp, metadata=meta))


def load_training_state(path: str | Path, optimizer: torch.optim.Optimizer) -> dict:
    """Restore optimizer state saved by :func:`save_training_state`; returns its info."""
    path = Path(path)
    try:
        tensors = load_file(str(path))
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata()
    except (SafetensorError, OSError, ValueError) as exc:
        raise ModelFileError(f"{path}: cannot read training state ({exc})") from None
    state: dict[int, dict] = {}
    for name, value in list(tensors.items()) + list(json.loads(meta["scalars"]).items()):
        idx, key = name.split(".", 1)
        state.setdefault(int(idx), {})[key] = value
    optimizer.load_state_dict({"state": state, "param_groups": json.loads(meta["param_groups"])})
    return json.loads(meta["info"])
