"""Rigid alignment of a coronal MRI to a template knee (data/pose.py, AlignMRIPose): a known pose is recovered,
and the aligned volume still overlays the original in world coordinates."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from xray2mri_bundle.data.frame import CANONICAL_POSE
from xray2mri_bundle.data.localiser import MRIJointLocaliser
from xray2mri_bundle.data.mri_transforms import AlignMRIPose, LoadMRISeries
from xray2mri_bundle.data.pose import (
    PoseTemplate,
    RigidPose,
    align_volume,
    build_template,
    load_pose_template,
    register,
    rotation_matrix,
)


def _cohort_knee(cohort: Path, truth: list[dict]) -> tuple[torch.Tensor, tuple, tuple, str]:
    """Knee 0 of the test cohort as ((D, H, W) volume, spacing (D, H, W) mm, anchor (slice 36, joint), side)."""
    row = truth[0]
    image = LoadMRISeries()(str(cohort / row["mri_folder"]))
    spacing = tuple(image.meta["spacing"])
    volume = image.as_tensor()[0]
    jr, jc = MRIJointLocaliser()(volume.numpy(), spacing[:2], row["side"])
    return (volume.permute(2, 0, 1).contiguous(), (spacing[2], spacing[0], spacing[1]), (36.0, jr, jc),
            row["side"].upper())


def test_rotation_matrix_is_a_rotation_about_the_given_axis() -> None:
    R = rotation_matrix(torch.tensor([0.0, 0.0, math.radians(5.0)]))
    assert torch.allclose(R @ R.T, torch.eye(3), atol=1e-6)
    assert float(torch.det(R)) == pytest.approx(1.0, abs=1e-6)
    assert torch.allclose(R[2], torch.tensor([0.0, 0.0, 1.0]), atol=1e-7)  # the axis is fixed
    assert math.degrees(math.acos(float(R[0, 0]))) == pytest.approx(5.0, abs=1e-3)
    assert RigidPose((0.0, 0.0, math.radians(5.0)), (0.0, 0.0, 0.0)).angle_deg == pytest.approx(5.0, abs=1e-4)


def test_register_recovers_a_known_pose(cohort: Path, truth: list[dict]) -> None:
    """A cohort knee moved by a known rigid map is registered back onto a template of the unmoved knee."""
    volume, spacing, anchor, side = _cohort_knee(cohort, truth)
    template, _ = build_template([(volume, spacing, anchor, side)], rounds=0)
    known = RigidPose((math.radians(3.0), math.radians(-2.0), math.radians(4.0)), (2.0, -3.0, 1.5))
    moved, _ = align_volume(volume, spacing, anchor, known, anchor[0])  # moved(q) = volume(R q + t)
    moved_anchor = (anchor[0], (volume.shape[1] - 1) / 2.0, (volume.shape[2] - 1) / 2.0)
    found, ncc = register(moved, spacing, moved_anchor, template.for_side(side), iterations=120)
    # moved(R2 q + t2) = volume(q) needs R R2 = I and R t2 + t = 0
    R, t = known.matrix, torch.tensor(known.t, dtype=torch.float64)
    residual_R = R @ found.matrix
    residual_t = R @ torch.tensor(found.t, dtype=torch.float64) + t
    angle = math.degrees(math.acos(min(1.0, (float(torch.trace(residual_R)) - 1.0) / 2.0)))
    assert ncc > 0.9
    assert angle < 1.0, f"rotation not recovered: residual {angle:.2f} deg"
    assert float(torch.linalg.vector_norm(residual_t)) < 1.0, f"translation residual {residual_t.tolist()} mm"


def test_aligned_volume_overlays_the_original_in_world_coordinates() -> None:
    """Three small blobs at known world positions: after AlignMRIPose (a template rotated 6 degrees away) each blob
    sits at the same world position, read through the output's affine."""
    shape, spacing = (48, 48, 40), (2.0, 2.0, 3.0)  # (H, W, D), mm
    affine = np.array([[0, -spacing[1], 0, 40.0], [0, 0, spacing[2], -50.0], [-spacing[0], 0, 0, 30.0],
                       [0, 0, 0, 1.0]])
    blobs = [(20, 22, 18), (30, 15, 24), (14, 31, 12)]  # (h, w, d) voxel indices
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1).astype(np.float64)
    volume = np.zeros(shape, dtype=np.float32)
    for b in blobs:
        volume += np.exp(-(((grid - b) * spacing) ** 2).sum(-1) / (2 * 4.0 ** 2)).astype(np.float32)
    image = MetaTensor(torch.from_numpy(volume)[None], affine=torch.as_tensor(affine), meta={"spacing": spacing})

    dhw = torch.from_numpy(volume).permute(2, 0, 1)
    dhw_spacing = (spacing[2], spacing[0], spacing[1])
    anchor = (18.0, 22.0, 22.0)
    rotated, _ = align_volume(dhw, dhw_spacing, anchor, RigidPose((0.0, math.radians(6.0), 0.0), (0.0, 0.0, 0.0)),
                              anchor[0])
    template, _ = build_template([(rotated, dhw_spacing, (anchor[0], 23.5, 23.5), "RIGHT")], rounds=0)

    class Fixed:  # the localiser's answer for this phantom: the anchor, so that only the pose is estimated
        def __call__(self, *_: object) -> tuple[float, float]:
            return anchor[1], anchor[2]

    out = AlignMRIPose(PoseTemplate(template.image, anchor[0]), localiser=Fixed(), iterations=120)(image, "RIGHT")
    assert out.shape == image.shape
    assert abs(math.degrees(float(np.linalg.norm(out.meta["pose_omega"]))) - 6.0) < 1.0
    aligned = out.as_tensor()[0].numpy()
    in_world = [affine @ np.array([*b, 1.0]) for b in blobs]
    out_affine = out.affine.numpy()
    inv = np.linalg.inv(out_affine)
    for world in in_world:
        h, w, d = (inv @ world)[:3]
        assert all(0 <= v < n for v, n in zip((h, w, d), shape, strict=True))
        # the blob's peak in the aligned volume is where the affine puts the original blob
        r = 2
        window = aligned[int(round(h)) - r:int(round(h)) + r + 1, int(round(w)) - r:int(round(w)) + r + 1,
                         int(round(d)) - r:int(round(d)) + r + 1]
        assert window.max() > 0.5 * volume.max()
        peak = np.unravel_index(np.argmax(window), window.shape)
        assert max(abs(p - r) for p in peak) <= 1


