"""`vpae data synthesize`: the paper's synthetic set. The teacher samples a video latent for every manifest
row (a caption, and for image-to-video a condition image) with its multi-step CFG sampler, and the result
goes into the latent cache format that training reads (vpae.data.cache). Noise for row i is
initial_noise(shape, seed * 100003 + i), so a row's sample does not depend on batching or on a resume;
shards record the rows they cover, so a killed run resumes after the last complete shard."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from tqdm.auto import tqdm

from vpae.codecs import make_conditioning
from vpae.data.cache import CacheWriter
from vpae.data.prepare import EncoderStack, PrepareError, read_manifest
from vpae.errors import VpaeError
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
    report.json). Latent shape from the codec: frames and size divided by its strides."""
    rows = read_manifest(manifest, need_video=False)
    if teacher.i2v and stack.image_encoder is None:
        raise PrepareError("an image-to-video teacher needs an image encoder in the stack")
    out = Path(out)
    writer = CacheWriter(out, stack.sizes, shard_size)
    start = writer.index["shards"][-1].get("rows", 0) if writer.index["shards"] else 0
    codec = stack.codec
    ts, ss = getattr(codec, "temporal_stride", 1), getattr(codec, "spatial_stride", 1)
    shape = (stack.sizes.latent_channels, (frames - 1) // ts + 1, height // ss, width // ss)
    skipped, pending = [], []

    def flush_pending():
        if not pending:
            return
        idx, captions, images = zip(*pending)
        image = torch.stack(images) if teacher.i2v else None
        cond = make_conditioning(image, list(captions), stack.text_encoder, stack.image_encoder if teacher.i2v else None,
                                 codec if teacher.i2v else None, frames)
        noise = torch.stack([initial_noise(shape, seed * 100003 + i) for i in idx])
        x0 = teacher_sample(teacher, noise, cond, steps, guidance, shift).x0
        text_len = cond.text_mask.sum(1) if cond.text_mask is not None else torch.full((len(idx),), cond.text.shape[1])
        writer.add(x0, cond, text_len)
        pending.clear()

    for i in tqdm(range(start, len(rows)), desc="synthesize", disable=not progress, initial=start, total=len(rows)):
        r = rows[i]
        try:
            image = _image(r["image"], height, width) if teacher.i2v else None
        except (VpaeError, KeyError) as e:
            skipped.append({"row": i, "image": r.get("image"), "reason": str(e) if isinstance(e, VpaeError) else "no image"})
            continue
        pending.append((i, str(r["caption"]), image))
        writer.rows_done = i + 1
        if len(pending) == batch_size or len(writer.pending) + len(pending) >= shard_size:
            flush_pending()
    flush_pending()
    writer.rows_done = len(rows)
    writer.flush()
    result = {"items": writer.items, "rows": len(rows), "skipped": skipped}
    (out / "report.json").write_text(json.dumps(result, indent=1))
    return result
