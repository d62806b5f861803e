"""Render recorded benchmark JSON files (``cminet-bench --record`` and ``make gpu-check``)
as the performance tables in docs/.

    python -m cminet.benchmarks.report benchmarks/results/*.json            # print markdown
    python -m cminet.benchmarks.report --readme docs/benchmarks.md benchmarks/results/*.json

With ``--readme`` the table replaces the text between ``<!-- bench:start -->`` and
``<!-- bench:end -->`` so the page always shows what the recorded files hold.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

START, END = "<!-- bench:start -->", "<!-- bench:end -->"


def _num(value, fmt: str) -> str:
    return format(value, fmt) if isinstance(value, int | float) else "–"


def render(paths: list[Path]) -> str:
    lines = []
    for path in sorted(paths):
        report = json.loads(path.read_text())
        lines += render_gpu_check(path, report) if report.get("kind") == "gpu-check" else render_bench(path, report)
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def render_bench(path: Path, report: dict) -> list[str]:
    """A ``cminet-bench --record`` file: one row per backend, precision, size and batch."""
    m = report["machine"]
    where = m.get("gpu") or f"{m['cpu']}, {m['cpu_cores']} cores"
    lines = [f"**{where}** (`{path.name}`, commit {m.get('git_commit') or '?'}; "
             f"FP32 matmul peak {m.get('matmul_peak_gflops', 0):.0f} GFLOP/s)", "",
             "| backend | precision | H×W | batch | p50 ms | p99 ms | img/s | GFLOP/s | peak RSS MB | GPU MB "
             "| cold start s | max abs drift | PSNR dB |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in report["results"]:
        d = r.get("drift") or {}
        lines.append(
            f"| {r['backend']} | {r['precision']} | {r['height']}×{r['width']} | {r['batch']} "
            f"| {r['latency_ms']['p50']:.1f} | {r['latency_ms']['p99']:.1f} | {r['throughput_ips']:.1f} "
            f"| {_num(r.get('achieved_gflops'), '.1f')} | {_num(r.get('peak_rss_mb'), '.0f')} "
            f"| {_num(r.get('gpu_mem_mb'), '.0f')} | {_num(r.get('cold_start_s'), '.2f')} "
            f"| {d.get('max_abs', float('nan')):.1e} | {d.get('psnr_db', float('nan')):.1f} |")
    return lines


def render_gpu_check(path: Path, report: dict) -> list[str]:
    """A ``make gpu-check`` file: latency rows, then the checks, then what was skipped."""
    m = report["machine"]
    lines = [f"**{m.get('gpu') or 'GPU'}** (`{path.name}`, `make gpu-check`, commit {m.get('git_commit') or '?'}, "
             f"{report.get('seconds', 0):.0f} s)", "",
             "| backend | precision | H×W | batch | p50 ms | p99 ms | img/s | GPU MB | timing |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in report["results"]:
        lines.append(f"| {r['backend']} | {r['precision']} | {r['height']}×{r['width']} | {r['batch']} "
                     f"| {r['latency_ms']['p50']:.2f} | {r['latency_ms']['p99']:.2f} | {r['throughput_ips']:.1f} "
                     f"| {_num(r.get('gpu_mem_mb'), '.0f')} | {r.get('timing', '')} |")
    lines.append("")
    for name, result in report.get("steps", {}).items():
        facts = ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in result.items()
                          if not isinstance(v, dict | list) and k != "message")
        lines.append(f"- ✓ {name}: {facts}")
    lines += [f"- ✗ {f['step']}: {f['error']}" for f in report.get("failed", [])]
    lines += [f"- skipped {s['step']}: {s['reason']}" for s in report.get("skipped", [])]
    return lines


def update_readme(readme: Path, table: str) -> None:
    text = readme.read_text()
    if START not in text or END not in text:
        raise SystemExit(f"{readme}: no {START} ... {END} block to replace")
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    readme.write_text(f"{head}{START}\n{table}{END}{tail}")


def main(argv: list[str]) -> int:
    readme = None
    if argv[:1] == ["--readme"]:
        readme, argv = Path(argv[1]), argv[2:]
    if not argv:
        print(__doc__)
        return 2
    table = render([Path(a) for a in argv])
    if readme:
        update_readme(readme, table)
        print(f"updated {readme}")
    else:
        print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
