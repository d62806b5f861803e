"""``cminet-bench``: a thin printer around :func:`cminet.benchmarks.bench.run_benchmark`.

Roofline numbers for other devices (``--profile``) are printed apart from the measurements
and labelled as estimates.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from cminet.cli import debug_option, friendly_errors
from cminet.runtime.contract import BACKENDS, ContractError, parse_size

from .bench import run_benchmark
from .machine import machine_slug
from .roofline import estimate, load_profiles

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def _fmt(value, spec: str, width: int) -> str:
    return f"{value:{spec}}".rjust(width) if value is not None else "-".rjust(width)


def print_table(rows: list[dict]) -> None:
    head = (f"{'backend':<11}{'prec':<6}{'H×W':>10}{'N':>3} {'p50 ms':>8}{'p90 ms':>8}{'p99 ms':>8}{'mean':>8}"
            f"{'img/s':>8}{'GFLOP/s':>9}{'RSS MB':>8}{'GPU MB':>8}{'cold s':>7}{'file MB':>8}"
            f"{'max|Δ|':>9}{'PSNR':>7}{'ΔMI':>8}{'ΔQabf':>8}")
    click.echo(head)
    click.echo("-" * len(head))
    for r in rows:
        lat, d = r["latency_ms"], r.get("drift") or {}
        metric = d.get("metric_change") or {}
        click.echo(f"{r['backend']:<11}{r['precision']:<6}{r['height']:>5}×{r['width']:<4}{r['batch']:>3} "
                   f"{lat['p50']:>8.1f}{lat['p90']:>8.1f}{lat['p99']:>8.1f}{lat['mean']:>8.1f}"
                   f"{r['throughput_ips']:>8.1f}{_fmt(r.get('achieved_gflops'), '.1f', 9)}{r['peak_rss_mb']:>8.0f}"
                   f"{_fmt(r.get('gpu_mem_mb'), '.0f', 8)}{_fmt(r.get('cold_start_s'), '.2f', 7)}{r['file_mb']:>8.2f}"
                   f"{_fmt(d.get('max_abs'), '.1e', 9)}{_fmt(d.get('psnr_db'), '.1f', 7)}"
                   f"{_fmt(metric.get('MI'), '+.4f', 8)}{_fmt(metric.get('Qabf'), '+.4f', 8)}")


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


def roofline_estimates(profiles: list[str], costs: list[dict]) -> list[dict]:
    known = load_profiles()
    out = []
    for key in profiles:
        for c in costs:
            for precision, nbytes in (("fp16", 2), ("fp32", 4)):
                est = estimate(known[key], c["flops"], c["bytes_moved"] * nbytes / 4, precision)
                out.append({"profile": key, "height": c["height"], "width": c["width"], "batch": 1, **est})
    return out


def _int_list(text: str, option: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(f"{text!r}: expected comma-separated whole numbers", param_hint=option) from None
    if not values or min(values) < 1:
        raise click.BadParameter(f"{text!r}: expected whole numbers ≥ 1", param_hint=option)
    return values


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--backends", default="auto", show_default=True,
              help=f"Comma-separated subset of {', '.join(BACKENDS)} (each at every precision it supports).")
@click.option("--model", "models", multiple=True, type=click.Path(dir_okay=False),
              help="Your own .onnx (FP32 or FP16) or .engine instead of the shipped ONNX (repeatable).")
@click.option("--weights", type=click.Path(dir_okay=False),
              help="Checkpoint to export and benchmark (needs torch); default: the shipped ONNX.")
@click.option("--sizes", default="256,512", show_default=True, help="Image sizes, e.g. 64,128,256,512,1024 or 256x320.")
@click.option("--batch", "batches", default="1,4", show_default=True, help="Batch sizes.")
@click.option("--warmup", default=5, show_default=True, type=click.IntRange(min=0), help="Untimed runs before timing.")
@click.option("--iters", default=30, show_default=True, type=click.IntRange(min=1),
              help="Timed runs per configuration.")
@click.option("--quick", is_flag=True, help="256×256, batch 1, few iterations: a smoke run in under 3 minutes.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="Write results as JSON here.")
@click.option("--record", is_flag=True, help="Also write benchmarks/results/<machine>-<date>.json.")
@click.option("--plot", type=click.Path(dir_okay=False), help="Write a log-log latency-vs-size plot (PNG).")
@click.option("--profile", "profiles", multiple=True,
              help="Roofline ESTIMATE for a device profile (repeatable; 'all' for every one; 'list' to list).")
@click.option("--profile-ops", is_flag=True, help="Where ONNX Runtime CPU spends its time, by op type.")
@click.option("--no-drift", is_flag=True, help="Skip the drift check against FP32 PyTorch outputs.")
@click.option("--workdir", default=".cminet-bench", show_default=True, type=click.Path(file_okay=False),
              help="Cache for models exported from --weights and built engines.")
@debug_option
@friendly_errors
def main(backends, models, weights, sizes, batches, warmup, iters, quick, json_path, record, plot, profiles,
         profile_ops, no_drift, workdir, debug) -> None:
    """Measure CMINet on every backend present: latency p50/p90/p99, throughput, peak RSS,
    GPU memory, cold start, file size and drift against FP32 PyTorch. Works without torch
    (the shipped ONNX and reference outputs).

    \b
    Examples:
      cminet-bench --quick                                 # smoke run, prints the table
      cminet-bench --model cminet_fp16.engine --backends tensorrt   # a device's own engine
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
    try:
        size_list = [parse_size(s) for s in sizes.split(",") if s.strip()]
    except ContractError as exc:
        raise click.BadParameter(str(exc), param_hint="--sizes") from None
    if not size_list:
        raise click.BadParameter(f"{sizes!r}: no size given", param_hint="--sizes")
    wanted = None if backends == "auto" else [b.strip() for b in backends.split(",") if b.strip()]
    report = run_benchmark(wanted, size_list, _int_list(batches, "--batch"), warmup, iters, weights, list(models),
                           drift=not no_drift, workdir=workdir, op_profile=profile_ops,
                           progress=lambda message: click.echo(f"• {message} ...", err=True))
    machine = report["machine"]
    click.echo(f"machine: {machine['cpu']} ({machine['cpu_cores']} cores), GPU: {machine['gpu'] or 'none'}, "
               f"FP32 matmul peak {machine['matmul_peak_gflops']:.0f} GFLOP/s\n")
    print_table(report["results"])
    for message in report["skipped"]:
        click.echo(f"skipped: {message}", err=True)
    if report["costs"]:
        click.echo(f"\nGFLOP/s = FlopCounterMode FLOPs / p50; this machine's FP32 matmul peak is "
                   f"{machine['matmul_peak_gflops']:.0f} GFLOP/s.")
    else:
        click.echo("\nGFLOP/s needs torch to count FLOPs (pip install 'cminet[train]'); left out.")
    for key, note in report["drift_reference"].items():
        click.echo(f"drift {key}: against {note}")
    for key, fit in report["scaling"].items():
        click.echo(f"scaling {key}: latency ∝ pixels^{fit['latency_exponent']:.2f}, "
                   f"RSS ∝ pixels^{fit['rss_exponent']:.2f}")
    if report["ort_cpu_op_time_share"]:
        top = ", ".join(f"{op} {share:.0%}" for op, share in list(report["ort_cpu_op_time_share"].items())[:6])
        click.echo(f"ort-cpu fp32 time by op type (ORT profiler): {top}")
    estimates = roofline_estimates(chosen_profiles, report["costs"])
    if chosen_profiles and not report["costs"]:
        click.echo("roofline estimates need the FLOP count, which needs torch; left out.", err=True)
    if estimates:
        click.echo("\nESTIMATES (roofline lower bounds from spec-sheet peaks; not measurements):")
        for e in estimates:
            click.echo(f"  {e['device']:<42} {e['height']}×{e['width']} {e['precision']}: "
                       f"≥ {e['latency_ms']:.2f} ms ({e['bound']}-bound, intensity {e['arithmetic_intensity']:.1f} "
                       f"FLOP/B, ridge {e['ridge_point']:.1f})")
    report["estimates"] = estimates
    targets = [Path(json_path)] if json_path else []
    if record:
        targets.append(RESULTS_DIR / f"{machine_slug(machine)}-{machine['date'][:10]}.json")
    for target in targets:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(report, indent=2) + "\n")
        click.echo(f"wrote {target}")
    if plot:
        plot_latency(report["results"], plot)
        click.echo(f"wrote {plot}")


if __name__ == "__main__":
    main()
