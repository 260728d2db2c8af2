"""Typed configuration: dataclasses loaded from YAML with strict keys.

An unknown or mistyped key is an error that names it. Every number from the paper is a field with the
paper's default; configs/toy/*.yaml scale them for a CPU and say so.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from vpae.errors import VpaeError


class ConfigError(VpaeError, ValueError):
    pass


@dataclass
class ModelConfig:
    teacher: str = ""
    """Teacher checkpoint: a diffusers `WanTransformer3DModel` folder (config.json + safetensors). A
    relative path is resolved against the repository/package root. Empty: build `wan_config` at random."""
    wan_config: dict = field(default_factory=dict)
    """WanTransformer3DModel constructor kwargs, used when `teacher` is empty (tests, pretraining)."""
    text_len: int = 0
    """Text tokens the transformer was trained with: 512 for real Wan (text zero-padded to 512, as its
    pipelines do). 0: read it from the checkpoint's vpae.json, else 512. The toy teacher uses 24."""
    dtype: str = "float32"
    """Parameter dtype of all roles: float32 | bfloat16."""
    gradient_checkpointing: bool = False
    """Recompute block activations in backward (large models)."""


@dataclass
class DataConfig:
    kind: str = "toy"
    """toy: the procedural world (vpae.toy); cache: a latent cache folder (vpae.data.cache, data.cache_dir)."""
    cache_dir: str = ""
    """data.kind cache: the latent cache folder (index.json + shards)."""
    frames: int = 9
    height: int = 32
    width: int = 32
    text_tokens: int = 24
    """Text tokens kept per caption (zero-padded)."""
    caption_bank: str = ""
    """Optional safetensors of precomputed caption embeddings (vpae caption-bank); used when the file
    exists, else captions are encoded live with the packaged MiniLM. Both give identical (fp16-rounded) values."""
    image_patch: int = 8
    """Patch size of the parameter-free toy image encoder."""
    bounce: bool = False
    """Toy world: False (the shipped teacher's world) draws start positions so the path fits, which gives the
    direction away from the first frame for 61 % of videos; True starts anywhere and reflects at the borders,
    so the direction must be read from the caption (docs/TOY_WORLD.md, "Known leak")."""
    pixel_grid: bool = False
    """Toy world: positions and speeds on whole pixels, so the object is the same raster in every frame."""
    caption_speed: bool = True
    """Toy world: True: captions state the speed (the old worlds). False: they state neither speed nor bounce,
    so every speed is equally likely for one caption and first frame: a multimodal world in which the
    teacher's one-step sample is the blurred average of the modes (docs/TOY_WORLD.md)."""
    caption_sign: float = 1.0
    """Toy world: probability that a caption states the direction ("moves left"); otherwise it names only the
    axis ("moves left or right"), so both directions are equally likely (a second, wide-apart kind of mode)."""
    speeds: tuple[str, ...] = ("slow", "fast")
    """Toy world: the speeds videos are drawn with (one speed: the speed is not a mode)."""
    sizes: tuple[str, ...] = ("small", "large")
    """Toy world: the object sizes videos are drawn with (a subset of small / large)."""
    small_radius: float = 3.0 / 32
    large_radius: float = 5.0 / 32
    """Toy world: object radius of each size as a fraction of min(height, width) (1.5 / 2.5 px at 16 px)."""
    slow_travel: float = 0.25
    fast_travel: float = 0.5
    """Toy world: distance travelled over the clip at each speed, as a fraction of min(height, width)."""
    heldout_size: int = 64
    """Videos in the fixed held-out split used for evaluation (oracle metrics)."""
    proxy_videos: int = 8
    """How many of them also get the offline VBench-I2V proxy dimensions and the Frechet distance (their
    feature networks dominate CPU evaluation time)."""


