"""A short, seeded fuzz of the loaders: random bytes and mutated PNG / ONNX / safetensors
files. Each input must either load or be refused with a cminet error (a one-line
``ValueError`` subclass); nothing may crash the process (the cases run in a child process,
so a segfault in a native decoder is a failure, not a lost test run), hang (a timeout),
or print to stderr (libpng / OpenCV / ONNX Runtime messages are caught)."""

from __future__ import annotations

import json
import struct
import subprocess
import sys

import numpy as np
import pytest

from cminet.runtime.contract import shipped_onnx

from .badinput_assets import CT, PET, png_chunk

SEED = 12
CASES_PER_KIND = {"random": 40, "png": 120, "onnx": 40, "safetensors": 60}
TIMEOUT_S = 300

LOADER = r"""
import json, sys, time
sys.setrecursionlimit(10_000)
from cminet.runtime.errors import CMINetError
from cminet.runtime.imaging import read_image
from cminet.runtime.backends.onnxruntime import OnnxRuntimeBackend

def load(kind, path):
    if kind in ("random", "png"):
        return read_image(path)
    if kind == "onnx":
        from pathlib import Path
        return OnnxRuntimeBackend(Path(path), "ort-cpu", threads=1, optimization="disable")
    from cminet.checkpoint import load_checkpoint
    return load_checkpoint(path)

results = []
for kind, path in json.load(open(sys.argv[1])):
    started = time.perf_counter()
    try:
        load(kind, path)
        outcome = "loaded"
    except CMINetError as exc:
        outcome = "refused" if "\n" not in str(exc) else "multi-line: " + repr(str(exc))[:200]
    except Exception as exc:
        outcome = f"{type(exc).__name__}: {str(exc)[:200]}"
    results.append({"kind": kind, "path": path, "outcome": outcome, "seconds": time.perf_counter() - started})
print(json.dumps(results))
"""


def _mutate(data: bytes, rng: np.random.Generator, head: int) -> bytes:
    """Flip, overwrite, delete or insert a few bytes, mostly within the first ``head``
    bytes (headers), or truncate."""
    buf = bytearray(data)
    for _ in range(int(rng.integers(1, 6))):
        where = int(rng.integers(0, min(head, len(buf)) if rng.random() < 0.8 else len(buf)))
        action = rng.integers(0, 4)
        if action == 0:
            buf[where] ^= 1 << int(rng.integers(0, 8))
        elif action == 1:
            buf[where] = int(rng.integers(0, 256))
        elif action == 2:
            del buf[where]
        else:
            buf.insert(where, int(rng.integers(0, 256)))
    if rng.random() < 0.2:
        buf = buf[: int(rng.integers(0, len(buf)))]
    return bytes(buf)


def _png_with_crcs_fixed(data: bytes, rng: np.random.Generator) -> bytes:
    """Mutate one chunk's body (IHDR sizes and types included) and recompute its CRC, so the
    structural check passes and the decoder itself meets the bad data."""
    chunks, pos = [], 8
    while pos + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        chunks.append([kind, bytearray(data[pos + 8:pos + 8 + length])])
        pos += 12 + length
    target = chunks[int(rng.integers(0, len(chunks)))]
    if target[1]:
        for _ in range(int(rng.integers(1, 4))):
            target[1][int(rng.integers(0, len(target[1])))] = int(rng.integers(0, 256))
    return data[:8] + b"".join(png_chunk(kind, bytes(body)) for kind, body in chunks)


