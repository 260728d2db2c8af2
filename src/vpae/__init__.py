"""V-PAE: Video Phased Adversarial Equilibrium, one-step video diffusion distillation."""

__version__ = "0.1.0"
