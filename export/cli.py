"""``cminet-export``: the shipped (or ``--weights``) model → verified ONNX → FP16 ONNX →
strongly typed FP16 TensorRT engine, each step checking itself."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import click

from cminet.cli import debug_option, friendly_errors
from cminet.runtime.contract import REFERENCE_FILE, SHIPPED_ONNX, validate_profile
from cminet.runtime.errors import CMINetError


def step(message: str):
    click.echo(f"• {message} ...", nl=False)
    return time.monotonic()


def done(started: float, extra: str = "") -> None:
    click.echo(f" done in {time.monotonic() - started:.1f}s{extra}")


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--weights", type=click.Path(dir_okay=False), help="Checkpoint (.safetensors); default: the shipped one.")
@click.option("--out", default="exported", show_default=True, type=click.Path(file_okay=False),
              help="Folder for cminet.onnx, cminet_fp16.onnx, reference_outputs.npz, the engine and "
                   "export_report.json.")
@click.option("--opset", default=17, show_default=True, type=click.IntRange(17, 23),
              help="ONNX opset. 17 uses the TorchScript exporter, 18+ the dynamo exporter (see docs).")
@click.option("--fp16", is_flag=True, help="Also write cminet_fp16.onnx (FP16 weights and compute).")
@click.option("--io-dtype", default="fp32", show_default=True, type=click.Choice(["fp32", "fp16"]),
              help="Input/output dtype of the FP16 model.")
@click.option("--engine", "engine_mode", default="auto", show_default=True, type=click.Choice(["auto", "yes", "no"]),
              help="Build cminet_fp16.engine: auto = when TensorRT and a GPU are present; yes = fail if not.")
@click.option("--min-shape", default="1x16x16", show_default=True, help="Engine profile minimum N×H×W.")
@click.option("--opt-shape", default="1x256x256", show_default=True, help="Engine profile optimum N×H×W.")
@click.option("--max-shape", default="4x1024x1024", show_default=True,
              help="Engine profile maximum N×H×W (sized for an 8 GB Jetson).")
@click.option("--workspace", default=1024, show_default=True, type=click.IntRange(min=16), help="Workspace MiB.")
@click.option("--timing-cache", type=click.Path(dir_okay=False), help="Timing cache file, reused across builds.")
@click.option("--slim/--no-slim", default=True, show_default=True,
              help="Simplify both graphs with onnxslim (fold constants, drop redundant Casts).")
@click.option("--no-verify", is_flag=True, help="Skip the self-verification (not recommended).")
@click.option("--triton", "triton_dir", type=click.Path(file_okay=False),
              help="Also write a Triton model repository here: cminet_onnx (FP32 ONNX) and, where an engine "
                   "was built, cminet_trt; max_batch_size from --max-shape's N (needs cminet[triton]).")
@debug_option
@friendly_errors
def main(weights, out, opset, fp16, io_dtype, engine_mode, min_shape, opt_shape, max_shape, workspace,
         timing_cache, slim, no_verify, triton_dir, debug) -> None:
    """Export CMINet for deployment and verify every file written.

    \b
    Typical use (the FP16 engine is built only where TensorRT and a GPU are present):
      cminet-export --fp16
    With a Triton Inference Server model repository (serve it with tritonserver):
      cminet-export --fp16 --triton triton/
    On the Jetson itself, after copying exported/cminet_fp16.onnx there:
      cminet-export --fp16 --engine yes --max-shape 1x1024x1024 --timing-cache trt.cache
    """
    import hashlib

    from cminet.fusion import DEFAULT_WEIGHTS, load_pretrained

    from .fp16 import convert_fp16
    from .onnx_export import export_onnx
    from .tensorrt_build import build_engine, tensorrt_status
    from .verify import as_json, verify_export, write_reference

    shapes = validate_profile(min_shape, opt_shape, max_shape)
    if triton_dir:  # fail before the export, not after it, when the schema is missing
        from .triton import schema

        schema()
    want_engine = engine_mode == "yes" or (engine_mode == "auto" and fp16)
    out = Path(out)
    model = load_pretrained(weights)
    weights_sha256 = hashlib.sha256(Path(weights or DEFAULT_WEIGHTS).read_bytes()).hexdigest()

    t = step(f"exporting FP32 ONNX (opset {opset})")
    fp32_path = export_onnx(model, out / SHIPPED_ONNX["fp32"], opset=opset, simplify=slim,
                            weights_sha256=weights_sha256)
    done(t, f" → {fp32_path} ({fp32_path.stat().st_size / 1e6:.2f} MB)")
    fp16_path = None
    if fp16 or engine_mode == "yes":
        t = step(f"converting to FP16 ({io_dtype.upper()} I/O)")
        fp16_path = convert_fp16(fp32_path, out / SHIPPED_ONNX["fp16"], io_dtype=io_dtype, simplify=slim)
        done(t, f" → {fp16_path} ({fp16_path.stat().st_size / 1e6:.2f} MB)")
    t = step("writing the drift reference (FP32 PyTorch on the shipped samples)")
    reference = write_reference(model, out / REFERENCE_FILE, weights_sha256=weights_sha256)
    done(t, f" → {reference} ({reference.stat().st_size / 1e6:.2f} MB)")

    report: dict = {"weights": weights or "shipped", "weights_sha256": weights_sha256, "opset": opset,
                    "io_dtype": io_dtype, "slim": slim,
                    "files": {"fp32": str(fp32_path), "fp16": str(fp16_path) if fp16_path else None}}
    failed = []
    if not no_verify:
        t = step("verifying")
        checks = verify_export(model, fp32_path, fp16_path, io_dtype)
        done(t)
        for c in checks:
            click.echo(f"  {'✓' if c.passed else '✗'} {c.name}: {c.summary}")
        report["checks"] = as_json(checks)
        failed = [c.name for c in checks if not c.passed]

    engine_error = None
    if want_engine:
        available, reason = tensorrt_status()
        if not available:
            report["engine"] = {"built": False, "reason": reason}
            if engine_mode == "yes":
                engine_error = f"no engine built: {reason}"
            else:
                click.echo(f"• no engine built: {reason}")
        else:
            t = step(f"building the strongly typed FP16 engine ({reason})")
            build = build_engine(fp16_path, out / "cminet_fp16.engine", *shapes, workspace_mib=workspace,
                                 timing_cache=timing_cache, config_json=model.config.to_json())
            done(t, f" → {build.engine} ({build.fp16_layers}/{build.total_layers} layers FP16)")
            report["engine"] = {"built": True, "path": str(build.engine), "sidecar": str(build.sidecar),
                                "build_seconds": build.build_seconds, "fp16_layers": build.fp16_layers,
                                "total_layers": build.total_layers}

    if triton_dir and not failed:  # only verified files go into a serving repository
        from .triton import write_model_repository

        t = step(f"writing the Triton model repository {triton_dir}")
        engine = report.get("engine", {})
        configs = write_model_repository(triton_dir, fp32_path, max_batch_size=shapes[2][0],
                                         engine=engine["path"] if engine.get("built") else None, engine_onnx=fp16_path)
        done(t, f" → {', '.join(c.parent.name for c in configs)}")
        report["triton"] = {"repository": str(triton_dir), "models": [c.parent.name for c in configs]}

    (out / "export_report.json").write_text(json.dumps(report, indent=2) + "\n")
    click.echo(f"• report → {out / 'export_report.json'}")
    if not failed and not engine_error:
        click.echo(f"next: cminet fuse --samples --out fused --model {fp32_path}   |   "
                   f"cminet-bench --quick --model {fp16_path or fp32_path}")
    if engine_error:
        raise CMINetError(engine_error)
    if failed:
        click.echo(f"error: verification failed: {', '.join(failed)}", err=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
