"""The 3-D knee phantom: subject-varied shape parameters and the layered distance-field anatomy.

Frame: the canonical (right-knee) local frame in mm, x towards the patient's left (= medial for a right
knee), y posterior, z superior, origin at the joint centre (between the tibial spines, on the joint line).
A left knee uses the same canonical anatomy and is mirrored by its :class:`~.render.Pose`.

Structures (later ones cover earlier ones): skin and subcutaneous fat, eleven muscle bellies inside the deep
fascia, joint cavity (+ suprapatellar pouch), Hoffa's fat pad, popliteal vessels, collateral and cruciate
ligaments, patellar and quadriceps tendons, menisci, fibula, tibia (plateaus, spines, tuberosity), femur
(shaft, metaphysis, medial and lateral condyles, intercondylar notch, trochlear groove), patella; each bone
with cortex, marrow and articular cartilage, plus KL-driven osteophytes, sclerosis and joint-space narrowing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace

import numpy as np

from .grading import Findings
from .render import Field, Layer, Paint
from .sdf import capsule, ellipse2d, ellipsoid, smax, smin, smoothstep

Array = np.ndarray

#: Joint-space widths of a healthy knee at scale 1 (mm): medial, lateral.
HEALTHY_JSW_MM = (5.0, 6.0)
#: Half length of the modelled leg (mm): longer than any film or MRI field of view.
LEG_HALF_LENGTH_MM = 340.0
#: Muscle bellies as capsules (name, end a, end b, radius; mm, canonical right knee at scale 1).
MUSCLES = (
    ("quadriceps", (0.0, -10.0, 78.0), (3.0, -4.0, 340.0), 38.0),
    ("vastus_medialis", (28.0, -8.0, 38.0), (26.0, -4.0, 200.0), 23.0),
    ("vastus_lateralis", (-30.0, -2.0, 58.0), (-28.0, 0.0, 340.0), 25.0),
    ("semimembranosus", (28.0, 32.0, 22.0), (16.0, 26.0, 340.0), 21.0),
    ("biceps_femoris", (-32.0, 28.0, 14.0), (-20.0, 24.0, 340.0), 20.0),
    ("gastrocnemius_medial", (21.0, 34.0, 26.0), (12.0, 44.0, -180.0), 21.0),
    ("gastrocnemius_lateral", (-21.0, 34.0, 22.0), (-10.0, 42.0, -180.0), 19.0),
    ("soleus", (0.0, 26.0, -52.0), (0.0, 30.0, -340.0), 30.0),
    ("popliteus", (-28.0, 20.0, -12.0), (16.0, 26.0, -45.0), 7.0),
    ("tibialis_anterior", (-22.0, -12.0, -32.0), (-16.0, -14.0, -340.0), 15.0),
    ("peroneals", (-38.0, 8.0, -42.0), (-32.0, 8.0, -340.0), 14.0),
)


@dataclass(frozen=True)
class Shape:
    """Subject shape parameters in mm (already scaled), canonical right-knee frame."""

    cond_x_m: float = 20.5  # medial condyle centre x
    cond_x_l: float = -21.0
    cond_y: float = 3.0
    cond_rx_m: float = 14.5
    cond_ry_m: float = 28.0
    cond_rz_m: float = 21.0
    cond_rx_l: float = 14.0
    cond_ry_l: float = 27.0
    cond_rz_l: float = 20.0
    meta_rx: float = 37.0
    meta_ry: float = 23.0
    meta_rz: float = 26.0
    meta_z: float = 30.0
    femur_shaft_r: float = 13.5
    notch_w: float = 9.5
    tib_ax: float = 37.5
    tib_ay: float = 25.0
    tib_shaft_ax: float = 15.0
    tib_shaft_ay: float = 14.0
    fib_x: float = -33.0
    fib_y: float = 19.0
    fib_z: float = -27.0
    fib_head_r: float = 9.5
    fib_shaft_r: float = 5.5
    pat_y: float = -38.0
    pat_z: float = 27.0
    pat_rx: float = 21.0
    pat_ry: float = 10.0
    pat_rz: float = 19.0
    skin: float = 1.8
    fat: float = 9.0  # subcutaneous fat thickness
    fat_medial: float = 3.0  # extra fat on the medial side
    thigh: float = 17.0  # thigh widening over the film height
    calf: float = 14.0  # posterior calf bulge
    jsw_m0: float = HEALTHY_JSW_MM[0]  # healthy joint-space widths of this subject
    jsw_l0: float = HEALTHY_JSW_MM[1]


@dataclass(frozen=True)
class KneeParams:
    """One knee: its shape, its findings and the resulting joint-space widths and alignment."""

    side: str  # "RIGHT" or "LEFT"
    shape: Shape
    findings: Findings
    jsw_m: float  # bone-to-bone gap of the medial compartment (model target, mm)
    jsw_l: float
    varus_deg: float  # knee alignment relative to neutral: varus (+) / valgus (-)
    femur_tilt_deg: float  # femoral shaft tilt towards medial (anatomical valgus + varus share)
    tibia_tilt_deg: float  # tibial shaft tilt towards medial at the ankle (varus share)


def sample_shape(rng: np.random.Generator) -> Shape:
    """Draw one subject's shape: global size, proportions, soft-tissue build and healthy JSW."""
    scale = float(np.clip(rng.normal(1.0, 0.06), 0.86, 1.16))
    base = Shape()
    values = {}
    for f in fields(Shape):
        v = getattr(base, f.name) * scale
        if f.name not in ("fat", "fat_medial", "skin", "jsw_m0", "jsw_l0"):
            v *= 1.0 + float(rng.normal(0.0, 0.025))
        values[f.name] = v
    values["fat"] = float(3.5 + 17.0 * rng.beta(2.0, 3.0))
    values["fat_medial"] = float(rng.uniform(0.0, 7.0))
    values["skin"] = float(rng.uniform(1.4, 2.2))
    values["jsw_m0"] = float(np.clip(rng.normal(HEALTHY_JSW_MM[0], 0.45), 3.8, 6.4)) * scale
    values["jsw_l0"] = float(np.clip(rng.normal(HEALTHY_JSW_MM[1], 0.5), 4.6, 7.6)) * scale
    return Shape(**values)


