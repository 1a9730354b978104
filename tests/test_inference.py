"""Inference: DDIM sampler, conditions once per X-ray, volume generator, checkpoint loading, generate CLI, bundle
config. Tiny untrained networks on CPU (zero-initialised layers are randomised so every condition matters)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from types import SimpleNamespace

import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from xray2mri_bundle import networks
from xray2mri_bundle.checkpoint import atomic_save, write_checkpoint
from xray2mri_bundle.cli import generate as generate_command
from xray2mri_bundle.constants import MRI_FOV_MM
from xray2mri_bundle.data.dicom_utils import save_dataset
from xray2mri_bundle.diffusion import ConditionEncoder, DiffusionSampler, build_solver
from xray2mri_bundle.diffusion.solvers import DDIMSolver, build_ddim_scheduler, uniform_ddim_timesteps
from xray2mri_bundle.inference import batch, writers
from xray2mri_bundle.inference.generator import (
    GenerationResult,
    VolumeGenerator,
    load_pipeline,
    slice_depths,
    slice_spacing_mm,
)
from xray2mri_bundle.inference.knees import KneeInput

ROOT = Path(__file__).resolve().parents[1]
PROFILE = "tiny"
SIZE = networks.get_profile(PROFILE)["image_size"]


# ----------------------------------------------------------------------------------------------------- helpers
class Counting:
    """Wrap a callable and count its calls; ``batches`` records the first argument's batch size."""

    def __init__(self, fn):
        self.fn, self.calls, self.batches = fn, 0, []

    def __call__(self, *args, **kwargs):
        self.calls += 1
        if args and isinstance(args[0], torch.Tensor):
            self.batches.append(args[0].shape[0])
        return self.fn(*args, **kwargs)


