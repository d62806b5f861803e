"""The ``cminet`` command line: ``cminet info``, and the commands added by later modules.

Every command prints bad-input problems as one line and exits non-zero; ``--debug``
(before the command name) shows the full traceback instead.
"""

from __future__ import annotations

import functools
import sys

import click

from cminet import __version__
from cminet.runtime.errors import CMINetError


def friendly_errors(func):
    """Turn expected failures into a one-line ``error: ...`` and exit code 1."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except (CMINetError, OSError) as exc:
            ctx = click.get_current_context()
            if ctx.find_root().params.get("debug"):
                raise
            click.echo(f"error: {exc}", err=True)
            sys.exit(1)

    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="cminet")
@click.option("--debug", is_flag=True, help="Show full tracebacks instead of one-line errors.")
def main(debug: bool) -> None:
    """CMINet cross-modality medical image fusion (MRI with CT, PET or SPECT).

    \b
    Typical session:
      cminet info                              # model size and cost
      cminet fuse MRI.png PET.png -o fused.png # fuse one pair with the shipped weights
    """


@main.command()
@click.option("--size", default="256x256", show_default=True, help="H×W at which to count FLOPs, e.g. 512x512.")
@click.option("--weights", type=click.Path(dir_okay=False), help="Checkpoint (.safetensors); default: the shipped one.")
@friendly_errors
def info(size: str, weights: str | None) -> None:
    """Print the model config, parameter count and FLOPs at SIZE."""
    from cminet.model import CMINet, count_flops, count_parameters

    height, width = parse_size(size)
    if weights:
        from cminet.checkpoint import load_checkpoint

        model = load_checkpoint(weights)
    else:
        model = CMINet()
    params = count_parameters(model)
    flops = count_flops(model, height, width)
    click.echo("CMINet config:")
    click.echo(model.config.to_json())
    click.echo(f"parameters: {params:,} ({params * 4 / 2**20:.2f} MiB as FP32)")
    click.echo(f"FLOPs at 1×{height}×{width} pair: {flops / 1e9:.2f} GFLOPs (torch FlopCounterMode)")


@main.command()
@click.option("--data", required=True, type=click.Path(exists=True, file_okay=False),
              help="Dataset root laid out as <pair>/{mri,other}/<name>.png with train.txt.")
@click.option("--pairs", help="Comma-separated pair types to train on (default: every <pair>/ folder in DATA).")
@click.option("--epochs", default=100, show_default=True, type=click.IntRange(min=1))
@click.option("--batch-size", default=16, show_default=True, type=click.IntRange(min=1))
@click.option("--lr", default=2e-4, show_default=True, type=float, help="Adam learning rate (cosine-decayed).")
@click.option("--crop", default=64, show_default=True, type=click.IntRange(min=16), help="Random crop size.")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Folder for checkpoints and log.csv.")
@click.option("--resume", is_flag=True, help="Continue from OUT/last.safetensors.")
@click.option("--init", type=click.Path(exists=True, dir_okay=False), help="Start from these weights (fine-tune).")
@click.option("--device", default="auto", show_default=True, help="auto (CUDA if present), cpu, cuda, cuda:1 ...")
@click.option("--seed", default=0, show_default=True)
@click.option("--max-minutes", type=float, help="Stop cleanly after this much wall time.")
@click.option("--reset-head", is_flag=True,
              help="With --init: zero the output correction so the run starts from the max rule, "
                   "keeping the initial weights' features.")
@click.option("--w-ssim", default=10.0, show_default=True, help="Loss weight of 1 − SSIM(f, max(a, b)).")
@click.option("--w-texture", default=100.0, show_default=True, help="Loss weight of the gradient (texture) term.")
@click.option("--w-pixel", default=1.0, show_default=True, help="Loss weight of the pixel (MSE) term.")
@click.option("--w-intensity", default=0.0, show_default=True, help="Loss weight of mean |f − max(a, b)|.")
@click.option("--w-gradient", default=0.0, show_default=True,
              help="Loss weight of mean |∇f − ∇(stronger-edged source)| (Sobel vectors).")
@click.option("--w-vif", default=0.0, show_default=True,
              help="Loss weight of 2 − VIF(a, f) − VIF(b, f) (the evaluation's VIF, differentiable).")
@click.option("--w-qabf", default=0.0, show_default=True,
              help="Loss weight of 1 − Qabf(a, b, f) (the evaluation's Qabf, differentiable).")
@friendly_errors
def train(data, pairs, epochs, batch_size, lr, crop, out, resume, init, device, seed, max_minutes, reset_head,
          w_ssim, w_texture, w_pixel, w_intensity, w_gradient, w_vif, w_qabf) -> None:
    """Train CMINet on the train split (validation is carved out of it by case).

    \b
    Example (the shipped weights):
      cminet train --data ../shared/data/harvard --out runs/default --epochs 100
    """
    from pathlib import Path

    from cminet.data import PAIR_TYPES, discover_pairs
    from cminet.losses import LossWeights
    from cminet.train import TrainOptions
    from cminet.train import train as run_training

    if reset_head and not init:
        raise click.BadParameter("--reset-head needs --init (the weights whose features to keep)",
                                 param_hint="--reset-head")
    chosen = split_pairs(pairs) if pairs else discover_pairs(data)
    unknown = [p for p in chosen if p not in PAIR_TYPES and not (Path(data) / p).is_dir()]
    if unknown:
        raise click.BadParameter(f"unknown pair type(s) {', '.join(unknown)}", param_hint="--pairs")
    opts = TrainOptions(data=Path(data), out=Path(out), pairs=chosen, epochs=epochs, batch_size=batch_size,
                        lr=lr, crop=crop, seed=seed, device=device, resume=resume, max_minutes=max_minutes,
                        init=Path(init) if init else None, reset_head=reset_head,
                        loss=LossWeights(w_ssim, w_texture, w_pixel, w_intensity, w_gradient, w_vif, w_qabf))
    try:
        summary = run_training(opts)
    except KeyboardInterrupt:
        sys.exit(130)
    click.echo(f"done: {summary['epochs_run']} epochs in {summary['wall_seconds'] / 60:.1f} min, "
               f"best validation loss {summary['best_val']:.4f} -> {summary['out']}/best.safetensors")


@main.command()
@click.argument("mri", required=False, type=click.Path(dir_okay=False))
@click.argument("other", required=False, type=click.Path(dir_okay=False))
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Output image for a single pair.")
@click.option("--data", type=click.Path(exists=True, file_okay=False),
              help="Fuse every pair of a dataset folder (<pair>/{mri,other}/<name>.png).")
@click.option("--samples", is_flag=True, help="Fuse the three sample pairs shipped with cminet.")
@click.option("--split", default="test", show_default=True, help="With --data: train, test, or all.")
@click.option("--pairs", help="With --data: comma-separated pair types (default: every <pair>/ folder).")
@click.option("--out", type=click.Path(file_okay=False), help="Output folder for --data / --samples.")
@click.option("--weights", type=click.Path(dir_okay=False), help="PyTorch checkpoint (.safetensors); default: shipped.")
@click.option("--model", "model_file", type=click.Path(dir_okay=False),
              help="Fuse with an exported .onnx or .engine through the torch-free runtime instead.")
@click.option("--backend", default="auto", show_default=True,
              type=click.Choice(["auto", "ort-cpu", "ort-cuda", "ort-trt", "tensorrt"]),
              help="Runtime backend for --model.")
@click.option("--device", default="cpu", show_default=True, help="PyTorch device for --weights (cpu, cuda).")
@friendly_errors
def fuse(mri, other, output, data, samples, split, pairs, out, weights, model_file, backend, device) -> None:
    """Fuse an MRI with a CT, PET or SPECT image.

    \b
    One pair (PET/SPECT output is RGB with the PET/SPECT colours restored):
      cminet fuse mri.png pet.png -o fused.png
    Every test pair of a dataset, written to OUT/<pair>/<name>.png:
      cminet fuse --data ../shared/data/harvard --split test --out fused/
    The shipped samples, through an exported model and ONNX Runtime:
      cminet fuse --samples --out fused/ --model cminet.onnx
    """

    from pathlib import Path

    from cminet.runtime.errors import ImageError
    from cminet.runtime.folders import PAIR_TYPES, SAMPLES_DIR, discover_pairs, fuse_files, fuse_folder, list_pairs

    single = mri is not None or other is not None
    if sum([single, data is not None, samples]) != 1:
        raise click.UsageError("give either MRI OTHER -o OUT, or --data DIR --out DIR, or --samples --out DIR")
    if single and (other is None or output is None):
        raise click.UsageError("a single pair needs MRI, OTHER and -o OUTPUT")
    if not single and out is None:
        raise click.UsageError("--data and --samples need --out DIR")
    if model_file and weights:
        raise click.UsageError("--weights (PyTorch) and --model (runtime) are alternatives; give one")
    for image in (mri, other) if single else ():
        if not Path(image).is_file():  # before loading any model: fail fast on a typo
            raise ImageError(f"{image}: no such file")

    if model_file:
        from cminet.runtime import Fuser

        fuser = Fuser(model_file, backend=backend)
    else:
        from cminet.fusion import TorchFuser

        fuser = TorchFuser(weights, device=device)

    if single:
        fuse_files(fuser, mri, other, output)
        click.echo(f"wrote {output}")
        return
    if samples:
        refs = list_pairs(SAMPLES_DIR, PAIR_TYPES, "all")
    else:
        refs = list_pairs(data, split_pairs(pairs) if pairs else discover_pairs(data), split)
    report = fuse_folder(fuser, refs, out)
    for path in report.written if samples else []:
        click.echo(f"wrote {path}")
    click.echo(f"fused {len(report.written)} of {len(refs)} pairs into {out}/<pair>/<name>.png")
    if report.failed:
        click.echo(f"{len(report.failed)} pair(s) failed:", err=True)
        for name, reason in report.failed:
            click.echo(f"  {name}: {reason}", err=True)
        sys.exit(1)


@main.command()
@click.option("--data", required=True, type=click.Path(exists=True, file_okay=False), help="Dataset root.")
@click.option("--split", default="test", show_default=True, type=click.Choice(["test", "val", "train"]),
              help="val = the validation pairs training carves out of train (use it to choose models).")
@click.option("--pairs", help="Comma-separated pair types (default: every <pair>/ folder).")
@click.option("--weights", type=click.Path(dir_okay=False), help="CMINet checkpoint; default: the shipped one.")
@click.option("--methods", default="cminet,average,max,laplacian", show_default=True,
              help="Built-in methods to compare.")
@click.option("--fused", multiple=True, metavar="[NAME=]DIR",
              help="Another method's outputs as DIR/<pair>/<name>.png (repeatable).")
@click.option("--out", default="out/evaluate", show_default=True, type=click.Path(file_okay=False))
@click.option("--limit", type=click.IntRange(min=1), help="At most N pairs per pair type (quick runs).")
@friendly_errors
def evaluate(data, split, pairs, weights, methods, fused, out, limit) -> None:
    """Score CMINet against baselines (and other methods) with EN, SD, SF, AG, MI, SCD,
    VIF, Qabf and SSIM, per pair type, and rank them on MI, VIF, Qabf and SF.

    \b
    The README table:
      cminet evaluate --data ../shared/data/harvard --split test
    Add a published method's outputs:
      cminet evaluate --data ../shared/data/harvard --fused U2Fusion=results/u2fusion
    """
    from pathlib import Path

    from cminet.baselines import BASELINES, BaselineFuser
    from cminet.data import discover_pairs, list_pairs, split_validation
    from cminet.evaluate import FolderMethod, comparison_sheet, markdown, rank, run_evaluation, summarise, write_outputs
    from cminet.fusion import TorchFuser

    chosen = split_pairs(pairs) if pairs else discover_pairs(data)
    refs = list_pairs(data, chosen, "train" if split == "val" else split)
    if split == "val":
        refs = split_validation(refs)[1]
    if limit:
        per_type: dict = {}
        refs = [r for r in refs if per_type.setdefault(r.pair, []).append(r) or len(per_type[r.pair]) <= limit]
    contenders: dict = {}
    for name in split_pairs(methods):
        if name == "cminet":
            contenders[name] = TorchFuser(weights)
        elif name in BASELINES:
            contenders[name] = BaselineFuser(name)
        else:
            known = ", ".join(["cminet", *BASELINES])
            raise click.BadParameter(f"unknown method {name!r} (known: {known})", param_hint="--methods")
    for item in fused:
        name, _, folder = item.rpartition("=")
        contenders[name or Path(folder).name] = FolderMethod(folder)
    rows, images, failures = run_evaluation(refs, contenders)
    if not rows:
        raise click.ClickException("nothing was evaluated")
    summary = summarise(rows)
    ranks = rank(summary)
    out = Path(out)
    write_outputs(out, rows, summary, ranks, {"data": str(data), "split": split, "weights": weights or "shipped"})
    sheet = comparison_sheet(images, ["MRI", "other", *contenders], out / "comparison.png")
    click.echo(markdown(summary, ranks))
    click.echo(f"wrote {out}/metrics.csv, summary.json, summary.md" + (f", {sheet.name}" if sheet else ""))
    if failures:
        click.echo(f"{len(failures)} failure(s):", err=True)
        for name, reason in failures:
            click.echo(f"  {name}: {reason}", err=True)
        sys.exit(1)


@main.command("fuse-volume")
@click.argument("mri", type=click.Path())
@click.argument("other", type=click.Path())
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False),
              help="Fused NIfTI (.nii or .nii.gz) on the MRI grid: uint8 grey for CT, RGB24 for PET/SPECT.")
@click.option("--modality", type=click.Choice(["ct", "pet", "spect"], case_sensitive=False),
              help="What OTHER is. Default: its DICOM Modality (CT, PT, NM); NIfTI needs this option.")
@click.option("--window", metavar="LOW,HIGH",
              help="OTHER's display range in its own units: HU for CT (default -160,240), e.g. Bq/ml or SUV "
                   "for PET/SPECT (default: the volume's 0.5-99.5 percentiles). Write --window=-160,240.")
@click.option("--colormap", default="HOT_IRON", show_default=True,
              help="PET/SPECT colour map: HOT_IRON, PET, HOT_METAL_BLUE, PET_20_STEP (DICOM standard palettes) "
                   "or gray (writes a grey volume).")
@click.option("--dicom-out", type=click.Path(file_okay=False),
              help="Also write a DICOM Secondary Capture series into this new (or empty) folder.")
@click.option("--png-dir", type=click.Path(file_okay=False),
              help="Also write every axial slice as PNG and montage.png (MRI | OTHER | fused, 3 planes).")
@click.option("--model", "model_file", type=click.Path(dir_okay=False),
              help="Exported .onnx or .engine. Default: the shipped FP32 ONNX.")
@click.option("--backend", default="auto", show_default=True,
              type=click.Choice(["auto", "ort-cpu", "ort-cuda", "ort-trt", "tensorrt"]))
@click.option("--batch-size", type=click.IntRange(min=1),
              help="Axial slices per network call (default: 1 on a CPU, where that is quickest; 4 on a GPU).")
@click.option("--threads", type=click.IntRange(min=1), help="CPU threads for ONNX Runtime (default: all cores).")
@friendly_errors
def fuse_volume(mri, other, output, modality, window, colormap, dicom_out, png_dir, model_file, backend,
                batch_size, threads) -> None:
    """Fuse an MRI volume with a CT, PET or SPECT volume (NIfTI files or DICOM series folders).

    OTHER is resampled onto the MRI grid through both scans' world geometry; the output has
    the MRI's grid and affine. Torch-free: needs only pip install 'cminet[volume]'.

    \b
    PET as NIfTI, with a DICOM copy and PNGs to look at:
      cminet fuse-volume t1.nii.gz pet.nii.gz --modality pet -o fused.nii.gz \\
          --dicom-out fused_dicom/ --png-dir fused_png/
    CT as a DICOM series (modality from the files), a bone window:
      cminet fuse-volume mri_series/ ct_series/ -o fused.nii.gz --window=-450,1050
    """
    import time
    from pathlib import Path

    from cminet.runtime import volume as volumes
    from cminet.runtime.errors import ModelFileError
    from cminet.runtime.imaging import write_image

    started = time.perf_counter()
    volumes.check_nifti_path(output)  # every output is checked before any work
    if dicom_out:
        volumes.check_output_folder(dicom_out, "--dicom-out")
    if model_file and not Path(model_file).is_file():
        raise ModelFileError(f"{model_file}: no such model file")
    mri_volume, other_volume = volumes.load_volume(mri, "MRI"), volumes.load_volume(other, "OTHER")
    click.echo(f"MRI   {mri}: {mri_volume.describe()}")
    click.echo(f"OTHER {other}: {other_volume.describe()}")
    fused = volumes.fuse_volume(mri_volume, other_volume, model=model_file, modality=modality, window=window,
                                colormap=colormap, batch_size=batch_size, backend=backend, threads=threads,
                                progress=True)
    info = fused.info
    units = f" {other_volume.units}" if other_volume.units else ""
    palette = f", colour map {info['colormap']}" if fused.is_rgb else ""
    click.echo(f"{info['modality']}: window {info['window'][0]:.4g}..{info['window'][1]:.4g}{units}{palette}; "
               f"MRI window {info['mri_window'][0]:.4g}..{info['mri_window'][1]:.4g}; "
               f"fused {info['slices']} axial slices in {info['fuse_seconds']:.1f} s ({info['network_seconds']:.1f} s "
               f"in the network, batch {info['batch_size']})")
    volumes.save_nifti(fused, output)
    click.echo(f"wrote {output} ({'RGB24' if fused.is_rgb else 'uint8 grey'}, {'×'.join(map(str, fused.shape))})")
    if dicom_out:
        description = f"cminet fused MRI+{info['modality'].upper()}, display only, not for quantitation"
        files = volumes.save_dicom_series(fused, dicom_out, series_description=description)
        click.echo(f"wrote {len(files)} DICOM Secondary Capture files to {dicom_out}")
    if png_dir:
        slices = volumes.save_png_slices(fused, png_dir)
        write_image(Path(png_dir) / "montage.png", volumes.montage(mri_volume, other_volume, fused))
        click.echo(f"wrote {len(slices)} slices and montage.png to {png_dir}")
    click.echo(f"done in {time.perf_counter() - started:.1f} s")


def split_pairs(text: str) -> tuple[str, ...]:
    """'ct_mri, pet_mri' → ('ct_mri', 'pet_mri')."""
    return tuple(p.strip() for p in text.split(",") if p.strip())


def parse_size(text: str) -> tuple[int, int]:
    """'256', '256x320' or '256×320' → (H, W)."""
    parts = text.lower().replace("×", "x").split("x")
    try:
        dims = [int(p) for p in parts]
    except ValueError:
        raise click.BadParameter(f"{text!r} is not a size like 256 or 256x320") from None
    if len(dims) == 1:
        dims *= 2
    if len(dims) != 2 or min(dims) < 16:
        raise click.BadParameter(f"{text!r}: need H and W of at least 16")
    return dims[0], dims[1]


if __name__ == "__main__":
    main()
