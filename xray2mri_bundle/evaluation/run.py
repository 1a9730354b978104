"""Compare methods on the validation split and write tables, figures and a report (``xray2mri evaluate``).

``run_evaluation(options)`` does the work; ``options`` (``options.EvaluationOptions``) holds the settings of
``xray2mri evaluate``, whose parser takes its defaults from that dataclass.

Example (small profile, 2 CPU cores)::

    xray2mri evaluate --model-dir models/small --dataset-dir cohort --datalist cohort/datalist.json \\
        --out outputs/eval --methods full,xray_no_guidance,ldm_depth_only,mean_volume,nearest_xray \\
        --max-knees 12 --steps 20 --slices 50 --write-docs

Outputs under ``--out``: ``per_knee.csv``, ``summary.json``, ``depth_sweep.csv``, ``figures/*.png``,
``report.md`` (relative image links); ``cache/`` holds the preprocessed knees (reused by later runs).
``--write-docs`` also writes ``docs/results.md`` (``--docs-page``) with its figures and ``per_knee.csv`` in
``docs/results/``.
Every method runs through the same ``SupervisedEvaluator`` (``evaluator.build_evaluator``) on the same knees
with the same per-knee seeds. Outputs are synthetic research images, not for diagnosis.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shlex
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from xray2mri_bundle.checkpoint import read_checkpoint
from xray2mri_bundle.constants import SUMMARY_DISCLAIMER
from xray2mri_bundle.data.atomic import write_bytes_atomic
from xray2mri_bundle.data.datasets import build_knee_dataset
from xray2mri_bundle.data.frame import CANONICAL_POSE
from xray2mri_bundle.data.plain import to_plain
from xray2mri_bundle.data.pose import POSE_TEMPLATE_FILE, PoseTemplate, load_pose_template, model_frame
from xray2mri_bundle.inference.generator import resolve_model_dir
from xray2mri_bundle.networks.profiles import PROFILE_NAMES, get_profile

from . import figures
from .evaluator import KneeRecorder, build_evaluator, pick_examples, read_ground_truth, read_mri_matrix, select_knees
from .methods import METHODS, FirstSample, SampleMean, build_method, parse_methods
from .options import DEFAULT_METHODS, EvaluationOptions
from .records import bootstrap_differences, read_rows, summarise, write_rows, write_summary
from .report import render_report, write_report
from .studies import depth_sweep, interpolation, write_sweep

__all__ = ["ABLATION_OVERRIDES", "DEFAULT_METHODS", "EvaluationRun", "report_only", "reproduce", "run_evaluation"]

logger = logging.getLogger("xray2mri.evaluate")
TABLE1_GRADES = (0, 2, 4)


@dataclass
class EvaluationRun:
    """Everything one ``run_evaluation`` produced (paths and in-memory results)."""

    out: Path
    rows: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    figures: dict[str, Path] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    bootstrap: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    report: Path | None = None
    docs: Path | None = None


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _profile(args: EvaluationOptions) -> str:
    if args.profile:
        return args.profile
    name = Path(args.model_dir).name
    return name if name in PROFILE_NAMES else "small"


def _image_size(args: EvaluationOptions, profile: str) -> int:
    """Slice size in px: ``--image-size``, else what the model's autoencoder was trained at, else the profile's."""
    if args.image_size:
        return int(args.image_size)
    autoencoder = resolve_model_dir(args.model_dir, profile) / "autoencoder.pt"
    if autoencoder.is_file():
        size = (read_checkpoint(autoencoder).get("settings") or {}).get("image_size")
        if size:
            return int(size)
    return int(get_profile(profile)["image_size"])


def _datalist(args: EvaluationOptions, out: Path) -> tuple[dict[str, list[dict]], str]:
    """The split: the given datalist, ``<dataset-dir>/datalist.json``, or the cohort indexed with the training's
    defaults (``engines.datalist.load_datalist``, split seed and validation share as in training)."""
    from xray2mri_bundle.engines.datalist import load_datalist

    datalist_file = args.datalist
    if not datalist_file and args.dataset_dir and (Path(args.dataset_dir) / "datalist.json").is_file():
        datalist_file = str(Path(args.dataset_dir) / "datalist.json")
    if not datalist_file and not args.dataset_dir:
        raise SystemExit("xray2mri evaluate: give --datalist or --dataset-dir")
    datalist = load_datalist(args.dataset_dir, datalist_file, seed=args.split_seed, val_fraction=args.val_fraction,
                             cache_file=out / "datalist_index.json")
    return datalist, str(datalist_file or f"{args.dataset_dir} (indexed, split seed {args.split_seed})")


def _pose_template(args: EvaluationOptions, profile: str) -> PoseTemplate | None:
    """The canonical-pose template of the run: ``--pose-template``, else the model folder's own
    ``mri_pose_template.pt`` (models trained in that frame are scored in it), else None (the joint-centred frame).
    The model folder is the one the methods load (``resolve_model_dir``: ``<model-dir>/<profile>`` or itself).
    Fills ``args.pose_template`` so that the report names the frame."""
    path = args.pose_template
    if path is None:
        folder = resolve_model_dir(args.model_dir, profile)
        diffusion = folder / "diffusion.pt"
        settings = (read_checkpoint(diffusion).get("settings") or {}) if diffusion.is_file() else {}
        try:
            frame, path = model_frame(settings, folder)
        except ValueError as exc:
            raise SystemExit(f"xray2mri evaluate: {exc}") from exc
        if frame == CANONICAL_POSE and path is None:
            raise SystemExit(f"xray2mri evaluate: {diffusion} was trained in the canonical-pose MRI frame, but "
                             f"{folder} holds no {POSE_TEMPLATE_FILE}: give the template it was trained with "
                             "(--pose-template), or its scores would compare slices in two different frames")
        if path is None:
            return None
        logger.info("scoring in the canonical-pose MRI frame of %s (the models were trained in it)", path)
    args.pose_template = str(path)
    return load_pose_template(path)


def _sweep_method(args: EvaluationOptions, methods: Sequence[str]) -> str | None:
    if args.sweep_method:
        return args.sweep_method
    return next((m for m in methods if METHODS[m].kind == "diffusion"), None)


ABLATION_OVERRIDES: dict[str, str] = {
    "xray_no_guidance": "--use_guidance False --use_intensity False",
    "ldm_depth_only": "--use_xray_latent False --use_context False --use_guidance False --use_intensity False",
}
"""Stage-config overrides that train an ablation's UNet (the diffusion stage run alone, see ``reproduce``)."""


