"""``cminet-bench``: latency, memory and drift for every backend on this machine.

Each backend runs in its own process (``cminet.benchmarks.worker``) so peak RSS and GPU
memory are its own. Roofline numbers for other devices (``--profile``) are printed apart
from the measurements and labelled as estimates.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import click
import numpy as np
from tqdm import tqdm

from cminet.cli import friendly_errors, parse_size
from cminet.runtime.errors import CMINetError

from .machine import describe, machine_slug
from .roofline import estimate, load_profiles
from .stats import fit_exponent

ALL_BACKENDS = ("torch-cpu", "torch-cuda", "ort-cpu", "ort-cuda", "ort-trt", "tensorrt")
RESULTS_DIR = Path(__file__).resolve().parent / "results"


def available_backends() -> list[tuple[str, str]]:
    """(backend, precision) pairs this machine can run."""
    found: list[tuple[str, str]] = []
    try:
        import torch

        found.append(("torch-cpu", "fp32"))
        if torch.cuda.is_available():
            found += [("torch-cuda", "fp32"), ("torch-cuda", "fp16")]
    except ImportError:
        pass
    import onnxruntime as ort

    providers = ort.get_available_providers()
    found += [("ort-cpu", "fp32"), ("ort-cpu", "fp16")]
    if "CUDAExecutionProvider" in providers:
        found += [("ort-cuda", "fp32"), ("ort-cuda", "fp16")]
    if "TensorrtExecutionProvider" in providers:
        found.append(("ort-trt", "fp16"))
    try:
        import tensorrt  # noqa: F401

        if any(b == "torch-cuda" or b == "ort-cuda" for b, _ in found):
            found.append(("tensorrt", "fp16"))
    except ImportError:
        pass
    return found


def prepare_models(weights: str | None, workdir: Path, need_engine: bool, engine: str | None) -> dict:
    """Export the FP32 and FP16 ONNX (cached by weights hash) and, if asked, the engine."""
    import torch

    # One thread here: idle OpenMP workers in this parent would spin and steal cores from
    # the worker processes that do the timing.
    torch.set_num_threads(1)
    from cminet.export.fp16 import convert_fp16
    from cminet.export.onnx_export import export_onnx
    from cminet.fusion import DEFAULT_WEIGHTS, load_pretrained

    weights_path = Path(weights) if weights else DEFAULT_WEIGHTS
    model = load_pretrained(weights_path)
    digest = hashlib.sha256(weights_path.read_bytes()).hexdigest()[:12]
    folder = workdir / digest
    folder.mkdir(parents=True, exist_ok=True)
    fp32, fp16 = folder / "cminet.onnx", folder / "cminet_fp16.onnx"
    if not fp32.is_file():
        export_onnx(model, fp32)
    if not fp16.is_file():
        convert_fp16(fp32, fp16)
    paths = {"weights": str(weights_path), "fp32": str(fp32), "fp16": str(fp16), "model": model}
    if need_engine:
        if engine:
            paths["engine"] = engine
        else:
            from cminet.export.tensorrt_build import build_engine

            paths["engine"] = str(build_engine(fp16, folder / "cminet_fp16.engine"))
    return paths


def model_file(backend: str, precision: str, paths: dict) -> str:
    if backend.startswith("torch"):
        return paths["weights"]
    if backend == "tensorrt":
        return paths["engine"]
    return paths[precision]


def write_reference(model, path: Path) -> None:
    """FP32 PyTorch outputs on the shipped sample pairs: the drift reference."""
    import torch

    from cminet.data import PAIR_TYPES, list_pairs
    from cminet.fusion import SAMPLES_DIR
    from cminet.runtime.imaging import prepare_pair, read_image

    arrays = {}
    refs = list_pairs(SAMPLES_DIR, PAIR_TYPES, "all")
    for i, ref in enumerate(refs):
        pair = prepare_pair(read_image(ref.mri_path), read_image(ref.other_path))
        a, b = pair.mri[None, None], pair.other[None, None]
        with torch.no_grad():
            arrays[f"ref_{i}"] = model(torch.from_numpy(a), torch.from_numpy(b)).numpy()
        arrays[f"mri_{i}"], arrays[f"other_{i}"] = a, b
    np.savez(path, count=len(refs), **arrays)


def run_worker(args: list[str], spec: dict, timeout: float) -> tuple[dict | list, float]:
    """Run a worker; return its RESULT and the wall time from spawn to exit."""
    started = time.time()
    proc = subprocess.run([sys.executable, "-m", "cminet.benchmarks.worker", *args, json.dumps(spec)],
                          capture_output=True, text=True, timeout=timeout)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode or not lines:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"{spec['backend']} {spec['precision']}: worker failed: {last}")
    return json.loads(lines[-1][len("RESULT "):]), started


def print_table(rows: list[dict]) -> None:
    head = (f"{'backend':<11}{'prec':<6}{'H×W':>10}{'N':>3} {'p50 ms':>8}{'p90 ms':>8}{'p99 ms':>8}{'mean':>8}"
            f"{'img/s':>8}{'GFLOP/s':>9}{'RSS MB':>8}{'GPU MB':>8}{'cold s':>7}{'file MB':>8}"
            f"{'max|Δ|':>9}{'PSNR':>7}{'ΔMI':>8}{'ΔQabf':>8}")
    click.echo(head)
    click.echo("-" * len(head))
    for r in rows:
        lat, d = r["latency_ms"], r.get("drift") or {}
        gpu = f"{r['gpu_mem_mb']:.0f}" if r.get("gpu_mem_mb") is not None else "-"
        cold = f"{r['cold_start_s']:.2f}" if r.get("cold_start_s") is not None else "-"
        drift = (f"{d['max_abs']:>9.1e}{d['psnr_db']:>7.1f}{d['mi_change']:>+8.4f}{d['qabf_change']:>+8.4f}"
                 if d else f"{'-':>9}{'-':>7}{'-':>8}{'-':>8}")
        click.echo(f"{r['backend']:<11}{r['precision']:<6}{r['height']:>5}×{r['width']:<4}{r['batch']:>3} "
                   f"{lat['p50']:>8.1f}{lat['p90']:>8.1f}{lat['p99']:>8.1f}{lat['mean']:>8.1f}"
                   f"{r['throughput_ips']:>8.1f}{r['achieved_gflops']:>9.1f}{r['peak_rss_mb']:>8.0f}{gpu:>8}"
                   f"{cold:>7}{r['file_mb']:>8.2f}{drift}")


def scaling_report(rows: list[dict], costs: dict) -> dict:
    """Per backend/precision/batch: fitted exponent of latency (and RSS) against pixels."""
    out = {}
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["backend"], r["precision"], r["batch"]), []).append(r)
    for (backend, precision, batch), rs in groups.items():
        if len({(r["height"], r["width"]) for r in rs}) < 2:
            continue
        pixels = [r["height"] * r["width"] for r in rs]
        out[f"{backend}/{precision}/b{batch}"] = {
            "latency_exponent": fit_exponent(pixels, [r["latency_ms"]["p50"] for r in rs]),
            "rss_exponent": fit_exponent(pixels, [r["peak_rss_mb"] for r in rs]),
        }
    out["attention_flop_share"] = {f"{h}x{w}": c["attention_share"] for (h, w), c in costs.items()}
    return out


def plot_latency(rows: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    groups: dict[str, list[dict]] = {}
    for r in rows:
        groups.setdefault(f"{r['backend']} {r['precision']} N={r['batch']}", []).append(r)
    for label, rs in sorted(groups.items()):
        rs = sorted(rs, key=lambda r: r["height"] * r["width"])
        ax.plot([r["height"] * r["width"] for r in rs], [r["latency_ms"]["p50"] for r in rs], "o-", label=label)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("pixels per image (H×W)")
    ax.set_ylabel("p50 latency per batch (ms)")
    ax.set_title("cminet-bench: latency vs image size")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--weights", type=click.Path(dir_okay=False), help="Checkpoint to benchmark; default: shipped.")
@click.option("--backends", default="auto", show_default=True,
              help=f"Comma-separated subset of {', '.join(ALL_BACKENDS)} (each at every precision it supports).")
@click.option("--sizes", default="256,512", show_default=True, help="Image sizes, e.g. 64,128,256,512,1024 or 256x320.")
@click.option("--batch", "batches", default="1,4", show_default=True, help="Batch sizes.")
@click.option("--warmup", default=5, show_default=True, help="Untimed runs before timing.")
@click.option("--iters", default=30, show_default=True, help="Timed runs per configuration (at least).")
@click.option("--quick", is_flag=True, help="256×256, batch 1, few iterations: a smoke run in under 3 minutes.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="Write results as JSON here.")
@click.option("--record", is_flag=True, help="Also write benchmarks/results/<machine>-<date>.json.")
@click.option("--plot", type=click.Path(dir_okay=False), help="Write a log-log latency-vs-size plot (PNG).")
@click.option("--profile", "profiles", multiple=True,
              help="Roofline ESTIMATE for a device profile (repeatable; 'all' for every one; 'list' to list).")
@click.option("--engine", type=click.Path(exists=True, dir_okay=False), help="Prebuilt .engine for 'tensorrt'.")
@click.option("--no-drift", is_flag=True, help="Skip the drift check against FP32 PyTorch.")
@click.option("--workdir", default=".cminet-bench", show_default=True, type=click.Path(file_okay=False),
              help="Cache for exported models and the drift reference.")
@click.option("--debug", is_flag=True, help="Show tracebacks.")
@friendly_errors
def main(weights, backends, sizes, batches, warmup, iters, quick, json_path, record, plot, profiles, engine,
         no_drift, workdir, debug) -> None:
    """Measure CMINet on every backend present: latency p50/p90/p99, throughput, peak RSS,
    GPU memory, cold start, file size and drift against FP32 PyTorch.

    \b
    Examples:
      cminet-bench --quick                                 # smoke run, prints the table
      cminet-bench --sizes 64,128,256,512,1024 --batch 1 --plot scaling.png
      cminet-bench --profile orin-nano-8gb --profile rtx-3090   # adds roofline estimates
    """
    all_profiles = load_profiles()
    if "list" in profiles:
        for key, p in all_profiles.items():
            click.echo(f"{key:<15} {p.name}  (FP32 {p.fp32_tflops} / FP16 {p.fp16_tflops} TFLOPS, "
                       f"{p.bandwidth_gbs} GB/s)")
        return
    chosen_profiles = list(all_profiles) if "all" in profiles else list(profiles)
    unknown = [p for p in chosen_profiles if p not in all_profiles]
    if unknown:
        raise click.BadParameter(f"unknown profile(s) {', '.join(unknown)}; see --profile list", param_hint="--profile")
    if quick:
        sizes, batches, warmup, iters = "256", "1", 2, 10
    size_list = [parse_size(s) for s in sizes.split(",") if s.strip()]
    batch_list = [int(b) for b in batches.split(",") if b.strip()]

    present = available_backends()
    if backends != "auto":
        wanted = [b.strip() for b in backends.split(",") if b.strip()]
        bad = [b for b in wanted if b not in ALL_BACKENDS]
        if bad:
            raise click.BadParameter(f"unknown backend(s) {', '.join(bad)}", param_hint="--backends")
        missing = [b for b in wanted if b not in {p for p, _ in present}]
        if missing:
            raise CMINetError(f"backend(s) not available on this machine: {', '.join(missing)}")
        present = [(b, p) for b, p in present if b in wanted]

    workdir = Path(workdir)
    click.echo("measuring the machine (matmul peak) ...")
    machine = describe()
    click.echo(f"machine: {machine['cpu']} ({machine['cpu_cores']} cores), GPU: {machine['gpu'] or 'none'}, "
               f"FP32 matmul peak {machine['matmul_peak_gflops']:.0f} GFLOP/s")
    click.echo("exporting models ...")
    paths = prepare_models(weights, workdir, any(b == "tensorrt" for b, _ in present), engine)
    from .cost import model_cost

    costs = {(h, w): model_cost(paths["model"], h, w) for h, w in size_list}
    reference = None
    if not no_drift:
        reference = workdir / "drift_reference.npz"
        write_reference(paths["model"], reference)

    from cminet.fusion import SAMPLES_DIR

    sample_mri = SAMPLES_DIR / "pet_mri/mri/41066.png"
    sample_other = SAMPLES_DIR / "pet_mri/other/41066.png"
    threads = os.cpu_count()
    rows: list[dict] = []
    skipped: list[str] = []
    bar = tqdm(present, desc="backends", unit="backend")
    for backend, precision in bar:
        bar.set_postfix_str(f"{backend} {precision}")
        spec = {"backend": backend, "precision": precision, "model": model_file(backend, precision, paths),
                "sizes": size_list, "batches": batch_list, "warmup": warmup, "iters": iters, "threads": threads,
                "reference": str(reference) if reference else None,
                "sample_mri": str(sample_mri), "sample_other": str(sample_other)}
        try:
            measured, _ = run_worker([], spec, timeout=3600)
            cold, spawned = run_worker(["--cold"], spec, timeout=600)
        except (RuntimeError, subprocess.TimeoutExpired) as exc:
            skipped.append(str(exc))
            continue
        size_mb = Path(spec["model"]).stat().st_size / 2**20
        for row in measured:
            cost = costs[(row["height"], row["width"])]
            row["cold_start_s"] = cold["finished_at"] - spawned
            row["file_mb"] = size_mb
            row["parameters"] = cost["parameters"]
            row["flops"] = cost["flops"] * row["batch"]
            row["achieved_gflops"] = row["flops"] / (row["latency_ms"]["p50"] * 1e6)
            rows.append(row)
    bar.close()
    if not rows:
        raise CMINetError("no backend could be measured: " + "; ".join(skipped))

    click.echo("")
    print_table(rows)
    for message in skipped:
        click.echo(f"skipped: {message}", err=True)
    click.echo(f"\nGFLOP/s = FlopCounterMode FLOPs / p50; this machine's FP32 matmul peak is "
               f"{machine['matmul_peak_gflops']:.0f} GFLOP/s.")
    scaling = scaling_report(rows, costs)
    for key, fit in scaling.items():
        if key != "attention_flop_share":
            click.echo(f"scaling {key}: latency ∝ pixels^{fit['latency_exponent']:.2f}, "
                       f"RSS ∝ pixels^{fit['rss_exponent']:.2f}")
    shares = ", ".join(f"{k}: {v:.1%}" for k, v in scaling["attention_flop_share"].items())
    click.echo(f"attention share of FLOPs: {shares}")

    breakdown = {}
    if any(r["backend"] == "ort-cpu" and r["precision"] == "fp32" for r in rows):
        from .ort_profile import op_breakdown

        h, w = size_list[0]
        breakdown = op_breakdown(paths["fp32"], h, w, threads=threads)
        top = ", ".join(f"{op} {share:.0%}" for op, share in list(breakdown.items())[:6])
        click.echo(f"ort-cpu fp32 time by op type at {h}×{w} (ORT profiler): {top}")

    estimates = []
    for key in chosen_profiles:
        for (h, w), cost in costs.items():
            for precision, nbytes in (("fp16", 2), ("fp32", 4)):
                est = estimate(all_profiles[key], cost["flops"], cost["bytes_moved"] * nbytes / 4, precision)
                estimates.append({"profile": key, "height": h, "width": w, "batch": 1, **est})
    if estimates:
        click.echo("\nESTIMATES (roofline lower bounds from spec-sheet peaks; not measurements):")
        for e in estimates:
            click.echo(f"  {e['device']:<42} {e['height']}×{e['width']} {e['precision']}: "
                       f"≥ {e['latency_ms']:.2f} ms ({e['bound']}-bound, intensity {e['arithmetic_intensity']:.1f} "
                       f"FLOP/B, ridge {e['ridge_point']:.1f})")

    report = {"machine": machine, "model": {k: v for k, v in paths.items() if k != "model"},
              "costs": [{"height": h, "width": w, **c} for (h, w), c in costs.items()],
              "results": rows, "scaling": scaling, "ort_cpu_op_time_share": breakdown, "estimates": estimates,
              "skipped": skipped}
    targets = [Path(json_path)] if json_path else []
    if record:
        targets.append(RESULTS_DIR / f"{machine_slug(machine)}-{machine['date'][:10]}.json")
    for target in targets:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(report, indent=2) + "\n")
        click.echo(f"wrote {target}")
    if plot:
        plot_latency(rows, plot)
        click.echo(f"wrote {plot}")


if __name__ == "__main__":
    main()
