"""Knee cache (PersistentDataset), slice samples, cache speed measurement and the preview PNG."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from xray2mri_bundle.cli.preview import main as preview_main
from xray2mri_bundle.data.datasets import KneeSliceDataset, build_knee_dataset, measure_cache_speed, read_datalist
from xray2mri_bundle.data.index import index_oai, write_datalist

SIZE = 64



@pytest.fixture(scope="module")
def datalist(cohort: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    data, _ = index_oai(cohort, seed=0)
    return write_datalist(data, tmp_path_factory.mktemp("dl") / "datalist.json")


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("knee_cache")


def test_persistent_cache_never_decodes_dicom_again(datalist: Path, cache_dir: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    records = read_datalist(datalist, "validation")[:2]
    cold = build_knee_dataset(records, cache_dir=cache_dir, mri_size=SIZE, xray_size=SIZE)
    first = [cold[i] for i in range(len(cold))]
    assert len(list(cache_dir.glob("*.pt"))) == len(records)
    knee = first[0]
    assert knee["mri"].shape == (1, SIZE, SIZE, 50) and knee["xray"].shape == (1, SIZE, SIZE)
    assert knee["intensity"].shape == (16, 8, 8) and knee["kl"] == records[0]["kl"]
    assert knee["xray_meta"]["crop_box"] and knee["mri_meta"]["spacing"] == [140 / SIZE, 140 / SIZE, 1.5]  # frame
    assert knee["mri_meta"]["crop_box"] and knee["mri_meta"]["frame_padded"] is False

    import pydicom

    def no_dicom(*args: object, **kwargs: object) -> None:
        raise AssertionError("DICOM decoded on a warm cache")

    monkeypatch.setattr(pydicom, "dcmread", no_dicom)
    warm = build_knee_dataset(records, cache_dir=cache_dir, mri_size=SIZE, xray_size=SIZE)
    again = warm[0]
    assert torch.equal(again["mri"], knee["mri"]) and torch.equal(again["xray"], knee["xray"])


def test_slice_samples(datalist: Path, cache_dir: Path) -> None:
    records = read_datalist(datalist, "validation")[:2]
    knees = build_knee_dataset(records, cache_dir=cache_dir, mri_size=SIZE, xray_size=SIZE)
    val = KneeSliceDataset(knees, depths="all")
    assert len(val) == 2 * 50
    sample = val[0]
    assert sample["image"].shape == (3, SIZE, SIZE) and sample["image"].dtype == torch.float32
    assert sample["xray"].shape == (1, SIZE, SIZE) and sample["intensity"].shape == (16, 8, 8)
    assert sample["kl"].dtype == torch.int64 and int(sample["kl"]) == records[0]["kl"]
    depths = [float(val[i]["depth"]) for i in range(50)]
    np.testing.assert_allclose(depths, np.arange(50) / 49, atol=1e-6)
    assert val[49]["slice"] == 49 and val[50]["slice"] == 0 and val[50]["subject"] == records[1]["subject"]
    assert torch.equal(val[7]["image"][0], knees[0]["mri"][0, ..., 7])
    assert float(val[7]["image"].min()) >= -1.0 and float(val[7]["image"].max()) <= 1.0
    train = KneeSliceDataset(knees, depths="random")
    train.set_random_state(0)
    assert len(train) == 2
    draws = {train[0]["slice"] for _ in range(20)}
    assert len(draws) > 1 and all(0 <= k < 50 for k in draws)
    batch = next(iter(torch.utils.data.DataLoader(val, batch_size=4)))
    assert batch["image"].shape == (4, 3, SIZE, SIZE) and batch["depth"].shape == (4,)


def test_measure_cache_speed(datalist: Path) -> None:
    records = read_datalist(datalist, "training")[:1]
    speed = measure_cache_speed(records, mri_size=32, xray_size=32)
    assert speed["knees"] == 1 and speed["cache_bytes"] > 0
    assert speed["warm_knees_per_s"] > speed["cold_knees_per_s"] > 0


def test_preview_png(datalist: Path, tmp_path: Path) -> None:
    out = tmp_path / "preview.png"
    assert preview_main(["--datalist", str(datalist), "--index", "0", "--out", str(out), "--size", "64"]) == 0
    with Image.open(out) as img:
        assert img.size[0] > 300 and img.size[1] > 300
    subject = read_datalist(datalist, "all")[0]["subject"]
    out2 = tmp_path / "by_subject.png"
    assert preview_main(["--datalist", str(datalist), "--subject", subject, "--side", "LEFT", "--out", str(out2)]) == 0
    assert out2.is_file()


def test_packaged_configs_are_the_bundle_configs() -> None:
    """The library reads the bundle configs as package data (``importlib.resources``); in a checkout (and an
    editable install) they are the very files of ``configs/``."""
    from xray2mri_bundle.data.bundle_configs import config_file

    configs = Path(__file__).resolve().parents[1] / "configs"
    names = sorted(p.relative_to(configs).as_posix() for p in configs.rglob("*.json"))
    assert {"common.json", "inference.json", "profiles/tiny.json"} <= set(names)
    for name in names:
        assert config_file(name).read_bytes() == (configs / name).read_bytes(), name


def _settings(chain: object) -> dict[str, dict]:
    """Class name -> the public settings of its inner transform (the MRI and X-ray steps of the knee chain)."""
    out: dict[str, dict] = {}
    for t in chain.transforms:
        inner = [v for k, v in vars(t).items() if not k.startswith("_") and hasattr(v, "__dict__")]
        key = f"{type(t).__name__}:{t.keys[0]}"
        out[key] = {k: v for k, v in vars(inner[0]).items() if not k.startswith("_")} if inner else {}
    return out


def test_knee_transforms_is_the_configured_chain_and_takes_its_settings(datalist: Path) -> None:
    """``knee_transforms`` builds common.json's ``knee_preprocessing``; its arguments replace the config's
    settings, and the chain gives the shapes they ask for."""
    from xray2mri_bundle.data.bundle_configs import parse_config
    from xray2mri_bundle.data.datasets import knee_transforms
    from xray2mri_bundle.data.localiser import ClassicalJointLocaliser

    chain = knee_transforms()
    assert [type(t).__name__ for t in chain.transforms] == [
        "LoadMRISeriesd", "SelectSlicesd", "LocaliseMRIJointd", "CropMRIJointd", "ScalePercentilesd", "LoadXrayd",
        "InvertMonochrome1d", "SelectKneed", "LocaliseJointd", "CropJointd", "ScalePercentilesd",
        "IntensityDistributiond", "MetaToDictd"]
    paper = _settings(chain)
    assert (paper["SelectSlicesd:mri"]["start"], paper["SelectSlicesd:mri"]["count"]) == (13, 50)
    assert paper["CropMRIJointd:mri"]["size"] == 256 and paper["CropJointd:xray"]["spatial_size"] == 256
    assert paper["CropMRIJointd:mri"]["size_mm"] == paper["CropJointd:xray"]["size_mm"] == 140.0
    assert (paper["ScalePercentilesd:xray"]["lower"], paper["ScalePercentilesd:xray"]["upper"]) == (0.5, 99.5)

    localiser = ClassicalJointLocaliser()
    chain = knee_transforms(mri_size=32, xray_size=48, slice_start=10, slice_count=20, crop_mm=120.0,
                            percentiles=(1.0, 99.0), localiser=localiser, png_spacing_mm=0.2)
    given = _settings(chain)
    assert (given["SelectSlicesd:mri"]["start"], given["SelectSlicesd:mri"]["count"]) == (10, 20)
    assert given["CropMRIJointd:mri"]["size"] == 32 and given["CropJointd:xray"]["spatial_size"] == 48
    assert given["CropMRIJointd:mri"]["size_mm"] == given["CropJointd:xray"]["size_mm"] == 120.0
    assert (given["ScalePercentilesd:mri"]["lower"], given["ScalePercentilesd:mri"]["upper"]) == (1.0, 99.0)
    assert given["LocaliseJointd:xray"]["localiser"] is localiser
    assert given["LoadXrayd:xray"]["png_spacing_mm"] == 0.2
    with pytest.raises(KeyError, match="no setting"):  # a misspelt setting is an error, not a silent default
        parse_config("common.json", "knee_preprocessing", {"mri_sise": 32})

    knee = knee_transforms(mri_size=32, xray_size=48, slice_count=20)(read_datalist(datalist)[0])
    assert knee["mri"].shape == (1, 32, 32, 20) and knee["xray"].shape == (1, 48, 48)
    assert knee["intensity"].shape == (16, 8, 8) and knee["mri_meta"]["slice_count"] == 20


@pytest.mark.parametrize("profile", ["tiny", "small"])
def test_a_profile_sizes_the_bundle_knee_preprocessing(profile: str) -> None:
    """A profile's (or the command line's) ``image_size`` reaches both crops of the chain training caches."""
    from monai.bundle import ConfigParser

    configs = Path(__file__).resolve().parents[1] / "configs"
    parser = ConfigParser()
    parser.read_config([str(configs / "common.json"), str(configs / "profiles" / f"{profile}.json")])
    size = parser.get_parsed_content("image_size")
    assert size == {"tiny": 64, "small": 128}[profile]
    settings = _settings(parser.get_parsed_content("knee_preprocessing"))
    assert settings["CropMRIJointd:mri"]["size"] == settings["CropJointd:xray"]["spatial_size"] == size
