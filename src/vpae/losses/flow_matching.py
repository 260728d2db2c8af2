"""Flow matching (rectified flow, Lipman et al. 2023; Esser et al. 2024 for the logit-normal sigmas): the
teacher's own training objective, used to pre-train the toy teacher. With x_t = (1 - sigma) x0 + sigma eps,
    L_FM = || v_theta(x_t, sigma, c) - (eps - x0) ||^2,
with the caption replaced by the negative prompt for a fraction of samples so classifier-free guidance has an
unconditional model.
"""

from __future__ import annotations

import dataclasses

import torch

from vpae import flow, randomness
from vpae.conditioning import Conditioning

Tensor = torch.Tensor


class FlowMatchingLoss:
    """sigma ~ logit-normal (sigmoid of N(0, 1)) or U(0, 1), then shifted by `shift`; captions dropped with
    probability `text_dropout`. Returns the per-sample loss (B,)."""

    def __init__(self, sigma_sampling: str = "logit_normal", shift: float = 1.0, text_dropout: float = 0.0):
        if sigma_sampling not in ("logit_normal", "uniform"):
            raise ValueError(f"unknown sigma sampling {sigma_sampling!r}")
        self.sigma_sampling, self.shift, self.text_dropout = sigma_sampling, shift, text_dropout

    def sample_sigma(self, n: int, device) -> Tensor:
        if self.sigma_sampling == "logit_normal":
            s = torch.sigmoid(randomness.randn((n,), device=device))
        else:
            s = randomness.rand(n, device)
        return flow.shift_sigma(s, self.shift)

    def drop_captions(self, cond: Conditioning, n: int, device) -> Conditioning:
        drop = randomness.rand(n, device) < self.text_dropout
        if not drop.any():
            return cond
        neg = cond.negative()
        keep = (~drop).reshape(-1, 1, 1).to(cond.text.dtype)
        mask = cond.text_mask
        if mask is not None:
            mask = torch.where(drop[:, None], torch.ones_like(mask), mask)
        return dataclasses.replace(cond, text=cond.text * keep + neg.text * (1 - keep), text_mask=mask)

    def __call__(self, model, x_data: Tensor, cond: Conditioning) -> Tensor:
        b = x_data.shape[0]
        cond = self.drop_captions(cond, b, x_data.device)
        sigma = self.sample_sigma(b, x_data.device)
        eps = randomness.randn_like(x_data)
        v = model.velocity(flow.add_noise(x_data, eps, sigma), sigma, cond)
        return (v - flow.velocity_target(x_data, eps)).pow(2).flatten(1).mean(1)
