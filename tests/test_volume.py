"""`cminet fuse-volume` and cminet.runtime.volume: NIfTI / DICOM volumes in, fused volumes out.

Every volume is made here: phantoms with known affines on different grids (a hot sphere at a
known world position), DICOM series written with pydicom from them (on pydicom's bundled CT
and MR headers), and pydicom's bundled `dicomdirtests` folders as broken real-world series.
"""

from __future__ import annotations

import copy
import subprocess
import sys
import tracemalloc
from pathlib import Path

import nibabel as nib  # the [volume] extra: a missing one should fail here, not skip
import numpy as np
import pydicom
import pytest
from click.testing import CliRunner
from pydicom.data import get_testdata_file

from cminet.cli import main
from cminet.runtime import Fuser
from cminet.runtime.contract import FUSED_GREY_LEVELS, shipped_onnx
from cminet.runtime.errors import CMINetError
from cminet.runtime.imaging import rgb_to_ycbcr
from cminet.runtime.palettes import apply_palette, palette_lut
from cminet.runtime.volume import (
    CT_WINDOW,
    GeometryError,
    SlicePair,
    Volume,
    VolumeError,
    _fuse_slices,
    fuse_volume,
    load_volume,
    montage,
    save_dicom_series,
    save_nifti,
)
from cminet.runtime.volume_geometry import DISPLAY_AXCODES, Resampler, display_grid
from cminet.runtime.volume_io import LPS_TO_RAS, RGB24
from cminet.runtime.volume_phantom import grid_affine, head_phantom

DICOM_DIRS = Path(get_testdata_file("CT_small.dcm")).parent / "dicomdirtests" / "98892003"
SPHERE = np.array([14.0, -9.0, 7.0])  # world RAS mm, off every axis


# -- fixtures and builders ----------------------------------------------------------------
@pytest.fixture(scope="session")
def model_path(tmp_path_factory) -> Path:
    """The shipped weights as FP32 ONNX: the shipped file where this install has it, else
    exported once per session (so fused colours and intensities are the real ones)."""
    if shipped_onnx("fp32").is_file():
        return shipped_onnx("fp32")
    from cminet.export.onnx_export import export_onnx
    from cminet.fusion import load_pretrained

    # simplify=False: 2-3× quicker to export, and the same network (ORT optimises the graph itself)
    return export_onnx(load_pretrained(), tmp_path_factory.mktemp("volume-model") / "cminet.onnx", simplify=False)


@pytest.fixture(scope="module")
def fuser(model_path):
    with Fuser(model_path, backend="ort-cpu") as opened:
        yield opened


def sphere_volume(shape, spacing, axcodes, value=1000.0, background=0.0, radius=10.0, centre=SPHERE,
                  grid_centre=(0.0, 0.0, 0.0), rotate_deg=0.0) -> Volume:
    """A ball of ``value`` at world ``centre`` on an axis-aligned (or z-rotated) grid."""
    affine = grid_affine(shape, spacing, axcodes, grid_centre)
    if rotate_deg:
        t = np.deg2rad(rotate_deg)
        turn = np.eye(4)
        turn[:2, :2] = [[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]]
        affine = turn @ affine
    ijk = np.indices(shape).reshape(3, -1)
    world = affine[:3, :3] @ ijk + affine[:3, 3:4]
    inside = np.linalg.norm(world - np.asarray(centre)[:, None], axis=0) <= radius
    data = np.where(inside, value, background).reshape(shape).astype(np.float32)
    return Volume(data, affine, source=f"sphere {axcodes}")


def brain_mri(shape=(48, 48, 32), spacing=(4.0, 4.0, 5.0), axcodes="RAS") -> Volume:
    """A flat grey brain in a bright scalp: what the sphere is fused onto (mid-grey once
    windowed, so a bright sphere can show)."""
    head = sphere_volume(shape, spacing, axcodes, value=600.0, background=0.0, radius=80.0, centre=(0, 0, 0))
    brain = sphere_volume(shape, spacing, axcodes, value=1.0, radius=68.0, centre=(0, 0, 0))
    head.data[brain.data > 0] = 300.0
    return head


def linear_volume(shape, affine, gradient=(2.0, -1.5, 0.7), offset=100.0) -> Volume:
    """Values a·x + b·y + c·z + d of the world position: trilinear interpolation is exact on it."""
    ijk = np.indices(shape).reshape(3, -1)
    world = affine[:3, :3] @ ijk + affine[:3, 3:4]
    return Volume((np.asarray(gradient) @ world + offset).reshape(shape).astype(np.float32), affine)


def centroid_world(weights: np.ndarray, affine: np.ndarray) -> np.ndarray:
    ijk = np.indices(weights.shape).reshape(3, -1)
    w = weights.reshape(-1).astype(np.float64)
    return affine[:3, :3] @ (ijk @ w / w.sum()) + affine[:3, 3]


def write_series(volume: Volume, folder: Path, template: str = "CT_small.dcm", modality: str | None = None,
                 slopes=None, intercept: float = 0.0, study=None, series_uid=None, order_seed: int | None = 0,
                 frame: str | None = None, header: dict | None = None) -> Path:
    """``volume`` as a DICOM series on one of pydicom's bundled headers: one file per k-slice,
    named IM<n> with n shuffled (``order_seed``; None: n = k) so that file order is not slice
    order. ``slopes``: a RescaleSlope per slice, as PET series store them. ``frame``: the
    FrameOfReferenceUID (default: a new one); ``header``: attributes to set as given, valid or not."""
    base = pydicom.dcmread(get_testdata_file(template))
    folder.mkdir(parents=True, exist_ok=True)
    lps = LPS_TO_RAS @ volume.affine
    di, dj = np.linalg.norm(lps[:3, 0]), np.linalg.norm(lps[:3, 1])
    series_uid = series_uid or pydicom.uid.generate_uid()
    frame = frame or pydicom.uid.generate_uid()
    depth = volume.shape[2]
    names = np.arange(depth) if order_seed is None else np.random.default_rng(order_seed).permutation(depth)
    for k in range(volume.shape[2]):
        ds = copy.deepcopy(base)
        slope = float(slopes[k]) if slopes is not None else 1.0
        stored = np.rint((volume.data[:, :, k].T - intercept) / slope).astype(np.int16)
        ds.set_pixel_data(stored, photometric_interpretation="MONOCHROME2", bits_stored=16)
        ds.RescaleSlope, ds.RescaleIntercept = f"{slope:.8g}", f"{intercept:.8g}"
        ds.Modality = modality or base.Modality
        ds.SeriesInstanceUID, ds.FrameOfReferenceUID = series_uid, frame
        if study:
            ds.StudyInstanceUID, ds.PatientID, ds.PatientName = study
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = [f"{v:.6f}" for v in lps[:3] @ [0, 0, k, 1]]
        ds.ImageOrientationPatient = [f"{v:.6f}" for v in (*(lps[:3, 0] / di), *(lps[:3, 1] / dj))]
        ds.PixelSpacing = [f"{dj:.6f}", f"{di:.6f}"]
        ds.SliceThickness = f"{abs(lps[2, 2]):.6f}"
        if ds.Modality == "PT":
            ds.Units = "BQML"
        for keyword, value in (header or {}).items():
            if value is None:
                delattr(ds, keyword) if keyword in ds else None
            else:
                setattr(ds, keyword, value)
        ds.save_as(folder / f"IM{names[k]:04d}", enforce_file_format=True)
    return folder