def test_template_state_round_trip_and_left_knee_mirror(tmp_path: Path) -> None:
    template = PoseTemplate(torch.rand(31, 57, 57), 36.0)
    torch.save(template.state_dict(), tmp_path / "t.pt")
    back = PoseTemplate.from_state_dict(torch.load(tmp_path / "t.pt", weights_only=True))
    assert torch.allclose(back.image, template.image, atol=1e-3)
    assert torch.equal(back.for_side("LEFT"), back.image.flip(-1))
    assert torch.equal(back.for_side("RIGHT"), back.image)


def test_pose_frame_config_builds_the_aligned_chain(cohort: Path, truth: list[dict], tmp_path: Path) -> None:
    """configs/pose_frame.json merged after common.json (what knee_transforms(pose_template=...) and the bundle's
    --config_file list build): AlignMRIPosed before the slices are kept; the knee comes out aligned, in shape."""
    from monai.transforms import Compose

    from xray2mri_bundle.data.datasets import knee_transforms, transform_fingerprint
    from xray2mri_bundle.data.mri_transforms import mri_transforms

    volume, spacing, anchor, side = _cohort_knee(cohort, truth)
    template, _ = build_template([(volume, spacing, anchor, side)], rounds=0)
    path = tmp_path / "mri_pose_template.pt"
    torch.save(template.state_dict(), path)
    names = [type(t).__name__ for t in mri_transforms(size=32, pose_template=path)]
    assert names == ["LoadMRISeriesd", "AlignMRIPosed", "SelectSlicesd", "CropMRIJointd", "ScalePercentilesd"]
    assert "AlignMRIPosed" not in [type(t).__name__ for t in mri_transforms(size=32)]
    chain = knee_transforms(mri_size=32, xray_size=32, pose_template=path)
    assert transform_fingerprint(chain) != transform_fingerprint(knee_transforms(mri_size=32, xray_size=32))
    row = truth[0]
    out = Compose(mri_transforms(size=32, pose_template=path))({"mri": str(cohort / row["mri_folder"]),
                                                                "side": row["side"]})["mri"]
    assert out.shape == (1, 32, 32, 50)
    assert float(out.min()) >= -1.0 and float(out.max()) <= 1.0
    assert out.meta["pose_ncc"] > 0.9  # the template is this knee: it registers onto itself


