"""Per-video I3D features for FVD (reference tier only)."""

from __future__ import annotations

import numpy as np
import torch

from vpae.eval import preprocess
from vpae.eval.feature_nets.base import REFERENCE, ModelInfo
from vpae.eval.feature_nets.hashing import sha256_file
from vpae.eval.feature_nets.loading import check_file, load_torchscript


class I3DFeatures:
    """Reference tier for standard FVD: the I3D TorchScript used by StyleGAN-V / DIGAN
    (`i3d_torchscript.pt`), called as `model(x, rescale=False, resize=False, return_features=True)` with
    x float (B, 3, T, 224, 224) in [-1, 1]; returns (B, 400) features."""

    def __init__(self, path, device="cpu"):
        p = check_file(path, "I3D (FVD)")
        self.model = load_torchscript(p, "I3D", device)
        self.device = device
        self.info = ModelInfo("i3d", REFERENCE, "I3D (Kinetics-400) TorchScript for FVD", {str(p): sha256_file(p)})

    @torch.no_grad()
    def video(self, frames: np.ndarray) -> torch.Tensor:
        x = preprocess.resize(preprocess.to_nchw(frames), (224, 224), "bilinear", antialias=True)
        x = (x / 127.5 - 1.0).permute(1, 0, 2, 3)[None].to(self.device)
        try:
            out = self.model(x, rescale=False, resize=False, return_features=True)
        except Exception:  # noqa: BLE001 - plain feature extractors
            out = self.model(x)
        return out.reshape(1, -1).float().cpu()
