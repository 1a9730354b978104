"""Rigid alignment of a coronal knee MRI to a canonical pose: the knee as it lies in a template, not in the coil.

Two MRIs of one knee differ mostly by how the knee lay in the coil (a few degrees of rotation, a few mm of
position; docs/training.md, "the best score any single sample can reach"): the X-ray cannot tell it, so a model
trained on coil-frame slices must blur over it. Here each MRI is registered rigidly (3 rotations, 3 translations)
to a template knee with normalised cross-correlation, and resampled on the template's grid, so slice k of every
aligned volume cuts every knee at the same anatomical depth.

Coordinates: a volume is (D, H, W) = (depth anterior -> posterior, rows superior -> inferior, columns patient
right -> left), spacing (D, H, W) mm; a point is in mm, (depth, row, col), relative to an *anchor* index of the
volume. A rigid map ``(R, t)`` sends a template point ``q`` to the moving volume's point ``R @ q + t``. A left knee
is a mirror image of a right knee along the columns: it is registered to the template mirrored along W.

The template (:class:`PoseTemplate`) is built from training MRIs by :func:`build_template` (groupwise: the mean of
the joint-centred volumes, then register every knee to the mean and average again), so it needs no atlas and no
ground truth; real OAI data builds its own.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .frame import CANONICAL_POSE, JOINT_CENTRED, MRI_FRAMES

logger = logging.getLogger(__name__)

__all__ = ["POSE_TEMPLATE_FILE", "PoseTemplate", "RigidPose", "build_template", "coarse_volume", "load_pose_template",
           "model_frame", "register", "rotation_matrix", "sample_rigid", "template_axes", "template_digest",
           "template_from_records", "write_pose_template"]

#: the template's file name in a model folder (models trained in the canonical-pose frame carry it)
POSE_TEMPLATE_FILE = "mri_pose_template.pt"

#: the template grid: (depth, row, col) mm spacing and half extents around the anchor (the joint)
TEMPLATE_SPACING_MM: tuple[float, float, float] = (3.0, 2.5, 2.5)
TEMPLATE_HALF_MM: tuple[float, float, float] = (45.0, 70.0, 70.0)


def rotation_matrix(omega: torch.Tensor) -> torch.Tensor:
    """Rotation (3, 3) of the axis-angle vector ``omega`` (3,) radians (differentiable: ``matrix_exp``)."""
    zero = omega.new_zeros(())
    skew = torch.stack([
        torch.stack([zero, -omega[2], omega[1]]),
        torch.stack([omega[2], zero, -omega[0]]),
        torch.stack([-omega[1], omega[0], zero]),
    ])
    return torch.linalg.matrix_exp(skew)


@dataclass(frozen=True)
class RigidPose:
    """A rigid map template -> moving volume: ``omega`` (3,) axis-angle radians, ``t`` (3,) mm, (depth, row, col)."""

    omega: tuple[float, float, float]
    t: tuple[float, float, float]

    @property
    def matrix(self) -> torch.Tensor:
        return rotation_matrix(torch.tensor(self.omega, dtype=torch.float64))

    @property
    def angle_deg(self) -> float:
        return float(torch.linalg.vector_norm(torch.tensor(self.omega))) * 180.0 / torch.pi


def _grid_points(shape: Sequence[int], spacing: Sequence[float], anchor: Sequence[float]) -> torch.Tensor:
    """Points (D, H, W, 3) in mm of every voxel of a grid, relative to its anchor index."""
    axes = [(torch.arange(n, dtype=torch.float32) - a) * s for n, s, a in zip(shape, spacing, anchor, strict=True)]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1)


def sample_rigid(volume: torch.Tensor, spacing: Sequence[float], anchor: Sequence[float], R: torch.Tensor,
                 t: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Trilinear samples of ``volume`` (D, H, W) at ``R @ q + t`` for the grid points ``points`` (D', H', W', 3) mm;
    outside the volume: 0. Differentiable in ``R`` and ``t``."""
    p = points.reshape(-1, 3) @ R.T.to(points.dtype) + t.to(points.dtype)
    size = torch.tensor(volume.shape, dtype=points.dtype)
    idx = torch.as_tensor(anchor, dtype=points.dtype) + p / torch.as_tensor(spacing, dtype=points.dtype)
    norm = 2.0 * idx / (size - 1) - 1.0  # align_corners=True: index 0 -> -1, index n-1 -> +1
    grid = norm.flip(-1).reshape(1, *points.shape)  # grid_sample wants (x, y, z) = (W, H, D) index order
    out = F.grid_sample(volume[None, None].to(points.dtype), grid, mode="bilinear", padding_mode="zeros",
                        align_corners=True)
    return out.reshape(points.shape[:-1])