@dataclass
class SamplingConfig:
    shift: float = 3.0
    """Timestep shift k of the teacher's Euler schedule (Wan 480p I2V uses 3.0)."""
    teacher_steps: int = 50
    guidance: float = 5.0
    """CFG scale, standard convention v_neg + w (v_pos - v_neg)."""
    teacher_sampler: str = "euler"
    """The teacher's multi-step baseline: euler (deterministic Euler + CFG, Wan's sampler) | stochastic (x0
    prediction + fresh noise over the same teacher_steps shifted sigmas; the toy teacher's choice by
    measurement, docs/TEACHER.md)."""


@dataclass
class PretrainConfig:
    """Flow-matching training of a teacher (the toy world's Wan-architecture model)."""
    steps: int = 20000
    batch_size: int = 32
    lr: float = 3e-4
    betas: tuple = (0.9, 0.99)
    weight_decay: float = 0.0
    warmup_steps: int = 200
    ema_decay: float = 0.999
    text_dropout: float = 0.1
    """Probability of replacing the caption by the negative (empty) prompt, so CFG works."""
    sigma_sampling: str = "logit_normal"
    """logit_normal (SD3) | uniform. Sigmas are then shifted by `sigma_shift`."""
    sigma_shift: float = 1.0
    grad_clip: float = 1.0
    max_seconds: float = 0.0
    """Stop (with a checkpoint) after this much wall time; 0 = run all steps."""
    lr_decay_steps: int = 0
    """Linear learning-rate cool-down to 0 over the last N of `steps` (0: constant after warm-up). Steps
    before `steps - N` are unaffected, so a run can be extended with a cool-down by resuming."""


@dataclass
class PrimingConfig:
    """Phase I, stability priming (paper 3.1, eq. 1-2). Defaults are the paper's."""
    steps: int = 500
    batch_size: int = 32
    lr: float = 1e-6
    betas: tuple = (0.9, 0.999)
    generator_mode: str = "full"
    """full: fine-tune all generator weights | lora: a LoRA adapter on a copy of the teacher."""
    generator_band: tuple = (0.9, 1.0)
    """The generator predicts x0 from x_s built from data, s ~ U(band): the low-SNR band (paper: [0.9T, T])."""
    renoise_band: tuple = (0.02, 0.98)
    """t' ~ U(band) for the DMD gradient and the fake-score loss (public DMD recipes)."""
    real_guidance: float = 5.0
    """CFG of the real score, standard convention (uncond + w (cond - uncond)); 1 = no guidance."""
    fake_updates_per_generator: int = 5
    """Fake-score updates per generator update (paper silent; DMD2 uses 5)."""
    fake_lr: float = 1e-6
    fake_betas: tuple = (0.9, 0.999)
    lora_rank: int = 64
    lora_alpha: int = 64
    lora_targets: tuple = ("to_q", "to_k", "to_v", "to_out.0", "add_k_proj", "add_v_proj")
    grad_clip: float = 10.0
    kind: str = "vpae"
    """Phase I objective: vpae (V-PAE-I, DMD from the low-SNR band) | lcm (latent consistency distillation,
    Table 2's alternative first phase; its knobs in the `consistency` section)."""


