"""Optical flow (dynamic degree) and midpoint frame interpolation (motion smoothness): OpenCV DIS flow
and a DIS-flow interpolator (offline tier); RAFT and AMT-S TorchScript files (reference tier)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from vpae.eval import preprocess
from vpae.eval.feature_nets.base import OFFLINE, REFERENCE, ModelInfo
from vpae.eval.feature_nets.hashing import sha256_file
from vpae.eval.feature_nets.loading import check_file, load_torchscript


class DISFlow:
    """Offline tier: OpenCV DIS optical flow (preset MEDIUM) on grayscale frames, in pixels."""

    def __init__(self, device="cpu"):
        import cv2
        self._cv2 = cv2
        self.dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
        self.info = ModelInfo("dis_flow", OFFLINE, f"OpenCV {cv2.__version__} DIS optical flow (medium preset)")

    def __call__(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        g = self._cv2.cvtColor
        return self.dis.calc(g(a, self._cv2.COLOR_RGB2GRAY), g(b, self._cv2.COLOR_RGB2GRAY), None)


def _pad_to(x: torch.Tensor, mult: int) -> tuple[torch.Tensor, tuple[int, int, int, int]]:
    h, w = x.shape[-2:]
    ph, pw = (-h) % mult, (-w) % mult
    pad = (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2)
    return F.pad(x, pad, mode="replicate"), pad


class RaftFlow:
    """Reference tier: RAFT (VBench `raft_model/models/raft-things.pth`, 20 iterations), as a TorchScript
    file mapping (image1, image2), each float (1, 3, H, W) RGB in 0..255 with H, W multiples of 8, to the
    upsampled flow (1, 2, H, W) (or a tuple/list whose last element is it). Inputs are replicate-padded
    to multiples of 8 as RAFT's InputPadder does; the flow is returned padded, as VBench scores it."""

    def __init__(self, path, device="cpu"):
        p = check_file(path, "RAFT")
        self.model = load_torchscript(p, "RAFT", device)
        self.device = device
        self.info = ModelInfo("raft", REFERENCE, "RAFT-things optical flow", {str(p): sha256_file(p)})

    @torch.no_grad()
    def __call__(self, a, b):
        x = preprocess.to_nchw(np.stack([a, b])).to(self.device)
        x, _ = _pad_to(x, 8)
        out = self.model(x[:1], x[1:])
        if isinstance(out, (tuple, list)):
            out = out[-1]
        return out[0].permute(1, 2, 0).float().cpu().numpy()


class FlowInterpolator:
    """Offline tier: midpoint frame from bidirectional DIS flow (Super-SloMo-style linear flow
    approximation at t = 1/2: F_t0 = -F01/4 + F10/4, F_t1 = F01/4 - F10/4; backward-warp both frames
    with cv2.remap and average)."""

    def __init__(self, device="cpu"):
        import cv2
        self._cv2 = cv2
        self.flow = DISFlow()
        self.info = ModelInfo("flow_interp", OFFLINE, "DIS-flow midpoint interpolator (OpenCV remap)")

    def __call__(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        cv2 = self._cv2
        f01, f10 = self.flow(a, b), self.flow(b, a)
        ft0 = -0.25 * f01 + 0.25 * f10
        ft1 = 0.25 * f01 - 0.25 * f10
        h, w = a.shape[:2]
        gx, gy = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))

        def warp(img, fl):
            return cv2.remap(img, gx + fl[..., 0], gy + fl[..., 1], cv2.INTER_LINEAR,
                             borderMode=cv2.BORDER_REPLICATE).astype(np.float32)

        mid = 0.5 * (warp(a, ft0) + warp(b, ft1))
        return np.clip(np.round(mid), 0, 255).astype(np.uint8)


class AmtInterpolator:
    """Reference tier: AMT-S (VBench `amt_model/amt-s.pth`) as a TorchScript file mapping
    (img0, img1, embt) with img* float (1, 3, H, W) in [0, 1], H, W multiples of 16, embt (1, 1, 1, 1) = 0.5,
    to the middle frame (1, 3, H, W) in [0, 1] (or a dict with key 'imgt_pred')."""

    def __init__(self, path, device="cpu"):
        p = check_file(path, "AMT-S")
        self.model = load_torchscript(p, "AMT-S", device)
        self.device = device
        self.info = ModelInfo("amt_s", REFERENCE, "AMT-S frame interpolation", {str(p): sha256_file(p)})

    @torch.no_grad()
    def __call__(self, a, b):
        x = preprocess.to_nchw(np.stack([a, b])).to(self.device) / 255.0
        x, (left, r, t, btm) = _pad_to(x, 16)
        embt = torch.full((1, 1, 1, 1), 0.5, device=self.device)
        out = self.model(x[:1], x[1:], embt)
        if isinstance(out, dict):
            out = out["imgt_pred"]
        h, w = out.shape[-2:]
        out = out[..., t:h - btm, left:w - r]
        # AMT's tensor2img (VBench third_party/amt/utils/utils.py): (x * 255.).numpy().clip(0, 255)
        # .astype(np.uint8), i.e. clipped then TRUNCATED (not rounded); done in numpy as there.
        return (out[0] * 255.0).permute(1, 2, 0).cpu().numpy().clip(0, 255).astype(np.uint8)
