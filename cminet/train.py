"""Training, readable in one sitting (nanoGPT style): no trainer framework.

    python -m cminet.cli train --data path/to/harvard --out runs/default

Writes to ``--out``: ``best.safetensors`` (lowest validation loss) and ``last.safetensors``
(each with a ``.json`` config beside it), ``last.state.safetensors`` (optimizer state for
``--resume``) and ``log.csv`` (one row per epoch). Ctrl-C saves a resumable checkpoint.
Validation pairs are carved out of the train split by case; the test split is never read.
"""

from __future__ import annotations

import csv
import math
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from cminet.checkpoint import load_checkpoint, load_training_state, save_checkpoint, save_training_state
from cminet.data import FusionPairs, split_validation
from cminet.losses import FusionLoss, LossWeights
from cminet.model import CMINet, CMINetConfig
from cminet.runtime.errors import CMINetError
from cminet.runtime.folders import PAIR_TYPES, list_pairs


@dataclass
class TrainOptions:
    data: Path
    out: Path
    pairs: tuple[str, ...] = PAIR_TYPES
    epochs: int = 100
    batch_size: int = 16
    lr: float = 2e-4
    min_lr_ratio: float = 0.1  # cosine decay from lr to lr × this over the run
    crop: int = 64
    val_fraction: float = 0.1
    seed: int = 0
    device: str = "auto"
    resume: bool = False
    max_minutes: float | None = None  # stop cleanly after this much wall time
    init: Path | None = None  # start from these weights (fine-tuning)
    reset_head: bool = False  # with init: zero the output correction (start from the max rule)
    loss: LossWeights = field(default_factory=LossWeights)
    model: CMINetConfig = field(default_factory=CMINetConfig)


# vif and qabf are nan when unweighted (not computed)
TERMS = ("loss", "ssim", "texture", "pixel", "intensity", "gradient", "vif", "qabf")
CSV_FIELDS = ["epoch", "lr", *(f"train_{k}" for k in TERMS), *(f"val_{k}" for k in TERMS), "seconds"]


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise CMINetError(f"--device {name}: no CUDA GPU is visible to PyTorch")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@torch.no_grad()
def evaluate_loss(model: CMINet, data: FusionPairs, criterion: FusionLoss, device) -> dict:
    """Mean loss (and terms) over whole validation images, one image at a time."""
    model.eval()
    sums = dict.fromkeys(TERMS, 0.0)
    for i in range(len(data)):
        a, b = (t[None].to(device) for t in data[i])
        loss, terms = criterion(model(a, b), a, b)
        sums["loss"] += loss.item()
        for k, v in terms.items():
            sums[k] += v
    return {k: v / len(data) for k, v in sums.items()}


def train(opts: TrainOptions) -> dict:
    seed_everything(opts.seed)
    device = pick_device(opts.device)
    out = Path(opts.out)
    out.mkdir(parents=True, exist_ok=True)

    refs = list_pairs(opts.data, opts.pairs, "train")  # the test split is never read here
    train_refs, val_refs = split_validation(refs, opts.val_fraction, opts.seed)
    train_set = FusionPairs(train_refs, crop=opts.crop, seed=opts.seed)
    val_set = FusionPairs(val_refs)
    loader = torch.utils.data.DataLoader(
        train_set, batch_size=opts.batch_size, shuffle=True, drop_last=len(train_set) >= opts.batch_size,
        generator=torch.Generator().manual_seed(opts.seed),
    )
    print(f"data: {len(train_set)} training / {len(val_set)} validation pairs from {', '.join(opts.pairs)}")

    model = CMINet(opts.model)
    if opts.init:
        model = load_checkpoint(opts.init)
        if opts.reset_head:
            model.zero_correction()
    model = model.to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=opts.lr)
    criterion = FusionLoss(opts.loss)

    start_epoch, best_val = 0, math.inf
    if opts.resume:
        last = out / "last.safetensors"
        if not last.is_file():
            raise CMINetError(f"{last}: nothing to resume from")
        model.load_state_dict(load_checkpoint(last).state_dict())
        info = load_training_state(out / "last.state.safetensors", optimizer)
        start_epoch, best_val = info["next_epoch"], info["best_val"]
        print(f"resuming at epoch {start_epoch + 1} (best validation loss so far {best_val:.4f})")

    def lr_at(epoch: int) -> float:  # cosine decay, per epoch
        progress = epoch / max(1, opts.epochs - 1)
        return opts.lr * (opts.min_lr_ratio + (1 - opts.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))

    def save(kind: str, epoch: int, next_epoch: int) -> None:
        info = {"epoch": epoch, "best_val": best_val, "train_options": _jsonable(opts)}
        save_checkpoint(model, out / f"{kind}.safetensors", info)
        if kind == "last":
            save_training_state(out / "last.state.safetensors", optimizer,
                                {"next_epoch": next_epoch, "best_val": best_val})

    log_path = out / "log.csv"
    if not (opts.resume and log_path.is_file()):
        with log_path.open("w", newline="") as fh:
            csv.writer(fh).writerow(CSV_FIELDS)

    started = time.monotonic()
    epoch = start_epoch
    val = {"loss": math.nan}
    try:
        for epoch in range(start_epoch, opts.epochs):
            for group in optimizer.param_groups:
                group["lr"] = lr_at(epoch)
            model.train()
            t0 = time.monotonic()
            sums = dict.fromkeys(TERMS, 0.0)
            seen = 0
            bar = tqdm(loader, desc=f"epoch {epoch + 1}/{opts.epochs}", unit="batch", leave=False)
            for a, b in bar:
                a, b = a.to(device), b.to(device)
                loss, terms = criterion(model(a, b), a, b)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                sums["loss"] += loss.item() * len(a)
                for k, v in terms.items():
                    sums[k] += v * len(a)
                seen += len(a)
                bar.set_postfix(loss=f"{loss.item():.4f}", img_s=f"{seen / (time.monotonic() - t0):.0f}")
            train_stats = {k: v / max(seen, 1) for k, v in sums.items()}

            val = evaluate_loss(model, val_set, criterion, device)
            improved = val["loss"] < best_val
            if improved:
                best_val = val["loss"]
                save("best", epoch + 1, epoch + 1)
            save("last", epoch + 1, epoch + 1)
            seconds = time.monotonic() - t0
            with log_path.open("a", newline="") as fh:
                csv.writer(fh).writerow([epoch + 1, f"{lr_at(epoch):.3g}"]
                                        + [f"{train_stats[k]:.5f}" for k in TERMS]
                                        + [f"{val[k]:.5f}" for k in TERMS]
                                        + [f"{seconds:.1f}"])
            print(f"epoch {epoch + 1:4d}  train {train_stats['loss']:.4f}  val {val['loss']:.4f}"
                  f"{'  *best*' if improved else ''}  ({seconds:.1f}s)", flush=True)
            if opts.max_minutes and time.monotonic() - started > 60 * opts.max_minutes:
                print(f"stopping after {opts.max_minutes} minutes (--max-minutes)")
                break
    except KeyboardInterrupt:
        save("last", epoch, epoch)  # the interrupted epoch is redone on --resume
        print(f"\ninterrupted: saved {out / 'last.safetensors'}; continue with --resume")
        raise
    wall = time.monotonic() - started
    return {"epochs_run": epoch + 1 - start_epoch, "best_val": best_val, "last_val": val["loss"],
            "wall_seconds": wall, "out": str(out)}


def _jsonable(opts: TrainOptions) -> dict:
    d = asdict(opts)
    return {k: (str(v) if isinstance(v, Path) else list(v) if isinstance(v, tuple) else v) for k, v in d.items()}