def assert_same_volume(a: Volume, b: Volume) -> None:
    """Same voxels at the same world positions, whatever the voxel order of each."""
    grid_a, grid_b = display_grid(a), display_grid(b)
    np.testing.assert_allclose(grid_a.affine, grid_b.affine, atol=1e-4)
    assert np.array_equal(grid_a.to_display(a.data), grid_b.to_display(b.data))


def rgb_of(voxels: np.ndarray) -> np.ndarray:
    """nibabel's RGB24 voxels (a structured array) as uint8 X×Y×Z×3."""
    return np.stack([voxels["R"], voxels["G"], voxels["B"]], axis=-1)


def write_nm_tomo(volume: Volume, path: Path, gated: bool = False, projections: bool = False) -> Path:
    """``volume`` as a reconstructed SPECT the NM way: one multi-frame file, frames = slices,
    placed by the Detector Information Sequence (k must run along row × column)."""
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    lps = LPS_TO_RAS @ volume.affine
    di, dj, dk = np.linalg.norm(lps[:3, :3], axis=0)
    frames = np.stack([volume.data[:, :, k].T for k in range(volume.shape[2])])
    ds.set_pixel_data(np.rint(frames).astype(np.uint16), photometric_interpretation="MONOCHROME2", bits_stored=16)
    ds.Modality, ds.SOPClassUID = "NM", pydicom.uid.NuclearMedicineImageStorage
    ds.NumberOfSlices = volume.shape[2] // 2 if gated else volume.shape[2]
    for key in ("ImagePositionPatient", "ImageOrientationPatient", "RescaleSlope", "RescaleIntercept"):
        del ds[key]
    detector = pydicom.Dataset()
    if not projections:
        detector.ImagePositionPatient = [f"{v:.6f}" for v in lps[:3, 3]]
        detector.ImageOrientationPatient = [f"{v:.6f}" for v in (*(lps[:3, 0] / di), *(lps[:3, 1] / dj))]
    ds.DetectorInformationSequence = [detector]
    ds.PixelSpacing, ds.SpacingBetweenSlices = [f"{dj:.6f}", f"{di:.6f}"], f"{dk:.6f}"
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path.parent


def run_cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def one_line_error(result) -> str:
    assert result.exit_code == 1, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    return lines[0]


# -- geometry -----------------------------------------------------------------------------
@pytest.mark.torch_free
@pytest.mark.parametrize("axcodes", ["RAS", "LAS", "LPS", "PIR", "ASL"])
def test_display_order_round_trip_is_exact(axcodes):
    volume = Volume(np.random.default_rng(0).random((7, 9, 5), dtype=np.float32),
                    grid_affine((7, 9, 5), (1.0, 2.0, 3.0), axcodes, (5, -3, 8)))
    grid = display_grid(volume)
    shown = grid.to_display(volume.data)
    assert "".join(nib.aff2axcodes(grid.affine)) == "".join(DISPLAY_AXCODES)
    assert np.array_equal(grid.from_display(shown), volume.data)
    # display order: z runs inferior → superior, row 0 is anterior, column 0 the patient's right
    x0, y0, z0 = grid.affine[:3] @ [0, 0, 0, 1]
    x1, y1, z1 = grid.affine[:3] @ [grid.shape[0] - 1, grid.shape[1] - 1, grid.shape[2] - 1, 1]
    assert z1 > z0 and y0 > y1 and x0 > x1
    # the same voxel is at the same world position through both affines
    z, r, c = 2, 3, 4
    world = grid.affine @ [z, r, c, 1]
    ijk = np.rint(np.linalg.inv(volume.affine) @ world).astype(int)[:3]
    assert shown[z, r, c] == volume.data[tuple(ijk)]


@pytest.mark.torch_free
@pytest.mark.parametrize("rotate_deg", [0.0, 23.0])
def test_trilinear_resampling_is_exact_on_a_linear_field(rotate_deg):
    """Trilinear interpolation reproduces a linear function of position: every MRI voxel
    inside OTHER gets a·x + b·y + c·z + d at its own world position, through the fast
    (parallel axes) and the general (rotated) path alike."""
    mri = brain_mri((30, 28, 16), (3.0, 3.0, 4.0), "LAS")
    other_affine = grid_affine((16, 18, 14), (4.5, 4.0, 3.5), "RAS", (2.0, -3.0, 1.0))
    if rotate_deg:
        t = np.deg2rad(rotate_deg)
        turn = np.eye(4)
        turn[:2, :2] = [[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]]
        other_affine = turn @ other_affine
    other = linear_volume((16, 18, 14), other_affine)
    grid = display_grid(mri)
    resampler = Resampler(other, grid.affine, fill=-1e6)
    assert resampler.separable == (rotate_deg == 0.0)
    depth, height, width = grid.shape
    values = resampler.slab(0, depth, height, width)
    zrc = np.indices(grid.shape).reshape(3, -1)
    world = grid.affine[:3, :3] @ zrc + grid.affine[:3, 3:4]
    expected = (np.array([2.0, -1.5, 0.7]) @ world + 100.0).reshape(grid.shape)
    voxel = np.linalg.inv(other_affine)[:3] @ np.vstack([world, np.ones(world.shape[1])])
    shape = np.array(other.shape)[:, None]
    core = np.all((voxel >= 0) & (voxel <= shape - 1), axis=0).reshape(grid.shape)  # between voxel centres
    scanned = np.all((voxel >= -0.5) & (voxel <= shape - 0.5), axis=0).reshape(grid.shape)
    assert 0.2 < core.mean() < scanned.mean() < 1.0  # partly outside OTHER
    np.testing.assert_allclose(values[core], expected[core], atol=2e-3)
    assert np.array_equal(values > -1e5, scanned)  # the fill value exactly outside the scanned box
    # the general gather gives the same numbers as the fast path
    gathered = resampler(np.arange(depth)[:, None, None], np.arange(height)[None, :, None],
                         np.arange(width)[None, None, :])
    np.testing.assert_allclose(gathered, values, atol=2e-3)


@pytest.mark.torch_free
@pytest.mark.parametrize("mri_axcodes,pet_axcodes,pet_spacing,rotate", [
    ("LAS", "RAS", (6.0, 6.0, 6.0), 0.0),
    ("RAS", "LAS", (3.0, 5.0, 4.0), 0.0),
    ("LPS", "PIR", (5.0, 5.0, 5.0), 0.0),
    ("RAS", "RAS", (5.0, 5.0, 5.0), 17.0),
])
def test_hot_sphere_lands_at_its_world_position(fuser, mri_axcodes, pet_axcodes, pet_spacing, rotate):
    mri = brain_mri(axcodes=mri_axcodes)
    pet = sphere_volume((26, 24, 22), pet_spacing, pet_axcodes, value=5000.0, background=200.0,
                        grid_centre=(4.0, -2.0, 3.0), rotate_deg=rotate)
    # the sphere's value sits mid-palette (HOT_IRON red), so its colour marks it
    fused = fuse_volume(mri, pet, model=fuser, modality="pet", window=(0, 10000))
    assert fused.shape == mri.shape and np.array_equal(fused.affine, mri.affine) and fused.is_rgb
    chroma = np.abs(rgb_to_ycbcr(fused.data)[..., 1:] - 128.0).sum(axis=-1)
    weights = np.where(chroma > 0.5 * chroma.max(), chroma, 0.0)
    error_voxels = np.abs(centroid_world(weights, mri.affine) - SPHERE) / mri.spacing
    assert error_voxels.max() < 1.0, error_voxels


