"""Measure the KOA (KL-grade) classifier on every validation knee: accuracy, per-grade confusion, majority class.

The p/i guidance of the full model is only as informative as the classifier's probability map p, so its
accuracy is reported against the majority-class answer (always the most frequent training grade), with the
confusion matrix (rows: true KL, columns: predicted). The figures replace the marked block of
docs/training.md.

    python scripts/measure_classifier.py --model-dir models/small --dataset-dir data/cohort

Synthetic data; the figures say nothing about real radiographs.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from doc_blocks import replace_block  # scripts/doc_blocks.py (scripts/ is on sys.path)
from monai.transforms import Compose

from xray2mri_bundle.checkpoint import load_network
from xray2mri_bundle.data.xray_transforms import xray_transforms
from xray2mri_bundle.engines.datalist import load_datalist
from xray2mri_bundle.networks import get_profile

DOC = Path(__file__).resolve().parents[1] / "docs" / "training.md"
START, END = "<!-- classifier:start -->", "<!-- classifier:end -->"


@torch.inference_mode()
def measure(model_dir: Path, dataset_dir: Path, profile: str, split_seed: int = 0) -> dict:
    """Accuracy, confusion matrix and majority-class accuracy of ``model_dir/classifier.pt`` on the split."""
    datalist = load_datalist(dataset_dir, None, seed=split_seed, val_fraction=0.3)
    size = int(get_profile(profile)["image_size"])
    chain = Compose(xray_transforms(size=size, intensity=False))
    classifier = load_network(model_dir / "classifier.pt")
    truth, predicted = [], []
    for record in datalist["validation"]:
        crop = chain({"xray": record["xray"], "side": record["side"]})["xray"]
        logits = classifier(torch.as_tensor(crop).as_subclass(torch.Tensor)[None].float())
        truth.append(int(record["kl"]))
        predicted.append(int(logits.argmax(dim=1)))
    majority = Counter(int(r["kl"]) for r in datalist["training"]).most_common(1)[0][0]
    confusion = np.zeros((5, 5), dtype=int)
    for t, p in zip(truth, predicted, strict=True):
        confusion[t, p] += 1
    t, p = np.asarray(truth), np.asarray(predicted)
    return {"knees": len(t), "accuracy": float((t == p).mean()), "majority_grade": majority,
            "majority_accuracy": float((t == majority).mean()), "within_one_grade": float((abs(t - p) <= 1).mean()),
            "confusion": confusion.tolist(), "model_dir": str(model_dir), "dataset_dir": str(dataset_dir)}


def markdown(summary: dict) -> str:
    rows = ["| true \\ predicted | " + " | ".join(f"KL {g}" for g in range(5)) + " |", "|" + " --- |" * 6]
    rows += [f"| KL {g} | " + " | ".join(str(v) for v in line) + " |" for g, line in enumerate(summary["confusion"])]
    return "\n".join([
        START,
        f"Measured by `scripts/measure_classifier.py` on all {summary['knees']} validation knees of "
        f"`{summary['dataset_dir']}` with `{summary['model_dir']}/classifier.pt`: accuracy "
        f"**{summary['accuracy']:.3f}** against **{summary['majority_accuracy']:.3f}** for always answering the "
        f"majority training grade (KL {summary['majority_grade']}); within one grade "
        f"{summary['within_one_grade']:.3f}.",
        "",
        *rows,
        END,
    ])


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model-dir", type=Path, default=Path("models/small"))
    p.add_argument("--dataset-dir", type=Path, required=True)
    p.add_argument("--profile", default="small")
    p.add_argument("--split-seed", type=int, default=0)
    p.add_argument("--no-doc", action="store_true", help="do not update docs/training.md")
    args = p.parse_args(argv)
    summary = measure(args.model_dir, args.dataset_dir, args.profile, args.split_seed)
    print(json.dumps(summary, indent=2))
    if not args.no_doc:
        replace_block(DOC, markdown(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