def test_pose_template_command_writes_a_readable_template(cohort: Path, tmp_path: Path) -> None:
    from xray2mri_bundle.cli import main

    out = tmp_path / "tpl" / "mri_pose_template.pt"
    assert main(["pose-template", "--dataset-dir", str(cohort), "--knees", "3", "--rounds", "1",
                 "--out", str(out)]) == 0
    template = PoseTemplate.from_state_dict(torch.load(out, weights_only=True))
    assert template.image.shape == (31, 57, 57) and float(template.image.max()) > 0.5
    report = json.loads(out.with_suffix(".json").read_text())
    assert report["knees"] == 3 and report["skipped"] == [] and len(report["median_rotation_deg"]) == 1


def test_pose_template_reports_unreadable_knees(cohort: Path, truth: list[dict], tmp_path: Path) -> None:
    from xray2mri_bundle.data.pose import template_from_records

    broken = tmp_path / "broken_series"
    broken.mkdir()
    (broken / "1.dcm").write_bytes(b"not a dicom file")
    records = [{"mri": str(broken), "side": "RIGHT"},
               {"mri": str(cohort / truth[0]["mri_folder"]), "side": truth[0]["side"]}]
    template, report = template_from_records(records, count=2, rounds=0)
    assert report["knees"] == 1 and template.image.shape == (31, 57, 57)
    assert [s["mri"] for s in report["skipped"]] == [str(broken)] and report["skipped"][0]["reason"]


def test_a_missing_template_names_the_file_and_the_command(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="xray2mri pose-template"):
        AlignMRIPose(tmp_path / "none.pt")


def test_size_fit_recovers_the_pose_of_a_knee_larger_than_the_template(cohort: Path, truth: list[dict]) -> None:
    """A knee 10 % larger than the template: with ``scale=True`` the rotation comes back within a degree."""
    from xray2mri_bundle.data.pose import _grid_points, sample_rigid

    volume, spacing, anchor, side = _cohort_knee(cohort, truth)
    template, _ = build_template([(volume, spacing, anchor, side)], rounds=0)
    known = RigidPose((0.0, math.radians(4.0), math.radians(-3.0)), (0.0, 0.0, 0.0))
    centre = (anchor[0], (volume.shape[1] - 1) / 2.0, (volume.shape[2] - 1) / 2.0)
    points = _grid_points(volume.shape, spacing, centre)
    larger = sample_rigid(volume.float(), spacing, anchor, known.matrix.float() / 1.1, torch.zeros(3), points)
    found, _ = register(larger, spacing, centre, template.for_side(side), iterations=120, scale=True)
    residual = known.matrix @ found.matrix
    assert math.degrees(math.acos(min(1.0, (float(torch.trace(residual)) - 1.0) / 2.0))) < 1.0


def test_cache_fingerprint_tells_templates_and_size_fit_apart(tmp_path: Path) -> None:
    from xray2mri_bundle.data.datasets import transform_fingerprint
    from xray2mri_bundle.data.mri_transforms import AlignMRIPosed

    one, two = PoseTemplate(torch.rand(31, 57, 57), 36.0), PoseTemplate(torch.rand(31, 57, 57), 36.0)
    prints = {transform_fingerprint(AlignMRIPosed("mri", template=one)),
              transform_fingerprint(AlignMRIPosed("mri", template=two)),
              transform_fingerprint(AlignMRIPosed("mri", template=one, fit_size=True))}
    assert len(prints) == 3
    # the bundle command line delivers "false" as a string
    assert AlignMRIPosed("mri", template=one, fit_size="false").align.fit_size is False


def test_a_left_knee_registers_to_the_mirrored_template(cohort: Path, truth: list[dict]) -> None:
    """The right knee mirrored along the columns, labelled LEFT, matches the template's mirror image: high NCC and
    the mirrored pose (a rotation about the row axis changes sign under the mirror)."""
    volume, spacing, anchor, side = _cohort_knee(cohort, truth)
    template, _ = build_template([(volume, spacing, anchor, side)], rounds=0)
    known = RigidPose((0.0, math.radians(5.0), 0.0), (0.0, 0.0, 0.0))
    moved, _ = align_volume(volume, spacing, anchor, known, anchor[0])
    centre = (anchor[0], (volume.shape[1] - 1) / 2.0, (volume.shape[2] - 1) / 2.0)
    other = "LEFT" if side == "RIGHT" else "RIGHT"
    found, ncc = register(moved.flip(-1), spacing, centre, template.for_side(other), iterations=120)
    assert ncc > 0.9
    # moved(q) = volume(R q); the mirror D conjugates: the template -> knee map is D R^T D, +5 deg about the row axis
    assert math.degrees(found.omega[1]) == pytest.approx(5.0, abs=1.0)


