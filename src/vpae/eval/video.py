"""Video conventions, converters and file I/O for evaluation.

Two in-memory conventions are used across the project:

* torch float32 ``(3, F, H, W)`` in ``[-1, 1]`` (what samplers/codecs produce), and
* numpy uint8 ``(F, H, W, 3)`` (what files hold and what every metric here consumes).

``to_uint8`` / ``to_tensor`` convert between them. ``read_video`` reads GIFs and the containers PyAV opens
(mp4, mov, mkv, webm, avi, ...), ``write_video`` writes mp4 and gif; both raise :class:`VideoError` (a
``ValueError``) with the offending path on anything unreadable.
Metrics resize the uint8 frames as float tensors, as VBench's ``load_video`` does (``torch.Tensor`` of the
uint8 frames is float32), without rounding them back (see ``vpae.eval.preprocess``).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from vpae.errors import VpaeError

# the file names `vpae eval` takes for videos in a method's folder: GIF, and the common containers PyAV reads
VIDEO_EXTS = (".mp4", ".gif", ".mov", ".mkv", ".webm", ".avi", ".m4v")
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


class EvalError(VpaeError, ValueError):
    """An expected evaluation failure (bad input or option); the message names the problem."""


class VideoError(EvalError):
    """A video (or image) that cannot be read or does not follow the conventions."""


def to_uint8(video) -> np.ndarray:
    """Any supported video -> numpy uint8 (F, H, W, 3).

    Accepts a torch tensor (3, F, H, W) in [-1, 1] (values are clamped), a numpy uint8 (F, H, W, 3)
    array, a numpy float array (F, H, W, 3) in [0, 1], or a list of (H, W, 3) uint8 frames (all the
    same size). Raises VideoError otherwise.
    """
    if isinstance(video, torch.Tensor):
        if video.ndim != 4 or video.shape[0] != 3:
            raise VideoError(f"a torch video must be (3, F, H, W) in [-1, 1], got shape {tuple(video.shape)}")
        v = ((video.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
        return np.ascontiguousarray(v.permute(1, 2, 3, 0).cpu().numpy())
    if isinstance(video, (list, tuple)):
        if not video:
            raise VideoError("empty frame list")
        shapes = {np.asarray(f).shape for f in video}
        if len(shapes) != 1:
            raise VideoError(f"frames have mismatched sizes: {sorted(shapes)}")
        video = np.stack([np.asarray(f) for f in video])
    if isinstance(video, np.ndarray):
        if video.ndim != 4 or video.shape[-1] != 3:
            raise VideoError(f"a numpy video must be (F, H, W, 3), got shape {video.shape}")
        if video.shape[0] < 1:
            raise VideoError("video has no frames")
        if video.dtype == np.uint8:
            return video
        if np.issubdtype(video.dtype, np.floating):
            return (np.clip(video, 0, 1) * 255).round().astype(np.uint8)
        raise VideoError(f"unsupported numpy dtype {video.dtype}")
    raise VideoError(f"unsupported video type {type(video).__name__}")


def to_tensor(video) -> torch.Tensor:
    """Any supported video -> torch float32 (3, F, H, W) in [-1, 1]."""
    if isinstance(video, torch.Tensor) and video.ndim == 4 and video.shape[0] == 3 and video.is_floating_point():
        return video.float()
    v = to_uint8(video)
    return torch.from_numpy(v).permute(3, 0, 1, 2).float().div(127.5).sub(1.0)


def image_to_uint8(image) -> np.ndarray:
    """An image as numpy uint8 (H, W, 3): accepts uint8 (H, W, 3) / (H, W), torch (3, H, W) in [-1, 1],
    or a path."""
    if isinstance(image, (str, os.PathLike)):
        return read_image(image)
    if isinstance(image, torch.Tensor):
        if image.ndim != 3 or image.shape[0] != 3:
            raise VideoError(f"a torch image must be (3, H, W) in [-1, 1], got {tuple(image.shape)}")
        return to_uint8(image[:, None])[0]
    a = np.asarray(image)
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, -1)
    if a.ndim != 3 or a.shape[-1] not in (3, 4):
        raise VideoError(f"an image must be (H, W, 3), got shape {a.shape}")
    a = a[..., :3]
    if a.dtype != np.uint8:
        a = (np.clip(a, 0, 1) * 255).round().astype(np.uint8)
    return np.ascontiguousarray(a)


def read_image(path) -> np.ndarray:
    from PIL import Image

    path = Path(path)
    if not path.is_file():
        raise VideoError(f"condition image not found: {path}")
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB")).copy()
    except Exception as e:  # noqa: BLE001 - PIL raises many types
        raise VideoError(f"cannot read image {path}: {e}") from e


def read_video(path, max_frames: int | None = None) -> tuple[np.ndarray, float]:
    """Read a video file -> (uint8 (F, H, W, 3), fps): a GIF through Pillow, any other container FFmpeg
    knows (.mp4, .mov, .mkv, .webm, .avi, ...) through PyAV. With `max_frames`, decoding stops after that many
    frames (a long clip is never held whole in memory)."""
    path = Path(path)
    if not path.is_file():
        raise VideoError(f"video file not found: {path}")
    try:
        if path.suffix.lower() == ".gif":
            frames, fps = _read_gif(path, max_frames)
        else:
            frames, fps = _read_av(path, max_frames)
    except VideoError:
        raise
    except Exception as e:  # noqa: BLE001 - decoders raise many types
        raise VideoError(f"cannot decode video {path}: {type(e).__name__}: {e}") from e
    if not frames:
        raise VideoError(f"video {path} has no decodable frames")
    shapes = {f.shape for f in frames}
    if len(shapes) != 1:
        raise VideoError(f"video {path} has frames of mismatched sizes: {sorted(shapes)}")
    return np.stack(frames), fps


def _read_av(path: Path, max_frames: int | None) -> tuple[list[np.ndarray], float]:
    import av

    try:
        container = av.open(str(path))
    except Exception as e:  # noqa: BLE001 - av.error.* for unknown formats, invalid data, ...
        raise VideoError(f"PyAV (FFmpeg) cannot open {path} as a video: {type(e).__name__}: {e}") from e
    with container:
        if not container.streams.video:
            raise VideoError(f"{path} has no video stream")
        stream = container.streams.video[0]
        fps = float(stream.average_rate) if stream.average_rate else 8.0
        frames = []
        for f in container.decode(stream):
            frames.append(f.to_ndarray(format="rgb24"))
            if max_frames is not None and len(frames) >= max_frames:
                break  # the rest is never decoded
    return frames, fps


def _read_gif(path: Path, max_frames: int | None = None) -> tuple[list[np.ndarray], float]:
    from PIL import Image, ImageSequence

    with Image.open(path) as im:
        default = im.info.get("duration") or 125
        frames, durations = [], []
        for f in ImageSequence.Iterator(im):
            # every duration sets the frame rate, but each stored frame gives at least one frame, so only the
            # first max_frames are kept as arrays (Pillow decodes one frame at a time)
            if max_frames is None or len(frames) < max_frames:
                frames.append(np.asarray(f.convert("RGB")).copy())
            durations.append(float(f.info.get("duration") or default))
    # GIF writers (Pillow) merge identical consecutive frames into one frame shown longer: expand them back,
    # so a video with a repeated frame reads with its frame count
    base = min(durations)
    frames = [fr for fr, d in zip(frames, durations) for _ in range(max(1, round(d / base)))]
    return frames[:max_frames], 1000.0 / base


def write_video(path, video, fps: float = 8.0) -> Path:
    """Write any supported video to .mp4 (H.264 via imageio-ffmpeg) or .gif (imageio/Pillow)."""
    import imageio.v2 as imageio

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    frames = to_uint8(video)
    ext = path.suffix.lower()
    if ext == ".gif":
        imageio.mimsave(path, list(frames), duration=1000.0 / fps, loop=0)
    elif ext == ".mp4":
        h, w = frames.shape[1:3]
        if h % 2 or w % 2:  # yuv420p needs even sizes
            frames = np.pad(frames, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode="edge")
        imageio.mimsave(path, list(frames), fps=fps, codec="libx264", quality=8, macro_block_size=1,
                        ffmpeg_log_level="error")
    else:
        raise VideoError(f"unsupported video extension {ext!r} (use .mp4 or .gif)")
    return path
