"""Training, readable in one sitting (nanoGPT style): no trainer framework.

    cminet train --data path/to/harvard --out runs/default
    torchrun --standalone --nproc_per_node=4 -m cminet train --data ... --out ...   # DDP

Writes to ``--out``: ``best.safetensors`` (lowest validation loss) and ``last.safetensors``
(each with a ``.json`` config beside it), ``last.state.safetensors`` (optimizer state for
``--resume``) and ``log.csv`` (one row per epoch). Ctrl-C saves a resumable checkpoint.
Validation pairs are carved out of the train split by case; the test split is never read.

Under ``torchrun`` (``WORLD_SIZE`` > 1 in the environment) the same loop runs as
PyTorch ``DistributedDataParallel``: nccl on CUDA, gloo on the CPU; every process takes a
``--batch-size`` batch of its ``DistributedSampler`` shard, so the global batch is
``batch_size × world_size`` and the learning rate is scaled from it (:func:`scaled_lr`).
Only rank 0 logs, shows the progress bar and writes files.
"""

from __future__ import annotations

import csv
import math
import os
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from cminet.augment import Augment
from cminet.checkpoint import load_checkpoint, load_training_state, save_checkpoint, save_training_state
from cminet.data import FusionPairs, training_split
from cminet.losses import FusionLoss, LossWeights, colour_hold
from cminet.model import CMINet, CMINetConfig
from cminet.runtime.errors import CMINetError
from cminet.runtime.folders import PAIR_TYPES


@dataclass
class TrainOptions:
    data: Path | tuple[Path, ...]  # one data folder or several (their pairs are joined)
    out: Path
    pairs: tuple[str, ...] = PAIR_TYPES
    epochs: int = 100
    batch_size: int = 16
    lr: float = 2e-4
    min_lr_ratio: float = 0.1  # cosine decay from lr to lr × this over the run
    crop: int = 64
    augment: bool = True  # subject/scanner augmentation (cminet.augment.Augment)
    shifted_val: int = 1  # transformed copies of each colour validation pair (cminet.augment.shifted_copies)
    val_fraction: float = 0.1
    seed: int = 0
    device: str = "auto"
    resume: bool = False
    max_minutes: float | None = None  # stop cleanly after this much wall time
    init: Path | None = None  # start from these weights (fine-tuning)
    reset_head: bool = False  # with init: zero the output correction (start from the max rule)
    lr_scaling: str = "sqrt"  # how lr grows with the global batch under DDP (see scaled_lr)
    colour_hold: bool = False  # train through the runtime's colour hold (pair with loss.fov; docs/training.md)
    loss: LossWeights = field(default_factory=LossWeights)
    model: CMINetConfig = field(default_factory=CMINetConfig)


# vif, qabf, colour and fov are nan when unweighted (not computed)
TERMS = ("loss", "ssim", "texture", "pixel", "intensity", "gradient", "vif", "qabf", "colour", "fov")
CSV_FIELDS = ["epoch", "lr", *(f"train_{k}" for k in TERMS), *(f"val_{k}" for k in TERMS), "seconds",
              "world_size"]
LR_SCALING = ("sqrt", "linear", "none")


def scaled_lr(lr: float, world_size: int, rule: str = "sqrt") -> float:
    """The learning rate for a global batch ``world_size`` times the one ``lr`` was set for.

    ``sqrt`` (the default) is the square-root rule for Adam (Malladi et al., NeurIPS 2022:
    the SDE of Adam is kept when lr grows as √k for a k× batch, with β and ε unchanged);
    ``linear`` is Goyal et al.'s rule for SGD (often too aggressive for Adam); ``none``
    keeps ``lr``. One process (world_size 1) always trains at ``lr`` itself."""
    if rule not in LR_SCALING:
        raise CMINetError(f"lr scaling: expected one of {', '.join(LR_SCALING)}, got {rule!r}")
    factor = {"sqrt": math.sqrt(world_size), "linear": float(world_size), "none": 1.0}[rule]
    return lr * factor


@dataclass(frozen=True)
class Distributed:
    """Where this process sits in a torchrun job (rank 0 of 1 without torchrun)."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            torch.distributed.barrier()

    def sum(self, values: list[float], device) -> list[float]:
        """Element-wise sum of ``values`` over all ranks (float64, so sums stay exact)."""
        if not self.enabled:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64, device=device)
        torch.distributed.all_reduce(t)
        return t.tolist()

    def agree(self, flag: bool, device) -> bool:
        """Rank 0's decision, on every rank (so all ranks leave the loop together)."""
        if not self.enabled:
            return flag
        t = torch.tensor([int(flag)], device=device)
        torch.distributed.broadcast(t, src=0)
        return bool(t.item())