def perturb_shape(shape: Shape, rng: np.random.Generator, rel: float = 0.015) -> Shape:
    """The other knee of the same subject: every length changed by about ``rel`` (similar, not equal)."""
    return replace(shape, **{f.name: getattr(shape, f.name) * (1.0 + float(rng.normal(0.0, rel)))
                             for f in fields(Shape)})


def knee_params(shape: Shape, side: str, findings: Findings, rng: np.random.Generator) -> KneeParams:
    """Combine a knee's shape with its findings: narrowing sets the compartment gaps, collapse adds varus."""
    jsw_m = shape.jsw_m0 * (1.0 + float(rng.normal(0.0, 0.03))) * (1.0 - findings.narrowing_medial)
    jsw_l = shape.jsw_l0 * (1.0 + float(rng.normal(0.0, 0.03))) * (1.0 - findings.narrowing_lateral)
    varus = float(rng.normal(0.0, 1.5)) + findings.varus_deg
    return KneeParams(side=side, shape=shape, findings=findings, jsw_m=max(jsw_m, 0.3), jsw_l=max(jsw_l, 0.3),
                      varus_deg=varus, femur_tilt_deg=5.0 + 0.5 * varus, tibia_tilt_deg=0.5 * varus)


# ----------------------------------------------------------------------------------------------- geometry
def _compartment_weight(x: Array, medial: bool) -> Array:
    """0..1 weight of the medial (x > 0) or lateral compartment, smooth across the spines."""
    return smoothstep((x - 4.0) / 8.0) if medial else smoothstep((-x - 4.0) / 8.0)


