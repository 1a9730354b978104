"""Bone edges of a coronal knee slice and the femur-over-tibia joint they enclose.

Used by RSSIM (its region of interest) and by the joint-space width. The slice is (H, W) with rows running
superior -> inferior (femur at the top, tibia at the bottom), as the MRI series and the writers store it.

Method, on one slice:
1. Intensities are scaled to [0, 1] between the 1st and 99th percentiles.
2. Bone edges: ``skimage.feature.canny`` with sigma 3 (the paper's value) and hysteresis thresholds 0.1 / 0.2
   of that range.
3. Each edge pixel is typed with the vertical gradient of the Gaussian-smoothed slice (same sigma): where
   the gradient is mostly vertical (|d/drow| >= |d/dcol|), "femoral-type" if the image gets darker going down
   (bright femoral marrow above the dark joint gap) and "tibial-type" if it gets brighter (gap above the bright
   tibial marrow).
4. The joint is the pair of rows (r_f, r_t), r_f < r_t <= r_f + max_gap, that maximises the number of columns
   with a femoral-type edge within +-2 rows of r_f AND a tibial-type edge within +-2 rows of r_t: a femoral
   surface lying over a tibial surface. ``max_gap`` defaults to 15% of the height (24 mm for the 160 mm FOV).
5. The femoral edge is the set of Canny edge pixels connected (8-neighbourhood) to the femoral-type seeds on
   row r_f, searched above the gap midline; the tibial edge likewise below it. Their vertical extents are
   [f_top, f_bottom] and [t_top, t_bottom].
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi
from skimage.feature import canny

__all__ = ["CANNY_SIGMA", "BoneEdges", "JointEdges", "detect_bone_edges", "find_joint"]

CANNY_SIGMA = 3.0
"""The paper's Canny sigma (pixels)."""
_SEED_BAND = 2
_MIN_COLUMNS = 3


@dataclass(frozen=True)
class BoneEdges:
    """Canny edges of one slice and the gradient typing of each pixel (all (H, W))."""

    edges: np.ndarray
    femoral_type: np.ndarray
    tibial_type: np.ndarray


@dataclass(frozen=True)
class JointEdges:
    """The femur-over-tibia joint found on one slice.

    femoral_row / tibial_row: rows of the femoral and tibial joint surfaces (r_f < r_t).
    femoral_edge / tibial_edge: (H, W) bool, the connected Canny edges of each bone near the joint.
    """

    femoral_row: int
    tibial_row: int
    femoral_edge: np.ndarray
    tibial_edge: np.ndarray
    n_columns: int

    @property
    def femoral_extent(self) -> tuple[int, int]:
        """(top row, bottom row) of the femoral edge, inclusive."""
        rows = np.nonzero(self.femoral_edge.any(axis=1))[0]
        return int(rows[0]), int(rows[-1])

    @property
    def tibial_extent(self) -> tuple[int, int]:
        """(top row, bottom row) of the tibial edge, inclusive."""
        rows = np.nonzero(self.tibial_edge.any(axis=1))[0]
        return int(rows[0]), int(rows[-1])


def normalise_unit(image: np.ndarray) -> np.ndarray | None:
    """Scale to [0, 1] between the 1st and 99th percentiles (clipped); None for a flat image."""
    lo, hi = np.percentile(image, [1.0, 99.0])
    if hi - lo <= 1e-12:
        lo, hi = float(image.min()), float(image.max())
        if hi - lo <= 1e-12:
            return None
    return np.clip((image - lo) / (hi - lo), 0.0, 1.0)


