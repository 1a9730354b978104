"""Bilateral PA fixed-flexion knee film: a projection of the same phantoms as the MRI.

Attenuation (1/mm, about 60 keV) is painted on a coarse 3-D grid around each knee and integrated along the
antero-posterior (y) axis; both legs add into one line-integral image. Exposure then follows the usual
chain: heel effect and fall-off, scatter (a wide blur of the primary), detector blur, quantum noise, log,
an edge-enhancing and windowing "for presentation" processing, quantisation to ``bits_stored``.
The film is stored as seen from the front (PA view): the patient's right knee is on the image left,
columns run to the patient's left (+x), rows run inferior (-z). MONOCHROME1 films are stored inverted.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.ndimage import gaussian_filter, map_coordinates, zoom

from .mri import make_pose, rotation
from .render import Axis, Grid, Layer, Pose, render

#: Linear attenuation per tissue (1/mm, ~60 keV effective).
MU: dict[str, float] = {
    "air": 0.0, "skin": 0.0215, "fat": 0.0185, "muscle": 0.0210, "fluid": 0.0205, "fluid_thin": 0.0207,
    "vessel": 0.0210, "ligament": 0.0222, "meniscus": 0.0222, "cartilage": 0.0216, "cortex": 0.062,
    "marrow": 0.031, "sclerotic_marrow": 0.046, "bml": 0.031,
}
#: Marrow path channel (1 for cancellous bone) used to modulate a trabecular texture after projection.
TRABECULAR: dict[str, float] = {k: (1.0 if k in ("marrow", "sclerotic_marrow", "bml") else 0.0) for k in MU}


@dataclass(frozen=True)
class Site:
    """Acquisition site: detector and film conventions that vary across an OAI-like cohort."""

    name: str
    spacing_mm: float
    width_mm: float
    height_mm: float
    bits_stored: int
    modality: str  # "DX" or "CR"
    manufacturer_model: str
    source_detector_mm: float = 1016.0  # SID, 40 inches
    object_detector_mm: float = 75.0  # knee-joint centre to detector (fixed-flexion frame + bucky)

    @property
    def source_patient_mm(self) -> float:
        """Source to knee-joint centre (DICOM DistanceSourceToPatient)."""
        return self.source_detector_mm - self.object_detector_mm

    @property
    def magnification(self) -> float:
        """Geometric magnification of the knee on the detector, SID / SOD (> 1)."""
        return self.source_detector_mm / self.source_patient_mm


def make_sites(spacing_mm: float | tuple[float, float]) -> list[Site]:
    """Five sites with pixel spacings spread over ``spacing_mm`` (a range, or one value for all)."""
    lo, hi = (spacing_mm, spacing_mm) if isinstance(spacing_mm, int | float) else spacing_mm
    spacings = np.linspace(lo, hi, 5)
    specs = [("A", 430.0, 350.0, 12, "DX", 60.0), ("B", 400.0, 330.0, 14, "DX", 75.0),
             ("C", 420.0, 340.0, 16, "CR", 90.0), ("D", 410.0, 320.0, 15, "DX", 70.0),
             ("E", 430.0, 356.0, 13, "CR", 85.0)]
    return [Site(name=f"SITE_{n}", spacing_mm=round(float(sp), 4), width_mm=w, height_mm=h, bits_stored=b,
                 modality=mod, manufacturer_model=f"Synthetic {mod} detector {n}", object_detector_mm=odd)
            for (n, w, h, b, mod, odd), sp in zip(specs, spacings, strict=True)]


@dataclass(frozen=True)
class Film:
    """Film pixel grid: pixel (row r, col c) sits at world x = x0 + c * spacing, z = z0 - r * spacing (mm).

    ``spacing_mm`` is the pixel size projected to the knee's plane (patient mm); the detector pixel is
    ``magnification`` times larger (``detector_spacing_mm``, written as ImagerPixelSpacing). The beam is
    treated as parallel with one magnification for the whole knee (its depth is small against the SID).
    """

    rows: int
    cols: int
    spacing_mm: float
    x0: float
    z0: float
    magnification: float = 1.0

    @property
    def detector_spacing_mm(self) -> float:
        return self.spacing_mm * self.magnification

    def to_pixel(self, world: np.ndarray) -> tuple[float, float]:
        """World point (3,) -> (row, col) in the stored pixel array (floats)."""
        w = np.asarray(world, dtype=np.float64)
        return (self.z0 - w[2]) / self.spacing_mm, (w[0] - self.x0) / self.spacing_mm


def place_film(site: Site, scale: float, rng: np.random.Generator) -> tuple[Film, dict[str, Pose]]:
    """Film geometry and the two knees' poses: knees apart by a body-size distance, not centred."""
    rows, cols = round(site.height_mm / site.spacing_mm), round(site.width_mm / site.spacing_mm)
    sp = site.spacing_mm / site.magnification
    film = Film(rows=rows, cols=cols, spacing_mm=sp, x0=-(cols - 1) * sp / 2, z0=(rows - 1) * sp / 2,
                magnification=site.magnification)
    gap = rng.uniform(150.0, 185.0) * scale
    off = np.array([rng.uniform(-30.0, 30.0), 0.0, rng.uniform(-40.0, 40.0)])
    ext = rng.normal(6.0, 3.0)  # feet turned out (fixed-flexion positioning frame)
    poses = {}
    for side, sign in (("RIGHT", -1.0), ("LEFT", 1.0)):
        t = off + np.array([sign * gap / 2 + rng.normal(0, 2.0), rng.normal(0, 3.0), rng.normal(0, 3.0)])
        R = rotation(ext + rng.normal(0, 2.0), rng.normal(0, 1.5), rng.normal(0, 2.0))
        poses[side] = make_pose(R, t, side)
    return film, poses