@pytest.mark.torch_free
def test_ct_sphere_lands_in_the_grey_output(fuser):
    mri = brain_mri(axcodes="LAS")
    ct = sphere_volume((40, 40, 20), (5.0, 5.0, 8.0), "LPS", value=1200.0, background=30.0)
    fused = fuse_volume(mri, ct, model=fuser, modality="ct")
    assert fused.data.dtype == np.uint8 and fused.data.ndim == 3
    brain = mri.data == 300.0
    bright = np.where(brain, fused.data.astype(float) - np.median(fused.data[brain]), 0.0)
    weights = np.where(bright > 0.5 * bright.max(), bright, 0.0)
    error_voxels = np.abs(centroid_world(weights, mri.affine) - SPHERE) / mri.spacing
    assert error_voxels.max() < 1.0, error_voxels


# -- windows, palettes, and the 2-D path --------------------------------------------------
@pytest.mark.torch_free
def test_windows_hold_for_the_whole_volume_not_per_slice():
    """One value, one grey level (or colour) in every slice: slices with and without the
    bright parts are windowed alike."""
    mri = brain_mri((24, 24, 10), (8.0, 8.0, 8.0))
    mri.data[:, :, 7:] *= 0.25  # dim top slices: a per-slice window would brighten them back
    pet_values = np.broadcast_to(100.0 + 10.0 * np.arange(24)[:, None, None], (24, 24, 10)).astype(np.float32)
    pet_values[4:20, 4:20, :3] = 900.0  # uptake in the bottom three slices only
    pet = Volume(pet_values, mri.affine)  # same grid: resampling changes no value
    pair = SlicePair(mri, pet, "pet")
    assert pair.mri_window == tuple(float(v) for v in np.percentile(mri.data, (0.5, 99.5)))
    assert pair.window == tuple(float(v) for v in np.percentile(pet.data, (0.5, 99.5)))
    mri_slices = pair.mri_slices(0, 10)
    tissue = {int(v) for z in range(3) for v in np.unique(mri_slices[z]) if v > 0}
    dimmed = {int(v) for z in range(7, 10) for v in np.unique(mri_slices[z]) if v > 0}
    assert tissue and dimmed and max(dimmed) < min(tissue)  # dim stays dim
    other = pair.other_slices(0, 10)
    outside_uptake = other[:, :, :4]  # display columns 0..3 = x 23..20, never in the uptake block
    assert (outside_uptake == outside_uptake[0]).all()  # same grey in every slice, with or without uptake
    assert np.unique(outside_uptake).size == 4  # and the x gradient survives


@pytest.mark.torch_free
def test_ct_hounsfield_window_and_pet_palette():
    mri = brain_mri((24, 24, 12), (8.0, 8.0, 8.0))
    ct = Volume(np.full((24, 24, 12), 0.0, np.float32), mri.affine)
    ct.data[:8] = -1000.0
    ct.data[-4:] = 1000.0
    pair = SlicePair(mri, ct, "ct")
    assert pair.window == CT_WINDOW == (-160.0, 240.0)
    values = set(np.unique(pair.other_slices(0, 12)).tolist())
    assert values == {0, 102, 255}  # air, water (0 HU: 160 / 400 · 255 = 102), bone
    pet = Volume(np.linspace(0, 500, 24 * 24 * 12, dtype=np.float32).reshape(24, 24, 12), mri.affine)
    pet_pair = SlicePair(mri, pet, "pet", window=(0, 500), colormap="hot_metal_blue")
    rgb = pet_pair.other_at(np.arange(12)[:, None, None], np.arange(24)[None, :, None], np.arange(24)[None, None, :])
    index = pet_pair.other_slices(0, 12)
    assert np.array_equal(rgb, palette_lut("HOT_METAL_BLUE")[index])


@pytest.mark.torch_free
def test_palettes_are_pydicoms_standard_ones():
    from pydicom.pixels import apply_color_lut

    for name, uid in (("HOT_IRON", "1.2.840.10008.1.5.1"), ("PET", "1.2.840.10008.1.5.2"),
                      ("HOT_METAL_BLUE", "1.2.840.10008.1.5.3")):
        lut = palette_lut(name)
        assert lut.shape == (256, 3) and np.array_equal(lut[0], [0, 0, 0])
        assert np.array_equal(lut, apply_color_lut(np.arange(256, dtype=np.uint8), palette=uid))
    assert np.array_equal(palette_lut("HOT_IRON")[128], [255, 0, 0])  # red at mid range
    assert np.array_equal(palette_lut("gray")[77], [77, 77, 77])
    with pytest.raises(CMINetError, match="colormap: expected one of HOT_IRON"):
        palette_lut("jet")


@pytest.mark.torch_free
@pytest.mark.parametrize("modality", ["pet", "ct"])
def test_each_slice_is_fused_exactly_like_the_2d_path(fuser, modality):
    mri = head_phantom("mri", (40, 48, 12), (4.8, 4.8, 6.0))
    other = head_phantom(modality, (24, 24, 10), (9.0, 9.0, 7.0))
    fused = fuse_volume(mri, other, model=fuser, modality=modality, batch_size=5)
    pair = SlicePair(mri, other, modality)
    shown = pair.grid.to_display(fused.data)
    for k in (3, 6):
        other_image = pair.other_slices(k, k + 1)[0]
        if pair.colour:
            other_image = apply_palette(other_image, pair.colormap)
        two_d = fuser.fuse(pair.mri_slices(k, k + 1)[0], other_image)  # the 2-D API on the same 8-bit inputs
        assert two_d.shape == shown[k].shape
        assert np.abs(two_d.astype(int) - shown[k]).max() <= FUSED_GREY_LEVELS["fp32"]


@pytest.mark.torch_free
def test_batch_size_one_on_a_cpu_unless_asked(fuser):
    mri = brain_mri((32, 32, 6), (6.0, 6.0, 8.0))
    ct = sphere_volume((20, 20, 8), (8.0, 8.0, 8.0), "RAS", value=900.0)
    assert fuse_volume(mri, ct, model=fuser, modality="ct").info["batch_size"] == 1
    assert fuse_volume(mri, ct, model=fuser, modality="ct", batch_size=3).info["batch_size"] == 3
    with pytest.raises(CMINetError, match="batch size: expected an integer ≥ 1, got 0"):
        fuse_volume(mri, ct, model=fuser, modality="ct", batch_size=0)


@pytest.mark.torch_free
def test_working_memory_does_not_grow_with_the_number_of_slices(fuser):
    """Peak numpy memory of the slice loop, less the output volume, is the same for 8 and
    for 48 slices: a batch at a time, never a whole-volume intermediate."""
    extra = {}
    for depth in (8, 48):
        mri = brain_mri((64, 64, depth), (3.0, 3.0, 3.0))
        pet = sphere_volume((32, 32, depth), (6.0, 6.0, 3.0), "LAS", value=900.0, background=100.0)
        pair = SlicePair(mri, pet, "pet")
        tracemalloc.start()
        tracemalloc.reset_peak()
        out, _ = _fuse_slices(pair, fuser, 4, progress=False)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        extra[depth] = peak - out.nbytes
    assert extra[48] < 1.25 * extra[8], extra


