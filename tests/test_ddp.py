"""DistributedDataParallel training under torchrun: 2 gloo processes on 127.0.0.1 (CPU).

The step test runs this file itself as the torchrun worker (``python -m tests.test_ddp``):
each rank takes its half of a fixed batch, and the weights after the steps must be the
same on both ranks and equal one process stepping on the whole batch."""

from __future__ import annotations

import csv
import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from cminet.losses import FusionLoss
from cminet.model import CMINet, CMINetConfig
from cminet.train import data_parallel, scaled_lr, setup_distributed, train_step

from .helpers import tiny_checkpoint, write_dataset

REPO = Path(__file__).resolve().parents[1]
TINY = CMINetConfig(channels=8, embed_dim=16, num_heads=2, growth=4)
WORLD = 2
PER_RANK = 2  # images per rank and step
STEPS = 2  # the first step only moves the zero-initialised tail (max-residual); the second all but GADN's α
LR = 1e-3


def global_batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(7)
    return [(torch.rand(WORLD * PER_RANK, 1, 32, 32, generator=g), torch.rand(WORLD * PER_RANK, 1, 32, 32, generator=g))
            for _ in range(STEPS)]


def fresh_model(seed: int) -> CMINet:
    torch.manual_seed(seed)
    return CMINet(TINY)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(*args, cwd=REPO, timeout=240) -> subprocess.CompletedProcess:
    """2 CPU processes on 127.0.0.1 (static rendezvous on a free port)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={WORLD}", "--nnodes=1",
           "--master_addr=127.0.0.1", f"--master_port={free_port()}", *map(str, args)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def ddp_worker(out_dir: Path) -> None:
    """One rank: a model seeded differently on each rank (DDP must start them from rank 0's
    weights), the steps on this rank's slice of each global batch, weights saved per rank."""
    dist, device = setup_distributed("cpu")
    assert torch.distributed.get_backend() == "gloo"
    model = fresh_model(seed=dist.rank)
    net = data_parallel(model, dist, device)
    optimizer = torch.optim.Adam(model.parameters(), lr=LR)
    criterion = FusionLoss()
    mine = slice(dist.rank * PER_RANK, (dist.rank + 1) * PER_RANK)
    for a, b in global_batches():
        train_step(net, optimizer, criterion, a[mine], b[mine])
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out_dir / f"rank{dist.rank}.safetensors"))
    torch.distributed.destroy_process_group()


@pytest.mark.slow
def test_ddp_steps_match_one_process_on_the_whole_batch(tmp_path):
    result = torchrun("-m", "tests.test_ddp", tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    rank0, rank1 = (load_file(str(tmp_path / f"rank{r}.safetensors")) for r in range(WORLD))
    for name in rank0:  # all-reduced gradients: bit-identical weights on every rank
        assert torch.equal(rank0[name], rank1[name]), name

    model = fresh_model(seed=0)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.Adam(model.parameters(), lr=LR)
    for a, b in global_batches():
        train_step(model, optimizer, FusionLoss(), a, b)
    still = [name for name, value in model.state_dict().items() if torch.equal(value, start[name])]
    # GADN's α has no gradient until its γ leaves 0, one step later; every other tensor moved,
    # so the comparison below is not vacuous.
    assert all(name.endswith("gadn.alpha") for name in still), still
    for name, expected in model.state_dict().items():
        # Same maths, different summation order (two half-batch means averaged by all-reduce).
        torch.testing.assert_close(rank0[name], expected, rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.slow
def test_torchrun_cminet_train_writes_one_run_and_resumes(tmp_path):
    root = write_dataset(tmp_path / "data", pairs=("ct_mri",), n=8, size=48)
    init = tiny_checkpoint(tmp_path / "tiny.safetensors")  # --init brings the tiny config
    out = tmp_path / "run"
    args = ["-m", "cminet", "train", "--data", root, "--out", out, "--device", "cpu", "--init", init,
            "--batch-size", "2", "--crop", "48", "--lr", "1e-3", "--w-fov", "10", "--epochs", "1"]
    first = torchrun(*args)
    assert first.returncode == 0, first.stdout + first.stderr
    # Only rank 0 logs and writes: one epoch line, one log row per epoch, one set of files.
    assert first.stdout.count("epoch    1") == 1, first.stdout
    assert "DDP: 2 processes (gloo), global batch 4" in first.stdout
    names = sorted(p.name for p in out.iterdir())
    assert names == ["best.json", "best.safetensors", "last.json", "last.safetensors", "last.state.safetensors",
                     "log.csv"], names
    rows = list(csv.DictReader((out / "log.csv").open()))
    assert [r["world_size"] for r in rows] == ["2"]
    assert float(rows[0]["lr"]) == pytest.approx(scaled_lr(1e-3, WORLD, "sqrt"), rel=1e-2)  # epoch 1: no decay yet
    info = json.loads((out / "last.json").read_text())
    assert info["world_size"] == 2 and info["global_batch_size"] == 4
    assert math.isfinite(info["best_val"])
    assert float(rows[0]["train_fov"]) >= 0.0  # the second forward pass (a window) works under DDP

    resumed = torchrun(*[*args[:-1], "2"], "--resume")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "resuming at epoch 2" in resumed.stdout
    rows = list(csv.DictReader((out / "log.csv").open()))
    assert [r["epoch"] for r in rows] == ["1", "2"] and [r["world_size"] for r in rows] == ["2", "2"]
    assert json.loads((out / "last.json").read_text())["epoch"] == 2


def test_learning_rate_rules():
    assert scaled_lr(2e-4, 1) == 2e-4  # one process trains at --lr whatever the rule
    assert scaled_lr(2e-4, 4, "sqrt") == pytest.approx(4e-4)
    assert scaled_lr(2e-4, 4, "linear") == pytest.approx(8e-4)
    assert scaled_lr(2e-4, 4, "none") == 2e-4
    with pytest.raises(ValueError, match="lr scaling"):
        scaled_lr(2e-4, 2, "cubic")


if __name__ == "__main__":  # the torchrun worker of test_ddp_steps_match_one_process_on_the_whole_batch
    ddp_worker(Path(sys.argv[1]))
