"""Adaptive-weight module: paper Eq. 9-14 against a hand computation, initial gate, gradients."""

from __future__ import annotations

import math

import torch

from xray2mri_bundle.networks import AdaptiveWeight, GuidanceEmbedding


def _sigmoid(value: float) -> float:
    return 1.0 / (1.0 + math.exp(-value))


def _hand_eq_9_to_14(module: AdaptiveWeight, p: list, i: list) -> list:
    """Eq. 9-14 with Python floats on one sample: p[c][m][n], i[c][m][n] -> y[c][m][n]."""
    channels, height, width = len(p), len(p[0]), len(p[0][0])
    mu_p, mu_i = module.mu_p.tolist(), module.mu_i.tolist()
    nu_p, nu_i = module.nu_p.tolist(), module.nu_i.tolist()
    o_p, o_i = module.o_p.tolist(), module.o_i.tolist()
    w_p, w_i = module.w_p.weight.tolist(), module.w_i.weight.tolist()  # (d_k, C)
    d_k = len(w_p)
    gated = []
    for c in range(channels):
        sum_p = sum(p[c][m][n] ** 2 for m in range(height) for n in range(width))
        sum_i = sum(i[c][m][n] ** 2 for m in range(height) for n in range(width))
        g_p = mu_p[c] * math.sqrt(sum_p + module.kappa)  # Eq. 9
        g_i = mu_i[c] * math.sqrt(sum_i + module.kappa)  # Eq. 10
        gh_p = g_p / (g_p + g_i + module.eps)  # Eq. 11
        gh_i = g_i / (g_p + g_i + module.eps)
        factor_p = 1 + _sigmoid(nu_p[c] * gh_p + o_p[c])  # Eq. 12
        factor_i = 1 + _sigmoid(nu_i[c] * gh_i + o_i[c])
        gated.append([[p[c][m][n] * factor_p + i[c][m][n] * factor_i for n in range(width)] for m in range(height)])
    tokens = [(m, n) for m in range(height) for n in range(width)]
    q = [[sum(w_p[k][c] * p[c][m][n] for c in range(channels)) for k in range(d_k)] for m, n in tokens]
    key = [[sum(w_i[k][c] * i[c][m][n] for c in range(channels)) for k in range(d_k)] for m, n in tokens]
    y = [[[0.0] * width for _ in range(height)] for _ in range(channels)]
    for a, (m, n) in enumerate(tokens):
        scores = [sum(q[a][k] * key[b][k] for k in range(d_k)) / math.sqrt(d_k) for b in range(len(tokens))]
        top = max(scores)
        weights = [math.exp(s - top) for s in scores]
        weights = [w / sum(weights) for w in weights]  # Eq. 13, softmax over the keys
        for c in range(channels):
            y[c][m][n] = sum(weights[b] * gated[c][mb][nb] for b, (mb, nb) in enumerate(tokens))  # Eq. 14
    return y


def test_eq_9_to_14_match_hand_computation():
    torch.manual_seed(3)
    module = AdaptiveWeight(channels=3, key_dim=2).double()
    with torch.no_grad():  # move away from the initial values so every term counts
        module.mu_p.copy_(torch.tensor([0.5, 1.5, 2.0]))
        module.mu_i.copy_(torch.tensor([1.2, 0.3, 0.9]))
        module.nu_p.copy_(torch.tensor([2.0, -1.0, 0.5]))
        module.nu_i.copy_(torch.tensor([0.7, 3.0, -2.0]))
        module.o_p.copy_(torch.tensor([0.1, -0.5, 1.0]))
        module.o_i.copy_(torch.tensor([-1.0, 0.2, 0.3]))
    p = torch.rand(2, 3, 2, 3, dtype=torch.float64)
    i = torch.randn(2, 3, 2, 3, dtype=torch.float64)
    y = module(p, i)
    assert y.shape == p.shape
    for b in range(2):
        expected = torch.tensor(_hand_eq_9_to_14(module, p[b].tolist(), i[b].tolist()), dtype=torch.float64)
        assert torch.allclose(y[b], expected, atol=1e-12)


def test_attention_rows_are_a_softmax():
    module = AdaptiveWeight(channels=4, key_dim=3)
    weights = module.attention(torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8))
    assert weights.shape == (2, 64, 64)
    assert torch.allclose(weights.sum(-1), torch.ones(2, 64)) and (weights >= 0).all()


def test_initial_gate_is_near_identity():
    module = AdaptiveWeight(channels=8)
    gate_p, gate_i = module.gates(torch.rand(2, 8, 8, 8), torch.rand(2, 8, 8, 8))
    for gate in (gate_p, gate_i):
        assert ((gate > 1.0) & (gate < 1.05)).all()


def test_gradients_reach_every_parameter():
    torch.manual_seed(0)
    module = GuidanceEmbedding(out_dim=16, channels=6, key_dim=4)
    assert torch.count_nonzero(module(torch.rand(2, 5, 8, 8), torch.rand(2, 16, 8, 8))) == 0  # zero-init output
    with torch.no_grad():
        module.proj[-1].weight.normal_()
    out = module(torch.softmax(torch.randn(2, 5, 8, 8), 1), torch.softmax(torch.randn(2, 16, 8, 8), 1))
    (out * torch.randn_like(out)).sum().backward()
    fuse = module.fuse
    for name, parameter in [
        ("mu_p", fuse.mu_p),
        ("mu_i", fuse.mu_i),
        ("nu_p", fuse.nu_p),
        ("nu_i", fuse.nu_i),
        ("o_p", fuse.o_p),
        ("o_i", fuse.o_i),
        ("W_p", fuse.w_p.weight),
        ("W_i", fuse.w_i.weight),
        ("lift_p", module.lift_p.weight),
        ("lift_i", module.lift_i.weight),
    ]:
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name


def test_zero_maps_stay_finite():
    module = AdaptiveWeight(channels=4, key_dim=4)
    y = module(torch.zeros(1, 4, 8, 8), torch.zeros(1, 4, 8, 8))
    assert torch.isfinite(y).all() and torch.count_nonzero(y) == 0
