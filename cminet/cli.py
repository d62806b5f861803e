"""The ``cminet`` command line: doctor, info, train, fuse, fuse-volume, serve, evaluate. A thin
layer over library functions; the error boundary and option types it shares with
``cminet-export`` and ``cminet-bench`` are :mod:`cminet.runtime.command_line`.
"""

from __future__ import annotations

import sys

import click

from cminet import __version__
from cminet.runtime import contract
from cminet.runtime.colour import COLOUR_MODES
from cminet.runtime.command_line import (
    CONTEXT,
    NON_NEGATIVE,
    POSITIVE,
    TILE_HELP,
    BoundaryGroup,
    SizeType,
    TileType,
    require,
)
from cminet.runtime.errors import CMINetError
from cminet.runtime.modality import MODALITIES

COLOUR_HELP = ("PET/SPECT colour: balanced (the colour hold: the network's detail inside the functional colours) "
               "or strict (the functional colour scale kept first, at some cost in the fusion metrics); CT is the "
               "same in both.")


def skip_air_option():
    """``--skip-air/--no-skip-air``, as fuse and fuse-volume take it."""
    return click.option("--skip-air/--no-skip-air", "skip_air", default=True, show_default=True,
                        help="Run the network only on the box that holds the head, the max rule around it "
                             "(no air computed; within tiling's tolerance of whole-image fusion).")


def colour_option(help_prefix: str = ""):
    """``--colour balanced|strict``, as fuse, fuse-volume and evaluate take it."""
    return click.option("--colour", "colour", default="balanced", show_default=True,
                        type=click.Choice(COLOUR_MODES), help=help_prefix + COLOUR_HELP)


@click.group(cls=BoundaryGroup, context_settings=CONTEXT)
@click.version_option(__version__, prog_name="cminet")
def main() -> None:
    """CMINet cross-modality medical image fusion (MRI with CT, PET or SPECT).

    \b
    Typical session:
      cminet doctor                            # what this machine has, what to install
      cminet info                              # model size and cost
      cminet fuse MRI.png PET.png -o fused.png # fuse one pair with the shipped weights
    """


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON (for scripts and bug reports).")
def doctor(as_json: bool) -> None:
    """Check this environment: libraries, GPU, usable backends, shipped models, what to install.

    Torch-free; a library that is installed but broken is one line of the report. Exit status 1
    when something the base runtime needs is missing or broken, else 0.
    """
    from cminet.runtime.doctor import diagnose, render

    report = diagnose()
    if as_json:
        import json

        click.echo(json.dumps(report.as_dict(), indent=2))
    else:
        click.echo(render(report))
    sys.exit(1 if report.fixes() else 0)


@main.command()
@click.option("--size", default="256x256", show_default=True, type=SizeType(),
              help="H×W at which to count FLOPs and estimate memory, e.g. 512x512.")
@click.option("--weights", type=click.Path(dir_okay=False), help="Checkpoint (.safetensors); default: the shipped one.")
def info(size: tuple[int, int], weights: str | None) -> None:
    """Print the model config, parameter count, FLOPs and peak memory at SIZE."""
    require("torch", "cminet info")
    from cminet.model import CMINet, count_flops, count_parameters
    from cminet.runtime import memory

    height, width = size
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
    config = model.config
    shape = memory.NetworkShape(config.channels, config.num_heads, config.patch_size, config.kv_pool)
    budget = memory.budget_bytes()
    for backend, precision in memory.COSTS:
        need = memory.network_peak_bytes(1, height, width, backend, precision, shape) or 0
        verdict = "GPU memory, checked against the device's free memory when it runs"
        if budget is not None and not contract.BACKENDS[backend].gpu:
            largest = memory.largest_square(backend, precision, budget, shape)
            verdict = (f"fits whole in the {memory.human(budget)} available here" if need <= budget else
                       f"fused in tiles here (whole images up to {largest}² fit in {memory.human(budget)})")
        click.echo(f"peak memory at 1×{height}×{width}, {backend} {precision} (estimate): {memory.human(need)}; "
                   f"{verdict}")