class KneeGeometry:
    """Distance functions of one knee (canonical frame). Build once per knee; methods are vectorised."""

    def __init__(self, p: KneeParams) -> None:
        self.p = p
        s = p.shape
        f = p.findings
        self.cz_m = p.jsw_m / 2.0 + s.cond_rz_m
        self.cz_l = p.jsw_l / 2.0 + s.cond_rz_l
        self.top_m = -p.jsw_m / 2.0
        self.top_l = -p.jsw_l / 2.0
        tf = math.radians(p.femur_tilt_deg)
        self.femur_tan = math.tan(tf)
        self.femur_shaft = ((0.0, 2.0, s.meta_z + 5.0),
                            (330.0 * math.sin(tf), 2.0, s.meta_z + 5.0 + 330.0 * math.cos(tf)))
        self.tibia_tan = math.tan(math.radians(p.tibia_tilt_deg))
        # Osteophytes: (ellipsoid centre, radii) per site, placed on the compartment margins.
        self.fem_ost: list[tuple[tuple[float, float, float], tuple[float, float, float]]] = []
        self.tib_ost: list[tuple[tuple[float, float, float], tuple[float, float, float]]] = []
        for site, size, dy in f.osteophytes:
            medial = site.endswith("medial")
            sign = 1.0 if medial else -1.0
            if site.startswith("femur"):
                cx, rx, cz, rz = ((s.cond_x_m, s.cond_rx_m, self.cz_m, s.cond_rz_m) if medial
                                  else (s.cond_x_l, s.cond_rx_l, self.cz_l, s.cond_rz_l))
                centre = (cx + sign * (0.9 * rx + 0.3 * size), s.cond_y + dy, cz - 0.5 * rz)
                self.fem_ost.append((centre, (0.75 * size, 1.7 * size, 1.1 * size)))
            else:
                top = self.top_m if medial else self.top_l
                centre = (sign * (s.tib_ax + 0.2 * size), dy, top - 1.2 - 0.1 * size)
                self.tib_ost.append((centre, (0.9 * size, 1.8 * size, 0.75 * size)))
        # Tibial spines sharpen with KL.
        self.spine_h = 3.0 + f.spine_mm

    # -- bones
    def femur(self, x: Array, y: Array, z: Array) -> Array:
        s = self.s
        # Metaphysis: an elliptic column flaring from the shaft to the epicondyles, rounded at the bottom.
        flare = smoothstep((z - 22.0) / 55.0)
        ax = s.meta_rx + flare * (s.femur_shaft_r - s.meta_rx)
        ay = s.meta_ry + flare * (s.femur_shaft_r - s.meta_ry)
        cx = np.maximum(z - (s.meta_z + 5.0), 0.0) * self.femur_tan
        d = smax(ellipse2d(x - cx, y + 1.0 - 3.0 * flare, ax, ay), (s.meta_z - 16.0) - z, 8.0)
        d = np.maximum(d, z - 100.0)
        d = smin(d, capsule(x, y, z, *self.femur_shaft, s.femur_shaft_r), 4.0)
        cm = ellipsoid(x, y, z, (s.cond_x_m, s.cond_y, self.cz_m), (s.cond_rx_m, s.cond_ry_m, s.cond_rz_m))
        cl = ellipsoid(x, y, z, (s.cond_x_l, s.cond_y, self.cz_l), (s.cond_rx_l, s.cond_ry_l, s.cond_rz_l))
        d = smin(d, smin(cm, cl, 4.0), 6.0)
        notch = ellipsoid(x, y, z, (0.0, 16.0, 2.0), (s.notch_w, 24.0, 17.0))
        d = smax(d, -notch, 3.0)
        groove = ellipsoid(x, y, z, (0.0, s.cond_y - s.cond_ry_m - 4.0, 24.0), (6.0, 7.0, 18.0))
        d = smax(d, -groove, 3.0)
        for c, r in self.fem_ost:
            d = smin(d, ellipsoid(x, y, z, c, r), 3.0)
        return d

    def tibia_top(self, x: Array) -> Array:
        """Height (mm) of the tibial subchondral plate: medial and lateral plateaus at their own heights."""
        w = smoothstep((x + 6.0) / 12.0)
        return self.top_l + w * (self.top_m - self.top_l)

    def tibia(self, x: Array, y: Array, z: Array) -> Array:
        s = self.s
        taper = smoothstep((-z - 12.0) / 58.0)
        ax = s.tib_ax + taper * (s.tib_shaft_ax - s.tib_ax)
        ay = s.tib_ay + taper * (s.tib_shaft_ay - s.tib_ay)
        cx = -self.tibia_tan * np.minimum(z, 0.0)
        side = ellipse2d(x - cx, y - 2.0 * taper, ax, ay)
        d = smax(side, z - self.tibia_top(x), 6.0)
        top = 0.5 * (self.top_m + self.top_l)
        for sx in (-5.0, 5.0):
            d = smin(d, ellipsoid(x, y, z, (sx, -1.0, top - 1.0), (4.0, 9.0, self.spine_h + 1.0)), 3.0)
        d = smin(d, ellipsoid(x, y, z, (0.0, -20.0 * s.tib_ay / 25.0, -32.0), (13.0, 9.0, 18.0)), 6.0)
        for c, r in self.tib_ost:
            d = smin(d, ellipsoid(x, y, z, c, r), 3.0)
        return d

    def femur_shaft_sdf(self, x: Array, y: Array, z: Array) -> Array:
        """The femur above the metaphysis (z > 80 mm): the shaft alone."""
        return capsule(x, y, z, *self.femur_shaft, self.s.femur_shaft_r)

    def tibia_shaft(self, x: Array, y: Array, z: Array) -> Array:
        """The tibia below the metaphysis (z < -75 mm): an elliptic column leaning with the varus share."""
        s = self.s
        return ellipse2d(x + self.tibia_tan * z, y - 2.0, s.tib_shaft_ax, s.tib_shaft_ay)

    def fibula_shaft(self, x: Array, y: Array, z: Array) -> Array:
        return capsule(x, y, z, *self._fibula_axis(), self.s.fib_shaft_r)

    def _fibula_axis(self) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
        s = self.s
        return (s.fib_x, s.fib_y, s.fib_z), (s.fib_x + 330.0 * self.tibia_tan, s.fib_y + 3.0, s.fib_z - 330.0)

    def fibula(self, x: Array, y: Array, z: Array) -> Array:
        s = self.s
        head = ellipsoid(x, y, z, (s.fib_x, s.fib_y, s.fib_z), (s.fib_head_r, s.fib_head_r * 0.95,
                                                               s.fib_head_r * 1.15))
        shaft = capsule(x, y, z, *self._fibula_axis(), s.fib_shaft_r)
        return smin(head, shaft, 6.0)

    def patella(self, x: Array, y: Array, z: Array) -> Array:
        s = self.s
        return ellipsoid(x, y, z, (0.0, s.pat_y, s.pat_z), (s.pat_rx, s.pat_ry, s.pat_rz))

    @property
    def s(self) -> Shape:
        return self.p.shape

    # -- thickness fields
    def cartilage_t(self, x: Array) -> Array:
        """Articular cartilage thickness per bone (mm): just under half the compartment's gap."""
        w = smoothstep((x + 8.0) / 16.0)
        return 0.47 * (self.p.jsw_l + w * (self.p.jsw_m - self.p.jsw_l))

    def cartilage_inset(self, x: Array, y: Array, z: Array) -> Array:
        """Paint inset of the cartilage layer: the bone inflated by the cartilage thickness."""
        return -self.cartilage_t(x)

    def fibula_cortex(self, x: Array, y: Array, z: Array) -> Array:
        return 1.2 + 1.5 * smoothstep((-z - 40.0) / 40.0)

    def _sclerosis_w(self, x: Array, z: Array) -> Array:
        f = self.p.findings
        if f.sclerosis == 0:
            return np.zeros_like(x)
        return (f.sclerosis * _compartment_weight(x, f.jsn_compartment == "medial")
                * smoothstep((14.0 - np.abs(z)) / 6.0))

    def femur_cortex(self, x: Array, y: Array, z: Array) -> Array:
        return 1.1 + 3.0 * smoothstep((z - 30.0) / 50.0) + 0.8 * self._sclerosis_w(x, z)

    def tibia_cortex(self, x: Array, y: Array, z: Array) -> Array:
        return 1.1 + 3.0 * smoothstep((-z - 25.0) / 50.0) + 0.8 * self._sclerosis_w(x, z)

    def sclerosis_mix(self, x: Array, y: Array, z: Array, d: Array) -> Array:
        """Marrow -> sclerotic marrow blend: strongest just under the subchondral plate, fading over 9 mm."""
        w = self._sclerosis_w(x, z)
        return 0.4 * w * np.clip(1.0 + d / 9.0, 0.0, 1.0)

    def bml_mix(self, x: Array, y: Array, z: Array, d: Array) -> Array:
        f = self.p.findings
        s = self.s
        sign = 1.0 if f.jsn_compartment == "medial" else -1.0
        cx, cz, rz = (s.cond_x_m, self.cz_m, s.cond_rz_m) if sign > 0 else (s.cond_x_l, self.cz_l, s.cond_rz_l)
        if f.bml_site == "femur":
            c, r = (cx, s.cond_y - 4.0, cz - rz + 7.0), (7.0, 9.0, 6.0)
        else:
            top = self.top_m if sign > 0 else self.top_l
            c, r = (sign * 19.0, 0.0, top - 6.0), (9.0, 10.0, 5.5)
        return np.clip(0.5 - ellipsoid(x, y, z, c, r) / 3.0, 0.0, 0.9)


