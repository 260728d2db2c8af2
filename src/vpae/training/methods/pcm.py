"""PCM (Wang et al. 2024, Phased Consistency Model): LCM's consistency distillation cut into
`comparison.nfe` phases, each student mapping to its phase's lower edge, sampled by deterministic Euler steps
over the edges (lcm.ConsistencyPhase with M phases). As the released code (G-U-N/Phased-Consistency-Model,
code/text_to_image_sd3/train_pcm_lora_sd3_adv.py): the target is the online network under no_grad (:1433-1444;
`pcm.target_decay` > 0 gives an EMA target instead), and the adversarial consistency loss (:1383-1500,
`--adv_weight=0.1` in every released script, run.sh and train_pcm_lora_sd15.sh / sdxl.sh) adds
`pcm.adv_weight` x relu(1 - D(fake)) with convolutional heads on the frozen teacher (discriminator_sd3.py)."""

from __future__ import annotations

from vpae.registry import register_method
from vpae.training.methods.base import Phase
from vpae.training.methods.lcm import LCM, ConsistencyPhase
from vpae.training.model import Networks


@register_method("pcm")
class PCM(LCM):
    name, paper, sampler = "pcm", "Wang et al. 2024, Phased Consistency Model", "euler"
    needs_heads = True
    original_head = "conv"  # PCM's DiscriminatorHead: 1x1 convs + GroupNorm + LeakyReLU per teacher block

    def consistency_phases(self) -> int:
        return self.cfg.comparison.nfe

    def extra_copies(self) -> tuple[int, int]:
        return 0, int(self.cfg.pcm.target_decay > 0)  # decay 0: the online network is the target

    def add_roles(self, nets: Networks, before_sharding: bool) -> None:
        if before_sharding and self.cfg.pcm.target_decay > 0:
            nets.make_ema()

    def phases(self, nets: Networks) -> list[Phase]:
        p = self.cfg.pcm
        return [ConsistencyPhase(nets, self.cfg, self.consistency_phases(), self.name, 3, self.cfg.comparison,
                                 target_decay=p.target_decay, adv_weight=p.adv_weight)]
