"""Write docs/images/cohort_kl{0..4}.png: one synthetic subject drawn at each KL grade (same anatomy).

Each picture shows the bilateral PA film (display convention MONOCHROME2, patient's right knee on the image
left), a 140 mm crop around the right knee's joint centre, an 80 mm zoom of the MRI at the joint-centre slice,
and six coronal T1 slices of the right knee (position order, slice 0 = most anterior). Synthetic phantom
images, not patient data.

    python scripts/make_cohort_pictures.py [--out docs/images] [--seed 1] [--subject 0] [--matrix 256]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

from xray2mri_bundle.cohort import generate  # noqa: E402


def film_for_display(subject: generate.SubjectData) -> np.ndarray:
    """The stored film as MONOCHROME2 floats in [0, 1] (bone bright)."""
    top = float(2 ** subject.site.bits_stored - 1)
    image = subject.film_image.astype(np.float32) / top
    return 1.0 - image if subject.photometric == "MONOCHROME1" else image


def picture(subject: generate.SubjectData, kl: int, path: Path) -> None:
    knee = subject.knees["RIGHT"]
    film = film_for_display(subject)
    sp = subject.film.spacing_mm
    row, col = (round(v) for v in knee.film_joint)
    half = round(70 / sp)
    crop = film[max(0, row - half):row + half, max(0, col - half):col + half]
    volume = knee.mri.astype(np.float32)
    vmax = float(np.percentile(volume, 99.5))
    f = knee.params.findings
    js, jr, jc = (round(v) for v in knee.mri_joint)
    ps = knee.mri_geometry.pixel_mm
    zh = round(40 / ps)
    zoom = volume[js, max(0, jr - zh):jr + zh, max(0, jc - zh):jc + zh]
    fig = plt.figure(figsize=(15, 6.4), dpi=100)
    grid = fig.add_gridspec(2, 6, hspace=0.14, wspace=0.04)
    ax = fig.add_subplot(grid[0, 0:2])
    ax.imshow(film, cmap="gray", vmin=0, vmax=1)
    ax.add_patch(Rectangle((col - half, row - half), 2 * half, 2 * half, fill=False, color="tab:red", lw=1))
    ax.set_title(f"bilateral PA film ({subject.site.modality}, {subject.photometric}, "
                 f"{subject.site.bits_stored} bit, {sp:.2f} mm)", fontsize=9)
    ax.axis("off")
    ax = fig.add_subplot(grid[0, 2])
    ax.imshow(crop, cmap="gray", vmin=float(np.percentile(crop, 1)), vmax=float(np.percentile(crop, 99.8)))
    ax.set_title("film: right knee, 140 mm", fontsize=9)
    ax.axis("off")
    ax = fig.add_subplot(grid[0, 3])
    ax.imshow(zoom, cmap="gray", vmin=0, vmax=vmax)
    ax.set_title(f"MRI: joint, slice {js}, 80 mm", fontsize=9)
    ax.axis("off")
    ax = fig.add_subplot(grid[0, 4:6])
    ax.axis("off")
    lines = [f"KL {kl}  (synthetic phantom,", "       not patient data)", "",
             f"JSW medial {knee.jsw_mm[0]:.1f} mm, lateral {knee.jsw_mm[1]:.1f} mm",
             f"narrowed: {f.jsn_compartment}; osteophytes {f.osteophyte_grade}",
             f"sclerosis {f.sclerosis}; alignment {knee.params.varus_deg:+.1f} deg",
             f"MRI-only: effusion {f.effusion}, cartilage",
             f"  defect {f.cartilage_defect}, marrow lesion {f.bone_marrow_lesion}", "",
             "MRI: coronal T1, 80 x 1.5 mm,", f"  {knee.mri_geometry.matrix}^2, FOV 160 mm;",
             "  slices in position order", "  (0 = most anterior)"]
    ax.text(0.03, 0.97, "\n".join(lines), va="top", family="monospace", fontsize=10)
    for i, k in enumerate((14, 22, 30, js, 46, 56)):
        ax = fig.add_subplot(grid[1, i])
        ax.imshow(volume[k], cmap="gray", vmin=0, vmax=vmax)
        ax.set_title(f"MRI slice {k}", fontsize=9)
        ax.axis("off")
    fig.savefig(path, bbox_inches="tight", pad_inches=0.05)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "docs" / "images"))
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--subject", type=int, default=0)
    parser.add_argument("--matrix", type=int, default=256)
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cfg = generate.CohortConfig(seed=args.seed, mri_matrix=args.matrix)
    for kl in range(5):
        subject = generate.simulate_subject(cfg, args.subject, kl=(kl, kl))
        path = out / f"cohort_kl{kl}.png"
        picture(subject, kl, path)
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