def setup_distributed(device_name: str) -> tuple[Distributed, torch.device]:
    """Join the torchrun job if there is one: read RANK / LOCAL_RANK / WORLD_SIZE (torchrun
    sets them; MASTER_ADDR / MASTER_PORT say where rank 0 listens) and start the process
    group, nccl on CUDA and gloo on the CPU. Each CUDA process takes GPU ``LOCAL_RANK``."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return Distributed(), pick_device(device_name)
    dist = Distributed(rank=int(os.environ["RANK"]), local_rank=int(os.environ.get("LOCAL_RANK", "0")),
                       world_size=world_size)
    device = pick_device(device_name)
    if device.type == "cuda":
        device = torch.device("cuda", dist.local_rank)
        torch.cuda.set_device(device)
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return dist, device


def data_parallel(model: torch.nn.Module, dist: Distributed, device: torch.device) -> torch.nn.Module:
    """``model`` wrapped in DistributedDataParallel under torchrun (which copies rank 0's
    weights to every rank and all-reduces gradients in ``backward``), else ``model``."""
    if not dist.enabled:
        return model
    gpu = [device.index] if device.type == "cuda" else None  # one GPU per process: this rank's
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=gpu)


def fused_output(model: torch.nn.Module, a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor | None,
                 hold: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(what the user gets, the network's own output) for a batch: the network, then
    (``hold``) the colour hold with the functional source's colour weight ``mask``, as
    :func:`cminet.runtime.imaging.finish_fused`."""
    raw = model(a, b)
    return (colour_hold(raw, a, b, mask) if hold and mask is not None else raw), raw


FOV_MARGIN = 8  # px: next to a window's border the network legitimately sees less context
FOV_MIN_SIDE = 32  # px: the smallest window compared (its interior is 2·FOV_MARGIN px narrower)


def field_of_view_gap(model: torch.nn.Module, a: torch.Tensor, b: torch.Tensor, raw: torch.Tensor,
                      random: bool = True) -> torch.Tensor:
    """Mean |network on a window of the batch − the same window of ``raw``|, the network on
    the whole batch, ``FOV_MARGIN`` px inside the window's border.

    The network has image-wide statistics (GADN's RMS, channel attention's mean), so its
    output can depend on how much image it sees, and tiling (:mod:`cminet.runtime.tiling`)
    needs it not to. Training through the colour hold hides the network's own low
    frequencies inside the functional colour from every other term, and they drifted
    with the field of view there. The window is half the batch's side (a multiple of the
    patch size), at a random place (``random``) or the centre."""
    height, width = a.shape[-2:]
    side = max(FOV_MIN_SIDE, min(height, width) // 2 // 8 * 8)
    if side >= min(height, width):  # the window would be the whole batch
        return raw.new_zeros(())
    if random:
        y, x = (int(torch.randint(0, n - side + 1, ())) for n in (height, width))
    else:
        y, x = (height - side) // 2, (width - side) // 2
    window = model(a[..., y:y + side, x:x + side], b[..., y:y + side, x:x + side])
    inner = slice(FOV_MARGIN, side - FOV_MARGIN)
    whole = raw[..., y:y + side, x:x + side]
    return (window[..., inner, inner] - whole[..., inner, inner]).abs().mean()


def scored_output(model: torch.nn.Module, criterion: FusionLoss, a: torch.Tensor, b: torch.Tensor,
                  mask: torch.Tensor | None, hold: bool, random: bool = True) -> tuple[torch.Tensor, dict]:
    """The loss (and its terms) of the model on a batch, the field-of-view term included."""
    f, raw = fused_output(model, a, b, mask, hold)
    loss, terms = criterion(f, a, b, mask, raw)
    terms["fov"] = float("nan")
    if criterion.weights.fov:
        gap = field_of_view_gap(model, a, b, raw, random)
        loss = loss + criterion.weights.fov * gap
        terms["fov"] = gap.item()
    return loss, terms


def train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, criterion: FusionLoss,
               a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor | None = None,
               hold: bool = False) -> tuple[torch.Tensor, dict]:
    """One optimisation step on a batch. Under DDP ``backward`` averages the gradients of
    all ranks, so the step equals one on all ranks' batches concatenated."""
    loss, terms = scored_output(model, criterion, a, b, mask, hold)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss, terms


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
def evaluate_loss(model: CMINet, data: FusionPairs, criterion: FusionLoss, device,
                  dist: Distributed = Distributed(), hold: bool = False) -> dict:
    """Mean loss (and terms) over whole validation images, one image at a time.

    Under DDP rank r scores images r, r + world_size, ... and the sums are added up over
    ranks, so every image counts exactly once (a DistributedSampler would pad the last
    shard with duplicates) and every rank gets the same result."""
    model.eval()
    sums = dict.fromkeys(TERMS, 0.0)
    for i in range(dist.rank, len(data), dist.world_size):
        a, b, mask = (t[None].to(device) for t in data[i])
        loss, terms = scored_output(model, criterion, a, b, mask, hold, random=False)
        sums["loss"] += loss.item()
        for k, v in terms.items():
            sums[k] += v
    totals = dist.sum(list(sums.values()), device)
    return {k: v / len(data) for k, v in zip(sums, totals, strict=True)}


