import csv
import json
import os

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from cminet.checkpoint import load_checkpoint, save_checkpoint
from cminet.cli import main
from cminet.model import CMINet, CMINetConfig
from cminet.train import TrainOptions, train

from .helpers import write_dataset

TINY = CMINetConfig(channels=8, embed_dim=16, num_heads=2, growth=4)


def test_two_epoch_run_lowers_loss_and_writes_loadable_checkpoints(tmp_path):
    root = write_dataset(tmp_path / "data", n=8, size=48)
    out = tmp_path / "run"
    opts = TrainOptions(data=root, out=out, pairs=("ct_mri", "pet_mri"), epochs=2, batch_size=4, crop=32,
                        lr=3e-3, min_lr_ratio=1.0, model=TINY, val_fraction=0.3, augment=False)
    summary = train(opts)
    rows = list(csv.DictReader((out / "log.csv").open()))
    assert len(rows) == 2
    assert float(rows[1]["train_loss"]) < float(rows[0]["train_loss"])
    assert float(rows[1]["val_loss"]) < float(rows[0]["val_loss"])
    assert summary["best_val"] == pytest.approx(min(float(r["val_loss"]) for r in rows), abs=1e-4)
    for name in ("best.safetensors", "best.json", "last.safetensors", "last.state.safetensors"):
        assert (out / name).is_file()
    assert not list(out.glob("*.tmp"))

    # The CLI loads what training wrote.
    fused = tmp_path / "fused.png"
    result = CliRunner().invoke(main, ["fuse", str(root / "ct_mri/mri/1000.png"), str(root / "ct_mri/other/1000.png"),
                                       "-o", str(fused), "--weights", str(out / "best.safetensors")])
    assert result.exit_code == 0, result.output
    assert fused.is_file()

    # --resume continues from the last epoch.
    opts.epochs, opts.resume = 3, True
    train(opts)
    assert len(list(csv.DictReader((out / "log.csv").open()))) == 3


def test_checkpoint_round_trip_is_bit_exact(tmp_path):
    torch.manual_seed(3)
    model = CMINet(TINY)
    path = save_checkpoint(model, tmp_path / "m.safetensors", {"note": "x"})
    again = load_checkpoint(path)
    assert again.config == TINY
    for (name, p), (_, q) in zip(model.state_dict().items(), again.state_dict().items(), strict=True):
        assert torch.equal(p, q), name
    a = torch.rand(1, 1, 40, 40)
    with torch.no_grad():
        assert torch.equal(model.eval()(a, a), again(a, a))
    assert set(load_file(str(path))) == set(model.state_dict())
    # Atomic writes end with normal permissions (safetensors recreates the temp file 0600).
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask


def test_train_cli_rejects_unknown_pairs(tmp_path):
    root = write_dataset(tmp_path / "data", n=4)
    result = CliRunner().invoke(main, ["train", "--data", str(root), "--pairs", "xray_mri", "--out", str(tmp_path)])
    assert result.exit_code != 0
    assert "unknown pair type" in result.output