@main.command()
@click.option("--data", required=True, multiple=True, type=click.Path(exists=True, file_okay=False),
              help="Dataset root laid out as <pair>/{mri,other}/<name>.png with train.txt (and val.txt where "
                   "whole subjects are held out); repeat to train on several.")
@click.option("--pairs", help="Comma-separated pair types to train on (default: every <pair>/ folder in DATA).")
@click.option("--epochs", default=100, show_default=True, type=click.IntRange(min=1))
@click.option("--batch-size", default=16, show_default=True, type=click.IntRange(min=1))
@click.option("--lr", default=2e-4, show_default=True, type=POSITIVE,
              help="Adam learning rate (cosine-decayed) for one process's --batch-size.")
@click.option("--lr-scaling", default="sqrt", show_default=True, type=click.Choice(["sqrt", "linear", "none"]),
              help="Under torchrun: scale --lr by √N (Adam), N, or not at all for N processes' global batch.")
@click.option("--crop", default=64, show_default=True, type=click.IntRange(min=16), help="Random crop size.")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Folder for checkpoints and log.csv.")
@click.option("--resume", is_flag=True, help="Continue from OUT/last.safetensors.")
@click.option("--init", type=click.Path(exists=True, dir_okay=False), help="Start from these weights (fine-tune).")
@click.option("--device", default="auto", show_default=True, help="auto (CUDA if present), cpu, cuda, cuda:1 ...")
@click.option("--seed", default=0, show_default=True, type=click.IntRange(0, 2**32 - 1))
@click.option("--max-minutes", type=POSITIVE, help="Stop cleanly after this much wall time.")
@click.option("--reset-head", is_flag=True,
              help="With --init: zero the output correction so the run starts from the max rule, "
                   "keeping the initial weights' features.")
@click.option("--w-ssim", default=10.0, show_default=True, type=NON_NEGATIVE,
              help="Loss weight of 1 − SSIM(f, max(a, b)).")
@click.option("--w-texture", default=100.0, show_default=True, type=NON_NEGATIVE,
              help="Loss weight of the gradient (texture) term.")
@click.option("--w-pixel", default=1.0, show_default=True, type=NON_NEGATIVE,
              help="Loss weight of the pixel (MSE) term.")
@click.option("--w-intensity", default=0.0, show_default=True, type=NON_NEGATIVE,
              help="Loss weight of mean |f − max(a, b)|.")
@click.option("--w-gradient", default=0.0, show_default=True, type=NON_NEGATIVE,
              help="Loss weight of mean |∇f − ∇(stronger-edged source)| (Sobel vectors).")
@click.option("--w-vif", default=0.0, show_default=True, type=NON_NEGATIVE,
              help="Loss weight of 2 − VIF(a, f) − VIF(b, f) (the evaluation's VIF, differentiable).")
@click.option("--w-qabf", default=0.0, show_default=True, type=NON_NEGATIVE,
              help="Loss weight of 1 − Qabf(a, b, f) (the evaluation's Qabf, differentiable).")
@click.option("--w-colour", default=0.0, show_default=True, type=NON_NEGATIVE,
              help="Loss weight of the functional brightness term (squared low-pass f − PET/SPECT over its colour).")
@click.option("--colour-sigma", default=2.0, show_default=True, type=POSITIVE,
              help="Scale (Gaussian σ, px) above which the colour term holds the functional brightness.")
@click.option("--w-fov", default=0.0, show_default=True, type=NON_NEGATIVE,
              help="Loss weight of field-of-view consistency (the network on a window vs on the whole crop); "
                   "keeps tiled fusion equal to whole-image fusion.")
@click.option("--augment/--no-augment", default=True, show_default=True,
              help="Subject/scanner augmentation: MRI contrast, functional scale/blur/palette, noise.")