def reproduce(args: EvaluationOptions, argv: Sequence[str], methods: Sequence[str], profile: str) -> list[str]:
    """Shell lines that rebuild the report: the cohort (from its ``cohort.json``), the training of each evaluated
    diffusion method (the standard recipe unless ``--train-command`` gives the real ones), the evaluation."""
    lines: list[str] = []
    data = shlex.quote(str(args.dataset_dir)) if args.dataset_dir else "COHORT"
    meta = Path(args.dataset_dir) / "cohort.json" if args.dataset_dir else None
    if meta is not None and meta.is_file():
        cohort = json.loads(meta.read_text())
        lines += ["# synthetic cohort", f"xray2mri make-cohort --out {data} --knees {cohort.get('knees_requested')} "
                  f"--seed {cohort.get('seed')} --mri-matrix {cohort.get('mri_matrix')}"]
    diffusion = [m for m in methods if METHODS[m].kind == "diffusion"]
    record_file = Path(args.model_dir) / "training_record.json"
    record = json.loads(record_file.read_text()) if record_file.is_file() else {}
    if diffusion and record.get("command") and not args.train_command:
        lines.append(f"# the evaluated weights were trained by ({record_file}, cohort {record.get('cohort')}): "
                     f"{record['command']}")
    if args.datalist:  # the training knees come from the datalist, not from --dataset-dir
        data = "TRAINING_COHORT"
        lines.append(f"# TRAINING_COHORT: the cohort of the training knees of {args.datalist}")
    if args.train_command:
        lines += ["# training", *args.train_command]
    elif diffusion:
        model_dir = shlex.quote(str(args.model_dir))
        lines.append("# training (the standard recipe; the ablations train the diffusion stage alone)")
        if "full" in diffusion:
            lines.append(f"python -m monai.bundle run training --config_file \"['configs/train.json', "
                         f"'configs/profiles/{profile}.json']\" --dataset_dir {data} --model_dir {model_dir}")
        for name in diffusion:
            if name in ABLATION_OVERRIDES:
                lines.append(
                    f"python -m monai.bundle run --config_file \"['configs/common.json', 'configs/profiles/{profile}"
                    f".json', 'configs/train_diffusion.json']\" --dataset_dir {data} --model_dir {model_dir} "
                    f"{ABLATION_OVERRIDES[name]} --final_path {model_dir}/diffusion_{name}.pt "
                    f"--checkpoint_dir outputs/{profile}/diffusion_{name}")
    lines += ["# evaluation", "xray2mri evaluate " + shlex.join(list(argv))]
    return lines