def coarse_volume(volume: torch.Tensor, spacing: Sequence[float], anchor: Sequence[float],
                  pose: RigidPose | None = None) -> torch.Tensor:
    """``volume`` (D, H, W) on the template grid (identity pose unless given), intensities / 99th percentile."""
    return _on_template_grid(_normalised(volume, spacing), spacing, anchor, pose)


def _on_template_grid(normalised: torch.Tensor, spacing: Sequence[float], anchor: Sequence[float],
                      pose: RigidPose | None = None) -> torch.Tensor:
    R = pose.matrix.float() if pose is not None else torch.eye(3)
    t = torch.tensor(pose.t, dtype=torch.float32) if pose is not None else torch.zeros(3)
    return sample_rigid(normalised, spacing, anchor, R, t, _template_points())


@functools.lru_cache(maxsize=1)
def _template_shape() -> tuple[int, int, int]:
    """(D, H, W) of the template grid: +-``TEMPLATE_HALF_MM`` at ``TEMPLATE_SPACING_MM``, odd (centred anchor)."""
    d, h, w = (int(round(2 * h / s)) + 1 for h, s in zip(TEMPLATE_HALF_MM, TEMPLATE_SPACING_MM, strict=True))
    return d, h, w


@functools.lru_cache(maxsize=1)
def _template_points() -> torch.Tensor:
    """The template grid's points (D, H, W, 3) mm around its centre (built once; callers never modify it)."""
    shape = _template_shape()
    return _grid_points(shape, TEMPLATE_SPACING_MM, [(n - 1) / 2 for n in shape])


def _normalised(volume: torch.Tensor, spacing: Sequence[float]) -> torch.Tensor:
    """``volume`` box-averaged to about the template spacing and divided by its 99th percentile: what the
    registration and the template compare."""
    return _smooth_to(volume.float(), spacing) / _scale(volume)