# -- NIfTI in and out ---------------------------------------------------------------------
@pytest.mark.torch_free
def test_nifti_output_has_the_mri_grid_codes_and_rgb24(tmp_path, fuser):
    mri = brain_mri(axcodes="LAS")
    mri_path = tmp_path / "mri.nii.gz"
    img = nib.Nifti1Image(mri.data.astype(np.int16), mri.affine)
    img.set_sform(mri.affine, code=2)  # "aligned": the output must keep it
    img.set_qform(mri.affine, code=1)
    nib.save(img, mri_path)
    pet = sphere_volume((26, 24, 22), (6.0, 6.0, 6.0), "RAS", value=5000.0, background=200.0)
    pet_path = tmp_path / "pet.nii"
    nib.save(nib.Nifti1Image(pet.data, pet.affine), pet_path)

    fused = fuse_volume(mri_path, pet_path, model=fuser, modality="spect")
    out = save_nifti(fused, tmp_path / "fused.nii.gz")
    back = nib.load(out)
    assert back.shape == mri.shape and np.allclose(back.affine, mri.affine)
    assert int(back.header["sform_code"]) == 2 and int(back.header["qform_code"]) == 2
    assert back.get_data_dtype() == RGB24 and int(back.header["datatype"]) == 128  # NIFTI_TYPE_RGB24
    assert np.array_equal(rgb_of(np.asarray(back.dataobj)), fused.data)
    assert b"not for quantitation" in back.header["descrip"].tobytes()


@pytest.mark.torch_free
def test_nifti_pet_with_nan_outside_the_field_of_view(tmp_path, fuser):
    mri = brain_mri()
    pet = sphere_volume((26, 24, 22), (6.0, 6.0, 6.0), "RAS", value=5000.0, background=200.0)
    pet.data[:, :, :3] = np.nan
    nib.save(nib.Nifti1Image(pet.data, pet.affine), tmp_path / "pet.nii.gz")
    loaded = load_volume(tmp_path / "pet.nii.gz")
    assert np.isfinite(loaded.data).all() and loaded.data.min() == 200.0
    assert fuse_volume(mri, loaded, model=fuser, modality="pet").data.shape == (*mri.shape, 3)


# -- DICOM in and out ---------------------------------------------------------------------
@pytest.mark.torch_free
def test_dicom_series_read_sorted_rescaled_and_placed(tmp_path):
    truth = head_phantom("ct", (32, 28, 9), (6.0, 6.5, 7.0), axcodes="LPS")
    folder = write_series(truth, tmp_path / "ct", intercept=-1024.0, order_seed=3)
    (tmp_path / "ct" / "README.txt").write_text("not DICOM: skipped")
    ct = load_volume(folder, "OTHER")
    assert ct.modality == "CT" and ct.units == "HU" and ct.dicom is not None and "PixelData" not in ct.dicom
    assert_same_volume(ct, truth)  # int16 HU through RescaleIntercept -1024, placed by the positions
    normal = np.cross(*np.reshape(np.array(ct.dicom.ImageOrientationPatient, dtype=float), (2, 3)))
    assert (LPS_TO_RAS @ ct.affine)[:3, 2] @ normal > 0  # k rises along the slice normal, as dcm2niix has it


@pytest.mark.torch_free
def test_pet_series_with_a_slope_per_slice(tmp_path):
    truth = sphere_volume((20, 20, 8), (6.0, 6.0, 6.0), "RAS", value=15000.0, background=850.0, radius=20.0)
    slopes = np.linspace(0.5, 2.0, 8)
    pet = load_volume(write_series(truth, tmp_path / "pet", modality="PT", slopes=slopes), "OTHER")
    assert pet.modality == "PT" and pet.units == "BQML"
    grid, truth_grid = display_grid(pet), display_grid(truth)
    np.testing.assert_allclose(grid.affine, truth_grid.affine, atol=1e-4)
    error = np.abs(grid.to_display(pet.data) - truth_grid.to_display(truth.data))
    assert error.max() <= 1.0  # stored = round(value / slope) with slopes up to 2


@pytest.mark.torch_free
def test_spect_as_one_multiframe_nm_file(tmp_path, model_path):
    truth = sphere_volume((24, 22, 12), (6.0, 6.0, 6.0), "RAS", value=900.0, background=40.0, radius=20.0)
    folder = write_nm_tomo(truth, tmp_path / "spect" / "recon.dcm")
    spect = load_volume(folder, "OTHER")
    assert spect.modality == "NM"
    assert_same_volume(spect, truth)
    mri_path = tmp_path / "mri.nii.gz"
    save_nifti(brain_mri(), mri_path)
    result = run_cli("fuse-volume", mri_path, folder, "-o", tmp_path / "fused.nii.gz", "--model", model_path)
    assert result.exit_code == 0, result.output
    assert "spect: window" in result.output  # guessed from Modality NM
    gated = write_nm_tomo(truth, tmp_path / "gated" / "gated.dcm", gated=True)
    with pytest.raises(VolumeError, match=r"12 frames for 6 slices \(gated or dynamic"):
        load_volume(gated, "OTHER")
    projections = write_nm_tomo(truth, tmp_path / "raw" / "raw.dcm", projections=True)
    with pytest.raises(GeometryError, match=r"no position/orientation .* not a reconstructed SPECT"):
        load_volume(projections, "OTHER")


@pytest.mark.torch_free
def test_dicom_in_dicom_out_keeps_identity_geometry_and_pixels(tmp_path, model_path):
    study = ("1.2.826.0.1.3680043.8.498.1", "PAT-0042", "Doe^Jane")
    mri_truth = brain_mri((40, 36, 14), (5.0, 5.0, 6.0), "LPS")
    frame = pydicom.uid.generate_uid()  # one frame of reference: a PET/MR scanner, or registered and stored so
    mri_dir = write_series(mri_truth, tmp_path / "mri", template="MR_small.dcm", study=study, frame=frame)
    pet_truth = sphere_volume((26, 24, 22), (6.0, 6.0, 6.0), "RAS", value=5000.0, background=200.0)
    pet_dir = write_series(pet_truth, tmp_path / "pet", modality="PT", study=study, frame=frame)
    out = tmp_path / "fused.nii.gz"
    result = run_cli("fuse-volume", mri_dir, pet_dir, "-o", out, "--model", model_path,
                     "--dicom-out", tmp_path / "fused_dicom", "--png-dir", tmp_path / "png")
    assert result.exit_code == 0, result.output
    assert "pet: window" in result.output  # the modality came from the DICOM Modality (PT)

    sources = [pydicom.dcmread(p) for p in sorted(mri_dir.iterdir())]
    written = [pydicom.dcmread(p) for p in sorted((tmp_path / "fused_dicom").iterdir())]
    assert len(written) == len(sources) == 14
    first = written[0]
    assert first.SOPClassUID == pydicom.uid.SecondaryCaptureImageStorage
    assert (first.StudyInstanceUID, first.PatientID, str(first.PatientName)) == study
    assert {ds.SeriesInstanceUID for ds in written} == {first.SeriesInstanceUID}
    assert first.SeriesInstanceUID not in {sources[0].SeriesInstanceUID, pydicom.dcmread(
        next(pet_dir.iterdir())).SeriesInstanceUID}
    sops = {ds.SOPInstanceUID for ds in written}
    assert len(sops) == 14 and not sops & {ds.SOPInstanceUID for ds in sources}
    assert list(first.ImageType)[:2] == ["DERIVED", "SECONDARY"]
    assert "not for quantitation" in first.SeriesDescription and len(first.SeriesDescription) <= 64
    assert first.PhotometricInterpretation == "RGB" and first.SamplesPerPixel == 3
    assert first.FrameOfReferenceUID == sources[0].FrameOfReferenceUID
    # one fused slice per MRI slice, at the MRI's positions and orientation
    def position(ds):
        return tuple(np.round(np.array(ds.ImagePositionPatient, dtype=float), 3))

    assert {position(ds) for ds in written} == {position(ds) for ds in sources}
    assert all(np.allclose(ds.ImageOrientationPatient, sources[0].ImageOrientationPatient) for ds in written)
    assert all(np.allclose(ds.PixelSpacing, sources[0].PixelSpacing) for ds in written)
    # and the pixels are the NIfTI's, slice for slice
    fused = rgb_of(np.asarray(nib.load(out).dataobj))
    by_position = {position(ds): ds for ds in written}
    mri_volume = load_volume(mri_dir)
    for k in (0, 7, 13):
        world = LPS_TO_RAS @ mri_volume.affine @ [0, 0, k, 1]
        ds = by_position[tuple(np.round(world[:3], 3))]
        assert np.array_equal(ds.pixel_array, np.swapaxes(fused[:, :, k], 0, 1))
    assert (tmp_path / "png" / "montage.png").is_file() and len(list((tmp_path / "png").glob("slice_*.png"))) == 14