def _segment(name: str, a: tuple[float, float, float], b: tuple[float, float, float], r: float, tissue: str,
             flat: tuple[int, float] | None = None, zone: Field | None = None) -> Layer:
    """A ligament or tendon: a capsule ``a -> b`` of radius ``r``, or a band when ``flat = (axis, squeeze)``.

    A band is a capsule in coordinates where ``axis`` (0 = x, 1 = y) is multiplied by ``squeeze`` < 1, so
    it is ``r / squeeze`` wide along that axis.
    """
    scale = [1.0, 1.0, 1.0]
    if flat is not None:
        scale[flat[0]] = flat[1]
    sa = tuple(v * k for v, k in zip(a, scale, strict=True))
    sb = tuple(v * k for v, k in zip(b, scale, strict=True))

    def sdf(x: Array, y: Array, z: Array) -> Array:
        if flat is None:
            return capsule(x, y, z, a, b, r)
        return capsule(x * scale[0], y * scale[1], z, sa, sb, r)

    reach = [r / k for k in scale]
    lo = tuple(min(p, q) - e for p, q, e in zip(a, b, reach, strict=True))
    hi = tuple(max(p, q) + e for p, q, e in zip(a, b, reach, strict=True))
    return Layer(name, sdf, lo, hi, (Paint(tissue, zone=zone),))


