"""MONAI transforms for the MRI side: load a coronal series, keep slices 13..63, crop the joint frame, scale.

Array transforms hold the logic; the ``...d`` classes only loop over ``keys`` (MONAI convention), so both
scripts and bundle JSON configs (``_target_``) can use them. Volumes are ``MetaTensor`` (C, H, W, D):
H = rows superior -> inferior, W = columns patient right -> left, D = depth anterior -> posterior
(see :mod:`.mri_io`). ``meta``: ``filename_or_obj``, ``spacing`` (H, W, D) mm, ``affine`` (RAS).

:func:`mri_transforms` builds the bundle's chain, ``mri_preprocessing`` of ``configs/common.json``: load ->
slices 13..62 (50, paper "13th to 63rd") -> joint found on the slab (:class:`LocaliseMRIJoint`) -> the
joint-centred 140 mm frame shared with the X-ray (:mod:`.frame`), resampled to 256 x 256 (antialiased bilinear)
-> percentiles (0.5, 99.5) of the kept volume to [-1, 1] (clipped). Output ``mri`` (1, 256, 256, 50) float32.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform, SpatialCrop, Transform

from .bundle_configs import chain_configs, given, parse_config
from .dicom_utils import DataFileError
from .frame import CANONICAL_POSE, FRAME_MM, MRI_FRAMES, WorldFrame, crop_frame, frame_box
from .localiser import MRIJointLocaliser
from .mri_io import load_mri_volume
from .pose import PoseTemplate, align_volume, load_pose_template, register, template_axes

logger = logging.getLogger(__name__)

__all__ = [
    "AlignMRIPose",
    "AlignMRIPosed",
    "CropMRIJoint",
    "CropMRIJointd",
    "LocaliseMRIJoint",
    "LocaliseMRIJointd",
    "LoadMRISeries",
    "LoadMRISeriesd",
    "SelectSlices",
    "SelectSlicesd",
    "mri_transforms",
    "reference_frame",
]


def _meta_tensor(data: torch.Tensor, like: torch.Tensor | None, affine: np.ndarray | torch.Tensor | None = None,
                 **updates) -> MetaTensor:
    """A new MetaTensor with ``like``'s meta (copied), a new affine and extra meta entries."""
    meta = dict(like.meta) if isinstance(like, MetaTensor) else {}
    meta.update(updates)
    if affine is None and isinstance(like, MetaTensor):
        affine = like.affine
    out = MetaTensor(data, meta=meta)
    if affine is not None:
        out.affine = torch.as_tensor(np.asarray(affine), dtype=torch.float64)
    return out


def _source(img: torch.Tensor) -> str:
    return str(img.meta.get("filename_or_obj", "<array>")) if isinstance(img, MetaTensor) else "<array>"


class LoadMRISeries(Transform):
    """Path (DICOM series folder or NIfTI file) -> MetaTensor (1, H, W, D) float32, oriented coronal.

    Slices are ordered by ImagePositionPatient projected on the slice normal, never by file name.
    ``expected_slices``: require this many slices (e.g. 80), None = any. Errors (``DataFileError``, a
    ``ValueError``) name the file at fault.
    """

    def __init__(self, expected_slices: int | None = None) -> None:
        self.expected_slices = expected_slices

    def __call__(self, path: str) -> MetaTensor:
        volume, affine, info = load_mri_volume(path, expected_slices=self.expected_slices)
        return _meta_tensor(
            torch.from_numpy(volume)[None], None, affine, filename_or_obj=info["source"],
            spacing=info["spacing"], description=info["description"], original_shape=tuple(volume.shape),
        )


