"""Paint a layered phantom onto a world-aligned voxel grid, with partial volume at every boundary.

A phantom is an ordered list of :class:`Layer` objects (later layers cover earlier ones). A layer owns one
distance function in the knee's local frame and one or more :class:`Paint` steps that reuse it (e.g. a bone:
cartilage = distance inflated, cortex = distance, marrow = distance deflated by the cortical thickness).
Tissue values per output channel (MRI signal, X-ray attenuation, ...) come from a table, so the same
anatomy feeds both modalities.

Speed: distances are smooth, so they are evaluated on an in-plane grid ``stride`` times coarser than the
output (about 1.25 mm) and interpolated bilinearly; only the partial-volume ramp and the blend run at full
resolution. The grid is processed in slabs along its first axis to keep temporaries small.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

Array = np.ndarray
Field = Callable[[Array, Array, Array], Array]


@dataclass(frozen=True)
class Axis:
    """Regular sample positions ``start + step * i`` (world mm), ``i = 0..n-1``; ``step`` may be negative."""

    start: float
    step: float
    n: int

    def coords(self, i0: int = 0, i1: int | None = None, stride: int = 1) -> Array:
        i1 = self.n if i1 is None else i1
        return self.start + self.step * np.arange(i0, i1, stride, dtype=np.float64)

    def index_range(self, lo: float, hi: float) -> tuple[int, int]:
        """Index range ``[a, b)`` of the samples inside the world interval ``[lo, hi]``."""
        a, b = sorted(((lo - self.start) / self.step, (hi - self.start) / self.step))
        return max(0, math.ceil(a)), min(self.n, math.floor(b) + 1)


@dataclass(frozen=True)
class Grid:
    """Sampling grid aligned with the world (patient LPS, mm) axes; arrays are indexed (y, z, x).

    For a coronal MRI the axes are (slice, row, column). ``h`` is the partial-volume ramp width in mm and
    ``stride`` the in-plane (z, x) subsampling of the distance evaluation (1 = none).
    """

    y: Axis
    z: Axis
    x: Axis
    h: float
    stride: int = 1

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.y.n, self.z.n, self.x.n)


@dataclass(frozen=True)
class Pose:
    """Rigid placement of a knee: ``local = M @ (world - t)``; ``M`` is a rotation, x-mirrored for a left knee."""

    M: Array
    t: Array

    def to_world(self, local: Array) -> Array:
        """Local points (..., 3) to world points (..., 3), mm."""
        return np.asarray(local, dtype=np.float64) @ np.asarray(self.M) + self.t


@dataclass(frozen=True)
class Paint:
    """One painting step of a layer.

    ``inset``: mm added to the layer distance (positive shrinks the shape; a callable of local x, y, z for a
    spatially varying thickness). ``zone``: optional distance intersected with the shape (restricts where
    this step applies). ``mods``: ``(tissue_b, mix)`` pairs that blend the tissue value towards
    ``tissue_b`` by the field ``mix(x, y, z, d)`` in [0, 1] (``d`` = the layer distance).
    """

    tissue: str
    inset: float | Field = 0.0
    zone: Field | None = None
    mods: tuple[tuple[str, Callable[[Array, Array, Array, Array], Array]], ...] = ()


@dataclass(frozen=True)
class Layer:
    """A named distance function with its local bounding box (mm) and its painting steps."""

    name: str
    sdf: Field
    lo: tuple[float, float, float]
    hi: tuple[float, float, float]
    paints: tuple[Paint, ...] = field(default_factory=tuple)


def _world_box(layer: Layer, pose: Pose, margin: float) -> tuple[Array, Array]:
    lo = np.asarray(layer.lo, dtype=np.float64) - margin
    hi = np.asarray(layer.hi, dtype=np.float64) + margin
    corners = np.array([[a, b, c] for a in (lo[0], hi[0]) for b in (lo[1], hi[1]) for c in (lo[2], hi[2])])
    world = pose.to_world(corners)
    return world.min(axis=0), world.max(axis=0)


def _coarse_count(n: int, m: int) -> int:
    """Number of coarse samples (every ``m``-th) whose bilinear interpolation covers ``n`` fine samples."""
    return n if m == 1 else -(-n // m) + 1


def _span(near: Array, m: int, n_fine: int) -> tuple[int, int, int, int]:
    """Coarse slice ``[c0, c1)`` and fine slice ``[f0, f1)`` covering every fine sample next to a True.

    ``near`` flags coarse samples (every ``m``-th fine sample, bilinear in between) that matter.
    """
    idx = np.flatnonzero(near)
    if m == 1:
        return int(idx[0]), int(idx[-1]) + 1, int(idx[0]), int(idx[-1]) + 1
    c0, c1 = max(0, int(idx[0]) - 1), min(len(near) - 1, int(idx[-1]) + 1)
    return c0, c1 + 1, c0 * m, min(c1 * m, n_fine)


def _upsample(c: Array, m: int, nz: int, nx: int) -> Array:
    """Bilinear upsampling of (A, Zc, Xc) by integer ``m`` along the last two axes, cropped to (A, nz, nx)."""
    if m == 1:
        return c[:, :nz, :nx]
    a, zc, xc = c.shape
    rows = np.empty((a, (zc - 1) * m + 1, xc), dtype=np.float32)
    rows[:, ::m] = c
    step = (c[:, 1:] - c[:, :-1]) * np.float32(1.0 / m)
    for r in range(1, m):
        np.add(c[:, :-1], step * np.float32(r), out=rows[:, r::m])
    rows = rows[:, :nz]
    out = np.empty((a, rows.shape[1], (xc - 1) * m + 1), dtype=np.float32)
    out[:, :, ::m] = rows
    step = (rows[:, :, 1:] - rows[:, :, :-1]) * np.float32(1.0 / m)
    for r in range(1, m):
        np.add(rows[:, :, :-1], step * np.float32(r), out=out[:, :, r::m])
    return out[:, :, :nx]


def render(layers: Sequence[Layer], pose: Pose, grid: Grid, tables: Mapping[str, Mapping[str, float]],
           out: Mapping[str, Array], slab: int = 4, sparse: Collection[str] = ()) -> None:
    """Paint ``layers`` (in order) into the arrays of ``out`` (one per channel of ``tables``), in place.

    ``tables[channel][tissue]`` is the value of a tissue in that channel; ``out[channel]`` has
    ``grid.shape`` (float32) and holds the background already. Paint blends ``v_new = v + a * (t - v)``
    with the partial-volume fraction ``a = clip(0.5 - d / h, 0, 1)``. Channels named in ``sparse`` skip
    paints whose value is 0 (they only accumulate; cheaper, for approximate auxiliary maps).
    """
    M = [[float(v) for v in row] for row in np.asarray(pose.M, dtype=np.float64)]
    t = np.asarray(pose.t, dtype=np.float64)
    m = max(1, int(grid.stride))
    inv_h = np.float32(1.0 / grid.h)
    half_h = np.float32(0.5 * grid.h)
    boxes = []
    for layer in layers:
        wlo, whi = _world_box(layer, pose, grid.h + 1.0)
        boxes.append((grid.y.index_range(wlo[1], whi[1]), grid.z.index_range(wlo[2], whi[2]),
                      grid.x.index_range(wlo[0], whi[0])))
    channels = list(tables)
    values = {ch: {k: np.float32(v) for k, v in tables[ch].items()} for ch in channels}
    for s0 in range(0, grid.y.n, slab):
        s1 = min(s0 + slab, grid.y.n)
        for layer, ((y0, y1), (z0, z1), (x0, x1)) in zip(layers, boxes, strict=True):
            a0, a1 = max(y0, s0), min(y1, s1)
            if a0 >= a1 or z0 >= z1 or x0 >= x1:
                continue
            nz, nx = z1 - z0, x1 - x0
            # Coarse sample positions covering the box (the last one may lie just past it).
            wy = (grid.y.coords(a0, a1) - t[1]).astype(np.float32)[:, None, None]
            wz = (grid.z.coords(z0, z0 + m * _coarse_count(nz, m), m) - t[2]).astype(np.float32)[None, :, None]
            wx = (grid.x.coords(x0, x0 + m * _coarse_count(nx, m), m) - t[0]).astype(np.float32)[None, None, :]
            lx = (M[0][0] * wx + M[0][1] * wy) + M[0][2] * wz
            ly = (M[1][0] * wx + M[1][1] * wy) + M[1][2] * wz
            lz = (M[2][0] * wx + M[2][1] * wy) + M[2][2] * wz
            d = layer.sdf(lx, ly, lz)
            for paint in layer.paints:
                dd = d + (paint.inset(lx, ly, lz) if callable(paint.inset) else np.float32(paint.inset))
                if paint.zone is not None:
                    dd = np.maximum(dd, paint.zone(lx, ly, lz))
                near = dd < half_h
                if not near.any():
                    continue
                # Crop to the coarse cells that can hold a non-zero fraction (thin shells, small shapes).
                ya, yb = _span(near.any(axis=(1, 2)), 1, a1 - a0)[:2]
                cz0, cz1, fz0, fz1 = _span(near.any(axis=(0, 2)), m, nz)
                cx0, cx1, fx0, fx1 = _span(near.any(axis=(0, 1)), m, nx)
                blk = (slice(ya, yb), slice(cz0, cz1), slice(cx0, cx1))
                alpha = _upsample(dd[blk].astype(np.float32, copy=False), m, fz1 - fz0, fx1 - fx0)
                alpha *= -inv_h
                alpha += np.float32(0.5)
                np.clip(alpha, 0.0, 1.0, out=alpha)
                mixes = [(tb, _upsample(fn(lx[blk], ly[blk], lz[blk], d[blk]).astype(np.float32, copy=False), m,
                                        fz1 - fz0, fx1 - fx0)) for tb, fn in paint.mods]
                for ch in channels:
                    table = values[ch]
                    if ch in sparse and table[paint.tissue] == 0 and all(table[tb] == 0 for tb, _ in mixes):
                        continue
                    value: Array | np.float32 = table[paint.tissue]
                    for tb, mix in mixes:
                        value = value + mix * (table[tb] - value)
                    view = out[ch][a0 + ya:a0 + yb, z0 + fz0:z0 + fz1, x0 + fx0:x0 + fx1]
                    view += alpha * (value - view)