@dataclass
class EquilibriumConfig:
    """Phase II, unified adversarial equilibrium (paper 3.2-3.4, eq. 3-7). Defaults are the paper's."""
    steps: int = 1000
    batch_size: int = 32
    lr: float = 2e-6
    betas: tuple = (0.5, 0.999)
    head_lr: float = 2e-6
    head_betas: tuple = (0.5, 0.999)
    ema_decay: float = 0.995
    backbone: str = "unified"
    """Discriminator backbone: unified (EMA of the generator) | frozen (teacher) | trained (own full copy)."""
    head: str = "semantic"
    """conv | ca | semantic (Table 3 rows Conv, CA, CA-dagger)."""
    layers: tuple = (0.25, 0.5, 0.75, 1.0)
    """Backbone depths read by the heads (fractions of the depth or block indices)."""
    head_dim: int = 256
    head_queries: int = 4
    head_attn_heads: int = 4
    disc_band: tuple = (0.9, 1.0)
    """Real and generated videos are re-noised with t ~ U(band) before the discriminator (low SNR)."""
    disc_blur: float = 0.0
    """Gaussian blur (std in latent pixels, per frame over H and W) of real and generated videos before they are
    re-noised for the discriminator; 0 = off (the paper). Not in the paper: a layout-only discriminator for the toy
    world, whose heads otherwise key on fine texture rather than on partial averages (docs/RESULTS.md, session 6)."""
    disc_condition_frame: bool = False
    """Show the discriminator the condition's first latent frame in place of the generated one (I2V only), so the
    adversarial gradient reaches the moving frames only and the first frame is left to C-SDS. Not in the paper."""
    loss: str = "hinge"
    """hinge | non_saturating."""
    sigma_s: float = 0.01
    sigma_t: float = 0.1
    r1_weight: float = 1.0
    r1_on: str = "fake"
    """Which samples ST-R1 perturbs: fake (eq. 4 as written) | real | both."""
    adv_weight: float = 1.0
    """Weight of the generator's adversarial term in eq. 6 (the paper: 1). 0 = C-SDS only, an ablation that
    isolates what the adversarial term contributes (the discriminator is then not read by the generator)."""
    sds_lambda: float = 10.0
    sds_band: tuple = (0.02, 0.98)
    """t' ~ U(band) for the conditional SDS re-noising."""
    sds_guidance: float = 1.0
    """CFG of the teacher's x0 prediction in C-SDS (1 = none; the paper does not say)."""
    disc_updates_per_generator: int = 1
    diversity_weight: float = 0.0
    """Weight of the mode-seeking term (losses/mode_seeking.py, MSGAN eq. 3) added to eq. 6; 0 = off (the paper).
    Not in the paper: each generator update draws a second noise for half of the batch's conditions and pushes the
    two samples of one condition apart, against one-step generators that pick the mode from the condition."""
    diversity_blur: float = 1.5
    """Gaussian blur (std in latent pixels, per frame) of both samples before the mode-seeking distance: the
    term then rewards different layouts (where the object goes), not different fine texture (which it otherwise
    buys by adding noise; docs/RESULTS.md, session 7); 0 = the raw distance of MSGAN."""
    grad_clip: float = 10.0


METHODS = ("vpae", "dmd2", "lcm", "pcm", "dcm", "add", "apt", "md")
"""`method`: V-PAE or one of the paper's comparison methods (Table 1), all trained by the same `vpae distill`
(training/methods.py; docs/METHODS.md)."""


@dataclass
class BaselineConfig:
    """What every comparison method (method != vpae) shares, so that budgets are equal: generator updates x
    batch, the generator's optimizer, and the few-step sigmas the multi-step methods train and sample with.
    The paper does not give the baselines' hyper-parameters; the defaults are V-PAE's phase II ones."""
    steps: int = 1500
    """Generator updates (the paper's V-PAE budget: phase I 500 + phase II 1000)."""
    batch_size: int = 32
    lr: float = 2e-6
    betas: tuple = (0.9, 0.999)
    disc_lr: float = 2e-6
    """Learning rate of every discriminator head (and APT's trained discriminator backbone)."""
    disc_betas: tuple = (0.5, 0.999)
    grad_clip: float = 10.0
    nfe: int = 4
    """Steps of the multi-step schedule: DMD2 / ADD / MD train at the few-step sampler's sigmas
    (sampling.few_step_sigmas(nfe, shift), what `4 NFE` samples with), PCM / DCM phases end at those sigmas
    (flow.sigma_schedule(nfe, shift); diffusers' schedule: 1, 0.667, 0.334, 0.001 | 0 at shift 1)."""
    shift: float = 1.0
    """Timestep shift of that schedule (the few-step samplers use the same sigmas)."""
    guidance: float = 5.0
    """CFG of the teacher wherever a method queries it (real score, ODE solver, distillation target):
    standard convention; Wan's 5.0. The toy world uses 2.0 like the demo's phase I."""