def test_cli_fine_tune_with_metric_terms_from_the_max_rule(tmp_path):
    root = write_dataset(tmp_path / "data", n=6, size=48)
    init = save_checkpoint(CMINet(TINY), tmp_path / "init.safetensors")
    with torch.no_grad():  # give the initial model a non-zero correction to reset
        model = load_checkpoint(init)
        model.tail[-1].bias.fill_(0.3)
    save_checkpoint(model, init)
    out = tmp_path / "ft"
    args = ["train", "--data", str(root), "--pairs", "ct_mri", "--out", str(out), "--epochs", "1", "--batch-size", "2",
            "--crop", "48", "--init", str(init), "--reset-head", "--w-vif", "5", "--w-qabf", "5", "--w-fov", "100"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    row = next(csv.DictReader((out / "log.csv").open()))
    for term in ("vif", "qabf"):  # computed (finite, in range) because they were weighted
        assert 0.0 < float(row[f"train_{term}"]) < 2.0
    assert 0.0 <= float(row["train_fov"]) < 1.0 and 0.0 <= float(row["val_fov"]) < 1.0
    assert json.loads((out / "last.json").read_text())["train_options"]["loss"]["fov"] == 100.0
    # --reset-head without --init is refused with a clear message.
    result = CliRunner().invoke(main, ["train", "--data", str(root), "--out", str(out), "--reset-head"])
    assert result.exit_code != 0 and "--reset-head needs --init" in result.output


def test_zero_correction_is_the_max_rule():
    torch.manual_seed(0)
    model = CMINet(TINY)
    with torch.no_grad():
        model.tail[-1].bias.fill_(0.2)
        a, b = torch.rand(1, 1, 32, 32), torch.rand(1, 1, 32, 32)
        assert not torch.equal(model(a, b), torch.maximum(a, b))
        model.zero_correction()
        assert torch.equal(model(a, b), torch.maximum(a, b))
    with pytest.raises(ValueError, match="max-residual"):
        CMINet(CMINetConfig(channels=8, embed_dim=16, num_heads=2, growth=4, output="sigmoid")).zero_correction()


class _GlobalMeanModel(torch.nn.Module):
    """max(a, b) plus θ × the image-wide mean of a: its output depends on the field of view
    exactly when θ ≠ 0, as GADN's and channel attention's statistics can make CMINet's."""

    def __init__(self, theta: float):
        super().__init__()
        self.theta = torch.nn.Parameter(torch.tensor(theta))

    def forward(self, a, b):
        return torch.maximum(a, b) + self.theta * a.mean(dim=(2, 3), keepdim=True)


def test_field_of_view_gap_measures_dependence_on_how_much_image_the_network_sees():
    from cminet.train import FOV_MARGIN, FOV_MIN_SIDE, field_of_view_gap

    g = torch.Generator().manual_seed(0)
    a = torch.rand(2, 1, 64, 64, generator=g)
    a[..., :16, :] = 0.0  # the window sees a different mean from the whole crop
    b = torch.rand(2, 1, 64, 64, generator=g)
    pixelwise = _GlobalMeanModel(0.0)
    assert field_of_view_gap(pixelwise, a, b, pixelwise(a, b)).item() == 0.0
    model = _GlobalMeanModel(0.5)
    with torch.no_grad():
        gap = field_of_view_gap(model, a, b, model(a, b), random=False).item()
        window = a[..., 16:48, 16:48]  # the centre window: half the side
        expected = (0.5 * (window.mean(dim=(2, 3)) - a.mean(dim=(2, 3)))).abs().mean().item()
    assert gap == pytest.approx(expected, rel=1e-5) and gap > 0.01
    assert 2 * FOV_MARGIN < FOV_MIN_SIDE  # the compared interior is not empty at the smallest window
    tiny = torch.rand(1, 1, FOV_MIN_SIDE, FOV_MIN_SIDE)  # the smallest window is the whole image: nothing to compare
    assert field_of_view_gap(model, tiny, tiny, model(tiny, tiny)).item() == 0.0


def test_field_of_view_term_trains_the_dependence_away():
    from cminet.losses import FusionLoss, LossWeights
    from cminet.train import scored_output, train_step

    g = torch.Generator().manual_seed(1)
    a, b = torch.rand(2, 4, 1, 64, 64, generator=g)
    a[..., :20] = 0.0
    criterion = FusionLoss(LossWeights(ssim=0.0, texture=0.0, pixel=0.0, fov=100.0))
    model = _GlobalMeanModel(0.5)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.002)  # L1: steps of lr × |∂|, ~0.02
    before = scored_output(model, criterion, a, b, None, hold=False)[1]["fov"]
    for _ in range(60):
        train_step(model, optimizer, criterion, a, b)
    assert abs(model.theta.item()) < 0.05 and scored_output(model, criterion, a, b, None, False)[1]["fov"] < before / 10
    unweighted = scored_output(model, FusionLoss(), a, b, None, hold=False)[1]
    assert unweighted["fov"] != unweighted["fov"]  # nan: not computed when not weighted
