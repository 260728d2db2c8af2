"""A procedural toy video world whose ground truth is known: one coloured shape moving in a straight
line over a low-contrast textured background, with a caption composed from its parameters.

Conventions (as everywhere in vpae): a video is float32 (3, F, H, W) or (B, 3, F, H, W) in [-1, 1]
with F = 4n + 1 (the Wan VAE's temporal stride is 4).

Determinism: every video is a pure function of a `ToyVideoParams`, and params are drawn from a numpy
Generator seeded by a tuple of integers. Three disjoint seed spaces are used, tagged by the first
entropy word: `batch` (tag 0), `stream` (tag 2) and `heldout` (tag 1). Start positions are continuous
(sub-pixel, anti-aliased), so two different seeds practically never give the same video.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from typing import Iterator, Sequence

import numpy as np
import torch

Tensor = torch.Tensor

# Named colours, RGB in [0, 1]. Chosen far apart from each other and from the dark grey backgrounds
# (pairwise RGB distance >= 0.6, distance to any background level >= 0.6), so colour tracking is reliable.
COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (0.95, 0.15, 0.15),
    "green": (0.15, 0.85, 0.20),
    "blue": (0.20, 0.35, 1.00),
    "yellow": (0.95, 0.90, 0.15),
    "white": (0.95, 0.95, 0.95),
    "magenta": (0.90, 0.20, 0.90),
}
SHAPES: tuple[str, ...] = ("square", "circle", "triangle", "diamond")
SIZES: tuple[str, ...] = ("small", "large")
BACKGROUNDS: tuple[str, ...] = ("plain", "hstripes", "vstripes", "checker")
DIRECTIONS: dict[str, tuple[int, int]] = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
SPEEDS: tuple[str, ...] = ("slow", "fast")

SPEED_WORDS = {"slow": "slowly", "fast": "quickly"}
# Captions that name only the axis of motion, not its sign (ToyWorldConfig.caption_sign < 1).
AXES: dict[str, tuple[str, str]] = {"horizontal": ("left", "right"), "vertical": ("up", "down")}
AXIS_PHRASES = {"horizontal": "left or right", "vertical": "up or down"}


def axis_of(direction: str) -> str:
    return next(a for a, ds in AXES.items() if direction in ds)
BACKGROUND_WORDS = {
    "plain": "plain dark background",
    "hstripes": "horizontally striped background",
    "vstripes": "vertically striped background",
    "checker": "checkered background",
}

# The farthest any shape reaches from its centre, in units of its radius (the triangle's apex).
SHAPE_EXTENT = 1.3

TRAIN_BATCH_TAG = 0
HELDOUT_TAG = 1
TRAIN_STREAM_TAG = 2
VALIDATION_TAG = 3


@dataclass(frozen=True)
class ToyWorldConfig:
    """Size and appearance of the toy world.

    frames:         number of frames F; must be 4n + 1 (Wan VAE temporal stride 4). Default 9.
    height, width:  frame size in pixels; each >= 16 and a multiple of 8 (so the 8x8 image patches and
                    the Wan VAE's 8x spatial stride tile it; the Wan codec further needs multiples of 16).
    small_radius, large_radius: object radius as a fraction of min(H, W) (3x3 px and 5x5 px at 32x32).
    slow_travel, fast_travel:   distance the object travels over the whole clip, as a fraction of
                    min(H, W). At 32x32 with 9 frames: slow = 1 px/frame, fast = 2 px/frame.
    bounce:         False (default): start positions are drawn so the object never touches a border and
                    moves in a straight line. True: start anywhere, reflect at the borders (the caption
                    then says "and bounces back" when a reflection happens in the clip).
    bg_dark, bg_light: the two grey levels (in [0, 1]) of the textured backgrounds; "plain" uses bg_dark.
                    Low contrast on purpose: the object must stay the most salient thing in the frame.
    stripe_period:  period of stripes / checker squares as a fraction of min(H, W) (8 px at 32).
    supersample:    anti-aliasing factor (s x s samples per pixel); 1 disables anti-aliasing.
    pixel_grid:     False (default): continuous (sub-pixel) positions. True: positions on pixel centres,
                    speeds rounded to whole pixels per frame and borders on pixel centres, so the object is
                    the same raster in every frame (anti-aliasing then cannot change its area or colour
                    from frame to frame, which at 16 px made the ground truth's own persistence 0.92).
    caption_speed:  True (default): the caption states the speed ("quickly") and a bounce. False: it states
                    neither, so for one first frame and caption every speed is equally likely and the
                    video distribution is multimodal where the caption is silent (docs/TOY_WORLD.md).
    caption_sign:   probability that a caption states the direction ("moves left"); otherwise it names only
                    the axis ("moves left or right") and both directions along it are equally likely (1.0:
                    every caption states it). A second, wide-apart kind of mode: the two
                    directions are 2 x speed apart from the first frame on.
    shapes, colours, sizes, backgrounds, directions, speeds: the vocabularies to sample from (subsets of
                    the module constants; narrow them to make an easier world).
    """

    frames: int = 9
    height: int = 32
    width: int = 32
    small_radius: float = 3.0 / 32
    large_radius: float = 5.0 / 32
    slow_travel: float = 8.0 / 32
    fast_travel: float = 16.0 / 32
    bounce: bool = False
    bg_dark: float = 0.16
    bg_light: float = 0.26
    stripe_period: float = 8.0 / 32
    supersample: int = 4
    pixel_grid: bool = False
    caption_speed: bool = True
    caption_sign: float = 1.0
    shapes: tuple[str, ...] = SHAPES
    colours: tuple[str, ...] = tuple(COLOURS)
    sizes: tuple[str, ...] = SIZES
    backgrounds: tuple[str, ...] = BACKGROUNDS
    directions: tuple[str, ...] = tuple(DIRECTIONS)
    speeds: tuple[str, ...] = SPEEDS

    def __post_init__(self) -> None:
        if self.frames < 1 or (self.frames - 1) % 4 != 0:
            raise ValueError(f"frames must be 4n+1 (1, 5, 9, 13, ...) for the Wan VAE, got {self.frames}")
        for name in ("height", "width"):
            v = getattr(self, name)
            if v < 16 or v % 8 != 0:
                raise ValueError(f"{name} must be >= 16 and a multiple of 8, got {v}")
        if not 0 < self.small_radius <= self.large_radius:
            raise ValueError("need 0 < small_radius <= large_radius")
        if not 0 < self.slow_travel < self.fast_travel:
            raise ValueError("need 0 < slow_travel < fast_travel")
        if not 0 <= self.bg_dark <= self.bg_light <= 0.4:
            raise ValueError("need 0 <= bg_dark <= bg_light <= 0.4 (backgrounds must stay dark)")
        if not 0.0 <= self.caption_sign <= 1.0:
            raise ValueError(f"caption_sign is a probability in [0, 1], got {self.caption_sign}")
        if self.caption_sign < 1.0 and any(
                len([d for d in ds if d in self.directions]) == 1 for ds in AXES.values()
                if any(d in self.directions for d in ds)):
            raise ValueError("caption_sign < 1 needs both directions of every axis in `directions`")
        if self.supersample < 1:
            raise ValueError("supersample must be >= 1")
        if self.stripe_period <= 0:
            raise ValueError("stripe_period must be > 0")
        vocab = {"shapes": SHAPES, "colours": tuple(COLOURS), "sizes": SIZES, "backgrounds": BACKGROUNDS,
                 "directions": tuple(DIRECTIONS), "speeds": SPEEDS}
        for name, allowed in vocab.items():
            vals = getattr(self, name)
            if not vals or any(v not in allowed for v in vals):
                raise ValueError(f"{name} must be a non-empty subset of {allowed}, got {vals}")
        if not self.bounce:
            # The largest object moving fast must fit its whole path inside the frame.
            span = min(self.height, self.width)
            need = 2 * (SHAPE_EXTENT * self.large_radius * span + 0.5) + self.fast_travel * span
            if need > span:
                raise ValueError(f"a large object moving fast needs {need:.1f} px but the frame is {span} px; "
                                 "use smaller radii / travel or bounce=True")

    @property
    def span(self) -> int:
        return min(self.height, self.width)

    @property
    def multimodal(self) -> bool:
        """Whether some captions leave the video open (the speed or the direction's sign unstated)."""
        return self.caption_sign < 1 or (not self.caption_speed and len(self.speeds) > 1)

    def radius_px(self, size: str) -> float:
        return (self.small_radius if size == "small" else self.large_radius) * self.span

    def speed_px(self, speed: str) -> float:
        """Pixels per frame."""
        travel = self.slow_travel if speed == "slow" else self.fast_travel
        v = travel * self.span / max(1, self.frames - 1)
        return float(max(1, round(v))) if self.pixel_grid else v


@dataclass
class ToyDataConfig:
    """The config section data.toy: the toy world's settings (the data section itself gives frames, height,
    width and text_tokens). Each value is checked when the section is built; that the world fits the frame is
    checked with the data section (ToyData.check_data)."""

    caption_bank: str = ""
    """Optional safetensors of precomputed caption embeddings (vpae caption-bank); used when the file exists,
    else captions are encoded live with the packaged MiniLM. Both give identical (fp16-rounded) values."""
    image_patch: int = 8
    """Patch size of the parameter-free image encoder (PatchImageEncoder)."""
    bounce: bool = False
    """False draws start positions so the path fits, which gives the direction away from the first frame for
    61 % of videos; True (the shipped teacher's world) starts anywhere and reflects at the borders, so the
    direction must be read from the caption (docs/TOY_WORLD.md, "Known leak")."""
    pixel_grid: bool = False
    """Positions and speeds on whole pixels, so the object is the same raster in every frame."""
    caption_speed: bool = True
    """True: captions state the speed. False: they state neither speed nor bounce, so every speed is equally
    likely for one caption and first frame: a multimodal world in which the teacher's one-step sample is the
    blurred average of the modes (docs/TOY_WORLD.md)."""
    caption_sign: float = 1.0
    """Probability that a caption states the direction ("moves left"); otherwise it names only the axis ("moves
    left or right"), so both directions are equally likely (a second, wide-apart kind of mode)."""
    speeds: tuple[str, ...] = ("slow", "fast")
    """The speeds videos are drawn with (one speed: the speed is not a mode)."""
    sizes: tuple[str, ...] = ("small", "large")
    """The object sizes videos are drawn with (a subset of small / large)."""
    small_radius: float = 3.0 / 32
    large_radius: float = 5.0 / 32
    """Object radius of each size as a fraction of min(height, width) (1.5 / 2.5 px at 16 px)."""
    slow_travel: float = 0.25
    fast_travel: float = 0.5
    """Distance travelled over the clip at each speed, as a fraction of min(height, width)."""

    def __post_init__(self) -> None:
        from vpae.config import ConfigError
        if self.image_patch < 1:
            raise ConfigError(f"data.toy.image_patch must be >= 1, got {self.image_patch}")
        if not 0.0 <= self.caption_sign <= 1.0:
            raise ConfigError(f"data.toy.caption_sign is a probability in [0, 1], got {self.caption_sign}")
        if not self.speeds or any(s not in SPEEDS for s in self.speeds):
            raise ConfigError(f"data.toy.speeds must be a non-empty list of slow / fast, got {list(self.speeds)}")
        if not self.sizes or any(s not in SIZES for s in self.sizes):
            raise ConfigError(f"data.toy.sizes must be a non-empty list of small / large, got {list(self.sizes)}")
        if not 0 < self.small_radius <= self.large_radius:
            raise ConfigError(f"need 0 < data.toy.small_radius <= data.toy.large_radius, got {self.small_radius}, "
                              f"{self.large_radius}")
        if not 0 < self.slow_travel < self.fast_travel:
            raise ConfigError(f"need 0 < data.toy.slow_travel < data.toy.fast_travel, got {self.slow_travel}, "
                              f"{self.fast_travel}")


WORLD_FIELDS = ("bounce", "pixel_grid", "caption_speed", "caption_sign", "speeds", "sizes", "small_radius",
                "large_radius", "slow_travel", "fast_travel")
"""The data.toy settings that shape the world (the others, caption_bank and image_patch, shape the encoders)."""


def world_config(data) -> ToyWorldConfig:
    """The toy world a config's data section describes: frames, height and width from `data`, the rest from
    its section data.toy (raises ValueError when the world cannot be drawn, e.g. a path that does not fit)."""
    t = data.toy
    kw = {k: getattr(t, k) for k in WORLD_FIELDS}
    return ToyWorldConfig(frames=data.frames, height=data.height, width=data.width,
                          **{k: tuple(v) if isinstance(v, (list, tuple)) else v for k, v in kw.items()})


@dataclass(frozen=True)
class ToyVideoParams:
    """Everything that determines one toy video (geometry in pixels, so a video can be re-rendered and
    checked from its params alone).

    shape, colour, size, background, direction, speed: the named attributes (the caption's words).
    x0, y0:    object centre at frame 0, in pixels (pixel j covers [j, j+1)).
    radius:    object radius in pixels (derived from `size`).
    speed_px:  displacement per frame in pixels (derived from `speed`).
    bg_phase:  offset of the background pattern in pixels.
    bounce:    whether the object reflects at the borders.
    pixel_grid: positions and reflection borders on pixel centres (ToyWorldConfig.pixel_grid).
    sign_stated: whether the caption names the direction (False: only its axis, ToyWorldConfig.caption_sign).
    """

    shape: str
    colour: str
    size: str
    background: str
    direction: str
    speed: str
    x0: float
    y0: float
    radius: float
    speed_px: float
    bg_phase: int = 0
    bounce: bool = False
    pixel_grid: bool = False
    sign_stated: bool = True

    def as_dict(self) -> dict:
        return asdict(self)

    @property
    def rgb(self) -> tuple[float, float, float]:
        return COLOURS[self.colour]

    @property
    def velocity(self) -> tuple[float, float]:
        dx, dy = DIRECTIONS[self.direction]
        return dx * self.speed_px, dy * self.speed_px


def _bounds(radius: float, size: int, pixel_grid: bool = False) -> tuple[float, float]:
    m = SHAPE_EXTENT * radius + 0.5
    if pixel_grid:  # the innermost pixel centres (j + 0.5) inside the margin
        return math.ceil(m - 0.5) + 0.5, math.floor(size - m - 0.5) + 0.5
    return m, size - m


def _reflect(p: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Fold positions into [lo, hi] (a triangle wave): reflection at the borders."""
    if hi <= lo:
        return np.full_like(p, (lo + hi) / 2)
    w = hi - lo
    q = np.mod(p - lo, 2 * w)
    return lo + np.where(q > w, 2 * w - q, q)


def trajectory(params: ToyVideoParams, frames: int, height: int, width: int) -> np.ndarray:
    """Object centre (x, y) in pixels for every frame: (F, 2)."""
    t = np.arange(frames, dtype=np.float64)
    vx, vy = params.velocity
    x = params.x0 + vx * t
    y = params.y0 + vy * t
    if params.bounce:
        x = _reflect(x, *_bounds(params.radius, width, params.pixel_grid))
        y = _reflect(y, *_bounds(params.radius, height, params.pixel_grid))
    return np.stack([x, y], axis=1)


def bounces(params: ToyVideoParams, frames: int, height: int, width: int) -> bool:
    """True if the object reflects at a border during the clip."""
    if not params.bounce:
        return False
    t = np.arange(frames)
    vx, vy = params.velocity
    straight = np.stack([params.x0 + vx * t, params.y0 + vy * t], 1)
    return not np.allclose(straight, trajectory(params, frames, height, width))


def caption(params: ToyVideoParams, cfg: ToyWorldConfig | None = None) -> str:
    """E.g. "a small red square moves left quickly over a checkered background"; with
    cfg.caption_speed False "a small red square moves left over a checkered background"; when the caption
    does not state the sign (params.sign_stated False) "... moves left or right over ..."."""
    motion = params.direction if params.sign_stated else AXIS_PHRASES[axis_of(params.direction)]
    s = f"a {params.size} {params.colour} {params.shape} moves {motion}"
    if cfg is not None and not cfg.caption_speed:
        return s + f" over a {BACKGROUND_WORDS[params.background]}"
    s += f" {SPEED_WORDS[params.speed]}"
    if cfg is not None and bounces(params, cfg.frames, cfg.height, cfg.width):
        s += " and bounces back"
    return s + f" over a {BACKGROUND_WORDS[params.background]}"


def parse_caption(text: str) -> dict[str, str]:
    """Recover the named attributes from a caption made by `caption` (inverse on the named fields; "speed"
    is absent when the caption does not state it)."""
    out: dict[str, str] = {}
    axis = [a for a, ph in AXIS_PHRASES.items() if f"moves {ph}" in text]
    if axis:  # an axis-only caption: "axis" instead of "direction"
        out["axis"] = axis[0]
        text = text.replace(f"moves {AXIS_PHRASES[axis[0]]}", "moves")
    words = text.replace(",", " ").split()
    keys = (("size", SIZES), ("colour", tuple(COLOURS)), ("shape", SHAPES)) + \
        ((("direction", tuple(DIRECTIONS)),) if not axis else ())
    for key, vocab in keys:
        hits = [w for w in words if w in vocab]
        if len(hits) != 1:
            raise ValueError(f"caption {text!r}: expected exactly one {key} word, found {hits}")
        out[key] = hits[0]
    sp = [k for k, w in SPEED_WORDS.items() if w in words]
    bg = [k for k, w in BACKGROUND_WORDS.items() if w in text]
    if len(sp) > 1 or len(bg) != 1:
        raise ValueError(f"caption {text!r}: cannot parse speed / background")
    out["background"] = bg[0]
    if sp:
        out["speed"] = sp[0]
    return out


def all_captions(cfg: ToyWorldConfig | None = None) -> list[str]:
    """Every caption the world can produce (e.g. to warm a text-encoder cache once)."""
    cfg = cfg or ToyWorldConfig()
    out = []
    for size in cfg.sizes:
        for colour in cfg.colours:
            for shape in cfg.shapes:
                motions = list(cfg.directions) if cfg.caption_sign > 0 else []
                if cfg.caption_sign < 1:
                    motions += [AXIS_PHRASES[a] for a, ds in AXES.items() if ds[0] in cfg.directions]
                for motion in motions:
                    for bg in cfg.backgrounds:
                        head = f"a {size} {colour} {shape} moves {motion}"
                        if not cfg.caption_speed:
                            out.append(head + f" over a {BACKGROUND_WORDS[bg]}")
                            continue
                        for speed in cfg.speeds:
                            s = head + f" {SPEED_WORDS[speed]}"
                            tails = ["", " and bounces back"] if cfg.bounce else [""]
                            out += [s + t + f" over a {BACKGROUND_WORDS[bg]}" for t in tails]
    return out


def caption_modes(params: ToyVideoParams, cfg: ToyWorldConfig) -> list[ToyVideoParams]:
    """Every video the caption and first frame allow, each with its probability under the world's sampler
    being equal: the params with each speed and direction the caption does not rule out (one entry,
    `params` itself, when the caption states both). Used by the oracle to judge samples of a multimodal world."""
    directions = [params.direction] if params.sign_stated else list(AXES[axis_of(params.direction)])
    speeds = [params.speed] if cfg.caption_speed else list(cfg.speeds)
    if directions == [params.direction] and speeds == [params.speed]:
        return [params]
    # Modes whose paths coincide are one mode: an object that starts against a wall reflects at once, so
    # "left" and "right" draw the same video (kept as `params` itself when it is one of them).
    out: list[tuple[ToyVideoParams, np.ndarray]] = []
    for d in directions:
        for s in speeds:
            m = replace(params, direction=d, speed=s, speed_px=float(cfg.speed_px(s)))
            path = trajectory(m, cfg.frames, cfg.height, cfg.width)
            same = next((i for i, (_, q) in enumerate(out) if np.allclose(q, path)), None)
            if same is None:
                out.append((m, path))
            elif m == params:
                out[same] = (m, path)
    return [m for m, _ in out]


def sample_params(rng: np.random.Generator, cfg: ToyWorldConfig | None = None) -> ToyVideoParams:
    """Draw one video's parameters. Deterministic given the generator state."""
    cfg = cfg or ToyWorldConfig()
    shape = cfg.shapes[rng.integers(len(cfg.shapes))]
    colour = cfg.colours[rng.integers(len(cfg.colours))]
    size = cfg.sizes[rng.integers(len(cfg.sizes))]
    background = cfg.backgrounds[rng.integers(len(cfg.backgrounds))]
    direction = cfg.directions[rng.integers(len(cfg.directions))]
    speed = cfg.speeds[rng.integers(len(cfg.speeds))]
    radius = cfg.radius_px(size)
    v = cfg.speed_px(speed)
    period = max(2, int(round(cfg.stripe_period * cfg.span)))
    bg_phase = int(rng.integers(period))
    dx, dy = DIRECTIONS[direction]
    travel = v * (cfg.frames - 1)
    pos = []
    for d, extent in ((dx, cfg.width), (dy, cfg.height)):
        lo, hi = _bounds(radius, extent, cfg.pixel_grid)
        if not cfg.bounce and d != 0:
            # the whole straight path stays inside [lo, hi]
            lo, hi = (lo + travel, hi) if d < 0 else (lo, hi - travel)
        if cfg.pixel_grid:  # a pixel centre in [lo, hi]
            pos.append(float(rng.integers(math.ceil(lo - 0.5), math.floor(hi - 0.5) + 1)) + 0.5)
        else:
            pos.append(float(rng.uniform(lo, hi)))
    # drawn last and only when it can vary, so worlds whose captions always state the sign keep their videos
    sign_stated = bool(rng.random() < cfg.caption_sign) if cfg.caption_sign < 1 else True
    return ToyVideoParams(shape=shape, colour=colour, size=size, background=background,
                          direction=direction, speed=speed, x0=pos[0], y0=pos[1], radius=float(radius),
                          speed_px=float(v), bg_phase=bg_phase, bounce=cfg.bounce,
                          pixel_grid=cfg.pixel_grid, sign_stated=sign_stated)


def _grid(n: int, s: int) -> np.ndarray:
    """Sample coordinates of n pixels with s x s supersampling: pixel j -> j + (k + 0.5) / s."""
    return (np.arange(n * s, dtype=np.float32) + 0.5) / s


def _pool(a: np.ndarray, s: int) -> np.ndarray:
    if s == 1:
        return a
    *lead, hs, ws = a.shape
    return a.reshape(*lead, hs // s, s, ws // s, s).mean(axis=(-3, -1))


def background_image(params: ToyVideoParams, cfg: ToyWorldConfig) -> np.ndarray:
    """The static background, grey levels (H, W) in [0, 1]."""
    h, w = cfg.height, cfg.width
    period = max(2, int(round(cfg.stripe_period * cfg.span)))
    yy = (np.arange(h)[:, None] + params.bg_phase) // (period // 2 if period >= 2 else 1)
    xx = (np.arange(w)[None, :] + params.bg_phase) // (period // 2 if period >= 2 else 1)
    if params.background == "plain":
        pat = np.zeros((h, w))
    elif params.background == "hstripes":
        pat = np.broadcast_to(yy % 2, (h, w))
    elif params.background == "vstripes":
        pat = np.broadcast_to(xx % 2, (h, w))
    elif params.background == "checker":
        pat = (yy + xx) % 2
    else:
        raise ValueError(f"unknown background {params.background!r}")
    return (cfg.bg_dark + (cfg.bg_light - cfg.bg_dark) * pat).astype(np.float32)


def object_alpha(params: ToyVideoParams, cfg: ToyWorldConfig) -> np.ndarray:
    """Anti-aliased coverage (F, H, W) in [0, 1] of the object in each frame."""
    s = cfg.supersample
    xs = _grid(cfg.width, s)[None, None, :]
    ys = _grid(cfg.height, s)[None, :, None]
    c = trajectory(params, cfg.frames, cfg.height, cfg.width).astype(np.float32)
    dx = xs - c[:, 0, None, None]
    dy = ys - c[:, 1, None, None]
    r = params.radius
    if params.shape == "circle":
        inside = dx * dx + dy * dy <= r * r
    elif params.shape == "square":
        a = 0.9 * r
        inside = (np.abs(dx) <= a) & (np.abs(dy) <= a)
    elif params.shape == "diamond":
        inside = np.abs(dx) + np.abs(dy) <= 1.2 * r
    elif params.shape == "triangle":
        R = SHAPE_EXTENT * r  # circumradius; apex up
        # three half-planes of an equilateral triangle centred on (0, 0)
        inside = (dy <= 0.5 * R) & (math.sqrt(3) * dx - dy <= R) & (-math.sqrt(3) * dx - dy <= R)
    else:
        raise ValueError(f"unknown shape {params.shape!r}")
    return _pool(inside.astype(np.float32), s)


def render_numpy(params: ToyVideoParams, cfg: ToyWorldConfig | None = None, *,
                 with_object: bool = True) -> np.ndarray:
    """(3, F, H, W) float32 in [-1, 1]. `with_object=False` renders the background alone."""
    cfg = cfg or ToyWorldConfig()
    bg = background_image(params, cfg)[None, None]  # (1, 1, H, W)
    video = np.broadcast_to(bg, (3, cfg.frames, cfg.height, cfg.width)).astype(np.float32)
    if with_object:
        alpha = object_alpha(params, cfg)[None]  # (1, F, H, W)
        col = np.asarray(params.rgb, dtype=np.float32)[:, None, None, None]
        video = video * (1 - alpha) + col * alpha
    return video * 2 - 1


def render(params: ToyVideoParams, cfg: ToyWorldConfig | None = None) -> Tensor:
    """Render one video: float32 tensor (3, F, H, W) in [-1, 1]."""
    return torch.from_numpy(np.ascontiguousarray(render_numpy(params, cfg)))


@dataclass
class ToyBatch:
    """video: (B, 3, F, H, W) in [-1, 1]; params and captions: one per video."""

    video: Tensor
    params: list[ToyVideoParams] = field(default_factory=list)
    captions: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return self.video.shape[0]

    @property
    def first_frame(self) -> Tensor:
        """(B, 3, H, W): the I2V condition image."""
        return self.video[:, :, 0]

    def to(self, *args, **kwargs) -> "ToyBatch":
        return ToyBatch(self.video.to(*args, **kwargs), self.params, self.captions)


class ToyWorld:
    """Sampler of toy videos. All methods are deterministic functions of their seed arguments."""

    def __init__(self, cfg: ToyWorldConfig | None = None):
        self.cfg = cfg or ToyWorldConfig()

    def _rng(self, *key: int) -> np.random.Generator:
        if any(k < 0 for k in key):
            raise ValueError(f"seeds must be non-negative, got {key}")
        return np.random.default_rng(np.random.SeedSequence(list(key)))

    def from_params(self, params: Sequence[ToyVideoParams]) -> ToyBatch:
        params = list(params)
        video = np.stack([render_numpy(p, self.cfg) for p in params]) if params else \
            np.zeros((0, 3, self.cfg.frames, self.cfg.height, self.cfg.width), np.float32)
        return ToyBatch(torch.from_numpy(video), params, [caption(p, self.cfg) for p in params])

    def _keys_batch(self, keys: Sequence[tuple[int, ...]]) -> ToyBatch:
        return self.from_params([sample_params(self._rng(*k), self.cfg) for k in keys])

    def batch(self, batch_size: int, seed: int = 0) -> ToyBatch:
        """A training batch; item i is drawn from seed (0, seed, i)."""
        return self._keys_batch([(TRAIN_BATCH_TAG, seed, i) for i in range(batch_size)])

    def stream_batch(self, batch_size: int, seed: int, k: int, items: range | None = None) -> ToyBatch:
        """Batch k of `stream(batch_size, seed)`: a function of (seed, k) only (resume = skip to k). `items`
        draws only those items of it (one process's share of a global batch)."""
        return self._keys_batch([(TRAIN_STREAM_TAG, seed, k, i) for i in (items or range(batch_size))])

    def stream(self, batch_size: int, seed: int = 0, start: int = 0) -> Iterator[ToyBatch]:
        """Endless reproducible training stream; batch k depends only on (seed, k)."""
        k = start
        while True:
            yield self.stream_batch(batch_size, seed, k)
            k += 1

    def heldout(self, n: int, seed: int = 0) -> ToyBatch:
        """A fixed held-out set of n videos, from a seed space (tag 1) no training method ever uses."""
        return self._keys_batch([(HELDOUT_TAG, seed, i) for i in range(n)])

    def validation(self, n: int, seed: int = 0) -> ToyBatch:
        """A validation set of n videos for choosing settings (vpae ablate's tuning), from its own seed space
        (tag 3): disjoint in its random draws from training and from the held-out test split."""
        return self._keys_batch([(VALIDATION_TAG, seed, i) for i in range(n)])
