"""The ``cminet`` command line: info, train, fuse, fuse-volume, evaluate.

Every command prints bad-input problems as one line and exits non-zero; ``--debug``
(before or after the command name, as in ``cminet-export`` and ``cminet-bench``) shows the
full traceback instead.
"""

from __future__ import annotations

import functools
import sys

import click

from cminet import __version__
from cminet.runtime import contract
from cminet.runtime.errors import CMINetError


def _debugging() -> bool:
    ctx = click.get_current_context(silent=True)
    while ctx is not None:
        if ctx.params.get("debug"):
            return True
        ctx = ctx.parent
    return False


def debug_option(func):
    """``--debug``: the same flag, with the same meaning, on every command of the three CLIs."""
    return click.option("--debug", is_flag=True, help="Show full tracebacks instead of one-line errors.")(func)


def friendly_errors(func):
    """Turn expected failures into a one-line ``error: ...`` and exit code 1."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except (CMINetError, OSError) as exc:
            if _debugging():
                raise
            click.echo(f"error: {exc}", err=True)
            sys.exit(1)

    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="cminet")
@debug_option
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
@debug_option
@friendly_errors
def info(size: str, weights: str | None, debug: bool) -> None:
    """Print the model config, parameter count and FLOPs at SIZE."""
    from cminet.model import CMINet, count_flops, count_parameters

    height, width = contract.parse_size(size)
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
@click.option("--lr", default=2e-4, show_default=True, type=float,
              help="Adam learning rate (cosine-decayed) for one process's --batch-size.")
@click.option("--lr-scaling", default="sqrt", show_default=True, type=click.Choice(["sqrt", "linear", "none"]),
              help="Under torchrun: scale --lr by √N (Adam), N, or not at all for N processes' global batch.")
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
@debug_option
@friendly_errors
def train(data, pairs, epochs, batch_size, lr, lr_scaling, crop, out, resume, init, device, seed, max_minutes,
          reset_head, w_ssim, w_texture, w_pixel, w_intensity, w_gradient, w_vif, w_qabf, debug) -> None:
    """Train CMINet on the train split (validation is carved out of it by case).

    \b
    Example (the shipped weights):
      cminet train --data path/to/harvard --out runs/default --epochs 100
    DistributedDataParallel on N GPUs (or CPU processes), --batch-size per process:
      torchrun --standalone --nproc_per_node=N -m cminet train --data ... --out ...
    """
    from pathlib import Path

    from cminet.losses import LossWeights
    from cminet.runtime.folders import PAIR_TYPES, discover_pairs
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
                        lr=lr, lr_scaling=lr_scaling, crop=crop, seed=seed, device=device, resume=resume,
                        max_minutes=max_minutes,
                        init=Path(init) if init else None, reset_head=reset_head,
                        loss=LossWeights(w_ssim, w_texture, w_pixel, w_intensity, w_gradient, w_vif, w_qabf))
    try:
        summary = run_training(opts)
    except KeyboardInterrupt:
        sys.exit(130)
    if summary["rank"] != 0:  # under torchrun only rank 0 reports
        return
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
              type=click.Choice([contract.AUTO, *contract.RUNTIME_BACKENDS]),
              help="Runtime backend for --model (or the shipped ONNX).")
@click.option("--precision", default="fp32", show_default=True, type=click.Choice(contract.PRECISIONS),
              help="Which shipped ONNX the runtime uses when neither --weights nor --model is given.")
@click.option("--device", default="cpu", show_default=True, help="PyTorch device for --weights (cpu, cuda).")
@click.option("--server", metavar="URL",
              help="Run the network on a Triton server (cminet serve, or tritonserver with the cminet-export "
                   "--triton repository), e.g. http://127.0.0.1:8000.")
@click.option("--server-model", default="cminet", show_default=True,
              help="With --server: the Triton model (cminet_onnx or cminet_trt for the exported repository).")
@debug_option
@friendly_errors
def fuse(mri, other, output, data, samples, split, pairs, out, weights, model_file, backend, precision, device,
         server, server_model, debug) -> None:
    """Fuse an MRI with a CT, PET or SPECT image.

    \b
    One pair (PET/SPECT output is RGB with the PET/SPECT colours restored):
      cminet fuse mri.png pet.png -o fused.png
    Every test pair of a dataset, written to OUT/<pair>/<name>.png:
      cminet fuse --data path/to/harvard --split test --out fused/
    The shipped samples, through an exported model and ONNX Runtime:
      cminet fuse --samples --out fused/ --model cminet.onnx
    One pair through a Triton server (see cminet serve):
      cminet fuse --server http://127.0.0.1:8000 mri.png pet.png -o fused.png

    Without --weights, --model or --server, the PyTorch model runs where torch is installed
    (the training install); the torch-free runtime runs the shipped ONNX otherwise.
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
    if sum(x is not None for x in (model_file, weights, server)) > 1:
        raise click.UsageError("--weights (PyTorch), --model (runtime) and --server (Triton) are alternatives: "
                               "give one")
    for image in (mri, other) if single else ():
        if not Path(image).is_file():  # before loading any model: fail fast on a typo
            raise ImageError(f"{image}: no such file")

    if server:
        from cminet.serve import TritonFuser

        fuser = TritonFuser(server, server_model)
    elif model_file or (weights is None and not torch_installed()):
        from cminet.runtime import Fuser

        fuser = Fuser(model_file, backend=backend, precision=precision)
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
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on (0.0.0.0: every interface; put TLS and auth in front for a network).")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(1, 65535), help="HTTP port.")
@click.option("--grpc-port", type=click.IntRange(1, 65535), help="Also serve Triton's gRPC protocol on this port.")
@click.option("--metrics-port", type=click.IntRange(1, 65535), help="Prometheus metrics on this port.")
@click.option("--model", "model_file", type=click.Path(dir_okay=False),
              help="Exported .onnx or .engine to serve; default: the runtime's default (the shipped FP32 ONNX).")