def detect_bone_edges(
    image: np.ndarray, sigma: float = CANNY_SIGMA, low: float = 0.1, high: float = 0.2
) -> BoneEdges | None:
    """Canny edges (sigma in pixels, thresholds as fractions of the [0, 1]-scaled range) with their types.

    image: (H, W), rows superior -> inferior. Returns None for a flat image.
    """
    x = normalise_unit(np.asarray(image, dtype=np.float64))
    if x is None:
        return None
    edges = canny(x, sigma=sigma, low_threshold=low, high_threshold=high)
    smooth = ndi.gaussian_filter(x, sigma)
    d_row = ndi.sobel(smooth, axis=0)
    d_col = ndi.sobel(smooth, axis=1)
    horizontal = np.abs(d_row) >= np.abs(d_col)
    return BoneEdges(
        edges=edges,
        femoral_type=edges & horizontal & (d_row < 0),
        tibial_type=edges & horizontal & (d_row > 0),
    )


def _dilate_rows(mask: np.ndarray, band: int) -> np.ndarray:
    """OR of the mask shifted by -band..band rows (a pixel 'near row r' counts on row r)."""
    return ndi.maximum_filter1d(mask.astype(np.uint8), size=2 * band + 1, axis=0).astype(bool)


def _best_pair(fem: np.ndarray, tib: np.ndarray, max_gap: int) -> tuple[int, int, int]:
    """(r_f, r_t, n_columns) maximising columns with a femoral surface on r_f over a tibial one on r_t."""
    fem_near = _dilate_rows(fem, _SEED_BAND)
    tib_near = _dilate_rows(tib, _SEED_BAND)
    height = fem.shape[0]
    best = (0, 0, 0)
    for gap in range(1, min(max_gap, height - 1) + 1):
        counts = (fem_near[: height - gap] & tib_near[gap:]).sum(axis=1)
        r = int(np.argmax(counts))
        if counts[r] > best[2]:  # strict: ties keep the smaller gap
            best = (r, r + gap, int(counts[r]))
    return best


def _connected_to(edges: np.ndarray, seeds: np.ndarray) -> np.ndarray:
    """Edge pixels in the 8-connected components that contain any seed pixel."""
    labels, _ = ndi.label(edges, structure=np.ones((3, 3), dtype=bool))
    keep = np.unique(labels[seeds & edges])
    keep = keep[keep > 0]
    return np.isin(labels, keep)


def find_joint(
    image: np.ndarray,
    sigma: float = CANNY_SIGMA,
    max_gap_fraction: float = 0.15,
    low: float = 0.1,
    high: float = 0.2,
) -> tuple[JointEdges | None, str]:
    """Find the femoral and tibial edges around the joint of one coronal slice (H, W).

    Returns (joint, "") or (None, reason) when there is no femur-over-tibia edge pair.
    """
    found = detect_bone_edges(image, sigma, low, high)
    if found is None:
        return None, "flat slice (no contrast)"
    if not found.edges.any():
        return None, "no Canny edges"
    height = found.edges.shape[0]
    max_gap = max(2, round(max_gap_fraction * height))
    r_f, r_t, n_cols = _best_pair(found.femoral_type, found.tibial_type, max_gap)
    if n_cols < _MIN_COLUMNS:
        return None, f"no femoral edge above a tibial edge within {max_gap} rows"
    mid = (r_f + r_t) // 2
    # seeds: the typed edge pixels near each surface row, in the columns where both surfaces were found
    both = _dilate_rows(found.femoral_type, _SEED_BAND)[r_f] & _dilate_rows(found.tibial_type, _SEED_BAND)[r_t]
    band = np.zeros_like(found.edges)
    band[max(r_f - _SEED_BAND, 0) : r_f + _SEED_BAND + 1] = True
    fem_seeds = found.femoral_type & band & both[None, :]
    band[:] = False
    band[max(r_t - _SEED_BAND, 0) : r_t + _SEED_BAND + 1] = True
    tib_seeds = found.tibial_type & band & both[None, :]
    upper = found.edges.copy()
    upper[mid + 1 :] = False
    lower = found.edges.copy()
    lower[: mid + 1] = False
    femoral_edge = _connected_to(upper, fem_seeds)
    tibial_edge = _connected_to(lower, tib_seeds)
    if not femoral_edge.any() or not tibial_edge.any():
        return None, "joint surfaces found but their edges are empty"
    return JointEdges(r_f, r_t, femoral_edge, tibial_edge, n_cols), ""
