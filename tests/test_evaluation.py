"""Evaluation workflow: per-knee table and summary, baselines, the SupervisedEvaluator, figures, report, CLI.

Fast tests use in-memory knees (a two-bone phantom, 64 px); the end-to-end tests make a tiny synthetic cohort
with ``make_cohort`` and save tiny untrained networks in the inference checkpoint layout.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from xray2mri_bundle.evaluation import figures
from xray2mri_bundle.evaluation.baselines import MeanVolume, NearestXray, crop_feature, sample_depths
from xray2mri_bundle.evaluation.evaluator import (
    METRIC_NAMES,
    KneeRecorder,
    build_evaluator,
    knee_key,
    pick_examples,
    select_knees,
    slice_indices,
)
from xray2mri_bundle.evaluation.methods import METHODS, DiffusionMethod, build_baseline, parse_methods
from xray2mri_bundle.evaluation.records import COLUMNS, quartiles, read_rows, summarise, write_rows, write_summary
from xray2mri_bundle.evaluation.report import render_report
from xray2mri_bundle.evaluation.studies import depth_sweep, interpolation

SIZE = 64


def phantom_knee(index: int, kl: int, size: int = SIZE, slices: int = 50) -> dict:
    """A knee dict like ``build_knee_dataset`` items: femur over tibia, gap narrowing with KL, (1, H, W, S)."""
    rng = np.random.default_rng(index)
    rows = np.arange(size)[:, None, None]
    cols = np.arange(size)[None, :, None]
    depth = np.arange(slices)[None, None, :]
    gap = 2 + (4 - kl)
    centre = size // 2 + int(rng.integers(-2, 3))
    half_width = 0.35 * size * np.sqrt(np.clip(1 - ((depth - slices / 2) / (0.6 * slices)) ** 2, 0, 1))
    inside = np.abs(cols - size / 2) < half_width
    vol = np.full((size, size, slices), -0.6)
    vol = np.where(inside & (rows < centre - gap / 2) & (rows > 4), 0.7, vol)
    vol = np.where(inside & (rows > centre + gap / 2) & (rows < size - 4), 0.6, vol)
    vol = np.clip(vol + rng.normal(0, 0.05, vol.shape), -1, 1).astype(np.float32)
    xray = np.clip(1.2 * vol.mean(axis=2), -1, 1).astype(np.float32)
    return {"subject": f"90000{index:02d}", "visit": "V00", "side": "RIGHT" if index % 2 == 0 else "LEFT", "kl": kl,
            "mri": torch.from_numpy(vol)[None], "xray": torch.from_numpy(xray)[None],
            "intensity": torch.full((16, 8, 8), 1 / 16), "mri_meta": {"spacing": [2.5, 2.5, 1.5]}}


@pytest.fixture(scope="module")
def knees() -> dict[str, list[dict]]:
    return {"train": [phantom_knee(i, i % 5) for i in range(6)],
            "val": [phantom_knee(10 + i, g) for i, g in enumerate((0, 2, 4))]}


# ------------------------------------------------------------------------------------------ table, summary


def test_rows_round_trip_and_summary_match_hand_computation(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    rows = []
    for method in ("full", "mean_volume"):
        for i in range(7):
            rows.append({"subject": f"900000{i}", "visit": "V00", "side": "RIGHT", "kl": i % 3, "method": method,
                         "psnr": float(rng.normal(25, 2)), "ssim": float(rng.uniform()),
                         "rssim": None if i == 3 else float(rng.uniform()), "n_slices": 50})
    path = write_rows(rows, tmp_path / "per_knee.csv")
    back = read_rows(path)
    assert list(back[0])[: len(COLUMNS)] == list(COLUMNS)
    assert len(back) == len(rows) and back[3]["rssim"] is None and back[0]["kl"] == 0
    assert back[0]["psnr"] == pytest.approx(rows[0]["psnr"], rel=1e-5)

    summary = summarise(back)
    assert list(summary) == ["full", "mean_volume"]
    for method in summary:
        psnr = sorted(r["psnr"] for r in back if r["method"] == method)
        q1, med, q3 = statistics.quantiles(psnr, n=4, method="inclusive")
        stats = summary[method]["overall"]["psnr"]
        assert stats["median"] == pytest.approx(statistics.median(psnr)) == pytest.approx(med)
        assert stats["q1"] == pytest.approx(q1) and stats["q3"] == pytest.approx(q3)
        assert stats["iqr"] == pytest.approx(q3 - q1) and stats["n"] == 7
        assert summary[method]["overall"]["rssim"]["n"] == 6  # the empty cell is left out
        grade1 = [r["ssim"] for r in back if r["method"] == method and r["kl"] == 1]
        assert summary[method]["by_kl"]["1"]["ssim"]["median"] == pytest.approx(statistics.median(grade1))
    assert quartiles([])["median"] is None
    out = write_summary(summary, tmp_path / "summary.json", settings={"steps": "2"})
    data = json.loads(out.read_text())
    expected = summary["full"]["overall"]["psnr"]["median"]
    assert data["methods"]["full"]["overall"]["psnr"]["median"] == pytest.approx(expected)


def test_knee_selection_spreads_grades_and_slices() -> None:
    records = [{"subject": str(i), "side": "RIGHT", "kl": k} for i, k in enumerate([1, 1, 0, 3, 2, 2, 4, 0])]
    chosen = select_knees(records, 3)
    assert sorted(r["kl"] for r in chosen) == [0, 2, 4]
    assert [r["subject"] for r in chosen] == sorted((r["subject"] for r in chosen), key=int)  # datalist order
    assert select_knees(records, 0) == records
    assert pick_examples(chosen) == {0: "2_V00_RIGHT", 2: "4_V00_RIGHT", 4: "6_V00_RIGHT"}
    assert pick_examples(records[:2]) == {0: None, 2: None, 4: None}
    assert slice_indices(50, None) == list(range(50))
    assert slice_indices(50, 8) == [0, 7, 14, 21, 28, 35, 42, 49]


# ------------------------------------------------------------------------------------------------ baselines


def test_baselines(knees: dict[str, list[dict]]) -> None:
    train = knees["train"]
    mean = build_baseline("mean_volume", train)
    expected = torch.stack([k["mri"] for k in train]).double().mean(0).float()
    grid = torch.arange(50) / 49
    assert torch.allclose(mean(train[0]["xray"], grid), expected, atol=1e-6)
    half = sample_depths(expected, torch.tensor([0.5 / 49]))
    assert torch.allclose(half[..., 0], (expected[..., 0] + expected[..., 1]) / 2, atol=1e-6)

    nearest = build_baseline("nearest_xray", train)
    assert isinstance(nearest, NearestXray) and nearest.metric == "l2"
    for i, knee in enumerate(train):  # a training X-ray is its own nearest neighbour
        assert nearest.nearest(knee["xray"]) == i
        assert torch.equal(nearest(knee["xray"], grid), knee["mri"])
    feats = torch.stack([crop_feature(k["xray"]) for k in train])
    query = knees["val"][0]["xray"]
    by_hand = int(torch.argmin(((feats - crop_feature(query)) ** 2).sum(1)))
    assert nearest.nearest(query) == by_hand
    cosine = NearestXray(feats, lambda i: train[i]["mri"], [str(i) for i in range(6)], metric="cosine")
    assert 0 <= cosine.nearest(query) < 6
    assert isinstance(mean, MeanVolume) and mean.n_training == 6


def test_method_registry() -> None:
    assert set(METHODS) == {"full", "xray_no_guidance", "ldm_depth_only", "mean_volume", "nearest_xray", "knn_xray",
                            "oracle_knee", "autoencoder_ceiling"}
    assert METHODS["ldm_depth_only"].unet_flags == {"use_depth": True, "use_xray_latent": False,
                                                    "use_context": False, "use_guidance": False}
    assert METHODS["xray_no_guidance"].checkpoint_names[0] == "diffusion_xray_no_guidance.pt"
    assert parse_methods("full, mean_volume,full") == ["full", "mean_volume"]
    with pytest.raises(ValueError, match="unknown"):
        parse_methods("full,x_diffusion")


# ------------------------------------------------------------------------------------------------ evaluator


def test_supervised_evaluator_records_every_knee(knees: dict[str, list[dict]]) -> None:
    val = knees["val"]
    method = build_baseline("mean_volume", knees["train"])
    truth = {(k["subject"], k["side"]): {"jsw_medial_mm": "5.0", "jsw_lateral_mm": "6.0"} for k in val}
    recorder = KneeRecorder("mean_volume", truth, examples=[knee_key(val[1])])
    engine = build_evaluator(method, val, recorder, slices=10)
    engine.run()
    assert set(engine.state.metrics) == set(METRIC_NAMES)
    assert type(engine).__name__ == "SupervisedEvaluator"
    assert len(recorder.rows) == len(val)
    details = engine.state.metric_details["psnr"].reshape(-1).tolist()
    for row, value, knee in zip(recorder.rows, details, val, strict=True):
        assert row["psnr"] == pytest.approx(value) and row["subject"] == knee["subject"]
        assert row["n_slices"] == 10 and row["method"] == "mean_volume"
        assert row["jsw_medial_gt_mm"] == 5.0
        if row["jsw_medial_gen_mm"] is not None:
            assert row["jsw_medial_abs_err_mm"] == pytest.approx(abs(row["jsw_medial_gen_mm"] - 5.0))
    assert engine.state.metrics["psnr"] == pytest.approx(np.mean(details), rel=1e-5)
    assert list(recorder.example_slices) == [knee_key(val[1])]
    assert recorder.example_slices[knee_key(val[1])]["pred"].shape == (SIZE, SIZE)


# ------------------------------------------------------------------------------------- tiny diffusion method


def tiny_generator(use_xray_latent: bool = True, use_context: bool = True, use_guidance: bool = True):
    """A ``VolumeGenerator`` with tiny untrained networks (built directly, no checkpoint files)."""
    from xray2mri_bundle.data.intensity import intensity_distribution
    from xray2mri_bundle.diffusion import ConditionEncoder
    from xray2mri_bundle.inference.generator import VolumeGenerator
    from xray2mri_bundle.networks import build_autoencoder, build_classifier, build_unet, build_xray_encoder

    torch.manual_seed(0)
    autoencoder = build_autoencoder("tiny").eval()
    unet = build_unet("tiny", use_xray_latent=use_xray_latent, use_context=use_context,
                      use_guidance=use_guidance).eval()
    encoder = ConditionEncoder(autoencoder, build_xray_encoder("tiny").eval() if use_context else None,
                               build_classifier("tiny").eval() if use_guidance else None,
                               intensity_distribution if use_guidance else None)
    return VolumeGenerator(unet, autoencoder, encoder, scale_factor=1.0)


def test_diffusion_method_matches_volume_generator_and_reuses_conditions(knees: dict[str, list[dict]]) -> None:
    generator = tiny_generator()
    method = DiffusionMethod("full", generator, steps=2, chunk_size=3)
    knee = knees["val"][0]
    volume = method(knee["xray"], torch.linspace(0, 1, 5), knee_id=knee_key(knee), seed=7)
    reference = generator(knee["xray"], slices=5, num_inference_steps=2, seed=7, chunk_size=4).volume
    assert volume.shape == (SIZE, SIZE, 5)
    assert torch.allclose(volume, reference, atol=1e-5)
    method(knee["xray"], torch.tensor([0.25, 0.3]), knee_id=knee_key(knee), seed=7)
    assert method.condition_calls == 1

    sweep = depth_sweep(method, [knee], counts=(3, 6), seed=0)
    assert set(sweep.generated) == {3, 6} and len(sweep.real) == 1
    strip = interpolation(method, knee, frames=2)
    assert len(strip.frames) == 2 and len(strip.depths) == 4
    assert strip.depths[0] == pytest.approx(24 / 49) and strip.depths[-1] == pytest.approx(25 / 49)
    assert method.condition_calls == 1  # the sweep and the strip reused the knee's conditions (same key)

    solver = DiffusionMethod("full", generator, steps=3, chunk_size=2, sampler="dpmpp_2m")
    multistep = solver(knee["xray"], torch.linspace(0, 1, 4), knee_id=knee_key(knee), seed=7)
    expected = generator(knee["xray"], slices=4, num_inference_steps=3, seed=7, sampler="dpmpp_2m").volume
    assert torch.allclose(multistep, expected, atol=1e-5)


# ------------------------------------------------------------------------------------------ figures, report


def assert_png(path: Path, min_side: int = 200) -> None:
    assert path.is_file() and path.stat().st_size > 5000
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        assert image.format == "PNG" and min(image.size) >= min_side


def test_figures_are_valid_pngs(tmp_path: Path, knees: dict[str, list[dict]]) -> None:
    rng = np.random.default_rng(1)
    rows = [{"method": m, "psnr": float(rng.normal(20, 2)), "ssim": float(rng.uniform()),
             "rssim": float(rng.uniform()), "kl": 0} for m in ("full", "mean_volume") for _ in range(5)]
    paths = figures.box_plots(rows, tmp_path)
    knee = knees["val"][0]
    real = knee["mri"][0, ..., 25].numpy()
    table = {0: {"xray": knee["xray"][0].numpy(), "real": real, "label": "k",
                 "methods": {"full": real * 0.5, "mean_volume": real[::-1].copy()}}, 2: None}
    paths["table1"] = figures.difference_table(table, ["full", "mean_volume"], tmp_path / "t1.png")
    paths["sweep"] = figures.depth_sweep_plot({30: [0.6, 0.7], 50: [0.7, 0.75], 100: [0.8, 0.8]}, 0.82,
                                              tmp_path / "f6.png")
    paths["interp"] = figures.interpolation_strip(real, [real, real], real, [0.1, 0.2, 0.3, 0.4], tmp_path / "t2.png")
    for path in paths.values():
        assert_png(path)
    assert figures.sobel_difference(real, real).max() == 0.0


def test_report_lists_methods_figures_and_failure_modes() -> None:
    rows = [{"subject": str(i), "side": "RIGHT", "kl": 0, "method": m, "psnr": p, "rssim": r,
             "adjacent_corr": 0.99, "adjacent_corr_real": 0.8, "jsw_medial_gt_mm": 5.0, "jsw_medial_gen_mm": None}
            for i in range(3) for m, p, r in (("full", 18.0, 0.2), ("mean_volume", 20.0, 0.3))]
    text = render_report(summarise(rows), rows, {"DDIM steps": 2}, {"psnr": "figures/fig5_psnr.png"},
                         ["xray2mri evaluate --steps 2"], missing_grades=[4])
    assert "![Fig. 5a" in text and "(figures/fig5_psnr.png)" in text
    assert "not for diagnosis" in text and "xray2mri evaluate --steps 2" in text
    assert "does not beat the mean training volume" in text
    assert "smoother than real MRI" in text and "KL grade 4" in text
    assert "Not produced in this run" in text
    assert "`full` median RSSIM 0.200 [0.200, 0.200] (IQR 0.000)" in text
    assert "- `mean_volume`: 0.300 [0.300, 0.300] (IQR 0.000); `full` is lower by 0.100" in text
    assert "No `training_record.json`" in text


def test_report_says_how_long_the_weights_trained() -> None:
    rows = [{"subject": "1", "side": "LEFT", "kl": 2, "method": "full", "psnr": 20.0, "rssim": 0.4}]
    record = {"profile": "small", "commit": "0123456789abcdef", "date_utc": "2026-11-25", "command": "train.sh",
              "notes": ["resumed once"],
              "stages": {"autoencoder": {"iterations": 1080, "wall_time_s": 1800.0, "final_train_loss": 0.03,
                                         "final_validation": {"epoch": 120.0, "val_psnr": 22.5}},
                         "diffusion": {"iterations": 5000, "wall_time_s": 3000.0, "final_train_loss": None,
                                       "final_validation": None},
                         "diffusion_ldm_depth_only": {"iterations": 5000, "wall_time_s": 60.0}}}
    text = render_report(summarise(rows), rows, {}, {}, training_record=record)
    assert "| `autoencoder.pt` | 1080 | 30.0 | 0.03 | val_psnr 22.5 |" in text
    assert "| `diffusion.pt` | 5000 | 50.0 | n/a | n/a |" in text
    assert "diffusion_ldm_depth_only" not in text  # not an evaluated method here
    assert "- resumed once" in text and "`train.sh`" in text


# ------------------------------------------------------------------------------- end to end on a tiny cohort


def save_tiny_models(folder: Path) -> Path:
    """Untrained tiny networks saved like the training's final exports (inference checkpoint layout):
    autoencoder.pt, classifier.pt, diffusion.pt and the two ablations' diffusion_<method>.pt."""
    from xray2mri_bundle.checkpoint import write_checkpoint
    from xray2mri_bundle.networks import build_autoencoder, build_classifier, build_unet, build_xray_encoder

    torch.manual_seed(0)
    folder.mkdir(parents=True, exist_ok=True)
    write_checkpoint(folder / "autoencoder.pt", "autoencoder", {"autoencoder": build_autoencoder("tiny")},
                     profile="tiny")
    write_checkpoint(folder / "classifier.pt", "classifier", {"classifier": build_classifier("tiny")}, profile="tiny")
    schedule = {"schedule": "scaled_linear_beta", "beta_start": 0.00085, "beta_end": 0.012}
    for name, method in (("diffusion.pt", "full"), ("diffusion_xray_no_guidance.pt", "xray_no_guidance"),
                         ("diffusion_ldm_depth_only.pt", "ldm_depth_only")):
        flags = dict(METHODS[method].unet_flags)
        unet = build_unet("tiny", **flags)
        with torch.no_grad():  # wake the zero-initialised layers so that the output depends on the conditions
            for param in unet.parameters():
                if param.ndim > 1 and not param.any():
                    param.normal_(0.0, 0.05)
        encoder = build_xray_encoder("tiny") if flags["use_context"] else None
        write_checkpoint(folder / name, "diffusion", {"unet": unet, "xray_encoder": encoder}, scale_factor=1.0,
                         profile="tiny", settings={"use_intensity": flags["use_guidance"], "image_size": SIZE,
                                                   "num_train_timesteps": 1000, "noise_schedule": schedule})
    return folder


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from xray2mri_bundle.cohort import make_cohort

    return make_cohort(tmp_path_factory.mktemp("cohort"), knees=6, seed=0, mri_matrix=SIZE, progress=False)