def train(opts: TrainOptions) -> dict:
    dist, device = setup_distributed(opts.device)
    try:
        return _train(opts, dist, device)
    finally:
        if dist.enabled and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def _train(opts: TrainOptions, dist: Distributed, device: torch.device) -> dict:
    # Augmentation differs per rank (seed + rank); the validation split, the sampler's
    # shuffle and the model's start (DDP copies rank 0's weights) are the same everywhere.
    seed_everything(opts.seed + dist.rank)
    lr = scaled_lr(opts.lr, dist.world_size, opts.lr_scaling)
    out = Path(opts.out)
    say = print if dist.is_main else (lambda *args, **kwargs: None)

    # the test split is never read here
    roots = tuple(opts.data) if isinstance(opts.data, (tuple, list)) else (opts.data,)
    train_refs, val_refs = training_split(roots, opts.pairs, opts.val_fraction, opts.seed)
    train_set = FusionPairs(train_refs, crop=opts.crop, seed=opts.seed + dist.rank,
                            augment=Augment() if opts.augment else None)
    val_set = FusionPairs(val_refs, seed=opts.seed, shifted=opts.shifted_val)
    sampler = None
    if dist.enabled:  # each rank a disjoint shard, reshuffled every epoch by set_epoch
        sampler = torch.utils.data.DistributedSampler(train_set, num_replicas=dist.world_size, rank=dist.rank,
                                                      shuffle=True, seed=opts.seed)
    shard = math.ceil(len(train_set) / dist.world_size)
    loader = torch.utils.data.DataLoader(
        train_set, batch_size=opts.batch_size, shuffle=sampler is None, sampler=sampler,
        drop_last=shard >= opts.batch_size, generator=torch.Generator().manual_seed(opts.seed),
    )
    say(f"data: {len(train_set)} training / {len(val_set)} validation pairs from {', '.join(opts.pairs)}")
    if dist.enabled:
        say(f"DDP: {dist.world_size} processes ({torch.distributed.get_backend()}), global batch "
            f"{opts.batch_size * dist.world_size}, lr {opts.lr:g} → {lr:g} ({opts.lr_scaling} rule)")

    model = CMINet(opts.model)
    if opts.init:
        model = load_checkpoint(opts.init)
        if opts.reset_head:
            model.zero_correction()
    model = model.to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    criterion = FusionLoss(opts.loss)

    start_epoch, best_val = 0, math.inf
    if opts.resume:  # every rank reads the same files, before DDP wraps the model
        last = out / "last.safetensors"
        if not last.is_file():
            raise CMINetError(f"{last}: nothing to resume from")
        model.load_state_dict(load_checkpoint(last).state_dict())
        info = load_training_state(out / "last.state.safetensors", optimizer)
        start_epoch, best_val = info["next_epoch"], info["best_val"]
        say(f"resuming at epoch {start_epoch + 1} (best validation loss so far {best_val:.4f})")
    out.mkdir(parents=True, exist_ok=True)  # only now: a refused input leaves no folder behind
    net = data_parallel(model, dist, device)  # runs the steps; `model` is what gets saved and validated

    def lr_at(epoch: int) -> float:  # cosine decay, per epoch
        progress = epoch / max(1, opts.epochs - 1)
        return lr * (opts.min_lr_ratio + (1 - opts.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))

    def save(kind: str, epoch: int, next_epoch: int, wait: bool = True) -> None:
        """Rank 0 writes (from the unwrapped module); the others wait until it is on disk."""
        if dist.is_main:
            info = {"epoch": epoch, "best_val": best_val, "world_size": dist.world_size,
                    "global_batch_size": opts.batch_size * dist.world_size, "lr": lr,
                    "train_options": _jsonable(opts)}
            save_checkpoint(model, out / f"{kind}.safetensors", info)
            if kind == "last":
                save_training_state(out / "last.state.safetensors", optimizer,
                                    {"next_epoch": next_epoch, "best_val": best_val, "world_size": dist.world_size})
        if wait:
            dist.barrier()

    log_path = out / "log.csv"
    if dist.is_main:
        _start_log(log_path, keep=opts.resume)

    started = time.monotonic()
    epoch = start_epoch
    val = {"loss": math.nan}
    try:
        for epoch in range(start_epoch, opts.epochs):
            if sampler is not None:
                sampler.set_epoch(epoch)  # without it every epoch sees the same order
            for group in optimizer.param_groups:
                group["lr"] = lr_at(epoch)
            net.train()
            t0 = time.monotonic()
            sums = dict.fromkeys(TERMS, 0.0)
            seen = 0
            bar = tqdm(loader, desc=f"epoch {epoch + 1}/{opts.epochs}", unit="batch", leave=False,
                       disable=not dist.is_main)
            for a, b, mask in bar:
                a, b, mask = a.to(device), b.to(device), mask.to(device)
                loss, terms = train_step(net, optimizer, criterion, a, b, mask, opts.colour_hold)
                sums["loss"] += loss.item() * len(a)
                for k, v in terms.items():
                    sums[k] += v * len(a)
                seen += len(a)
                bar.set_postfix(loss=f"{loss.item():.4f}",
                                img_s=f"{seen * dist.world_size / (time.monotonic() - t0):.0f}")
            *totals, seen = dist.sum([*sums.values(), seen], device)  # means over every rank's images
            train_stats = {k: v / max(seen, 1) for k, v in zip(sums, totals, strict=True)}

            val = evaluate_loss(model, val_set, criterion, device, dist, opts.colour_hold)
            improved = val["loss"] < best_val
            if improved:
                best_val = val["loss"]
                save("best", epoch + 1, epoch + 1)
            save("last", epoch + 1, epoch + 1)
            seconds = time.monotonic() - t0
            if dist.is_main:
                with log_path.open("a", newline="") as fh:
                    csv.writer(fh).writerow([epoch + 1, f"{lr_at(epoch):.3g}"]
                                            + [f"{train_stats[k]:.5f}" for k in TERMS]
                                            + [f"{val[k]:.5f}" for k in TERMS]
                                            + [f"{seconds:.1f}", dist.world_size])
            say(f"epoch {epoch + 1:4d}  train {train_stats['loss']:.4f}  val {val['loss']:.4f}"
                f"{'  *best*' if improved else ''}  ({seconds:.1f}s)", flush=True)
            out_of_time = bool(opts.max_minutes) and time.monotonic() - started > 60 * opts.max_minutes
            if dist.agree(out_of_time, device):
                say(f"stopping after {opts.max_minutes} minutes (--max-minutes)")
                break
    except KeyboardInterrupt:
        if dist.is_main:  # no barrier: the other ranks are being interrupted too
            save("last", epoch, epoch, wait=False)  # the interrupted epoch is redone on --resume
            print(f"\ninterrupted: saved {out / 'last.safetensors'}; continue with --resume")
        raise
    wall = time.monotonic() - started
    return {"epochs_run": epoch + 1 - start_epoch, "best_val": best_val, "last_val": val["loss"],
            "wall_seconds": wall, "out": str(out), "world_size": dist.world_size, "rank": dist.rank}


def _start_log(path: Path, keep: bool) -> None:
    """A fresh log.csv, or (resuming) the old one, rewritten if it predates a column."""
    rows: list[dict] = []
    if keep and path.is_file():
        with path.open(newline="") as fh:
            reader = csv.DictReader(fh)
            if reader.fieldnames == CSV_FIELDS:
                return
            rows = list(reader)
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, CSV_FIELDS, restval="")
        writer.writeheader()
        writer.writerows({k: v for k, v in row.items() if k in CSV_FIELDS} for row in rows)


def _jsonable(opts: TrainOptions) -> dict:
    d = asdict(opts)
    return {k: (str(v) if isinstance(v, Path) else [str(x) if isinstance(x, Path) else x for x in v]
                if isinstance(v, tuple) else v) for k, v in d.items()}