def test_align_needs_the_side(tmp_path: Path) -> None:
    image = MetaTensor(torch.rand(1, 16, 16, 8), meta={"spacing": (2.0, 2.0, 3.0), "filename_or_obj": "knee.nii"})
    with pytest.raises(ValueError, match="knee.nii.*side"):
        AlignMRIPose(PoseTemplate(torch.rand(31, 57, 57), 36.0))(image, None)


def test_evaluation_scores_a_pose_frame_model_in_its_frame(tmp_path: Path) -> None:
    """A model folder holding mri_pose_template.pt is evaluated in that frame without --pose-template; the
    KneeRecorder then takes the joint from the alignment (centre column, the template's slice)."""
    from xray2mri_bundle.evaluation.evaluator import KneeRecorder
    from xray2mri_bundle.evaluation.options import EvaluationOptions
    from xray2mri_bundle.evaluation.run import _pose_template

    assert _pose_template(EvaluationOptions(model_dir=str(tmp_path)), "small") is None
    torch.save(PoseTemplate(torch.rand(31, 57, 57), 36.0).state_dict(), tmp_path / "mri_pose_template.pt")
    options = EvaluationOptions(model_dir=str(tmp_path))
    template = _pose_template(options, "small")
    assert template is not None and options.pose_template == str(tmp_path / "mri_pose_template.pt")
    # a models root with one folder per profile: the frame and the template are the profile folder's
    from xray2mri_bundle.checkpoint import write_checkpoint

    small = tmp_path / "root" / "small"
    write_checkpoint(small / "diffusion.pt", "diffusion", {}, settings={"mri_frame": CANONICAL_POSE})
    with pytest.raises(SystemExit, match="holds no mri_pose_template.pt"):
        _pose_template(EvaluationOptions(model_dir=str(tmp_path / "root")), "small")
    (tmp_path / "mri_pose_template.pt").rename(small / "mri_pose_template.pt")
    options = EvaluationOptions(model_dir=str(tmp_path / "root"))
    assert _pose_template(options, "small") is not None and options.pose_template == str(small / "mri_pose_template.pt")
    recorder = KneeRecorder("full", {("1", "RIGHT"): {"mri_joint_col": "10", "mri_joint_slice": "40"}},
                            aligned_joint_slice=template.depth_anchor)
    knee = {"subject": "1", "side": "RIGHT", "mri_meta": {"crop_box": [0, 0, 128, 128], "slice_start": 13}}
    assert recorder._joint_col(knee, 64) == pytest.approx(31.5)  # the centre, not the coil-frame column 10
    depths = torch.linspace(0, 1, 50)
    assert recorder._example_slice(knee, depths, 50) == 23  # slice 36 of the series = kept index 23


def test_alignment_runs_inside_inference_mode(cohort: Path, truth: list[dict]) -> None:
    """Preprocessing may run under torch.inference_mode() (scripts, evaluation): the registration still fits."""
    volume, spacing, anchor, side = _cohort_knee(cohort, truth)
    template, _ = build_template([(volume, spacing, anchor, side)], rounds=0)
    with torch.inference_mode():
        found, ncc = register(volume.clone(), spacing, anchor, template.for_side(side), iterations=10)
    assert ncc > 0.9 and found.angle_deg < 1.0


def test_a_training_run_in_the_pose_frame_builds_its_template_once(cohort: Path, truth: list[dict],
                                                                    tmp_path: Path) -> None:
    """configs/pose_frame.json's ``mri_pose_template``: the model folder's template, built from the run's training
    knees when absent (with its report), then used as it is by every later stage and run."""
    from xray2mri_bundle.engines.pose_frame import ensure_pose_template

    records = [{"mri": str(cohort / row["mri_folder"]), "side": row["side"]} for row in truth[:2]]
    path = tmp_path / "models" / "mri_pose_template.pt"
    assert ensure_pose_template(path, records, knees=2, rounds=0, source="cohort") == str(path)
    assert load_pose_template(path).image.shape == (31, 57, 57)
    report = json.loads(path.with_suffix(".json").read_text())
    assert report["knees"] == 2 and report["source"] == "cohort" and report["skipped"] == []
    stamp = path.stat().st_mtime_ns
    assert ensure_pose_template(path, [], knees=2, rounds=0) == str(path)  # exists: nothing is read or rebuilt
    assert path.stat().st_mtime_ns == stamp


