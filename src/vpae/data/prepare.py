"""`vpae data prepare`: a manifest of videos -> the latent cache that training reads (vpae.data.cache).

Manifest: CSV with a header, or JSONL; fields `video` (path, relative to the manifest's folder; any container
PyAV opens, or a GIF), `caption`, optional `image` (the image-to-video condition, resized and cropped as the
clip; default: the clip's first frame; unused by a text-to-video stack). Each video gives one clip: its first
`frames` frames (decoding stops there), resized so the short side fits and centre-cropped to (height, width),
in [-1, 1]; then the stack's codec, text and image encoders make (latents, Conditioning) and CacheWriter
stores them (a text-to-video stack, with no image encoder, stores no image condition).

Robust by construction: an unreadable, corrupt or too-short video (or a missing or unreadable condition image)
is skipped and listed with its reason in `report.json` / `report.md` (and in `skipped.jsonl` as soon as it is
found), never fatal; shards are published atomically with the number of manifest rows they cover, so a killed
run resumes after the last complete shard, never leaves a half-written one, and its report still lists the rows
skipped before the kill. A manifest with no usable row is an error.

Under torchrun (WORLD_SIZE > 1) the ranks split the work and write the cache one process would write: first
every rank loads its share of the rows (i = rank, rank + N, ...) only to learn which are skipped; from the
gathered skips every rank derives the one-process layout (which rows form which encoded batch and which shard,
`plan_shards`); shard j is then encoded and published by rank j mod N, and rank 0 writes the index and the
report after a barrier. The layout is stored in `plan.json` while a run is under way, so rerunning a killed run
keeps the shards it published.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from vpae.codecs import make_conditioning
from vpae.data.cache import CacheWriter, _write_json
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

    def to(self, device: str | torch.device) -> "EncoderStack":
        """Move the encoders that can move (nn.Modules, or objects with their own `to`); the rest (e.g. a
        caption bank, a lookup table) stay on the CPU, and make_conditioning moves their outputs."""
        for part in (self.codec, self.text_encoder, self.image_encoder):
            if part is not None and callable(getattr(part, "to", None)):
                part.to(device)
        return self


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
               shard_size: int = 256, batch_size: int = 8, desc: str = "prepare", progress: bool = True,
               world=None) -> dict:
    """The loop `prepare` and `synthesize` share: load(i, row) -> one item (raises VpaeError for a row to skip),
    encode(items) -> (latents, Conditioning) for a batch; resumes after the cache's last complete shard, keeps
    shard boundaries at whole encoded batches (each shard records the rows it covers), and writes report.json
    and report.md. Returns {"items", "rows", "skipped": [{"row", "file", "reason"}]}. With a distributed
    `world` (vpae.training.parallel.World) the ranks share the work and write the same cache
    (fill_cache_ranks)."""
    if world is not None and world.distributed:
        return fill_cache_ranks(rows, out, sizes, load, encode, shard_size, batch_size, world, desc, progress)
    out = Path(out)
    writer = CacheWriter(out, sizes, shard_size)
    # A killed multi-rank run's layout: the shards written here may differ from it, so it no longer vouches for
    # the shard files past the index.
    (out / PLAN).unlink(missing_ok=True)
    start, skipped = _resume_point(out, writer.index)
    skips = _SkipLog(out, skipped)
    pending: list = []

    def encode_pending():
        if pending:
            _encode_into(writer, encode, pending)
            pending.clear()

    for i in tqdm(range(start, len(rows)), desc=desc, disable=not progress, initial=start, total=len(rows)):
        try:
            pending.append(load(i, rows[i]))
        except VpaeError as e:  # unreadable, corrupt, too short, missing: listed, never fatal
            skips.add({"row": i, "file": _row_file(rows[i]), "reason": str(e)})
            continue
        writer.rows_done = i + 1
        if len(pending) == batch_size or len(writer.pending) + len(pending) >= shard_size:
            encode_pending()
    encode_pending()
    writer.rows_done = len(rows)
    writer.flush()
    return _write_report(out, desc, writer.items, len(rows), skips.skipped)


def _row_file(row: dict) -> str | None:
    return row.get("video") or row.get("image")


SKIPS = "skipped.jsonl"


class _SkipLog:
    """The skipped rows of a cache, one JSON line each in skipped.jsonl, appended as they are found, so a killed
    run's rerun reports the rows skipped before the kill (it resumes after them and never sees them again).
    Opening keeps `skipped` (the skips of the rows already covered) and drops the rest, which are checked again."""

    def __init__(self, out: Path, skipped: list[dict]):
        self.path, self.skipped = out / SKIPS, list(skipped)
        tmp = self.path.with_name(SKIPS + f".tmp-{os.getpid()}")
        tmp.write_text("".join(json.dumps(s) + "\n" for s in self.skipped))
        os.replace(tmp, self.path)

    def add(self, skip: dict) -> None:
        self.skipped.append(skip)
        with self.path.open("a") as f:
            f.write(json.dumps(skip) + "\n")


def _write_report(out: Path, desc: str, items: int, rows: int, skipped: list[dict]) -> dict:
    result = {"items": items, "rows": rows, "skipped": skipped}
    (out / "report.json").write_text(json.dumps(result, indent=1))
    lines = [f"# vpae data {desc}: {items} clips from {rows} rows, {len(skipped)} skipped", ""]
    lines += ["| row | file | reason |", "|---|---|---|"]
    lines += [f"| {s['row'] + 1} | {s['file']} | {s['reason']} |" for s in skipped]
    (out / "report.md").write_text("\n".join(lines) + "\n")
    return result


PLAN = "plan.json"


def _resume_point(out: Path, index: dict) -> tuple[int, list[dict]]:
    """The manifest rows the cache's complete shards cover, and the skips recorded for those rows."""
    start = index["shards"][-1].get("rows", 0) if index["shards"] else 0
    skipped = []
    if start and (out / SKIPS).is_file():
        for line in (out / SKIPS).read_text().splitlines():
            try:
                skipped.append(json.loads(line))
            except ValueError:  # the line a kill cut short: its row is past `start` and is checked again
                continue
    elif start and (out / "report.json").is_file():
        skipped = json.loads((out / "report.json").read_text())["skipped"]
    return start, [s for s in skipped if s["row"] < start]


