"""One file per equation of the paper. Pure functions of tensors returning unreduced per-sample losses
(shape (B,)); the training steps own reduction and `.backward()`."""

from vpae.losses.adversarial import discriminator_accuracy, discriminator_loss, generator_adversarial_loss
from vpae.losses.dmd import dmd_gradient, dmd_loss, fake_score_loss
from vpae.losses.mode_seeking import mode_seeking_loss
from vpae.losses.regularizers import spatiotemporal_perturbation, st_r1_penalty
from vpae.losses.sds import conditional_sds_loss

__all__ = ["discriminator_accuracy", "dmd_gradient", "dmd_loss", "fake_score_loss", "discriminator_loss", "generator_adversarial_loss",
           "spatiotemporal_perturbation", "st_r1_penalty", "conditional_sds_loss", "mode_seeking_loss"]

# The comparison methods' losses (training/methods.py, docs/METHODS.md).
from vpae.losses.add import add_distillation_loss  # noqa: E402
from vpae.losses.approx_r1 import approximated_r1_penalty, gaussian_perturbation  # noqa: E402
from vpae.losses.consistency import PhasedConsistencyLoss  # noqa: E402
from vpae.losses.feature_matching import feature_matching_loss  # noqa: E402
from vpae.losses.ground_truth import ground_truth_loss  # noqa: E402
from vpae.losses.temporal import temporal_coherence_loss  # noqa: E402

__all__ += ["add_distillation_loss", "approximated_r1_penalty", "gaussian_perturbation", "PhasedConsistencyLoss",
            "feature_matching_loss", "ground_truth_loss", "temporal_coherence_loss"]