@pytest.mark.torch_free
def test_grey_dicom_output_reads_back_onto_the_mri_grid(tmp_path, fuser):
    mri = brain_mri((40, 36, 10), (5.0, 5.0, 6.0), "LAS")
    ct = sphere_volume((40, 40, 20), (5.0, 5.0, 8.0), "LPS", value=1200.0, background=30.0)
    fused = fuse_volume(mri, ct, model=fuser, modality="ct")
    save_dicom_series(fused, tmp_path / "dicom")
    assert_same_volume(load_volume(tmp_path / "dicom"), fused)
    new = pydicom.dcmread(next((tmp_path / "dicom").iterdir()))
    assert new.PatientID == "" and new.StudyInstanceUID  # a NIfTI MRI has no identity to keep: a new study


# -- refusals: one line each, naming what is wrong ----------------------------------------
@pytest.mark.torch_free
def test_volumes_that_do_not_overlap(fuser):
    mri = brain_mri()
    far = sphere_volume((26, 24, 22), (6.0, 6.0, 6.0), "RAS", grid_centre=(0.0, 900.0, 0.0))
    with pytest.raises(GeometryError) as caught:
        fuse_volume(mri, far, model=fuser, modality="pet")
    message = str(caught.value)
    assert "do not overlap" in message and "\n" not in message
    assert "y -96.0..96.0" in message and "y 828.0..972.0" in message  # both extents, in mm


@pytest.mark.torch_free
def test_four_d_rgb_and_unplaced_niftis(tmp_path):
    four_d = tmp_path / "fmri.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 8, 3), np.float32), np.eye(4)), four_d)
    with pytest.raises(VolumeError, match=r"4-D volume of 8×8×8×3"):
        load_volume(four_d, "MRI")
    rgb = tmp_path / "rgb.nii"
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 8), RGB24), np.eye(4)), rgb)
    with pytest.raises(VolumeError, match="colour"):
        load_volume(rgb, "OTHER")
    unplaced = nib.Nifti1Image(np.zeros((8, 8, 8), np.float32), np.eye(4))
    unplaced.set_sform(None, code=0)
    unplaced.set_qform(None, code=0)
    nib.save(unplaced, tmp_path / "unplaced.nii")
    assert int(nib.load(tmp_path / "unplaced.nii").header["sform_code"]) == 0
    with pytest.raises(GeometryError, match="qform_code = sform_code = 0"):
        load_volume(tmp_path / "unplaced.nii", "OTHER")
    good = tmp_path / "good.nii.gz"
    nib.save(nib.Nifti1Image(np.random.default_rng(0).random((32, 32, 32), np.float32), np.eye(4)), good)
    truncated = tmp_path / "truncated.nii.gz"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(VolumeError, match=r"truncated\.nii\.gz: cannot read the voxels .*truncated file\?") as caught:
        load_volume(truncated, "MRI")
    assert "\n" not in str(caught.value)
    nib.save(nib.Nifti1Image(np.full((8, 8, 8), np.nan, np.float32), np.eye(4)), tmp_path / "nan.nii")
    with pytest.raises(VolumeError, match=r"OTHER .*nan\.nii: every voxel is NaN or Inf"):
        load_volume(tmp_path / "nan.nii", "OTHER")


@pytest.mark.torch_free
def test_dicom_stacks_with_gaps_uneven_or_repeated_slices(tmp_path):
    truth = sphere_volume((20, 20, 8), (6.0, 6.0, 6.0), "LPS")
    gap = write_series(truth, tmp_path / "gap", order_seed=None)
    (gap / "IM0003").unlink()  # the 4th of 8 slices
    with pytest.raises(GeometryError, match=r"not uniform: 6 mm between most slices but 12 mm between .*missing"):
        load_volume(gap, "OTHER")
    uneven = write_series(truth, tmp_path / "uneven")
    victim = pydicom.dcmread(uneven / "IM0005")
    victim.ImagePositionPatient[2] = float(victim.ImagePositionPatient[2]) + 1.5
    victim.save_as(uneven / "IM0005")
    with pytest.raises(GeometryError, match=r"IM0005"):
        load_volume(uneven, "OTHER")
    repeated = write_series(truth, tmp_path / "repeated")
    twin = pydicom.dcmread(repeated / "IM0002")
    twin.SOPInstanceUID = pydicom.uid.generate_uid()
    twin.save_as(repeated / "IM0002_echo2")
    with pytest.raises(GeometryError, match=r"IM0002 .* and IM0002_echo2 .* same position"):
        load_volume(repeated, "OTHER")


@pytest.mark.torch_free
def test_pydicoms_broken_real_series_are_refused():
    with pytest.raises(VolumeError, match=r"3 series mixed in one folder"):
        load_volume(DICOM_DIRS / "MR2", "MRI")
    with pytest.raises(GeometryError, match=r"mixed slice orientations"):
        load_volume(DICOM_DIRS / "MR700", "MRI")  # one radial series: every slice turned


@pytest.mark.torch_free
def test_single_slice_empty_folder_and_mixed_series(tmp_path):
    single = tmp_path / "single"
    single.mkdir()
    (single / "ct.dcm").write_bytes(Path(get_testdata_file("CT_small.dcm")).read_bytes())
    with pytest.raises(GeometryError, match=r"one slice \(ct.dcm\)"):
        load_volume(single, "OTHER")
    (tmp_path / "empty").mkdir()
    with pytest.raises(VolumeError, match="no DICOM images"):
        load_volume(tmp_path / "empty", "OTHER")
    truth = sphere_volume((20, 20, 4), (6.0, 6.0, 6.0), "LPS")
    two = write_series(truth, tmp_path / "two", series_uid="1.2.3.4")
    stray = pydicom.dcmread(write_series(truth, tmp_path / "other", series_uid="1.2.3.5") / "IM0000")
    stray.save_as(two / "stray.dcm")
    mixed = r"2 series mixed in one folder: 1\.2\.3\.4 \(4 images.*1\.2\.3\.5 \(1 images"
    with pytest.raises(VolumeError, match=mixed):
        load_volume(tmp_path / "two", "OTHER")


