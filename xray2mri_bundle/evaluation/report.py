"""The Markdown report of an evaluation run: settings, tables of medians [IQR], figures, failure modes.

``render_report`` is pure (summary + rows + settings -> text); image links are relative to the report's own
folder, so the same function writes ``<out>/report.md`` (links ``figures/...``) and ``docs/results.md``
(links to a copy of the figures under ``docs/results/``). Failure modes are read off the numbers (a model that
does not beat the mean volume, unmeasurable joints, over-smooth or flickering depth stacks, missing grades)
plus the limits that hold for any X-ray -> MRI model.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from xray2mri_bundle.constants import REPORT_DISCLAIMER

from .methods import describe, is_oracle, method_kind

__all__ = ["PAPER_VALUES", "failure_modes", "render_report", "write_report"]

PAPER_VALUES = {
    "psnr": "29.2 dB", "ssim": "0.28", "rssim": "~0.5 (best baseline X-Diffusion 0.42)",
    "adjacent_corr": "0.73 at 50 depths, 0.76 at 500; real MRI 0.82",
}
"""Medians reported by the paper for its model on OAI (section 4), for orientation only."""

_TABLE_METRICS: tuple[tuple[str, str, int], ...] = (
    ("psnr", "PSNR (dB)", 2), ("ssim", "SSIM", 3), ("rssim", "RSSIM", 3), ("adjacent_corr", "adjacent r", 3),
    ("jsw_medial_abs_err_mm", "JSW medial abs. error (mm)", 2),
    ("jsw_lateral_abs_err_mm", "JSW lateral abs. error (mm)", 2), ("seconds", "s / knee", 1),
)
DISCLAIMER = REPORT_DISCLAIMER


def _fmt(stats: Mapping[str, Any] | None, digits: int) -> str:
    """'median [q1, q3]' or 'n/a'."""
    if not stats or stats.get("median") is None:
        return "n/a"
    return f"{stats['median']:.{digits}f} [{stats['q1']:.{digits}f}, {stats['q3']:.{digits}f}]"


def _median(summary: Mapping[str, Any], method: str, metric: str) -> float | None:
    stats = summary.get(method, {}).get("overall", {}).get(metric) or {}
    return stats.get("median")


def _count(rows: Sequence[Mapping[str, Any]], method: str, metric: str) -> tuple[int, int]:
    """(missing, total) values of ``metric`` for ``method``."""
    mine = [r for r in rows if r.get("method") == method]
    missing = sum(1 for r in mine if r.get(metric) is None or not math.isfinite(float(r[metric])))
    return missing, len(mine)


def failure_modes(
    summary: Mapping[str, Any], rows: Sequence[Mapping[str, Any]], missing_grades: Sequence[int] = (),
) -> list[str]:
    """Plain-language observations about what went wrong or is weak in this run (one bullet each)."""
    notes: list[str] = []
    diffusion = [m for m in summary if method_kind(m) == "diffusion"]
    references = [m for m in summary if method_kind(m) == "baseline"]
    mean_psnr = _median(summary, "mean_volume", "psnr")
    for method in diffusion:
        psnr = _median(summary, method, "psnr")
        if mean_psnr is not None and psnr is not None and psnr <= mean_psnr:
            notes.append(f"`{method}` does not beat the mean training volume on PSNR ({psnr:.2f} vs {mean_psnr:.2f} "
                         "dB): its slices are no closer to the real knee than the population average. PSNR rewards "
                         "blurry averages (one sample against the truth), so read it with the sample mean and RSSIM.")
        for metric in ("ssim", "rssim"):
            mine = _median(summary, method, metric)
            for ref in references:
                theirs = _median(summary, ref, metric)
                if mine is not None and theirs is not None and mine <= theirs:
                    notes.append(f"`{method}` does not beat `{ref}` on {metric.upper()} ({mine:.3f} vs {theirs:.3f}).")
    for metric in ("psnr", "ssim", "rssim"):
        full, ldm = _median(summary, "full", metric), _median(summary, "ldm_depth_only", metric)
        if full is not None and ldm is not None and full <= ldm:
            notes.append(f"The X-ray conditioning does not help on {metric.upper()}: `full` {full:.3f} <= "
                         f"`ldm_depth_only` {ldm:.3f} (a model told only the depth).")
    full, plain = _median(summary, "full", "rssim"), _median(summary, "xray_no_guidance", "rssim")
    if full is not None and plain is not None and full <= plain:
        notes.append(f"The p/i guidance (KOA probability + intensity fusion) does not help: `full` RSSIM {full:.3f} "
                     f"<= `xray_no_guidance` {plain:.3f}.")
    for method in summary:
        gen = _median(summary, method, "adjacent_corr")
        real = _median(summary, method, "adjacent_corr_real")
        if gen is None or real is None:
            continue
        if gen > real + 0.05:
            notes.append(f"`{method}` stacks are smoother than real MRI (adjacent r {gen:.3f} vs {real:.3f}): slices "
                         "change too little with depth (a depth-blind or averaged volume).")
        elif gen < real - 0.15:
            notes.append(f"`{method}` flickers between neighbouring depths (adjacent r {gen:.3f} vs real "
                         f"{real:.3f}): slices are drawn inconsistently along depth.")
    for method in summary:
        missing, total = _count(rows, method, "rssim")
        if missing:
            notes.append(f"RSSIM undefined for {missing}/{total} knees of `{method}` (no femur-over-tibia edge pair "
                         "on any compared real slice): those knees are left out of its RSSIM statistics.")
        for side in ("medial", "lateral"):
            missing, total = _count(rows, method, f"jsw_{side}_gen_mm")
            if missing and any(r.get(f"jsw_{side}_gt_mm") is not None for r in rows):
                notes.append(f"Joint-space width ({side}) not measurable on {missing}/{total} `{method}` volumes "
                             "(no bone above and below a dark gap): the generated joint is blurred or absent.")
    for grade in missing_grades:
        notes.append(f"No knee of KL grade {grade} among the evaluated knees: its Table 1 row is empty.")
    notes += [
        "An X-ray carries no soft-tissue, cartilage-signal or marrow information, so those regions of a pseudo-MRI "
        "are guesses (paper section 4.3.3, Fig. 7); only bone shape and joint-space narrowing are constrained.",
        "Metrics are computed on percentile-normalised [-1, 1] volumes of a synthetic phantom cohort: they are not "
        "comparable to the paper's OAI numbers, and with few knees the IQRs are wide.",
    ]
    return notes


def rssim_headline(summary: Mapping[str, Any], reference: str = "full") -> list[str]:
    """One line per other method: the reference's median RSSIM [IQR] beside that method's, and the difference."""
    ref = (summary.get(reference, {}).get("overall", {}) or {}).get("rssim")
    if not ref or ref.get("median") is None:
        return []
    lines = [f"`{reference}` median RSSIM {_fmt(ref, 3)} (IQR {ref['q3'] - ref['q1']:.3f}) against:", ""]
    best: tuple[str, float] | None = None
    for method, data in summary.items():
        other = data.get("overall", {}).get("rssim")
        if method == reference or not other or other.get("median") is None:
            continue
        delta = ref["median"] - other["median"]
        oracle = " (oracle, a ceiling)" if is_oracle(method) else ""
        lines.append(f"- `{method}`{oracle}: {_fmt(other, 3)} (IQR {other['q3'] - other['q1']:.3f}); `{reference}` "
                     f"is {'higher' if delta > 0 else 'lower' if delta < 0 else 'equal'} by {abs(delta):.3f}")
        if method_kind(method) == "baseline" and (best is None or other["median"] > best[1]):
            best = (method, other["median"])
    if best is not None and best[1] > 0:
        lines += ["", f"Ratio to the best no-diffusion reference (`{best[0]}`): {ref['median'] / best[1]:.2f}x "
                  "(goal: >= 1.2x, the paper's margin over its best peer)."]
    return lines


def bootstrap_table(bootstrap: Mapping[str, Any], reference: str) -> list[str]:
    """Median per-knee difference ``reference - other`` [95 % bootstrap interval] per metric."""
    pairs = bootstrap.get(reference) or {}
    if not pairs:
        return []
    metrics = [m for m in ("psnr", "ssim", "rssim") if any(m in v for v in pairs.values())]
    lines = [f"| `{reference}` minus | " + " | ".join(m.upper() for m in metrics) + " | knees |",
             "|" + " --- |" * (len(metrics) + 2)]
    for other, values in pairs.items():
        cells = []
        for metric in metrics:
            v = values.get(metric)
            digits = 2 if metric == "psnr" else 3
            cells.append("n/a" if not v else
                         f"{v['median']:+.{digits}f} [{v['low']:+.{digits}f}, {v['high']:+.{digits}f}]")
        n = max((v["n"] for v in values.values()), default=0)
        lines.append(f"| `{other}`{' (oracle)' if is_oracle(other) else ''} | " + " | ".join(cells) + f" | {n} |")
    return lines


def weights_section(record: Mapping[str, Any] | None, methods: Sequence[str]) -> list[str]:
    """How the evaluated checkpoints were trained, from ``<model_dir>/training_record.json`` (if present)."""
    if not record:
        return ["No `training_record.json` next to the checkpoints: how they were trained is not recorded."]
    stage_of = {"full": "diffusion", **{m: f"diffusion_{m}" for m in methods if m != "full"}}
    lines = [f"From `training_record.json` (profile {record.get('profile')}, commit "
             f"{str(record.get('commit'))[:10]}, {record.get('date_utc')}): `{record.get('command')}`.", "",
             "| checkpoint | iterations | wall time (min) | final train loss | final validation |",
             "| --- | --- | --- | --- | --- |"]
    stages = record.get("stages", {})
    wanted = ["autoencoder", "classifier", *[stage_of[m] for m in methods if stage_of.get(m) in stages]]
    for stage in wanted:
        info = stages.get(stage)
        if not info:
            continue
        final = info.get("final_validation") or {}
        val = ", ".join(f"{k} {v:.4g}" for k, v in final.items() if k != "epoch") or "n/a"
        loss = info.get("final_train_loss")
        lines.append(f"| `{stage}.pt` | {info.get('iterations')} | {info.get('wall_time_s', 0) / 60:.1f} | "
                     f"{'n/a' if loss is None else f'{loss:.4g}'} | {val} |")
    lines += [f"- {note}" for note in record.get("notes", [])]
    return lines


def _overall_table(summary: Mapping[str, Any]) -> list[str]:
    head = "| method | " + " | ".join(label for _, label, _ in _TABLE_METRICS) + " | knees |"
    lines = [head, "|" + " --- |" * (len(_TABLE_METRICS) + 2)]
    for method, data in summary.items():
        cells = [_fmt(data["overall"].get(metric), digits) for metric, _, digits in _TABLE_METRICS]
        lines.append(f"| `{method}` | " + " | ".join(cells) + f" | {data['n_knees']} |")
    return lines


def _kl_table(summary: Mapping[str, Any], metrics: Sequence[tuple[str, str, int]]) -> list[str]:
    grades = sorted({int(g) for data in summary.values() for g in data.get("by_kl", {})})
    lines = ["| method | metric | " + " | ".join(f"KL {g}" for g in grades) + " |",
             "|" + " --- |" * (len(grades) + 2)]
    for method, data in summary.items():
        for metric, label, digits in metrics:
            cells = [_fmt(data.get("by_kl", {}).get(str(g), {}).get(metric), digits) for g in grades]
            lines.append(f"| `{method}` | {label} | " + " | ".join(cells) + " |")
    return lines


def _jsw_truth_table(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """Ground-truth widths and the error of measuring them on the REAL volumes, per KL grade."""
    from .records import quartiles

    knees = {(r.get("subject"), r.get("side")): r for r in rows}.values()
    grades = sorted({int(r["kl"]) for r in knees if r.get("kl") is not None})
    lines = ["| KL | knees | GT medial (mm) | GT lateral (mm) | real-MRI medial abs. error (mm) | "
             "real-MRI lateral abs. error (mm) |", "| --- | --- | --- | --- | --- | --- |"]
    for g in grades:
        mine = [r for r in knees if r.get("kl") == g]
        cells = [_fmt(quartiles([r.get(c) for r in mine]), 2) for c in (
            "jsw_medial_gt_mm", "jsw_lateral_gt_mm", "jsw_medial_real_abs_err_mm", "jsw_lateral_real_abs_err_mm")]
        lines.append(f"| {g} | {len(mine)} | " + " | ".join(cells) + " |")
    return lines


def render_report(
    summary: Mapping[str, Any],
    rows: Sequence[Mapping[str, Any]],
    settings: Mapping[str, Any],
    figures: Mapping[str, str],
    commands: Sequence[str] = (),
    notes: Sequence[str] = (),
    missing_grades: Sequence[int] = (),
    title: str = "Evaluation results",
    training_record: Mapping[str, Any] | None = None,
    bootstrap: Mapping[str, Any] | None = None,
    preface: str = "",
) -> str:
    """Markdown text. ``figures``: key -> link relative to the report (keys: psnr, ssim_rssim, table1, sweep,
    interpolation; absent keys are explained). ``notes``: extra lines (e.g. why a study was skipped).
    ``training_record``: the checkpoints' ``training_record.json`` (how long each was trained).
    ``bootstrap``: ``records.bootstrap_differences`` of the run (paired intervals against every reference).
    ``preface``: Markdown placed after the disclaimer (what changed since the previous report)."""
    lines = [f"# {title}", "", f"> {DISCLAIMER}", ""]
    if preface.strip():
        lines += [preface.strip(), ""]
    if commands:
        lines += ["## Reproduce", "", "```bash", *commands, "```", ""]
    lines += ["## Setup", ""]
    lines += [f"- **{key}**: {value}" for key, value in settings.items()]
    lines += ["", "Methods (all on the same knees, through the same `SupervisedEvaluator`):", ""]
    lines += [f"- `{m}`: {describe(m)}" if describe(m) else f"- `{m}`" for m in summary]
    lines += ["", "### Weights evaluated", ""]
    lines += weights_section(training_record, [m for m in summary if m in ("full", "xray_no_guidance",
                                                                              "ldm_depth_only")])
    lines += ["", "## Image quality and joint-space width (median [Q1, Q3] over knees)", ""]
    lines += _overall_table(summary)
    headline = rssim_headline(summary)
    if headline:
        lines += ["", *headline]
    for reference in (bootstrap or {}):
        table = bootstrap_table(bootstrap or {}, reference)
        if table:
            lines += ["", f"Paired differences, `{reference}` minus each other method: median over knees [95 % "
                      "bootstrap interval of that median, 2000 resamples of the knees]; above 0 = "
                      f"`{reference}` better.", "", *table]
    lines += ["", "Paper (OAI, its model): " + "; ".join(f"{k} {v}" for k, v in PAPER_VALUES.items()) + ".", ""]
    lines += ["### Per KL grade", ""]
    lines += _kl_table(summary, [m for m in _TABLE_METRICS if m[0] in ("psnr", "ssim", "rssim")])
    lines += ["", "### Joint-space width against the cohort's ground truth", ""]
    if any(r.get("jsw_medial_gt_mm") is not None for r in rows):
        lines += ["Measured on the generated volume (per method) and on the real volume (the measurement's own "
                  "error), absolute error in mm, median [Q1, Q3]:", ""]
        lines += _kl_table(summary, [m for m in _TABLE_METRICS if m[0].startswith("jsw")])
        lines += ["", *_jsw_truth_table(rows)]
    else:
        lines += ["No ground truth (`ground_truth.csv`) for this dataset: joint-space width errors not computed."]
    lines += ["", "## Figures", ""]
    captions = {
        "psnr": "Fig. 5a - PSNR per method (box: quartiles, line: median).",
        "ssim_rssim": "Fig. 5b - SSIM and RSSIM per method.",
        "table1": "Table 1 - X-ray, ground truth and each method at KL 0, 2, 4 with Sobel edge-difference maps.",
        "sweep": "Fig. 6 - adjacent-slice correlation against the number of generated depths (real MRI: line).",
        "interpolation": "Table 2 - generated depths between two adjacent real slices.",
    }
    for key, caption in captions.items():
        if key in figures:
            lines += [f"**{caption}**", "", f"![{caption}]({figures[key]})", ""]
        else:
            lines += [f"**{caption}** Not produced in this run.", ""]
    if notes:
        lines += ["Notes:", "", *[f"- {n}" for n in notes], ""]
    lines += ["## Failure modes", ""]
    lines += [f"- {n}" for n in failure_modes(summary, rows, missing_grades)]
    lines += ["", "Files: `per_knee.csv` (one row per knee and method), `summary.json` (medians, quartiles, IQR, "
              "overall and per KL grade), `depth_sweep.csv`, `figures/`.", ""]
    return "\n".join(lines)


def write_report(path: str | os.PathLike, text: str) -> Path:
    """Write the report text to ``path`` (folders created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path
