"""Signed-distance-like primitives (mm, negative inside) evaluated on numpy coordinate arrays.

The phantom is built from these: ellipsoids, capsules, elliptic columns and smooth unions. Every function
takes local coordinate arrays ``x, y, z`` (any broadcastable shapes, float32) and returns an array of the
broadcast shape. The ellipsoid and ellipse distances are the usual first-order bounds (exact on spheres,
close near the surface elsewhere), which is all partial-volume painting needs.
"""

from __future__ import annotations

import numpy as np

Array = np.ndarray

_EPS = 1e-6


def ellipsoid(x: Array, y: Array, z: Array, c: tuple[float, float, float], r: tuple[float, float, float]) -> Array:
    """Approximate distance to an axis-aligned ellipsoid with centre ``c`` and semi-axes ``r`` (mm)."""
    u, v, w = (x - c[0]) / r[0], (y - c[1]) / r[1], (z - c[2]) / r[2]
    k0 = np.sqrt(u * u + v * v + w * w)
    u, v, w = u / r[0], v / r[1], w / r[2]
    k1 = np.sqrt(u * u + v * v + w * w) + _EPS
    return k0 * (k0 - 1.0) / k1


def ellipse2d(x: Array, y: Array, a: Array | float, b: Array | float) -> Array:
    """Approximate in-plane distance to an origin-centred ellipse with semi-axes ``a`` (x) and ``b`` (y)."""
    u, v = x / a, y / b
    k0 = np.sqrt(u * u + v * v)
    u, v = u / a, v / b
    k1 = np.sqrt(u * u + v * v) + _EPS
    return k0 * (k0 - 1.0) / k1


def capsule(x: Array, y: Array, z: Array, a: tuple[float, float, float], b: tuple[float, float, float],
            r: float) -> Array:
    """Exact distance to the capsule of radius ``r`` around the segment ``a -> b`` (mm)."""
    ab = np.asarray(b, dtype=np.float64) - np.asarray(a, dtype=np.float64)
    denom = float(ab @ ab)
    px, py, pz = x - a[0], y - a[1], z - a[2]
    h = np.clip((px * ab[0] + py * ab[1] + pz * ab[2]) * (1.0 / denom), 0.0, 1.0)
    dx, dy, dz = px - h * ab[0], py - h * ab[1], pz - h * ab[2]
    return np.sqrt(dx * dx + dy * dy + dz * dz) - r


def smin(a: Array, b: Array, k: float) -> Array:
    """Polynomial smooth union of two distances; ``k`` (mm) is the blend radius (0 = hard union)."""
    if k <= 0:
        return np.minimum(a, b)
    h = np.clip(k - np.abs(a - b), 0.0, None) * (1.0 / k)
    return np.minimum(a, b) - h * h * (k * 0.25)


def smax(a: Array, b: Array, k: float) -> Array:
    """Smooth intersection (and, with ``b`` negated, smooth subtraction) of two distances."""
    if k <= 0:
        return np.maximum(a, b)
    h = np.clip(k - np.abs(a - b), 0.0, None) * (1.0 / k)
    return np.maximum(a, b) + h * h * (k * 0.25)


def smoothstep(t: Array | float) -> Array:
    """Cubic step from 0 (t <= 0) to 1 (t >= 1)."""
    t = np.clip(t, 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)