@dataclass
class DMD2Config:
    """DMD2 (Yin et al. 2024a): DMD + two time-scale updates + a GAN head on the fake score."""
    fake_updates_per_generator: int = 5
    """Two time-scale update rule: fake-score (and GAN head) updates per generator update (DMD2: 5)."""
    fake_lr: float = 2e-6
    gan_weight_generator: float = 3e-3
    """DMD2's generator GAN weight (its SDXL / ImageNet recipes: 3e-3)."""
    gan_weight_fake: float = 1e-2
    """DMD2's classifier (fake-score side) GAN weight (its recipes: 1e-2)."""
    renoise_band: tuple = (0.02, 0.98)
    backward_simulation: bool = True
    """Multi-step training inputs come from running the generator itself from noise (DMD2 sec. 4.5); False:
    noised real data at the student sigma."""


@dataclass
class ConsistencyConfig:
    """LCM (Luo et al. 2023), PCM (Wang et al. 2024), DCM (Lv et al. 2025): consistency distillation of the
    teacher's CFG-augmented probability-flow ODE with an EMA target."""
    num_timesteps: int = 48
    """The discrete ODE grid (LCM: 1000 DDPM steps skipped by k = 20, i.e. 50 solver steps; a multiple of nfe
    here so the phase edges lie on the grid)."""
    skip: int = 1
    """Skipping-step k: the teacher solver jumps k grid points (LCM sec. 4.3)."""
    ema_decay: float = 0.95
    """Target network EMA (LCM: 0.95)."""
    distance: str = "huber"
    """huber (LCM's released code, c = 0.001) | l2 (LCM eq. 9)."""
    huber_c: float = 1e-3
    temporal_weight: float = 1.0
    """DCM: temporal coherence loss weight on the semantic expert (paper silent on the value; 1.0)."""
    adv_weight: float = 0.1
    """DCM: GAN weight on the detail expert (paper silent at our scale; 0.1). PCM/LCM: unused."""
    feature_matching_weight: float = 1.0
    """DCM: feature-matching weight on the detail expert (paper silent; 1.0)."""
    semantic_phases: int = 2
    """DCM: the first (high-noise) phases belong to the semantic expert, the rest to the detail expert; the
    experts switch at that phase edge (paper: semantic layout/motion early, details late; 2 of 4 chosen)."""


@dataclass
class ADDConfig:
    """ADD (Sauer et al. 2024b): adversarial loss with a frozen feature discriminator + score distillation."""
    distill_weight: float = 2.5
    """lambda of ADD eq. 5 (ADD: 2.5)."""
    r1_weight: float = 1e-5
    """R1 on real data (ADD: 1e-5), here the approximated finite-difference form (no double backward)."""
    r1_sigma: float = 0.01
    disc_sigma: float = 0.0
    """Noise level the frozen teacher features are read at (ADD's DINOv2 reads clean images: 0)."""


@dataclass
class APTConfig:
    """APT (Lin et al. 2025a): adversarial post-training from pure noise."""
    r1_weight: float = 100.0
    """Approximated R1 weight (APT: lambda = 100)."""
    r1_sigma: float = 0.1
    """Approximated R1 perturbation std (APT: 0.01 images, 0.1 video)."""
    disc_band: tuple = (0.0, 1.0)
    """Discriminator input noise t ~ U(band) (APT samples t for the discriminator; paper's shift not given)."""


@dataclass
class MDConfig:
    """MD, MagicDistillation (Shao et al. 2025): weak-to-strong distribution matching."""
    weak_weight: float = 0.25
    """W2S: the real score is the teacher plus the fake LoRA at this weak weight (0 = plain DMD real score)."""
    fake_updates_per_generator: int = 5
    fake_lr: float = 2e-6
    gt_weight: float = 1.0
    """Ground-truth term: (1 - s) |x0_gen - x_data|^2 for generator inputs noised from data at sigma s."""
    renoise_band: tuple = (0.02, 0.98)