def build_layers(p: KneeParams) -> list[Layer]:
    """The ordered layer list of one knee (canonical frame); see the module docstring for the order."""
    g = KneeGeometry(p)
    return _soft_tissue_layers(p.shape) + _joint_layers(g) + _bone_layers(g)


def _soft_tissue_layers(s: Shape) -> list[Layer]:
    """Skin and subcutaneous fat (an elliptic leg widening into the thigh and calf) and muscle bellies."""
    big = LEG_HALF_LENGTH_MM

    def body_axes(z: Array) -> tuple[Array, Array, Array]:
        up = smoothstep((z - 20.0) / 110.0)
        down = smoothstep((-z - 25.0) / 70.0)
        a = 44.0 + s.fat + 0.5 * s.fat_medial + s.thigh * up - 2.0 * down
        b = 45.0 + 0.8 * s.fat + 0.7 * s.thigh * up + s.calf * down
        cy = 6.0 * up + 0.6 * s.calf * down
        return a, b, cy

    def body(x: Array, y: Array, z: Array) -> Array:
        a, b, cy = body_axes(z)
        return ellipse2d(x - 0.5 * s.fat_medial, y - cy, a, b)

    def fascia(x: Array, y: Array, z: Array) -> Array:
        """Deep fascia: muscles stay inside it, subcutaneous fat outside."""
        a, b, cy = body_axes(z)
        return ellipse2d(x, y - cy - 0.1 * s.fat, a - s.skin - s.fat - 0.5 * s.fat_medial, b - s.skin - 0.9 * s.fat)

    wmax = 44.0 + s.fat + s.fat_medial + s.thigh + 5.0
    layers = [
        Layer("body", body, (-wmax, -wmax - 10, -big), (wmax + s.fat_medial, wmax + s.calf + 10, big),
              (Paint("skin"), Paint("fat", inset=s.skin))),
    ]
    # Muscle bellies (fat fills the planes between them): thigh above the joint, calf below and behind.
    k = s.meta_rx / Shape().meta_rx
    for name, a, b, r in MUSCLES:
        a = tuple(v * k for v in a)
        b = tuple(v * k for v in b)
        layers.append(_segment(f"muscle_{name}", a, b, r * k, "muscle", zone=fascia))
    return layers


