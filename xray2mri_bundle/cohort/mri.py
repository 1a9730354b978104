"""Coronal T1 3D FLASH-like MRI of one phantom knee: geometry, placement, contrast, bias field, noise.

The volume is 80 coronal slices of 1.5 mm over a 160 mm square field of view (matrix N, pixel 160/N mm),
stacked anterior -> posterior (array index 0 = most anterior slice, i.e. ascending world y). Contrast is
T1-like: fat and marrow bright, cortex, menisci and ligaments dark, cartilage intermediate, fluid dark,
muscle intermediate-dark. Intensities become uint16 with a mild smooth bias field and Rician noise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from xray2mri_bundle.constants import MRI_SLICE_MM as SLICE_MM
from xray2mri_bundle.constants import MRI_SLICES as SLICES
from xray2mri_bundle.constants import OAI_MRI_FOV_MM as FOV_MM

from .render import Axis, Grid, Layer, Pose, render

#: Relative T1-weighted signal per tissue (fat = 1).
T1_SIGNAL: dict[str, float] = {
    "air": 0.0, "skin": 0.55, "fat": 1.0, "muscle": 0.3, "fluid": 0.13, "fluid_thin": 0.3, "vessel": 0.1,
    "ligament": 0.07, "meniscus": 0.06, "cartilage": 0.47, "cortex": 0.04, "marrow": 0.88,
    "sclerotic_marrow": 0.3, "bml": 0.36,
}


@dataclass(frozen=True)
class MriGeometry:
    """Where the coronal slab sits in the world (LPS mm): first pixel centre and steps.

    Pixel (row r, col c) of slice k is at x = x0 + c * pixel_mm, y = y0 + k * SLICE_MM, z = z0 - r * pixel_mm.
    """

    matrix: int
    x0: float
    y0: float
    z0: float

    @property
    def pixel_mm(self) -> float:
        return FOV_MM / self.matrix

    def grid(self) -> Grid:
        n, ps = self.matrix, self.pixel_mm
        return Grid(y=Axis(self.y0, SLICE_MM, SLICES), z=Axis(self.z0, -ps, n), x=Axis(self.x0, ps, n), h=ps,
                    stride=max(1, round(1.25 / ps)))

    def to_pixel(self, world: np.ndarray) -> tuple[float, float, float]:
        """World point (3,) -> (slice, row, col) as floats in the position-ordered volume."""
        w = np.asarray(world, dtype=np.float64)
        return ((w[1] - self.y0) / SLICE_MM, (self.z0 - w[2]) / self.pixel_mm, (w[0] - self.x0) / self.pixel_mm)


def rotation(rz_deg: float, ry_deg: float, rx_deg: float) -> np.ndarray:
    """Rotation matrix Rz @ Ry @ Rx (degrees): internal/external rotation, coronal tilt, flexion."""
    a, b, c = (math.radians(v) for v in (rz_deg, ry_deg, rx_deg))
    Rz = np.array([[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0], [0, 0, 1]])
    Ry = np.array([[math.cos(b), 0, math.sin(b)], [0, 1, 0], [-math.sin(b), 0, math.cos(b)]])
    Rx = np.array([[1, 0, 0], [0, math.cos(c), -math.sin(c)], [0, math.sin(c), math.cos(c)]])
    return Rz @ Ry @ Rx


def make_pose(R: np.ndarray, t: np.ndarray, side: str) -> Pose:
    """Pose of a knee with canonical rotation ``R`` at world position ``t``; a left knee is x-mirrored."""
    F = np.diag([1.0, 1.0, 1.0]) if side == "RIGHT" else np.diag([-1.0, 1.0, 1.0])
    # world = t + F @ R @ local  =>  local = R.T @ F @ (world - t)
    return Pose(M=R.T @ F, t=np.asarray(t, dtype=np.float64))


def place_mri(side: str, matrix: int, rng: np.random.Generator) -> tuple[MriGeometry, Pose]:
    """Random but plausible scanner placement: FOV near the knee, joint near slice 36, small rotations."""
    sign = -1.0 if side == "RIGHT" else 1.0
    centre = np.array([sign * 95.0 + rng.normal(0, 4), rng.normal(0, 8), rng.normal(0, 15)])
    ps = FOV_MM / matrix
    geom = MriGeometry(matrix=matrix, x0=float(centre[0] - FOV_MM / 2 + ps / 2),
                       y0=float(centre[1] - SLICES * SLICE_MM / 2 + SLICE_MM / 2),
                       z0=float(centre[2] + FOV_MM / 2 - ps / 2))
    joint_slice = rng.uniform(34.0, 38.0)
    t = np.array([centre[0] + rng.uniform(-8, 8), geom.y0 + joint_slice * SLICE_MM, centre[2] + rng.uniform(-10, 10)])
    R = rotation(rng.normal(0, 4.0), rng.normal(0, 2.5), rng.normal(0, 3.0))
    return geom, make_pose(R, t, side)


def bias_field(geom: MriGeometry, rng: np.random.Generator, strength: float = 0.08) -> tuple[np.ndarray, np.ndarray]:
    """Smooth multiplicative coil-sensitivity field, separable as in-plane (N, N) times per-slice (SLICES,)."""
    n = geom.matrix
    u = np.linspace(-1, 1, n, dtype=np.float32)
    w = np.linspace(-1, 1, SLICES, dtype=np.float32)
    c = rng.normal(0.0, strength, size=7).astype(np.float32)
    plane = (1.0 + c[0] * u + c[1] * (u * u - 0.33))[None, :] + (c[2] * u + c[3] * (u * u - 0.33))[:, None]
    plane += c[6] * (u[:, None] * u[None, :])
    return plane.astype(np.float32), (1.0 + c[4] * w + c[5] * (w * w - 0.33)).astype(np.float32)


def simulate_mri(layers: list[Layer], pose: Pose, geom: MriGeometry, rng: np.random.Generator,
                 noise: float = 0.025) -> tuple[np.ndarray, float]:
    """Render, bias and add Rician noise; return (uint16 volume (SLICES, N, N) position-ordered, gain)."""
    grid = geom.grid()
    vol = np.zeros(grid.shape, dtype=np.float32)
    render(layers, pose, grid, {"t1": T1_SIGNAL}, {"t1": vol})
    plane, per_slice = bias_field(geom, rng)
    vol *= plane[None]
    vol *= per_slice[:, None, None]
    n1 = rng.standard_normal(vol.shape, dtype=np.float32)
    n1 *= noise
    vol += n1
    n1 = rng.standard_normal(vol.shape, dtype=np.float32)
    n1 *= noise
    vol *= vol
    n1 *= n1
    vol += n1
    np.sqrt(vol, out=vol)
    gain = float(rng.uniform(1800.0, 2600.0))
    vol *= gain
    np.clip(vol, 0, 4095, out=vol)
    return np.rint(vol).astype(np.uint16), gain