@dataclass
class TrainConfig:
    seed: int = 0
    device: str = "cpu"
    checkpoint_every: int = 100
    keep_checkpoints: int = 2
    log_every: int = 10
    eval_every: int = 0
    """Evaluate the 1-NFE generator on a small held-out batch every N steps (0: never)."""
    eval_videos: int = 16
    num_workers: int = 0
    """Background processes rendering toy batches (0: render in the training process)."""
    max_loss: float = 1.0e4
    """Divergence check: a logged loss above this stops the run before it is checkpointed (0: off)."""
    dead_grad_steps: int = 5
    """Divergence check: a gradient norm exactly 0 this many steps in a row stops the run (0: off)."""


@dataclass
class ParallelConfig:
    """Multi-process training under torchrun (training/parallel.py): every role is sharded with FSDP2
    (`fully_shard` per transformer block, then the embedders, then the root). Activation checkpointing is
    model.gradient_checkpointing. One process (plain `vpae ...`) ignores this section."""

    param_dtype: str = "float32"
    """FSDP2 MixedPrecisionPolicy: the dtype blocks compute in (bfloat16 on GPUs; master weights and optimizer
    states stay in model.dtype)."""
    reduce_dtype: str = "float32"
    """FSDP2 MixedPrecisionPolicy: the dtype gradients are reduce-scattered in (float32, as torchtitan)."""
    reshard_after_forward: bool = True
    """Free each block's gathered weights after its forward (ZeRO-3); False keeps them until backward (ZeRO-2)."""
    backend: str = "auto"
    """torch.distributed backend: auto = nccl on CUDA, gloo on CPU."""