def run_evaluation(args: EvaluationOptions | Mapping[str, Any], argv: Sequence[str] = ()) -> EvaluationRun:
    """Evaluate every method on the same knees; write CSV, JSON, figures and the report (see module doc).

    ``args``: the options (a mapping is read with ``EvaluationOptions.from_mapping``); ``argv``: the command line
    that the report's Reproduce block shows (default: rebuilt from the options that differ from the defaults).
    """
    args = _options(args)
    argv = list(argv) or args.command_line()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    run = EvaluationRun(out=out)
    methods = parse_methods(args.methods)
    profile = _profile(args)
    size = _image_size(args, profile)
    device = _device(args.device)
    cache = Path(args.cache_dir) if args.cache_dir else out / "cache"
    datalist, source = _datalist(args, out)
    val_records = select_knees(datalist.get("validation") or [], args.max_knees)
    train_records = select_knees(datalist["training"], args.max_train_knees)
    if not val_records:
        raise SystemExit(f"xray2mri evaluate: no validation knees in {source}")
    pose = _pose_template(args, profile)
    dataset_kwargs = {"cache": "persistent", "cache_dir": cache / f"knees_{size}", "mri_size": size,
                      "xray_size": size, "pose_template": pose}
    val = build_knee_dataset(val_records, **dataset_kwargs)
    train = build_knee_dataset(train_records, **dataset_kwargs)
    ground_truth = read_ground_truth(args.dataset_dir)
    examples = pick_examples(val_records, TABLE1_GRADES)
    real_cache: dict[str, dict[str, Any]] = {}
    sweep_name = _sweep_method(args, methods)
    counts = [int(c) for c in str(args.sweep_depths).split(",") if c.strip()]
    example_slices: dict[str, dict[str, Any]] = {}
    rows: dict[str, list[dict[str, Any]]] = {}
    logger.info("evaluating %s on %d validation knees (%d training knees for baselines), size %d, %s",
                ",".join(methods), len(val_records), len(train_records), size, device)

    for name in methods:
        start = time.perf_counter()
        try:
            method = build_method(name, args.model_dir, train, device=device, steps=args.steps, eta=args.eta,
                                  guidance_scale=args.guidance_scale, chunk_size=args.chunk_size,
                                  nearest_metric=args.nearest_metric, profile=profile, image_size=size, knn=args.knn,
                                  sampler=args.sampler)
        except (FileNotFoundError, ValueError, KeyError, RuntimeError) as err:
            if args.strict:
                raise
            run.skipped[name] = str(err)
            logger.warning("skipping %s: %s", name, err)
            continue
        is_diffusion = METHODS[name].kind == "diffusion"
        # a diffusion method: the mean of N samples first, then its first samples replayed as the single score
        variants = [method]
        if is_diffusion and args.samples > 1:
            ensemble = SampleMean(method, args.samples)
            variants = [ensemble, FirstSample(ensemble)]
        for variant in variants:
            label = variant.name
            recorder = KneeRecorder(label, ground_truth, examples=[k for k in examples.values() if k],
                                    steps=args.steps if is_diffusion else None, measure_jsw=not args.no_jsw,
                                    real_cache=real_cache, mri_matrix=read_mri_matrix(args.dataset_dir),
                                    aligned_joint_slice=None if pose is None else pose.depth_anchor)
            evaluator = build_evaluator(variant, val, recorder, slices=args.slices or None, device=device,
                                        seed=args.seed)
            evaluator.run()
            rows[label] = recorder.rows
            run.metrics[label] = {k: float(v) for k, v in evaluator.state.metrics.items()}
            for key, ex in recorder.example_slices.items():
                slot = example_slices.setdefault(key, {"kl": ex["kl"], "xray": ex["xray"], "real": ex["real"],
                                                       "label": key, "methods": {}})
                slot["methods"][label] = ex["pred"]
            logger.info("%s: %s (%.1f s)", label, run.metrics[label], time.perf_counter() - start)
        if name == sweep_name:
            _studies(run, method, val, counts, args)
        del method, evaluator, variants

    order = [label for name in methods for label in (name, f"{name}_mean{args.samples}") if label in rows]
    if args.samples > 1 and any(METHODS[m].kind == "diffusion" for m in methods if m in rows):
        run.notes.append(f"A diffusion method's single-sample rows replay the first of its {args.samples} samples "
                         f"(same seed as a single run): their `s / knee` is the replay; one sample costs the "
                         f"`_mean{args.samples}` time / {args.samples}.")
    run.rows = [row for label in order for row in rows[label]]
    run.metrics = {label: run.metrics[label] for label in order}
    if sweep_name and sweep_name not in run.metrics:
        run.notes.append(f"Depth sweep and interpolation need the method `{sweep_name}`, which did not run.")
    elif not sweep_name:
        run.notes.append("Depth sweep and interpolation need a diffusion method; none was evaluated.")
    for name, reason in run.skipped.items():
        run.notes.append(f"`{name}` skipped: {reason}")
    _write_outputs(run, args, methods, examples, example_slices, size, profile, device, source, argv)
    return run


