"""``cminet-bench``: a thin printer around :func:`cminet.benchmarks.bench.run_benchmark`.

Roofline numbers for other devices (``--profile``) are printed apart from the measurements
and labelled as estimates.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from cminet.runtime.command_line import CONTEXT, BoundaryCommand, require
from cminet.runtime.contract import BACKENDS, ContractError, parse_size
from cminet.runtime.files import atomic_output, check_output, write_text_atomic

from .bench import run_benchmark
from .machine import machine_slug
from .roofline import estimate, load_profiles

RESULTS_DIR = Path(__file__).resolve().parent / "results"
PLOT_SUFFIXES = (".png", ".svg", ".pdf")


def _fmt(value, spec: str, width: int) -> str:
    return f"{value:{spec}}".rjust(width) if value is not None else "-".rjust(width)


def print_table(rows: list[dict]) -> None:
    head = (f"{'backend':<11}{'prec':<6}{'H×W':>10}{'N':>3} {'p50 ms':>8}{'p90 ms':>8}{'p99 ms':>8}{'mean':>8}"
            f"{'img/s':>8}{'GFLOP/s':>9}{'%peak':>6}{'RSS MB':>8}{'GPU MB':>8}{'cold s':>7}{'file MB':>8}"
            f"{'max|Δ|':>9}{'PSNR':>7}{'ΔMI':>8}{'ΔQabf':>8}")
    click.echo(head)
    click.echo("-" * len(head))
    for r in rows:
        lat, d = r["latency_ms"], r.get("drift") or {}
        metric = d.get("metric_change") or {}
        name = r["backend"] if r.get("mode") in (None, "eager") else f"{r['backend']}/{r['mode']}"  # graph, compile
        click.echo(f"{name:<11}{r['precision']:<6}{r['height']:>5}×{r['width']:<4}{r['batch']:>3} "
                   f"{lat['p50']:>8.1f}{lat['p90']:>8.1f}{lat['p99']:>8.1f}{lat['mean']:>8.1f}"
                   f"{r['throughput_ips']:>8.1f}{_fmt(r.get('achieved_gflops'), '.1f', 9)}"
                   f"{_fmt(100 * r['peak_share'] if r.get('peak_share') else None, '.0f', 6)}{r['peak_rss_mb']:>8.0f}"
                   f"{_fmt(r.get('gpu_mem_mb'), '.0f', 8)}{_fmt(r.get('cold_start_s'), '.2f', 7)}{r['file_mb']:>8.2f}"
                   f"{_fmt(d.get('max_abs'), '.1e', 9)}{_fmt(d.get('psnr_db'), '.1f', 7)}"
                   f"{_fmt(metric.get('MI'), '+.4f', 8)}{_fmt(metric.get('Qabf'), '+.4f', 8)}")


def print_goal(goal: dict | None) -> None:
    if goal is None:
        click.echo("sgemm goal: needs a 256×256 batch-1 CPU runtime row and the FLOP count; not checked")
        return
    click.echo(f"sgemm goal: fastest CPU runtime at 256², batch 1 = {goal['backend']} {goal['precision']} "
               f"{goal['p50_ms']:.1f} ms; sgemm at the measured peak needs {goal['budget_ms']:.1f} ms for 2 × the "
               f"model's FLOPs → ratio {goal['ratio']:.2f} {'PASS' if goal['passed'] else 'FAIL'} (≤ 1 passes)")


def print_interleaved(result: dict, machine: dict) -> None:
    """The interleaved latency-vs-sgemm-vs-IFCNN table (:mod:`cminet.benchmarks.versus_peak`)."""
    click.echo(f"\nInterleaved in one process ({result['blocks']} blocks × {result['per_block']} runs per method, "
               f"alternating order; {result['threads']} threads) on {machine['cpu']} ({machine['cpu_cores']} cores):")
    head = (f"{'H×W':>10} {'method':<20}{'p50 ms':>8}{'blocks (min-max)':>19}{'GFLOP':>7}{'GFLOP/s':>9}"
            f"{'%sgemm':>8}{'vs IFCNN':>9}")
    click.echo(head)
    click.echo("-" * len(head))
    for size in result["sizes"]:
        for r in size["rows"]:
            vs = f"{r['vs_ifcnn']:.2f}×" if r["vs_ifcnn"] else "-"
            click.echo(f"{size['height']:>5}×{size['width']:<4} {r['method']:<20}{r['p50_ms']:>8.1f}"
                       f"{r['block_min_ms']:>10.1f}-{r['block_max_ms']:<8.1f}{r['gflops']:>7.2f}"
                       f"{r['effective_gflops']:>9.1f}{100 * r['sgemm_share']:>7.0f}%{vs:>9}")
        click.echo(f"{'':>11}sgemm {result['sgemm_n']}³ FP32 (numpy) between the blocks: {size['sgemm_gflops']:.0f} "
                   f"GFLOP/s (blocks {size['sgemm_min_gflops']:.0f}-{size['sgemm_max_gflops']:.0f})")
        if (size["height"], size["width"]) == (256, 256):
            blocks = size["goal_ratio_blocks"]
            fastest = next(r for r in size["rows"] if r["method"] == size["fastest"])
            click.echo(f"{'':>11}goal: {size['fastest']} {fastest['p50_ms']:.1f} ms "
                       f"vs sgemm time for 2 × {size['rows'][0]['gflops']:.2f} GFLOP {size['goal_budget_ms']:.1f} ms → "
                       f"ratio {size['goal_ratio']:.2f} (blocks {min(blocks):.2f}-{max(blocks):.2f}) "
                       f"{'PASS' if size['goal_ratio'] <= 1 else 'FAIL'}")


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
    with atomic_output(path) as tmp:
        fig.savefig(tmp, dpi=120, format=Path(path).suffix[1:].lower())
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


@click.command(cls=BoundaryCommand, context_settings=CONTEXT)
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
@click.option("--profile-ops", is_flag=True,
              help="Where the CPU time goes, by op type (ONNX Runtime's profiler; OpenVINO's counters if installed).")
@click.option("--interleaved", is_flag=True,
              help="Also time ort-cpu (with and without spinning threads), ov-cpu, IFCNN (a timing reference) and "
                   "numpy sgemm interleaved in one process at each size: latency vs sgemm and IFCNN "
                   "(needs cminet[train]).")
@click.option("--blocks", default=6, show_default=True, type=click.IntRange(min=2),
              help="--interleaved: alternating blocks per method (each one warm-up + --iters/--blocks timed runs).")
@click.option("--no-drift", is_flag=True, help="Skip the drift check against FP32 PyTorch outputs.")
@click.option("--no-cuda-graphs", is_flag=True, help="torch-cuda in eager mode instead of CUDA-graph replay.")
@click.option("--compile", "compile_", is_flag=True,
              help="torch backends through torch.compile (compile time shows as cold start).")
@click.option("--volume", nargs=2, type=click.Path(exists=True), metavar="MRI OTHER",
              help="Instead: time fuse-volume on these volumes against the network on their whole slices "
                   "(with and without skipping air).")
@click.option("--modality", type=click.Choice(["ct", "pet", "spect"]), help="With --volume: what OTHER is.")
@click.option("--threads", type=click.IntRange(min=1), help="With --volume: CPU threads (default: all cores).")
@click.option("--workdir", default=".cminet-bench", show_default=True, type=click.Path(file_okay=False),
              help="Cache for models exported from --weights and built engines.")
def main(backends, models, weights, sizes, batches, warmup, iters, quick, json_path, record, plot, profiles,
         profile_ops, interleaved, blocks, no_drift, no_cuda_graphs, compile_, volume, modality, threads,
         workdir) -> None:
    """Measure CMINet on every backend present: latency p50/p90/p99, throughput, peak RSS,
    GPU memory, cold start, file size and drift against FP32 PyTorch. Works without torch
    (the shipped ONNX and reference outputs).

    \b
    Examples:
      cminet-bench --quick                                 # smoke run, prints the table
      cminet-bench --model cminet_fp16.engine --backends tensorrt   # a device's own engine
      cminet-bench --sizes 64,128,256,512,1024 --batch 1 --plot scaling.png
      cminet-bench --profile orin-nano-8gb --profile rtx-3090   # adds roofline estimates
      cminet-bench --sizes 256,512,1024 --batch 1 --interleaved --profile-ops   # CPU speed vs sgemm, IFCNN
      cminet-bench --volume t1.nii.gz pet.nii.gz --modality pet --record   # fuse-volume vs the network
    """
    if volume:
        _volume_benchmark(volume, modality, backends, threads, iters, json_path, record)
        return
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
    unknown = [b for b in wanted or [] if b not in BACKENDS]
    if unknown or wanted == []:
        raise click.BadParameter(f"{backends!r}: expected auto or backends from {', '.join(BACKENDS)}",
                                 param_hint="--backends")
    if weights or any(BACKENDS[b].runs == "weights" for b in wanted or []):
        require("torch", "cminet-bench --weights / --backends torch-*")
    if interleaved:
        require("onnxslim", "cminet-bench --interleaved (counts FLOPs from the ONNX graph)")
    if json_path:
        check_output(json_path)
    if plot:
        check_output(plot)
        if Path(plot).suffix.lower() not in PLOT_SUFFIXES:
            raise click.BadParameter(f"{plot}: expected a {', '.join(PLOT_SUFFIXES)} file", param_hint="--plot")
        require("matplotlib", "cminet-bench --plot")
    report = run_benchmark(wanted, size_list, _int_list(batches, "--batch"), warmup, iters, weights, list(models),
                           drift=not no_drift, workdir=workdir, op_profile=profile_ops,
                           backend_options={**({"cuda_graphs": False} if no_cuda_graphs else {}),
                                            **({"compile": True} if compile_ else {})},
                           progress=lambda message: click.echo(f"• {message} ...", err=True))
    machine = report["machine"]
    click.echo(f"machine: {machine['cpu']} ({machine['cpu_cores']} cores), GPU: {machine['gpu'] or 'none'}, "
               f"FP32 matmul peak {machine['matmul_peak_gflops']:.0f} GFLOP/s\n")
    print_table(report["results"])
    for message in report["skipped"]:
        click.echo(f"skipped: {message}", err=True)
    if any(r.get("achieved_gflops") for r in report["results"]):
        click.echo(f"\nGFLOP/s = FLOPs of Conv/MatMul counted from the ONNX graph at each size / p50; %peak = that / "
                   f"this machine's FP32 matmul peak, {machine['matmul_peak_gflops']:.0f} GFLOP/s (numpy, this run).")
    else:
        click.echo("\nGFLOP/s needs onnx + onnxslim (or torch) to count FLOPs (pip install 'cminet[train]'); left out.")
    print_goal(report["goal"])
    for key, note in report["drift_reference"].items():
        click.echo(f"drift {key}: against {note}")
    for key, fit in report["scaling"].items():
        click.echo(f"scaling {key}: latency ∝ pixels^{fit['latency_exponent']:.2f}, "
                   f"RSS ∝ pixels^{fit['rss_exponent']:.2f}")
    for backend, shares in report["op_time_share"].items():
        source = "ONNX Runtime profiler" if backend.startswith("ort") else "OpenVINO performance counters"
        top = ", ".join(f"{op} {share:.0%}" for op, share in list(shares.items())[:8])
        click.echo(f"{backend} fp32 time by op type ({source}): {top}")
    if interleaved:
        from .versus_peak import run_versus_peak

        click.echo("• interleaved run (ort-cpu before/after, ov-cpu, IFCNN, sgemm) ...", err=True)
        report["interleaved"] = run_versus_peak(report["models"]["fp32"], size_list, Path(workdir),
                                                blocks=blocks, per_block=max(1, iters // blocks))
        print_interleaved(report["interleaved"], machine)
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
    _write_report(report, json_path, record)
    if plot:
        plot_latency(report["results"], plot)
        click.echo(f"wrote {plot}")


def _volume_benchmark(volume, modality, backends, threads, iters, json_path, record) -> None:
    from .machine import describe
    from .volume_speed import print_volume_speed, run_volume_speed

    if "," in backends:
        raise click.BadParameter("--volume times one backend; name one (or auto)", param_hint="--backends")
    if json_path:
        check_output(json_path)
    rounds = max(1, min(iters, 30) // 10)  # --iters 30 (the default): three rounds
    result = run_volume_speed(*volume, modality=modality, backend=backends, threads=threads, rounds=rounds)
    machine = describe()
    report = {"kind": "volume", "machine": machine, "volume": result}
    click.echo(f"machine: {machine['cpu']} ({machine['cpu_cores']} cores), GPU: {machine['gpu'] or 'none'}")
    print_volume_speed(result, click.echo)
    _write_report(report, json_path, record, suffix="-volume")


def _write_report(report: dict, json_path: str | None, record: bool, suffix: str = "") -> None:
    """The report as JSON to ``--json`` and (``--record``) to benchmarks/results/<machine>-<date><suffix>.json."""
    machine = report["machine"]
    targets = [Path(json_path)] if json_path else []
    if record:
        targets.append(RESULTS_DIR / f"{machine_slug(machine)}-{machine['date'][:10]}{suffix}.json")
    for target in targets:
        write_text_atomic(target, json.dumps(report, indent=2) + "\n")
        click.echo(f"wrote {target}")


if __name__ == "__main__":
    main()
