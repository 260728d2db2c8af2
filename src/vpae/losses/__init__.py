"""One file per equation of the paper. Pure functions of tensors returning unreduced per-sample losses
(shape (B,)); the training steps own reduction and `.backward()`."""

from vpae.losses.adversarial import discriminator_loss, generator_adversarial_loss
from vpae.losses.dmd import dmd_gradient, dmd_loss, fake_score_loss
from vpae.losses.regularizers import spatiotemporal_perturbation, st_r1_penalty
from vpae.losses.sds import conditional_sds_loss

__all__ = ["dmd_gradient", "dmd_loss", "fake_score_loss", "discriminator_loss", "generator_adversarial_loss",
           "spatiotemporal_perturbation", "st_r1_penalty", "conditional_sds_loss"]