def _studies(run: EvaluationRun, method: Any, val: Sequence[Any], counts: Sequence[int],
             args: EvaluationOptions) -> None:
    """Fig. 6 (depth sweep) and Table 2 (interpolation) with the sweep method, on the first knees."""
    name = getattr(method, "name", "method")
    knees = [val[i] for i in range(min(max(args.sweep_knees, 1), len(val)))]
    settings = getattr(method, "settings", None)
    if args.sweep_steps and settings is not None:  # the evaluation of this method is over; only the studies follow
        method.settings = settings = dataclasses.replace(settings, steps=int(args.sweep_steps))
    steps = None if settings is None else settings.steps
    if counts:
        result = depth_sweep(method, knees, counts, seed=args.seed, progress=logger.info)
        write_sweep(result, run.out / "depth_sweep.csv")
        run.figures["sweep"] = figures.depth_sweep_plot(result.generated, result.real_mean,
                                                        run.out / "figures" / "fig6_adjacent_corr_vs_depths.png")
        solver = getattr(settings, "sampler", "")
        run.notes.append(f"Fig. 6 uses `{name}` ({steps} {solver} steps) on {len(knees)} knee(s): "
                         f"{', '.join(result.knees)}; depths {', '.join(map(str, counts))}.")
    if args.interp_frames > 0:
        interp = interpolation(method, knees[0], frames=args.interp_frames, seed=args.seed)
        run.figures["interpolation"] = figures.interpolation_strip(
            interp.start, interp.frames, interp.end, interp.depths, run.out / "figures" / "table2_interpolation.png",
            title=f"{name}, knee {interp.knee}: generated depths between real slices")
        run.notes.append(f"Table 2 uses `{name}` on knee {interp.knee}, real slices at depths "
                         f"{interp.depths[0]:.4f} and {interp.depths[-1]:.4f}.")


def _write_outputs(
    run: EvaluationRun, args: EvaluationOptions, methods: Sequence[str], examples: dict[int, str | None],
    example_slices: dict[str, dict[str, Any]], size: int, profile: str, device: torch.device, datalist: str,
    argv: Sequence[str],
) -> None:
    out = run.out
    csv_path = write_rows(run.rows, out / "per_knee.csv")
    rows = read_rows(csv_path)  # the report and the summary are computed from what was written
    _score(run, rows, list(run.metrics), args.seed)
    evaluated = list(run.metrics)
    settings = {
        "model folder": f"`{args.model_dir}` (profile `{profile}`)", "datalist": datalist,
        "validation knees": len({(r['subject'], r['side']) for r in rows}),
        "compared slices": args.slices or 50, "sampler": args.sampler, "steps": args.steps,
        "guidance scale": args.guidance_scale, "eta": args.eta, "image size": size, "device": str(device),
        "seed": args.seed,
        "nearest_xray / knn_xray feature": f"preprocessed X-ray crop, area-downsampled to 32 x 32, "
                                           f"{args.nearest_metric} distance; knn_xray averages {args.knn}",
        "samples": f"diffusion methods scored on 1 sample and on the mean of {args.samples} (`<name>_mean"
                   f"{args.samples}`)" if args.samples > 1 else "1 sample per knee",
        "frame": "joint-centred, 140 mm of the patient for X-ray and MRI (film magnification removed)" + (
            "" if args.pose_template is None else f"; MRI in the canonical pose of template {args.pose_template}"),
    }
    write_summary(run.summary, out / "summary.json", settings={k: str(v) for k, v in settings.items()},
                  engine_metrics=run.metrics, skipped=run.skipped, bootstrap=run.bootstrap,
                  disclaimer=SUMMARY_DISCLAIMER)
    if rows:
        run.figures.update(figures.box_plots(rows, out / "figures", evaluated))
    table = {g: (example_slices.get(k) if k else None) for g, k in examples.items()}
    if any(table.values()):
        run.figures["table1"] = figures.difference_table(table, evaluated,
                                                         out / "figures" / "table1_difference_maps.png")
    missing = [g for g, ex in table.items() if ex is None]
    if any(table.values()):
        run.notes.append("Table 1 shows, per knee, the compared slice nearest the cohort's joint-centre slice "
                         "(`mri_joint_slice`; the middle compared slice without ground truth); difference maps are "
                         "|Sobel(generated) - Sobel(real)| on one colour scale.")
    if args.slices and args.slices < 50:
        run.notes.append(f"Only {args.slices} evenly spaced real slices of 50 were compared (`--slices`): the "
                         "adjacent-slice correlations are between those slices, so they read lower than for "
                         "neighbouring 1.5 mm slices (real and generated alike).")
    inputs = {
        "settings": settings,
        "figures": {key: path.relative_to(out).as_posix() for key, path in run.figures.items()},
        "commands": reproduce(args, argv, methods, profile), "notes": run.notes, "missing": missing,
        "profile": profile,
    }
    write_bytes_atomic(out / REPORT_INPUTS, (json.dumps(to_plain(inputs), indent=2) + "\n").encode())
    _render(run, args, rows, inputs)


