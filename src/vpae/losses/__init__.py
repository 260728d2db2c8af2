"""The losses, one file per equation: the pure per-sample formulas (functions of tensors, shape (B,)) and the
loss objects that draw their own noise levels and noise (vpae.randomness) and call the networks (EDM2's shape:
hyper-parameters in __init__, __call__ returns per-sample losses, never calls backward; the methods in
vpae.training.methods weight and reduce them, the training loop owns backward and the optimizer steps).

    eq. 1  dmd.py            DistributionMatchingLoss (dmd_gradient, dmd_loss)
    eq. 2  dmd.py            FakeScoreLoss (fake_score_loss)
    eq. 3  adversarial.py    AdversarialLoss (generator_adversarial_loss, discriminator_loss)
    eq. 4  regularizers.py   SpatiotemporalR1 (spatiotemporal_perturbation, st_r1_penalty)
    eq. 5  sds.py            ConditionalSDSLoss (conditional_sds_loss)
    comparison methods: add.py (ADD eq. 4-5), approx_r1.py (APT), consistency.py (LCM / PCM / DCM),
    feature_matching.py, ground_truth.py (MD), temporal.py (DCM); flow_matching.py (teacher pre-training);
    mode_seeking.py (an option, MSGAN eq. 3)
"""

from vpae.losses.add import ADDDistillationLoss, add_distillation_loss
from vpae.losses.adversarial import (
    AdversarialLoss,
    band_bins,
    discriminator_accuracy,
    discriminator_loss,
    generator_adversarial_loss,
    pair_counts_by_bin,
)
from vpae.losses.approx_r1 import ApproximatedR1, approximated_r1_penalty, gaussian_perturbation
from vpae.losses.consistency import PhasedConsistencyLoss
from vpae.losses.dmd import DistributionMatchingLoss, FakeScoreLoss, ScorePair, dmd_gradient, dmd_loss, fake_score_loss
from vpae.losses.feature_matching import feature_matching_loss
from vpae.losses.flow_matching import FlowMatchingLoss
from vpae.losses.ground_truth import ground_truth_loss
from vpae.losses.mode_seeking import mode_seeking_loss
from vpae.losses.regularizers import SpatiotemporalR1, spatiotemporal_perturbation, st_r1_penalty
from vpae.losses.sds import ConditionalSDSLoss, conditional_sds_loss
from vpae.losses.temporal import temporal_coherence_loss

__all__ = ["AdversarialLoss", "band_bins", "pair_counts_by_bin", "discriminator_accuracy", "discriminator_loss",
           "generator_adversarial_loss",
           "DistributionMatchingLoss", "FakeScoreLoss", "ScorePair", "dmd_gradient", "dmd_loss", "fake_score_loss",
           "FlowMatchingLoss", "mode_seeking_loss", "SpatiotemporalR1", "spatiotemporal_perturbation",
           "st_r1_penalty", "ConditionalSDSLoss", "conditional_sds_loss", "ADDDistillationLoss",
           "add_distillation_loss", "ApproximatedR1", "approximated_r1_penalty", "gaussian_perturbation",
           "PhasedConsistencyLoss", "feature_matching_loss", "ground_truth_loss", "temporal_coherence_loss"]