def test_evaluate_cli_writes_tables_figures_and_report(tmp_path: Path, cohort: Path) -> None:
    from xray2mri_bundle.cli.evaluate import main

    models = save_tiny_models(tmp_path / "models" / "tiny")
    out, docs = tmp_path / "eval", tmp_path / "docs"
    argv = ["--model-dir", str(models), "--dataset-dir", str(cohort), "--out", str(out),
            "--methods", "full,xray_no_guidance,ldm_depth_only,mean_volume,nearest_xray,knn_xray,oracle_knee",
            "--max-knees", "2", "--max-train-knees", "3", "--knn", "2", "--samples", "2",
            "--steps", "2", "--slices", "6", "--sweep-depths", "3,5", "--interp-frames", "2", "--strict",
            "--write-docs", "--docs-dir", str(docs)]
    assert main(argv) == 0

    rows = read_rows(out / "per_knee.csv")
    methods = ["full", "full_mean2", "xray_no_guidance", "xray_no_guidance_mean2", "ldm_depth_only",
               "ldm_depth_only_mean2", "mean_volume", "nearest_xray", "knn_xray", "oracle_knee"]
    assert [r["method"] for r in rows] == [m for m in methods for _ in range(2)]
    knees = {(r["subject"], r["side"]) for r in rows}
    assert len(knees) == 2 and all(r["n_slices"] == 6 for r in rows)
    assert all(r["jsw_medial_gt_mm"] is not None and r["psnr"] is not None for r in rows)
    assert all(r["steps"] == 2 for r in rows[:12]) and all(r["steps"] is None for r in rows[12:])
    assert all(len(str(r["neighbour"]).split(";")) == 2 for r in rows if r["method"] == "knn_xray")
    summary = json.loads((out / "summary.json").read_text())
    ci = summary["bootstrap"]["full"]["mean_volume"]["psnr"]
    assert ci["n"] == 2 and ci["low"] <= ci["median"] <= ci["high"]
    for (subject, side) in knees:  # the real volume's values are the same for every method
        real = {r["adjacent_corr_real"] for r in rows if (r["subject"], r["side"]) == (subject, side)}
        assert len(real) == 1

    summary = json.loads((out / "summary.json").read_text())
    assert list(summary["methods"]) == methods
    for method in methods:
        psnr = [r["psnr"] for r in rows if r["method"] == method]
        stats = summary["methods"][method]["overall"]["psnr"]
        assert stats["median"] == pytest.approx(statistics.median(psnr), rel=1e-6)
        q1, _, q3 = statistics.quantiles(psnr, n=4, method="inclusive")
        assert stats["iqr"] == pytest.approx(q3 - q1, rel=1e-6, abs=1e-9)
        assert set(summary["engine_metrics"][method]) == set(METRIC_NAMES)

    for name in ("fig5_psnr", "fig5_ssim_rssim", "table1_difference_maps", "fig6_adjacent_corr_vs_depths",
                 "table2_interpolation"):
        assert_png(out / "figures" / f"{name}.png")
        assert_png(docs / "results" / f"{name}.png")
    assert read_rows(docs / "results" / "per_knee.csv") == rows  # the scores kept beside the docs page
    sweep = (out / "depth_sweep.csv").read_text().splitlines()
    assert sweep[0] == "knee,n_depths,adjacent_corr" and len(sweep) == 1 + 3
    report = (out / "report.md").read_text()
    assert "](figures/fig6_adjacent_corr_vs_depths.png)" in report and "## Failure modes" in report
    results = (docs / "results.md").read_text()
    assert "](results/table1_difference_maps.png)" in results and "xray2mri evaluate --model-dir" in results

    # the same run rendered again with a preface, without evaluating: same tables, the preface added
    preface = tmp_path / "preface.md"
    preface.write_text("## What changed\n\nA preface written after the numbers were known.\n")
    (out / "figures" / "fig5_psnr.png").write_bytes(b"")  # not redrawn: the figures of the run are copied as they are
    assert main(["--report-only", "--out", str(out), "--model-dir", str(models), "--preface", str(preface),
                 "--write-docs", "--docs-dir", str(tmp_path / "docs2")]) == 0
    again = (tmp_path / "docs2" / "results.md").read_text()
    assert "A preface written after the numbers were known." in again
    assert again.replace(preface.read_text(), "").split("## Setup")[1] == results.split("## Setup")[1]
    assert (tmp_path / "docs2" / "results" / "fig5_psnr.png").stat().st_size == 0
    assert read_rows(tmp_path / "docs2" / "results" / "per_knee.csv") == rows
    with pytest.raises(SystemExit, match="is missing"):
        main(["--report-only", "--out", str(tmp_path / "nothing_here"), "--model-dir", str(models)])


