"""rCM (Zheng et al. 2025, Large Scale Diffusion Distillation via Score-Regularized Continuous-Time Consistency;
code NVlabs/rcm, rcm/models/t2v_model_distill_rcm.py).

Generator: sCM's continuous-time consistency loss on real videos noised at logit-normal levels, the tangent
along the teacher's PF-ODE with CFG (vpae.losses.scm), plus `rcm.dmd_weight` x DMD's reverse-KL gradient (eq. 1,
real score with CFG, the fake LoRA score) on generated samples. Fake score: flow matching on generated samples
(eq. 2), `rcm.fake_updates_per_generator` updates per generator update at `rcm.fake_lr`.

As the release: the target network is the online generator with its gradient stopped; during the tangent
warm-up (`rcm.tangent_warmup_steps` generator updates) the generator trains on sCM alone and the fake score
does not train (the release's `emit_dmd` and `is_student_phase`); DMD's and the fake score's generated samples
come by backward simulation from pure noise over a random number of the few-step stages (the release cycles 1..4
stages with random intermediate times; here each sample draws its stage among the comparison sigmas, which is
the release's `dmd_fix_timesteps` variant); the DMD gradient is normalised by mean |x0_gen - x0_real| and the
fake score's loss is the x0 error over the noise level squared (flow matching on v is that). Differences: the
fake score is a LoRA on the teacher (the release trains a full copy); its re-noising level is uniform in
`rcm.renoise_band` (the release: Wan's shift-5 uniform); the two losses are summed into one generator update
(the release accumulates them as two backward passes: the same gradient); the consistency loss reads the
run's data stream (the release: videos the teacher generated); no NaN masking (the release zeroes NaN samples).
"""

from __future__ import annotations

from typing import Iterator

import torch
from torch import nn

from vpae.conditioning import Conditioning
from vpae.losses import DistributionMatchingLoss, FakeScoreLoss
from vpae.losses.scm import ContinuousConsistencyLoss
from vpae.registry import register_method
from vpae.sampling import few_step_sigmas, guided_velocity
from vpae.training.collapse import collapse_logs
from vpae.training.methods.base import Method, OptimizerSpec, Phase, Update, adam_on, student_inputs
from vpae.training.model import Networks, fake_score, generator_checkpoint_view, real_score

Tensor = torch.Tensor


class RCMPhase(Phase):
    name, stream = "rcm", 3

    def __init__(self, nets: Networks, cfg):
        super().__init__(nets, cfg)
        self.comparison, self.settings = cfg.comparison, cfg.rcm
        self.steps, self.batch_size = self.comparison.steps, self.comparison.batch_size
        self.sigmas = few_step_sigmas(self.comparison.nfe, self.comparison.shift, cfg.sampling.few_step_schedule)
        s = self.settings
        self.scm = ContinuousConsistencyLoss(s.t_mean, s.t_std, s.tangent_norm_c, s.tangent_warmup_steps)
        self.dmd = DistributionMatchingLoss(s.renoise_band, self.comparison.guidance)
        self.fake_score_matching = FakeScoreLoss(s.renoise_band)

    def optimizers(self) -> dict[str, OptimizerSpec]:
        c = self.comparison
        return {"generator": adam_on(self.nets.generator, c),
                "fake": OptimizerSpec(self.nets.fake_params, self.settings.fake_lr, c.betas, c.grad_clip)}

    def modules(self) -> dict[str, nn.Module]:
        return {"generator": generator_checkpoint_view(self.nets.generator),
                "fake_lora": self.nets.fake_lora_state()}

    def regularised(self, step: int) -> bool:
        """Whether DMD and the fake score train at this step: after the tangent warm-up (the release)."""
        return self.settings.dmd_weight > 0 and step >= self.settings.tangent_warmup_steps

    def generate(self, x_data: Tensor, cond: Conditioning) -> Tensor:
        return student_inputs(self.nets.generator, x_data, cond, self.sigmas, True)[0]

    def teacher_velocity(self, cond: Conditioning):
        teacher, guidance = self.nets.teacher, self.comparison.guidance

        def v(x_t: Tensor, s: Tensor) -> Tensor:
            with real_score(teacher):
                return guided_velocity(teacher, x_t, s, cond, guidance)[0]
        return v

    def fake_loss(self, x_data: Tensor, cond: Conditioning) -> tuple[Tensor, dict]:
        with torch.no_grad():
            x0_gen = self.generate(x_data, cond)
        loss = self.fake_score_matching(x0_gen, cond, self.nets).mean()
        return loss, {"loss/fake": loss.item()}

    def generator_loss(self, step: int, x_data: Tensor, cond: Conditioning) -> tuple[Tensor, dict]:
        """sCM + dmd_weight x eq. 1 (DMD only after the tangent warm-up)."""
        scm, tangent_rms = self.scm(self.nets.generator, x_data, cond, self.teacher_velocity(cond), step)
        scm = scm.mean()
        loss = scm
        logs = {"loss/scm": scm.item(), "scm/tangent_rms": tangent_rms.mean().item(),
                "scm/warmup": self.scm.warmup_ratio(step)}
        if self.regularised(step):
            x0_gen = self.generate(x_data, cond)
            dmd, gap = self.dmd(x0_gen, cond, self.nets)
            dmd = dmd.mean()
            loss = scm + self.settings.dmd_weight * dmd
            logs.update({"loss/dmd": dmd.item(), "dmd/real_fake_gap": gap.item(), **collapse_logs(x0_gen, x_data)})
        logs["loss/g_total"] = loss.item()
        return loss, logs

    def step(self, step: int, x_data: Tensor, cond: Conditioning) -> Iterator[Update]:
        if self.regularised(step):
            for _ in range(self.settings.fake_updates_per_generator):
                with fake_score(self.nets.teacher):
                    yield Update("fake", *self.fake_loss(x_data, cond))
        yield Update("generator", *self.generator_loss(step, x_data, cond))


@register_method("rcm")
class RCM(Method):
    # distributed: not checked (torch.func.jvp through FSDP-sharded and context-parallel modules is untested)
    name, sampler, distributed = "rcm", "few_step", False
    paper = ("Zheng et al. 2025, Large Scale Diffusion Distillation via Score-Regularized Continuous-Time "
             "Consistency (rCM)")

    def phases(self, nets: Networks) -> list[Phase]:
        return [RCMPhase(nets, self.cfg)]
