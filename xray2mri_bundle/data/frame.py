"""The joint-centred frame shared by X-ray and MRI: one square of the patient, in mm, centred on the knee joint.

Both modalities are cropped to :data:`FRAME_MM` x :data:`FRAME_MM` mm of the patient (the knee's plane),
centred on the joint that a localiser found in that modality's image (X-ray: :class:`~.localiser.
ClassicalJointLocaliser` on the film; MRI: :class:`~.localiser.MRIJointLocaliser` on the coronal slab), and
resampled to the model's image size. The X-ray's film magnification is removed first (:mod:`.xray_io`), so a
pixel of the X-ray crop and a pixel of the MRI slice cover the same millimetres. Without this frame the X-ray
cannot predict where the knee sits in the MRI field of view (measured, docs/data.md).

:func:`frame_box` gives the integer pixel box of the frame, :func:`crop_frame` cuts (and pads where the box
leaves the image) and resamples it; both transforms (:class:`~.xray_transforms.CropJoint`,
:class:`~.mri_transforms.CropMRIJoint`) call them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from xray2mri_bundle.constants import FRAME_MM

__all__ = [
    "CANONICAL_POSE", "CORONAL_AXES_RAS", "FRAME_DESCRIPTIONS", "FRAME_MM", "JOINT_CENTRED", "MRI_FRAMES", "WorldFrame",
    "crop_frame", "frame_box",
]

#: The MRI frames a model can be trained in (``mri_frame`` of the configs, ``settings.mri_frame`` of its weights):
#: the joint-centred frame (the default) and the canonical-pose frame (each MRI registered to a template knee
#: first, :mod:`.pose`; ``configs/pose_frame.json``).
JOINT_CENTRED = "joint_centred"
CANONICAL_POSE = "canonical_pose"
MRI_FRAMES = (JOINT_CENTRED, CANONICAL_POSE)

#: Each frame in words (the sidecar JSON of a generated volume says which one its geometry follows).
FRAME_DESCRIPTIONS: dict[str, str] = {
    JOINT_CENTRED: "joint-centred: the in-plane centre of every slice is the knee joint found on the X-ray",
    CANONICAL_POSE: "canonical pose: the knee as it lies in the model's pose template (mri_pose_template.pt), "
                    "the joint at the in-plane centre; the axes turn with the knee when placed in a reference MRI",
}

#: Unit directions (RAS+, columns) of a coronal stack's rows (inferior), columns (patient left) and slices
#: (posterior): OAI's COR_T1 series, the cohort's MRI and every generated volume unless a reference MRI says
#: otherwise.
CORONAL_AXES_RAS: np.ndarray = np.array([[0.0, -1.0, 0.0], [0.0, 0.0, -1.0], [-1.0, 0.0, 0.0]])


@dataclass(frozen=True)
class WorldFrame:
    """Where the model's frame lies in the world (RAS+ mm): the centre of the kept slab and the unit directions
    (columns, (3, 3)) in which its rows, columns and slices run. The default is the world origin with the coronal
    axes; ``mri_transforms.reference_frame`` reads it off a real MRI (the joint-centred frame, or the
    canonical-pose frame, rotated with the knee), so that a generated volume written with it overlays that MRI."""

    centre_ras: np.ndarray = field(default_factory=lambda: np.zeros(3))
    axes_ras: np.ndarray = field(default_factory=lambda: CORONAL_AXES_RAS.copy())

    def affine(self, shape: Sequence[int], spacing_mm: Sequence[float], slice_spacing_mm: float) -> np.ndarray:
        """RAS+ voxel-to-world affine (4, 4) of an (H, W, S) stack with (row, column) ``spacing_mm`` and
        ``slice_spacing_mm`` between slice centres, its centre voxel at :attr:`centre_ras`."""
        row_mm, col_mm = (float(s) for s in spacing_mm)
        if min(row_mm, col_mm, float(slice_spacing_mm)) <= 0:
            raise ValueError(f"spacings must be positive, got {spacing_mm}, {slice_spacing_mm}")
        rot = np.asarray(self.axes_ras, dtype=np.float64) @ np.diag([row_mm, col_mm, float(slice_spacing_mm)])
        centre = (np.asarray(shape[:3], dtype=np.float64) - 1.0) / 2.0
        affine = np.eye(4)
        affine[:3, :3] = rot
        affine[:3, 3] = np.asarray(self.centre_ras, dtype=np.float64) - rot @ centre
        return affine

    def as_dict(self) -> dict[str, list]:
        """JSON form for a sidecar: ``centre_ras_mm`` (3,), ``axes_ras`` rows / columns / slices directions."""
        return {"centre_ras_mm": [round(float(v), 4) for v in self.centre_ras],
                "axes_ras": {name: [round(float(v), 6) for v in np.asarray(self.axes_ras)[:, i]]
                             for i, name in enumerate(("rows", "columns", "slices"))}}

    @classmethod
    def of_affine(cls, affine: np.ndarray, shape: Sequence[int]) -> WorldFrame:
        """The frame of a stack whose voxel-to-world (RAS+) ``affine`` and (H, W, S) ``shape`` are given: its
        centre voxel and the normalised directions of its axes."""
        affine = np.asarray(affine, dtype=np.float64)
        centre = affine @ np.array([*((np.asarray(shape[:3], dtype=np.float64) - 1.0) / 2.0), 1.0])
        axes = affine[:3, :3] / np.linalg.norm(affine[:3, :3], axis=0, keepdims=True)
        return cls(centre[:3], axes)



def frame_box(joint_rc: tuple[float, float], spacing_mm: tuple[float, float],
              size_mm: float = FRAME_MM) -> tuple[int, int, int, int]:
    """Integer pixel box [r0, c0, r1, c1) of a ``size_mm`` square centred (to half a pixel) on ``joint_rc``
    (row, col pixels) for pixels of ``spacing_mm`` (row, col) mm."""
    n_r, n_c = int(round(size_mm / spacing_mm[0])), int(round(size_mm / spacing_mm[1]))
    # the box's centre (r0 + (n - 1) / 2 in pixel-centre coordinates) lies within half a pixel of the joint
    r0, c0 = int(round(joint_rc[0] - (n_r - 1) / 2)), int(round(joint_rc[1] - (n_c - 1) / 2))
    return r0, c0, r0 + n_r, c0 + n_c


def crop_frame(x: torch.Tensor, box: tuple[int, int, int, int], size: int, antialias: bool = True,
               fill: float | None = None) -> tuple[torch.Tensor, bool]:
    """Cut ``box`` out of images ``x`` (N, H, W) and resample it to (N, size, size), bilinear.

    Where the box leaves the image it is padded with ``fill`` (default: the image minimum, i.e. background).
    Returns (crop, padded) so that callers can report a knee too close to the image edge.
    """
    x = x.float()
    r0, c0, r1, c1 = box
    h, w = x.shape[-2:]
    pad = (max(0, -c0), max(0, c1 - w), max(0, -r0), max(0, r1 - h))
    padded = any(pad)
    if padded:
        value = float(x.min()) if fill is None else float(fill)
        x = F.pad(x[None], pad, mode="constant", value=value)[0]
    crop = x[:, r0 + pad[2]:r1 + pad[2], c0 + pad[0]:c1 + pad[0]]
    out = F.interpolate(crop[None], size=(size, size), mode="bilinear", align_corners=False,
                        antialias=antialias)[0]
    return out.contiguous(), padded