@dataclass
class VPAEConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    priming: PrimingConfig = field(default_factory=PrimingConfig)
    equilibrium: EquilibriumConfig = field(default_factory=EquilibriumConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    method: str = "vpae"
    """vpae | dmd2 | lcm | pcm | dcm | add | apt | md (docs/METHODS.md)."""
    baseline: BaselineConfig = field(default_factory=BaselineConfig)
    dmd2: DMD2Config = field(default_factory=DMD2Config)
    consistency: ConsistencyConfig = field(default_factory=ConsistencyConfig)
    add: ADDConfig = field(default_factory=ADDConfig)
    apt: APTConfig = field(default_factory=APTConfig)
    md: MDConfig = field(default_factory=MDConfig)

    def __post_init__(self) -> None:
        validate(self)


def validate(cfg: VPAEConfig) -> None:
    def band(name, b):
        if len(b) != 2 or not 0.0 <= b[0] <= b[1] <= 1.0:
            raise ConfigError(f"{name} must be (lo, hi) with 0 <= lo <= hi <= 1, got {b}")
    band("priming.generator_band", cfg.priming.generator_band)
    band("priming.renoise_band", cfg.priming.renoise_band)
    band("equilibrium.disc_band", cfg.equilibrium.disc_band)
    if cfg.equilibrium.diversity_weight < 0 or cfg.equilibrium.diversity_blur < 0:
        raise ConfigError(f"equilibrium.diversity_weight and diversity_blur must be >= 0 (0 = off), got "
                          f"{cfg.equilibrium.diversity_weight}, {cfg.equilibrium.diversity_blur}")
    if cfg.equilibrium.disc_blur < 0:
        raise ConfigError(f"equilibrium.disc_blur must be >= 0 (0 = off), got {cfg.equilibrium.disc_blur}")
    band("equilibrium.sds_band", cfg.equilibrium.sds_band)
    choices = {
        "priming.generator_mode": (cfg.priming.generator_mode, ("full", "lora")),
        "equilibrium.backbone": (cfg.equilibrium.backbone, ("unified", "frozen", "trained")),
        "equilibrium.head": (cfg.equilibrium.head, ("conv", "ca", "semantic")),
        "equilibrium.loss": (cfg.equilibrium.loss, ("hinge", "non_saturating")),
        "equilibrium.r1_on": (cfg.equilibrium.r1_on, ("fake", "real", "both")),
        "model.dtype": (cfg.model.dtype, ("float32", "bfloat16")),
        "pretrain.sigma_sampling": (cfg.pretrain.sigma_sampling, ("logit_normal", "uniform")),
        "data.kind": (cfg.data.kind, ("toy", "cache")),
        "sampling.teacher_sampler": (cfg.sampling.teacher_sampler, ("euler", "stochastic")),
        "parallel.param_dtype": (cfg.parallel.param_dtype, ("float32", "bfloat16")),
        "parallel.reduce_dtype": (cfg.parallel.reduce_dtype, ("float32", "bfloat16")),
        "parallel.backend": (cfg.parallel.backend, ("auto", "gloo", "nccl")),
        "method": (cfg.method, METHODS),
        "priming.kind": (cfg.priming.kind, ("vpae", "lcm")),
        "consistency.distance": (cfg.consistency.distance, ("huber", "l2")),
    }
    for name, (value, allowed) in choices.items():
        if value not in allowed:
            raise ConfigError(f"{name} = {value!r}; choose one of {allowed}")
    if (cfg.data.frames - 1) % 4:
        raise ConfigError(f"data.frames must be 4n+1, got {cfg.data.frames}")
    for name in ("priming.steps", "equilibrium.steps", "pretrain.steps", "pretrain.lr_decay_steps", "train.eval_every"):
        sec, key = name.split(".")
        if getattr(getattr(cfg, sec), key) < 0:
            raise ConfigError(f"{name} must be >= 0")
    for name in ("priming.batch_size", "equilibrium.batch_size", "pretrain.batch_size", "train.checkpoint_every",
                 "train.log_every", "train.keep_checkpoints", "data.heldout_size"):
        sec, key = name.split(".")
        if getattr(getattr(cfg, sec), key) < 1:
            raise ConfigError(f"{name} must be >= 1, got {getattr(getattr(cfg, sec), key)}")
    if not 0.0 <= cfg.data.caption_sign <= 1.0:
        raise ConfigError(f"data.caption_sign is a probability in [0, 1], got {cfg.data.caption_sign}")
    if not cfg.data.speeds or any(s not in ("slow", "fast") for s in cfg.data.speeds):
        raise ConfigError(f"data.speeds must be a non-empty list of slow / fast, got {list(cfg.data.speeds)}")
    if not cfg.data.sizes or any(s not in ("small", "large") for s in cfg.data.sizes):
        raise ConfigError(f"data.sizes must be a non-empty list of small / large, got {list(cfg.data.sizes)}")
    if not 0 < cfg.data.slow_travel < cfg.data.fast_travel:
        raise ConfigError(f"need 0 < data.slow_travel < data.fast_travel, got {cfg.data.slow_travel}, {cfg.data.fast_travel}")
    e = cfg.equilibrium
    if not e.layers or any(not 0.0 < x <= 1.0 for x in e.layers):
        raise ConfigError(f"equilibrium.layers are depth fractions in (0, 1], got {list(e.layers)}")
    if e.adv_weight < 0 or e.sds_lambda < 0 or e.adv_weight == e.sds_lambda == 0:
        raise ConfigError(f"need equilibrium.adv_weight >= 0 and equilibrium.sds_lambda >= 0, not both 0; "
                          f"got {e.adv_weight}, {e.sds_lambda}")
    validate_methods(cfg)
    if cfg.data.kind == "cache" and not cfg.data.cache_dir:
        raise ConfigError("data.kind cache needs data.cache_dir (a folder written by vpae data prepare)")
    if cfg.data.kind == "toy":  # the world's own checks (sizes, radii, vocabularies), reported as config errors
        from vpae.toy.world import world_config
        try:
            world_config(cfg.data)
        except ValueError as err:
            raise ConfigError(f"data: {err}") from None


def validate_methods(cfg: VPAEConfig) -> None:
    """The comparison methods' sections (training/methods.py)."""
    b, c = cfg.baseline, cfg.consistency
    for name, value in (("baseline.steps", b.steps), ("consistency.skip", c.skip)):
        if value < 0 or (name == "consistency.skip" and value < 1):
            raise ConfigError(f"{name} must be >= {0 if name.endswith('steps') else 1}, got {value}")
    for name, value in (("baseline.batch_size", b.batch_size), ("baseline.nfe", b.nfe),
                        ("dmd2.fake_updates_per_generator", cfg.dmd2.fake_updates_per_generator),
                        ("md.fake_updates_per_generator", cfg.md.fake_updates_per_generator)):
        if value < 1:
            raise ConfigError(f"{name} must be >= 1, got {value}")
    if c.num_timesteps % b.nfe:
        raise ConfigError(f"consistency.num_timesteps ({c.num_timesteps}) must be a multiple of baseline.nfe "
                          f"({b.nfe}) so every phase edge lies on the ODE grid")
    for name, band_ in (("dmd2.renoise_band", cfg.dmd2.renoise_band), ("md.renoise_band", cfg.md.renoise_band),
                        ("apt.disc_band", cfg.apt.disc_band)):
        if len(band_) != 2 or not 0.0 <= band_[0] <= band_[1] <= 1.0:
            raise ConfigError(f"{name} must be (lo, hi) with 0 <= lo <= hi <= 1, got {band_}")
    if not 0.0 <= cfg.md.weak_weight <= 1.0:
        raise ConfigError(f"md.weak_weight is in [0, 1], got {cfg.md.weak_weight}")
    if not 0 < c.semantic_phases < b.nfe:
        raise ConfigError(f"consistency.semantic_phases must be in 1..baseline.nfe - 1 = {b.nfe - 1}, got {c.semantic_phases}")


# -- strict loading ----------------------------------------------------------------------------

def _coerce(value: Any, tp: Any, where: str) -> Any:
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {type(value).__name__}")
        return _build(tp, value, where)
    origin = typing.get_origin(tp)
    if tp is tuple or origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return tuple(value)
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):  # YAML 1.1 reads "7e-4" (no dot) as a string
        try:
            return float(value)
        except ValueError:
            raise ConfigError(f"{where}: expected a number, got {value!r}") from None
    if tp is float:  # bool, None, lists...: not a number
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    if tp is int and isinstance(value, bool) or tp in (int, str, bool, dict) and not isinstance(value, tp):
        raise ConfigError(f"{where}: expected {tp.__name__}, got {value!r}")
    return value


