"""Size limits derived from memory, and tiling with blended seams for images that do not
fit: the memory model against a measured peak, tiles that cover every pixel with weights
summing to one, a tiled fusion that stays close to the whole-image one, and the CLIs using
both (``cminet fuse`` tiles, ``cminet info`` estimates, ``cminet-bench`` refuses)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from cminet.runtime import memory, tiling
from cminet.runtime.compare import psnr
from cminet.runtime.errors import SizeLimitError
from cminet.runtime.imaging import prepare_pair, read_image

from .badinput_assets import PET, PET_MRI

TILED_PSNR_DB = 38.0  # tiled (and content-cropped) against whole-image fusion


@pytest.mark.torch_free
@pytest.mark.parametrize("height,width,tile", [(4096, 4096, 1024), (1000, 333, 256), (300, 64, 64), (90, 2000, 512)])
def test_tiles_cover_every_pixel_with_overlaps(height, width, tile):
    plan = tiling.plan_tiles(height, width, tile)
    covered = np.zeros((height, width), np.int32)
    for y in plan.ys:
        for x in plan.xs:
            covered[y:y + plan.tile_h, x:x + plan.tile_w] += 1
    assert covered.min() >= 1 and plan.tile_h <= tile and plan.tile_w <= tile
    for origins, tile_side in ((plan.ys, plan.tile_h), (plan.xs, plan.tile_w)):
        gaps = np.diff(origins)
        assert (gaps <= tile_side - plan.overlap).all()  # neighbours overlap by at least `overlap`


@pytest.mark.torch_free
def test_blending_is_exact_for_a_pixelwise_network():
    """Weights normalise to one everywhere, so a network without spatial context (here the
    max rule) gives exactly the whole-image result, seams included."""
    rng = np.random.default_rng(0)
    a, b = rng.random((2, 700, 530), dtype=np.float32)
    plan = tiling.plan_tiles(700, 530, 128)
    assert plan.count > 20
    fused = tiling.run_tiled(lambda x, y: np.maximum(x, y), a, b, plan, batch=3)
    np.testing.assert_allclose(fused, np.maximum(a, b), rtol=0, atol=1e-6)


def _upscaled_pet(size: int):
    import cv2

    mri, pet = (cv2.resize(read_image(p), (size, size), interpolation=cv2.INTER_CUBIC) for p in (PET_MRI, PET))
    return mri, pet


@pytest.mark.torch_free
def test_tiled_fusion_is_close_to_whole_and_seamless():
    """512² PET-MRI in 256² tiles against the same image fused whole (the shipped ONNX):
    43 dB apart, and no seam: where a tile begins or ends, the difference to the whole
    image steps by less than half a grey level on average (measured 0.07-0.16; equal
    weights instead of the ramps step by 1.8-3.1 grey levels there: a visible seam)."""
    from cminet.runtime import Fuser

    mri, pet = _upscaled_pet(512)
    pair = prepare_pair(mri, pet)
    with Fuser(threads=2) as fuser:
        whole = fuser.infer(pair.mri[None, None], pair.other[None, None])[0, 0]
        plan = tiling.plan_tiles(512, 512, 256)
        tiled = tiling.run_tiled(fuser.infer, pair.mri, pair.other, plan)
    assert psnr(whole, tiled) > TILED_PSNR_DB
    for axis, origins, side in ((0, plan.ys, plan.tile_h), (1, plan.xs, plan.tile_w)):
        jumps = np.abs(np.diff(tiled - whole, axis=axis)).mean(axis=1 - axis)  # jumps[i]: between i and i+1
        edges = sorted({o for o in origins[1:]} | {o + side for o in origins[:-1]})
        assert np.mean([jumps[e - 1] for e in edges]) < 0.5 / 255, axis


@pytest.mark.torch_free
def test_fuser_tiles_what_does_not_fit_and_refuses_when_told_not_to(monkeypatch):
    from cminet.runtime import Fuser

    mri, pet = _upscaled_pet(320)
    with Fuser(threads=2) as fuser:
        whole = fuser.fuse(mri, pet)
        assert fuser.last_plan is None
        monkeypatch.setenv(memory.LIMIT_VARIABLE, "110M")  # room for ~224² tiles, not for 320² whole
        tiled = fuser.fuse(mri, pet)
        assert fuser.last_plan is not None and fuser.last_plan.count == 4 and fuser.last_plan.tile_h < 320
        with pytest.raises(SizeLimitError, match="largest square it fuses whole here is"):
            fuser.fuse(mri, pet, tile="off")
        with pytest.raises(SizeLimitError, match="input 1×1×320×320"):
            fuser.infer(*(np.zeros((1, 1, 320, 320), np.float32),) * 2)
        monkeypatch.setenv(memory.LIMIT_VARIABLE, "10M")  # not even the smallest tile
        with pytest.raises(SizeLimitError, match="64×64 tiles"):
            fuser.fuse(mri, pet)
    assert tiled.shape == whole.shape == (320, 320, 3)
    assert psnr(whole.astype(np.float32) / 255, tiled.astype(np.float32) / 255) > 35.0


@pytest.mark.torch_free
def test_an_engine_profile_limits_the_tile_side():
    policy = tiling.SizePolicy("tensorrt", "fp16", max_side=512, max_batch=4)
    plan = policy.plan(2048, 1536)
    assert plan is not None and plan.tile_h == plan.tile_w == 512 and policy.batch_for(plan) == 4
    assert policy.plan(512, 300) is None
    with pytest.raises(SizeLimitError, match="profile allows"):
        policy.plan(600, 600, tile="off")


def test_memory_model_bounds_a_measured_peak():
    """The estimate for ort-cpu FP32 against the peak RSS of a fresh process (above its RSS
    after loading) at 512² (the per-pixel term leads) and 896² (attention leads): never
    below, at most 1.7× above (measured 1.51× and 1.03×)."""
    if not Path("/proc/self/status").exists():
        pytest.skip("needs Linux /proc")
    code = ("import json, numpy as np\n"
            "from cminet.runtime.backends.base import open_backend\n"
            "from cminet.runtime.contract import shipped_onnx\n"
            "def kb(key):\n"
            "    return next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith(key)) * 1024\n"
            "b = open_backend('ort-cpu', shipped_onnx(), threads=2)\n"
            "x = np.zeros((1, 1, 32, 32), np.float32); b.run(x, x)\n"
            "base, working = kb('VmRSS:'), {}\n"
            "for side in (512, 896):\n"
            "    x = np.random.default_rng(0).random((1, 1, side, side), dtype=np.float32); b.run(x, x)\n"
            "    working[side] = kb('VmHWM:') - base\n"
            "print(json.dumps(working))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    for side, measured in json.loads(proc.stdout).items():
        estimate = memory.network_peak_bytes(1, int(side), int(side), "ort-cpu", "fp32")
        assert measured <= estimate <= 1.7 * measured, (side, measured, estimate)


@pytest.mark.torch_free
def test_memory_limit_variable():
    assert memory.parse_bytes("4G", "x") == 4 * 2**30 and memory.parse_bytes("512m", "x") == 512 * 2**20
    assert memory.parse_bytes("1.5GiB", "x") == int(1.5 * 2**30) and memory.parse_bytes("1000", "x") == 1000
    with pytest.raises(ValueError, match="expected a size like 4G"):
        memory.parse_bytes("lots", "CMINET_MAX_MEMORY")


def test_network_shape_defaults_are_the_shipped_config():
    from cminet.model import CMINetConfig

    config, shape = CMINetConfig(), memory.NetworkShape()
    assert (shape.channels, shape.num_heads, shape.patch_size, shape.kv_pool) == (
        config.channels, config.num_heads, config.patch_size, config.kv_pool)
    assert memory.NetworkShape.from_config_json(config.to_json()) == shape
    assert memory.NetworkShape.from_config_json("{not json") == shape


def test_info_estimates_any_size_without_allocating_it():
    from cminet.cli import main

    result = CliRunner().invoke(main, ["info", "--size", "4096x4096"])
    assert result.exit_code == 0, result.output
    assert "GFLOPs" in result.output and "peak memory at 1×4096×4096, ort-cpu fp32" in result.output


def test_bench_refuses_a_size_that_cannot_fit_before_measuring_anything(tmp_path, monkeypatch):
    from cminet.benchmarks.cli import main

    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["--sizes", "512", "--workdir", str(tmp_path / "w")],
                                env={memory.LIMIT_VARIABLE: "200M"})
    assert result.exit_code == 1 and "the largest square it fuses whole here is" in result.stderr
    assert list(tmp_path.iterdir()) == []
