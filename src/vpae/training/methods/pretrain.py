"""Teacher pre-training (the toy world's teacher): flow matching with caption dropout for CFG
(losses/flow_matching.py), AdamW with linear warm-up and an optional linear cool-down, and an EMA with the usual
warm-up so early random weights do not linger in short runs. Not a distillation method: `vpae pretrain` runs it.
"""

from __future__ import annotations

from typing import Iterator

import torch
from torch import nn

from vpae.conditioning import Conditioning
from vpae.losses import FlowMatchingLoss
from vpae.training.methods.base import AfterUpdate, OptimizerSpec, Phase, Update
from vpae.training.model import trainable_parameters, update_ema

Tensor = torch.Tensor


class FlowMatchingPhase(Phase):
    name, stream = "pretrain", 0

    def __init__(self, model: nn.Module, ema: nn.Module, cfg):
        super().__init__(None, cfg)
        self.model, self.ema, self.pretrain = model, ema, cfg.pretrain
        self.steps, self.batch_size = self.pretrain.steps, self.pretrain.batch_size
        self.loss = FlowMatchingLoss(self.pretrain.sigma_sampling, self.pretrain.sigma_shift, self.pretrain.text_dropout)

    def lr_scale(self, step: int) -> float:
        warm = min(1.0, (step + 1) / max(1, self.pretrain.warmup_steps))
        if self.pretrain.lr_decay_steps > 0:
            warm *= min(1.0, (self.pretrain.steps - step) / self.pretrain.lr_decay_steps)
        return warm

    def optimizers(self) -> dict[str, OptimizerSpec]:
        p = self.pretrain
        return {"model": OptimizerSpec(trainable_parameters(self.model), p.lr, p.betas, p.grad_clip, kind="adamw",
                                       weight_decay=p.weight_decay, lr_scale=self.lr_scale)}

    def modules(self) -> dict[str, nn.Module]:
        return {"model": self.model, "ema": self.ema}

    def step(self, step: int, x_data: Tensor, cond: Conditioning) -> Iterator[Update]:
        loss = self.loss(self.model, x_data, cond).mean()
        yield Update("model", loss, {"loss/flow": loss.item()})
        yield AfterUpdate(lambda: update_ema(self.ema, self.model, min(self.pretrain.ema_decay, (1 + step) / (10 + step))))