@pytest.mark.torch_free
def test_cli_refusals_are_one_line_and_leave_no_output(tmp_path, model_path):
    mri = brain_mri((24, 24, 8), (8.0, 8.0, 8.0))
    mri_path, pet_path = tmp_path / "mri.nii.gz", tmp_path / "pet.nii.gz"
    save_nifti(mri, mri_path)
    save_nifti(sphere_volume((20, 20, 8), (8.0, 8.0, 8.0), "RAS", value=900.0), pet_path)
    out = tmp_path / "fused.nii.gz"
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.dcm").write_bytes(b"x")
    cases = [  # (options, words in the error, refused before reading any volume)
        (["--modality", "pet", "-o", tmp_path / "fused.png"], "expected a .nii or .nii.gz", True),
        (["--modality", "pet", "-o", out, "--dicom-out", busy], "not an empty folder", True),
        (["--modality", "pet", "-o", out, "--model", tmp_path / "missing.onnx"], "missing.onnx: no such model", True),
        (["-o", out], "pass --modality ct|pet|spect", False),
        (["--modality", "pet", "-o", out, "--window", "9,3"], "need finite LOW < HIGH", False),
        (["--modality", "pet", "-o", out, "--window", "hot"], "expected LOW,HIGH", False),
        (["--modality", "pet", "-o", out, "--colormap", "jet"], "colormap: expected one of", False),
    ]
    for options, words, early in cases:
        args = [mri_path, pet_path, *options]
        if "--model" not in options:
            args += ["--model", model_path]
        result = run_cli("fuse-volume", *args)
        line = one_line_error(result)
        assert words in line, (options, line)
        assert ("MRI " not in result.output) == early, result.output
        assert not out.exists() and not (tmp_path / "fused.png").exists()
    swapped = write_series(sphere_volume((20, 20, 4), (8.0, 8.0, 8.0), "LPS"), tmp_path / "pt", modality="PT")
    line = one_line_error(run_cli("fuse-volume", swapped, pet_path, "-o", out, "--model", model_path))
    assert "swapped" in line
    assert list(busy.iterdir()) == [busy / "keep.dcm"]


@pytest.mark.torch_free
def test_default_model_is_the_shipped_onnx(model_path):
    mri = brain_mri((24, 24, 4), (8.0, 8.0, 8.0))
    ct = sphere_volume((20, 20, 4), (8.0, 8.0, 8.0), "RAS", value=900.0)
    with Fuser(model_path, backend="ort-cpu") as explicit:
        expected = fuse_volume(mri, ct, model=explicit, modality="ct").data
    assert np.array_equal(fuse_volume(mri, ct, modality="ct", backend="ort-cpu").data, expected)
    with pytest.raises(CMINetError, match="precision: expected one of fp32, fp16"):
        fuse_volume(mri, ct, modality="ct", precision="int8")