def _joint_layers(g: KneeGeometry) -> list[Layer]:
    """Joint cavity and pouch, fat pads, vessels, ligaments and tendons, menisci."""
    s, f = g.s, g.p.findings
    big = LEG_HALF_LENGTH_MM
    # Joint fluid: a thin cavity always, distended with suprapatellar pouch when there is an effusion.
    eff = f.effusion
    cav_r = (44.0, 31.0, 11.0) if eff else (36.0, 25.0, 4.5)
    pouch_r = (25.0, 7.5 if eff else 2.0, 24.0 if eff else 18.0)
    pouch_c = (0.0, s.pat_y + s.pat_ry + 1.5 + (3.0 if eff else 0.0), s.pat_z + s.pat_rz + 6.0)
    tissue = "fluid" if eff else "fluid_thin"
    layers = [
        Layer("joint_cavity", lambda x, y, z: ellipsoid(x, y, z, (0.0, 2.0, 1.0), cav_r),
              (-cav_r[0], 2 - cav_r[1], 1 - cav_r[2]), (cav_r[0], 2 + cav_r[1], 1 + cav_r[2]), (Paint(tissue),)),
        Layer("suprapatellar_pouch", lambda x, y, z: ellipsoid(x, y, z, pouch_c, pouch_r),
              tuple(c - r for c, r in zip(pouch_c, pouch_r, strict=True)),
              tuple(c + r for c, r in zip(pouch_c, pouch_r, strict=True)), (Paint("fluid"),)),
        Layer("hoffa_fat", lambda x, y, z: ellipsoid(x, y, z, (0.0, -30.0, -4.0), (19.0, 8.0, 12.0)),
              (-19, -38, -16), (19, -22, 8), (Paint("fat"),)),
        Layer("popliteal_vessels",
              lambda x, y, z: np.minimum(capsule(x, y, z, (-2.0, 38.0, -big), (-2.0, 38.0, big), 3.5),
                                         capsule(x, y, z, (5.0, 41.0, -big), (5.0, 41.0, big), 4.5)),
              (-6, 34, -big), (10, 46, big), (Paint("vessel"),)),
    ]
    # Ligaments and tendons.
    ax = s.tib_ax
    mcl = [((s.meta_rx + 2.0, 2.0, 28.0), (ax + 2.5, 0.0, -5.0)), ((ax + 2.5, 0.0, -5.0), (24.0, -4.0, -50.0))]
    lcl = ((-s.meta_rx - 1.0, 6.0, 24.0), (s.fib_x - s.fib_head_r - 1.0, s.fib_y, s.fib_z + 4.0))
    pat_low = (0.0, s.pat_y - 3.0, s.pat_z - s.pat_rz + 3.0)
    pat_up = (0.0, s.pat_y - 2.0, s.pat_z + s.pat_rz - 3.0)

    layers += [
        _segment("mcl_upper", mcl[0][0], mcl[0][1], 1.8, "ligament", flat=(1, 0.3)),
        _segment("mcl_lower", mcl[1][0], mcl[1][1], 1.8, "ligament", flat=(1, 0.3)),
        _segment("lcl", *lcl, 2.2, "ligament"),
        _segment("acl", (-8.0, 18.0, 14.0), (3.0, -6.0, -1.0), 4.5, "ligament"),
        _segment("pcl", (7.0, 2.0, 14.0), (1.0, 22.0, -8.0), 5.0, "ligament"),
        _segment("patellar_tendon", pat_low, (0.0, -32.0 * s.tib_ay / 25.0, -36.0), 2.2, "ligament",
                 flat=(0, 0.25)),
        _segment("quadriceps_tendon", pat_up, (0.0, -36.0, 140.0), 2.8, "ligament", flat=(0, 0.22)),
    ]
    # Menisci: wedge rings on each plateau, extruded and flattened with disease.
    for medial in (True, False):
        sign = 1.0 if medial else -1.0
        cx = (s.cond_x_m if medial else s.cond_x_l) + sign * (f.meniscal_extrusion_mm if medial else 0.0)
        top = g.top_m if medial else g.top_l
        hmax = 6.0 * (0.75 if (medial and f.kl >= 3) else 1.0)
        ro = (17.5 * abs(s.cond_x_m) / 20.5, 22.0 * s.tib_ay / 25.0)

        def meniscus(x: Array, y: Array, z: Array, cx: float = cx, top: float = top, hmax: float = hmax,
                     ro: tuple[float, float] = ro) -> Array:
            q = np.sqrt(((x - cx) / ro[0]) ** 2 + ((y - 1.0) / ro[1]) ** 2)
            h = hmax * np.clip((q - 0.5) * 2.0, 0.0, 1.0)
            dz = z - top - 0.2
            d = np.maximum(np.maximum((q - 1.0) * ro[0], (0.5 - q) * ro[0]), -dz)
            return np.maximum(d, (dz - h) * 0.8)

        layers.append(Layer("meniscus_medial" if medial else "meniscus_lateral", meniscus,
                            (cx - ro[0] - 1, 1 - ro[1] - 1, top - 1), (cx + ro[0] + 1, 1 + ro[1] + 1, top + 8),
                            (Paint("meniscus"),)))
    return layers