class SelectSlices(SpatialCrop):
    """Keep ``count`` slices from ``start`` (0-based) along the last (depth) axis: (C, H, W, D) -> (C, H, W, count).

    MONAI's ``SpatialCrop`` (affine shifted to the first kept slice), extended for what it lacks: a series with
    too few slices is a ``DataFileError`` naming the file (``SpatialCrop`` would silently return fewer), and the
    meta records ``slice_start`` / ``slice_count``. Defaults 13 and 50: the paper's slices 13..63 of an 80-slice
    COR_T1_3D_FLASH (slices 13..62 inclusive).
    """

    def __init__(self, start: int = 13, count: int = 50) -> None:
        if start < 0 or count < 1:
            raise ValueError(f"start must be >= 0 and count >= 1, got {start}, {count}")
        self.start, self.count = start, count
        super().__init__(roi_slices=[slice(None), slice(None), slice(start, start + count)])

    def __call__(self, img: torch.Tensor, lazy: bool | None = None) -> torch.Tensor:  # type: ignore[override]
        depth = img.shape[-1]
        if depth < self.start + self.count:
            raise DataFileError(_source(img), f"{depth} slices; need {self.start + self.count} to keep slices "
                                              f"{self.start}..{self.start + self.count - 1}", "slice_count")
        out = super().__call__(img, lazy=lazy)
        if isinstance(out, MetaTensor):
            out.meta.update(slice_start=self.start, slice_count=self.count)
        return out


class LocaliseMRIJoint(Transform):
    """Find the knee-joint centre on the coronal volume (C, H, W, D) with an :class:`~.localiser.MRIJointLocaliser`
    (``side``: RIGHT / LEFT, for its medial offset); sets meta ``joint_rc`` (row, col) in pixels of a slice (real
    OAI has no ground truth: found from the image)."""

    def __init__(self, localiser: MRIJointLocaliser | None = None) -> None:
        self.localiser = localiser if localiser is not None else MRIJointLocaliser()

    def __call__(self, img: torch.Tensor, side: str | None = None) -> torch.Tensor:
        spacing = tuple(img.meta.get("spacing", (1.0, 1.0, 1.0)))[:2] if isinstance(img, MetaTensor) else (1.0, 1.0)
        volume = torch.as_tensor(img).as_subclass(torch.Tensor)[0].float().numpy()
        row, col = self.localiser(volume, spacing, side)
        return _meta_tensor(torch.as_tensor(img).as_subclass(torch.Tensor), img,
                            joint_rc=(float(row), float(col)), joint_localised=True)


class CropMRIJoint(Transform):
    """Crop every slice to the joint-centred frame: a ``size_mm`` square (default :data:`~.frame.FRAME_MM`)
    around meta ``joint_rc``, resampled to ``size`` x ``size``: (C, H, W, D) -> (C, size, size, D).

    The same frame as the X-ray crop (:class:`~.xray_transforms.CropJoint`). A joint too close to the field of
    view's edge is padded with the volume minimum (meta ``frame_padded`` True), never dropped. The affine follows
    the crop, so the cropped volume still overlays the original in a viewer; meta ``spacing`` becomes
    (size_mm / size, size_mm / size, slice spacing), ``crop_box`` [r0, c0, r1, c1) original pixels.
    """

    def __init__(self, size: int = 256, size_mm: float = FRAME_MM, antialias: bool = True) -> None:
        self.size, self.size_mm, self.antialias = int(size), float(size_mm), antialias

    def __call__(self, img: torch.Tensor, joint_rc: tuple[float, float] | None = None) -> torch.Tensor:
        meta = img.meta if isinstance(img, MetaTensor) else {}
        joint_rc = joint_rc if joint_rc is not None else meta.get("joint_rc")
        if joint_rc is None:
            raise ValueError(f"{_source(img)}: CropMRIJoint needs a joint centre: run LocaliseMRIJoint first")
        spacing = tuple(meta.get("spacing", (1.0, 1.0, 1.0)))
        box = frame_box(joint_rc, spacing[:2], self.size_mm)
        x = torch.as_tensor(img).as_subclass(torch.Tensor).float()
        c, h, w, d = x.shape
        slices = x.permute(0, 3, 1, 2).reshape(c * d, h, w)
        out, padded = crop_frame(slices, box, self.size, self.antialias)
        if padded:
            logger.warning("%s: the %g mm joint-centred frame leaves the field of view (joint at row %.0f, col %.0f "
                           "of %dx%d); padded with the volume minimum", _source(img), self.size_mm, joint_rc[0],
                           joint_rc[1], h, w)
        out = out.reshape(c, d, self.size, self.size).permute(0, 2, 3, 1).contiguous()
        affine = None
        if isinstance(img, MetaTensor):
            old = img.affine
            affine = old.clone()
            s_r, s_c = (box[2] - box[0]) / self.size, (box[3] - box[1]) / self.size
            affine[:3, 0] = old[:3, 0] * s_r
            affine[:3, 1] = old[:3, 1] * s_c
            # output voxel i sits at input index r0 + (i + 0.5) * s - 0.5 (align_corners=False)
            shift = old[:3, 0] * (box[0] + 0.5 * s_r - 0.5) + old[:3, 1] * (box[1] + 0.5 * s_c - 0.5)
            affine[:3, 3] = old[:3, 3] + shift
        step = self.size_mm / self.size
        return _meta_tensor(out, img, affine, spacing=(step, step, spacing[2] if len(spacing) > 2 else 1.0),
                            crop_box=box, frame_mm=self.size_mm, frame_padded=padded,
                            joint_rc=tuple(float(v) for v in joint_rc))


