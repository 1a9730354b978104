"""``torch.export`` of the UNet (``xray2mri export``): the saved program, reloaded, gives eager's noise
prediction at another batch size, with and without the dropped-condition masks; ablations export too."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from xray2mri_bundle.inference.export import example_inputs, export_unet
from xray2mri_bundle.networks import build_unet, get_profile

LATENT = get_profile("tiny")["latent_shape"]


@pytest.mark.parametrize("flags", [{}, {"use_xray_latent": False, "use_context": False, "use_guidance": False}],
                         ids=["full", "depth-only"])
def test_exported_unet_matches_eager(flags: dict, tmp_path: Path) -> None:
    torch.manual_seed(0)
    unet = build_unet("tiny", **flags).eval()
    with torch.no_grad():  # make the zero-initialised output layer non-zero so the comparison means something
        for p in unet.parameters():
            if p.ndim and not p.any():
                p.normal_(0, 0.05)
    result = export_unet(unet, LATENT, tmp_path / "unet.pt2")
    assert (tmp_path / "unet.pt2").is_file() and result["max_abs_diff"] <= 1e-4
    program = torch.export.load(str(tmp_path / "unet.pt2")).module()
    inputs = example_inputs(unet, LATENT, batch=3, seed=4)
    x, t = inputs.pop("x"), inputs.pop("timesteps")
    with torch.no_grad():
        eager, exported = unet(x, t, **inputs), program(x, t, **inputs)
    assert exported.shape == x.shape and float(eager.abs().max()) > 0
    assert torch.allclose(exported, eager, atol=1e-5)
    if not flags:  # the masks are real inputs: dropping the X-ray changes the prediction
        inputs["drop_context"] = inputs["drop_latent"] = torch.ones(3, dtype=torch.bool)
        with torch.no_grad():
            assert not torch.allclose(program(x, t, **inputs), exported)
