"""Paper eq. 5: the conditional SDS loss toward the frozen teacher (real score), per sample.

L_C-SDS = || x0_gen - f_real(sg(x_t'), t') ||^2 where x_t' re-noises the generator's sample. The teacher
sees the same conditioning (first-frame latent and image tokens), so its x0 prediction keeps the
conditional frame consistent: that is what stops conditional-frame collapse.
"""

from __future__ import annotations

import torch

Tensor = torch.Tensor


def conditional_sds_loss(x0_gen: Tensor, x0_teacher: Tensor) -> Tensor:
    """Mean over (C, F, H, W) of (x0_gen - sg(x0_teacher))^2."""
    return (x0_gen - x0_teacher.detach()).pow(2).flatten(1).mean(1)