#: below this normalised cross-correlation with the template a knee's alignment is reported (docs/data.md 3b:
#: the rigid fit's failures had 0.60-0.71, the median knee 0.85)
LOW_POSE_NCC = 0.7


class AlignMRIPose(Transform):
    """Resample a coronal volume (C, H, W, D) in the canonical pose of a :class:`~.pose.PoseTemplate` (same shape
    and spacing): the joint found in-plane (:class:`~.localiser.MRIJointLocaliser`) starts a rigid registration
    to the template (:func:`~.pose.register`, channel 0), and every channel is resampled so that the joint lies at
    the row / column centre and at slice ``template.depth_anchor``, the knee rotated as in the template.

    ``fit_size``: fit an isotropic size factor during the registration (the resampling stays rigid): measured
    more robust for knees far from the template's size (docs/data.md section 3b), off by default until the
    models are retrained with it.

    Meta: ``joint_rc`` (the centre, for :class:`CropMRIJoint`), ``pose_omega`` (rad) / ``pose_t`` (mm) of the
    registration, ``pose_ncc`` (its normalised cross-correlation; low = a knee unlike the template); the affine
    follows, so the aligned volume still overlays the original in a viewer.
    """

    def __init__(self, template: PoseTemplate | str | os.PathLike, localiser: MRIJointLocaliser | None = None,
                 iterations: int = 80, fit_size: bool | str = False) -> None:
        template = load_pose_template(template)
        if isinstance(fit_size, str):  # `--mri_pose_fit_size false` arrives from the bundle command line as a string
            fit_size = fit_size.strip().lower() in ("1", "true", "yes", "on")
        self.template, self.iterations, self.fit_size = template, int(iterations), bool(fit_size)
        # a primitive the cache fingerprint (datasets.transform_fingerprint) sees: caches of two templates never mix
        self.template_digest = template.digest
        self.localiser = localiser if localiser is not None else MRIJointLocaliser()

    def __call__(self, img: torch.Tensor, side: str | None = None) -> torch.Tensor:
        x = torch.as_tensor(img).as_subclass(torch.Tensor).float()
        spacing = tuple(img.meta.get("spacing", (1.0, 1.0, 1.0))) if isinstance(img, MetaTensor) else (1.0,) * 3
        if str(side or "").upper() not in ("RIGHT", "LEFT"):
            raise ValueError(f"{_source(img)}: AlignMRIPose needs the knee's side (RIGHT / LEFT) to pick the "
                             f"template's mirror image, got {side!r}")
        dhw, dhw_spacing, anchor = template_axes(x[0], spacing, side, self.localiser, self.template.depth_anchor)
        pose, ncc = register(dhw, dhw_spacing, anchor, self.template.for_side(side), self.iterations,
                             scale=self.fit_size)
        channels, index_map = [], None
        for channel in x:
            aligned, index_map = align_volume(channel.permute(2, 0, 1), dhw_spacing, anchor, pose,
                                              self.template.depth_anchor)
            channels.append(aligned.permute(1, 2, 0))
        affine = None
        if isinstance(img, MetaTensor):
            order = torch.tensor([[0, 1, 0, 0], [0, 0, 1, 0], [1, 0, 0, 0], [0, 0, 0, 1]], dtype=torch.float64)
            affine = img.affine.double() @ order @ index_map @ order.T  # (h, w, d) -> (d, h, w) -> input (h, w, d)
        if ncc < LOW_POSE_NCC:
            logger.warning("%s: the knee matches the pose template poorly (NCC %.2f < %.2f); its alignment may be off",
                           _source(img), ncc, LOW_POSE_NCC)
        h, w = x.shape[1:3]
        return _meta_tensor(torch.stack(channels), img, affine, joint_rc=((h - 1) / 2.0, (w - 1) / 2.0),
                            joint_localised=True, pose_omega=pose.omega, pose_t=pose.t, pose_ncc=ncc)


