"""Training losses that MONAI does not ship in the form the stages need.

Stage 1 (paper Eq. 6 plus the AutoencoderKL prior): ``L = ||x - D(E(x))||_2^2 + w_kl * KL(q(z|x) || N(0, I))``.
No perceptual or adversarial term: those need downloaded networks (LPIPS/VGG) and the paper trains with L2 only.
Stage 2 uses ``torch.nn.CrossEntropyLoss`` from its config. Stage 3 uses ``MinSNRWeightedMSELoss``: the plain MSE
of the paper (Eq. 7/15) by default, or the Min-SNR-gamma weighting of Hang et al. (2023, "Efficient Diffusion
Training via Min-SNR Weighting Strategy") when ``min_snr_gamma`` is set.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["AutoencoderKLLoss", "MinSNRWeightedMSELoss", "kl_divergence", "min_snr_weights", "reconstruction_of"]


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


def min_snr_weights(
    alphas_cumprod: torch.Tensor, timesteps: torch.Tensor, gamma: float, prediction_type: str
) -> torch.Tensor:
    """Per-sample Min-SNR-gamma loss weights (B,) for the timesteps (B,) of a batch.

    ``SNR(t) = a_t / (1 - a_t)`` with ``a_t`` the cumulative alpha product. The weight on the clean-latent error
    is ``min(SNR, gamma)``; expressed on the network's own target it is ``min(SNR, gamma) / SNR`` for epsilon,
    ``min(SNR, gamma) / (SNR + 1)`` for v-prediction and ``min(SNR, gamma)`` for the clean sample.
    """
    if gamma <= 0:
        raise ValueError(f"min_snr_gamma must be > 0, got {gamma}")
    alpha = alphas_cumprod.to(device=timesteps.device, dtype=torch.float64)[timesteps.long()]
    snr = alpha / (1.0 - alpha)
    clipped = snr.clamp(max=float(gamma))
    if prediction_type == "epsilon":
        weights = clipped / snr
    elif prediction_type == "v_prediction":
        weights = clipped / (snr + 1.0)
    elif prediction_type == "sample":
        weights = clipped
    else:
        raise ValueError(f"prediction_type must be epsilon, v_prediction or sample, got {prediction_type!r}")
    return weights.float()


class MinSNRWeightedMSELoss(nn.Module):
    """The diffusion stage's loss: MSE to the target, optionally Min-SNR-gamma weighted per sample.

    ``gamma=None`` is ``torch.nn.MSELoss()`` exactly (the paper's loss). With a ``gamma`` the squared error of
    each sample is averaged over its elements and multiplied by ``min_snr_weights`` of its timestep, then
    averaged over the batch; the timesteps are those the training ``inferer`` (``ConditionalDiffusionInferer``)
    noised the batch with in the same iteration (``inferer.last_timesteps``), since MONAI's ``SupervisedTrainer``
    calls ``loss(pred, target)`` without them.

    Args:
        scheduler: the training noise scheduler (its ``alphas_cumprod``).
        inferer: the training inferer that records ``last_timesteps``.
        gamma: the clip of the SNR (5 in the paper) or None for the plain MSE.
        prediction_type: what the network predicts (``epsilon`` | ``v_prediction`` | ``sample``).
    """

    def __init__(self, scheduler: nn.Module, inferer: object, gamma: float | None = None,
                 prediction_type: str = "epsilon") -> None:
        super().__init__()
        if gamma is not None and gamma <= 0:
            raise ValueError(f"min_snr_gamma must be > 0 or null, got {gamma}")
        self.scheduler, self.inferer = scheduler, inferer
        self.gamma = None if gamma is None else float(gamma)
        self.prediction_type = prediction_type

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.gamma is None:
            return F.mse_loss(pred, target)
        timesteps = getattr(self.inferer, "last_timesteps", None)
        if timesteps is None or timesteps.shape[0] != pred.shape[0]:
            raise RuntimeError("MinSNRWeightedMSELoss needs the timesteps of this batch: the inferer must be the "
                               "ConditionalDiffusionInferer that produced pred")
        per_sample = (pred.float() - target.float()).pow(2).flatten(1).mean(dim=1)
        weights = min_snr_weights(self.scheduler.alphas_cumprod, timesteps, self.gamma, self.prediction_type)
        return (per_sample * weights).mean()
