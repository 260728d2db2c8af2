"""DMD2 (Yin et al. 2024a, Improved Distribution Matching Distillation for Fast Image Synthesis).

Generator: the DMD gradient (eq. 1, real score with CFG) plus a non-saturating GAN term whose discriminator is a
head on the fake score's features (DMD2 sec. 4.3, weight 3e-3). Fake score: flow matching on generated samples
(eq. 2) plus the head's classification loss (weight 1e-2); fake score and head share one optimizer at
`dmd2.fake_lr` (DMD2's guidance model: fake UNet + classification branch, one optimizer) and take
`dmd2.fake_updates_per_generator` steps per generator step (two time-scale update rule, sec. 4.2; DMD2: 5). The fake
score is a whole trainable copy of the teacher (`dmd2.fake_critic: full`, as DMD2, FastVideo and FastGen) or the
teacher plus a LoRA (`lora`). Multi-step: the generator trains at the few-step sigmas (1, 0.75, 0.5, 0.25: DMD2's
999/749/499/249) with inputs made by backward simulation (sec. 4.5); `comparison.nfe: 1` is DMD2's one-step recipe.
"""

from __future__ import annotations

from typing import Iterator

import torch
from torch import nn

from vpae import flow, randomness
from vpae.conditioning import Conditioning
from vpae.discriminator import FeatureDiscriminator
from vpae.losses import (
    DistributionMatchingLoss,
    discriminator_accuracy,
    discriminator_loss,
    fake_score_loss,
    generator_adversarial_loss,
)
from vpae.registry import register_method
from vpae.sampling import few_step_sigmas, predict_x0
from vpae.training.collapse import collapse_logs
from vpae.training.methods.base import Method, OptimizerSpec, Phase, Update, adam_on, requires_grad, student_inputs
from vpae.training.model import (
    Networks,
    fake_score,
    generator_checkpoint_view,
    trainable_parameters,
)

Tensor = torch.Tensor


class FullCriticScores:
    """The score pair of eq. 1 with a whole trainable fake score (vpae.losses.dmd.ScorePair): the teacher with its
    adapters off as the real score, the copy `critic` as the fake score."""

    def __init__(self, nets: Networks, critic):
        self.nets, self.critic = nets, critic

    def real_x0(self, x_t: Tensor, t: Tensor, cond: Conditioning, guidance: float = 1.0) -> Tensor:
        return self.nets.real_x0(x_t, t, cond, guidance)

    def fake_x0(self, x_t: Tensor, t: Tensor, cond: Conditioning) -> Tensor:
        return predict_x0(self.critic, x_t, t, cond)[0]

    def fake_velocity(self, x_t: Tensor, t: Tensor, cond: Conditioning) -> Tensor:
        return self.critic.velocity(x_t, t, cond)


