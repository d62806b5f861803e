"""``cminet-export``: the shipped (or ``--weights``) model → verified ONNX → FP16 ONNX →
strongly typed FP16 TensorRT engine, each step checking itself.

Everything is written to a hidden staging folder first and moved into ``--out`` only once
verified, so a refused input (NaN weights, a bad profile) or a failed check never leaves
an unverified model in the output folder: then only ``export_report.json`` is written."""

from __future__ import annotations

import json
import time
from pathlib import Path

import click

from cminet.runtime.command_line import CONTEXT, BoundaryCommand, require
from cminet.runtime.contract import REFERENCE_FILE, SHIPPED_ONNX, validate_profile
from cminet.runtime.errors import CMINetError
from cminet.runtime.files import check_output, publish, staging_folder, write_text_atomic

ENGINE_FILE = "cminet_fp16.engine"
REPORT_FILE = "export_report.json"


def step(message: str):
    click.echo(f"• {message} ...", nl=False)
    return time.monotonic()


def done(started: float, extra: str = "") -> None:
    click.echo(f" done in {time.monotonic() - started:.1f}s{extra}")


@click.command(cls=BoundaryCommand, context_settings=CONTEXT)
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
@click.option("--workspace", default=1024, show_default=True, type=click.IntRange(16, 1 << 20), help="Workspace MiB.")
@click.option("--timing-cache", type=click.Path(dir_okay=False), help="Timing cache file, reused across builds.")
@click.option("--slim/--no-slim", default=True, show_default=True,
              help="Simplify both graphs with onnxslim (fold constants, drop redundant Casts).")
@click.option("--int8", is_flag=True,
              help="Also write cminet_int8.onnx (static QDQ, calibrated on --calibration's training pairs), its drift "
                   "in the report. Only on CPUs with VNNI/AMX: elsewhere INT8 is slower than FP32 and is refused.")
@click.option("--calibration", type=click.Path(file_okay=False),
              help="--int8: a dataset folder laid out like shared/data/harvard (<pair>/train.txt; train split only).")
@click.option("--no-verify", is_flag=True, help="Skip the self-verification (not recommended).")
@click.option("--triton", "triton_dir", type=click.Path(file_okay=False),
              help="Also write a Triton model repository here: cminet_onnx (FP32 ONNX) and, where an engine "
                   "was built, cminet_trt; max_batch_size from --max-shape's N (needs cminet[triton]).")