# -- end to end, torch-free ---------------------------------------------------------------
@pytest.mark.torch_free
def test_cli_runs_without_torch_and_writes_pngs_and_a_montage(tmp_path, model_path):
    """A torch-free install: torch, onnx and safetensors cannot even be imported here."""
    save_nifti(head_phantom("mri", (48, 56, 20), (4.0, 4.0, 7.5)), tmp_path / "mri.nii.gz")
    save_nifti(head_phantom("pet", (32, 32, 18), (6.0, 6.0, 9.0)), tmp_path / "pet.nii.gz")
    args = ["fuse-volume", str(tmp_path / "mri.nii.gz"), str(tmp_path / "pet.nii.gz"), "--modality", "pet",
            "-o", str(tmp_path / "fused.nii.gz"), "--model", str(model_path), "--png-dir", str(tmp_path / "png")]
    code = (
        "import sys\n"
        "class NoTorch:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('torch', 'onnx', 'safetensors'):\n"
        "            raise ImportError(name + ' is not installed')\n"
        "sys.meta_path.insert(0, NoTorch())\n"
        "from cminet.cli import main\n"
        "try:\n"
        f"    main({args!r})\n"
        "except SystemExit as done:\n"
        "    assert not done.code, done.code\n"
        "assert 'torch' not in sys.modules\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "wrote" in proc.stdout and (tmp_path / "fused.nii.gz").is_file()
    sheet = cv2_read(tmp_path / "png" / "montage.png")
    assert sheet.ndim == 3 and sheet.shape[0] > 3 * 200  # three rows of panels and a header
    assert len(list((tmp_path / "png").glob("slice_*.png"))) == 20


@pytest.mark.torch_free
def test_without_the_volume_extra_the_error_says_what_to_install(tmp_path):
    save_nifti(brain_mri((8, 8, 4), (4.0, 4.0, 4.0)), tmp_path / "mri.nii.gz")
    code = (
        "import sys\n"
        "class Missing:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('nibabel', 'pydicom', 'highdicom'):\n"
        "            raise ImportError(name)\n"
        "sys.meta_path.insert(0, Missing())\n"
        "from cminet.cli import main\n"
        f"main(['fuse-volume', {str(tmp_path / 'mri.nii.gz')!r}, {str(tmp_path / 'mri.nii.gz')!r}, '-o', "
        f"{str(tmp_path / 'out.nii.gz')!r}])\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.strip() == "error: volumes need nibabel: pip install 'cminet[volume]'"


@pytest.mark.torch_free
def test_montage_shows_the_three_planes(fuser):
    mri = head_phantom("mri", (40, 48, 24), (4.8, 4.8, 6.0))
    pet = head_phantom("pet", (24, 24, 16), (9.0, 9.0, 9.0))
    fused = fuse_volume(mri, pet, model=fuser, modality="pet")
    sheet = montage(mri, pet, fused, height=96)
    assert sheet.dtype == np.uint8 and sheet.shape[0] == 24 + 3 * 96 and sheet.shape[2] == 3
    cell = sheet.shape[1] // 3
    axial_pet = sheet[24:120, cell:2 * cell]
    assert (np.abs(rgb_to_ycbcr(axial_pet)[..., 2] - 128) > 20).any()  # the PET column is coloured


def cv2_read(path):
    import cv2

    return cv2.imread(str(path), cv2.IMREAD_UNCHANGED)


# -- clinical DICOM: identity in and out, patients, outputs as a set --------------------------
def small_study(tmp_path, mri_header=None, pet_header=None, pet_study=None, same_frame=True):
    """An MR and a PT series of one study (or of ``pet_study``), in one frame of reference
    unless ``same_frame`` is False, with ``*_header`` attributes set as given."""
    study = ("1.2.826.0.1.3680043.8.498.7", "PAT-0042", "Doe^Jane")
    frame = pydicom.uid.generate_uid()
    mri = write_series(brain_mri((24, 24, 6), (8.0, 8.0, 8.0), "LPS"), tmp_path / "mri", template="MR_small.dcm",
                       study=study, frame=frame, header=mri_header)
    pet = write_series(sphere_volume((20, 20, 8), (8.0, 8.0, 8.0), "RAS", value=5000.0, background=200.0),
                       tmp_path / "pet", modality="PT", study=pet_study or study,
                       frame=frame if same_frame else None, header=pet_header)
    return mri, pet


def outputs_of(tmp_path) -> list[str]:
    return sorted(p.name for p in tmp_path.iterdir() if p.name not in ("mri", "pet"))


MALFORMED = [  # (attribute, value as scanners write it): each must not reach the output
    ("PatientSex", "0000"),
    ("PatientBirthDate", "19671301"),
    ("PatientBirthDate", "1967"),
    ("PatientName", "A" * 70 + "^Jane"),
    ("ReferringPhysicianName", "Dr " * 30),
    ("StudyDate", "2024-03-05"),
    ("StudyTime", "25:99"),
    ("AccessionNumber", "ACC-" + "9" * 20),
    ("StudyID", "a study id longer than sixteen"),
]


@pytest.mark.torch_free
@pytest.mark.parametrize("keyword,value", MALFORMED, ids=[f"{k}-{v[:8]}" for k, v in MALFORMED])
def test_malformed_identity_is_left_out_of_valid_dicom_with_one_warning(tmp_path, model_path, keyword, value):
    mri, pet = small_study(tmp_path, mri_header={keyword: value}, pet_header={keyword: value})  # one patient
    result = run_cli("fuse-volume", mri, pet, "-o", tmp_path / "f.nii.gz", "--model", model_path,
                     "--dicom-out", tmp_path / "dicom")
    assert result.exit_code == 0, result.output
    warned = [line for line in result.output.splitlines() if line.startswith("warning:")]
    about_it = [line for line in warned if line.startswith("warning: MRI header:")]
    assert len(about_it) == 1 and keyword in about_it[0], result.output
    assert all(len(line) < 200 for line in warned), result.output  # no wall of text from pydicom
    written = [pydicom.dcmread(p) for p in sorted((tmp_path / "dicom").iterdir())]
    assert len(written) == 6
    identity = [k for k, _ in MALFORMED] + ["PatientID", "StudyInstanceUID"]
    for element in (written[0][k] for k in identity if k in written[0]):  # every value that is there is valid
        if element.value not in (None, ""):
            pydicom.valuerep.validate_value(element.VR, str(element.value), pydicom.config.RAISE)
    assert not written[0].get(keyword) and written[0].PatientID == "PAT-0042"  # left out (or empty, type 2)


@pytest.mark.torch_free
def test_a_missing_study_date_and_an_invalid_study_uid_still_give_a_series(tmp_path, model_path):
    mri, pet = small_study(tmp_path, mri_header={"StudyDate": None, "StudyInstanceUID": "1..2.3"},
                           pet_header={"StudyInstanceUID": "1..2.3"})
    result = run_cli("fuse-volume", mri, pet, "-o", tmp_path / "f.nii.gz", "--model", model_path,
                     "--dicom-out", tmp_path / "dicom")
    assert result.exit_code == 0, result.output
    first = pydicom.dcmread(next((tmp_path / "dicom").iterdir()))
    assert pydicom.uid.UID(first.StudyInstanceUID).is_valid and not first.get("StudyDate")
    assert "StudyInstanceUID" in result.output


@pytest.mark.torch_free
def test_two_patients_are_refused_unless_allowed_and_then_stamped(tmp_path, model_path):
    mri, pet = small_study(tmp_path, pet_study=("1.2.826.0.1.3680043.8.498.7", "PAT-0099", "Roe^Richard"))
    args = ["fuse-volume", mri, pet, "-o", tmp_path / "f.nii.gz", "--model", model_path, "--dicom-out",
            tmp_path / "dicom", "--png-dir", tmp_path / "png"]
    result = run_cli(*args)
    message = one_line_error(result)
    assert result.exit_code == 1 and "different patients" in message
    assert "'PAT-0042' vs 'PAT-0099'" in message and "--allow-different-patients" in message
    assert outputs_of(tmp_path) == []  # nothing written, nothing staged
    result = run_cli(*args, "--allow-different-patients")
    assert result.exit_code == 0, result.output
    first = pydicom.dcmread(next((tmp_path / "dicom").iterdir()))
    assert first.SeriesDescription.startswith("DIFFERENT PATIENTS: ") and first.PatientID == "PAT-0042"


@pytest.mark.torch_free
def test_two_frames_of_reference_are_refused_unless_assumed_registered(tmp_path, model_path):
    mri, pet = small_study(tmp_path, same_frame=False)
    args = ["fuse-volume", mri, pet, "-o", tmp_path / "f.nii.gz", "--model", model_path, "--dicom-out",
            tmp_path / "dicom"]
    result = run_cli(*args)
    assert result.exit_code == 1 and "different frames of reference" in one_line_error(result)
    assert "--assume-registered" in one_line_error(result) and outputs_of(tmp_path) == []
    result = run_cli(*args, "--assume-registered")
    assert result.exit_code == 0, result.output
    assert pydicom.dcmread(next((tmp_path / "dicom").iterdir())).SeriesDescription.startswith("ASSUMED REGISTERED")


@pytest.mark.torch_free
def test_outputs_are_written_together_or_not_at_all(tmp_path, model_path, monkeypatch):
    from cminet.runtime import volume as volumes

    mri, pet = small_study(tmp_path)
    args = ["fuse-volume", mri, pet, "-o", tmp_path / "f.nii.gz", "--model", model_path, "--dicom-out",
            tmp_path / "dicom", "--png-dir", tmp_path / "png"]

    def broken_montage(*_args, **_kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(volumes, "montage", broken_montage)  # the last output fails
    result = run_cli(*args)
    assert result.exit_code == 1 and "No space left" in one_line_error(result)
    assert outputs_of(tmp_path) == []  # not the NIfTI, not the DICOM series, no staging folder
    monkeypatch.undo()
    assert run_cli(*args).exit_code == 0
    assert outputs_of(tmp_path) == ["dicom", "f.nii.gz", "png"]


@pytest.mark.torch_free
def test_an_input_is_never_an_output(tmp_path, model_path):
    mri = brain_mri((24, 24, 6), (8.0, 8.0, 8.0))
    pet = sphere_volume((20, 20, 8), (8.0, 8.0, 8.0), "RAS", value=5000.0)
    save_nifti(mri, tmp_path / "mri.nii.gz")
    save_nifti(pet, tmp_path / "pet.nii.gz")
    before = (tmp_path / "mri.nii.gz").read_bytes()
    (tmp_path / "link.nii.gz").symlink_to(tmp_path / "pet.nii.gz")
    for output in ("mri.nii.gz", "link.nii.gz"):
        result = run_cli("fuse-volume", tmp_path / "mri.nii.gz", tmp_path / "pet.nii.gz", "--modality", "pet",
                         "-o", tmp_path / output, "--model", model_path)
        assert result.exit_code == 1 and "is an input of this command" in one_line_error(result)
    assert (tmp_path / "mri.nii.gz").read_bytes() == before


# -- windows that keep the MRI ----------------------------------------------------------------
REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "volumes" / "spm12"


def head_ct_hu(shape=(40, 40, 20)) -> Volume:
    """A head CT in HU: air -1000 around a soft-tissue ball (40 HU) in a bone shell (1000 HU)."""
    idx = np.indices(shape).astype(np.float32)
    r = np.sqrt(sum(((idx[a] - (shape[a] - 1) / 2) / (shape[a] / 2)) ** 2 for a in range(3)))
    data = np.where(r < 0.8, 40.0, np.where(r < 0.9, 1000.0, -1000.0)).astype(np.float32)
    return Volume(data, grid_affine(shape, (5.0, 5.0, 8.0), "RAS", (0, 0, 0)))


@pytest.mark.torch_free
def test_a_ct_not_in_hounsfield_units_gets_a_window_from_its_data(tmp_path, model_path):
    from cminet.runtime.volume import CT_WINDOW, default_window, saturated_share

    hu = head_ct_hu()
    assert default_window("ct", hu) == (CT_WINDOW, None)
    raw = Volume(hu.data + 1024.0, hu.affine)  # stored values without their RescaleIntercept: 24..2024
    assert saturated_share(raw.data, CT_WINDOW) > 0.9  # the hazard: the HU window whites out the head
    window, note = default_window("ct", raw)
    assert note and "Hounsfield" in note and saturated_share(raw.data, window) < 0.35
    mri = brain_mri((40, 40, 20), (5.0, 5.0, 8.0))
    save_nifti(mri, tmp_path / "mri.nii.gz")
    save_nifti(raw, tmp_path / "ct.nii.gz")
    result = run_cli("fuse-volume", tmp_path / "mri.nii.gz", tmp_path / "ct.nii.gz", "--modality", "ct",
                     "-o", tmp_path / "f.nii.gz", "--model", model_path)
    assert result.exit_code == 0 and "does not look like a CT in Hounsfield units" in result.output, result.output


@pytest.mark.torch_free
@pytest.mark.parametrize("name,modality", [("template_PET.nii.gz", "pet"), ("template_SPECT.nii.gz", "spect")])
def test_functional_windows_keep_the_brightest_uptake_below_the_top(name, modality, tmp_path, model_path):
    from cminet.runtime.volume import default_window, percentile_window, saturated_share

    if not (REAL / name).is_file():
        pytest.skip(f"real volumes not found at {REAL}")
    other = load_volume(REAL / name)
    window, note = default_window(modality, other)
    assert note is None and saturated_share(other.data, window) < 0.005
    # The whole-volume 0.5-99.5th percentiles (half the volume is air) put 5-10× more of the head at the top.
    assert saturated_share(other.data, percentile_window(other.data, (0.5, 99.5))) > 5 * saturated_share(
        other.data, window)
    narrow = f"--window={window[0]:g},{window[0] + 0.6 * (window[1] - window[0]):g}"
    result = run_cli("fuse-volume", REAL / "single_subj_T1.nii.gz", REAL / name, "--modality", modality,
                     "-o", tmp_path / "f.nii.gz", "--model", model_path, narrow)
    assert result.exit_code == 0 and "of OTHER's head at the top of the scale" in result.output, result.output


# -- hostile volumes: one validated reader path ------------------------------------------------
@pytest.mark.torch_free
def test_a_nan_rescale_slope_on_one_pet_slice_is_cleaned_and_said(tmp_path, model_path):
    mri = brain_mri((24, 24, 8), (8.0, 8.0, 8.0), "LPS")
    frame = pydicom.uid.generate_uid()
    mri_dir = write_series(mri, tmp_path / "mri", template="MR_small.dcm", frame=frame)
    pet = sphere_volume((20, 20, 8), (8.0, 8.0, 8.0), "RAS", value=5000.0, background=200.0)
    slopes = [1.0] * 8
    pet_dir = write_series(pet, tmp_path / "pet", modality="PT", frame=frame, slopes=slopes,
                           header={"PatientID": "4MR1", "PatientName": "CompressedSamples^MR1"})
    broken = sorted(pet_dir.iterdir())[3]
    ds = pydicom.dcmread(broken)
    ds.RescaleSlope = "nan"
    ds.save_as(broken)
    result = run_cli("fuse-volume", mri_dir, pet_dir, "-o", tmp_path / "f.nii.gz", "--model", model_path)
    assert result.exit_code == 0, result.output
    assert "voxels are NaN or Inf" in result.output and "nan..nan" not in result.output
    window = next(line for line in result.output.splitlines() if "pet: window" in line)
    assert "window 200..5000" in window.replace(" BQML", ""), window


@pytest.mark.torch_free
def test_scale_overflow_zero_and_absurd_voxels_are_cleaned_or_refused(tmp_path):
    volume = sphere_volume((16, 16, 8), (4.0, 4.0, 4.0), "RAS", value=5000.0, background=0.0)
    img = nib.Nifti1Image(volume.data.astype(np.int16), volume.affine)
    img.header.set_slope_inter(1e38, 0.0)  # every non-zero voxel overflows float32: Inf
    nib.save(img, tmp_path / "overflow.nii.gz")
    with pytest.warns(UserWarning, match="NaN or Inf"):
        loaded = load_volume(tmp_path / "overflow.nii.gz")
    assert np.isfinite(loaded.data).all()
    for side, name in ((0.0, "zero"), (1e30, "huge")):
        img = nib.Nifti1Image(volume.data, None)
        img.header.set_sform(np.diag([4.0, 4.0, side, 1.0]), code=1)  # as a broken writer leaves it
        img.header.set_qform(None, code=0)
        nib.save(img, tmp_path / f"{name}.nii.gz")
        with pytest.raises(CMINetError, match="voxel size"):
            load_volume(tmp_path / f"{name}.nii.gz")


@pytest.mark.torch_free
def test_a_header_declaring_more_voxels_than_memory_is_refused_before_decompressing(tmp_path, monkeypatch):
    import gzip
    import time

    header = nib.Nifti1Header()
    header.set_data_shape((2048, 2048, 2048))
    header.set_data_dtype(np.int16)
    header.set_qform(np.eye(4), code=1)
    with gzip.open(tmp_path / "bomb.nii.gz", "wb") as stream:  # a header and a few zeros: tiny on disk
        stream.write(header.binaryblock + b"\0" * (int(header["vox_offset"]) - 348) + bytes(1 << 20))
    monkeypatch.setenv("CMINET_MAX_MEMORY", "2G")
    started = time.perf_counter()
    with pytest.raises(CMINetError, match="2048×2048×2048 voxels: needs about"):
        load_volume(tmp_path / "bomb.nii.gz")
    assert time.perf_counter() - started < 5  # refused from the header, not after inflating 16 GiB


@pytest.mark.torch_free
def test_a_second_run_onto_the_same_outputs_never_mixes_two_sets(tmp_path, model_path):
    mri, pet = small_study(tmp_path)
    args = ["fuse-volume", mri, pet, "-o", tmp_path / "f.nii.gz", "--model", model_path, "--dicom-out",
            tmp_path / "dicom", "--png-dir", tmp_path / "png"]
    assert run_cli(*args).exit_code == 0
    first = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file() and "mri" not in p.parts
             and "pet" not in p.parts}
    result = run_cli(*args, "--window=0,1000")  # another run, other windows, the same outputs
    assert result.exit_code == 1 and "not an empty folder" in one_line_error(result)
    assert {p: p.stat().st_mtime_ns for p in first} == first  # the first set, untouched and whole
    assert outputs_of(tmp_path) == ["dicom", "f.nii.gz", "png"]


@pytest.mark.torch_free
def test_a_deflated_dicom_bomb_in_a_series_is_refused_before_it_inflates(tmp_path, monkeypatch):
    folder = write_series(brain_mri((24, 24, 4), (8.0, 8.0, 8.0), "LPS"), tmp_path / "mri", template="MR_small.dcm")
    bomb = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    bomb.Rows, bomb.Columns = 4096, 12800  # 100 MiB of zeros, about 100 KiB deflated
    bomb.PixelData = bytes(4096 * 12800 * 2)
    bomb.file_meta.TransferSyntaxUID = pydicom.uid.DeflatedExplicitVRLittleEndian
    bomb.save_as(folder / "zz_bomb.dcm", enforce_file_format=True)
    assert (folder / "zz_bomb.dcm").stat().st_size < 2**20
    monkeypatch.setenv("CMINET_MAX_MEMORY", "32M")
    with pytest.raises(CMINetError, match="deflated DICOM that inflates past"):
        load_volume(folder)