def test_scoring_a_pose_frame_model_without_its_template_is_refused(tmp_path: Path) -> None:
    """A diffusion.pt trained in the canonical-pose frame (its settings say so) is not scored in the coil frame."""
    from xray2mri_bundle.checkpoint import write_checkpoint
    from xray2mri_bundle.evaluation.options import EvaluationOptions
    from xray2mri_bundle.evaluation.run import _pose_template

    write_checkpoint(tmp_path / "diffusion.pt", "diffusion", {}, settings={"mri_frame": "joint_centred"})
    assert _pose_template(EvaluationOptions(model_dir=str(tmp_path)), "small") is None
    write_checkpoint(tmp_path / "diffusion.pt", "diffusion", {}, settings={"mri_frame": "canonical_pose"})
    with pytest.raises(SystemExit, match="canonical-pose MRI frame.*mri_pose_template.pt"):
        _pose_template(EvaluationOptions(model_dir=str(tmp_path)), "small")


def test_one_rule_names_the_frame_of_a_model_folder(tmp_path: Path, caplog) -> None:
    """data.pose.model_frame: the recorded frame decides; a stale template beside joint-centred weights is ignored;
    a template that is not the one trained with is refused; unrecorded weights follow the folder."""
    from xray2mri_bundle.data.pose import POSE_TEMPLATE_FILE, model_frame

    assert model_frame({}, tmp_path) == ("joint_centred", None)
    template = PoseTemplate(torch.rand(31, 57, 57), 36.0)
    path = tmp_path / POSE_TEMPLATE_FILE
    torch.save(template.state_dict(), path)
    digest = load_pose_template(path).digest
    assert model_frame({}, tmp_path) == ("canonical_pose", path)  # weights from before the frame was recorded
    with caplog.at_level("WARNING"):
        assert model_frame({"mri_frame": "joint_centred"}, tmp_path) == ("joint_centred", None)
    assert "ignored" in caplog.text
    assert model_frame({"mri_frame": "canonical_pose", "mri_pose_template_sha256": digest}, tmp_path) == (
        "canonical_pose", path)
    with pytest.raises(ValueError, match="not the template the weights"):
        model_frame({"mri_frame": "canonical_pose", "mri_pose_template_sha256": "0123456789abcdef"}, tmp_path)
    path.unlink()
    assert model_frame({"mri_frame": "canonical_pose"}, tmp_path) == ("canonical_pose", None)
    with pytest.raises(ValueError, match="unknown MRI frame"):
        model_frame({"mri_frame": "coil"}, tmp_path)


def test_a_frame_the_mri_chain_does_not_build_is_refused(cohort: Path, truth: list[dict], tmp_path: Path) -> None:
    """``mri_frame`` is recorded in the weights and trusted downstream: set by hand without
    configs/pose_frame.json (or contradicting it), the chain refuses to be built, naming the file to merge."""
    from xray2mri_bundle.data.bundle_configs import parse_config

    def refusal(files: str | list[str], overrides: dict) -> str:
        with pytest.raises(RuntimeError) as info:  # MONAI wraps the expression's error, the cause is ours
            parse_config(files, "mri_preprocessing", overrides)
        assert isinstance(info.value.__cause__, ValueError)
        return str(info.value.__cause__)

    assert "has no pose alignment" in refusal("common.json", {"mri_frame": CANONICAL_POSE})
    assert "pose_frame.json" in refusal("common.json", {"mri_frame": CANONICAL_POSE})
    assert "one of joint_centred, canonical_pose, got 'pose'" in refusal("common.json", {"mri_frame": "pose"})
    volume, spacing, anchor, side = _cohort_knee(cohort, truth)
    template, _ = build_template([(volume, spacing, anchor, side)], rounds=0)
    pose_files = ["common.json", "pose_frame.json"]
    assert "aligns every MRI to a pose template" in refusal(
        pose_files, {"mri_frame": "joint_centred", "mri_pose_template": template})
    names = [type(t).__name__ for t in parse_config(pose_files, "mri_preprocessing", {"mri_pose_template": template})]
    assert "AlignMRIPosed" in names
