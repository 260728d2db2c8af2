"""Name -> feature network: what each entry is (tier, role, whether it needs a weight file), and
`build`, which instantiates an entry once per (name, file, device)."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from vpae.eval.feature_nets.base import OFFLINE, REFERENCE
from vpae.eval.feature_nets.flow import AmtInterpolator, DISFlow, FlowInterpolator, RaftFlow
from vpae.eval.feature_nets.i3d import I3DFeatures
from vpae.eval.feature_nets.image import ClipB32Features, DinoFeatures, DreamSimFeatures, EffNetLite0Features
from vpae.eval.feature_nets.loading import check_file
from vpae.eval.feature_nets.quality import LaionAesthetic, MusiqQuality, NiqeQuality


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
        check_file(path, name)
    return _build_cached(name, str(Path(path).expanduser().resolve()) if path else None, str(device))
