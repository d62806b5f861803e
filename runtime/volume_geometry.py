"""World-space geometry for volume fusion: a viewing order for the MRI grid, world extents
and overlap, and trilinear resampling of one volume at the voxels of another.

All affines map voxel indices to world RAS+ millimetres (see :mod:`.volume_io`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .volume_io import GeometryError, Volume, _need

# The display order of a volume D[z, row, column]: z runs inferior → superior (axial
# slices), rows anterior → posterior (anterior at the top), columns from the patient's
# right to left (radiological convention). This is how the 2-D training slices look, so
# every slice reaches the network the way the network has seen slices before.
DISPLAY_AXCODES = ("S", "P", "L")
# Two grids' axes count as parallel (the fast resampling path) when treating them so moves no
# point of the volume by more than this fraction of a voxel.
PARALLEL_TOLERANCE_VOXELS = 1e-3


@dataclass(frozen=True)
class DisplayGrid:
    """A volume's voxels re-indexed in display order: only axis swaps and flips, never
    resampling, so going there and back is exact."""

    shape: tuple[int, int, int]  # Z, H, W
    affine: np.ndarray  # display index (z, row, column) → world RAS+ mm
    to_display_ornt: np.ndarray  # nibabel orientation: source axes → display axes
    from_display_ornt: np.ndarray

    def to_display(self, data: np.ndarray) -> np.ndarray:
        """Source-order array (X×Y×Z[×C]) → display-order view (Z×H×W[×C])."""
        return _need("nibabel.orientations").apply_orientation(data, self.to_display_ornt)

    def from_display(self, data: np.ndarray) -> np.ndarray:
        """Display-order array → view in the source volume's voxel order."""
        return _need("nibabel.orientations").apply_orientation(data, self.from_display_ornt)

    @property
    def spacing(self) -> np.ndarray:
        """mm per step along z, row, column."""
        return np.linalg.norm(self.affine[:3, :3], axis=0)


def display_grid(volume: Volume) -> DisplayGrid:
    orientations = _need("nibabel.orientations")
    source = orientations.io_orientation(volume.affine)
    target = orientations.axcodes2ornt(DISPLAY_AXCODES)
    forward = orientations.ornt_transform(source, target)
    backward = orientations.ornt_transform(target, source)
    affine = volume.affine @ orientations.inv_ornt_aff(forward, volume.shape)
    shape = tuple(int(volume.shape[int(axis)]) for axis in np.argsort(forward[:, 0]))
    return DisplayGrid(shape, affine, forward, backward)  # type: ignore[arg-type]