def _build(cls, data: dict, where: str = ""):
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise ConfigError(f"unknown config key(s) {sorted(unknown)} in {where or 'top level'}; "
                          f"valid keys: {sorted(names)}")
    kwargs = {k: _coerce(v, hints[k], f"{where}.{k}".lstrip(".")) for k, v in data.items()}
    return cls(**kwargs)


def _set_path(data: dict, dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = data
    for k in keys[:-1]:
        node = node.setdefault(k, {})
    node[keys[-1]] = value


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> VPAEConfig:
    """Load a YAML config (missing keys take defaults) and apply `a.b=value` overrides (YAML values)."""
    data: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        data = yaml.safe_load(path.read_text()) or {}
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: top level must be a mapping")
    for ov in overrides or []:
        if "=" not in ov:
            raise ConfigError(f"override {ov!r} must look like section.key=value")
        key, val = ov.split("=", 1)
        _set_path(data, key.strip(), yaml.safe_load(val))
    return _build(VPAEConfig, data)


def to_dict(cfg) -> dict:
    def conv(x):
        if isinstance(x, tuple):
            return [conv(v) for v in x]
        if isinstance(x, dict):
            return {k: conv(v) for k, v in x.items()}
        return x
    return conv(dataclasses.asdict(cfg))


def save_config(cfg: VPAEConfig, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))