#: Layers drawn on the coarse soft-tissue grid (absolute attenuation); the rest is drawn relative to muscle.
SOFT_LAYERS = ("body", "muscle_")
_MU_REL = {k: v - MU["muscle"] for k, v in MU.items()}


def _line_integrals(layers: list[Layer], pose: Pose, film: Film, cols: tuple[int, int], grid_mm: float,
                    y_step_mm: float, depth_mm: tuple[float, float], tables: dict[str, dict[str, float]],
                    sparse: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
    """Sum of each channel along y on a film-aligned grid (every m-th pixel), resampled to the film columns."""
    sp = film.spacing_mm
    m = max(1, round(grid_mm / sp))
    c_lo, c_hi = cols
    nx = (c_hi - c_lo - 1) // m + 2
    nz = (film.rows - 1) // m + 2
    ny = max(1, int((depth_mm[0] + depth_mm[1]) / y_step_mm))
    grid = Grid(y=Axis(pose.t[1] - depth_mm[0] + y_step_mm / 2, y_step_mm, ny), z=Axis(film.z0, -sp * m, nz),
                x=Axis(film.x0 + c_lo * sp, sp * m, nx), h=sp * m, stride=2)
    out = {ch: np.zeros(grid.shape, dtype=np.float32) for ch in tables}
    render(layers, pose, grid, tables, out, slab=8, sparse=sparse)
    rr = np.arange(film.rows, dtype=np.float64) / m
    cc = np.arange(c_hi - c_lo, dtype=np.float64) / m
    coords = np.stack(np.meshgrid(rr, cc, indexing="ij"))
    return {ch: map_coordinates(vol.sum(axis=0) * np.float32(y_step_mm), coords, order=1, mode="nearest")
            for ch, vol in out.items()}


def project(layers: list[Layer], pose: Pose, film: Film, grid_mm: float = 1.0, y_step_mm: float = 2.0,
            half_width_mm: float = 105.0, depth_mm: tuple[float, float] = (75.0, 95.0)
            ) -> tuple[np.ndarray, np.ndarray]:
    """Line integrals through one leg on the film grid: (attenuation (rows, cols), marrow path (rows, cols) mm).

    Skin, fat and muscle (smooth, large) are painted on a grid twice as coarse; everything inside them on a
    ``grid_mm`` in-plane grid with ``y_step_mm`` along the beam, ``half_width_mm`` either side of the knee and
    ``depth_mm`` = (in front, behind) the joint centre (the calf bulges backwards). Both are resampled
    (bilinear) to the film pixels and added.
    """
    sp = film.spacing_mm
    c_lo = max(0, int((pose.t[0] - half_width_mm - film.x0) / sp))
    c_hi = min(film.cols, int((pose.t[0] + half_width_mm - film.x0) / sp) + 1)
    soft = [layer for layer in layers if layer.name.startswith(SOFT_LAYERS)]
    inner = [layer for layer in layers if not layer.name.startswith(SOFT_LAYERS)]
    coarse = _line_integrals(soft, pose, film, (c_lo, c_hi), 2.0 * grid_mm, 2.0 * y_step_mm, depth_mm,
                             {"mu": MU})
    fine = _line_integrals(inner, pose, film, (c_lo, c_hi), grid_mm, y_step_mm, depth_mm,
                           {"mu": _MU_REL, "trab": TRABECULAR}, sparse=("trab",))
    line = np.zeros((film.rows, film.cols), dtype=np.float32)
    path = np.zeros_like(line)
    line[:, c_lo:c_hi] = coarse["mu"] + fine["mu"]
    path[:, c_lo:c_hi] = fine["trab"]
    return line, path


def smooth(img: np.ndarray, sigma_px: float) -> np.ndarray:
    """Gaussian blur; wide kernels run on a block-averaged copy and are interpolated back (fast, smooth)."""
    if sigma_px <= 6.0:
        return gaussian_filter(img, sigma_px)
    f = int(sigma_px // 3)
    rows, cols = img.shape
    pr, pc = (-rows) % f, (-cols) % f
    padded = np.pad(img, ((0, pr), (0, pc)), mode="edge")
    small = padded.reshape(padded.shape[0] // f, f, padded.shape[1] // f, f).mean(axis=(1, 3))
    small = gaussian_filter(small, sigma_px / f)
    big = zoom(small, f, order=1, grid_mode=True, mode="nearest")
    return big[:rows, :cols].astype(img.dtype, copy=False)


def expose(line: np.ndarray, marrow_mm: np.ndarray, film: Film, bits_stored: int, monochrome1: bool,
           rng: np.random.Generator) -> np.ndarray:
    """Line integrals -> processed "for presentation" film, uint16 in ``[0, 2**bits_stored)``.

    Higher stored value = more attenuation (bone bright) for MONOCHROME2; inverted for MONOCHROME1.
    """
    sp = film.spacing_mm
    rows, cols = line.shape
    noise = rng.standard_normal((rows, cols)).astype(np.float32)
    texture = gaussian_filter(noise, 0.6 / sp) - gaussian_filter(noise, 2.0 / sp)
    texture /= float(texture.std()) + 1e-6
    line = line + (0.001 * float(rng.uniform(0.7, 1.3))) * marrow_mm * texture  # trabecular pattern
    heel = 1.0 + float(rng.uniform(-0.18, 0.18)) * np.linspace(-1, 1, rows, dtype=np.float32)[:, None]
    yy, xx = np.meshgrid(np.linspace(-1, 1, rows, dtype=np.float32), np.linspace(-1, 1, cols, dtype=np.float32),
                         indexing="ij")
    falloff = 1.0 - 0.08 * (xx * xx + yy * yy)
    primary = np.exp(-line) * heel * falloff
    scatter = float(rng.uniform(0.12, 0.3)) * smooth(primary, 25.0 / sp)
    signal = gaussian_filter(primary + scatter, 0.35 / sp)
    photons = float(rng.uniform(4000.0, 12000.0))
    signal = signal + np.sqrt(np.maximum(signal, 1e-6) / photons) * rng.standard_normal((rows, cols)).astype(
        np.float32)
    att = -np.log(np.clip(signal, 1e-4, None))
    lo, hi = np.percentile(att, [0.5, 99.9])
    u = (att - lo) / max(float(hi - lo), 1e-6)
    # "For presentation" processing: detail enhancement plus a wide unsharp mask (dynamic range compression).
    # The wide term only acts inside the legs so that the direct-exposure background stays black.
    body = np.clip(u / 0.15, 0.0, 1.0)
    u = (u + float(rng.uniform(0.3, 0.8)) * (u - gaussian_filter(u, 1.5 / sp))
         + float(rng.uniform(0.2, 0.6)) * body * (u - smooth(u, 12.0 / sp)))
    u = u / max(float(np.percentile(u, 99.9)), 1e-6)
    u = np.clip(u, 0.0, 1.0) ** float(rng.uniform(1.0, 1.5))
    top = (1 << bits_stored) - 1
    v = np.rint(np.clip(0.02 + 0.96 * u, 0.0, 1.0) * top * float(rng.uniform(0.85, 1.0)))
    if monochrome1:
        v = top - v
    return v.astype(np.uint16)
