"""Volumes in and out: NIfTI files (nibabel) and DICOM series folders (pydicom + highdicom).

One geometry convention throughout, NIfTI's: :attr:`Volume.data` is indexed (i, j, k) and
:attr:`Volume.affine` maps voxel (i, j, k, 1) to world millimetres in RAS+ (x towards the
patient's right, y anterior, z superior). DICOM's patient frame is LPS+, so DICOM
positions are converted on the way in and back on the way out.

nibabel, pydicom and highdicom come with ``pip install 'cminet[volume]'`` and are imported
only when a volume is read or written, so ``import cminet.runtime.volume`` stays cheap and
torch-free.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ImageError, OutputError, SizeLimitError
from .files import atomic_output, check_new_folder
from .memory import budget_bytes, check_fits, human

NIFTI_SUFFIXES = (".nii", ".nii.gz")
RGB24 = np.dtype([("R", "u1"), ("G", "u1"), ("B", "u1")])  # how nibabel reads and writes NIFTI_TYPE_RGB24
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])  # its own inverse
# Slice positions along the normal may differ from the median spacing by this fraction
# (highdicom's default rtol for "regularly spaced").
SPACING_RTOL = 0.01
ORIENTATION_ATOL = 1e-3  # direction cosines this close (≤ 0.06°): one orientation
NIFTI_XFORM_SCANNER_ANAT = 1
# What the NIfTI header and the DICOM series say about a fused volume.
FUSED_DESCRIPTION = "cminet fused display image, not for quantitation"


class VolumeError(ImageError):
    """A volume that cannot be read or written, or one cminet cannot use."""


class GeometryError(VolumeError):
    """Geometry that is missing, inconsistent, or does not line up between MRI and OTHER."""


@dataclass
class Volume:
    """A 3-D scan in world space.

    ``data``: X×Y×Z scalar values (any real dtype), or X×Y×Z×3 uint8 RGB (a fused PET/SPECT).
    ``affine``: 4×4, voxel (i, j, k, 1) → world RAS+ mm.
    ``modality``: the DICOM Modality (``MR``, ``CT``, ``PT``, ``NM`` ...) where known.
    ``units``: what the values mean where known (``HU``, DICOM PET Units such as ``BQML``).
    ``xform_code``: the NIfTI qform/sform code to write (1 = scanner, 2 = aligned, ...).
    ``dicom``: the header (no pixels) of one instance of the DICOM series it came from: the
    patient and study identity a derived DICOM series keeps.
    ``info``: how it was made (for a fused volume: windows, colour map, timings).
    """

    data: np.ndarray
    affine: np.ndarray
    source: str = "array"
    modality: str | None = None
    units: str | None = None
    xform_code: int = NIFTI_XFORM_SCANNER_ANAT
    dicom: Any = None
    info: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.affine = np.asarray(self.affine, dtype=np.float64)
        if not isinstance(self.data, np.ndarray):
            raise VolumeError(f"{self.source}: expected a numpy array, got {type(self.data).__name__}")
        rgb = self.data.ndim == 4 and self.data.shape[3] == 3 and self.data.dtype == np.uint8
        if self.data.ndim != 3 and not rgb:
            raise VolumeError(f"{self.source}: expected an X×Y×Z volume (or X×Y×Z×3 uint8 RGB), got shape "
                              f"{self.data.shape}")
        if self.data.dtype.kind not in "uif":
            raise VolumeError(f"{self.source}: {self.data.dtype} voxels; expected real numbers")
        if self.affine.shape != (4, 4) or not np.all(np.isfinite(self.affine)):
            raise GeometryError(f"{self.source}: the affine must be a finite 4×4 matrix")
        if abs(np.linalg.det(self.affine[:3, :3])) < 1e-9:
            raise GeometryError(f"{self.source}: the affine is singular (a zero voxel size or two parallel axes)")

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(n) for n in self.data.shape[:3])  # type: ignore[return-value]

    @property
    def is_rgb(self) -> bool:
        return self.data.ndim == 4

    @property
    def spacing(self) -> np.ndarray:
        """Voxel size in mm along i, j, k."""
        return np.linalg.norm(self.affine[:3, :3], axis=0)

    @property
    def axcodes(self) -> str:
        """Closest orientation as NIfTI letters, e.g. ``RAS`` or ``LPS``."""
        return "".join(_need("nibabel").aff2axcodes(self.affine))

    def describe(self) -> str:
        size = "×".join(map(str, self.shape))
        mm = "×".join(f"{s:.3g}" for s in self.spacing)
        return f"{size} voxels of {mm} mm, {self.axcodes}"


# -- optional libraries -------------------------------------------------------------------
def _need(module: str):
    try:
        return importlib.import_module(module)
    except ImportError:
        raise VolumeError(f"volumes need {module.split('.')[0]}: pip install 'cminet[volume]'") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


# -- reading ------------------------------------------------------------------------------
def load_volume(path: str | os.PathLike, role: str = "volume") -> Volume:
    """A NIfTI file (``.nii``, ``.nii.gz``) or a folder holding one DICOM series.

    ``role`` ("MRI", "OTHER") starts every error message, which also names the path."""
    path = Path(path)
    if path.is_dir():
        return read_dicom_series(path, role)
    if not path.exists():
        raise VolumeError(f"{role} {path}: no such file or folder")
    if path.name.lower().endswith(NIFTI_SUFFIXES):
        return read_nifti(path, role)
    raise VolumeError(f"{role} {path}: expected a NIfTI file (.nii, .nii.gz) or a folder holding one DICOM series")


def read_nifti(path: str | os.PathLike, role: str = "volume") -> Volume:
    """A 3-D NIfTI-1/2 volume; the world geometry is the sform where its code is set, else
    the qform (nibabel's rule). Scaling (scl_slope/inter) is applied; NaN/Inf voxels (often
    the outside of a PET field of view) become the lowest finite value."""
    nib = _need("nibabel")
    path = Path(path)
    try:
        img = nib.load(path)
    except Exception as exc:  # nibabel raises several types for foreign and broken files
        raise VolumeError(f"{role} {path}: not a readable NIfTI file ({_first_line(exc)})") from None
    if not isinstance(img, nib.Nifti1Image | nib.Nifti2Image):
        raise VolumeError(f"{role} {path}: a {type(img).__name__}, not NIfTI")
    shape = tuple(int(n) for n in img.shape)
    if len(shape) < 3:
        raise VolumeError(f"{role} {path}: a {len(shape)}-D image of {'×'.join(map(str, shape))}; expected a 3-D "
                          "volume (cminet fuse takes single slices)")
    if any(n > 1 for n in shape[3:]):
        raise VolumeError(f"{role} {path}: a {len(shape)}-D volume of {'×'.join(map(str, shape))} (time points or "
                          "frames); extract one 3-D volume first (e.g. fslroi, or nibabel's image slicer)")
    _check_memory(shape[:3], f"{role} {path}")
    header = img.header
    qform_code, sform_code = int(header["qform_code"]), int(header["sform_code"])
    if qform_code == 0 and sform_code == 0:
        raise GeometryError(f"{role} {path}: qform_code = sform_code = 0, so the header does not say where the "
                            "voxels are in the patient; set a qform or sform (e.g. copy it from the source scan)")
    try:
        data = np.asarray(img.dataobj)  # not get_fdata(): keeps int16 as int16 and RGB as RGB
    except Exception as exc:
        raise VolumeError(f"{role} {path}: cannot read the voxels ({_first_line(exc)}); truncated file?") from None
    if data.dtype.names:
        raise VolumeError(f"{role} {path}: colour ({data.dtype.names}) voxels; expected a scalar volume (for PET "
                          "and SPECT the measured values, not a colour rendering)")
    if data.dtype.kind == "c":
        raise VolumeError(f"{role} {path}: complex voxels; expected real values")
    # float64 (scaled int16) becomes float32: half the memory, overflows cleaned by _checked
    data, affine = _checked(data.reshape(shape[:3]), img.affine, f"{role} {path}")
    return Volume(data, affine, source=str(path), xform_code=sform_code or qform_code)


# A voxel side outside this range (mm) is a broken header, not a scan.
VOXEL_MM = (1e-3, 500.0)
# Working bytes per voxel while a volume is read: the stored values, their float32 copy and
# the scaled float64 nibabel makes on the way (the largest transient).
READ_BYTES_PER_VOXEL = 16


def _checked(data: np.ndarray, affine: np.ndarray, where: str) -> tuple[np.ndarray, np.ndarray]:
    """The one check every reader's result passes: float values finite (NaN/Inf, including a
    scaled value that overflowed float32, become the lowest finite value, with a warning, as
    the outside of a PET field of view usually is), and a voxel size a scan can have."""
    affine = np.asarray(affine, dtype=np.float64)
    if not np.isfinite(affine).all():
        raise GeometryError(f"{where}: the header's geometry holds NaN or Inf")
    sides = np.linalg.norm(affine[:3, :3], axis=0)
    if not ((sides >= VOXEL_MM[0]) & (sides <= VOXEL_MM[1])).all():
        raise GeometryError(f"{where}: voxel size {'×'.join(f'{v:.3g}' for v in sides)} mm; a scan's is between "
                            f"{VOXEL_MM[0]:g} and {VOXEL_MM[1]:g} mm (a broken header)")
    if data.dtype.kind != "f":
        return data, affine
    if data.dtype != np.float32:
        with np.errstate(over="ignore"):  # an overflow becomes Inf, cleaned below
            data = data.astype(np.float32)
    finite = np.isfinite(data)
    if finite.all():
        return data, affine
    if not finite.any():
        raise VolumeError(f"{where}: every voxel is NaN or Inf (a broken scale factor?)")
    bad = int(data.size - np.count_nonzero(finite))
    warnings.warn(f"{where}: {bad:,} voxels are NaN or Inf (outside the field of view, or a scale factor that "
                  "overflows); shown as the lowest value", UserWarning, stacklevel=3)
    return np.where(finite, data, data[finite].min()).astype(np.float32), affine


def _check_deflated(path: Path, where: str) -> None:
    """A Deflated Explicit VR Little Endian file is inflated whole when pydicom reads it, before
    any header can be checked: measure its inflated size first, streaming (a megabyte at a time),
    and refuse one larger than this machine's memory budget. Any other file is left to pydicom."""
    import zlib

    import pydicom

    budget = budget_bytes()
    try:
        meta = pydicom.filereader.read_file_meta_info(path)
        if budget is None or meta.get("TransferSyntaxUID") != pydicom.uid.DeflatedExplicitVRLittleEndian:
            return
        # preamble (128) + "DICM" (4) + the group length element (12) + the rest of group 2
        start = 144 + int(meta.FileMetaInformationGroupLength)
    except Exception:  # noqa: BLE001 - not DICOM, or no file meta: pydicom decides below
        return
    inflate, total = zlib.decompressobj(-zlib.MAX_WBITS), 0
    with open(path, "rb") as stream:
        stream.seek(start)
        while chunk := stream.read(1 << 20):
            while chunk:
                total += len(inflate.decompress(chunk, 1 << 24))
                chunk = inflate.unconsumed_tail
                if total > budget:
                    raise SizeLimitError(f"{where}: a deflated DICOM that inflates past the {human(budget)} available "
                                         "here (a decompression bomb?)")


