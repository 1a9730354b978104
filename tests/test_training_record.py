"""The training record of shipped weights: log parsing, JSON and loss-curve PNG written and read back."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image

from xray2mri_bundle.engines.training_record import parse_stage_log, write_training_record

LOG = """\
2026-11-25 13:33:23,211 - INFO - Epoch: 1/2, Iter: 1/2 -- train_loss: 0.8798
2026-11-25 13:33:30,929 - INFO - Epoch: 1/2, Iter: 2/2 -- train_loss: 0.7401
2026-11-25 13:37:14,765 - INFO - Epoch[1] Metrics -- val_mse: 0.1922 val_psnr: 13.4549
2026-11-25 13:38:23,211 - INFO - Epoch: 2/2, Iter: 1/2 -- train_loss: 0.5
2026-11-25 13:38:30,929 - INFO - Epoch: 2/2, Iter: 2/2 -- train_loss: 2.5e-1
2026-11-25 13:39:14,765 - INFO - Epoch[2] Metrics -- val_mse: 0.1 val_psnr: 16.0
"""


def test_parse_stage_log_reads_losses_and_validation(tmp_path: Path) -> None:
    log = tmp_path / "autoencoder.log"
    log.write_text(LOG)
    parsed = parse_stage_log(log)
    assert parsed["train_loss"] == [0.8798, 0.7401, 0.5, 0.25]
    assert parsed["validation"] == [
        {"epoch": 1.0, "val_mse": 0.1922, "val_psnr": 13.4549},
        {"epoch": 2.0, "val_mse": 0.1, "val_psnr": 16.0},
    ]


def test_write_training_record(tmp_path: Path) -> None:
    logs, models, cohort = tmp_path / "logs", tmp_path / "models" / "small", tmp_path / "cohort"
    logs.mkdir()
    cohort.mkdir()
    (logs / "autoencoder.log").write_text(LOG)
    (cohort / "cohort.json").write_text(json.dumps({"seed": 0, "knees": 100, "mri_matrix": 256}))
    png = tmp_path / "loss.png"
    write_training_record(models, logs, cohort, {"autoencoder": 12.0}, "scripts/train_small_demo.sh", png)
    record = json.loads((models / "training_record.json").read_text())
    assert record["cohort"] == {"seed": 0, "knees": 100, "mri_matrix": 256}
    assert record["stages"]["autoencoder"]["iterations"] == 4
    assert record["stages"]["autoencoder"]["final_validation"]["val_psnr"] == 16.0
    assert record["stages"]["autoencoder"]["wall_time_s"] == 12.0
    assert "synthetic" in record["disclaimer"]
    with Image.open(png) as image:
        assert image.size[0] > 200 and image.size[1] > 100