@click.option("--colour-hold/--no-colour-hold", default=False, show_default=True,
              help="Train through the runtime's colour hold (PET/SPECT base from the functional image); "
                   "pair it with --w-fov so the network's own output stays independent of the field of view.")
@click.option("--shifted-val", default=1, show_default=True, type=click.IntRange(min=0),
              help="Transformed copies (palette, contrast, resolution) of each colour validation pair.")
def train(data, pairs, epochs, batch_size, lr, lr_scaling, crop, out, resume, init, device, seed, max_minutes,
          reset_head, w_ssim, w_texture, w_pixel, w_intensity, w_gradient, w_vif, w_qabf, w_colour, colour_sigma,
          w_fov, augment, colour_hold, shifted_val) -> None:
    """Train CMINet on the train split (validation is carved out of it by case).

    \b
    Example (the shipped weights):
      cminet train --data path/to/harvard --out runs/default --epochs 100
    DistributedDataParallel on N GPUs (or CPU processes), --batch-size per process:
      torchrun --standalone --nproc_per_node=N -m cminet train --data ... --out ...
    """
    require("torch", "cminet train")
    from pathlib import Path

    from cminet.checkpoint import load_checkpoint
    from cminet.data import training_split
    from cminet.fusion import torch_device
    from cminet.losses import LossWeights
    from cminet.runtime.errors import OutputError
    from cminet.runtime.files import output_kind
    from cminet.runtime.folders import PAIR_TYPES, discover_pairs
    from cminet.train import TrainOptions
    from cminet.train import train as run_training

    # Everything is checked before the first file is written.
    if reset_head and not init:
        raise click.BadParameter("--reset-head needs --init (the weights whose features to keep)",
                                 param_hint="--reset-head")
    weights = (w_ssim, w_texture, w_pixel, w_intensity, w_gradient, w_vif, w_qabf, w_colour)
    if not any(weights):
        raise click.UsageError("every loss weight (--w-*) is 0: nothing to train for")
    try:
        torch_device(device)
    except CMINetError as exc:
        raise click.BadParameter(str(exc).removeprefix("device").lstrip(": "), param_hint="--device") from None
    chosen = split_pairs(pairs) if pairs else tuple(sorted({p for root in data for p in discover_pairs(root)}))
    unknown = [p for p in chosen if p not in PAIR_TYPES and not any((Path(root) / p).is_dir() for root in data)]
    if unknown:
        raise click.BadParameter(f"unknown pair type(s) {', '.join(unknown)}", param_hint="--pairs")
    train_refs, _ = training_split(data, chosen)
    if not train_refs:
        raise CMINetError(f"{', '.join(data)}: the train split of {', '.join(chosen)} lists no pairs")
    if init:
        load_checkpoint(init)
    if resume and not (Path(out) / "last.safetensors").is_file():
        raise CMINetError(f"{Path(out) / 'last.safetensors'}: nothing to resume from")
    log = Path(out) / "log.csv"  # appended to with plain writes: a FIFO or device there would block or vanish
    if output_kind(log) not in ("new", "file"):
        raise OutputError(f"{log}: not a regular file; training appends its log there")
    opts = TrainOptions(data=tuple(Path(root) for root in data), out=Path(out), pairs=chosen, epochs=epochs,
                        batch_size=batch_size, lr=lr, lr_scaling=lr_scaling, crop=crop, seed=seed, device=device,
                        resume=resume, max_minutes=max_minutes, init=Path(init) if init else None,
                        reset_head=reset_head, augment=augment, colour_hold=colour_hold, shifted_val=shifted_val,
                        loss=LossWeights(*weights, colour_sigma=colour_sigma, fov=w_fov))
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
@click.option("--split", default="test", show_default=True, type=click.Choice(["test", "train", "all"]),
              help="With --data: the pairs listed in test.txt or train.txt, or every pair.")