class AlignMRIPosed(MapTransform):
    """Dictionary wrapper of :class:`AlignMRIPose`; the knee's side (RIGHT / LEFT) from ``d[side_key]``."""

    def __init__(self, keys: KeysCollection = "mri", template: PoseTemplate | str | os.PathLike | None = None,
                 localiser: MRIJointLocaliser | None = None, side_key: str = "side", iterations: int = 80,
                 fit_size: bool | str = False, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        if template is None:
            raise ValueError("AlignMRIPosed needs a pose template (xray2mri pose-template builds one)")
        self.align, self.side_key = AlignMRIPose(template, localiser, iterations, fit_size), side_key

    def __call__(self, data: Mapping[Hashable, object]) -> dict[Hashable, object]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.align(d[key], d.get(self.side_key))
        return d


class LocaliseMRIJointd(MapTransform):
    """Dictionary wrapper of :class:`LocaliseMRIJoint`; the knee's side (RIGHT / LEFT) from ``d[side_key]``."""

    def __init__(self, keys: KeysCollection = "mri", localiser: MRIJointLocaliser | None = None,
                 side_key: str = "side", allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.locate, self.side_key = LocaliseMRIJoint(localiser), side_key

    def __call__(self, data: Mapping[Hashable, object]) -> dict[Hashable, object]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.locate(d[key], d.get(self.side_key))
        return d


class CropMRIJointd(MapTransform):
    """Dictionary wrapper of :class:`CropMRIJoint`."""

    def __init__(self, keys: KeysCollection = "mri", size: int = 256, size_mm: float = FRAME_MM,
                 antialias: bool = True, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.crop = CropMRIJoint(size, size_mm, antialias)

    def __call__(self, data: Mapping[Hashable, object]) -> dict[Hashable, object]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.crop(d[key])
        return d


class LoadMRISeriesd(MapTransform):
    """Dictionary wrapper of :class:`LoadMRISeries`: replaces each path in ``keys`` (default ``mri``)."""

    def __init__(self, keys: KeysCollection = "mri", expected_slices: int | None = None,
                 allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.loader = LoadMRISeries(expected_slices)

    def __call__(self, data: Mapping[Hashable, object]) -> dict[Hashable, object]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.loader(d[key])
        return d


class SelectSlicesd(MapTransform):
    """Dictionary wrapper of :class:`SelectSlices`."""

    def __init__(self, keys: KeysCollection = "mri", start: int = 13, count: int = 50,
                 allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.select = SelectSlices(start, count)

    def __call__(self, data: Mapping[Hashable, object]) -> dict[Hashable, object]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.select(d[key])
        return d


def check_frame(frame: str, aligned: bool) -> None:
    """Refuse ``frame`` (``mri_frame``, which the weights record and inference, evaluation and the stage decisions
    trust) unless the MRI chain builds it: the canonical-pose frame needs the :class:`AlignMRIPosed` step that
    ``configs/pose_frame.json`` adds (``aligned``), the joint-centred frame must not have one. A ``--mri_frame`` set
    by hand without that file (or the reverse) would label weights with a frame their training data was not in."""
    if frame not in MRI_FRAMES:
        raise ValueError(f"mri_frame must be one of {', '.join(MRI_FRAMES)}, got {frame!r}")
    if aligned != (frame == CANONICAL_POSE):
        built = "aligns every MRI to a pose template" if aligned else "has no pose alignment (AlignMRIPosed)"
        raise ValueError(f"mri_frame is {frame!r} but the MRI preprocessing {built}: choose the frame by merging "
                         "configs/pose_frame.json after common.json (or train.json), not by setting mri_frame alone")


def chain_in_frame(frame: str, chain: Sequence[object]) -> list:
    """The MRI ``chain`` (``mri_preprocessing``) as a list, after :func:`check_frame` (the training pipeline runs
    the same check on the raw config before it decides anything, ``engines.stages``)."""
    steps = list(chain)
    check_frame(frame, any(isinstance(step, AlignMRIPosed) for step in steps))
    return steps


def mri_transforms(
    size: int | None = None, start: int | None = None, count: int | None = None,
    percentiles: tuple[float, float] | None = None, expected_slices: int | None = None,
    frame_mm: float | None = None, localiser: MRIJointLocaliser | None = None,
    pose_template: PoseTemplate | str | os.PathLike | None = None, pose_fit_size: bool | None = None,
) -> list:
    """The MRI chain (key ``mri``) as a list of dictionary transforms (wrap in ``monai.transforms.Compose``):
    ``mri_preprocessing`` of ``configs/common.json``, built from the packaged config so that the chain is written
    once. Arguments left None keep the config's settings; the others replace them: ``size`` (``mri_size``),
    ``start`` / ``count`` (``mri_slice_start`` / ``mri_slice_count``), ``percentiles``
    (``intensity_percentiles``), ``expected_slices`` (``mri_expected_slices``), ``frame_mm``, ``localiser``
    (``mri_localiser``). ``pose_template`` (a :class:`~.pose.PoseTemplate` or its file) switches to the
    canonical-pose frame of ``configs/pose_frame.json`` (:class:`AlignMRIPosed` before the slices are kept).

    load -> slices ``start``.. (``count``) -> joint found on the slab -> ``frame_mm`` square around it resampled to
    ``size`` (the joint-centred frame shared with the X-ray, docs/data.md section 3a) -> percentiles to [-1, 1].
    Output: (1, size, size, count) float32 in [-1, 1] (:class:`~.datasets.KneeSliceDataset` repeats the channel
    per slice).
    """
    if frame_mm is not None and frame_mm <= 0:  # the whole-field-of-view layout before the frame is gone (issue 13)
        raise ValueError(f"frame_mm must be a positive side length in mm, got {frame_mm!r}")
    overrides = given(mri_size=size, mri_slice_start=start, mri_slice_count=count, intensity_percentiles=percentiles,
                      mri_expected_slices=expected_slices, frame_mm=frame_mm, mri_localiser=localiser,
                      mri_pose_template=pose_template, mri_pose_fit_size=pose_fit_size)
    return list(parse_config(chain_configs(pose_template), "mri_preprocessing", overrides))



def reference_frame(path: str, side: str | None = None, pose_template: str | os.PathLike | PoseTemplate | None = None,
                    start: int = 13, count: int = 50, size: int = 64, pose_fit_size: bool = False) -> WorldFrame:
    """Where the model's frame lies in a real MRI series ``path`` (a :class:`~.frame.WorldFrame`): the MRI run
    through the training chain (:func:`mri_transforms`; with ``pose_template``, the canonical-pose frame) and the
    frame read off the affine that followed every step: the centre of the kept slab (the joint in-plane) and the
    directions of its rows, columns and slices (rotated with the knee in the pose frame). A generated volume
    written with it overlays that MRI (``xray2mri generate --reference-mri``). ``size`` only sets the pixel grid
    the chain resamples to; the frame does not depend on it."""
    from monai.transforms import Compose

    item = Compose(mri_transforms(size=size, start=start, count=count, pose_template=pose_template,
                                  pose_fit_size=pose_fit_size if pose_template is not None else None))(
        {"mri": str(path), "side": side})
    volume = item["mri"]
    return WorldFrame.of_affine(volume.affine.numpy(), tuple(volume.shape[1:]))
