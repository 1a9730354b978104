"""Preview PNG of one datalist knee: the raw film with the knee region and crop box, the [-1, 1] crop, and a
grid of MRI slices. For eyeballing ingestion (is the box on the joint? is the femur on top?).

CLI: ``xray2mri preview --datalist JSON (--index K | --subject ID --side RIGHT) --out PNG``.
Synthetic research images only, not for diagnosis.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure  # object API: no pyplot, no GUI backend needed
from matplotlib.patches import Rectangle
from monai.transforms import Compose

from .intensity import percentile_scale
from .localiser import JointLocaliser
from .mri_transforms import mri_transforms
from .xray_transforms import CROP_MM, CropJoint, InvertMonochrome1, LoadXray, LocaliseJoint, SelectKnee

__all__ = ["find_record", "preview_knee"]


def preview_knee(
    record: Mapping, out_png: str | os.PathLike, n_slices: int = 8, size: int = 256, crop_mm: float = CROP_MM,
    localiser: JointLocaliser | None = None, truth_rc: tuple[float, float] | None = None,
) -> Path:
    """Write the preview PNG of ``record`` (datalist entry); ``truth_rc`` optionally marks a known joint centre."""
    film = InvertMonochrome1()(LoadXray()(record["xray"]))
    film = LocaliseJoint(localiser)(SelectKnee()(film, record["side"], _film_mode(record)))
    crop = CropJoint(crop_mm, size)(film)
    crop_img = percentile_scale(np.asarray(crop)[0])
    meta = film.meta
    mri = Compose(mri_transforms(size=size))({"mri": record["mri"]})["mri"]
    vol = np.asarray(mri)[0]
    picks = np.linspace(0, vol.shape[-1] - 1, n_slices).round().astype(int)

    ncols = max(4, (n_slices + 1) // 2)
    fig = Figure(figsize=(2.6 * ncols, 9.0), dpi=90, layout="constrained")
    grid = fig.add_gridspec(3, ncols, height_ratios=[2.0, 1, 1])
    ax = fig.add_subplot(grid[0, : ncols // 2])
    ax.imshow(percentile_scale(np.asarray(film)[0]), cmap="gray", vmin=-1, vmax=1)
    r0, c0, r1, c1 = crop.meta["crop_box"]
    ax.add_patch(Rectangle((c0 - 0.5, r0 - 0.5), c1 - c0, r1 - r0, fill=False, color="lime", lw=1.5))
    k0, k1 = meta["knee_region"]
    ax.axvline(k0 - 0.5, color="orange", lw=0.8, ls="--")
    ax.axvline(k1 - 0.5, color="orange", lw=0.8, ls="--")
    jr, jc = meta["joint_rc"]
    ax.plot([jc], [jr], "+", color="red", ms=12, mew=2, label="located joint")
    if truth_rc is not None:
        ax.plot([truth_rc[1]], [truth_rc[0]], "x", color="cyan", ms=9, mew=2, label="ground truth")
        ax.legend(loc="lower right", fontsize=7)
    photometric = "MONOCHROME1, inverted" if meta.get("inverted") else meta.get("photometric", "")
    ax.set_title(f"film ({photometric}), {record['side']} knee, {crop_mm:.0f} mm box", fontsize=9)
    ax.axis("off")
    ax = fig.add_subplot(grid[0, ncols // 2:])
    ax.imshow(crop_img, cmap="gray", vmin=-1, vmax=1)
    ax.set_title(f"X-ray crop {size}x{size}, [-1, 1]", fontsize=9)
    ax.axis("off")
    for i, k in enumerate(picks):
        ax = fig.add_subplot(grid[1 + i // ncols, i % ncols])
        ax.imshow(vol[..., k], cmap="gray", vmin=-1, vmax=1)
        start = int(mri.meta.get("slice_start", 0))
        ax.set_title(f"slice {start + k} of the series, d={k / max(vol.shape[-1] - 1, 1):.2f}", fontsize=8)
        ax.axis("off")
    fig.suptitle(f"{record.get('subject', '')} {record.get('visit', '')} {record['side']} KL {record.get('kl', '?')}"
                 " - synthetic research data, not for diagnosis", fontsize=10)
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    return out


def _film_mode(record: Mapping) -> str | None:
    film = str(record.get("film", "")).upper()
    return {"BILATERAL": "bilateral", "RIGHT": "unilateral", "LEFT": "unilateral"}.get(film)


def find_record(records: Sequence[Mapping], index: int | None = None, subject: str | None = None,
                side: str | None = None) -> Mapping:
    """A record by position, or by subject (and side; the first side when omitted)."""
    if index is not None:
        return records[index]
    for rec in records:
        if str(rec["subject"]) == str(subject) and (side is None or rec["side"] == side.upper()):
            return rec
    raise KeyError(f"no record for subject {subject} side {side}")