# -- extents and overlap ------------------------------------------------------------------
def world_extent(shape: tuple[int, ...], affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Axis-aligned world box (RAS mm) covered by the voxels, edges included (a voxel spans
    its centre ± half a voxel)."""
    corners = np.array(np.meshgrid(*[(-0.5, n - 0.5) for n in shape[:3]], indexing="ij")).reshape(3, -1)
    world = affine[:3, :3] @ corners + affine[:3, 3:4]
    return world.min(axis=1), world.max(axis=1)


def describe_extent(lo: np.ndarray, hi: np.ndarray) -> str:
    return ", ".join(f"{axis} {a:.1f}..{b:.1f}" for axis, a, b in zip("xyz", lo, hi, strict=True)) + " mm (RAS)"


def check_overlap(mri: Volume, other: Volume) -> float:
    """Refuse volumes whose world boxes do not meet; returns the fraction of the MRI box
    that OTHER's box covers."""
    mri_lo, mri_hi = world_extent(mri.shape, mri.affine)
    other_lo, other_hi = world_extent(other.shape, other.affine)
    overlap = np.minimum(mri_hi, other_hi) - np.maximum(mri_lo, other_lo)
    if np.any(overlap <= 0):
        raise GeometryError(f"MRI {mri.source} spans {describe_extent(mri_lo, mri_hi)} but OTHER {other.source} "
                            f"spans {describe_extent(other_lo, other_hi)}: they do not overlap in world space "
                            "(not co-registered, or one header's origin is wrong)")
    return float(np.prod(overlap) / np.prod(mri_hi - mri_lo))


# -- resampling ---------------------------------------------------------------------------
def _linear_steps(scale: float, offset: float, start: int, stop: int, n: int):
    """1-D linear interpolation at q = scale·index + offset for index in start..stop-1, with
    the same edge rule as :meth:`Resampler.__call__`: (low, high, fraction, inside)."""
    q = scale * np.arange(start, stop, dtype=np.float64) + offset
    inside = (q >= -0.5) & (q <= n - 0.5)
    q = np.clip(q, 0, n - 1)
    low = np.minimum(np.floor(q), max(n - 2, 0)).astype(np.intp)
    return low, np.minimum(low + 1, n - 1), (q - low).astype(np.float32), inside


class Resampler:
    """Values of ``volume`` at voxel positions of another grid (``grid_affine``), trilinear,
    ``fill`` outside the volume. Positions within half a voxel outside the outermost voxel
    centres take the edge value (they are still inside the scanned box).

    Trilinear interpolation is a product of three 1-D interpolations, so when the two grids'
    axes are parallel (the usual case: both scans axial, whatever their flips and voxel
    sizes) a slice is a blend of two planes interpolated along rows, then columns (:meth:`slab`); other
    orientations gather the eight neighbours of every point (:meth:`__call__`). Both give
    the same values."""

    def __init__(self, volume: Volume, grid_affine: np.ndarray, fill: float):
        self.shape = volume.shape
        self.values = np.ascontiguousarray(volume.data, dtype=np.float32).ravel()
        self.matrix = np.linalg.inv(volume.affine) @ grid_affine  # grid index → voxel index
        self.fill = np.float32(fill)
        # The volume's axes in the grid's order (views: swaps and flips only), and the
        # grid → voxel matrix in that order; diagonal when the axes are parallel.
        self._display = display_grid(volume)
        self._aligned_matrix = np.linalg.inv(self._display.affine) @ grid_affine
        off_diagonal = self._aligned_matrix[:3, :3] - np.diag(np.diag(self._aligned_matrix[:3, :3]))
        self.separable = bool(np.abs(off_diagonal).max() * max(self.shape) < PARALLEL_TOLERANCE_VOXELS)
        self._planes = self._display.to_display(volume.data) if self.separable else None

    def __call__(self, a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
        """``a``, ``b``, ``c``: broadcastable arrays of grid indices (e.g. z, row, column).
        Returns float32 of their broadcast shape."""
        a, b, c = (np.asarray(v, dtype=np.float32) for v in (a, b, c))
        m = self.matrix.astype(np.float32)
        inside = np.ones(np.broadcast_shapes(a.shape, b.shape, c.shape), dtype=bool)
        base = np.zeros(inside.shape, dtype=np.intp)
        steps, fractions = [], []
        stride = 1
        for axis in (2, 1, 0):  # C order: the last axis has stride 1
            n = self.shape[axis]
            q = m[axis, 0] * a + m[axis, 1] * b + m[axis, 2] * c + m[axis, 3]
            inside &= (q >= -0.5) & (q <= n - 0.5)
            q = np.clip(q, 0, n - 1)
            low = np.floor(q)
            if n > 1:
                low = np.minimum(low, n - 2)  # so that low + 1 is a voxel; the fraction reaches 1 at the edge
            fractions.append(q - low)
            base += low.astype(np.intp) * stride
            steps.append(stride if n > 1 else 0)
            stride *= n
        (f2, f1, f0), (s2, s1, s0) = fractions, steps
        v = self.values

        def along0(offset):
            lo = v[base + offset]
            return lo + f0 * (v[base + offset + s0] - lo)

        c00, c01, c10, c11 = along0(0), along0(s2), along0(s1), along0(s1 + s2)
        c0 = c00 + f1 * (c10 - c00)
        c1 = c01 + f1 * (c11 - c01)
        out = c0 + f2 * (c1 - c0)
        out[~inside] = self.fill
        return out

    def slab(self, z0: int, z1: int, height: int, width: int) -> np.ndarray:
        """Grid slices z0..z1-1 (each height×width) as float32 N×H×W."""
        if not self.separable:
            return self(np.arange(z0, z1)[:, None, None], np.arange(height)[None, :, None],
                        np.arange(width)[None, None, :])
        m, planes = self._aligned_matrix, self._planes
        depth_lo, depth_hi, depth_f, depth_in = _linear_steps(m[0, 0], m[0, 3], z0, z1, planes.shape[0])
        row_lo, row_hi, row_f, row_in = _linear_steps(m[1, 1], m[1, 3], 0, height, planes.shape[1])
        col_lo, col_hi, col_f, col_in = _linear_steps(m[2, 2], m[2, 3], 0, width, planes.shape[2])
        lo = planes[depth_lo].astype(np.float32)
        out = lo + depth_f[:, None, None] * (planes[depth_hi] - lo)  # N × rows × columns of the volume
        lo = out[:, row_lo]
        out = lo + row_f[None, :, None] * (out[:, row_hi] - lo)  # N × H × columns
        lo = out[:, :, col_lo]
        out = lo + col_f[None, None, :] * (out[:, :, col_hi] - lo)  # N × H × W
        inside = depth_in[:, None, None] & row_in[None, :, None] & col_in[None, None, :]
        out[~inside] = self.fill
        return out