def _bone_layers(g: KneeGeometry) -> list[Layer]:
    """Fibula, tibia, femur and patella with cortex, marrow (sclerosis, marrow lesion) and cartilage."""
    s, f = g.s, g.p.findings
    big = LEG_HALF_LENGTH_MM
    layers: list[Layer] = []
    lean = big * g.tibia_tan  # x drift of the tibia and fibula shafts at the far end of the leg
    # Long bones are split at the metaphysis: the shafts (simple shapes, far from the joint) are separate
    # layers so that the film, which shows much more of the leg than the MRI, stays cheap to compute.
    fib_paints = (Paint("cortex"), Paint("marrow", inset=g.fibula_cortex))
    layers.append(Layer("fibula", g.fibula, (s.fib_x - 15, s.fib_y - 12, -60.0),
                        (s.fib_x + 15, s.fib_y + 15, s.fib_z + 13), fib_paints))
    layers.append(Layer("fibula_shaft", g.fibula_shaft, (s.fib_x - 10 + min(lean, 0.0), s.fib_y - 10, -big),
                        (s.fib_x + 10 + max(lean, 0.0), s.fib_y + 13, -50.0), fib_paints))

    def marrow_mods(bone: str) -> tuple:
        mods = [("sclerotic_marrow", g.sclerosis_mix)]
        if f.bone_marrow_lesion and f.bml_site == bone:
            mods.append(("bml", g.bml_mix))
        return tuple(mods)

    def tib_zone(x: Array, y: Array, z: Array) -> Array:
        zone = np.maximum(g.tibia_top(x) - 2.5 - z, 5.0 - np.abs(x))
        return np.maximum(zone, ellipse2d(x, y, s.tib_ax - 2.0, s.tib_ay - 2.0))

    tib_paints = (Paint("cortex"), Paint("marrow", inset=g.tibia_cortex, mods=marrow_mods("tibia")))
    layers.append(Layer("tibia", g.tibia, (-s.tib_ax - 12 - 3.0, -s.tib_ay - 12, -85.0),
                        (s.tib_ax + 12 + 3.0, s.tib_ay + 12, 8.0 + f.spine_mm),
                        (Paint("cartilage", inset=g.cartilage_inset, zone=tib_zone), *tib_paints)))
    layers.append(Layer("tibia_shaft", g.tibia_shaft,
                        (-s.tib_shaft_ax - 3 + min(lean, 0.0), -s.tib_shaft_ay, -big),
                        (s.tib_shaft_ax + 3 + max(lean, 0.0), s.tib_shaft_ay + 4, -75.0), tib_paints))
    cz = 0.5 * (g.cz_m + g.cz_l)

    def fem_zone(x: Array, y: Array, z: Array) -> Array:
        # Articular surfaces only: distal and posterior condyles and the trochlea, not the notch walls or
        # the sides of the condyles.
        height = z - (cz + 6.0 + 26.0 * smoothstep((-y - 10.0) / 12.0))
        sides = np.maximum(x - (s.cond_x_m + 0.8 * s.cond_rx_m), (s.cond_x_l - 0.8 * s.cond_rx_l) - x)
        return np.maximum(np.maximum(height, sides), np.minimum(8.0 - np.abs(x), 4.0 + y))

    fem_paints = [Paint("cartilage", inset=g.cartilage_inset, zone=fem_zone)]
    if f.cartilage_defect:
        dx = 2.0
        ry = f.defect_y_mm - s.cond_y
        frac = max(0.05, 1.0 - (dx / s.cond_rx_m) ** 2 - (ry / s.cond_ry_m) ** 2)
        dc = (s.cond_x_m + dx, f.defect_y_mm, g.cz_m - s.cond_rz_m * math.sqrt(frac))
        rr = f.defect_radius_mm
        fem_paints.append(Paint("fluid", inset=g.cartilage_inset,
                                zone=lambda x, y, z: ellipsoid(x, y, z, dc, (rr, rr * 1.3, rr))))
    fem_paints += [Paint("cortex"), Paint("marrow", inset=g.femur_cortex, mods=marrow_mods("femur"))]
    reach = max(abs(s.cond_x_m) + s.cond_rx_m, abs(s.cond_x_l) + s.cond_rx_l, s.meta_rx) + 10.0
    drift = g.femur_shaft[1][0]
    layers.append(Layer("femur", g.femur, (-reach + min(drift, 0.0) * 0.3, -s.meta_ry - 12, -2.0),
                        (reach + max(drift, 0.0) * 0.3, s.cond_ry_m + 12, 90.0), tuple(fem_paints)))
    r = s.femur_shaft_r + 3.0
    layers.append(Layer("femur_shaft", g.femur_shaft_sdf, (min(drift, 0.0) - r, 2.0 - r, 80.0),
                        (max(drift, 0.0) + r, 2.0 + r, big), tuple(fem_paints[-2:])))
    layers.append(Layer("patella", g.patella, (-s.pat_rx - 4, s.pat_y - s.pat_ry - 4, s.pat_z - s.pat_rz - 4),
                        (s.pat_rx + 4, s.pat_y + s.pat_ry + 4, s.pat_z + s.pat_rz + 4),
                        (Paint("cartilage", inset=-3.0, zone=lambda x, y, z: (s.pat_y + 1.0) - y),
                         Paint("cortex"), Paint("marrow", inset=1.0))))
    return layers


