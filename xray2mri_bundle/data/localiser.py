"""Knee-joint localisation on one knee's part of a PA radiograph.

:class:`JointLocaliser` is the interface: ``(image (H, W) float, spacing (row, col) mm) -> (row, col)`` in
pixels of ``image`` (bone bright, i.e. MONOCHROME1 already inverted). A learned detector (e.g. the paper's
YOLOv2) plugs in by implementing it; :class:`~.xray_transforms.LocaliseJoint` takes any such callable.

:class:`ClassicalJointLocaliser` needs no trained weights. On a 1 mm working grid (smoothed, percentile
scaled):
1. leg mask: Otsu threshold (air vs. leg);
2. joint row: the joint space is a thin dark horizontal band with bone above (condyles) and below (tibial
   plateau). A "dark band" response ``min(I(r - d), I(r + d)) - I(r)`` (positive only, inside the leg) is
   summed over columns for half-widths d = 3, 5, 7 mm (narrow to wide joint spaces); the row of the largest
   total response is the joint line. Shaft edges are vertical and give no response; the femoral and tibial
   metaphyses have bone on one side only;
3. joint column: centre of the widest bone run (Otsu on the row-band profile within the leg) just below the
   joint line (tibial plateau, 3..10 mm) and just above it (condyles, 5..14 mm), averaged;
4. refinement: the row minimum of the mean intensity of the central 40 mm of the knee within +-4 mm of the
   joint line, with a parabolic sub-pixel fit.
Measured on the synthetic cohort by ``scripts/measure_localiser.py`` (figures in docs/data.md).
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np
from scipy import ndimage
from skimage.filters import threshold_otsu

__all__ = ["ClassicalJointLocaliser", "JointLocaliser", "MRIJointLocaliser"]


@runtime_checkable
class JointLocaliser(Protocol):
    """Anything that maps a knee image (H, W) (bone bright) and its (row, col) spacing in mm to the joint
    centre (row, col) in pixels of that image."""

    def __call__(self, image: np.ndarray, spacing_mm: tuple[float, float]) -> tuple[float, float]: ...


class ClassicalJointLocaliser:
    """Weight-free joint localiser (dark-band response + bone runs); see the module docstring.

    ``work_mm``: working pixel size (mm); ``sigma_mm``: Gaussian smoothing; ``band_half_widths_mm``: the
    dark-band half-widths d; ``refine_mm``: search half-height of the row refinement.
    """

    def __init__(self, work_mm: float = 1.0, sigma_mm: float = 1.0,
                 band_half_widths_mm: tuple[float, ...] = (3.0, 5.0, 7.0), refine_mm: float = 4.0) -> None:
        self.work_mm, self.sigma_mm = float(work_mm), float(sigma_mm)
        self.band_half_widths_mm, self.refine_mm = tuple(band_half_widths_mm), float(refine_mm)

    def prepare(self, image: np.ndarray, spacing: tuple[float, float]) -> tuple[np.ndarray, tuple[float, float]]:
        """Resample to ``work_mm`` pixels, smooth, scale percentiles (1, 99.5) to (0, 1)."""
        zoom = (spacing[0] / self.work_mm, spacing[1] / self.work_mm)
        small = ndimage.zoom(image.astype(np.float32), zoom, order=1, grid_mode=True, mode="nearest")
        img = ndimage.gaussian_filter(small, self.sigma_mm / self.work_mm)
        lo, hi = np.percentile(img, [1.0, 99.5])
        img = (img - lo) / max(float(hi - lo), 1e-6)
        return img, (image.shape[0] / small.shape[0], image.shape[1] / small.shape[1])

    def band_response(self, img: np.ndarray, leg: np.ndarray) -> np.ndarray:
        """Per-row total dark-band response (H,) of a prepared image."""
        h = img.shape[0]
        total = np.zeros(h)
        for d_mm in self.band_half_widths_mm:
            d = max(1, int(round(d_mm / self.work_mm)))
            if 2 * d >= h:
                continue
            resp = np.zeros_like(img)
            resp[d:h - d] = np.minimum(img[: h - 2 * d], img[2 * d:]) - img[d:h - d]
            np.clip(resp, 0.0, None, out=resp)
            total += (resp * leg).sum(axis=1) / np.sqrt(d_mm)
        return ndimage.gaussian_filter1d(total, 1.0)

    def _bone_centre(self, img: np.ndarray, leg: np.ndarray, r0: int, r1: int) -> float | None:
        """Centre column of the widest bone run in rows [r0, r1) (Otsu on the band profile inside the leg)."""
        r0, r1 = max(0, r0), min(img.shape[0], r1)
        if r1 <= r0:
            return None
        profile = img[r0:r1].mean(axis=0)
        inside = leg[r0:r1].any(axis=0)
        if inside.sum() < 10 or np.ptp(profile[inside]) <= 0:
            return None
        bone = (profile > threshold_otsu(profile[inside])) & inside
        labels, n = ndimage.label(bone)
        if n == 0:
            return None
        sizes = ndimage.sum(bone, labels, index=np.arange(1, n + 1))
        cols = np.flatnonzero(labels == int(np.argmax(sizes)) + 1)
        return (cols.min() + cols.max()) / 2.0

    def __call__(self, image: np.ndarray, spacing_mm: tuple[float, float]) -> tuple[float, float]:
        image = np.asarray(image, dtype=np.float32)
        if image.ndim != 2:
            raise ValueError(f"localiser expects a 2-D image, got shape {image.shape}")
        img, scale = self.prepare(image, spacing_mm)
        h, w = img.shape
        if np.ptp(img) <= 0:
            return (image.shape[0] - 1) / 2.0, (image.shape[1] - 1) / 2.0
        leg = img > threshold_otsu(img)
        row = int(np.argmax(self.band_response(img, leg)))
        mm = 1.0 / self.work_mm
        centres = [c for c in (self._bone_centre(img, leg, row + round(3 * mm), row + round(10 * mm)),
                               self._bone_centre(img, leg, row - round(14 * mm), row - round(5 * mm)))
                   if c is not None]
        col = float(np.mean(centres)) if centres else (w - 1) / 2.0
        r = self.refine_row(img, row, col)
        # back to input pixels (grid-mode zoom keeps the image edges: centres scale about -0.5)
        return (r + 0.5) * scale[0] - 0.5, (col + 0.5) * scale[1] - 0.5

    def refine_row(self, img: np.ndarray, row: int, col: float) -> float:
        """Sub-pixel row of the darkest line of the central 40 mm of the knee within ``refine_mm``."""
        h = img.shape[0]
        half = int(round(20.0 / self.work_mm))
        c = int(round(col))
        profile = img[:, max(0, c - half):c + half + 1].mean(axis=1)
        k = int(round(self.refine_mm / self.work_mm))
        lo = max(0, row - k)
        r = lo + int(np.argmin(profile[lo:row + k + 1]))
        if 0 < r < h - 1:
            a, b, cc = profile[r - 1], profile[r], profile[r + 1]
            denom = a - 2 * b + cc
            if denom > 1e-9:
                return r + float(np.clip(0.5 * (a - cc) / denom, -1.0, 1.0))
        return float(r)


class MRIJointLocaliser:
    """Knee-joint centre on a coronal T1 MRI volume (H, W, D): (row, col) in pixels of one slice.

    On T1 fat and marrow are both bright, so the film localiser's bone threshold does not carry over; instead,
    on the mean of the slab's central slices (fractions ``slab`` of D, anterior -> posterior), on a 1 mm grid:
    1. leg mask: intensity above ``leg_threshold`` of the percentile-scaled image (air is dark);
    2. column: median over rows of the centre of the leg's extent (the knee outline);
    3. row: the film localiser's dark-band response (joint space between the marrow of the condyles and of the
       plateau; cartilage, menisci and cortex are dark on T1), restricted to the central 40 mm, refined to the
       darkest line;
    4. ``offset_mm`` = (inferior, medial): the cohort's joint centre (between the tibial spines, on the joint
       line) lies 2.0 mm below the darkest line and 1.8 mm lateral of the outline centre; calibrated on 100 knees
       of a seed-1 cohort, verified on other seeds (docs/data.md). The medial sign needs the knee's ``side``;
       without it the column offset is not applied. Real knees may need another calibration.
    Accuracy: ``scripts/measure_localiser.py --mri`` (docs/data.md).
    """

    def __init__(self, slab: tuple[float, float] = (0.3, 0.7), leg_threshold: float = 0.15,
                 central_mm: float = 20.0, offset_mm: tuple[float, float] = (2.0, -1.8),
                 film_localiser: ClassicalJointLocaliser | None = None) -> None:
        if not 0.0 <= slab[0] < slab[1] <= 1.0:
            raise ValueError(f"slab must be fractions 0 <= a < b <= 1, got {slab}")
        self.slab = (float(slab[0]), float(slab[1]))
        self.leg_threshold, self.central_mm = float(leg_threshold), float(central_mm)
        self.offset_mm = (float(offset_mm[0]), float(offset_mm[1]))
        self.band = film_localiser if film_localiser is not None else ClassicalJointLocaliser()

    def coronal_image(self, volume: np.ndarray) -> np.ndarray:
        """Mean of the slab's slices: (H, W, D) -> (H, W) float32."""
        volume = np.asarray(volume, dtype=np.float32)
        if volume.ndim != 3:
            raise ValueError(f"MRI localiser expects an (H, W, D) volume, got shape {volume.shape}")
        d = volume.shape[-1]
        a = min(int(self.slab[0] * d), d - 1)
        b = max(a + 1, int(round(self.slab[1] * d)))
        return volume[..., a:b].mean(axis=-1)

    def __call__(self, volume: np.ndarray, spacing_mm: tuple[float, float],
                 side: str | None = None) -> tuple[float, float]:
        image = self.coronal_image(volume)
        img, scale = self.band.prepare(image, spacing_mm)
        h, w = img.shape
        if np.ptp(img) <= 0:
            return (image.shape[0] - 1) / 2.0, (image.shape[1] - 1) / 2.0
        leg = img > self.leg_threshold
        min_run = 20.0 / self.band.work_mm
        centres = [(cols[0] + cols[-1]) / 2.0 for cols in (np.flatnonzero(r) for r in leg) if len(cols) > min_run]
        col = float(np.median(centres)) if centres else (w - 1) / 2.0
        half = int(round(self.central_mm / self.band.work_mm))
        central = np.zeros_like(leg)
        central[:, max(0, int(col) - half):int(col) + half + 1] = True
        row = int(np.argmax(self.band.band_response(img, leg & central)))
        r = self.band.refine_row(img, row, col)
        r += self.offset_mm[0] / self.band.work_mm
        side = str(side or "").upper()
        if side in ("RIGHT", "LEFT"):  # columns run to the patient's left: medial is +col for a right knee
            col += (1.0 if side == "RIGHT" else -1.0) * self.offset_mm[1] / self.band.work_mm
        return (r + 0.5) * scale[0] - 0.5, (col + 0.5) * scale[1] - 0.5