@click.option("--backend", default="auto", show_default=True,
              type=click.Choice([contract.AUTO, *contract.RUNTIME_BACKENDS]), help="Runtime backend.")
@click.option("--threads", type=click.IntRange(min=1), help="CPU threads for ONNX Runtime (default: all cores).")
@click.option("--max-batch-size", default=8, show_default=True, type=click.IntRange(1, 256),
              help="Largest batch Triton's dynamic batcher forms from concurrent requests of one size.")
@click.option("--benchmark", is_flag=True,
              help="Instead of serving: measure requests/s and p50/p99 latency for 1, 4 and 8 concurrent "
                   "clients against the local runtime and against this server, print a table, exit.")
@click.option("--size", default=256, show_default=True, type=click.IntRange(16, 4096), help="With --benchmark: H = W.")
@click.option("--seconds", default=10.0, show_default=True, type=click.FloatRange(min=0.1),
              help="With --benchmark: measuring time per row.")
@debug_option
@friendly_errors
def serve(host, port, grpc_port, metrics_port, model_file, backend, threads, max_batch_size, benchmark, size,
          seconds, debug) -> None:
    """Serve fusion with NVIDIA Triton Inference Server (through PyTriton; torch-free).

    \b
    The network is Triton model 'cminet': inputs mri, other (FP32 N×1×H×W in [0, 1]),
    output fused; concurrent requests of one size are batched. Clients:
      cminet fuse --server http://127.0.0.1:8000 mri.png pet.png -o fused.png
    or any Triton client (HTTP/REST, gRPC). Needs: pip install 'cminet[serve]'.
    Measure it (one run, the README table):
      cminet serve --benchmark --model cminet.onnx
    """
    from cminet import serve as serving

    if benchmark:
        results = serving.benchmark(model_file, size=size, seconds=seconds, max_batch_size=max_batch_size,
                                    log=lambda line: click.echo(line, err=True))
        click.echo(serving.markdown_table(results, size))
        return
    try:
        serving.serve(model_file, host=host, port=port, grpc_port=grpc_port, metrics_port=metrics_port,
                      max_batch_size=max_batch_size, backend=backend, threads=threads, log=click.echo)
    except KeyboardInterrupt:  # stopped while starting: tritonserver is already stopped
        sys.exit(130)


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
@debug_option
@friendly_errors
def evaluate(data, split, pairs, weights, methods, fused, out, limit, debug) -> None:
    """Score CMINet against baselines (and other methods) with EN, SD, SF, AG, MI, SCD,
    VIF, Qabf and SSIM, per pair type, and rank them on MI, VIF, Qabf and SF.

    \b
    The README table:
      cminet evaluate --data path/to/harvard --split test
    Add a published method's outputs:
      cminet evaluate --data path/to/harvard --fused U2Fusion=results/u2fusion
    """
    from pathlib import Path

    from cminet.baselines import BASELINES, BaselineFuser
    from cminet.data import split_validation
    from cminet.evaluate import FolderMethod, comparison_sheet, markdown, rank, run_evaluation, summarise, write_outputs
    from cminet.fusion import TorchFuser
    from cminet.runtime.folders import discover_pairs, list_pairs

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
              help="Exported .onnx or .engine. Default: the shipped ONNX of --precision.")
@click.option("--backend", default="auto", show_default=True,
              type=click.Choice([contract.AUTO, *contract.RUNTIME_BACKENDS]))
@click.option("--precision", default="fp32", show_default=True, type=click.Choice(contract.PRECISIONS),
              help="Which shipped ONNX runs when --model is not given.")
@click.option("--batch-size", type=click.IntRange(min=1),
              help="Axial slices per network call (default: 1 on a CPU, where that is quickest; 4 on a GPU).")
@click.option("--threads", type=click.IntRange(min=1), help="CPU threads for ONNX Runtime (default: all cores).")
@debug_option
@friendly_errors
def fuse_volume(mri, other, output, modality, window, colormap, dicom_out, png_dir, model_file, backend,
                precision, batch_size, threads, debug) -> None:
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
                                colormap=colormap, batch_size=batch_size, backend=backend, precision=precision,
                                threads=threads, progress=True)
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


def torch_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("torch") is not None


if __name__ == "__main__":
    main()
