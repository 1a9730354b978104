"""XrayConditionedUNet: where each condition enters, null conditions, ablation flags, checkpointing (tiny)."""

from __future__ import annotations

import pytest
import torch

from xray2mri_bundle.networks import build_unet, depth_fourier_code

LATENT = [4, 8, 8]


def _inputs(batch: int = 2, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "x": torch.randn(batch, *LATENT, generator=g),
        "timesteps": torch.randint(0, 1000, (batch,), generator=g),
        "xray_latent": torch.randn(batch, *LATENT, generator=g),
        "context": torch.randn(batch, 1, 768, generator=g),
        "depth": torch.rand(batch, generator=g),
        "p_map": torch.softmax(torch.randn(batch, 5, 8, 8, generator=g), dim=1),
        "i_map": torch.softmax(torch.randn(batch, 16, 8, 8, generator=g), dim=1),
    }


def _perturbed(**flags) -> torch.nn.Module:
    """Tiny UNet whose zero-initialised layers (output conv, depth MLP, guidance projection...) are moved."""
    torch.manual_seed(0)
    unet = build_unet("tiny", **flags)
    with torch.no_grad():
        for parameter in unet.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    return unet.eval()


def _capture_embeddings(unet) -> tuple[dict[str, list[torch.Tensor]], list]:
    """Record the embedding argument given to each down, middle and up block."""
    seen: dict[str, list[torch.Tensor]] = {"down": [], "middle": [], "up": []}
    handles = []
    for block in unet.down_blocks:
        handles.append(block.register_forward_pre_hook(lambda m, args: seen["down"].append(args[1].clone())))
    handles.append(unet.middle_block.register_forward_pre_hook(lambda m, a: seen["middle"].append(a[1].clone())))
    for block in unet.up_blocks:
        handles.append(block.register_forward_pre_hook(lambda m, args: seen["up"].append(args[2].clone())))
    return seen, handles


def _run_and_capture(unet, **inputs):
    seen, handles = _capture_embeddings(unet)
    with torch.no_grad():
        out = unet(**inputs)
    for handle in handles:
        handle.remove()
    return out, seen


def test_fresh_model_ignores_depth_and_guidance():
    torch.manual_seed(0)
    unet = build_unet("tiny").eval()
    inputs = _inputs()
    with torch.no_grad():
        reference = unet(**inputs)
        assert torch.equal(reference, unet(**{**inputs, "depth": 1 - inputs["depth"]}))
        assert torch.equal(reference, unet(**{**inputs, "p_map": None, "i_map": None}))


def test_depth_changes_output_and_reaches_only_down_and_middle_embeddings():
    unet = _perturbed()
    inputs = _inputs()
    out_a, seen_a = _run_and_capture(unet, **inputs)
    out_b, seen_b = _run_and_capture(unet, **{**inputs, "depth": 1 - inputs["depth"]})
    assert not torch.allclose(out_a, out_b)
    for a, b in zip(seen_a["down"] + seen_a["middle"], seen_b["down"] + seen_b["middle"], strict=True):
        assert not torch.allclose(a, b)
    for a, b in zip(seen_a["up"], seen_b["up"], strict=True):
        assert torch.equal(a, b)


def test_guidance_changes_output_and_reaches_only_up_embeddings():
    unet = _perturbed()
    inputs = _inputs()
    out_a, seen_a = _run_and_capture(unet, **inputs)
    for changed in ({"p_map": inputs["p_map"].flip(1)}, {"i_map": inputs["i_map"].flip(1)}):
        out_b, seen_b = _run_and_capture(unet, **{**inputs, **changed})
        assert not torch.allclose(out_a, out_b)
        for a, b in zip(seen_a["down"] + seen_a["middle"], seen_b["down"] + seen_b["middle"], strict=True):
            assert torch.equal(a, b)
        for a, b in zip(seen_a["up"], seen_b["up"], strict=True):
            assert not torch.allclose(a, b)


def test_context_and_latent_change_output():
    unet = _perturbed()
    inputs = _inputs()
    with torch.no_grad():
        reference = unet(**inputs)
        assert not torch.allclose(reference, unet(**{**inputs, "context": -inputs["context"]}))
        assert not torch.allclose(reference, unet(**{**inputs, "xray_latent": -inputs["xray_latent"]}))


