"""Training losses that MONAI does not ship in the form the stages need.

Stage 1 (paper Eq. 6 plus the AutoencoderKL prior): ``L = ||x - D(E(x))||_2^2 + w_kl * KL(q(z|x) || N(0, I))``.
No perceptual or adversarial term: those need downloaded networks (LPIPS/VGG) and the paper trains with L2 only.
Stage 2 uses ``torch.nn.CrossEntropyLoss`` and stage 3 ``torch.nn.MSELoss`` (epsilon prediction, Eq. 7/15)
directly from the configs.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["AutoencoderKLLoss", "kl_divergence", "reconstruction_of"]


def kl_divergence(z_mu: torch.Tensor, z_sigma: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, sigma^2) || N(0, I)) per sample, summed over latent dims: (B, C, h, w) -> (B,)."""
    dims = list(range(1, z_mu.ndim))
    var = z_sigma.float().pow(2)
    return 0.5 * torch.sum(z_mu.float().pow(2) + var - torch.log(var.clamp_min(1e-12)) - 1.0, dim=dims)


def reconstruction_of(pred: torch.Tensor | Sequence[torch.Tensor]) -> torch.Tensor:
    """The reconstruction from an ``AutoencoderKL`` forward output ``(recon, z_mu, z_sigma)``.

    Plain tensors pass through, so metric output transforms work on either form.
    """
    return pred if isinstance(pred, torch.Tensor) else pred[0]


class AutoencoderKLLoss(nn.Module):
    """L2 reconstruction + weighted KL for MONAI ``AutoencoderKL`` (called by SupervisedTrainer as
    ``loss(pred, target)``).

    Args:
        kl_weight: weight of the KL term (small, as in the LDM autoencoders: 1e-6 by default).
        reduction: ``"mean"`` averages the squared error over pixels (the usual MSE scale); the KL is the
            batch mean of the per-sample sum over latent dims.

    ``pred`` is the autoencoder output ``(recon (B, C, H, W), z_mu (B, c, h, w), z_sigma (B, c, h, w))``;
    ``target`` the input slice (B, C, H, W) in [-1, 1]. Returns a scalar. The two terms of the last call are
    kept in ``last_terms`` (detached scalar tensors, no device sync) for logging.
    """

    def __init__(self, kl_weight: float = 1e-6, reduction: str = "mean") -> None:
        super().__init__()
        if kl_weight < 0:
            raise ValueError(f"kl_weight must be >= 0, got {kl_weight}")
        if reduction not in ("mean", "sum"):
            raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
        self.kl_weight = float(kl_weight)
        self.reduction = reduction
        self.last_terms: dict[str, torch.Tensor] = {}

    def forward(self, pred: Sequence[torch.Tensor], target: torch.Tensor) -> torch.Tensor:
        recon, z_mu, z_sigma = pred
        squared = (recon.float() - target.float()).pow(2)
        rec = squared.mean() if self.reduction == "mean" else squared.sum() / squared.shape[0]
        kl = kl_divergence(z_mu, z_sigma).mean()
        self.last_terms = {"rec_loss": rec.detach(), "kl_loss": kl.detach()}
        return rec + self.kl_weight * kl
