"""``Fuser``: what a device application embeds. numpy in, numpy out, no torch.

    from cminet.runtime import Fuser
    fused = Fuser().fuse(mri_u8, pet_rgb_u8)        # the shipped FP32 ONNX on ONNX Runtime
    with Fuser("cminet_fp16.engine") as fuser:      # or any exported .onnx / .engine
        fused = fuser.fuse(mri_u8, pet_rgb_u8)      # uint8 RGB with PET colours restored

Every argument and input is checked (dtype, rank, channels, sizes, NaN/Inf, the engine's
profile, memory) and a bad one raises a ``ValueError`` subclass from
:mod:`cminet.runtime.errors` naming the argument, before any GPU work; every output is
checked against the contract (shape, dtype) after each run. An image too large to fuse
whole in this machine's memory (or the engine's profile) is fused in overlapping tiles with
blended seams (:mod:`cminet.runtime.tiling`); the network runs only on the part of an image
that holds the head (:mod:`cminet.runtime.content`). Pre/post-processing is
:mod:`cminet.runtime.imaging`, shared by every backend.
"""

from __future__ import annotations

import os
import platform
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .backends.base import Backend, BackendUnavailable, open_backend
from .colour import check_colour_mode
from .content import COMPILED_SHAPE_STEP, Box, content_box, run_on_content, token_grid, union
from .contract import (
    AUTO,
    AUTO_BACKEND,
    BACKEND_CHOICES,
    BACKENDS,
    IO_RANK,
    MODEL_KINDS,
    ORT_OPTIMIZATION_LEVELS,
    PRECISIONS,
    ContractError,
    model_kind,
    shipped_onnx,
)
from .errors import CMINetError, ImageError, ModelFileError, SizeLimitError, first_line
from .imaging import finish_fused, prepare_pair
from .memory import BUDGET_FRACTION, NetworkShape, check_fits
from .tiling import SizePolicy, TilePlan, parse_tile, run_tiled

DEFAULT_BATCH_LIMIT = 16  # pairs per run when the model has no profile limit


def _choice(name: str, value, accepted) -> None:
    if not isinstance(value, str) or value not in accepted:
        raise ContractError(f"{name}: expected one of {', '.join(accepted)}, got {value!r}")


def _whole(value) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool)


def resolve_backend(kind: str, backend: str, path: Path | None = None, threads: int | None = None) -> str:
    """The backend ``auto`` means for a model of ``kind`` (at ``path``), or a clear refusal
    when ``backend`` cannot run that kind of model."""
    if backend == AUTO:
        if kind in AUTO_BACKEND:
            return AUTO_BACKEND[kind]
        from .backends.onnxruntime import best_onnx_backend

        best = best_onnx_backend()
        if best == "ort-cpu" and path is not None:  # on a CPU: ONNX Runtime or OpenVINO, measured
            from .backends.choice import cpu_backend

            return cpu_backend(path, threads)
        return best
    runs = BACKENDS[backend].runs
    if runs != kind:
        raise BackendUnavailable(f"backend {backend!r} runs {MODEL_KINDS[runs]}, not {MODEL_KINDS[kind]}")
    return backend