@click.option("--pairs", help="With --data: comma-separated pair types (default: every <pair>/ folder).")
@click.option("--out", type=click.Path(file_okay=False), help="Output folder for --data / --samples.")
@click.option("--model", "model_file", type=click.Path(dir_okay=False),
              help="Exported .onnx or .engine to run; default: the shipped ONNX of --precision.")
@click.option("--weights", type=click.Path(dir_okay=False),
              help="Run a PyTorch checkpoint (.safetensors) instead: torch-cpu, or torch-cuda with --device cuda.")
@click.option("--server", metavar="URL",
              help="Run the network on a Triton server (cminet serve, or tritonserver with the cminet-export "
                   "--triton repository), e.g. http://127.0.0.1:8000.")
@click.option("--server-model", default=contract.TRITON_MODEL, show_default=True,
              help="With --server: the Triton model (cminet_onnx or cminet_trt for the exported repository).")
@click.option("--backend", default="auto", show_default=True, type=click.Choice(contract.BACKEND_CHOICES),
              help="Backend for the model (auto: see cminet doctor for what runs here).")
@click.option("--precision", type=click.Choice(contract.PRECISIONS),
              help="Which shipped ONNX runs without --model (default fp32); with --model or --server, what the "
                   "model must be; with --weights, what PyTorch casts to (torch-cuda only).")
@click.option("--device", help="cuda, cuda:N or cpu: the GPU for --weights (torch-cuda) or the CUDA device of a GPU "
                               "backend.")