def test_context_projection_starts_as_identity_plus_depth_columns():
    torch.manual_seed(0)
    unet = build_unet("tiny")
    weight = unet.context_proj.weight
    assert weight.shape == (768, 768 + 4)
    assert torch.equal(weight[:, :768], torch.eye(768)) and torch.count_nonzero(weight[:, 768:]) == 0
    context = torch.randn(3, 1, 768)
    built = unet.build_context(context, depth_fourier_code(torch.rand(3), 4), None)
    assert torch.allclose(built, context)


@pytest.mark.parametrize(
    ("condition", "mask"),
    [("context", "drop_context"), ("xray_latent", "drop_latent"), ("depth", "drop_depth"), ("p_map", "drop_guidance")],
)
def test_null_conditions_by_none_or_by_mask(condition, mask):
    unet = _perturbed()
    inputs = _inputs()
    nulled = {**inputs, condition: None}
    if condition == "p_map":
        nulled["i_map"] = None
    with torch.no_grad():
        full = unet(**inputs)
        null = unet(**nulled)
        mixed = unet(**inputs, **{mask: torch.tensor([True, False])})
    assert not torch.allclose(full, null)
    assert torch.allclose(mixed[0], null[0], atol=1e-5)
    assert torch.allclose(mixed[1], full[1], atol=1e-5)


def test_null_latent_is_zeros_and_null_context_is_learned():
    unet = _perturbed()
    inputs = _inputs()
    with torch.no_grad():
        assert torch.equal(
            unet(**{**inputs, "xray_latent": None}), unet(**{**inputs, "xray_latent": torch.zeros(2, *LATENT)})
        )
    assert unet.null_context.requires_grad and unet.null_context.shape == (1, 1, 768)


def test_all_conditions_none_works():
    unet = _perturbed()
    with torch.no_grad():
        out = unet(torch.randn(3, *LATENT), torch.tensor([0, 10, 999]))
        shared_step = unet(torch.randn(3, *LATENT), torch.tensor(500))  # one scalar step for the whole batch
    assert out.shape == shared_step.shape == (3, *LATENT) and torch.isfinite(out).all()


@pytest.mark.parametrize("flag", ["use_depth", "use_xray_latent", "use_context", "use_guidance"])
def test_ablation_flags_build_and_run(flag):
    unet = _perturbed(**{flag: False})
    with torch.no_grad():
        out = unet(**_inputs())
    assert out.shape == (2, *LATENT)
    expect_missing = {
        "use_depth": "depth_embed",
        "use_context": "context_proj",
        "use_guidance": "guidance",
        "use_xray_latent": None,
    }[flag]
    if expect_missing:
        assert not hasattr(unet, expect_missing)
    else:
        assert unet.conv_in.conv.in_channels == 4
    if flag == "use_context":
        assert not unet.with_conditioning


def test_gradient_checkpointing_gives_same_gradients():
    inputs = _inputs()
    grads = []
    for use_checkpoint in (False, True):
        unet = _perturbed(use_checkpoint=use_checkpoint).train()
        out = unet(**inputs)
        out.pow(2).mean().backward()
        grads.append({n: p.grad.clone() for n, p in unet.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        assert torch.allclose(grads[0][name], grads[1][name], atol=1e-6), name


def test_gradients_reach_condition_layers():
    unet = _perturbed().train()
    unet(**_inputs()).pow(2).mean().backward()
    for name in ("depth_embed.0.weight", "context_proj.weight", "guidance.fuse.mu_p", "guidance.fuse.w_i.weight"):
        assert unet.get_parameter(name).grad.abs().sum() > 0, name


def test_bad_shapes_are_reported():
    unet = _perturbed()
    inputs = _inputs()
    with pytest.raises(ValueError, match="xray_latent"):
        unet(**{**inputs, "xray_latent": torch.zeros(2, 4, 4, 4)})
    with pytest.raises(ValueError, match="drop mask"):
        unet(**inputs, drop_context=torch.tensor([True]))


def test_depth_code_is_continuous_and_distinct():
    depth = torch.linspace(0, 1, 50)
    code = depth_fourier_code(depth, 4)
    assert code.shape == (50, 4)
    assert torch.cdist(code, code).add(torch.eye(50)).min() > 0  # all 50 depths distinct