def _check_memory(shape, where: str) -> None:
    """Refuse, from the header alone, a volume that cannot be read here (before decompressing)."""
    voxels = int(np.prod([int(n) for n in shape], dtype=np.float64))
    check_fits(voxels * READ_BYTES_PER_VOXEL, f"{where}: {'×'.join(map(str, shape))} voxels")


def read_dicom_series(folder: str | os.PathLike, role: str = "volume") -> Volume:
    """See :func:`_read_dicom_series`. pydicom's warnings about values that break the standard
    (person names, dates; several hundred characters each) are silenced: what cminet copies
    into its own output is checked by :func:`clean_identity`, which says what it leaves out."""
    with quiet_dicom_libraries():
        return _read_dicom_series(folder, role)


@contextlib.contextmanager
def quiet_dicom_libraries() -> Iterator[None]:
    """Silence pydicom's and highdicom's warnings about values that break the standard (one
    per person name or date, hundreds of characters each): cminet says in one line what it
    does about the values it uses (:func:`clean_identity`)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", module=r"pydicom(\.|$)")
        warnings.filterwarnings("ignore", module=r"highdicom(\.|$)")
        yield


def _read_dicom_series(folder: str | os.PathLike, role: str = "volume") -> Volume:
    """One DICOM series from ``folder`` (files that are not DICOM images are skipped),
    assembled by highdicom: sorted along the slice normal, Rescale Slope/Intercept applied
    per slice. Several series, several orientations, repeated or missing slices and
    unequal spacing are refused, naming the series or slices. A folder holding one
    multi-frame NM file is read as a reconstructed SPECT volume."""
    pydicom = _need("pydicom")
    hd = _need("highdicom")
    folder = Path(folder)
    named: list[tuple[str, Any]] = []
    for path in sorted(p for p in folder.iterdir() if p.is_file()):
        _check_deflated(path, f"{role} {path}")
        try:
            ds = pydicom.dcmread(path)
        except MemoryError:  # never "not DICOM": a deflated bomb, or a file larger than memory
            raise SizeLimitError(f"{role} {path}: does not fit in this machine's memory when read "
                                 "(a compressed DICOM that inflates too far?)") from None
        except Exception:  # not DICOM (README, .json, DICOMDIR without pixels are all fine to skip)
            continue
        if "PixelData" in ds:
            named.append((path.name, ds))
    if not named:
        raise VolumeError(f"{role} {folder}: no DICOM images in this folder (give the folder of one series)")
    if len(named) == 1 and str(named[0][1].get("Modality", "")) == "NM":
        return _read_nm_tomo(*named[0], folder, role)
    _check_series(named, folder, role)
    where = f"{role} {folder}"
    _check_memory((int(named[0][1].get("Columns", 0) or 0), int(named[0][1].get("Rows", 0) or 0), len(named)), where)
    datasets = [ds for _, ds in named]
    try:
        vol = hd.get_volume_from_series(datasets, dtype=np.float32, rtol=SPACING_RTOL,
                                        orientation_tol=ORIENTATION_ATOL)
    except Exception as exc:
        raise VolumeError(f"{role} {folder}: highdicom cannot assemble the series: {_first_line(exc)}") from None
    # highdicom: array (slice, row, column), affine from those indices to LPS, slices in
    # whichever direction keeps that index order right-handed. Ours, as dcm2niix writes it:
    # (column, row, slice) = (i, j, k) to RAS, k rising along the slice normal.
    array, affine_lps = vol.array, vol.affine
    iop = np.asarray(datasets[0].ImageOrientationPatient, dtype=float)
    if affine_lps[:3, 0] @ np.cross(iop[:3], iop[3:]) < 0:
        flip = np.diag([-1.0, 1.0, 1.0, 1.0])
        flip[0, 3] = array.shape[0] - 1
        array, affine_lps = array[::-1], affine_lps @ flip
    data, affine = _checked(np.ascontiguousarray(array.transpose(2, 1, 0)),
                            LPS_TO_RAS @ affine_lps[:, [2, 1, 0, 3]], where)
    first = datasets[0]
    header = first.copy()
    del header.PixelData
    modality = str(first.get("Modality", "")) or None
    units = "HU" if modality == "CT" else (str(first.get("Units", "")) or None)
    return Volume(data, affine, source=str(folder), modality=modality, units=units, dicom=header)


def _read_nm_tomo(name: str, ds, folder: Path, role: str) -> Volume:
    """A reconstructed SPECT volume stored the NM way: one multi-frame file whose frames are
    the slices, placed by the Detector Information Sequence (position and orientation of the
    first frame) and Spacing Between Slices, frame f at position + f·spacing·normal."""
    where = f"{role} {folder / name}"
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    slices = int(ds.get("NumberOfSlices", frames) or frames)
    if frames != slices:
        raise VolumeError(f"{where}: {frames} frames for {slices} slices (gated or dynamic SPECT, i.e. 4-D); "
                          "extract one 3-D volume first")
    detector = (ds.get("DetectorInformationSequence") or [None])[0]
    spacing = ds.get("SpacingBetweenSlices") or ds.get("SliceThickness")
    missing = []
    if detector is None or "ImagePositionPatient" not in detector or "ImageOrientationPatient" not in detector:
        missing.append("position/orientation in the Detector Information Sequence")
    if not spacing:
        missing.append("SpacingBetweenSlices")
    if "PixelSpacing" not in ds:
        missing.append("PixelSpacing")
    if frames < 2 or missing:
        what = f"no {', '.join(missing)}" if missing else "a single frame"
        raise GeometryError(f"{where}: an NM image with {what}, so not a reconstructed SPECT volume (projections?)")
    if int(ds.get("SamplesPerPixel", 1)) != 1:
        raise VolumeError(f"{where}: a colour image; expected a scalar volume")
    _check_memory((int(ds.Columns), int(ds.Rows), frames), where)
    from pydicom.pixels import apply_modality_lut

    iop = np.asarray(detector.ImageOrientationPatient, dtype=float)
    row_dir, col_dir = iop[:3], iop[3:]
    row_spacing, col_spacing = (float(v) for v in ds.PixelSpacing)
    affine_lps = np.eye(4)
    affine_lps[:3, 0] = row_dir * col_spacing  # i: along a row
    affine_lps[:3, 1] = col_dir * row_spacing  # j: down a column
    affine_lps[:3, 2] = np.cross(row_dir, col_dir) * abs(float(spacing))
    affine_lps[:3, 3] = np.asarray(detector.ImagePositionPatient, dtype=float)
    values = np.asarray(apply_modality_lut(ds.pixel_array, ds), dtype=np.float32).reshape(frames, ds.Rows, ds.Columns)
    header = ds.copy()
    del header.PixelData
    data, affine = _checked(np.ascontiguousarray(values.transpose(2, 1, 0)), LPS_TO_RAS @ affine_lps, where)
    return Volume(data, affine, source=str(folder), modality="NM", units=str(ds.get("Units", "")) or None,
                  dicom=header)


def _check_series(named: list[tuple[str, Any]], folder: Path, role: str) -> None:
    """The refusals a slice stack needs, each naming what is wrong."""
    where = f"{role} {folder}"
    series: dict[str, list[tuple[str, Any]]] = {}
    for name, ds in named:
        series.setdefault(str(ds.get("SeriesInstanceUID", "?")), []).append((name, ds))
    if len(series) > 1:
        parts = [f"{uid} ({len(items)} images, {str(items[0][1].get('SeriesDescription', '')) or 'no description'})"
                 for uid, items in list(series.items())[:4]]
        raise VolumeError(f"{where}: {len(series)} series mixed in one folder: {'; '.join(parts)}; "
                          "put each series in its own folder")
    for name, ds in named:
        if int(ds.get("NumberOfFrames", 1) or 1) > 1:
            raise VolumeError(f"{where}: {name} is a multi-frame (enhanced) image, mixed with other files or not NM; "
                              "convert it to one file per slice or to NIfTI (e.g. dcm2niix)")
        if int(ds.get("SamplesPerPixel", 1)) != 1:
            raise VolumeError(f"{where}: {name} is a colour image; expected a scalar series")
        missing = [k for k in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing",
                               "FrameOfReferenceUID") if k not in ds]
        if missing:
            raise GeometryError(f"{where}: {name} has no {', '.join(missing)}, so its place in the patient is "
                                "unknown (not a tomographic slice?)")
    if len(named) < 2:
        raise GeometryError(f"{where}: one slice ({named[0][0]}); a volume needs at least 2")

    orientations = np.array([[float(v) for v in ds.ImageOrientationPatient] for _, ds in named])
    odd = np.flatnonzero(np.abs(orientations - orientations[0]).max(axis=1) > ORIENTATION_ATOL)
    if odd.size:
        other = named[odd[0]][0]
        raise GeometryError(f"{where}: mixed slice orientations: {named[0][0]} is {_fmt(orientations[0])}, "
                            f"{other} is {_fmt(orientations[odd[0]])} ({odd.size} of {len(named)} slices differ "
                            "from the first); one orientation per series")
    row, col = orientations[0, :3], orientations[0, 3:]
    normal = np.cross(row, col)
    positions = np.array([[float(v) for v in ds.ImagePositionPatient] for _, ds in named])
    along = positions @ normal
    order = np.argsort(along, kind="stable")
    along, positions = along[order], positions[order]
    names = [f"{named[i][0]} ({along[n]:.4g} mm)" for n, i in enumerate(order)]
    gaps = np.diff(along)
    spacing = float(np.median(gaps))
    repeated = np.flatnonzero(gaps < 1e-3 * max(spacing, 1e-3))
    if repeated.size:
        n = repeated[0]
        raise GeometryError(f"{where}: slices {names[n]} and {names[n + 1]} are at the same position "
                            f"({repeated.size} repeats; several echoes, phases or time points in one series?)")
    uneven = np.flatnonzero(np.abs(gaps - spacing) > SPACING_RTOL * spacing)
    if uneven.size:
        n = uneven[0]
        hint = "a missing slice?" if gaps[n] > spacing else "an extra slice?"
        raise GeometryError(f"{where}: slice spacing is not uniform: {spacing:.4g} mm between most slices but "
                            f"{gaps[n]:.4g} mm between {names[n]} and {names[n + 1]} ({hint}); "
                            f"{uneven.size} uneven gap(s)")
    travel = positions[-1] - positions[0]
    if abs(abs(travel @ normal) - np.linalg.norm(travel)) > 1e-3 * np.linalg.norm(travel):
        raise GeometryError(f"{where}: the slices are not stacked along their normal (gantry tilt?); resample "
                            "the series to an orthogonal grid first")


def _fmt(values: np.ndarray) -> str:
    return "[" + ", ".join(f"{v:.3g}" for v in values) + "]"


# -- writing ------------------------------------------------------------------------------
def check_nifti_path(path: str | os.PathLike) -> Path:
    path = Path(path)
    if not path.name.lower().endswith(NIFTI_SUFFIXES):
        raise VolumeError(f"output {path}: expected a .nii or .nii.gz file name")
    if path.is_dir():
        raise VolumeError(f"output {path}: is a folder")
    return path


def nifti_order(data: np.ndarray) -> np.ndarray:
    """The same X×Y×Z[×C] array laid out in memory as NIfTI stores it (x fastest, colour
    channels interleaved per voxel), so writing it is a straight copy: without this,
    nibabel re-orders a 256×256×150 RGB volume element by element (~0.6 s)."""
    axes = (2, 1, 0, 3)[: data.ndim]
    return np.ascontiguousarray(data.transpose(axes)).transpose(axes)


def save_nifti(volume: Volume, path: str | os.PathLike) -> Path:
    """Write ``volume`` as NIfTI-1 (gzip when the name ends in .gz), atomically: uint8 grey,
    or RGB24 for an RGB volume. qform and sform both carry the affine and its code."""
    nib = _need("nibabel")
    path = check_nifti_path(path)
    data = nifti_order(volume.data)  # no copy when it already is (fuse_volume's output)
    if volume.is_rgb:
        data = data.transpose(2, 1, 0, 3).view(RGB24)[..., 0].T
    img = nib.Nifti1Image(data, volume.affine)
    img.set_sform(volume.affine, code=volume.xform_code)
    img.set_qform(volume.affine, code=volume.xform_code)
    header = img.header
    header.set_xyzt_units("mm")
    header["descrip"] = FUSED_DESCRIPTION.encode()[:79] if volume.info.get("fused") else b""
    if data.dtype == np.uint8:
        header["cal_min"], header["cal_max"] = 0, 255
    gz = path.name.lower().endswith(".gz")
    with atomic_output(path) as tmp:
        # nibabel picks compression from the file name, and the temporary name ends in .tmp.
        # compresslevel 1 is nibabel's own default for .nii.gz.
        import gzip

        with (gzip.open(tmp, "wb", compresslevel=1) if gz else open(tmp, "wb")) as stream:
            img.to_stream(stream)
    return path


def check_output_folder(folder: str | os.PathLike, what: str) -> Path:
    """A folder to create: absent or empty (a derived series never mixes with other files), in a
    writable parent (:func:`~cminet.runtime.files.check_new_folder`), named as ``what``."""
    try:
        return check_new_folder(folder)
    except OutputError as exc:
        raise VolumeError(f"{what} {exc}") from None


def save_dicom_series(volume: Volume, folder: str | os.PathLike, description: str = FUSED_DESCRIPTION,
                      series_description: str | None = None) -> list[Path]:
    """Write ``volume`` as a DICOM Secondary Capture series, one instance per k-slice.

    Patient and study identity come from ``volume.dicom`` (the MRI series' header) when
    there is one; the series gets a new SeriesInstanceUID, every instance a new
    SOPInstanceUID, ImageType DERIVED\\SECONDARY. The SC IOD has no Image Plane module, so
    position, orientation, spacing and the MRI's Frame of Reference are added as Standard
    Extended SOP Class attributes: viewers that read them stack and overlay the series on
    the MRI. The folder appears complete or not at all."""
    hd = _need("highdicom")
    pydicom = _need("pydicom")
    folder = check_output_folder(folder, "DICOM output")
    lps = LPS_TO_RAS @ volume.affine
    step_i, step_j, step_k = lps[:3, 0], lps[:3, 1], lps[:3, 2]
    col_spacing, row_spacing = float(np.linalg.norm(step_i)), float(np.linalg.norm(step_j))
    row_dir, col_dir = step_i / col_spacing, step_j / row_spacing
    if abs(row_dir @ col_dir) > 1e-3:
        raise GeometryError(f"{volume.source}: the i and j axes are not perpendicular (a sheared affine); "
                            "DICOM cannot store that")
    normal = np.cross(row_dir, col_dir)
    slice_spacing = float(abs(step_k @ normal))
    reference = volume.dicom
    series_uid = pydicom.uid.generate_uid()
    frame_of_reference = (str(reference.FrameOfReferenceUID) if reference is not None and "FrameOfReferenceUID"
                          in reference else pydicom.uid.generate_uid())
    series_number = int(reference.get("SeriesNumber", 0) or 0) + 1000 if reference is not None else 1000
    rgb = volume.is_rgb
    orientation = (_orientation_letter(row_dir), _orientation_letter(col_dir))
    common = dict(photometric_interpretation="RGB" if rgb else "MONOCHROME2", bits_allocated=8,
                  coordinate_system="PATIENT", series_instance_uid=series_uid, series_number=series_number,
                  manufacturer="cminet", pixel_spacing=(row_spacing, col_spacing), patient_orientation=orientation,
                  transfer_syntax_uid=pydicom.uid.ExplicitVRLittleEndian)
    identity = clean_identity(reference)

    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}."))
    os.chmod(staging, 0o777 & ~_umask())  # mkdtemp's 0700 would outlive the rename: a folder like any other
    written = []
    try:
        for k in range(volume.shape[2]):
            pixels = np.ascontiguousarray(np.swapaxes(volume.data[:, :, k], 0, 1))  # rows = j, columns = i
            options = dict(pixel_array=pixels, sop_instance_uid=pydicom.uid.generate_uid(), instance_number=k + 1,
                           **common)
            with quiet_dicom_libraries():  # clean_identity has said what matters
                ds = hd.sc.SCImage(**options, **identity)
            position = lps @ np.array([0.0, 0.0, k, 1.0])
            ds.ImageType = ["DERIVED", "SECONDARY"]
            ds.SeriesDescription = (series_description or description)[:64]
            ds.ImageComments = description
            ds.DerivationDescription = description
            ds.BurnedInAnnotation = "NO"
            ds.FrameOfReferenceUID = frame_of_reference
            ds.ImagePositionPatient = [_ds(v) for v in position[:3]]
            ds.ImageOrientationPatient = [_ds(v) for v in (*row_dir, *col_dir)]
            ds.SliceThickness = _ds(slice_spacing)
            ds.SpacingBetweenSlices = _ds(slice_spacing)
            ds.SliceLocation = _ds(float(position[:3] @ normal))
            target = staging / f"IM{k + 1:04d}.dcm"
            ds.save_as(target, enforce_file_format=True)
            written.append(folder / target.name)
        if folder.exists():
            folder.rmdir()  # empty (checked above): the finished series takes its place
        os.replace(staging, folder)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return written


# Patient and study identity a derived series copies from its source, with the VR each has and,
# where the standard enumerates the values, those values.
_IDENTITY = (("PatientID", "patient_id", "LO"), ("PatientName", "patient_name", "PN"),
             ("PatientBirthDate", "patient_birth_date", "DA"), ("PatientSex", "patient_sex", "CS"),
             ("AccessionNumber", "accession_number", "SH"), ("StudyID", "study_id", "SH"),
             ("StudyDate", "study_date", "DA"), ("StudyTime", "study_time", "TM"),
             ("ReferringPhysicianName", "referring_physician_name", "PN"))
_ENUMERATED = {"PatientSex": ("M", "F", "O")}


def clean_identity(reference) -> dict[str, Any]:
    """Patient and study identity for a derived series, from ``reference`` (the MRI series'
    header; None: a new anonymous study). Scanners write invalid values (PatientSex '0000',
    dates like '20201301', over-long names): each invalid attribute is left out, with one
    ``warning:`` line naming it, so the output validates. A missing or invalid
    StudyInstanceUID gets a new one (the series must belong to a study)."""
    import pydicom

    identity: dict[str, Any] = {"patient_id": "", "patient_name": ""}
    study_uid = str(reference.get("StudyInstanceUID", "") or "") if reference is not None else ""
    if reference is not None and not _valid("UI", study_uid):
        warnings.warn(f"MRI header: StudyInstanceUID {study_uid!r} is not a valid UID; the fused series gets a "
                      "new study", UserWarning, stacklevel=2)
    identity["study_instance_uid"] = study_uid if _valid("UI", study_uid) else pydicom.uid.generate_uid()
    if reference is None:
        return identity
    for keyword, argument, vr in _IDENTITY:
        element = reference.get(keyword)
        if element is None or str(element).strip() == "":
            continue
        value = str(element).strip()
        allowed = _ENUMERATED.get(keyword)
        valid = value in allowed if allowed else _valid(vr, value)
        if vr == "DA" and valid:
            try:
                datetime.strptime(value, "%Y%m%d")
            except ValueError:
                valid = False
        if not valid:
            what = f"one of {', '.join(allowed)}" if allowed else f"a valid {vr} value"
            warnings.warn(f"MRI header: {keyword} {value[:40]!r} is not {what}; left out of the DICOM output",
                          UserWarning, stacklevel=2)
            continue
        identity[argument] = value
    return identity


def _valid(vr: str, value: str) -> bool:
    from pydicom import config, valuerep

    if not value:
        return False
    try:
        valuerep.validate_value(vr, value, config.RAISE)
    except (ValueError, KeyError):
        return False
    return True


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _ds(value: float) -> str:
    """A DICOM Decimal String (≤ 16 characters), to 0.1 µm: NIfTI stores float32, whose
    last digits (1.200000048 for 1.2) are noise."""
    text = f"{round(float(value), 4):.10g}"
    return text if len(text) <= 16 else f"{value:.6g}"


def _orientation_letter(direction: np.ndarray) -> str:
    """The patient direction (LPS letters L/R, P/A, H/F) a unit vector points closest to."""
    axis = int(np.argmax(np.abs(direction)))
    positive = direction[axis] > 0
    return ("L", "P", "H")[axis] if positive else ("R", "A", "F")[axis]