def test_bundle_config_runs_the_evaluator(tmp_path: Path, cohort: Path) -> None:
    from monai.bundle import ConfigWorkflow

    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "bundle_eval"
    workflow = ConfigWorkflow(config_file=str(root / "configs" / "evaluate.json"), workflow_type="infer",
                              bundle_root=str(root), dataset_dir=str(cohort), output_dir=str(out), profile="tiny",
                              method="mean_volume", slices=4, max_knees=2)
    workflow.initialize()
    workflow.run()
    evaluator = workflow.parser.get_parsed_content("validate#evaluator")
    assert set(evaluator.state.metrics) == set(METRIC_NAMES)
    rows = read_rows(out / "per_knee_mean_volume.csv")
    assert len(rows) == 2 and {r["method"] for r in rows} == {"mean_volume"}
    assert json.loads((out / "summary_mean_volume.json").read_text())["methods"]["mean_volume"]["n_knees"] == 2
    workflow.finalize()


def test_knn_xray_averages_the_k_nearest_and_oracle_picks_the_closest_truth() -> None:
    from xray2mri_bundle.evaluation.baselines import OracleKnee

    vols = [torch.full((1, 4, 4, 3), float(v)) for v in (0.0, 1.0, 3.0)]
    xrays = [torch.full((1, 8, 8), float(v)) for v in (0.0, 1.0, 3.0)]
    knn = NearestXray.fit(xrays, lambda i: vols[i], ["a", "b", "c"], k=2)
    out = knn(torch.full((1, 8, 8), 0.9), torch.tensor([0.0, 1.0]))
    torch.testing.assert_close(out, torch.full((1, 4, 4, 2), 0.5))  # mean of b (1.0) and a (0.0)
    assert knn.last_neighbour == "b;a" and knn.name == "knn_xray"
    oracle = OracleKnee.fit(vols, ["a", "b", "c"])
    pred = oracle(torch.zeros(1, 8, 8), torch.tensor([0.0, 0.5]), truth=torch.full((1, 4, 4, 2), 2.4))
    assert oracle.last_neighbour == "c" and float(pred.mean()) == pytest.approx(3.0)
    with pytest.raises(ValueError, match="true volume"):
        oracle(torch.zeros(1, 8, 8), torch.tensor([0.0]))