def _scale(volume: torch.Tensor) -> float:
    flat = volume.float().flatten()
    step = max(1, flat.numel() // 200_000)
    return float(torch.quantile(flat[::step], 0.99).clamp_min(1e-6))


def _smooth_to(volume: torch.Tensor, spacing: Sequence[float]) -> torch.Tensor:
    """Box-average ``volume`` to about the template spacing (no aliasing when sampling it coarsely)."""
    kernel = [max(1, int(round(ts / s))) for ts, s in zip(TEMPLATE_SPACING_MM, spacing, strict=True)]
    if all(k == 1 for k in kernel):
        return volume
    pad = [k // 2 for k in kernel]
    out = F.avg_pool3d(volume[None, None], kernel, stride=1, padding=pad, count_include_pad=False)[0, 0]
    return out[: volume.shape[0], : volume.shape[1], : volume.shape[2]]


def _ncc(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    a, b = a[mask], b[mask]
    a = a - a.mean()
    b = b - b.mean()
    return (a * b).sum() / (a.norm() * b.norm() + 1e-8)


@dataclass
class PoseTemplate:
    """The canonical right knee on the template grid: ``image`` (D, H, W) (intensities / 99th percentile) and
    ``depth_anchor``, the slice index that the template's anchor depth corresponds to (where the joint sits in
    depth after alignment; 36 assumes OAI's 80-slice COR_T1_3D_FLASH, whose joint lies near slice 36)."""

    image: torch.Tensor
    depth_anchor: float = 36.0

    def for_side(self, side: str | None) -> torch.Tensor:
        return self.image.flip(-1) if str(side or "").upper() == "LEFT" else self.image

    @property
    def digest(self) -> str:
        """A short hash of the template image: names the frame (cache fingerprints, ``settings`` of diffusion.pt)."""
        return hashlib.sha256(self.image.float().numpy().tobytes()).hexdigest()[:16]

    def state_dict(self) -> dict:
        return {"image": self.image.half(), "depth_anchor": self.depth_anchor,
                "spacing_mm": TEMPLATE_SPACING_MM, "half_mm": TEMPLATE_HALF_MM}

    @classmethod
    def from_state_dict(cls, state: dict) -> PoseTemplate:
        if tuple(state["spacing_mm"]) != TEMPLATE_SPACING_MM or tuple(state["half_mm"]) != TEMPLATE_HALF_MM:
            raise ValueError(f"pose template grid {state['spacing_mm']} / {state['half_mm']} is not this version's "
                             f"{TEMPLATE_SPACING_MM} / {TEMPLATE_HALF_MM}: build the template again")
        image = state["image"].float()
        if tuple(image.shape) != _template_shape():
            raise ValueError(f"pose template image {tuple(image.shape)} does not fill the template grid "
                             f"{_template_shape()}")
        return cls(image, float(state["depth_anchor"]))


def load_pose_template(path: str | os.PathLike | PoseTemplate) -> PoseTemplate:
    """A template file (``xray2mri pose-template``); errors name the file and what is wrong with it."""
    if isinstance(path, PoseTemplate):
        return path
    if not Path(path).is_file():
        raise FileNotFoundError(f"pose template {path} not found: build it from the training knees with "
                                f"`xray2mri pose-template --dataset-dir <tree> --out {path}`")
    try:
        return PoseTemplate.from_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    except Exception as exc:  # noqa: BLE001 - torch / a foreign file raise many types: name the file in all
        raise ValueError(f"{path} is not a readable pose template ({type(exc).__name__}: {exc})") from exc


def template_digest(template: str | os.PathLike | PoseTemplate | None) -> str | None:
    """:attr:`PoseTemplate.digest` of a template or its file; None for None (the joint-centred frame)."""
    return None if template is None else load_pose_template(template).digest


def model_frame(settings: dict, folder: str | os.PathLike) -> tuple[str, Path | None]:
    """The MRI frame a model folder's weights were trained in, and the template that frame needs: (``"joint_centred"``,
    None) or (``"canonical_pose"``, the folder's :data:`POSE_TEMPLATE_FILE` or None when it is missing).

    ``settings`` (of its diffusion.pt) decide: ``mri_frame``, and ``mri_pose_template_sha256``, which the template
    beside the weights must match (``ValueError`` naming both otherwise). A template beside joint-centred weights is
    stale and ignored (logged). Weights from before the frame was recorded count as canonical-pose when the folder
    holds a template. One rule for evaluation and generation alike."""
    path = Path(folder) / POSE_TEMPLATE_FILE
    found = path if path.is_file() else None
    frame = settings.get("mri_frame")
    if frame is None:
        frame = CANONICAL_POSE if found else JOINT_CENTRED
        if found:
            logger.info("%s: no MRI frame recorded with the weights; the %s beside them marks the canonical-pose "
                        "frame", folder, POSE_TEMPLATE_FILE)
    if frame not in MRI_FRAMES:
        raise ValueError(f"{folder}: unknown MRI frame {frame!r} in diffusion.pt (one of {', '.join(MRI_FRAMES)})")
    if frame == JOINT_CENTRED:
        if found:
            logger.warning("%s holds %s, but its weights were trained in the joint-centred frame: the template is "
                           "ignored", folder, POSE_TEMPLATE_FILE)
        return frame, None
    recorded = settings.get("mri_pose_template_sha256")
    if found and recorded and (digest := template_digest(found)) != recorded:
        raise ValueError(f"{found} (digest {digest}) is not the template the weights in {folder} were "
                         f"trained with (digest {recorded}): put that template beside them")
    return frame, found


def template_axes(volume: np.ndarray | torch.Tensor, spacing: Sequence[float], side: str | None, localiser: Any,
                  depth_anchor: float = 36.0) -> tuple[torch.Tensor, tuple[float, float, float], tuple[float, ...]]:
    """A coronal volume (H, W, D) with spacing (H, W, D) mm in this module's axes: (the volume (D, H, W), its
    spacing (D, H, W), the anchor (``depth_anchor``, joint row, joint col) found by ``localiser``
    (an :class:`~.localiser.MRIJointLocaliser`) on the volume)."""
    array = volume.numpy() if isinstance(volume, torch.Tensor) else np.asarray(volume)
    row, col = localiser(array, tuple(spacing[:2]), side)
    dhw = torch.as_tensor(array).permute(2, 0, 1).contiguous()
    return dhw, (float(spacing[2]), float(spacing[0]), float(spacing[1])), (float(depth_anchor), float(row),
                                                                          float(col))


def register(volume: torch.Tensor, spacing: Sequence[float], anchor: Sequence[float], template: torch.Tensor,
             iterations: int = 80, init: RigidPose | None = None, scale: bool = False) -> tuple[RigidPose, float]:
    """Rigid pose of ``volume`` (D, H, W) against ``template`` (template grid, same side): maximise the normalised
    cross-correlation over the template's foreground. ``scale``: also fit an isotropic size factor (a knee larger
    or smaller than the template), used for the fit only: the pose returned is rigid. Returns (pose, final NCC)."""
    return _fit(_normalised(volume, spacing), spacing, anchor, template, iterations, init, scale)


def _fit(normalised: torch.Tensor, spacing: Sequence[float], anchor: Sequence[float], template: torch.Tensor,
         iterations: int = 80, init: RigidPose | None = None, scale: bool = False) -> tuple[RigidPose, float]:
    """:func:`register` of a volume already :func:`_normalised`. The fit needs autograd even when the caller runs
    without it (preprocessing inside ``torch.no_grad()`` or ``torch.inference_mode()``); the clones leave
    inference tensors behind."""
    with torch.inference_mode(False), torch.enable_grad():
        return _adam_fit(normalised.clone(), spacing, anchor, template.clone(), iterations, init, scale)


def _adam_fit(smooth: torch.Tensor, spacing: Sequence[float], anchor: Sequence[float], template: torch.Tensor,
              iterations: int, init: RigidPose | None, scale: bool) -> tuple[RigidPose, float]:
    points = _template_points()
    mask = template > 0.05
    omega = torch.tensor(init.omega if init else (0.0, 0.0, 0.0), dtype=torch.float32, requires_grad=True)
    t = torch.tensor(init.t if init else (0.0, 0.0, 0.0), dtype=torch.float32, requires_grad=True)
    log_size = torch.zeros((), requires_grad=scale)
    groups = [{"params": [omega], "lr": 0.004}, {"params": [t], "lr": 0.4}]
    opt = torch.optim.Adam(groups + ([{"params": [log_size], "lr": 0.004}] if scale else []))
    best = (-2.0, omega.detach().clone(), t.detach().clone())
    for step in range(iterations):
        opt.zero_grad()
        warped = sample_rigid(smooth, spacing, anchor, log_size.exp() * rotation_matrix(omega), t, points)
        score = _ncc(warped, template, mask)
        if score.item() > best[0]:
            best = (score.item(), omega.detach().clone(), t.detach().clone())
        (-score).backward()
        opt.step()
        if step == iterations // 2:
            for group in opt.param_groups:
                group["lr"] *= 0.3
    score, o, tt = best
    return RigidPose(tuple(float(v) for v in o), tuple(float(v) for v in tt)), score


def build_template(volumes: Iterable[tuple[torch.Tensor, Sequence[float], Sequence[float], str]],
                   rounds: int = 3, depth_anchor: float = 36.0) -> tuple[PoseTemplate, list[list[RigidPose]]]:
    """Groupwise template from training MRIs ``(volume (D, H, W), spacing, anchor, side)``: round 0 averages the
    volumes as they lie (left knees mirrored), each later round registers every knee to the current mean and
    averages the aligned volumes. Returns the template and each round's poses (for the report)."""
    knees = list(volumes)
    if not knees:
        raise ValueError("build_template needs at least one training MRI")

    def mirrored(image: torch.Tensor, side: str) -> torch.Tensor:
        return image.flip(-1) if side.upper() == "LEFT" else image

    normalised = [_normalised(v, s) for v, s, _, _ in knees]  # once per knee, not once per round
    mean = torch.stack([mirrored(_on_template_grid(n, s, a), side)
                        for n, (_, s, a, side) in zip(normalised, knees, strict=True)]).mean(0)
    history: list[list[RigidPose]] = []
    for r in range(rounds):
        poses, aligned = [], []
        for n, (_, s, a, side) in zip(normalised, knees, strict=True):
            target = mean.flip(-1) if side.upper() == "LEFT" else mean
            pose, _ = _fit(n, s, a, target)
            poses.append(pose)
            aligned.append(mirrored(_on_template_grid(n, s, a, pose), side))
        mean = torch.stack(aligned).mean(0)
        history.append(poses)
        logger.info("pose template round %d/%d: median rotation %.2f deg", r + 1, rounds,
                    float(torch.tensor([p.angle_deg for p in poses]).median()))
    return PoseTemplate(mean, depth_anchor), history


def align_volume(volume: torch.Tensor, spacing: Sequence[float], anchor: Sequence[float], pose: RigidPose,
                 depth_anchor: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``volume`` (D, H, W) resampled in the template's pose on its own grid (same shape and spacing), the joint
    at row / column centre and at slice ``depth_anchor``. Returns (aligned volume, the 4 x 4 map from aligned
    (d, h, w) indices to the input's (d, h, w) indices), trilinear, 0 outside the field of view."""
    shape = volume.shape
    out_anchor = (float(depth_anchor), (shape[1] - 1) / 2.0, (shape[2] - 1) / 2.0)
    points = _grid_points(shape, spacing, out_anchor)
    R = pose.matrix.float()
    t = torch.tensor(pose.t, dtype=torch.float32)
    aligned = sample_rigid(volume.float(), spacing, anchor, R, t, points)
    s = torch.tensor(spacing, dtype=torch.float64)
    A = torch.diag(1.0 / s) @ pose.matrix @ torch.diag(s)
    b = torch.tensor(anchor, dtype=torch.float64) + torch.tensor(pose.t, dtype=torch.float64) / s \
        - A @ torch.tensor(out_anchor, dtype=torch.float64)
    index_map = torch.eye(4, dtype=torch.float64)
    index_map[:3, :3], index_map[:3, 3] = A, b
    return aligned, index_map


def template_from_records(records: Sequence[dict], count: int = 40, rounds: int = 3,
                          depth_anchor: float = 36.0) -> tuple[PoseTemplate, dict]:
    """The pose template of the first ``count`` readable knees of ``records`` (datalist entries with ``mri`` and
    ``side``; use training knees only). A knee whose MRI cannot be read is skipped and reported, never silently.
    Returns (template, report: knees used, skipped with reasons, median rotation per round in degrees)."""
    from .localiser import MRIJointLocaliser
    from .mri_io import load_mri_volume

    localiser, knees, skipped = MRIJointLocaliser(), [], []
    for record in records:
        if len(knees) >= count:
            break
        try:
            volume, _, info = load_mri_volume(str(record["mri"]))
            dhw, spacing, anchor = template_axes(volume, info["spacing"], record.get("side"), localiser, depth_anchor)
        except Exception as exc:  # noqa: BLE001 - a broken series is reported and skipped, the others still count
            skipped.append({"mri": str(record["mri"]), "reason": f"{type(exc).__name__}: {exc}"})
            logger.warning("pose template: skipped %s (%s)", record["mri"], exc)
            continue
        knees.append((dhw, spacing, anchor, str(record.get("side", "RIGHT")).upper()))
        logger.info("pose template: read knee %d/%d", len(knees), count)
    if not knees:
        raise ValueError(f"no readable MRI among {len(records)} records for the pose template ({len(skipped)} skipped)")
    template, history = build_template(knees, rounds=rounds, depth_anchor=depth_anchor)
    report = {"knees": len(knees), "skipped": skipped, "rounds": rounds,
              "median_rotation_deg": [float(torch.tensor([p.angle_deg for p in poses]).median()) for poses in history]}
    return template, report


def write_pose_template(records: Sequence[dict], out: str | os.PathLike, count: int = 40, rounds: int = 3,
                        source: str | None = None) -> dict:
    """Build the template of ``records`` (:func:`template_from_records`) and write it to ``out`` (.pt, read by
    :func:`load_pose_template`) with its report beside it (.json: knees used, skipped and why, median rotation per
    round; ``source`` names the data it came from). Both writes are atomic. Returns the report."""
    import json

    from .atomic import write_atomic, write_bytes_atomic

    out = Path(out)
    if out.suffix != ".pt":
        raise ValueError(f"pose template {out}: the file must end in .pt (its report goes beside it as .json)")
    template, report = template_from_records(records, count=count, rounds=rounds)
    report = {"source": source, **report}
    write_atomic(out, lambda handle: torch.save(template.state_dict(), handle))
    write_bytes_atomic(out.with_suffix(".json"), json.dumps(report, indent=1).encode())
    return report