class DMD2Phase(Phase):
    name, stream = "dmd2", 3

    def __init__(self, nets: Networks, cfg):
        super().__init__(nets, cfg)
        self.comparison, self.settings = cfg.comparison, cfg.dmd2
        self.steps, self.batch_size = self.comparison.steps, self.comparison.batch_size
        self.sigmas = few_step_sigmas(self.comparison.nfe, self.comparison.shift, cfg.sampling.few_step_schedule)
        self.disc = FeatureDiscriminator(nets.heads, self.comparison.layers)
        self.dmd = DistributionMatchingLoss(self.settings.renoise_band, self.comparison.guidance)
        self.full_critic = self.settings.fake_critic == "full"
        # the fake score: a trained copy of the teacher, or the teacher with its fake LoRA switched on
        self.critic = nets.others["fake_critic"] if self.full_critic else nets.teacher
        self.scores = FullCriticScores(nets, self.critic) if self.full_critic else nets

    def fake_side_params(self) -> list[nn.Parameter]:
        fake = trainable_parameters(self.critic) if self.full_critic else self.nets.fake_params
        return fake + self.nets.head_params()

    def optimizers(self) -> dict[str, OptimizerSpec]:
        c = self.comparison
        return {"generator": adam_on(self.nets.generator, c),
                "fake": OptimizerSpec(self.fake_side_params(), self.settings.fake_lr, c.betas, c.grad_clip)}

    def modules(self) -> dict[str, nn.Module]:
        fake = {"fake_critic": self.critic} if self.full_critic else {"fake_lora": self.nets.fake_lora_state()}
        return {"generator": generator_checkpoint_view(self.nets.generator), **fake, "heads": self.nets.heads}

    def generate(self, x_data: Tensor, cond: Conditioning) -> Tensor:
        return student_inputs(self.nets.generator, x_data, cond, self.sigmas, self.settings.backward_simulation)[0]

    def fake_loss(self, x_data: Tensor, cond: Conditioning) -> tuple[Tensor, dict]:
        """Eq. 2 on the fake score + gan_weight_fake x the head's classification of real vs generated, both read
        at one re-noised sample per video (the head sits on the fake score's features)."""
        with torch.no_grad():
            x0_gen = self.generate(x_data, cond)
        b, dev, critic = x_data.shape[0], x_data.device, self.critic
        t = randomness.uniform(b, self.settings.renoise_band, dev)
        eps = randomness.randn_like(x0_gen)
        x_t = flow.add_noise(x0_gen, eps, t)
        with fake_score(self.nets.teacher):
            fake = fake_score_loss(self.scores.fake_velocity(x_t, t, cond), x0_gen, eps).mean()
            t_real = randomness.uniform(b, self.settings.renoise_band, dev)
            x_real = flow.add_noise(x_data, randomness.randn_like(x_data), t_real)
            logs, loss = {"loss/fake": fake.item()}, fake
            if self.settings.gan_weight_fake > 0:
                logits_real = self.disc(critic, x_real, t_real, cond, True)
                logits_fake = self.disc(critic, x_t, t, cond, True)
                gan_d = discriminator_loss(logits_real, logits_fake, "non_saturating").mean()
                loss = fake + self.settings.gan_weight_fake * gan_d
                logs.update({"loss/gan_d": gan_d.item(),
                             "d/accuracy": discriminator_accuracy(logits_real, logits_fake).item()})
        return loss, logs

    def generator_loss(self, x0_gen: Tensor, x_data: Tensor, cond: Conditioning) -> tuple[Tensor, dict]:
        """Eq. 1 + gan_weight_generator x the non-saturating GAN loss through the fake score's head."""
        dmd, gap = self.dmd(x0_gen, cond, self.scores)
        dmd = dmd.mean()
        t_d = randomness.uniform(x0_gen.shape[0], self.settings.renoise_band, x0_gen.device)
        x_d = flow.add_noise(x0_gen, randomness.randn_like(x0_gen), t_d)  # with a graph: the GAN gradient reaches G
        loss, logs = dmd, {"loss/dmd": dmd.item(), "dmd/real_fake_gap": gap.item()}
        if self.settings.gan_weight_generator > 0:
            with fake_score(self.nets.teacher), requires_grad(self.fake_side_params(), False):
                logits = self.disc(self.critic, x_d, t_d, cond, True)
                gan_g = generator_adversarial_loss(logits, "non_saturating").mean()
            loss = dmd + self.settings.gan_weight_generator * gan_g
            logs["loss/gan_g"] = gan_g.item()
        logs["loss/g_total"] = loss.item()
        return loss, {**logs, **collapse_logs(x0_gen, x_data)}

    def step(self, step: int, x_data: Tensor, cond: Conditioning) -> Iterator[Update]:
        for _ in range(self.settings.fake_updates_per_generator):
            with fake_score(self.nets.teacher):
                yield Update("fake", *self.fake_loss(x_data, cond))
        x0_gen = self.generate(x_data, cond)
        # the GAN term reads the fake score's features with its weights frozen: held through the backward
        with fake_score(self.nets.teacher), requires_grad(self.fake_side_params(), False):
            yield Update("generator", *self.generator_loss(x0_gen, x_data, cond))


@register_method("dmd2")
class DMD2(Method):
    name, sampler, needs_heads, distributed = "dmd2", "few_step", True, True
    paper = "Yin et al. 2024a, Improved Distribution Matching Distillation for Fast Image Synthesis (DMD2)"

    def extra_copies(self) -> tuple[int, int]:
        return int(self.cfg.dmd2.fake_critic == "full"), 0

    def add_roles(self, nets: Networks, before_sharding: bool) -> None:
        if self.cfg.dmd2.fake_critic == "full":
            nets.make_copy("fake_critic", trains="all")  # the generator is still the teacher's copy here

    def phases(self, nets: Networks) -> list[Phase]:
        return [DMD2Phase(nets, self.cfg)]