class Fuser:
    """Fuse MRI with CT / PET / SPECT: one entry point for every kind of model.

    Args:
        source: an exported ``.onnx`` (ONNX Runtime or OpenVINO) or ``.engine`` (TensorRT),
            a PyTorch ``.safetensors`` checkpoint (the torch backends; needs ``[train]``), an
            ``http(s)://HOST:PORT[/MODEL]`` Triton server (``cminet serve``; needs ``[triton]``),
            or an opened :class:`~cminet.runtime.backends.base.Backend`. Default: the ONNX
            shipped with cminet in ``precision``.
        backend: ``auto`` (engine → tensorrt; checkpoint → torch-cpu; URL → triton; ONNX →
            ort-cuda if available, else ort-cpu, or ov-cpu where OpenVINO is installed and
            measured faster on this model and CPU: :mod:`cminet.runtime.backends.choice`) or a
            name from :data:`cminet.runtime.contract.BACKENDS`.
        precision: ``fp32`` or ``fp16``: which shipped ONNX to load without ``source``; with
            one, what the model must be (refused when the file says otherwise), or what the
            torch backends cast to.
        device: CUDA device index. threads: CPU threads. optimization: ONNX Runtime graph
            optimisation level (disable, basic, extended, all). options: what one backend
            takes beyond these, e.g. ``{"cuda_graphs": False}`` or ``{"compile": True}`` for the
            torch backends (:func:`~cminet.runtime.backends.base.backend_options` lists them).
        colour: ``balanced`` (the colour hold) or ``strict`` (the functional colour scale kept
            first: :func:`~cminet.runtime.colour.keep_colour_scale`); CT is the same in both.
        skip_air: run the network only on the box of each image (or batch) that holds the head
            and give ``max(MRI, OTHER)`` around it, as a max-residual CMINet does there
            (:mod:`cminet.runtime.content`); False runs every pixel. :meth:`infer` always runs
            the input as given.

    An option the chosen backend cannot honour is refused, never ignored. Bad arguments
    raise :class:`~cminet.runtime.contract.ContractError` (a ``ValueError``) naming the
    argument; an unusable model file raises :class:`~cminet.runtime.errors.ModelFileError`.
    """

    def __init__(self, source: str | os.PathLike | Backend | None = None, backend: str = AUTO,
                 precision: str | None = None, device: int | None = None, threads: int | None = None,
                 optimization: str | None = None, options: dict | None = None, colour: str = "balanced",
                 skip_air: bool = True):
        self._backend: Backend | None = None
        self.colour = check_colour_mode(colour)
        if not isinstance(skip_air, bool):
            raise ContractError(f"skip_air: expected True or False, got {skip_air!r}")
        self.skip_air = skip_air
        self.last_plan: TilePlan | None = None  # the tiles of the last fuse(), None when fused whole
        if isinstance(source, Backend):
            self.path: Path | str = f"<{source.name} backend>"
            self._backend = source
            self._check_metadata()
            return
        _choice("backend", backend, BACKEND_CHOICES)
        if precision is not None:
            _choice("precision", precision, PRECISIONS)
        if optimization is not None:
            _choice("optimization", optimization, ORT_OPTIMIZATION_LEVELS)
        if device is not None and (not _whole(device) or device < 0):
            raise ContractError(f"device: expected a CUDA device index ≥ 0, got {device!r}")
        if threads is not None and (not _whole(threads) or threads < 1):
            raise ContractError(f"threads: expected None (all cores) or a whole number ≥ 1, got {threads!r}")
        if source is None:
            source = shipped_onnx(precision or "fp32")
            if not source.is_file():
                raise ModelFileError(f"{source}: the shipped ONNX is missing; reinstall cminet")
        elif not isinstance(source, str | os.PathLike) or str(source) == "":
            raise ContractError(f"source: expected a model file path (.onnx, .engine, .safetensors) or a server "
                                f"URL, got {source!r}")
        kind = model_kind(source)
        if kind == "url":
            self.path = str(source)
        else:
            path = Path(source)
            if not path.is_file():
                raise ModelFileError(f"{path}: no such model file" if not path.exists() else f"{path}: not a file")
            if path.stat().st_size == 0:
                raise ModelFileError(f"{path}: empty file")
            check_fits(path.stat().st_size, f"{path}: a model file of {path.stat().st_size:,} bytes")
            self.path = path
        name = resolve_backend(kind, backend, self.path if kind == "onnx" else None, threads)  # type: ignore[arg-type]
        if options is not None and not isinstance(options, dict):
            raise ContractError(f"options: expected a dict of backend options, got {type(options).__name__}")
        self._backend = open_backend(name, self.path, device=device, threads=threads, optimization=optimization,
                                     precision=precision, **(options or {}))
        self._check_metadata()

    def _check_metadata(self) -> None:
        """The model's recorded config (which sizes memory and tiles) is an input like any other."""
        try:
            self.size_policy()
            # The token grid content boxes align to; None (slices run whole) without skip_air
            # or for a model not known to be a max-residual CMINet.
            self._grid = token_grid(getattr(self._backend, "config_json", None)) if self.skip_air else None
            self._step = COMPILED_SHAPE_STEP if getattr(self._backend, "compiles_per_shape", False) else None
        except ContractError as exc:
            self.close()
            raise ModelFileError(f"{self.path}: {exc}") from None

    @property
    def skips_air(self) -> bool:
        """Whether :meth:`fuse` and friends run the network on content boxes (``skip_air`` and a
        model known to be a max-residual CMINet)."""
        return self._grid is not None

    @property
    def backend(self) -> Backend:
        if self._backend is None:
            raise RuntimeError("this Fuser is closed")
        return self._backend

    # -- the raw network call ------------------------------------------------------------
    def infer(self, mri: np.ndarray, other: np.ndarray) -> np.ndarray:
        """The network on float N×1×H×W arrays in [0, 1]; returns float32 N×1×H×W."""
        if isinstance(mri, np.ndarray) and mri.ndim == IO_RANK:
            n, _, height, width = mri.shape
            if n and height and width:
                self.size_policy().check_whole(n, height, width)
        try:
            return self.backend.run(mri, other)
        except CMINetError:
            raise
        except MemoryError:
            raise SizeLimitError(f"{self.path}: out of memory for input {'×'.join(map(str, mri.shape))}; "
                                 "fuse() tiles large images") from None
        except Exception as exc:  # ORT / TensorRT raise their own types for a graph that cannot run this input
            raise ModelFileError(f"{self.path}: {self.backend.name} failed on input "
                                 f"{'×'.join(map(str, mri.shape))} ({first_line(exc)})") from None

    def size_policy(self) -> SizePolicy:
        """What fits in this machine's memory now and within the model's profile."""
        b = self.backend
        shape = NetworkShape.from_config_json(getattr(b, "config_json", None))
        top = b.profile.max
        free = b.device_free_bytes()  # a GPU backend: its device's free memory is the budget
        budget = int(free * BUDGET_FRACTION) if free is not None else None
        # Tiles run one per call unless an engine profile offers batches (its memory is fixed
        # at its maximum shape anyway); on a CPU batching adds memory, not speed.
        return SizePolicy(b.name, b.precision, shape, max_side=min(top[1], top[2]) if top else None,
                          max_batch=min(top[0], DEFAULT_BATCH_LIMIT) if top else 1, budget=budget,
                          where="on the GPU" if free is not None else "here")

    def _network(self, mri: np.ndarray, other: np.ndarray, tile) -> np.ndarray:
        """Float H×W pair → float32 H×W: the network on its content, whole or in tiles
        (``self.last_plan``)."""
        self.last_plan = None
        return run_on_content(lambda a, b: self._whole_or_tiles(a[0], b[0], tile)[None], mri, other, self._grid,
                              self._step)

    def _whole_or_tiles(self, mri: np.ndarray, other: np.ndarray, tile) -> np.ndarray:
        policy = self.size_policy()
        self.last_plan = plan = policy.plan(*mri.shape, tile)
        if plan is None:
            return self.infer(mri[None, None], other[None, None])[0, 0]
        return run_tiled(self.infer, mri, other, plan, batch=policy.batch_for(plan))

    def fuse_slices(self, mri: np.ndarray, other: np.ndarray, tile: int | str | None = "auto",
                    box: Box | None = None) -> np.ndarray:
        """The network on N float H×W slices in [0, 1] (N×H×W, a volume's batch): one call
        when they fit together, else slice by slice, each whole or in tiles as in :meth:`fuse`.
        ``box``: with air skipped, the box every slice with content runs on (:meth:`stack_box`)
        instead of its own. Returns float32 N×H×W."""
        tile = parse_tile(tile)
        if not isinstance(mri, np.ndarray) or mri.ndim != 3:
            raise ImageError(f"mri: expected N×H×W slices, got {getattr(mri, 'shape', type(mri).__name__)}")
        return run_on_content(lambda a, b: self._stack(a, b, tile), mri, other, self._grid, self._step, box)

    def stack_box(self, batches) -> Box | None:
        """For a backend that compiles each input shape, with air skipped: one box for a whole
        stack (the union of its slices' boxes; ``batches`` yields (mri, other) N×H×W float
        arrays), so a volume costs one compilation, not one per box size. None otherwise:
        each slice then runs on its own box."""
        if self._grid is None or not self.backend.compiles_per_shape:
            return None
        return union(content_box(m, o, self._grid) for mri, other in batches for m, o in zip(mri, other, strict=True))

    def _stack(self, mri: np.ndarray, other: np.ndarray, tile) -> np.ndarray:
        n, height, width = mri.shape
        policy = self.size_policy()
        if policy.plan(height, width, tile) is None and policy.fits(n, height, width):
            self.last_plan = None
            return self.infer(mri[:, None], other[:, None])[:, 0]
        return np.stack([self._whole_or_tiles(mri[k], other[k], tile) for k in range(n)])

    # -- images in, images out -----------------------------------------------------------
    def fuse(self, mri: np.ndarray, other: np.ndarray, tile: int | str | None = "auto") -> np.ndarray:
        """uint8 MRI (grey) + uint8 CT (grey) or PET/SPECT (RGB) → uint8 grey or RGB.

        ``tile``: ``"auto"`` fuses the image whole when it fits in memory (and the model's
        profile) and in overlapping, blended tiles otherwise; ``"off"`` (or None) refuses
        an image that does not fit; a number forces tiles of that side (≥ 64)."""
        tile = parse_tile(tile)
        pair = prepare_pair(mri, other)
        return finish_fused(self._network(pair.mri, pair.other, tile), pair, self.colour)

    def fuse_batch(self, pairs: Sequence[tuple[np.ndarray, np.ndarray]], tile: int | str | None = "auto"
                   ) -> list[np.ndarray]:
        """Fuse many pairs; pairs of one size run as one batch (split at the profile's N and
        at what fits in memory); a pair too large to fuse whole is tiled as in :meth:`fuse`."""
        tile = parse_tile(tile)
        if isinstance(pairs, np.ndarray | str | bytes) or not isinstance(pairs, Sequence) or not all(
                isinstance(p, tuple | list) and len(p) == 2 for p in pairs):
            raise ContractError("pairs: expected a list of (mri, other) tuples of uint8 arrays")
        prepared = [prepare_pair(m, o) for m, o in pairs]
        results: list[np.ndarray | None] = [None] * len(prepared)
        by_size: dict[tuple[int, int], list[int]] = {}
        for i, p in enumerate(prepared):
            by_size.setdefault(p.mri.shape, []).append(i)
        policy = self.size_policy()
        for (height, width), indices in by_size.items():
            if policy.plan(height, width, tile) is not None:  # too large for one call: tiles, pair by pair
                for i in indices:
                    results[i] = finish_fused(self._network(prepared[i].mri, prepared[i].other, tile), prepared[i],
                                              self.colour)
                continue
            limit = policy.max_batch if self.backend.profile.max else DEFAULT_BATCH_LIMIT
            while limit > 1 and not policy.fits(limit, height, width):
                limit -= 1
            for start in range(0, len(indices), limit):
                chunk = indices[start : start + limit]
                a = np.stack([prepared[i].mri for i in chunk])
                b = np.stack([prepared[i].other for i in chunk])
                out = run_on_content(lambda x, y: self.infer(x[:, None], y[:, None])[:, 0], a, b, self._grid,
                                     self._step)
                for k, i in enumerate(chunk):
                    results[i] = finish_fused(out[k], prepared[i], self.colour)
        return results  # type: ignore[return-value]

    @property
    def info(self) -> dict:
        b = self.backend
        profile = {"min_nhw": list(b.profile.min), "max_nhw": list(b.profile.max) if b.profile.max else None}
        return {"model": str(self.path), "backend": b.name, "precision": b.precision,
                "skip_air": self.skips_air,
                "input_dtype": b.input_dtype.name, "profile": profile, "python": platform.python_version(),
                "numpy": np.__version__, **b.info()}

    def close(self) -> None:
        """Release the session / engine and any GPU memory. Safe to call twice."""
        if self._backend is not None:
            self._backend.close()
            self._backend = None

    def __enter__(self) -> Fuser:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        state = f"{self._backend.name}, {self._backend.precision}" if self._backend else "closed"
        return f"Fuser({str(self.path)!r}, {state})"
