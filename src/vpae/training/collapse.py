"""Collapse detectors for image-to-video distillation, computed on every training step's generated batch.

Users of other distillation frameworks most often report I2V runs that collapse to static video, to a copy
of the condition frame, to an object that fades away, or to flashing colours. Each statistic below compares
the generator's samples x0 (B, C, F, H, W) with the real batch of the same step, in the same (latent)
space, so it is scale-free and works for pixels (toy world) and Wan VAE latents alike:

- motion_ratio:      mean |x_{f+1} - x_f| of the samples / of the data. Static video -> 0; noise or flashing -> >> 1.
- first_frame_drift: mean over f >= 1 of |x_f - x_0| of the samples / of the data. A copy of the first frame -> 0.
- flash_level:       std over frames of each frame's mean value (per channel) of the samples, in units of the
                     data's pixel std. Global brightness or colour flicker -> large; the data's own level is
                     near 0 (a moving object barely changes a frame's mean), so this one is not a ratio to the
                     data's value, which would be a ratio of two tiny numbers.
- contrast_ratio:    (spatial std of the last frame / of the first) for the samples, divided by the same for
                     the data. A vanishing object (the last frame turns into flat background) -> < 1.

`collapse_flags` turns them into named alarms with thresholds far from 1 (a healthy run sits near 1 on
each), and the training methods log both as `collapse/*`.
"""

from __future__ import annotations

import torch

Tensor = torch.Tensor

THRESHOLDS = {
    "static": ("motion_ratio", "<", 0.25),
    "first_frame_copy": ("first_frame_drift", "<", 0.25),
    "flashing": ("flash_level", ">", 0.2),
    "vanishing_object": ("contrast_ratio", "<", 0.5),
}

_EPS = 1e-8


def _parts(x: Tensor) -> dict[str, Tensor]:
    """Batch means the ratios are made of: means over samples, so the means over micro-batches and over ranks
    (equal shares) are the whole batch's, and the ratios are taken after averaging (finish_collapse)."""
    x = x.detach().float()
    spatial = x.flatten(3).std(dim=3, unbiased=False).mean(dim=(0, 1))             # (F,)
    return {"motion": (x[:, :, 1:] - x[:, :, :-1]).abs().mean(),
            "drift": (x[:, :, 1:] - x[:, :, :1]).abs().mean(),
            "flash": x.mean(dim=(3, 4)).std(dim=2, unbiased=False).mean(),          # (B, C, F) -> std over F
            "first": spatial[0], "last": spatial[-1], "mean": x.mean(), "square": (x * x).mean()}


PARTS = "collapse_parts/"


def collapse_parts(x0_gen: Tensor, x_data: Tensor) -> dict[str, float]:
    """The batch means of a generated and a real batch (both (B, C, F, H, W), F >= 2) that finish_collapse
    turns into the four ratios."""
    if x0_gen.ndim != 5 or x0_gen.shape[2] < 2:
        return {}
    out = {f"{PARTS}gen_{k}": float(v) for k, v in _parts(x0_gen).items()}
    out.update({f"{PARTS}data_{k}": float(v) for k, v in _parts(x_data).items()})
    return out


def finish_collapse(stats: dict[str, float]) -> dict[str, float]:
    """stats with its collapse parts replaced by the ratios and `collapse/alarms`."""
    parts = {k[len(PARTS):]: v for k, v in stats.items() if k.startswith(PARTS)}
    if not parts:
        return stats
    out = {k: v for k, v in stats.items() if not k.startswith(PARTS)}
    g = {k[4:]: v for k, v in parts.items() if k.startswith("gen_")}
    d = {k[5:]: v for k, v in parts.items() if k.startswith("data_")}
    data_std = max(d["square"] - d["mean"] ** 2, 0.0) ** 0.5
    contrast = (g["last"] / (g["first"] + _EPS)) / (d["last"] / (d["first"] + _EPS) + _EPS)
    ratios = {"collapse/motion_ratio": g["motion"] / (d["motion"] + _EPS),
              "collapse/first_frame_drift": g["drift"] / (d["drift"] + _EPS),
              "collapse/flash_level": g["flash"] / (data_std + _EPS),
              "collapse/contrast_ratio": contrast}
    ratios["collapse/alarms"] = float(len(collapse_flags(ratios)))
    out.update(ratios)
    return out


def collapse_stats(x0_gen: Tensor, x_data: Tensor) -> dict[str, float]:
    """The four ratios of a generated batch against a real batch (both (B, C, F, H, W), F >= 2)."""
    return {k: v for k, v in finish_collapse(collapse_parts(x0_gen, x_data)).items() if k != "collapse/alarms"}


def collapse_flags(stats: dict[str, float]) -> list[str]:
    """Names of the collapse modes whose statistic crossed its threshold (THRESHOLDS)."""
    out = []
    for name, (key, op, thr) in THRESHOLDS.items():
        v = stats.get(f"collapse/{key}")
        if v is not None and (v < thr if op == "<" else v > thr):
            out.append(name)
    return out


def collapse_logs(x0_gen: Tensor, x_data: Tensor) -> dict[str, float]:
    """What a training step logs of its generated batch: the collapse parts, turned into the ratios and
    `collapse/alarms` by the loop once averaged over micro-batches and ranks (finish_collapse)."""
    return collapse_parts(x0_gen, x_data)