REPORT_INPUTS = "report_inputs.json"
"""What a run keeps beside ``per_knee.csv`` so that its report can be rendered again (``report_only``)."""


def _render(run: EvaluationRun, args: EvaluationOptions, rows: list[dict[str, Any]], inputs: Mapping[str, Any]) -> None:
    """Write ``report.md`` (and with ``write_docs`` the docs page, its figures and ``per_knee.csv``)."""
    out = run.out
    record_path = resolve_model_dir(args.model_dir, inputs["profile"]) / "training_record.json"
    record = json.loads(record_path.read_text()) if record_path.is_file() else None
    run.figures = figure_paths = {key: out / name for key, name in inputs["figures"].items()}
    preface = Path(args.preface).read_text() if args.preface else ""
    common = (inputs["commands"], inputs["notes"], inputs["missing"], args.title, record, run.bootstrap, preface)
    run.report = write_report(out / "report.md", render_report(
        run.summary, rows, inputs["settings"], inputs["figures"], *common))
    if args.write_docs:
        docs = Path(args.docs_dir)
        page = Path(args.docs_page)
        (docs / page.stem).mkdir(parents=True, exist_ok=True)
        for path in figure_paths.values():
            shutil.copy2(path, docs / page.stem / path.name)
        # the per-knee scores beside the page: a later run is compared knee by knee against them
        # (scripts/compare_evaluations.py) without evaluating these weights again
        shutil.copy2(out / "per_knee.csv", docs / page.stem / "per_knee.csv")
        doc_links = {key: f"{page.stem}/{path.name}" for key, path in figure_paths.items()}
        run.docs = write_report(docs / page.name, render_report(
            run.summary, rows, inputs["settings"], doc_links, *common))


def report_only(args: EvaluationOptions | Mapping[str, Any]) -> EvaluationRun:
    """Render the report (and the docs page) of a finished run in ``args.out`` again, without evaluating:
    the same tables, intervals and figures, with this call's ``title``, ``preface``, ``write_docs`` settings.

    Reads ``per_knee.csv`` and ``report_inputs.json`` written by :func:`run_evaluation`; a missing file is an
    error that names it. ``xray2mri evaluate --report-only`` calls this.
    """
    args = _options(args)
    out = Path(args.out)
    for name in ("per_knee.csv", REPORT_INPUTS):
        if not (out / name).is_file():
            raise SystemExit(f"xray2mri evaluate --report-only: {out / name} is missing (run the evaluation first)")
    inputs = json.loads((out / REPORT_INPUTS).read_text())
    rows = read_rows(out / "per_knee.csv")
    run = EvaluationRun(out=out, rows=rows, notes=list(inputs["notes"]))
    _score(run, rows, list(dict.fromkeys(str(row["method"]) for row in rows)), args.seed)
    _render(run, args, rows, inputs)
    return run


def _options(args: EvaluationOptions | Mapping[str, Any]) -> EvaluationOptions:
    """The options of a run (a mapping is read with ``EvaluationOptions.from_mapping``), its preface checked."""
    options = args if isinstance(args, EvaluationOptions) else EvaluationOptions.from_mapping(args)
    if options.preface is not None and not Path(options.preface).is_file():
        raise SystemExit(f"xray2mri evaluate: --preface {options.preface} is not a file")
    return options


def _score(run: EvaluationRun, rows: list[dict[str, Any]], labels: Sequence[str], seed: int) -> None:
    """Medians per method and the bootstrap intervals of every ``full*`` label against the other rows."""
    run.summary = summarise(rows)
    run.bootstrap = bootstrap_differences(rows, [m for m in labels if m.startswith("full")], seed=seed)
