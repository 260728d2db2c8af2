"""`vpae data synthesize`: the paper's synthetic set. The teacher samples a video latent for every manifest
row (a caption, and for image-to-video a condition image) with its multi-step CFG sampler, and the result
goes into the latent cache format that training reads (vpae.data.cache). Noise for row i is
initial_noise(shape, seed * 100003 + i), so a row's sample does not depend on batching or on a resume;
shards record the rows they cover, so a killed run resumes after the last complete shard."""

from __future__ import annotations

from pathlib import Path

import torch

from vpae.codecs import make_conditioning
from vpae.data.prepare import EncoderStack, PrepareError, fill_cache, read_manifest
from vpae.sampling import initial_noise, teacher_sample


def _image(path: str, height: int, width: int) -> torch.Tensor:
    from vpae.data.prepare import clip_tensor
    from vpae.eval.video import read_image
    return clip_tensor(read_image(path)[None], 1, height, width)[:, 0]  # (3, H, W) in [-1, 1]


@torch.no_grad()
def synthesize(manifest: str | Path, out: str | Path, teacher, stack: EncoderStack, frames: int, height: int,
               width: int, steps: int = 50, guidance: float = 5.0, shift: float = 3.0, seed: int = 0,
               shard_size: int = 256, batch_size: int = 4, progress: bool = True) -> dict:
    """Returns {"items", "rows", "skipped"} (rows whose condition image cannot be read are skipped, listed in
    report.json / report.md)."""
    rows = read_manifest(manifest, need_video=False)
    if teacher.i2v and stack.image_encoder is None:
        raise PrepareError("an image-to-video teacher needs an image encoder in the stack")
    shape = stack.codec.latent_shape(frames, height, width)

    def load(i, r):
        if teacher.i2v and not r.get("image"):
            raise PrepareError("no condition image")
        return i, str(r["caption"]), _image(r["image"], height, width) if teacher.i2v else None

    def encode(items):
        idx, captions, images = zip(*items)
        cond = make_conditioning(torch.stack(images) if teacher.i2v else None, list(captions), stack.text_encoder,
                                 stack.image_encoder if teacher.i2v else None, stack.codec if teacher.i2v else None, frames)
        noise = torch.stack([initial_noise(shape, seed * 100003 + i) for i in idx])
        return teacher_sample(teacher, noise, cond, steps, guidance, shift).x0, cond
    return fill_cache(rows, out, stack.sizes, load, encode, shard_size, batch_size, "synthesize", progress)
