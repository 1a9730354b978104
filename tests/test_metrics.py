"""Metrics checked against hand-computed cases: PSNR, SSIM, RSSIM (region and value), adjacent-slice
correlation, joint-space width, and the MONAI / Ignite wrappers."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from ignite.engine import Engine
from monai.metrics import SSIMMetric
from scipy import ndimage as ndi

from xray2mri_bundle.metrics import (
    JSWResult,
    RegionSpecificSSIM,
    RSSIMMetric,
    adjacent_correlations,
    adjacent_slice_correlation,
    joint_roi,
    joint_space_width,
    jsw_errors,
    psnr_slices,
    rssim,
    rssim_slices,
    ssim_map,
    ssim_slices,
    volume_joint_space_width,
    volume_psnr,
    volume_rssim,
    volume_ssim,
)

# ------------------------------------------------------------------------------------------------- phantoms


def two_rectangles() -> np.ndarray:
    """'Femur over tibia': bright blocks rows 10..39 and 50..89, columns 16..47, on a dark (100, 64) field."""
    img = np.full((100, 64), -1.0)
    img[10:40, 16:48] = 0.8
    img[50:90, 16:48] = 0.8
    return img


def knee_slice(
    size: int = 128, gap_medial: int = 8, gap_lateral: int = 12, cortex: int = 1, cartilage: int = 2
) -> np.ndarray:
    """A drawn T1-like coronal slice of a RIGHT knee (rows superior -> inferior, columns to patient left).

    Marrow bright (0.85), cortex dark (-0.85, ``cortex`` px), cartilage intermediate (-0.15), joint fluid dark
    (-0.7), muscle -0.3, subcutaneous fat 0.6, air -1. Bone-to-bone gaps (px, cortex outer surfaces) are
    ``gap_lateral`` on the low-column half and ``gap_medial`` on the high-column half (medial of a right knee).
    """
    img = np.full((size, size), -1.0)
    rr, cc = np.mgrid[:size, :size]
    img[np.abs(cc - size / 2) < 0.46 * size] = 0.6
    img[np.abs(cc - size / 2) < 0.40 * size] = -0.3
    jr, cx, half = size // 2, size // 2, int(0.28 * size)
    medial = cc >= cx
    gap = np.where(medial, gap_medial, gap_lateral)
    femur_bottom = jr - (gap - gap // 2)  # first row below the femur
    tibia_top = jr + gap // 2  # first row of the tibia
    knee = np.abs(cc - cx) < half
    femur = knee & (rr < femur_bottom) & ~((np.abs(cc - cx) < 0.05 * size) & (rr > jr - 10))  # with a notch
    tibia = knee & (rr >= tibia_top)
    space = knee & ~femur & ~tibia & (rr >= femur_bottom - 1) & (rr < tibia_top)
    img[space] = -0.7
    img[(space & (rr < femur_bottom + cartilage)) | (space & (rr >= tibia_top - cartilage))] = -0.15
    for bone in (femur, tibia):
        img[bone] = -0.85
        img[ndi.binary_erosion(bone, iterations=cortex) if cortex else bone] = 0.85
    return img


# --------------------------------------------------------------------------------------------- PSNR / SSIM


def test_psnr_of_known_mse_per_slice_and_volume():
    rng = np.random.default_rng(0)
    gt = rng.uniform(-1, 1, (32, 32, 3))
    offsets = np.array([0.1, 0.2, 0.05])
    pred = gt + offsets  # slice k has MSE offsets[k]^2
    expected = 10 * np.log10(2.0**2 / offsets**2)
    np.testing.assert_allclose(psnr_slices(pred, gt), expected, rtol=1e-5)
    assert volume_psnr(pred, gt) == pytest.approx(expected.mean(), rel=1e-5)
    assert expected[0] == pytest.approx(26.0206, abs=1e-4)  # 10 log10(4 / 0.01)


def test_psnr_accepts_channel_first_torch_and_identical_is_inf():
    gt = torch.rand(3, 16, 16, 2) * 2 - 1
    assert np.isinf(psnr_slices(gt, gt)).all()
    np.testing.assert_allclose(psnr_slices(gt + 0.1, gt), psnr_slices(gt[0] + 0.1, gt[0]), rtol=1e-5)


def test_ssim_identical_is_one_and_matches_monai_ssim_metric():
    rng = np.random.default_rng(1)
    gt = rng.uniform(-1, 1, (24, 20, 3))
    np.testing.assert_allclose(ssim_slices(gt, gt), 1.0, atol=1e-6)
    pred = np.clip(gt + rng.normal(0, 0.2, gt.shape), -1, 1)
    ours = ssim_slices(pred, gt)
    monai = SSIMMetric(spatial_dims=2, data_range=2.0, reduction="none")
    ref = (
        monai(
            torch.from_numpy(pred.transpose(2, 0, 1)[:, None]).float(),
            torch.from_numpy(gt.transpose(2, 0, 1)[:, None]).float(),
        )
        .reshape(-1)
        .numpy()
    )
    np.testing.assert_allclose(ours, ref, rtol=1e-5)
    assert volume_ssim(pred, gt) == pytest.approx(ref.mean(), rel=1e-5)
    assert ssim_map(pred[..., 0], gt[..., 0]).shape == (14, 10)  # valid windows: H - 10, W - 10


def test_ssim_of_two_flat_images_is_the_luminance_term():
    # no variance: SSIM = (2 a b + C1) / (a^2 + b^2 + C1) with C1 = (0.01 * 2)^2
    a, b, c1 = 0.5, 0.0, (0.01 * 2.0) ** 2
    got = ssim_slices(np.full((16, 16, 1), a), np.full((16, 16, 1), b))
    assert got[0] == pytest.approx((2 * a * b + c1) / (a * a + b * b + c1), rel=1e-4)


# ---------------------------------------------------------------------------------------- adjacent slices


def test_adjacent_correlation_of_known_slices():
    u = np.random.default_rng(2).normal(size=(8, 8))
    vol = np.stack([u, u, -u, 2 * u + 1], axis=-1)  # r = 1, -1, -1
    np.testing.assert_allclose(adjacent_correlations(vol), [1.0, -1.0, -1.0], atol=1e-12)
    assert adjacent_slice_correlation(vol) == pytest.approx(-1 / 3)
    assert adjacent_slice_correlation(torch.from_numpy(np.stack([vol] * 3))) == pytest.approx(-1 / 3)


def test_adjacent_correlation_matches_numpy_and_skips_constant_slices():
    rng = np.random.default_rng(3)
    a, b = rng.normal(size=(6, 7)), rng.normal(size=(6, 7))
    r_ab = np.corrcoef(a.ravel(), b.ravel())[0, 1]
    vol = np.stack([a, b, np.zeros((6, 7))], axis=-1)
    r = adjacent_correlations(vol)
    assert r[0] == pytest.approx(r_ab) and np.isnan(r[1])
    assert adjacent_slice_correlation(vol) == pytest.approx(r_ab)
    assert math.isnan(adjacent_slice_correlation(np.zeros((4, 4, 3))))


# --------------------------------------------------------------------------------------------------- RSSIM


def test_rssim_roi_on_two_rectangles():
    roi = joint_roi(two_rectangles())
    assert roi.found and roi.reason == ""
    # femoral edge rows 10..39 -> lower third starts at 39 - 29 // 3 = 30; tibial 50..89 -> upper third ends 63
    assert roi.femoral_extent is not None and roi.tibial_extent is not None
    assert abs(roi.femoral_extent[0] - 10) <= 1 and abs(roi.femoral_extent[1] - 39) <= 1
    assert abs(roi.tibial_extent[0] - 50) <= 1 and abs(roi.tibial_extent[1] - 89) <= 1
    assert roi.rows is not None and roi.cols is not None
    assert abs(roi.rows[0] - 30) <= 1 and abs(roi.rows[1] - 63) <= 1
    assert abs(roi.cols[0] - 16) <= 1 and abs(roi.cols[1] - 47) <= 1
    assert roi.mask().sum() == (roi.rows[1] - roi.rows[0] + 1) * (roi.cols[1] - roi.cols[0] + 1)


def test_rssim_only_sees_the_joint_region():
    gt = two_rectangles()
    roi = joint_roi(gt)
    assert roi.rows is not None and roi.cols is not None
    noise = np.random.default_rng(4).normal(0, 0.3, gt.shape)
    far = np.ones_like(gt, dtype=bool)  # pixels whose windows never reach the ROI (SSIM window radius 5)
    far[roi.rows[0] - 5 : roi.rows[1] + 6, roi.cols[0] - 5 : roi.cols[1] + 6] = False
    outside = np.where(far, gt + noise, gt)
    assert rssim(outside, gt) == pytest.approx(1.0, abs=1e-6)
    assert ssim_slices(outside[..., None], gt[..., None])[0] < 0.9
    inside = np.where(roi.mask(), gt + noise, gt)
    assert rssim(inside, gt) < 0.9
    assert rssim(gt, gt) == pytest.approx(1.0, abs=1e-6)


def test_rssim_roi_comes_from_the_ground_truth_only():
    gt = knee_slice()
    blank = np.full_like(gt, -1.0)
    assert np.isfinite(rssim(blank, gt))  # region from the real slice, applied to the blank prediction
    assert math.isnan(rssim(gt, blank))  # a blank ground truth has no region


def test_rssim_roi_on_a_knee_phantom_spans_the_joint():
    roi = joint_roi(knee_slice())
    assert roi.found and roi.rows is not None and roi.cols is not None
    assert roi.rows[0] < 64 - 8 and roi.rows[1] > 64 + 8  # covers both bone ends and the gap
    assert roi.rows[0] > 16 and roi.rows[1] < 112  # but not whole bones
    assert abs(roi.cols[0] - 29) <= 2 and abs(roi.cols[1] - 99) <= 2  # bone edges: columns 29..99


@pytest.mark.parametrize(
    "image, reason",
    [
        (np.zeros((64, 64)), "flat"),
        (np.where(np.arange(64)[:, None] < 32, 0.8, -1.0) * np.ones((1, 64)), "no femoral edge above"),
    ],
)
def test_rssim_without_a_joint_is_nan_with_a_reason(image, reason):
    roi = joint_roi(image)
    assert not roi.found and reason in roi.reason and not roi.mask().any()
    assert math.isnan(rssim(image, image))


def test_volume_rssim_skips_slices_without_a_joint():
    gt = np.stack([two_rectangles(), np.zeros((100, 64)), two_rectangles()], axis=-1)
    pred = gt.copy()
    pred[40:50, :, 2] += 0.5  # damage the joint gap of slice 2
    values = rssim_slices(pred, gt)
    assert values[0] == pytest.approx(1.0, abs=1e-6) and math.isnan(values[1]) and values[2] < 1.0
    assert volume_rssim(pred, gt) == pytest.approx((values[0] + values[2]) / 2)
    assert math.isnan(volume_rssim(np.zeros((32, 32, 2)), np.zeros((32, 32, 2))))


def test_rssim_metric_follows_monai_cumulative_conventions():
    gt = torch.from_numpy(np.stack([two_rectangles(), np.zeros((100, 64))])[:, None]).float()  # (2, 1, H, W)
    metric = RSSIMMetric(get_not_nans=True)
    out = metric(y_pred=gt, y=gt)
    assert out.shape == (2, 1) and out[0, 0] == pytest.approx(1.0, abs=1e-5) and torch.isnan(out[1, 0])
    value, not_nans = metric.aggregate()
    assert value.item() == pytest.approx(1.0, abs=1e-5) and not_nans.item() == 1
    metric.reset()
    vol = gt.permute(1, 2, 3, 0)[None].repeat(1, 3, 1, 1, 1)  # (1, 3, H, W, 2) volume
    assert metric(y_pred=vol, y=vol)[0, 0] == pytest.approx(1.0, abs=1e-5)


def test_rssim_ignite_handler_on_an_evaluator():
    gt = torch.from_numpy(two_rectangles())[None, None].float()
    batches = [(gt, gt), (gt.clone().fill_(0.0), gt)]
    engine = Engine(lambda _engine, batch: batch)
    RegionSpecificSSIM().attach(engine, "rssim")
    engine.run(batches, max_epochs=1)
    expected = (1.0 + rssim(batches[1][0][0, 0].numpy(), two_rectangles())) / 2
    assert engine.state.metrics["rssim"] == pytest.approx(expected, abs=1e-5)
    assert engine.state.metric_details["rssim"].shape == (2, 1)


# ----------------------------------------------------------------------------------------- joint-space width


def test_jsw_surfaces_on_a_drawn_knee_with_known_gaps():
    img = knee_slice(gap_medial=8, gap_lateral=12, cortex=3, cartilage=3)  # 0.5 mm pixels: 4 mm and 6 mm
    res = joint_space_width(img, "RIGHT", (0.5, 0.5))
    assert res.reason == ""
    assert res.jsw_medial_mm == pytest.approx(4.0, abs=0.15) and res.jsw_lateral_mm == pytest.approx(6.0, abs=0.15)
    mirrored = joint_space_width(img[:, ::-1], "LEFT", (0.5, 0.5))  # a left knee is the mirror image
    assert mirrored.jsw_medial_mm == pytest.approx(res.jsw_medial_mm, abs=0.05)
    assert mirrored.jsw_lateral_mm == pytest.approx(res.jsw_lateral_mm, abs=0.05)
    right_as_left = joint_space_width(img, "LEFT", (0.5, 0.5))  # the side decides which half is medial
    assert right_as_left.jsw_medial_mm == pytest.approx(res.jsw_lateral_mm, abs=0.05)


@pytest.mark.parametrize("cortex", [0, 1, 3])
def test_jsw_marrow_edges_count_both_plates_as_gap(cortex):
    img = knee_slice(gap_medial=8, gap_lateral=12, cortex=cortex, cartilage=2)
    res = joint_space_width(img, "RIGHT", (0.5, 0.5), edge="marrow")
    plates = 2 * cortex * 0.5
    assert res.jsw_medial_mm == pytest.approx(4.0 + plates, abs=0.3)
    assert res.jsw_lateral_mm == pytest.approx(6.0 + plates, abs=0.3)


def test_jsw_surfaces_need_a_resolved_plate():
    blurred = ndi.gaussian_filter(knee_slice(gap_medial=8, gap_lateral=12, cortex=1), 0.7)  # 1 px plate, blurred
    res = joint_space_width(blurred, "RIGHT", (0.5, 0.5))
    assert math.isnan(res.jsw_medial_mm) and math.isnan(res.jsw_lateral_mm)
    assert "not resolved" in res.reason


def test_jsw_scales_with_pixel_spacing_and_takes_a_joint_column():
    img = knee_slice(gap_medial=6, gap_lateral=10, cortex=3, cartilage=2)
    res = joint_space_width(torch.from_numpy(img)[None], "right", (0.25, 0.25), joint_col=64)
    assert res.jsw_medial_mm == pytest.approx(1.5, abs=0.1) and res.jsw_lateral_mm == pytest.approx(2.5, abs=0.1)
    assert res.details["centre_col"] == 64.0


def test_jsw_without_a_joint_is_nan():
    res = joint_space_width(np.zeros((64, 64)), "LEFT", (1.0, 1.0))
    assert math.isnan(res.jsw_medial_mm) and math.isnan(res.jsw_lateral_mm) and res.reason
    with pytest.raises(ValueError, match="side"):
        joint_space_width(knee_slice(), "MEDIAL", (1.0, 1.0))  # type: ignore[arg-type]


def test_volume_jsw_takes_the_narrowest_slice_of_the_smooth_run_and_compares_with_truth():
    slices = [knee_slice(gap_medial=g, cortex=3, cartilage=2) for g in (10, 8, 6, 8)]
    vol = np.stack([*slices, np.zeros((128, 128)), knee_slice(gap_medial=2, cortex=3, cartilage=2)], axis=-1)
    res = volume_joint_space_width(vol, "RIGHT", (0.5, 0.5))
    # the last slice is cut off by the blank one: the run is slices 0..3 (5, 4, 3, 4 mm medial)
    assert res.details["runs"]["medial"] == [0, 1, 2, 3]
    assert res.jsw_medial_mm == pytest.approx(3.0, abs=0.15) and res.jsw_lateral_mm == pytest.approx(6.0, abs=0.15)
    assert len(res.details["per_slice"]) == 6 and math.isnan(res.details["per_slice"][4][1])
    med = volume_joint_space_width(vol, "RIGHT", (0.5, 0.5), reduce="median")
    assert med.jsw_medial_mm == pytest.approx(4.0, abs=0.15)
    errors = jsw_errors(res, {"jsw_medial_mm": 3.0, "jsw_lateral_mm": "6.0"})
    assert set(errors) == {"jsw_medial_mm_error", "jsw_lateral_mm_error"}
    assert abs(errors["jsw_medial_mm_error"]) < 0.15
    assert jsw_errors(res, {"jsw_medial_mm": 1.0, "jsw_lateral_mm": 4.0}, bias_mm=2.0)["jsw_medial_mm_error"] == (
        pytest.approx(errors["jsw_medial_mm_error"])
    )
    assert isinstance(res, JSWResult) and set(res.as_dict()) == {"jsw_medial_mm", "jsw_lateral_mm"}


def test_ssim_terms_script_multiplies_to_monai_ssim_and_only_luminance_depends_on_the_offset():
    """scripts/ssim_terms.py splits SSIM into luminance, contrast and structure: their product is MONAI's SSIM
    map; mapping [-1, 1] to [0, 1] (data range 2 -> 1) leaves contrast and structure unchanged."""
    import importlib.util

    from xray2mri_bundle.metrics.image_quality import ssim_map

    path = Path(__file__).resolve().parents[1] / "scripts" / "ssim_terms.py"
    spec = importlib.util.spec_from_file_location("ssim_terms", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    gen = torch.Generator().manual_seed(0)
    true = torch.rand(32, 32, generator=gen) * 2 - 1
    pred = (0.6 * true + 0.4 * (torch.rand(32, 32, generator=gen) * 2 - 1)).clamp(-1, 1)
    minus = module.ssim_terms(pred, true, 2.0)
    np.testing.assert_allclose(minus["ssim"].numpy(), ssim_map(pred, true, 2.0), atol=1e-5)
    unit = module.ssim_terms((pred + 1) / 2, (true + 1) / 2, 1.0)
    for term in ("c", "s"):
        torch.testing.assert_close(unit[term], minus[term])
    assert not torch.allclose(unit["l"], minus["l"])
    same = module.ssim_terms(true, true, 2.0)
    assert torch.allclose(same["ssim"], torch.ones_like(same["ssim"]), atol=1e-6)