def measure_jsw(p: KneeParams, step_mm: float = 0.1) -> tuple[float, float]:
    """Minimum radiographic joint-space width (mm) of the (medial, lateral) compartment, from the phantom.

    For columns across the central 14 mm of each compartment (margins and their osteophytes excluded), the
    gap between the lowest femoral bone and the highest tibial bone seen along the antero-posterior rays
    around the condyle's lowest point; the minimum over the columns (as a reader measures minimum JSW).
    """
    g = KneeGeometry(p)
    s = p.shape
    result = []
    for cx in (s.cond_x_m, s.cond_x_l):
        x = np.arange(cx - 7.0, cx + 7.01, 1.0, dtype=np.float32)[:, None, None]
        y = np.arange(s.cond_y - 6.0, s.cond_y + 6.01, 1.0, dtype=np.float32)[None, :, None]
        z = np.arange(-5.5, 5.5, step_mm, dtype=np.float32)[None, None, :]
        shape = np.broadcast_shapes(x.shape, y.shape, z.shape)
        X, Y, Z = (np.broadcast_to(a, shape) for a in (x, y, z))
        fem = (g.femur(X, Y, Z) < 0).any(axis=1)
        tib = (g.tibia(X, Y, Z) < 0).any(axis=1)
        zz = z.ravel()
        low = np.where(fem.any(axis=1), zz[np.argmax(fem, axis=1)], np.inf)
        top = np.where(tib.any(axis=1), zz[len(zz) - 1 - np.argmax(tib[:, ::-1], axis=1)], -np.inf)
        result.append(float(max(0.0, np.min(low - top) - step_mm)))
    return result[0], result[1]