def _safetensors(rng: np.random.Generator, valid: bytes) -> bytes:
    """A mutated header (lengths, dtypes, shapes, offsets, metadata) in front of the data."""
    (size,) = struct.unpack("<Q", valid[:8])
    header = json.loads(valid[8:8 + size])
    data = valid[8 + size:]
    name = sorted(k for k in header if k != "__metadata__")[int(rng.integers(0, len(header) - 1))]
    choice = int(rng.integers(0, 7))
    if choice == 0:
        header[name]["dtype"] = str(rng.choice(["F16", "I64", "BOOL", "X9", ""]))
    elif choice == 1:
        header[name]["shape"] = [int(v) for v in rng.integers(-3, 10**6, size=int(rng.integers(0, 5)))]
    elif choice == 2:
        begin = int(rng.integers(-10, len(data) + 10))
        header[name]["data_offsets"] = [begin, begin + int(rng.integers(-10, 10**9))]
    elif choice == 3:
        header["__metadata__"]["config"] = json.dumps({"channels": int(rng.integers(-5, 10**7)),
                                                       "patch_size": int(rng.integers(-2, 64))})
    elif choice == 4:
        header["__metadata__"]["config"] = "{" * int(rng.integers(1, 5000))
    elif choice == 5:
        del header[name]
    else:
        return struct.pack("<Q", int(rng.integers(0, 2**63))) + valid[8:]
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + data


@pytest.fixture(scope="module")
def fuzz_cases(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fuzz")
    rng = np.random.default_rng(SEED)
    cases = []

    def add(kind: str, data: bytes, suffix: str) -> None:
        path = folder / f"{kind}{len(cases):03d}{suffix}"
        path.write_bytes(data)
        cases.append((kind, str(path)))

    for _ in range(CASES_PER_KIND["random"]):
        add("random", rng.integers(0, 256, int(rng.integers(0, 2048)), dtype=np.uint8).tobytes(), ".png")
    pngs = [CT.read_bytes(), PET.read_bytes()]
    for i in range(CASES_PER_KIND["png"]):
        source = pngs[i % 2]
        add("png", _png_with_crcs_fixed(source, rng) if i % 3 == 0 else _mutate(source, rng, head=64), ".png")
    onnx_bytes = shipped_onnx("fp16").read_bytes()
    for _ in range(CASES_PER_KIND["onnx"]):
        add("onnx", _mutate(onnx_bytes, rng, head=512), ".onnx")
    pytest.importorskip("torch")
    from .helpers import tiny_checkpoint

    valid = tiny_checkpoint(folder / "valid.safetensors").read_bytes()
    for _ in range(CASES_PER_KIND["safetensors"]):
        add("safetensors", _safetensors(rng, valid), ".safetensors")
    listing = folder / "cases.json"
    listing.write_text(json.dumps(cases))
    return listing


def test_loaders_survive_fuzzed_files(fuzz_cases):
    proc = subprocess.run([sys.executable, "-c", LOADER, str(fuzz_cases)], capture_output=True, text=True,
                          timeout=TIMEOUT_S)
    assert proc.returncode == 0, f"the loader process died (rc {proc.returncode}): {proc.stderr[-2000:]}"
    assert proc.stderr == "", f"native libraries printed to stderr:\n{proc.stderr[:2000]}"
    results = json.loads(proc.stdout)
    assert len(results) == sum(CASES_PER_KIND.values())
    bad = [r for r in results if r["outcome"] not in ("loaded", "refused")]
    assert bad == [], "\n".join(f"{r['path']}: {r['outcome']}" for r in bad)
    refused = {kind: sum(r["outcome"] == "refused" for r in results if r["kind"] == kind) for kind in CASES_PER_KIND}
    assert all(refused.values()), refused  # the mutations really hit the checks
    assert max(r["seconds"] for r in results) < 30


@pytest.mark.torch_free
def test_a_png_header_declaring_too_many_pixels_is_refused_before_decoding(tmp_path):
    from cminet.runtime.errors import SizeLimitError
    from cminet.runtime.imaging import read_image

    from .badinput_assets import png_declaring

    path = tmp_path / "bomb.png"
    path.write_bytes(png_declaring(60_000, 60_000))
    with pytest.raises(SizeLimitError, match="60000×60000"):
        read_image(path)
