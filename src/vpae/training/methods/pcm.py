"""PCM (Wang et al. 2024, Phased Consistency Model): LCM's consistency distillation cut into
`comparison.nfe` phases, each student mapping to its phase's lower edge, sampled by deterministic Euler steps
over the edges (lcm.ConsistencyPhase with M phases)."""

from __future__ import annotations

from vpae.registry import register_method
from vpae.training.methods.lcm import LCM


@register_method("pcm")
class PCM(LCM):
    name, paper, sampler = "pcm", "Wang et al. 2024, Phased Consistency Model", "euler"

    def consistency_phases(self) -> int:
        return self.cfg.comparison.nfe