def _randomise_zero_layers(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Untrained networks start with zero output / depth / guidance layers; give them small random weights."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in module.parameters():
            if param.ndim > 0 and not param.any():
                param.copy_(torch.randn(param.shape, generator=gen) * 0.05)
    return module


def save_tiny_bundle(
    folder: Path, ema_offset: float = 0.0, prediction_type: str = "epsilon"
) -> dict[str, torch.nn.Module]:
    """Tiny untrained networks saved by the training's writer (autoencoder/classifier/diffusion.pt)."""
    torch.manual_seed(0)
    autoencoder = networks.build_autoencoder(PROFILE)
    classifier = networks.build_classifier(PROFILE)
    unet = _randomise_zero_layers(networks.build_unet(PROFILE), 1)
    encoder = networks.build_xray_encoder(PROFILE)
    ema = None
    if ema_offset:
        ema = networks.build_unet(PROFILE)
        ema.load_state_dict({k: v + ema_offset if v.is_floating_point() else v for k, v in unet.state_dict().items()})
    write_checkpoint(folder / "autoencoder.pt", "autoencoder", {"autoencoder": autoencoder}, profile=PROFILE,
                     settings={"image_size": SIZE})
    write_checkpoint(folder / "classifier.pt", "classifier", {"classifier": classifier}, profile=PROFILE,
                     settings={"image_size": SIZE})
    settings = {"image_size": SIZE, "use_intensity": True, "num_train_timesteps": 1000,
                "noise_schedule": {"schedule": "scaled_linear_beta", "beta_start": 0.00085, "beta_end": 0.012},
                "prediction_type": prediction_type}
    write_checkpoint(folder / "diffusion.pt", "diffusion", {"unet": unet, "xray_encoder": encoder},
                     {"unet": ema, "xray_encoder": encoder}, profile=PROFILE, scale_factor=0.8, settings=settings)
    return {"unet": unet, "ema": ema, "autoencoder": autoencoder}


def write_film(path: Path, modality: str = "DX", rows: int = 200, cols: int = 400, spacing: float = 0.7,
               description: str = "Bilateral PA Fixed Flexion Knee", bits: int = 12) -> Path:
    """A small DICOM radiograph with two bright 'legs' and a dark joint gap per knee (MONOCHROME2)."""
    r, c = np.mgrid[0:rows, 0:cols]
    image = np.full((rows, cols), 300.0)
    for centre in (cols // 4, 3 * cols // 4):
        leg = np.abs(c - centre) < cols // 10
        gap = np.abs(r - rows // 2) < 3
        image[leg & ~gap] = 3000.0
    image += np.random.default_rng(0).normal(0, 20, image.shape)
    pixels = np.clip(image, 0, 2**bits - 1).astype(np.uint16)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.SeriesDescription, ds.PatientID = modality, description, "9000099"
    ds.Rows, ds.Columns = rows, cols
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, bits, bits - 1, 0
    ds.ImagerPixelSpacing = [spacing, spacing]
    ds.PixelData = pixels.tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    save_dataset(ds, path)
    return path


# ---------------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("models")
    save_tiny_bundle(root / PROFILE)
    return root


@pytest.fixture(scope="module")
def pipeline(bundle_dir: Path) -> VolumeGenerator:
    torch.set_num_threads(1)
    return load_pipeline(bundle_dir, PROFILE, "cpu")


@pytest.fixture(scope="module")
def crop() -> torch.Tensor:
    return torch.rand((1, SIZE, SIZE), generator=torch.Generator().manual_seed(3)) * 2 - 1


# ------------------------------------------------------------------------------------------------------ sampler
def test_uniform_ddim_grid_matches_the_scheduler_step() -> None:
    scheduler = build_ddim_scheduler()
    assert not scheduler.clip_sample
    steps = uniform_ddim_timesteps(scheduler, 50)
    assert steps[0].item() == 981 and steps[-1].item() == 1 and len(steps) == 50
    stride = scheduler.num_train_timesteps // scheduler.num_inference_steps
    assert torch.all(steps[:-1] - steps[1:] == stride)  # MONAI's step() assumes prev = t - T // n
    assert len(uniform_ddim_timesteps(scheduler, 30)) == 30
    with pytest.raises(ValueError):
        uniform_ddim_timesteps(scheduler, 0)


class FakeModel(torch.nn.Module):
    """eps = 1 for conditional rows, 0 for rows whose context and latent are dropped; records every call."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[dict] = []

    def forward(self, x, timesteps, drop_context=None, drop_latent=None, **conditions):
        self.calls.append({"x": x.clone(), "t": timesteps.clone(), "drop_context": drop_context,
                           "drop_latent": drop_latent, **conditions})
        eps = torch.ones_like(x)
        if drop_context is not None:
            eps = eps * (~drop_context).float()[:, None, None, None]
        return eps


def test_cfg_runs_conditional_and_unconditional_in_one_batch() -> None:
    model = FakeModel()
    noise = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    conditions = {"xray_latent": torch.randn(3, 4, 8, 8), "depth": torch.tensor([0.0, 0.5, 1.0]), "p_map": None}
    sampler = DiffusionSampler(DDIMSolver(build_ddim_scheduler()), num_inference_steps=1, guidance_scale=3.0)
    out = sampler(model, noise, conditions)
    assert len(model.calls) == 1  # one forward per step, both halves together
    call = model.calls[0]
    assert call["x"].shape[0] == 6 and torch.equal(call["x"][:3], call["x"][3:])
    assert call["drop_context"].tolist() == [False] * 3 + [True] * 3
    assert call["drop_latent"].tolist() == [False] * 3 + [True] * 3
    assert torch.equal(call["depth"], torch.tensor([0.0, 0.5, 1.0, 0.0, 0.5, 1.0]))
    assert call["p_map"] is None
    # guided eps = 0 + 3 * (1 - 0) = 3: same as one scheduler step with eps = 3
    reference = build_ddim_scheduler()
    t = uniform_ddim_timesteps(reference, 1)[0].item()
    expected, _ = reference.step(torch.full_like(noise, 3.0), t, noise)
    assert torch.allclose(out, expected)


def test_no_guidance_is_one_conditional_pass() -> None:
    model = FakeModel()
    DiffusionSampler(build_solver("ddim"), num_inference_steps=4)(model, torch.randn(2, 4, 8, 8), {"depth": None})
    assert len(model.calls) == 4
    assert all(c["x"].shape[0] == 2 and c["drop_context"] is None for c in model.calls)
    assert [c["t"][0].item() for c in model.calls] == [751, 501, 251, 1]


def test_eta_noise_follows_the_generator() -> None:
    sampler = DiffusionSampler(build_solver("ddim", eta=1.0), num_inference_steps=3)
    noise = torch.randn(2, 4, 8, 8)
    runs = [sampler(FakeModel(), noise, {}, generator=torch.Generator().manual_seed(s)) for s in (1, 1, 2)]
    assert torch.equal(runs[0], runs[1]) and not torch.equal(runs[0], runs[2])


# -------------------------------------------------------------------------------------------- depths, geometry
def test_interpolation_depths_and_slice_spacing() -> None:
    assert torch.allclose(slice_depths(50), torch.arange(50) / 49)
    depths = slice_depths(500)
    assert depths[0] == 0 and depths[-1] == 1 and len(depths) == 500
    assert torch.allclose(depths[1:] - depths[:-1], torch.full((499,), 1 / 499), atol=1e-6)
    assert slice_depths(1).tolist() == [0.5]
    assert slice_spacing_mm(50) == pytest.approx(1.5)
    for s in (30, 100, 500):  # same physical extent as the 50 training slices (centres 73.5 mm apart)
        assert (s - 1) * slice_spacing_mm(s) == pytest.approx(49 * 1.5)


# ---------------------------------------------------------------------------------------------------- generator
def test_conditions_computed_once_per_xray(
    pipeline: VolumeGenerator, crop: torch.Tensor, monkeypatch: pytest.MonkeyPatch
) -> None:
    encoder = pipeline.condition_encoder
    counters = {
        "encode": Counting(pipeline.autoencoder.encode),
        "context": Counting(encoder.xray_encoder.forward),
        "classifier": Counting(encoder.classifier.forward_maps),
        "intensity": Counting(encoder.intensity_fn),
        "unet": Counting(pipeline.unet.forward),
    }
    monkeypatch.setattr(pipeline.autoencoder, "encode", counters["encode"])
    monkeypatch.setattr(encoder.xray_encoder, "forward", counters["context"])
    monkeypatch.setattr(encoder.classifier, "forward_maps", counters["classifier"])
    monkeypatch.setattr(encoder, "intensity_fn", counters["intensity"])
    monkeypatch.setattr(pipeline.unet, "forward", counters["unet"])

    result = pipeline(crop, slices=5, num_inference_steps=2, chunk_size=2)
    assert result.volume.shape == (SIZE, SIZE, 5)
    assert [counters[k].calls for k in ("encode", "context", "classifier", "intensity")] == [1, 1, 1, 1]
    assert counters["unet"].batches == [2, 2, 2, 2, 1, 1]  # 3 chunks x 2 steps, conditions broadcast

    for counter in counters.values():
        counter.calls, counter.batches = 0, []
    slow = pipeline(crop, slices=5, num_inference_steps=2, chunk_size=2, per_slice_conditions=True)
    assert [counters[k].calls for k in ("encode", "context", "classifier", "intensity")] == [5, 5, 5, 5]
    assert counters["unet"].batches == [1] * 10  # Algorithm 2 as written: batch 1, conditions per slice
    assert torch.allclose(slow.volume, result.volume, atol=1e-4)


def test_cfg_doubles_the_unet_batch(
    pipeline: VolumeGenerator, crop: torch.Tensor, monkeypatch: pytest.MonkeyPatch
) -> None:
    unet = Counting(pipeline.unet.forward)
    monkeypatch.setattr(pipeline.unet, "forward", unet)
    guided = pipeline(crop, slices=3, num_inference_steps=2, guidance_scale=2.5)
    assert unet.batches == [6, 6]
    plain = pipeline(crop, slices=3, num_inference_steps=2, guidance_scale=1.0)
    assert not torch.equal(guided.volume, plain.volume)


def test_one_initial_noise_shared_by_all_depths(
    pipeline: VolumeGenerator, crop: torch.Tensor, monkeypatch: pytest.MonkeyPatch
) -> None:
    first_inputs: list[torch.Tensor] = []
    depths_seen: list[torch.Tensor] = []

    def zero_model(x, timesteps, **kwargs):
        if timesteps[0].item() == pipeline.sampler().solver.timesteps(2)[0].item():
            first_inputs.append(x.clone())
            depths_seen.append(kwargs["depth"].clone())
        return torch.zeros_like(x)

    monkeypatch.setattr(pipeline, "unet", zero_model)
    shared = pipeline(crop, slices=5, num_inference_steps=2, chunk_size=2)
    start = torch.cat(first_inputs)
    assert start.shape[0] == 5 and all(torch.equal(start[0], row) for row in start)
    assert torch.allclose(torch.cat(depths_seen), slice_depths(5))
    # eps = 0 everywhere: same start -> same slice at every depth
    assert all(torch.allclose(shared.volume[..., 0], shared.volume[..., k], atol=1e-5) for k in range(5))

    first_inputs.clear()
    depths_seen.clear()
    independent = pipeline(crop, slices=5, num_inference_steps=2, chunk_size=2, shared_noise=False)
    start = torch.cat(first_inputs)
    assert not torch.equal(start[0], start[1])
    assert not torch.equal(independent.volume[..., 0], independent.volume[..., 1])


def test_same_seed_same_volume_different_seed_different(pipeline: VolumeGenerator, crop: torch.Tensor) -> None:
    a = pipeline(crop, slices=3, num_inference_steps=2, seed=11, chunk_size=3)
    b = pipeline(crop, slices=3, num_inference_steps=2, seed=11, chunk_size=3)
    c = pipeline(crop, slices=3, num_inference_steps=2, seed=12, chunk_size=3)
    d = pipeline(crop, slices=3, num_inference_steps=2, seed=11, chunk_size=1)
    assert torch.equal(a.volume, b.volume)
    assert not torch.equal(a.volume, c.volume)
    assert torch.allclose(a.volume, d.volume, atol=1e-5)  # eta = 0: chunking does not change the result
    assert a.seed == 11 and a.volume.dtype == torch.float32 and float(a.volume.abs().max()) <= 1.0
    assert set(a.timings) >= {"conditions", "sampling", "decoding", "total", "per_slice"}
    assert a.kl_probs is not None and sum(a.kl_probs) == pytest.approx(1.0, abs=1e-5)
    # depth changes the slice (the depth embedding is live)
    assert not torch.equal(a.volume[..., 0], a.volume[..., 2])


# ------------------------------------------------------------------------------------------ checkpoint loading
def test_loader_uses_ema_and_records_provenance(tmp_path: Path) -> None:
    saved = save_tiny_bundle(tmp_path, ema_offset=0.01)
    generator = load_pipeline(tmp_path, PROFILE)
    name, param = next(iter(generator.unet.state_dict().items()))
    assert torch.equal(param, saved["ema"].state_dict()[name])
    assert generator.weights == "ema" and generator.profile == PROFILE and generator.scale_factor == 0.8
    assert set(generator.checkpoints) == {"autoencoder.pt", "classifier.pt", "diffusion.pt"}
    assert all(len(h) == 64 for h in generator.checkpoints.values())
    assert not any(p.requires_grad for p in generator.unet.parameters()) and not generator.unet.training


def test_a_v_prediction_export_gives_v_prediction_solvers(tmp_path: Path) -> None:
    save_tiny_bundle(tmp_path, prediction_type="v_prediction")
    from xray2mri_bundle.diffusion import SamplingSettings

    generator = load_pipeline(tmp_path, PROFILE)
    assert generator.prediction_type == "v_prediction"
    ddim = generator.sampler(SamplingSettings("ddim", 4)).solver.scheduler
    dpm = generator.sampler(SamplingSettings("dpmpp_2m", 4)).solver.scheduler
    assert ddim.prediction_type == "v_prediction" and dpm.config.prediction_type == "v_prediction"


@pytest.mark.parametrize("precision", ["int8", "float16"])
def test_inference_checkpoint_keeps_only_ema_in_lower_precision(tmp_path: Path, precision: str) -> None:
    from xray2mri_bundle.checkpoint import inference_checkpoint, read_checkpoint

    full, slim = tmp_path / "full", tmp_path / "slim"
    saved = save_tiny_bundle(full, ema_offset=0.01)
    for name in ("autoencoder.pt", "classifier.pt", "diffusion.pt"):
        atomic_save(inference_checkpoint(read_checkpoint(full / name), precision), slim / name)
    diffusion, original = read_checkpoint(slim / "diffusion.pt"), read_checkpoint(full / "diffusion.pt")
    unet, encoder = diffusion["networks"]["unet"], diffusion["networks"]["xray_encoder"]
    assert unet["model"] is None and encoder["model"] is None and diffusion["inference_only"]
    stored = torch.load(slim / "diffusion.pt", weights_only=True)["networks"]["unet"]["ema"]
    assert {v.dtype for v in stored.values() if v.dim() >= 2} == {getattr(torch, precision)}
    assert diffusion["weights_dtype"] == precision and diffusion["settings"] == original["settings"]
    assert unet["config"] == original["networks"]["unet"]["config"] and diffusion["scale_factor"] == 0.8
    ratio = 0.3 if precision == "float16" else 0.17  # raw + EMA float32 -> EMA only, 2 or ~1 byte per weight
    assert (slim / "diffusion.pt").stat().st_size < ratio * (full / "diffusion.pt").stat().st_size
    a, b = load_pipeline(full, PROFILE), load_pipeline(slim, PROFILE)
    assert b.weights == "ema" and next(b.unet.parameters()).dtype == torch.float32
    name, param = next(iter(b.unet.state_dict().items()))
    tolerance = 1e-3 if precision == "float16" else float(saved["ema"].state_dict()[name].abs().max()) / 127
    torch.testing.assert_close(param, saved["ema"].state_dict()[name], atol=tolerance, rtol=1e-3)
    crop = torch.rand(1, SIZE, SIZE) * 2 - 1
    va = a(crop, slices=3, num_inference_steps=2, seed=0).volume
    vb = b(crop, slices=3, num_inference_steps=2, seed=0).volume
    assert float((va - vb).abs().max()) < 0.05


def test_loader_names_missing_files_and_wrong_profile(bundle_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "diffusion.pt").write_bytes((bundle_dir / PROFILE / "diffusion.pt").read_bytes())
    with pytest.raises(FileNotFoundError) as info:
        load_pipeline(tmp_path, PROFILE)
    assert str(tmp_path / "autoencoder.pt") in str(info.value) and str(tmp_path / "classifier.pt") in str(info.value)
    with pytest.raises(FileNotFoundError, match="diffusion.pt"):
        load_pipeline(tmp_path / "empty", PROFILE)
    with pytest.raises(ValueError, match="profile 'tiny', not 'small'"):
        load_pipeline(bundle_dir / PROFILE, "small")


# ---------------------------------------------------------------------------------------------- CLI + writers
def test_generate_cli_writes_readable_outputs_and_reports_bad_files(
    bundle_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sitk = pytest.importorskip("SimpleITK")
    film = write_film(tmp_path / "in" / "film.dcm")
    mr = write_film(tmp_path / "in" / "mr.dcm", modality="MR", description="COR_T1_3D_FLASH_RIGHT")
    (tmp_path / "in" / "notes.txt").write_text("not an image")
    Image.fromarray((np.random.default_rng(1).random((150, 150)) * 255).astype(np.uint8)).save(
        tmp_path / "in" / "knee.png")
    out = tmp_path / "out"
    argv = [str(film), str(tmp_path / "in" / "notes.txt"), str(mr), str(tmp_path / "in" / "knee.png"), "-o",
            str(out), "--model-dir", str(bundle_dir), "--profile", PROFILE, "--slices", "3", "--steps", "2",
            "--seed", "5", "--device", "cpu", "--no-progress"]
    assert generate_command.main(argv) == 1
    captured = capsys.readouterr()
    assert "notes.txt" in captured.err and "mr.dcm" in captured.err and "2 of 4 input(s) failed" in captured.err
    assert "modality MR" in captured.err
    assert "bilateral film, generating both knees" in captured.out
    assert sorted(p.name for p in out.iterdir()) == ["film_left", "film_right", "knee"]

    knee = out / "film_right"
    spacing = 140.0 / SIZE  # the joint-centred frame the model draws
    nifti = nib.load(knee / "pseudo_mri.nii.gz")
    assert nifti.shape == (SIZE, SIZE, 3)
    assert np.allclose(nifti.header.get_zooms(), (spacing, spacing, slice_spacing_mm(3)))
    assert nib.aff2axcodes(nifti.affine) == ("I", "L", "P")
    files = sorted((knee / "dicom").iterdir())
    assert len(files) == 3
    ds = pydicom.dcmread(files[0])
    assert ds.Modality == "MR" and "synthetic" in ds.SeriesDescription.lower() and ds.PatientID == "9000099"
    assert ds.Laterality == "R"
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(knee / "dicom")))
    series = reader.Execute()
    assert series.GetSize() == (SIZE, SIZE, 3)
    assert np.allclose(series.GetSpacing(), (spacing, spacing, slice_spacing_mm(3)), atol=1e-3)
    assert sitk.ReadImage(str(knee / "pseudo_mri.nii.gz")).GetSize() == (SIZE, SIZE, 3)
    assert Image.open(knee / "montage.png").size[0] > 0
    sidecar = json.loads((knee / "generation.json").read_text())
    assert sidecar["disclaimer"] == "synthetic - not for diagnosis"
    assert sidecar["input"] == str(film.resolve()) and sidecar["side"] == "RIGHT"
    assert (sidecar["seed"], sidecar["steps"], sidecar["eta"], sidecar["guidance_scale"], sidecar["slices"]) == (
        5, 2, 0.0, 1.0, 3)
    assert set(sidecar["checkpoints_sha256"]) == {"autoencoder.pt", "classifier.pt", "diffusion.pt"}
    assert sidecar["timings_s"]["total"] > 0 and sidecar["weights"] == "model"
    assert json.loads((out / "knee" / "generation.json").read_text())["side"] is None
    assert not list(out.glob(".*"))  # no temporary folders left

    # --side picks one knee; existing outputs are not overwritten silently
    assert generate_command.main([str(film), "-o", str(out), "--model-dir", str(bundle_dir), "--profile", PROFILE,
                                  "--slices", "2", "--steps", "1", "--side", "left", "--no-progress"]) == 1
    assert "exists" in capsys.readouterr().err


@pytest.mark.parametrize("sampler", ["dpmpp_2m", "unipc"])
def test_multistep_samplers_generate_through_the_cli(sampler: str, bundle_dir: Path, tmp_path: Path) -> None:
    """``--sampler`` reaches the solver: a finite volume read back by nibabel, named in the sidecar, differing
    from DDIM's at the same seed and steps, and the same on a second run (deterministic)."""
    film = write_film(tmp_path / "film.dcm")
    volumes = {}
    for name, folder in ((sampler, "a"), (sampler, "b"), ("ddim", "c")):
        rc = generate_command.main([str(film), "-o", str(tmp_path / folder), "--model-dir", str(bundle_dir),
                                    "--profile", PROFILE, "--slices", "3", "--steps", "4", "--sampler", name,
                                    "--formats", "nifti,json", "--no-progress"])
        assert rc == 0
        knee = next((tmp_path / folder).iterdir())
        assert json.loads((knee / "generation.json").read_text())["sampler"] == name
        volumes[folder] = np.asarray(nib.load(knee / "pseudo_mri.nii.gz").dataobj)
    assert np.isfinite(volumes["a"]).all() and volumes["a"].shape == (SIZE, SIZE, 3)
    assert np.array_equal(volumes["a"], volumes["b"]) and not np.allclose(volumes["a"], volumes["c"])


def test_outputs_are_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(writers, "write_montage_png", broken)
    result = GenerationResult(volume=torch.zeros(16, 16, 2), depths=slice_depths(2), seed=0, timings={},
                              num_inference_steps=1, eta=0.0, guidance_scale=1.0, shared_noise=True,
                              per_slice_conditions=False)
    knee = KneeInput(tmp_path / "x.png", "LEFT", torch.zeros(1, 16, 16))
    fake = SimpleNamespace(profile=PROFILE, weights="ema", checkpoints={}, device=torch.device("cpu"))
    with pytest.raises(OSError, match="disk full"):
        batch.write_knee_outputs(result, knee, tmp_path / "out" / "x_left", fake)
    assert not (tmp_path / "out" / "x_left").exists() and not list((tmp_path / "out").iterdir())


def test_output_names_are_unique_for_oai_style_paths() -> None:
    names = batch.output_names(["/a/9000099/20040101/001", "/a/9000100/20040101/001", "/b/knee.nii.gz"])
    assert len(set(names.values())) == 3
    assert names["/b/knee.nii.gz"] == "knee"
    assert all("001" in names[p] for p in ("/a/9000099/20040101/001", "/a/9000100/20040101/001"))


def test_bundle_config_runs(bundle_dir: Path, tmp_path: Path) -> None:
    from monai.bundle import run

    film = write_film(tmp_path / "film.dcm")
    out = tmp_path / "bundle_out"
    run(config_file=str(ROOT / "configs" / "inference.json"), meta_file=str(ROOT / "configs" / "metadata.json"),
        logging_file=None, bundle_root=str(ROOT), xray=str(film), output_dir=str(out),
        model_dir=str(bundle_dir / PROFILE), profile=PROFILE, device="cpu", slices=2, num_inference_steps=1,
        side="right", progress=False)
    assert nib.load(out / "film_right" / "pseudo_mri.nii.gz").shape == (SIZE, SIZE, 2)
    with pytest.raises(ValueError, match="no X-ray given"):
        batch.require_inputs([])


def test_bundle_config_and_cli_write_the_same_volume(bundle_dir: Path, tmp_path: Path) -> None:
    """``xray2mri generate`` and ``monai.bundle run`` share preprocessing, inferer and writers: same X-ray, same
    seed -> the same NIfTI arrays, knee for knee (a bilateral film: both knees)."""
    from monai.bundle import run

    film = write_film(tmp_path / "film.dcm")
    settings = {"slices": 3, "steps": 2, "seed": 3}
    assert generate_command.main([str(film), "-o", str(tmp_path / "cli"), "--model-dir", str(bundle_dir / PROFILE),
                                  "--profile", PROFILE, "--slices", "3", "--steps", "2", "--seed", "3",
                                  "--device", "cpu", "--formats", "nifti,json", "--no-progress"]) == 0
    run(config_file=str(ROOT / "configs" / "inference.json"), meta_file=str(ROOT / "configs" / "metadata.json"),
        logging_file=None, bundle_root=str(ROOT), xray=str(film), output_dir=str(tmp_path / "bundle"),
        model_dir=str(bundle_dir / PROFILE), profile=PROFILE, device="cpu", slices=settings["slices"],
        num_inference_steps=settings["steps"], seed=settings["seed"], formats=["nifti", "json"], progress=False)
    cli = sorted(p.name for p in (tmp_path / "cli").iterdir())
    assert cli == ["film_left", "film_right"] and sorted(p.name for p in (tmp_path / "bundle").iterdir()) == cli
    for knee in cli:
        a = np.asarray(nib.load(tmp_path / "cli" / knee / "pseudo_mri.nii.gz").dataobj)
        b = np.asarray(nib.load(tmp_path / "bundle" / knee / "pseudo_mri.nii.gz").dataobj)
        assert a.shape == (SIZE, SIZE, 3) and np.array_equal(a, b)
        za, zb = (nib.load(tmp_path / d / knee / "pseudo_mri.nii.gz").header.get_zooms() for d in ("cli", "bundle"))
        assert za == zb and za[0] == pytest.approx(MRI_FOV_MM / SIZE, rel=1e-5)  # the same joint-centred frame
        sa, sb = (json.loads((tmp_path / d / knee / "generation.json").read_text()) for d in ("cli", "bundle"))
        assert sa["crop_box_px"] == sb["crop_box_px"] and sa["settings"] == sb["settings"]


def test_bundle_run_reports_a_bad_xray_and_writes_the_others(bundle_dir: Path, tmp_path: Path) -> None:
    """The config's evaluator keeps the per-file failure report: the bad file is named, the good one written."""
    from monai.bundle import run

    film = write_film(tmp_path / "film.dcm")
    (tmp_path / "notes.txt").write_text("not an image")
    out = tmp_path / "out"
    with pytest.raises(RuntimeError) as info:
        run(config_file=str(ROOT / "configs" / "inference.json"), meta_file=str(ROOT / "configs" / "metadata.json"),
            logging_file=None, bundle_root=str(ROOT), xray=[str(tmp_path / "notes.txt"), str(film)],
            output_dir=str(out), model_dir=str(bundle_dir / PROFILE), profile=PROFILE, device="cpu", slices=2,
            num_inference_steps=1, side="left", formats=["nifti"], progress=False)
    causes = [info.value, info.value.__cause__]
    assert any("1 input(s) failed" in str(e) and "notes.txt" in str(e) for e in causes)
    assert nib.load(out / "film_left" / "pseudo_mri.nii.gz").shape == (SIZE, SIZE, 2)


def test_knee_preprocessing_is_the_inference_json_chain_with_its_settings(tmp_path: Path) -> None:
    """``knees.knee_preprocessing`` builds configs/inference.json's ``preprocessing`` (as packaged) with the
    caller's side, size and PNG spacing; a bilateral film gives one crop per knee, ``side`` picks one."""
    from xray2mri_bundle.inference.knees import SplitKneesd, knee_preprocessing

    chain = knee_preprocessing("left", SIZE, 0.25)
    assert [type(t).__name__ for t in chain.transforms] == [
        "LoadXrayd", "SplitKneesd", "InvertMonochrome1d", "SelectKneed", "LocaliseJointd", "CropJointd",
        "ScalePercentilesd"]
    split, crop, scale = chain.transforms[1], chain.transforms[5], chain.transforms[6]
    assert isinstance(split, SplitKneesd) and split.side == "LEFT"
    assert crop.crop.spatial_size == SIZE and crop.crop.size_mm == 140.0
    assert (scale.scaler.lower, scale.scaler.upper, scale.scaler.b_min, scale.scaler.b_max) == (0.5, 99.5, -1.0, 1.0)
    assert chain.transforms[0].loader.png_spacing_mm == 0.25

    film = write_film(tmp_path / "film.dcm")
    both = knee_preprocessing("both", SIZE)({"xray": str(film)})
    assert [item["side"] for item in both] == ["RIGHT", "LEFT"]
    assert all(item["xray"].shape == (1, SIZE, SIZE) for item in both)
    left = chain({"xray": str(film)})
    assert len(left) == 1 and torch.equal(left[0]["xray"].as_tensor(), both[1]["xray"].as_tensor())


def test_condition_encoder_batches_crops_and_rejects_colour(pipeline: VolumeGenerator) -> None:
    """B crops give B conditions, each the one crop's own (validation samples several knees at once)."""
    crops = torch.rand(2, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(5)) * 2 - 1
    both = pipeline.condition_encoder(crops)
    second = pipeline.condition_encoder(crops[1:])
    assert both.xray_latent.shape[0] == 2 and both.i_map.shape[0] == 2
    assert torch.allclose(both.xray_latent[1:], second.xray_latent, atol=1e-5)
    assert torch.allclose(both.i_map[1:], second.i_map) and torch.allclose(both.p_map[1:], second.p_map, atol=1e-5)
    with pytest.raises(ValueError, match="grey crops"):
        ConditionEncoder(pipeline.autoencoder)(torch.zeros(2, 3, SIZE, SIZE))


def test_acceleration_options_keep_the_volume(bundle_dir: Path, crop: torch.Tensor) -> None:
    """SDPA attention gives the same volume up to rounding; bf16 autocast a close one; fp16 needs CUDA."""
    from xray2mri_bundle.inference.acceleration import accelerate

    settings = {"slices": 6, "num_inference_steps": 3, "seed": 1}
    reference = load_pipeline(bundle_dir, PROFILE, "cpu")(crop, **settings).volume
    fast = accelerate(load_pipeline(bundle_dir, PROFILE, "cpu"), fast_attention=True)
    assert fast.acceleration["fast_attention_blocks"] > 0
    assert torch.allclose(fast(crop, **settings).volume, reference, atol=1e-4)
    bf16 = accelerate(load_pipeline(bundle_dir, PROFILE, "cpu"), precision="bf16")
    volume = bf16(crop, **settings).volume
    assert volume.dtype == torch.float32 and not torch.equal(volume, reference)
    assert (volume - reference).abs().mean() < 0.05
    with pytest.raises(ValueError, match="CUDA"):
        accelerate(load_pipeline(bundle_dir, PROFILE, "cpu"), precision="fp16")


def test_numeric_oai_names_get_the_patient_id() -> None:
    crop = torch.zeros(1, 8, 8)
    oai = KneeInput(Path("/a/9000099/20040101/001"), "LEFT", crop, source_info={"PatientID": "9000099"})
    assert batch.knee_label("001", oai) == "9000099_001_left"
    named = KneeInput(Path("/b/knee.dcm"), "RIGHT", crop, source_info={"PatientID": "9000099"})
    assert batch.knee_label("knee", named) == "knee_right"
    png = KneeInput(Path("/b/001.png"), None, crop)
    assert batch.knee_label("001", png) == "001"


def test_reference_mri_places_the_volume_in_the_real_mri_frame(bundle_dir: Path, cohort: Path, tmp_path: Path) -> None:
    import csv

    from xray2mri_bundle.data.mri_transforms import LoadMRISeries, SelectSlices, reference_frame

    with open(cohort / "ground_truth.csv", newline="") as handle:
        row = next(r for r in csv.DictReader(handle) if r["side"] == "RIGHT")
    film = next((cohort / row["xray_folder"]).iterdir())
    mri = cohort / row["mri_folder"]
    out = tmp_path / "out"
    rc = generate_command.main([str(film), "-o", str(out), "--model-dir", str(bundle_dir / PROFILE),
                                "--profile", PROFILE, "--steps", "1", "--slices", "50", "--side", "right",
                                "--reference-mri", str(mri), "--formats", "nifti,json", "--no-progress"])
    assert rc == 0
    image = nib.load(str(next(out.glob("*/pseudo_mri.nii.gz"))))
    centre = image.affine @ np.array([*(np.array(image.shape) - 1) / 2.0, 1.0])
    frame = reference_frame(str(mri), "RIGHT")
    np.testing.assert_allclose(centre[:3], frame.centre_ras, atol=1e-4)
    assert nib.aff2axcodes(image.affine) == ("I", "L", "P")  # the joint-centred frame keeps the coil's axes
    real = SelectSlices(13, 50)(LoadMRISeries()(str(mri)))  # the true joint, in the real MRI's world frame
    truth = real.affine.numpy() @ np.array([float(row["mri_joint_row"]), float(row["mri_joint_col"]),
                                            float(row["mri_joint_slice"]) - 13, 1.0])
    assert np.hypot(*(centre[[0, 2]] - truth[[0, 2]])) < 5.0  # in-plane: the localised joint is the true one
    sidecar = json.loads(next(out.glob("*/generation.json")).read_text())
    assert sidecar["settings"]["reference_mri"] == str(mri) and len(sidecar["frame_centre_ras_mm"]) == 3
    assert generate_command.main([str(film), "-o", str(out), "--reference-mri", str(mri)]) == 2  # needs --side


# ------------------------------------------------------------------------------- settings, names, output folder
@pytest.mark.parametrize("flags", [
    ["--slices", "0"], ["--slices", "100000"], ["--steps", "0"], ["--steps", "100000"], ["--chunk-size", "0"],
    ["--eta", "-1"], ["--eta", "nan"], ["--guidance-scale", "nan"], ["--fov-mm", "0"], ["--png-spacing-mm", "0"],
    ["--seed", str(2**70)], ["--formats", "nifti,bogus"], ["--formats", ""], ["--sampler", "euler"],
    ["--sampler", "dpmpp_2m", "--eta", "0.5"],
])
def test_bad_settings_stop_before_the_model_loads(flags: list[str], tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    # the model folder does not exist: reaching the loader would give a different message
    rc = generate_command.main([str(tmp_path / "x.png"), "-o", str(tmp_path / "out"), "--model-dir",
                                str(tmp_path / "no_models"), *flags])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("error: ")
    assert "no_models" not in err[0] and "object at 0x" not in err[0]


def test_output_folder_that_is_a_file_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "out"
    target.write_text("not a folder")
    assert generate_command.main([str(tmp_path / "x.png"), "-o", str(target)]) == 2
    assert "is a file" in capsys.readouterr().err


def test_output_names_are_unique_and_never_hidden_or_dots() -> None:
    names = batch.output_names(["coll/knee.png", "coll/knee.nii.gz", "a/.png", "a/..png", "a/...png"])
    assert len(set(names.values())) == 5
    assert all(n and n not in (".", "..") and not n.startswith(".") for n in names.values())
    assert names["coll/knee.png"] != names["coll/knee.nii.gz"]


def test_two_inputs_with_one_stem_give_two_folders(bundle_dir: Path, tmp_path: Path) -> None:
    coll = tmp_path / "coll"
    film = write_film(coll / "knee.dcm")
    (coll / "knee").write_bytes(film.read_bytes())  # same folder, same stem, another name
    hidden = coll / ".png"
    hidden.write_bytes(film.read_bytes())
    out = tmp_path / "out"
    (out / "keep_me").mkdir(parents=True)
    args = ["-o", str(out), "--model-dir", str(bundle_dir / PROFILE), "--profile", PROFILE, "--steps", "1",
            "--slices", "2", "--side", "right", "--formats", "json", "--no-progress", "--overwrite"]
    assert generate_command.main([str(coll / "knee.dcm"), str(coll / "knee"), str(hidden), *args]) == 0
    folders = sorted(p.name for p in out.iterdir())
    assert len(folders) == 4 and "keep_me" in folders and not any(f.startswith(".") for f in folders)
    assert all((out / f / "generation.json").is_file() for f in folders if f != "keep_me")
    # again with --overwrite: each knee replaces only its own folder
    assert generate_command.main([str(hidden), *args]) == 0
    assert sorted(p.name for p in out.iterdir()) == folders


def test_a_folder_input_expands_to_its_files(bundle_dir: Path, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    series = tmp_path / "series"
    write_film(series / "001")
    (tmp_path / "empty").mkdir()
    out = tmp_path / "out"
    args = ["-o", str(out), "--model-dir", str(bundle_dir / PROFILE), "--profile", PROFILE, "--steps", "1",
            "--slices", "2", "--side", "left", "--formats", "json", "--no-progress"]
    assert generate_command.main([str(series), *args]) == 0
    assert "is a folder: generating from its 1 file(s)" in capsys.readouterr().err
    assert len(list(out.glob("*/generation.json"))) == 1
    assert generate_command.main([str(tmp_path / "empty"), *args]) == 2
    assert "no files in it" in capsys.readouterr().err


def test_outputs_get_one_mode_from_the_umask(bundle_dir: Path, tmp_path: Path) -> None:
    import stat

    mask = os.umask(0o022)
    try:
        film = write_film(tmp_path / "film.dcm")
        out = tmp_path / "out"
        assert generate_command.main([str(film), "-o", str(out), "--model-dir", str(bundle_dir / PROFILE),
                                      "--profile", PROFILE, "--steps", "1", "--slices", "2", "--side", "right",
                                      "--no-progress"]) == 0
    finally:
        os.umask(mask)
    knee = next(out.iterdir())
    files = [p for p in knee.rglob("*") if p.is_file()]
    assert {p.name for p in files} >= {"pseudo_mri.nii.gz", "montage.png", "generation.json", "0001.dcm"}
    assert {stat.S_IMODE(p.stat().st_mode) for p in files} == {0o644}
    assert {stat.S_IMODE(p.stat().st_mode) for p in [knee, *[d for d in knee.rglob("*") if d.is_dir()]]} == {0o755}


def test_reference_mri_places_a_pose_frame_volume_turned_with_the_knee(bundle_dir: Path, cohort: Path,
                                                                     tmp_path: Path, capsys) -> None:
    """A model trained in the canonical-pose frame: its volume is placed where the reference MRI, registered to
    the model's template, lies: voxel for voxel on the aligned reference (its chain's own affine, read back by
    nibabel and pydicom), with axes turned with the knee; without its template the placement is refused."""
    import csv
    import shutil

    from monai.transforms import Compose

    from xray2mri_bundle.checkpoint import read_checkpoint
    from xray2mri_bundle.data.localiser import MRIJointLocaliser
    from xray2mri_bundle.data.mri_transforms import LoadMRISeries, mri_transforms
    from xray2mri_bundle.data.pose import build_template, template_axes

    with open(cohort / "ground_truth.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    row = next(r for r in rows if r["side"] == "RIGHT")
    other = next(r for r in rows if r["mri_folder"] != row["mri_folder"])
    film, mri = next((cohort / row["xray_folder"]).iterdir()), cohort / row["mri_folder"]
    # the template is another knee: the reference must turn to reach it
    image = LoadMRISeries()(str(cohort / other["mri_folder"]))
    dhw, spacing, anchor = template_axes(image.as_tensor()[0], image.meta["spacing"], other["side"],
                                         MRIJointLocaliser())
    template, _ = build_template([(dhw, spacing, anchor, other["side"].upper())], rounds=0)
    models = tmp_path / "models"
    shutil.copytree(bundle_dir / PROFILE, models)
    diffusion = read_checkpoint(models / "diffusion.pt")
    diffusion["settings"]["mri_frame"] = "canonical_pose"
    atomic_save(diffusion, models / "diffusion.pt")
    command = [str(film), "--model-dir", str(models), "--profile", PROFILE, "--steps", "1", "--slices", "50",
               "--side", "right", "--reference-mri", str(mri), "--formats", "nifti,dicom,json", "--no-progress"]
    assert generate_command.main([*command[:1], "-o", str(tmp_path / "refused"), *command[1:]]) != 0  # no template
    assert "canonical-pose MRI frame" in capsys.readouterr().err
    torch.save(template.state_dict(), models / "mri_pose_template.pt")
    out = tmp_path / "out"
    assert generate_command.main([*command[:1], "-o", str(out), *command[1:]]) == 0
    volume = nib.load(str(next(out.glob("*/pseudo_mri.nii.gz"))))
    aligned = Compose(mri_transforms(size=volume.shape[0], pose_template=models / "mri_pose_template.pt"))(
        {"mri": str(mri), "side": "RIGHT"})["mri"]
    assert tuple(aligned.shape[1:]) == volume.shape
    np.testing.assert_allclose(volume.affine, aligned.affine.numpy(), atol=1e-3)  # voxel on voxel
    axes = volume.affine[:3, :3] / np.linalg.norm(volume.affine[:3, :3], axis=0)
    coil = np.array([[0.0, -1.0, 0.0], [0.0, 0.0, -1.0], [-1.0, 0.0, 0.0]])
    turn = np.degrees(np.arccos(np.clip((np.trace(coil.T @ axes) - 1) / 2, -1, 1)))
    assert turn > 0.5, turn  # the knee's turn between the two knees' poses
    sidecar = json.loads(next(out.glob("*/generation.json")).read_text())
    assert sidecar["frame"].startswith("canonical pose")
    np.testing.assert_allclose(np.array(list(sidecar["frame_axes_ras"].values())).T, axes, atol=1e-5)
    first = pydicom.dcmread(str(sorted(next(out.glob("*/dicom")).glob("*.dcm"))[0]))
    lps = np.diag([-1.0, -1.0, 1.0])
    np.testing.assert_allclose(np.array(first.ImageOrientationPatient, dtype=float),
                               np.concatenate([lps @ axes[:, 1], lps @ axes[:, 0]]), atol=1e-5)
    np.testing.assert_allclose(np.array(first.ImagePositionPatient, dtype=float),
                               lps @ volume.affine[:3, 3], atol=1e-3)