@click.option("--threads", type=click.IntRange(min=1), help="CPU threads (ONNX Runtime, OpenVINO, PyTorch).")
@click.option("--tile", default="auto", show_default=True, type=TileType(), help=TILE_HELP)
@colour_option()
@skip_air_option()
def fuse(mri, other, output, data, samples, split, pairs, out, model_file, weights, server, server_model, backend,
         precision, device, threads, tile, colour, skip_air) -> None:
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

    Without --model, --weights or --server the shipped ONNX of --precision runs through the
    torch-free runtime, with or without torch installed. An option the chosen backend cannot
    honour is refused.
    """

    from pathlib import Path

    from cminet.runtime.errors import ImageError
    from cminet.runtime.folders import PAIR_TYPES, SAMPLES_DIR, discover_pairs, fuse_files, fuse_folder, list_pairs
    from cminet.runtime.imaging import check_image_output

    # Everything is checked before a model is loaded or a file written.
    single = mri is not None or other is not None
    if sum([single, data is not None, samples]) != 1:
        raise click.UsageError("give either MRI OTHER -o OUT, or --data DIR --out DIR, or --samples --out DIR")
    if single and (other is None or output is None):
        raise click.UsageError("a single pair needs MRI, OTHER and -o OUTPUT")
    if not single and out is None:
        raise click.UsageError("--data and --samples need --out DIR")
    if single and out is not None:
        raise click.UsageError("--out is for --data / --samples; a single pair is written to -o OUTPUT")
    if sum(x is not None for x in (model_file, weights, server)) > 1:
        raise click.UsageError("--weights (PyTorch), --model (runtime) and --server (Triton) are alternatives: "
                               "give one")
    for image in (mri, other) if single else ():
        if not Path(image).is_file():  # before loading any model: fail fast on a typo
            raise ImageError(f"{image}: no such file" if not Path(image).exists() else f"{image}: not a file")
    if single:
        check_image_output(output)
    refs = []
    if samples:
        refs = list_pairs(SAMPLES_DIR, PAIR_TYPES, "all")
    elif data is not None:
        refs = list_pairs(data, split_pairs(pairs) if pairs else discover_pairs(data), split)
        if not refs:
            raise CMINetError(f"{data}: the {split} split lists no pairs")

    fuser = open_fuser(model_file or weights or (server and server_url(server, server_model)), backend,
                       precision, device, threads, torch_weights=weights is not None, colour=colour,
                       skip_air=skip_air)
    tiled = _Tiling(fuser, tile)
    if single:
        fuse_files(tiled, mri, other, output)
        click.echo(f"wrote {output}")
        return
    report = fuse_folder(tiled, refs, out)
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
def serve(host, port, grpc_port, metrics_port, model_file, backend, threads, max_batch_size, benchmark, size,
          seconds) -> None:
    """Serve fusion with NVIDIA Triton Inference Server (through PyTriton; torch-free).

    \b
    The network is Triton model 'cminet': inputs mri, other (FP32 N×1×H×W in [0, 1]),
    output fused; concurrent requests of one size are batched. Clients:
      cminet fuse --server http://127.0.0.1:8000 mri.png pet.png -o fused.png
    or any Triton client (HTTP/REST, gRPC). Needs: pip install 'cminet[serve]'.
    Measure it (one run, the table in docs/serving.md):
      cminet serve --benchmark --model cminet.onnx
    """
    from cminet import serve as serving

    if benchmark:
        from cminet.benchmarks.serve_load import benchmark as load_benchmark
        from cminet.benchmarks.serve_load import markdown_table

        results = load_benchmark(model_file, size=size, seconds=seconds, max_batch_size=max_batch_size,
                                 log=lambda line: click.echo(line, err=True))
        click.echo(markdown_table(results, size))
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
@colour_option("Colour mode of the cminet method: ")
@click.option("--shifted", default=0, show_default=True, type=click.IntRange(min=0),
              help="Also score N transformed copies of each PET/SPECT pair (another palette, MRI contrast, "
                   "functional scale and resolution): subject and scanner change the data does not contain.")
def evaluate(data, split, pairs, weights, methods, fused, out, limit, colour, shifted) -> None:
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
    from cminet.evaluate import FolderMethod, comparison_sheet, markdown, rank, run_evaluation, summarise, write_outputs
    from cminet.runtime.folders import discover_pairs, list_pairs

    if "cminet" in split_pairs(methods):
        require("torch", "cminet evaluate --methods cminet")
    chosen = split_pairs(pairs) if pairs else discover_pairs(data)
    if split == "val":
        require("torch", "cminet evaluate --split val")
        from cminet.data import validation_split

        refs = validation_split(data, chosen)[1]  # the cases `cminet train` holds out, whatever --pairs
    else:
        refs = list_pairs(data, chosen, split)
    if limit:
        per_type: dict = {}
        refs = [r for r in refs if per_type.setdefault(r.pair, []).append(r) or len(per_type[r.pair]) <= limit]
    contenders: dict = {}
    for name in split_pairs(methods):
        if name == "cminet":
            from cminet.fusion import DEFAULT_WEIGHTS
            from cminet.runtime import Fuser

            contenders[name] = Fuser(weights or DEFAULT_WEIGHTS, colour=colour)
        elif name in BASELINES:
            contenders[name] = BaselineFuser(name)
        else:
            known = ", ".join(["cminet", *BASELINES])
            raise click.BadParameter(f"unknown method {name!r} (known: {known})", param_hint="--methods")
    for item in fused:
        name, _, folder = item.rpartition("=")
        contenders[name or Path(folder).name] = FolderMethod(folder)
    rows, images, failures = run_evaluation(refs, contenders, shifted=shifted)
    if not rows:
        raise click.ClickException("nothing was evaluated")
    summary = summarise(rows)
    ranks = rank(summary)
    out = Path(out)
    write_outputs(out, rows, summary, ranks, {"data": str(data), "split": split, "weights": weights or "shipped",
                                              "colour": colour, "shifted_copies": shifted})
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
@click.option("--modality", type=click.Choice(tuple(MODALITIES), case_sensitive=False),
              help="What OTHER is. Default: its DICOM Modality (CT, PT, NM); NIfTI needs this option.")
@click.option("--window", metavar="LOW,HIGH",
              help="OTHER's display range in its own units: HU for CT (default -160,240; from the data for a CT "
                   "not in HU), e.g. Bq/ml or SUV for PET/SPECT (default: background to the 99.9th percentile "
                   "inside the head). Write --window=-160,240.")
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
@click.option("--precision", type=click.Choice(contract.PRECISIONS),
              help="Which shipped ONNX runs when --model is not given (default fp32); with --model, what it must be.")
@click.option("--batch-size", type=click.IntRange(min=1),
              help="Axial slices per network call (default: 1 on a CPU, where that is quickest; 4 on a GPU).")
@click.option("--threads", type=click.IntRange(min=1), help="CPU threads for ONNX Runtime (default: all cores).")
@click.option("--allow-different-patients", is_flag=True,
              help="Fuse DICOM inputs whose PatientID / PatientName / PatientBirthDate differ (refused otherwise); "
                   "the output's series description says DIFFERENT PATIENTS.")
@colour_option()
@skip_air_option()
@click.option("--assume-registered", is_flag=True,
              help="Fuse DICOM inputs in different frames of reference as if registered (refused otherwise); "
                   "the output's series description says ASSUMED REGISTERED.")
def fuse_volume(mri, other, output, modality, window, colormap, dicom_out, png_dir, model_file, backend,
                precision, batch_size, threads, colour, skip_air, allow_different_patients, assume_registered) -> None:
    """Fuse an MRI volume with a CT, PET or SPECT volume (NIfTI files or DICOM series folders).

    No registration is done: the two volumes must already be co-registered. OTHER is
    resampled onto the MRI grid through both scans' world geometry; the output has the
    MRI's grid and affine. DICOM inputs of different patients or frames of reference are
    refused (NIfTI carries no identity to check). Torch-free: pip install 'cminet[volume]'.

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
    from cminet.runtime.files import OutputSet
    from cminet.runtime.imaging import write_image

    started = time.perf_counter()
    with OutputSet(inputs=(mri, other)) as outputs:  # every output checked before any work, written together
        volumes.check_nifti_path(output)
        nifti = outputs.file(output)
        dicom_folder = outputs.folder(dicom_out) if dicom_out else None
        png_folder = outputs.folder(png_dir) if png_dir else None
        if model_file and not contract.model_kind(model_file) == "url" and not Path(model_file).is_file():
            raise ModelFileError(f"{model_file}: no such model file")
        mri_volume, other_volume = volumes.load_volume(mri, "MRI"), volumes.load_volume(other, "OTHER")
        click.echo(f"MRI   {mri}: {mri_volume.describe()}")
        click.echo(f"OTHER {other}: {other_volume.describe()}")
        fused = volumes.fuse_volume(mri_volume, other_volume, model=model_file, modality=modality, window=window,
                                    colormap=colormap, batch_size=batch_size, backend=backend, precision=precision,
                                    threads=threads, progress=True, allow_different_patients=allow_different_patients,
                                    assume_registered=assume_registered, colour=colour, skip_air=skip_air)
        info = fused.info
        units = f" {other_volume.units}" if other_volume.units else ""
        palette = f", colour map {info['colormap']}" if fused.is_rgb else ""
        click.echo(f"{info['modality']}: window {info['window'][0]:.4g}..{info['window'][1]:.4g}{units}{palette}; "
                   f"MRI window {info['mri_window'][0]:.4g}..{info['mri_window'][1]:.4g}; "
                   f"fused {info['slices']} axial slices in {info['fuse_seconds']:.1f} s "
                   f"({info['network_seconds']:.1f} s in the network, batch {info['batch_size']})")
        volumes.save_nifti(fused, nifti)
        written = [f"{output} ({'RGB24' if fused.is_rgb else 'uint8 grey'}, {'×'.join(map(str, fused.shape))})"]
        if dicom_folder:
            stamp = "".join(f"{w}: " for w in info["identity_warnings"])  # first, so truncation cannot hide it
            description = f"{stamp}cminet fused MRI+{info['modality'].upper()}, display only, not for quantitation"
            files = volumes.save_dicom_series(fused, dicom_folder, series_description=description)
            written.append(f"{len(files)} DICOM Secondary Capture files to {dicom_out}")
        if png_folder:
            slices = volumes.save_png_slices(fused, png_folder)
            write_image(png_folder / "montage.png", volumes.montage(mri_volume, other_volume, fused))
            written.append(f"{len(slices)} slices and montage.png to {png_dir}")
        outputs.commit()
    for line in written:
        click.echo(f"wrote {line}")
    click.echo(f"done in {time.perf_counter() - started:.1f} s")