def main(weights, out, opset, fp16, io_dtype, engine_mode, min_shape, opt_shape, max_shape, workspace,
         timing_cache, slim, int8, calibration, no_verify, triton_dir) -> None:
    """Export CMINet for deployment and verify every file written.

    \b
    Typical use (the FP16 engine is built only where TensorRT and a GPU are present):
      cminet-export --fp16
    With a Triton Inference Server model repository (serve it with tritonserver):
      cminet-export --fp16 --triton triton/
    On the Jetson itself, after copying exported/cminet_fp16.onnx there:
      cminet-export --fp16 --engine yes --max-shape 1x1024x1024 --timing-cache trt.cache
    """
    require("torch", "cminet-export")
    import hashlib

    from cminet.fusion import DEFAULT_WEIGHTS, load_pretrained

    from .fp16 import convert_fp16
    from .onnx_export import export_onnx
    from .tensorrt_build import build_engine, tensorrt_status
    from .verify import as_json, verify_export, write_reference

    # Every input is checked before anything is written.
    try:
        shapes = validate_profile(min_shape, opt_shape, max_shape)
    except CMINetError as exc:
        raise click.UsageError(f"--min-shape/--opt-shape/--max-shape: {exc}") from None
    if triton_dir:  # fail before the export, not after it, when the schema is missing
        from .triton import schema

        schema()
    if int8:  # refused before anything is exported: on this CPU an INT8 model would be slower and worse
        from .int8 import int8_support

        supported, why = int8_support()
        if not supported:
            raise CMINetError(f"--int8: {why}")
        if not calibration:
            raise click.UsageError("--int8 needs --calibration DIR (training pairs for the INT8 ranges)")
    want_engine = engine_mode == "yes" or (engine_mode == "auto" and fp16)
    out = Path(out)
    names = [SHIPPED_ONNX["fp32"], REFERENCE_FILE, REPORT_FILE]
    names += [SHIPPED_ONNX["fp16"]] if fp16 or engine_mode == "yes" else []
    names += [ENGINE_FILE, f"{ENGINE_FILE}.json"] if want_engine else []
    if int8:
        from .int8 import INT8_FILE

        names.append(INT8_FILE)
    for name in names:
        check_output(out / name)
    if timing_cache:
        check_output(timing_cache)
    available, reason = tensorrt_status() if want_engine else (False, "")
    if engine_mode == "yes" and not available:
        raise CMINetError(f"--engine yes: no engine can be built here: {reason}")
    model = load_pretrained(weights)  # refuses missing, foreign and NaN/Inf weights
    weights_sha256 = hashlib.sha256(Path(weights or DEFAULT_WEIGHTS).read_bytes()).hexdigest()

    with staging_folder(out) as stage:
        t = step(f"exporting FP32 ONNX (opset {opset})")
        fp32_path = export_onnx(model, stage / SHIPPED_ONNX["fp32"], opset=opset, simplify=slim,
                                weights_sha256=weights_sha256)
        done(t, f" ({fp32_path.stat().st_size / 1e6:.2f} MB)")
        fp16_path = None
        if fp16 or engine_mode == "yes":
            t = step(f"converting to FP16 ({io_dtype.upper()} I/O)")
            fp16_path = convert_fp16(fp32_path, stage / SHIPPED_ONNX["fp16"], io_dtype=io_dtype, simplify=slim)
            done(t, f" ({fp16_path.stat().st_size / 1e6:.2f} MB)")
        t = step("writing the drift reference (FP32 PyTorch on the shipped samples)")
        reference = write_reference(model, stage / REFERENCE_FILE, weights_sha256=weights_sha256)
        done(t, f" ({reference.stat().st_size / 1e6:.2f} MB)")

        int8_path, int8_report = None, None
        if int8:
            from cminet.runtime.backends.base import open_backend
            from cminet.runtime.compare import drift, load_reference

            from .int8 import INT8_FILE, calibration_pairs, int8_support, quantize_int8

            pairs = calibration_pairs(calibration)
            t = step(f"quantising to INT8 (static QDQ, {len(pairs)} training pairs)")
            int8_path = quantize_int8(fp32_path, stage / INT8_FILE, pairs)
            backend = open_backend("ort-cpu", int8_path)
            change = drift(backend.run, load_reference(reference))
            backend.close()
            done(t, f" ({int8_path.stat().st_size / 1e6:.2f} MB; against FP32 PyTorch: {change.summary()})")
            int8_report = {"path": str(out / INT8_FILE), "cpu": int8_support()[1], "calibration": str(calibration),
                           "calibration_pairs": len(pairs), "drift": change.as_dict()}

        final = {path.name: out / path.name for path in (fp32_path, fp16_path, reference, int8_path)
                 if path is not None}
        report: dict = {"weights": weights or "shipped", "weights_sha256": weights_sha256, "opset": opset,
                        "io_dtype": io_dtype, "slim": slim,
                        "files": {"fp32": str(final[fp32_path.name]),
                                  "fp16": str(final[fp16_path.name]) if fp16_path else None}}
        if int8_report:
            report["int8"] = int8_report
        failed = []
        if not no_verify:
            t = step("verifying")
            checks = verify_export(model, fp32_path, fp16_path, io_dtype)
            done(t)
            for c in checks:
                click.echo(f"  {'✓' if c.passed else '✗'} {c.name}: {c.summary}")
            report["checks"] = as_json(checks)
            failed = [c.name for c in checks if not c.passed]

        if want_engine and not failed:
            if not available:
                report["engine"] = {"built": False, "reason": reason}
                click.echo(f"• no engine built: {reason}")
            else:
                t = step(f"building the strongly typed FP16 engine ({reason})")
                build = build_engine(fp16_path, stage / ENGINE_FILE, *shapes, workspace_mib=workspace,
                                     timing_cache=timing_cache, config_json=model.config.to_json())
                done(t, f" ({build.fp16_layers}/{build.total_layers} layers FP16)")
                final.update({ENGINE_FILE: out / ENGINE_FILE, build.sidecar.name: out / build.sidecar.name})
                report["engine"] = {"built": True, "path": str(out / ENGINE_FILE),
                                    "sidecar": str(out / build.sidecar.name), "build_seconds": build.build_seconds,
                                    "fp16_layers": build.fp16_layers, "total_layers": build.total_layers}

        if triton_dir and not failed:  # only verified files go into a serving repository
            from .triton import write_model_repository

            t = step(f"writing the Triton model repository {triton_dir}")
            engine = stage / ENGINE_FILE if ENGINE_FILE in final else None
            configs = write_model_repository(triton_dir, fp32_path, max_batch_size=shapes[2][0], engine=engine,
                                             engine_onnx=fp16_path)
            done(t, f" → {', '.join(c.parent.name for c in configs)}")
            report["triton"] = {"repository": str(triton_dir), "models": [c.parent.name for c in configs]}
        if failed:  # nothing unverified reaches the output folder: only the report that says why
            report["files"] = {"fp32": None, "fp16": None, "discarded": "verification failed"}
            final = {}
        write_text_atomic(stage / REPORT_FILE, json.dumps(report, indent=2) + "\n")
        for path in publish(stage, out, [*final, REPORT_FILE]):
            if path.name != REPORT_FILE:
                click.echo(f"• wrote {path}")
    click.echo(f"• report → {out / REPORT_FILE}")
    if failed:
        raise CMINetError(f"verification failed ({', '.join(failed)}); no model was written to {out}")
    fp32_final = out / SHIPPED_ONNX["fp32"]
    click.echo(f"next: cminet fuse --samples --out fused --model {fp32_final}   |   "
               f"cminet-bench --quick --model {out / SHIPPED_ONNX['fp16'] if fp16_path else fp32_final}")

if __name__ == "__main__":
    main()
