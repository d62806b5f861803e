"""The bad-input matrix (issue 12): what a careless or hostile user tries against the three
CLIs, the runtime API and a torch-free install. Every case must end in one line
``error: ...`` on stderr with the right exit status (1 for bad data or files, 2 for a wrong
command line), no traceback, and no file left behind: not in the working folder, not
beside the inputs (no hidden temporary files either).

The CLI cases run in-process (click's CliRunner) so the whole matrix takes seconds; the
torch-free cases are real subprocesses with torch made unimportable."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from cminet.benchmarks.cli import main as bench_main
from cminet.cli import main as cminet_main
from cminet.export.cli import main as export_main
from cminet.runtime import contract, folders, imaging
from cminet.runtime.contract import shipped_onnx

from . import badinput_assets
from .helpers import torch_free_env

TOOLS = {"cminet": cminet_main, "cminet-export": export_main, "cminet-bench": bench_main}
MODULES = {"cminet": "cminet.cli", "cminet-export": "cminet.export.cli", "cminet-bench": "cminet.benchmarks.cli"}
FUSE = "fuse {a}/mri.png {a}/ct.png"


@pytest.fixture(scope="session")
def assets(tmp_path_factory) -> Path:
    return badinput_assets.build(tmp_path_factory.mktemp("bad_inputs"))


@dataclass(frozen=True)
class Case:
    id: str
    tool: str
    args: str  # {a}: the assets folder, {t}: this case's own (empty) folder
    code: int
    words: str  # expected in the message, case-insensitive
    env: dict = field(default_factory=dict)


CLI_CASES = [
    # -- cminet fuse: images --------------------------------------------------------------
    Case("missing-image", "cminet", "fuse {a}/nope.png {a}/ct.png -o {t}/o.png", 1, "nope.png: no such file"),
    Case("image-is-folder", "cminet", "fuse {a}/adir {a}/ct.png -o {t}/o.png", 2, "is a directory"),
    Case("sizes-differ", "cminet", "fuse {a}/mri.png {a}/rect_ct.png -o {t}/o.png", 1, "sizes differ"),
    Case("truncated-png", "cminet", "fuse {a}/mri.png {a}/truncated.png -o {t}/o.png", 1, "truncated png"),
    Case("garbage-image", "cminet", "fuse {a}/garbage.png {a}/ct.png -o {t}/o.png", 1, "not a readable image"),
    Case("empty-image", "cminet", "fuse {a}/empty.png {a}/ct.png -o {t}/o.png", 1, "empty file"),
    Case("16-bit", "cminet", "fuse {a}/sixteen.png {a}/ct.png -o {t}/o.png", 1, "16-bit"),
    Case("crc-error", "cminet", "fuse {a}/mri.png {a}/badcrc.png -o {t}/o.png", 1, "crc error"),
    Case("decompression-bomb", "cminet", "fuse {a}/huge.png {a}/ct.png -o {t}/o.png", 1, "100000×100000"),
    Case("tiny-image", "cminet", "fuse {a}/tiny.png {a}/tiny.png -o {t}/o.png", 1, "both sides ≥ 16"),
    Case("broken-jpeg", "cminet", "fuse {a}/notpng.jpg {a}/ct.png -o {t}/o.png", 1, "not a readable image"),
    # -- cminet fuse: outputs ---------------------------------------------------------------
    Case("unknown-extension", "cminet", FUSE + " -o {t}/out.xyz", 1, "cannot write '.xyz'"),
    Case("undecodable-name", "cminet", FUSE + " -o {t}/\udcff.xyz", 1, "cannot write '.xyz'"),  # crashed OpenCV
    Case("output-is-folder", "cminet", FUSE + " -o {t}", 2, "directory"),
    Case("output-parent-is-file", "cminet", FUSE + " -o {a}/afile/o.png", 1, "not a folder"),
    Case("out-is-file", "cminet", "fuse --samples --out {a}/afile", 2, "is a file"),
    Case("single-pair-with-out", "cminet", FUSE + " -o {t}/o.png --out {t}/x", 2, "--out is for"),
    Case("no-output", "cminet", FUSE, 2, "needs mri, other and -o"),
    Case("nothing-to-fuse", "cminet", "fuse", 2, "give either"),
    # -- cminet fuse: models and options ----------------------------------------------------
    Case("missing-model", "cminet", FUSE + " -o {t}/o.png --model {a}/none.onnx", 1, "no such model file"),
    Case("garbage-onnx", "cminet", FUSE + " -o {t}/o.png --model {a}/garbage.onnx", 1, "not a loadable onnx"),
    Case("empty-onnx", "cminet", FUSE + " -o {t}/o.png --model {a}/empty.onnx", 1, "empty file"),
    Case("model-type", "cminet", FUSE + " -o {t}/o.png --model {a}/model.txt", 1, "unknown model file type"),
    Case("int64-io", "cminet", FUSE + " -o {t}/o.png --model {a}/int64.onnx", 1, "tensor(int64)"),
    Case("wrong-names", "cminet", FUSE + " -o {t}/o.png --model {a}/names.onnx", 1, "not a cminet model"),
    Case("rank-3", "cminet", FUSE + " -o {t}/o.png --model {a}/rank3.onnx", 1, "expected n×1×h×w"),
    Case("transposed-output", "cminet", "fuse {a}/rect_mri.png {a}/rect_ct.png -o {t}/o.png "
         "--model {a}/transposed.onnx", 1, "reorders the input's"),
    Case("cropped-output", "cminet", FUSE + " -o {t}/o.png --model {a}/cropped.onnx", 1,
         "returned shape (1, 1, 256, 8) for input (1, 1, 256, 256)"),
    Case("nan-output", "cminet", FUSE + " -o {t}/o.png --model {a}/nan.onnx", 1, "nan or inf"),
    Case("static-shape", "cminet", FUSE + " -o {t}/o.png --model {a}/static.onnx", 1, "profile"),
    Case("engine-backend-for-onnx", "cminet", FUSE + " -o {t}/o.png --model {a}/int64.onnx --backend tensorrt", 1,
         "runs a .engine file"),
    Case("weights-and-model", "cminet", FUSE + " -o {t}/o.png --weights {a}/weights.safetensors "
         "--model {a}/nan.onnx", 2, "alternatives"),
    Case("nan-weights", "cminet", FUSE + " -o {t}/o.png --weights {a}/nan.safetensors", 1, "nan or inf"),
    Case("hostile-config", "cminet", FUSE + " -o {t}/o.png --weights {a}/hostile.safetensors", 1,
         "do not match the config"),
    Case("foreign-safetensors", "cminet", FUSE + " -o {t}/o.png --weights {a}/foreign.safetensors", 1,
         "not a cminet checkpoint"),
    Case("garbage-weights", "cminet", FUSE + " -o {t}/o.png --weights {a}/garbage.safetensors", 1,
         "garbage.safetensors"),
    Case("cuda-without-gpu", "cminet", FUSE + " -o {t}/o.png --device cuda", 2, "no cuda gpu"),
    Case("device-typo", "cminet", FUSE + " -o {t}/o.png --device gpu", 2, "expected auto, cpu, cuda"),
    Case("tile-too-small", "cminet", FUSE + " -o {t}/o.png --tile 10", 2, "side ≥ 64"),
    Case("tile-not-a-number", "cminet", FUSE + " -o {t}/o.png --tile big", 2, "tile"),
    Case("no-memory-no-tiles", "cminet", FUSE + " -o {t}/o.png --tile off", 1, "fuse it in tiles",
         env={"CMINET_MAX_MEMORY": "40M"}),
    Case("memory-limit-typo", "cminet", FUSE + " -o {t}/o.png", 1, "cminet_max_memory",
         env={"CMINET_MAX_MEMORY": "lots"}),
    Case("split-typo", "cminet", "fuse --data {a}/data --split tests --out {t}/f", 2, "'tests' is not one of"),
    Case("no-split-file", "cminet", "fuse --data {a}/nosplit --out {t}/f", 1, "no such split file"),
    Case("pair-escapes-root", "cminet", "fuse --data {a}/data --pairs .. --out {t}/f", 1, "expected a folder name"),
    Case("name-escapes-root", "cminet", "fuse --data {a}/escaping --out {t}/f", 1, "is not a file name"),
    # -- cminet train / info / evaluate -----------------------------------------------------
    Case("lr-negative", "cminet", "train --data {a}/data --out {t}/run --lr -1", 2, "not > 0"),
    Case("lr-nan", "cminet", "train --data {a}/data --out {t}/run --lr nan", 2, "not a finite number"),
    Case("lr-inf", "cminet", "train --data {a}/data --out {t}/run --lr inf", 2, "not a finite number"),
    Case("lr-text", "cminet", "train --data {a}/data --out {t}/run --lr fast", 2, "not a number"),
    Case("loss-weight-negative", "cminet", "train --data {a}/data --out {t}/run --w-ssim -1", 2, "not ≥ 0"),
    Case("all-loss-weights-zero", "cminet", "train --data {a}/data --out {t}/run --w-ssim 0 --w-texture 0 "
         "--w-pixel 0", 2, "nothing to train for"),
    Case("max-minutes-zero", "cminet", "train --data {a}/data --out {t}/run --max-minutes 0", 2, "not > 0"),
    Case("seed-negative", "cminet", "train --data {a}/data --out {t}/run --seed -1", 2, "--seed"),
    Case("epochs-zero", "cminet", "train --data {a}/data --out {t}/run --epochs 0", 2, "--epochs"),
    Case("train-cuda-without-gpu", "cminet", "train --data {a}/data --out {t}/run --device cuda:0", 2, "no cuda gpu"),
    Case("reset-head-alone", "cminet", "train --data {a}/data --out {t}/run --reset-head", 2, "needs --init"),
    Case("unknown-pair-type", "cminet", "train --data {a}/data --out {t}/run --pairs xray_mri", 2, "xray_mri"),
    Case("missing-data", "cminet", "train --data {a}/nowhere --out {t}/run", 2, "does not exist"),
    Case("train-no-split", "cminet", "train --data {a}/nosplit --out {t}/run", 1, "no such split file"),
    Case("crop-larger-than-images", "cminet", "train --data {a}/data --out {t}/run --epochs 1", 1,
         "smaller than the 64×64 training crop"),
    Case("resume-nothing", "cminet", "train --data {a}/data --out {t}/run --resume", 1, "nothing to resume from"),
    Case("init-garbage", "cminet", "train --data {a}/data --out {t}/run --init {a}/garbage.safetensors", 1,
         "garbage.safetensors"),
    Case("init-nan", "cminet", "train --data {a}/data --out {t}/run --init {a}/nan.safetensors", 1, "nan or inf"),
    Case("info-size-tiny", "cminet", "info --size 8", 2, "both sides ≥ 16"),
    Case("info-size-text", "cminet", "info --size big", 2, "expected h×w"),
    Case("info-weights-missing", "cminet", "info --weights {a}/nope.safetensors", 1, "no such weights file"),
    Case("evaluate-method", "cminet", "evaluate --data {a}/data --methods magic --out {t}/e", 2, "unknown method"),
    Case("evaluate-fused-folder", "cminet", "evaluate --data {a}/data --methods max --fused x={a}/nowhere "
         "--out {t}/e", 1, "no such folder"),
    Case("unknown-command", "cminet", "fuze", 2, "no such command"),
    Case("unknown-option", "cminet", FUSE + " -o {t}/o.png --colourmap red", 2, "no such option"),
    # -- cminet-export --------------------------------------------------------------------
    Case("export-nan-weights", "cminet-export", "--weights {a}/nan.safetensors --out {t}/exp", 1, "nan or inf"),
    Case("export-garbage-weights", "cminet-export", "--weights {a}/garbage.safetensors --out {t}/exp", 1,
         "garbage.safetensors"),
    Case("export-profile-tiny", "cminet-export", "--max-shape 1x8x8 --out {t}/exp", 2, "h, w ≥ 16"),
    Case("export-profile-order", "cminet-export", "--min-shape 1x512x512 --out {t}/exp", 2, "min ≤ opt ≤ max"),
    Case("export-profile-text", "cminet-export", "--max-shape huge --out {t}/exp", 2, "n×h×w"),
    Case("export-opset-old", "cminet-export", "--opset 12 --out {t}/exp", 2, "--opset"),
    Case("export-workspace", "cminet-export", "--workspace 0 --out {t}/exp", 2, "--workspace"),
    Case("export-out-is-file", "cminet-export", "--out {a}/afile", 2, "is a file"),
    Case("export-cache-is-folder", "cminet-export", "--timing-cache {a}/adir --out {t}/exp", 2, "directory"),
    # -- cminet-bench ---------------------------------------------------------------------
    Case("bench-size-huge", "cminet-bench", "--sizes 99999 --iters 1 --workdir {t}/w", 1,
         "the largest square it fuses whole here is"),
    Case("bench-batch-huge", "cminet-bench", "--sizes 1024 --batch 4096 --iters 1 --workdir {t}/w", 1,
         "at batch 4096"),
    Case("bench-size-tiny", "cminet-bench", "--sizes 8 --workdir {t}/w", 2, "both sides ≥ 16"),
    Case("bench-size-text", "cminet-bench", "--sizes 256,big --workdir {t}/w", 2, "--sizes"),
    Case("bench-batch-zero", "cminet-bench", "--batch 0 --workdir {t}/w", 2, "≥ 1"),
    Case("bench-backend-typo", "cminet-bench", "--backends ort-gpu --workdir {t}/w", 2, "expected auto or backends"),
    Case("bench-iters-zero", "cminet-bench", "--iters 0 --workdir {t}/w", 2, "--iters"),
    Case("bench-missing-model", "cminet-bench", "--model {a}/none.onnx --backends ort-cpu --iters 1 --sizes 32 "
         "--workdir {t}/w", 1, "no such model file"),
    Case("bench-foreign-model", "cminet-bench", "--model {a}/transposed.onnx --backends ort-cpu --iters 1 "
         "--sizes 32 --workdir {t}/w", 1, "reorders the input's"),
    Case("bench-garbage-model", "cminet-bench", "--model {a}/garbage.onnx --backends ort-cpu --iters 1 --sizes 32 "
         "--workdir {t}/w", 1, "not a loadable onnx"),
    Case("bench-json-is-folder", "cminet-bench", "--json {a}/adir --workdir {t}/w", 2, "directory"),
    Case("bench-plot-format", "cminet-bench", "--plot {t}/plot.txt --workdir {t}/w", 2, "--plot"),
    Case("bench-profile-typo", "cminet-bench", "--profile jetson --workdir {t}/w", 2, "unknown profile"),
    Case("bench-workdir-is-file", "cminet-bench", "--workdir {a}/afile", 2, "is a file"),
]


def snapshot(*folders: Path) -> set[str]:
    return {str(p) for folder in folders for p in folder.rglob("*")}


def assert_one_line_error(stderr: str, words: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line on stderr, got:\n{stderr}"
    assert lines[0].startswith("error: "), lines[0]
    assert "Traceback" not in stderr
    assert words.lower() in lines[0].lower(), f"{words!r} not in {lines[0]!r}"
    return lines[0]


@pytest.mark.parametrize("case", CLI_CASES, ids=[c.id for c in CLI_CASES])
def test_cli_refuses_bad_input_in_one_line(case, assets, tmp_path, monkeypatch):
    if case.id.startswith("bench-") and "model" in case.id:
        pytest.importorskip("onnxruntime")
    monkeypatch.chdir(tmp_path)  # anything written to a default path would land here
    for key, value in case.env.items():
        monkeypatch.setenv(key, value)
    before = snapshot(tmp_path, assets)
    argv = shlex.split(case.args.format(a=assets, t=tmp_path))
    result = CliRunner().invoke(TOOLS[case.tool], argv)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert result.exit_code == case.code, result.output
    assert "Traceback" not in result.output
    assert_one_line_error(result.stderr, case.words)
    assert snapshot(tmp_path, assets) == before, "a file was left behind"


@pytest.mark.torch_free
def test_the_matrix_is_large_enough():
    tools = {c.tool for c in CLI_CASES}
    assert len(CLI_CASES) + len(API_CASES) + len(TORCH_FREE_CASES) >= 60 and tools == set(TOOLS)


def test_debug_shows_the_traceback_instead(assets, tmp_path):
    argv = shlex.split((FUSE + " -o {t}/out.xyz --debug").format(a=assets, t=tmp_path))
    result = CliRunner().invoke(cminet_main, argv)
    assert result.exit_code == 1 and type(result.exception).__name__ == "OutputError"
    # the same flag after the command, before it, or as an environment variable
    for again, env in ((["--debug", *argv[:-1]], {}), (argv[:-1], {"CMINET_DEBUG": "1"})):
        result = CliRunner().invoke(cminet_main, again, env=env)
        assert type(result.exception).__name__ == "OutputError", again
    for tool in (export_main, bench_main):  # the three tools take the same flag
        result = CliRunner().invoke(tool, ["--help"])
        assert "--debug" in result.output


def test_unexpected_errors_are_one_line_with_a_hint(monkeypatch, tmp_path):
    import cminet.runtime.folders as folders

    def explode(*_args, **_kwargs):
        raise KeyError("a bug")

    monkeypatch.setattr(folders, "list_pairs", explode)
    result = CliRunner().invoke(cminet_main, ["fuse", "--samples", "--out", str(tmp_path / "f")])
    line = assert_one_line_error(result.stderr, "unexpected KeyError")
    assert result.exit_code == 1 and "--debug" in line


# -- output paths that are not regular files ------------------------------------------------
def _fuse_into(path: Path, assets: Path, *extra: str):
    return CliRunner().invoke(cminet_main, ["fuse", str(assets / "mri.png"), str(assets / "ct.png"), "-o", str(path),
                                            "--model", str(shipped_onnx()), *extra])


def test_a_character_device_is_written_into_never_replaced(assets, tmp_path):
    import stat

    null = tmp_path / "null"
    try:
        os.mknod(null, 0o666 | stat.S_IFCHR, os.makedev(1, 3))  # a /dev/null of our own
    except (PermissionError, OSError):
        pytest.skip("cannot create a device node here (needs CAP_MKNOD)")
    result = _fuse_into(null, assets)
    assert result.exit_code == 0, result.output
    assert stat.S_ISCHR(os.stat(null).st_mode) and sorted(os.listdir(tmp_path)) == ["null"]


def test_a_fifo_gets_the_image_and_stays_a_fifo(assets, tmp_path):
    import stat
    import threading

    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    received = []
    reader = threading.Thread(target=lambda: received.append(fifo.read_bytes()))
    reader.start()
    result = _fuse_into(fifo, assets)
    reader.join(timeout=30)
    assert result.exit_code == 0, result.output
    assert received and received[0].startswith(b"\x89PNG") and stat.S_ISFIFO(os.stat(fifo).st_mode)
    assert sorted(os.listdir(tmp_path)) == ["pipe.png"]


def test_a_fifo_nobody_reads_is_refused_not_waited_on(assets, tmp_path, monkeypatch):
    import stat

    import cminet.runtime.files as files

    monkeypatch.setattr(files, "FIFO_READER_WAIT_S", 0.2)
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    result = _fuse_into(fifo, assets)
    assert result.exit_code == 1
    assert_one_line_error(result.stderr, "a fifo that nobody reads")
    assert stat.S_ISFIFO(os.stat(fifo).st_mode) and sorted(os.listdir(tmp_path)) == ["pipe.png"]


def test_a_symlink_is_followed_and_kept(assets, tmp_path):
    target = tmp_path / "real.png"
    target.write_bytes(b"old")
    link = tmp_path / "link.png"
    link.symlink_to(target)
    result = _fuse_into(link, assets)
    assert result.exit_code == 0, result.output
    assert link.is_symlink() and target.read_bytes().startswith(b"\x89PNG")
    assert sorted(os.listdir(tmp_path)) == ["link.png", "real.png"]


@pytest.mark.torch_free
def test_errors_name_the_users_path_not_the_temporary_file(tmp_path):
    """A failing write (a full disk) names the user's path and takes back the temporary file
    and the folders it created."""
    from cminet.runtime.files import atomic_output

    out = tmp_path / "new" / "folder" / "result.bin"
    with pytest.raises(OSError) as caught, atomic_output(out) as tmp:
        raise OSError(28, "No space left on device", str(tmp))
    assert caught.value.filename == str(out) and ".tmp" not in str(caught.value)
    assert os.listdir(tmp_path) == []


# -- the runtime API: every bad argument is a ValueError subclass naming it ----------------
def _fuser(**kwargs):
    from cminet.runtime import Fuser

    return Fuser(**kwargs)


def _fuse_with(model: str, mri="mri.png", other="ct.png", **kwargs):
    def run(a: Path):
        from cminet.runtime import Fuser
        from cminet.runtime.imaging import read_image

        with Fuser(a / model) as fuser:
            return fuser.fuse(read_image(a / mri), read_image(a / other), **kwargs)

    return run


def _shipped_fuse(mri, other, **kwargs):
    def run(a: Path):
        from cminet.runtime import Fuser

        with Fuser() as fuser:
            return fuser.fuse(mri, other, **kwargs)

    return run


def _bench(**kwargs):
    def run(a: Path):
        from cminet.benchmarks.bench import run_benchmark

        return run_benchmark(workdir=a / "never", **kwargs)

    return run


def _fusion():
    import cminet.fusion

    return cminet.fusion


GREY = np.zeros((64, 64), np.uint8)
API_CASES = [
    ("Fuser-optimization", lambda a: _fuser(optimization="bogus"), "optimization: expected one of disable, basic"),
    ("Fuser-backend", lambda a: _fuser(backend="cuda"), "backend: expected one of auto, ort-cpu"),
    ("Fuser-precision", lambda a: _fuser(precision="int8"), "precision: expected one of fp32, fp16"),
    ("Fuser-threads", lambda a: _fuser(threads=0), "threads: expected"),
    ("Fuser-threads-float", lambda a: _fuser(threads=1.5), "threads: expected"),
    ("Fuser-device", lambda a: _fuser(device=-1), "device: expected"),
    ("Fuser-path-type", lambda a: _fuser(source=42), "source: expected"),
    ("Fuser-missing", lambda a: _fuser(source=a / "none.onnx"), "no such model file"),
    ("Fuser-int64", lambda a: _fuser(source=a / "int64.onnx"), "tensor(int64)"),
    ("Fuser-transposed", lambda a: _fuser(source=a / "transposed.onnx"), "reorders the input's"),
    ("Fuser-cropped", _fuse_with("cropped.onnx", "rect_mri.png", "rect_ct.png"), "returned shape (1, 1, 100, 8)"),
    ("Fuser-nan-output", _fuse_with("nan.onnx"), "nan or inf"),
    ("fuse-float-image", _shipped_fuse(GREY.astype(np.float32), GREY), "expected uint8"),
    ("fuse-list-image", _shipped_fuse([[0] * 64] * 64, GREY), "expected a numpy array"),
    ("fuse-two-channels", _shipped_fuse(GREY, np.zeros((64, 64, 2), np.uint8)), "h×w×3"),
    ("fuse-tile", _shipped_fuse(GREY, GREY, tile=16), "tile: expected"),
    ("fuse-batch-type", lambda a: _fuser().fuse_batch("mri.png"), "pairs: expected"),
    ("infer-rank", lambda a: _fuser().infer(np.zeros((64, 64), np.float32), np.zeros((64, 64), np.float32)),
     "expected shape n×1×h×w"),
    ("infer-nan", lambda a: _fuser().infer(np.full((1, 1, 32, 32), np.nan, np.float32),
                                           np.zeros((1, 1, 32, 32), np.float32)), "nan or inf"),
    ("read-folder", lambda a: imaging.read_image(a / "adir"),
     "not a regular file"),
    ("read-bomb", lambda a: imaging.read_image(a / "huge.png"),
     "needs about"),
    ("write-extension", lambda a: imaging.write_image(
        a / "x.xyz", GREY), "cannot write '.xyz'"),
    ("write-folder", lambda a: imaging.write_image(a / "adir", GREY),
     "is a folder"),
    ("read-path-type", lambda a: imaging.read_image(42),
     "path: expected"),
    ("write-float-image", lambda a: imaging.write_image(
        a / "never.png", GREY.astype(np.float32)), "image: expected uint8"),
    ("write-path-type", lambda a: imaging.write_image(None, GREY),
     "path: expected"),
    ("discover-missing", lambda a: folders.discover_pairs(
        a / "nowhere"), "no such folder"),
    ("bench-sizes", _bench(sizes=[(8, 8)]), "sizes: expected"),
    ("bench-sizes-string", _bench(sizes="256"), "sizes: expected"),
    ("bench-memory", _bench(sizes=[(99_999, 99_999)], backends=["ort-cpu"]), "the largest square it fuses"),
    ("bench-batches", _bench(batches=[0]), "batches: expected"),
    ("bench-backends", _bench(backends=["ort-gpu"]), "backends: unknown"),
    ("parse-size", lambda a: contract.parse_size("0x0"), "size"),
    ("load-device", lambda a: _fusion().load_pretrained(device="gpu"), "device: expected"),
    ("load-path-type", lambda a: _fusion().load_pretrained(path=3), "path: expected"),
    ("fuse-arrays-model", lambda a: _fusion().fuse_arrays("model", GREY, GREY),
     "model: expected a cminet"),
    ("list-pairs-escape", lambda a: folders.list_pairs(
        a / "data", ["../.."], "test"), "expected a folder name"),
]


@pytest.mark.parametrize("name,call,words", API_CASES, ids=[c[0] for c in API_CASES])
def test_api_raises_one_line_value_errors(name, call, words, assets):
    before = snapshot(assets)
    with pytest.raises(ValueError) as caught:
        call(assets)
    message = str(caught.value)
    assert "\n" not in message and words.lower() in message.lower(), message
    from cminet.runtime.errors import CMINetError

    assert isinstance(caught.value, CMINetError), type(caught.value)
    assert snapshot(assets) == before


def test_export_refuses_nan_weights_before_writing(tmp_path):
    import torch

    from cminet.export.onnx_export import export_onnx
    from cminet.runtime.errors import ModelFileError

    from .helpers import non_max_rule_model

    model = non_max_rule_model()
    with torch.no_grad():
        model.tail[-1].bias.fill_(float("inf"))
    with pytest.raises(ModelFileError, match="NaN or Inf"):
        export_onnx(model, tmp_path / "m.onnx")
    with pytest.raises(ValueError, match="opset: expected"):
        export_onnx(non_max_rule_model(), tmp_path / "m.onnx", opset=12)
    assert os.listdir(tmp_path) == []


# -- a torch-free install: one line naming the extra, and the rest still works -------------
TORCH_FREE_CASES = [
    ("info", "cminet", "info", "cminet info needs PyTorch"),
    ("train", "cminet", "train --data {a}/data --out {t}/run", "cminet train needs PyTorch"),
    ("fuse-weights", "cminet", FUSE + " -o {t}/o.png --weights {a}/mri.png", "cminet fuse --weights needs PyTorch"),
    ("export", "cminet-export", "--out {t}/exp", "cminet-export needs PyTorch"),
    ("bench-weights", "cminet-bench", "--weights {a}/mri.png --workdir {t}/w", "needs PyTorch"),
    ("evaluate", "cminet", "evaluate --data {a}/data --out {t}/e", "needs PyTorch"),
]


@pytest.fixture(scope="session")
def no_torch(tmp_path_factory) -> dict:
    return torch_free_env(tmp_path_factory.mktemp("no_torch"))


@pytest.mark.parametrize("name,tool,args,words", TORCH_FREE_CASES, ids=[c[0] for c in TORCH_FREE_CASES])
def test_torch_free_install_names_the_extra(name, tool, args, words, assets, tmp_path, no_torch):
    before = snapshot(tmp_path, assets)
    argv = shlex.split(args.format(a=assets, t=tmp_path))
    proc = subprocess.run([sys.executable, "-m", MODULES[tool], *argv], capture_output=True, text=True, timeout=120,
                          env=no_torch, cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr
    line = assert_one_line_error(proc.stderr, words)
    assert "pip install 'cminet[train]'" in line
    assert snapshot(tmp_path, assets) == before


def test_torch_free_fuse_refuses_a_bad_image_in_one_line(assets, tmp_path, no_torch):
    proc = subprocess.run([sys.executable, "-m", "cminet.cli", "fuse", str(assets / "mri.png"),
                           str(assets / "truncated.png"), "-o", str(tmp_path / "o.png")],
                          capture_output=True, text=True, timeout=120, env=no_torch, cwd=tmp_path)
    assert proc.returncode == 1
    assert_one_line_error(proc.stderr, "truncated PNG")  # and no libpng / OpenCV warning before it
    assert not (tmp_path / "o.png").exists()


def test_names_that_are_not_utf8_do_not_crash_opencv(assets, tmp_path):
    """A method or file name with undecodable bytes (a lone surrogate in Python) segfaulted
    OpenCV when drawn on the comparison sheet; a real process, since a crash would take the
    test runner with it."""
    import shutil

    fused = tmp_path / "fused"
    shutil.copytree(assets / "data" / "ct_mri" / "other", fused / "ct_mri")  # any images of the right size
    argv = [sys.executable, "-m", "cminet.cli", "evaluate", "--data", str(assets / "data"), "--methods", "max",
            os.fsencode("--fused"), os.fsencode(f"odd\udcffname={fused}"), "--out", str(tmp_path / "e")]
    proc = subprocess.run(argv, capture_output=True, timeout=300)
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")[-2000:]
    assert (tmp_path / "e" / "comparison.png").is_file() and b"odd\xffname" in (tmp_path / "e/summary.md").read_bytes()


# -- round two: outputs that are inputs, SIGTERM, model metadata, sidecars, caches ------------
PET_MRI_SAMPLE = badinput_assets.SAMPLES_DIR / "pet_mri/mri/41066.png"
PET_SAMPLE = badinput_assets.SAMPLES_DIR / "pet_mri/other/41066.png"


@pytest.mark.torch_free
def test_fuse_never_writes_over_an_input(tmp_path):
    import shutil

    mri, pet = tmp_path / "m.png", tmp_path / "p.png"
    shutil.copy(PET_MRI_SAMPLE, mri)
    shutil.copy(PET_SAMPLE, pet)
    (tmp_path / "link.png").symlink_to(mri)
    before = mri.read_bytes()
    for output in (mri, tmp_path / "link.png"):
        result = CliRunner().invoke(cminet_main, ["fuse", str(mri), str(pet), "-o", str(output),
                                                  "--backend", "ort-cpu"])
        assert result.exit_code == 1 and "is an input of this command" in result.output, result.output
    assert mri.read_bytes() == before


@pytest.mark.torch_free
def test_sigterm_leaves_no_temporary_or_partial_outputs(tmp_path):
    import signal
    import time

    volumes = Path(__file__).resolve().parents[2] / "shared" / "data" / "volumes"
    mri, pet = volumes / "niivue/MNI152_2009_template.nii.gz", volumes / "spm12/template_PET.nii.gz"
    if not mri.is_file():
        pytest.skip(f"real volumes not found at {volumes}")
    out = tmp_path / "out"
    out.mkdir()
    proc = subprocess.Popen([sys.executable, "-m", "cminet.cli", "fuse-volume", str(mri), str(pet), "--modality",
                             "pet", "-o", str(out / "f.nii.gz"), "--dicom-out", str(out / "dicom"), "--png-dir",
                             str(out / "png"), "--backend", "ort-cpu"], cwd=tmp_path, stderr=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, text=True, env=torch_free_env(tmp_path))
    time.sleep(4.0)  # reading and fusing have begun (the whole run takes 10+ s here)
    proc.send_signal(signal.SIGTERM)
    stderr = proc.communicate(timeout=60)[1]
    assert proc.returncode == 143 and "error: terminated (SIGTERM)" in stderr, stderr[-2000:]
    assert list(out.iterdir()) == []  # no NIfTI, no folders, no staging


@pytest.mark.torch_free
def test_dicom_and_png_folders_get_the_users_permissions(tmp_path):
    from cminet.runtime.volume import Volume, load_volume, save_dicom_series

    mri = Volume(np.arange(24 * 24 * 4, dtype=np.uint32).reshape(24, 24, 4).astype(np.uint8), np.diag([8, 8, 8, 1.0]))
    previous = os.umask(0o022)
    try:
        save_dicom_series(mri, tmp_path / "dicom")
    finally:
        os.umask(previous)
    assert (tmp_path / "dicom").stat().st_mode & 0o777 == 0o755
    assert load_volume(tmp_path / "dicom").shape == mri.shape


def test_model_metadata_is_validated_like_any_input(tmp_path):
    import onnx

    from cminet.runtime import Fuser
    from cminet.runtime.errors import ModelFileError

    for key, value in (("patch_size", 0), ("num_heads", -5), ("channels", 10**9)):
        model = onnx.load(shipped_onnx("fp32"))
        entry = next(p for p in model.metadata_props if p.key == "cminet.config")
        config = __import__("json").loads(entry.value)
        config[key] = value
        entry.value = __import__("json").dumps(config)
        path = tmp_path / f"{key}.onnx"
        onnx.save(model, path)
        with pytest.raises(ModelFileError, match=f"model metadata: {key} = {value}"):
            Fuser(path, backend="ort-cpu")


@pytest.mark.torch_free
def test_a_sidecar_nested_past_the_recursion_limit_is_a_model_file_error(tmp_path):
    from cminet.runtime.backends.tensorrt import read_sidecar
    from cminet.runtime.contract import sidecar_path
    from cminet.runtime.errors import ModelFileError

    engine = tmp_path / "x.engine"
    engine.write_bytes(b"\0" * 64)
    sidecar_path(engine).write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(ModelFileError, match="unreadable sidecar"):
        read_sidecar(engine)


@pytest.mark.torch_free
def test_a_fifo_or_junk_at_the_backend_cache_is_measured_over_not_waited_on(tmp_path, monkeypatch):
    from cminet.runtime.backends import choice
    from cminet.runtime.backends.base import missing_requirement

    if missing_requirement("ov-cpu"):
        pytest.skip("auto measures only where OpenVINO is installed")
    monkeypatch.delenv(choice.OVERRIDE_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    choice.cache_path().parent.mkdir(parents=True)
    os.mkfifo(choice.cache_path())
    measured = []

    def measure(path, threads):
        measured.append(path)
        return {"ort-cpu": 1.0, "ov-cpu": 2.0}

    assert choice.cpu_backend(shipped_onnx("fp32"), 1, measure=measure) == "ort-cpu" and measured
    assert choice.cache_path().is_fifo()  # left alone, never replaced or written into
    os.unlink(choice.cache_path())
    choice.cache_path().write_text("[" * 100_000)  # junk: measured over, then replaced
    assert choice.cpu_backend(shipped_onnx("fp32"), 1, measure=measure) == "ort-cpu" and len(measured) == 2


@pytest.mark.torch_free
def test_openvino_says_its_reason_not_where_it_threw(tmp_path, capfd):
    from cminet.runtime import Fuser
    from cminet.runtime.backends.base import missing_requirement
    from cminet.runtime.errors import ModelFileError

    if missing_requirement("ov-cpu"):
        pytest.skip("pip install 'cminet[openvino]'")
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(shipped_onnx("fp32").read_bytes()[:3000])
    with pytest.raises(ModelFileError) as caught:
        Fuser(truncated, backend="ov-cpu")
    reason = str(caught.value).split("not a loadable ONNX model (", 1)[1]
    assert len(reason) > 10 and "Exception from src" not in reason  # the words differ between OpenVINO releases
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"garbage")
    with pytest.raises(ModelFileError):
        Fuser(garbage, backend="ov-cpu")
    assert capfd.readouterr().err == ""  # no frontend's parse errors on the terminal
