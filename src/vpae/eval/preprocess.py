"""Image preprocessing matching VBench's torchvision transforms, without torchvision.

Frames arrive as uint8 (N, H, W, 3). VBench's `load_video` (vbench/utils.py and vbench2_beta_i2v/utils.py)
returns `torch.Tensor(frames)`, i.e. FLOAT32 frames in 0..255 (its "torch.uint8" comment is wrong), so
torchvision resizes float tensors: no rounding and no clamping afterwards (bicubic may overshoot 0..255).
We do the same with torch.nn.functional.interpolate, which is what torchvision's tensor Resize calls
(align_corners=False). Condition images go through PIL (always antialiased).

Antialiasing of tensor resizes:
  * the quality dimensions (vbench/utils.py `dino_transform`, `clip_transform`) pass antialias=False;
  * the I2V dimensions (vbench2_beta_i2v/utils.py `dino_transform_internet`, `dreamsim_transform`) leave
    it to torchvision's default, which changed: torchvision <= 0.16 did not antialias tensors (None /
    'warn'), torchvision >= 0.17 (January 2024) does (antialias=True). We follow torchvision >= 0.17
    (`I2V_TENSOR_ANTIALIAS = True`): VBench pins no torchvision version and its install instructions
    (`pip install torch torchvision ...`) give a current one, for vbench 0.1.5 (January 2025) and the
    repository head alike. Set it to False to reproduce a torchvision <= 0.16 environment.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
# torchvision >= 0.17's default for tensor Resize, used where VBench-I2V does not pass antialias (see above)
I2V_TENSOR_ANTIALIAS = True


def to_nchw(frames: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> float (N, 3, H, W) still in 0..255."""
    a = np.ascontiguousarray(frames)
    if not a.flags.writeable:
        a = a.copy()
    return torch.from_numpy(a).permute(0, 3, 1, 2).float().contiguous()


def resize_short(x: torch.Tensor, size: int, mode: str = "bilinear", antialias: bool = False) -> torch.Tensor:
    """torchvision Resize(size) on float tensors: shorter side -> size (long side int(size * long / short))."""
    h, w = x.shape[-2:]
    if h <= w:
        nh, nw = size, int(size * w / h)
    else:
        nh, nw = int(size * h / w), size
    return resize(x, (nh, nw), mode, antialias)


def resize(x: torch.Tensor, hw: tuple[int, int], mode: str = "bilinear", antialias: bool = False) -> torch.Tensor:
    """torchvision Resize(hw) on a float tensor: the float result as is (VBench's frames are float, so
    torchvision neither rounds nor clamps). Same size: unchanged, as torchvision returns the input."""
    if tuple(x.shape[-2:]) != tuple(hw):
        kw = {"align_corners": False} if mode in ("bilinear", "bicubic") else {}
        x = F.interpolate(x, size=hw, mode=mode, antialias=antialias, **kw)
    return x


def center_crop(x: torch.Tensor, size: int) -> torch.Tensor:
    h, w = x.shape[-2:]
    top, left = int(round((h - size) / 2.0)), int(round((w - size) / 2.0))
    return x[..., top:top + size, left:left + size]


def normalize(x01: torch.Tensor, mean, std) -> torch.Tensor:
    m = torch.tensor(mean, dtype=x01.dtype).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=x01.dtype).view(1, 3, 1, 1)
    return (x01 - m) / s


def pil_resize_short(image: np.ndarray, size: int, bicubic: bool = True) -> np.ndarray:
    """PIL Resize(size) on an image (torchvision's path for PIL inputs; antialiased)."""
    from PIL import Image
    h, w = image.shape[:2]
    nh, nw = (size, int(size * w / h)) if h <= w else (int(size * h / w), size)
    im = Image.fromarray(image).resize((nw, nh), Image.BICUBIC if bicubic else Image.BILINEAR)
    return np.asarray(im)


def pil_resize(image: np.ndarray, hw: tuple[int, int], bicubic: bool = True) -> np.ndarray:
    from PIL import Image
    im = Image.fromarray(image).resize((hw[1], hw[0]), Image.BICUBIC if bicubic else Image.BILINEAR)
    return np.asarray(im)


# --- the VBench transforms (frames: uint8 (N,H,W,3); images: uint8 (H,W,3)) -> float (N,3,h,w) -----
def dino_frames(frames: np.ndarray) -> torch.Tensor:
    """subject_consistency: dino_transform(224) = Resize(224) (bilinear, no antialias), /255, ImageNet."""
    return normalize(resize_short(to_nchw(frames), 224, "bilinear", antialias=False) / 255.0,
                     IMAGENET_MEAN, IMAGENET_STD)


def dino_internet_frames(frames: np.ndarray) -> torch.Tensor:
    """i2v_subject frames: Resize(256, bicubic, torchvision's default antialias), CenterCrop(224), /255,
    ImageNet."""
    x = center_crop(resize_short(to_nchw(frames), 256, "bicubic", I2V_TENSOR_ANTIALIAS), 224)
    return normalize(x / 255.0, IMAGENET_MEAN, IMAGENET_STD)


def dino_internet_image(image: np.ndarray) -> torch.Tensor:
    """i2v_subject condition image: PIL Resize(256, bicubic), CenterCrop(224), ToTensor, ImageNet."""
    x = center_crop(to_nchw(pil_resize_short(image, 256)[None]), 224)
    return normalize(x / 255.0, IMAGENET_MEAN, IMAGENET_STD)


def clip_frames(frames: np.ndarray, n_px: int = 224) -> torch.Tensor:
    """background_consistency: clip_transform(224) = Resize(224, bicubic, no antialias), CenterCrop, /255,
    CLIP norm."""
    x = center_crop(resize_short(to_nchw(frames), n_px, "bicubic", antialias=False), n_px)
    return normalize(x / 255.0, CLIP_MEAN, CLIP_STD)


def dreamsim_frames(frames: np.ndarray) -> torch.Tensor:
    """i2v_background frames: Resize((224, 224), bicubic, torchvision's default antialias), /255 (no
    normalisation)."""
    return resize(to_nchw(frames), (224, 224), "bicubic", I2V_TENSOR_ANTIALIAS) / 255.0


def dreamsim_image(image: np.ndarray) -> torch.Tensor:
    return to_nchw(pil_resize(image, (224, 224))[None]) / 255.0
