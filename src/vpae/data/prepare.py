"""`vpae data prepare`: a manifest of videos -> the latent cache that training reads (vpae.data.cache).

Manifest: CSV with a header, or JSONL; fields `video` (path, relative to the manifest's folder), `caption`,
optional `image` (a condition image; default: the clip's first frame). Each video gives one clip: its first
`frames` frames, resized so the short side fits and centre-cropped to (height, width), in [-1, 1]; then the
stack's codec, text and image encoders make (latents, Conditioning) and CacheWriter stores them.

Robust by construction: an unreadable, corrupt or too-short video (or a missing condition image) is skipped
and listed with its reason in `report.json` / `report.md`, never fatal; shards are published atomically with
the number of manifest rows they cover, so a killed run resumes after the last complete shard and never
leaves a half-written one.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from vpae.codecs import make_conditioning
from vpae.data.cache import CacheWriter
from vpae.data.source import ConditionSizes
from vpae.errors import VpaeError


class PrepareError(VpaeError, ValueError):
    pass


@dataclass
class EncoderStack:
    """What turns pixels and captions into training inputs: a codec (encode, encode_condition), a text
    encoder (encode(list) -> (emb, mask), negative(B)) and an image encoder (None for text-to-video)."""
    codec: object
    text_encoder: object
    image_encoder: object | None
    sizes: ConditionSizes


def read_manifest(path: str | Path, need_video: bool = True) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        raise PrepareError(f"manifest not found: {path}")
    try:
        if path.suffix.lower() == ".jsonl":
            rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        else:
            with path.open(newline="") as f:
                rows = list(csv.DictReader(f))
    except (ValueError, csv.Error) as e:
        raise PrepareError(f"manifest {path} cannot be parsed: {e}") from None
    for i, r in enumerate(rows):
        if not isinstance(r, dict) or (need_video and not r.get("video")) or r.get("caption") is None:
            need = "'video' and 'caption' fields" if need_video else "a 'caption' field"
            raise PrepareError(f"manifest {path} row {i + 1} needs {need}, got {r!r}")
        for key in ("video", "image"):
            if r.get(key) and not Path(r[key]).is_absolute():
                r[key] = str(path.parent / r[key])
    return rows


def clip_tensor(frames_uint8: np.ndarray, frames: int, height: int, width: int) -> torch.Tensor:
    """(F', H', W', 3) uint8 -> (3, frames, height, width) in [-1, 1]: the first `frames` frames, short side
    resized to cover (height, width) (bilinear, antialiased), centre crop."""
    if frames_uint8.shape[0] < frames:
        raise PrepareError(f"too short: {frames_uint8.shape[0]} frames, need {frames}")
    x = torch.from_numpy(frames_uint8[:frames]).permute(0, 3, 1, 2).float()  # (F, 3, H, W)
    h, w = x.shape[-2:]
    scale = max(height / h, width / w)
    if (h, w) != (height, width):
        x = F.interpolate(x, size=(max(height, round(h * scale)), max(width, round(w * scale))), mode="bilinear",
                          antialias=True, align_corners=False)
    top, left = (x.shape[-2] - height) // 2, (x.shape[-1] - width) // 2
    x = x[..., top:top + height, left:left + width]
    return (x / 127.5 - 1).clamp(-1, 1).permute(1, 0, 2, 3).contiguous()


def fill_cache(rows: list[dict], out: str | Path, sizes: ConditionSizes, load: Callable, encode: Callable,
               shard_size: int = 256, batch_size: int = 8, desc: str = "prepare", progress: bool = True) -> dict:
    """The loop `prepare` and `synthesize` share: load(i, row) -> one item (raises VpaeError for a row to skip),
    encode(items) -> (latents, Conditioning) for a batch; resumes after the cache's last complete shard, keeps
    shard boundaries at whole encoded batches (each shard records the rows it covers), and writes report.json
    and report.md. Returns {"items", "rows", "skipped": [{"row", "file", "reason"}]}."""
    out = Path(out)
    writer = CacheWriter(out, sizes, shard_size)
    start = writer.index["shards"][-1].get("rows", 0) if writer.index["shards"] else 0
    report_file = out / "report.json"
    skipped = json.loads(report_file.read_text())["skipped"] if report_file.is_file() and start else []
    skipped = [s for s in skipped if s["row"] < start]
    pending: list = []

    def encode_pending():
        if pending:
            with torch.no_grad():
                latents, cond = encode(pending)
            n = len(pending)
            text_len = cond.text_mask.sum(1) if cond.text_mask is not None else torch.full((n,), cond.text.shape[1])
            writer.add(latents, cond, text_len)
            pending.clear()

    for i in tqdm(range(start, len(rows)), desc=desc, disable=not progress, initial=start, total=len(rows)):
        try:
            pending.append(load(i, rows[i]))
        except VpaeError as e:  # unreadable, corrupt, too short, missing: listed, never fatal
            skipped.append({"row": i, "file": rows[i].get("video") or rows[i].get("image"), "reason": str(e)})
            continue
        writer.rows_done = i + 1
        if len(pending) == batch_size or len(writer.pending) + len(pending) >= shard_size:
            encode_pending()
    encode_pending()
    writer.rows_done = len(rows)
    writer.flush()
    result = {"items": writer.items, "rows": len(rows), "skipped": skipped}
    report_file.write_text(json.dumps(result, indent=1))
    lines = [f"# vpae data {desc}: {writer.items} clips from {len(rows)} rows, {len(skipped)} skipped", ""]
    lines += ["| row | file | reason |", "|---|---|---|"]
    lines += [f"| {s['row'] + 1} | {s['file']} | {s['reason']} |" for s in skipped]
    (out / "report.md").write_text("\n".join(lines) + "\n")
    return result


def prepare(manifest: str | Path, out: str | Path, stack: EncoderStack, frames: int, height: int, width: int,
            shard_size: int = 256, batch_size: int = 8, progress: bool = True,
            read_video: Callable | None = None) -> dict:
    """Encode every usable manifest row into the cache at `out` (resuming after its last complete shard).
    Returns {"items", "rows", "skipped": [{"row", "file", "reason"}]}; writes report.json and report.md."""
    from vpae.eval.video import read_video as _read
    read_video = read_video or _read

    def load(_i, r):
        return clip_tensor(read_video(r["video"])[0], frames, height, width), str(r["caption"])

    def encode(items):
        video = torch.stack([v for v, _ in items])
        return stack.codec.encode(video), make_conditioning(video, [c for _, c in items], stack.text_encoder,
                                                            stack.image_encoder, stack.codec, frames)
    return fill_cache(read_manifest(manifest), out, stack.sizes, load, encode, shard_size, batch_size, "prepare", progress)