def test_autoencoder_ceiling_is_the_round_trip_of_the_true_slices(tmp_path: Path) -> None:
    """The ceiling decodes E1's posterior mean of each true slice: compared with MONAI's own encode/decode."""
    from xray2mri_bundle import networks
    from xray2mri_bundle.checkpoint import write_checkpoint
    from xray2mri_bundle.evaluation.methods import build_method

    torch.manual_seed(0)
    autoencoder = networks.build_autoencoder("tiny").eval()
    write_checkpoint(tmp_path / "autoencoder.pt", "autoencoder", {"autoencoder": autoencoder}, profile="tiny")
    ceiling = build_method("autoencoder_ceiling", tmp_path)
    assert METHODS["autoencoder_ceiling"].kind == "oracle" and ceiling.uses_truth
    truth = torch.rand(1, 32, 32, 3) * 2 - 1
    out = ceiling(torch.zeros(1, 32, 32), torch.tensor([0.0, 0.5, 1.0]), truth=truth)
    assert out.shape == (1, 32, 32, 3)
    channels = autoencoder.encoder.in_channels
    with torch.no_grad():
        for k in range(3):
            x = truth[0, :, :, k][None, None].expand(1, channels, -1, -1)
            expected = autoencoder.decode(autoencoder.encode(x)[0]).mean(dim=1).clamp(-1, 1)[0]
            torch.testing.assert_close(out[0, :, :, k], expected, atol=1e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="true volume"):
        ceiling(torch.zeros(1, 32, 32), torch.tensor([0.0]))
    with pytest.raises(FileNotFoundError, match="autoencoder.pt"):
        build_method("autoencoder_ceiling", tmp_path / "empty")