def _encode_into(writer: CacheWriter, encode: Callable, items: list) -> None:
    with torch.no_grad():
        latents, cond = encode(items)
    n = len(items)
    text_len = cond.text_mask.sum(1) if cond.text_mask is not None else torch.full((n,), cond.text.shape[1])
    writer.add(latents, cond, text_len)


def plan_shards(usable: list[int], rows: int, shard_size: int, batch_size: int) -> list[dict]:
    """The shards fill_cache writes on one process for these usable row numbers (ascending; skipped rows left
    out), each {"batches": [[row, ...], ...] as encoded together, "rows": manifest rows covered once published}:
    a batch is encoded when it holds batch_size items or completes a shard, and a shard records the rows up to
    its last item, the last shard all `rows`."""
    shards, batches, batch, filled = [], [], [], 0
    for i in usable:
        batch.append(i)
        if len(batch) == batch_size or filled + len(batch) >= shard_size:
            batches.append(batch)
            filled, batch = filled + len(batch), []
            if filled == shard_size:
                shards.append({"batches": batches, "rows": i + 1})
                batches, filled = [], 0
    if batch:
        batches.append(batch)
    if batches:
        shards.append({"batches": batches, "rows": rows})
    return shards


def fill_cache_ranks(rows: list[dict], out: str | Path, sizes: ConditionSizes, load: Callable, encode: Callable,
                     shard_size: int, batch_size: int, world, desc: str = "prepare", progress: bool = True) -> dict:
    """fill_cache on the N ranks of `world` (every rank calls it with the same arguments; `out` must be a
    folder every rank sees). Returns the same dict on every rank; rank 0 writes index.json and the report."""
    out = Path(out)
    index = CacheWriter(out, sizes).index  # checks the sizes of an existing cache
    start, skipped = _resume_point(out, index)
    mine = range(start + world.rank, len(rows), world.size)
    found = []
    for i in tqdm(mine, desc=f"{desc}: check", disable=not (progress and world.main)):
        try:
            load(i, rows[i])
        except VpaeError as e:
            found.append({"row": i, "file": _row_file(rows[i]), "reason": str(e)})
    found = [s for part in _gather(world, found) for s in part]
    skipped += sorted(found, key=lambda s: s["row"])
    if world.main:  # the skips a later run resumes from, as a one-process run keeps them
        _SkipLog(out, skipped)
    bad = {s["row"] for s in skipped}
    shards = plan_shards([i for i in range(start, len(rows)) if i not in bad], len(rows), shard_size, batch_size)
    first = len(index["shards"])
    names = [f"shard_{first + k:05d}.safetensors" for k in range(len(shards))]
    plan = {"start": start, "first": first, "shard_size": shard_size, "batch_size": batch_size, "shards": shards}
    keep = False
    if world.main:
        # Shard files past the index are complete (published atomically) and were written under the layout in
        # plan.json, if any: kept when it is this layout, deleted otherwise (before the new layout is stored).
        plan_file = out / PLAN
        keep = plan_file.is_file() and json.loads(plan_file.read_text()) == plan
        for f in out.glob("shard_*.safetensors"):
            j = int(f.name[len("shard_"):-len(".safetensors")])
            if j >= first and not (keep and j < first + len(shards)):
                f.unlink()
        _write_json(plan_file, plan)
        for tmp in out.glob(".tmp-shard_*"):
            shutil.rmtree(tmp, ignore_errors=True)
    keep = world.broadcast(keep)

    own = [k for k in range(len(shards)) if k % world.size == world.rank
           and not (keep and (out / names[k]).is_file())]
    bar = tqdm(total=sum(len(b) for k in own for b in shards[k]["batches"]), desc=desc,
               disable=not (progress and world.main))
    for k in own:
        # One shard through its own CacheWriter (the same tensors as the one-process writer's), then renamed in.
        tmp = out / f".tmp-shard_{first + k:05d}-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        writer = CacheWriter(tmp, sizes, shard_size)
        for batch in shards[k]["batches"]:
            try:
                items = [load(i, rows[i]) for i in batch]
            except VpaeError as e:
                raise PrepareError(f"a manifest row changed while preparing (readable when checked, now: {e}); "
                                   f"rerun") from None
            _encode_into(writer, encode, items)
            bar.update(len(batch))
        writer.flush()
        os.replace(tmp / "shard_00000.safetensors", out / names[k])
        shutil.rmtree(tmp, ignore_errors=True)
    bar.close()
    world.barrier()

    index["shards"] += [{"file": name, "count": sum(map(len, s["batches"])), "rows": s["rows"]}
                        for name, s in zip(names, shards)]
    items = sum(s["count"] for s in index["shards"])
    result = {"items": items, "rows": len(rows), "skipped": skipped}
    if world.main:
        if shards:  # as CacheWriter, which writes the index with its first shard
            _write_json(out / "index.json", index)
        result = _write_report(out, desc, items, len(rows), skipped)
        (out / PLAN).unlink()
    world.barrier()  # the cache is complete when any rank returns
    return result