def server_url(server: str, model: str) -> str:
    """--server URL plus --server-model: ``http://HOST:PORT/MODEL`` for the runtime."""
    from cminet.runtime.backends.triton import split_url

    address, ssl, named = split_url(server)
    if named != contract.TRITON_MODEL and model != contract.TRITON_MODEL and named != model:
        raise click.UsageError(f"--server names model {named!r} and --server-model {model!r}: give one")
    return f"{'https' if ssl else 'http'}://{address}/{model if model != contract.TRITON_MODEL else named}"


def open_fuser(source, backend: str, precision: str | None, device: str | None, threads: int | None,
               torch_weights: bool = False, colour: str = "balanced", skip_air: bool = True):
    """The one :class:`~cminet.runtime.Fuser` every command fuses through. ``device`` (auto,
    cpu, cuda, cuda:N) steers ``backend`` auto: a checkpoint runs on torch-cpu or torch-cuda,
    an ONNX on a CPU or a CUDA backend; cuda:N is the GPU index. A device this machine does
    not have is a usage error, never a silent fallback."""
    from cminet.runtime import Fuser

    index = None
    text = (device or "auto").strip().lower()
    kind, _, number = text.partition(":")
    if kind not in ("auto", "cpu", "cuda") or (number and (kind != "cuda" or not number.isdigit())):
        raise click.BadParameter(f"expected auto, cpu, cuda or cuda:N, got {device!r}", param_hint="--device")
    if torch_weights:
        require("torch", "cminet fuse --weights")
    if kind == "cuda":
        index = int(number) if number else None
        if torch_weights:
            from cminet.fusion import torch_device

            try:
                torch_device(text)
            except CMINetError as exc:
                raise click.BadParameter(str(exc).removeprefix("device").lstrip(": "), param_hint="--device") from None
            backend = "torch-cuda" if backend == contract.AUTO else backend
        elif backend == contract.AUTO and (not source or contract.model_kind(source) == "onnx"):
            from cminet.runtime.backends.onnxruntime import best_onnx_backend

            backend = best_onnx_backend()
            if backend == "ort-cpu":
                raise click.BadParameter(f"{device}: no CUDA GPU backend for ONNX here (this onnxruntime has no "
                                         "CUDA provider; see cminet doctor)", param_hint="--device")
    elif kind == "cpu" and backend == contract.AUTO and not torch_weights and (
            not source or contract.model_kind(source) == "onnx"):
        from cminet.runtime.backends.onnxruntime import best_onnx_backend

        backend = contract.AUTO if best_onnx_backend() == "ort-cpu" else "ort-cpu"
    return Fuser(source or None, backend=backend, precision=precision, device=index, threads=threads, colour=colour,
                 skip_air=skip_air)


class _Tiling:
    """A fuser whose ``fuse`` passes --tile on and says on stderr when it tiled an image."""

    def __init__(self, fuser, tile):
        self.fuser, self.tile = fuser, tile

    def fuse(self, mri, other):
        fused = self.fuser.fuse(mri, other, tile=self.tile)
        if self.fuser.last_plan is not None:
            click.echo(f"note: {self.fuser.last_plan.describe()} (too large to fuse whole here)", err=True)
        return fused


def split_pairs(text: str) -> tuple[str, ...]:
    """'ct_mri, pet_mri' → ('ct_mri', 'pet_mri')."""
    return tuple(p.strip() for p in text.split(",") if p.strip())


if __name__ == "__main__":
    main()