def test_bootstrap_differences_hand_case() -> None:
    from xray2mri_bundle.evaluation.records import bootstrap_differences

    rows = []
    for k, (a, b) in enumerate([(10.0, 9.0), (12.0, 10.0), (11.0, 8.0), (9.0, 9.5)]):
        rows += [{"subject": str(k), "side": "RIGHT", "method": "full", "psnr": a},
                 {"subject": str(k), "side": "RIGHT", "method": "mean_volume", "psnr": b}]
    rows.append({"subject": "9", "side": "LEFT", "method": "full", "psnr": 50.0})  # unpaired: left out
    ci = bootstrap_differences(rows, ["full"], metrics=("psnr",), n_boot=500)["full"]["mean_volume"]["psnr"]
    assert ci["n"] == 4 and ci["median"] == pytest.approx(1.5)  # differences 1, 2, 3, -0.5
    assert -0.5 <= ci["low"] <= 1.5 <= ci["high"] <= 3.0


def test_reproduce_trains_on_the_datalist_cohort_and_names_the_recorded_recipe(tmp_path: Path) -> None:
    """A page evaluated on another cohort through a datalist must not claim the weights were trained on it."""
    from xray2mri_bundle.evaluation import EvaluationOptions
    from xray2mri_bundle.evaluation.run import reproduce

    model_dir = tmp_path / "models"
    model_dir.mkdir()
    (model_dir / "training_record.json").write_text(json.dumps({"command": "scripts/train_small_demo.sh",
                                                                "cohort": {"seed": 1, "knees": 400}}))
    args = EvaluationOptions(dataset_dir=str(tmp_path / "cohort_new"), model_dir=str(model_dir),
                             datalist="data/datalist_new.json")
    lines = reproduce(args, ["--max-knees", "3"], ["full", "ldm_depth_only", "mean_volume"], "small")
    training = [line for line in lines if line.startswith("python -m monai.bundle run")]
    assert len(training) == 2 and all("--dataset_dir TRAINING_COHORT" in line for line in training)
    assert not any("cohort_new" in line for line in training)
    assert any("scripts/train_small_demo.sh" in line and "'seed': 1" in line for line in lines)
    args.datalist = None  # evaluated on the training cohort itself: the training lines name it
    lines = reproduce(args, [], ["full"], "small")
    assert any(f"--dataset_dir {tmp_path / 'cohort_new'}" in line for line in lines)


def test_evaluation_options_are_the_command_line_defaults_and_round_trip() -> None:
    """``xray2mri evaluate`` parses into ``EvaluationOptions`` with the same defaults, and
    ``command_line()`` gives back arguments that parse to the same options (the report's Reproduce line)."""
    from xray2mri_bundle.cli.evaluate import build_parser
    from xray2mri_bundle.evaluation import EvaluationOptions

    parser = build_parser()
    assert EvaluationOptions.from_mapping(vars(parser.parse_args([]))) == EvaluationOptions()
    assert EvaluationOptions().command_line() == []
    argv = ["--max-knees", "30", "--sweep-depths", "", "--no-jsw", "--samples", "1", "--train-command", "a b",
            "--train-command", "c"]
    options = EvaluationOptions.from_mapping(vars(parser.parse_args(argv)))
    assert (options.max_knees, options.sweep_depths, options.no_jsw, options.train_command) == (30, "", True,
                                                                                               ["a b", "c"])
    assert EvaluationOptions.from_mapping(vars(parser.parse_args(options.command_line()))) == options
    with pytest.raises(TypeError, match="max_kneez"):
        EvaluationOptions.from_mapping({"max_kneez": 3})