def _gather(world, obj) -> list:
    """Every rank's obj, in rank order, on every rank."""
    import torch.distributed as dist
    parts = [None] * world.size
    dist.all_gather_object(parts, obj)
    return parts


def prepare(manifest: str | Path, out: str | Path, stack: EncoderStack, frames: int, height: int, width: int,
            shard_size: int = 256, batch_size: int = 8, progress: bool = True,
            read_video: Callable | None = None, device: str | torch.device = "cpu", world=None) -> dict:
    """Encode every usable manifest row into the cache at `out` (resuming after its last complete shard), the
    clips on `device` (where the stack's encoders are). Under a distributed `world` the ranks share the rows
    and write the same cache (fill_cache_ranks). With an image encoder (image-to-video) a row's condition is its
    `image` (resized and cropped as the clip) or else the clip's first frame; a text-to-video stack stores no
    condition and reads no image. read_video(path, max_frames) -> (uint8 (F, H, W, 3), fps).
    Returns {"items", "rows", "skipped": [{"row", "file", "reason"}]}; writes report.json and report.md.
    Raises PrepareError when no row is usable (the report lists why)."""
    from vpae.eval.video import read_image
    from vpae.eval.video import read_video as _read
    read_video = read_video or _read
    i2v = stack.image_encoder is not None

    def load(_i, r):
        clip = clip_tensor(read_video(r["video"], max_frames=frames)[0], frames, height, width)
        image = None
        if i2v and r.get("image"):
            image = clip_tensor(read_image(r["image"])[None], 1, height, width)[:, 0]
        return clip, str(r["caption"]), image

    def encode(items):
        video = torch.stack([v for v, _, _ in items]).to(device)
        captions = [c for _, c, _ in items]
        if not i2v:  # text-to-video: no image tokens, no first-frame latent
            return stack.codec.encode(video), make_conditioning(None, captions, stack.text_encoder)
        condition = torch.stack([v[:, 0] if im is None else im for v, _, im in items]).to(device)
        return stack.codec.encode(video), make_conditioning(condition, captions, stack.text_encoder,
                                                            stack.image_encoder, stack.codec, frames)
    rows = read_manifest(manifest)
    clip = {"frames": frames, "height": height, "width": width}
    index_file = Path(out) / "index.json"
    held = json.loads(index_file.read_text()).get("clip") if index_file.is_file() else None
    if held is not None and held != clip:
        raise PrepareError(f"{out} holds clips of {held['frames']} x {held['height']} x {held['width']}, not "
                           f"{frames} x {height} x {width}; prepare into a new folder, or use the cache's size")
    result = fill_cache(rows, out, stack.sizes, load, encode, shard_size, batch_size, "prepare", progress, world)
    if (world is None or world.main) and index_file.is_file():  # the clip size a trained model's vpae.json records
        _write_json(index_file, {**json.loads(index_file.read_text()), "clip": clip})
    if result["items"] == 0:
        reasons = "; ".join(f"row {s['row'] + 1}: {s['reason']}" for s in result["skipped"][:3])
        more = f" (and {len(result['skipped']) - 3} more)" if len(result["skipped"]) > 3 else ""
        raise PrepareError(f"no usable clip in {manifest} ({len(rows)} rows): {reasons or 'the manifest is empty'}"
                           f"{more}; every skip is listed in {Path(out) / 'report.md'}")
    return result