# -- resuming a run with a changed config --------------------------------------------------------

RESUME_FIXED_SECTIONS = ("model.", "data.")
"""Sections a resumed run may not change: the checkpoints hold the model's shapes and the data it saw."""
RESUME_FREE_KEYS = {"data.heldout_size", "data.proxy_videos", "data.caption_bank", "model.gradient_checkpointing"}
"""...except these (evaluation size, a cache path, a memory/speed trade with equal results)."""
RESUME_FIXED_KEYS = {"train.seed", "priming.generator_mode", "priming.lora_rank", "priming.lora_alpha",
                     "priming.lora_targets", "equilibrium.backbone", "equilibrium.head", "equilibrium.layers",
                     "equilibrium.head_dim", "equilibrium.head_queries", "equilibrium.head_attn_heads",
                     "method", "priming.kind"}
"""Keys that change what the checkpoints hold (adapter and head shapes) or which run this is (the seed)."""


def _flat(d: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict) and k != "wan_config":
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def resume_changes(recorded: dict, cfg: VPAEConfig) -> tuple[dict, dict]:
    """Differences between a run's recorded config and `cfg`, split into (allowed, refused); each maps a
    dotted key to (recorded value, new value). Keys the recorded file lacks (older versions) count as their
    defaults. Allowed changes (learning rates, step counts, logging, checkpoint cadence, loss weights, ...)
    take effect from the resumed step; refused ones would not fit the checkpoints or would make another run."""
    new, default, old = _flat(to_dict(cfg)), _flat(to_dict(VPAEConfig())), _flat(recorded)
    allowed, refused = {}, {}
    for k, v in new.items():
        before = old.get(k, default.get(k))
        if before == v:
            continue
        fixed = k in RESUME_FIXED_KEYS or (k.startswith(RESUME_FIXED_SECTIONS) and k not in RESUME_FREE_KEYS)
        (refused if fixed else allowed)[k] = (before, v)
    return allowed, refused


def record_run_config(cfg: VPAEConfig, run_dir: str | Path) -> dict:
    """Write cfg to run_dir/config.yaml, first checking it against the recorded one when the run has
    checkpoints (a resume): refused changes raise ConfigError naming the keys (nothing is written), allowed
    ones are recorded in run_dir/config_changes.jsonl and returned."""
    import json
    import os
    import sys
    import time
    run_dir = Path(run_dir)
    path = run_dir / "config.yaml"
    allowed: dict = {}
    if path.is_file() and any(run_dir.glob("**/checkpoints/step_*")):
        try:
            recorded = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{path} (the config this run was started with) is not valid YAML: {e}") from None
        allowed, refused = resume_changes(recorded, cfg)
        if refused:
            keys = "; ".join(f"{k}: {a!r} -> {b!r}" for k, a, b in ((k, *v) for k, v in refused.items()))
            raise ConfigError(f"{run_dir} holds checkpoints of a run started with another configuration, and "
                              f"these keys cannot change on resume: {keys}. Use a new run directory (--out), "
                              f"or rerun with the values recorded in {path}")
        if allowed:
            with (run_dir / "config_changes.jsonl").open("a") as f:
                f.write(json.dumps({"time": time.strftime("%Y-%m-%dT%H:%M:%S"),
                                    "changes": {k: list(v) for k, v in allowed.items()}}) + "\n")
            print("note: resuming " + str(run_dir) + " with changed " +
                  ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in allowed.items()), file=sys.stderr)
    run_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp-{os.getpid()}")
    tmp.write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    os.replace(tmp, path)
    return allowed
