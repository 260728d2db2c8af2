"""The configuration's schema: one dataclass per section, each validating its own values in `__post_init__`
(a mistake is a ConfigError naming the key), and the whole config (`VPAEConfig`) checking what spans sections.

Every number from the paper is a field with the paper's default; configs/toy/*.yaml scale them for a CPU and say
so. A data source's own settings are the section data.<kind> (e.g. data.toy): its dataclass is the source's
`config_class`, found through the registry (vpae.registry), so this module names no concrete data source's code.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from vpae import registry
from vpae.errors import VpaeError


class ConfigError(VpaeError, ValueError):
    pass


# -- checks shared by the sections ---------------------------------------------------------------

def check_choice(name: str, value: Any, allowed) -> None:
    if value not in allowed:
        raise ConfigError(f"{name} = {value!r}; choose one of {allowed}")


def check_band(name: str, band: tuple) -> None:
    if len(band) != 2 or not 0.0 <= band[0] <= band[1] <= 1.0:
        raise ConfigError(f"{name} must be (lo, hi) with 0 <= lo <= hi <= 1, got {band}")


def check_at_least(name: str, value, lowest) -> None:
    if value < lowest:
        raise ConfigError(f"{name} must be >= {lowest}, got {value}")


def check_layers(name: str, layers: tuple) -> None:
    if not layers or any(not 0.0 < x <= 1.0 for x in layers):
        raise ConfigError(f"{name} are depth fractions in (0, 1], got {list(layers)}")


HEADS = ("conv", "ca", "semantic")
"""Discriminator heads (vpae.discriminator): Table 3 rows Conv, CA, CA-dagger."""

FEW_STEP_SCHEDULES = ("trailing", "linspace")
"""Few-step sigmas (vpae.sampling.few_step_sigmas): trailing = 1, (n-1)/n, ..., 1/n, then shifted (DMD2's and ADD's
999/749/499/249 of 1000, FastVideo's [1000, 750, 500, 250], FastGen's Wan schedule at shift 5); linspace = diffusers'
FlowMatchEulerDiscreteScheduler(shift).set_timesteps(n) without its trailing 0 (1, 0.667, 0.334, 0.001 at n = 4: the
last step is a near-identity; what a diffusers pipeline with num_inference_steps = n samples)."""


# -- sections --------------------------------------------------------------------------------------

@dataclass
class ModelConfig:
    teacher: str = ""
    """Teacher checkpoint: a diffusers `WanTransformer3DModel` folder (config.json + safetensors); a relative path
    is resolved against the working directory. 'builtin:toy' is the shipped toy teacher (a model family's
    built-in model, vpae.registry). Empty: build `wan_config` at random."""
    wan_config: dict = field(default_factory=dict)
    """WanTransformer3DModel constructor kwargs, used when `teacher` is empty (tests, pretraining)."""
    text_len: int = 0
    """Text tokens the transformer was trained with: 512 for real Wan (text zero-padded to 512, as its
    pipelines do). 0: read it from the checkpoint's vpae.json, else 512. The toy teacher uses 24."""
    dtype: str = "float32"
    """Stored dtype of the trained roles (generator, fake LoRA, heads): their master weights and Adam states.
    Keep float32: Adam at lr 1e-6 moves ~2 % of bf16 weights per step (FIELD_NOTES 12). Under torchrun they
    compute in parallel.param_dtype."""
    frozen_dtype: str = ""
    """Stored dtype of the frozen roles (the teacher's base weights, the EMA discriminator backbone, a frozen
    copy): bfloat16 halves their memory. Empty: model.dtype."""
    gradient_checkpointing: bool = False
    """Recompute block activations in backward (large models)."""

    def __post_init__(self) -> None:
        check_choice("model.dtype", self.dtype, ("float32", "bfloat16"))
        check_choice("model.frozen_dtype", self.frozen_dtype, ("", "float32", "bfloat16"))


def source_config_class(kind: str):
    """The dataclass of the section data.<kind>: the registered data source's `config_class` (None if it has none)."""
    return getattr(registry.data_source(kind), "config_class", None)


def source_section(kind: str):
    """A DataConfig field holding the section data.<kind>, built by the data source's own `config_class` (its
    defaults when the YAML has no such section; strict keys when it has)."""
    return field(default_factory=lambda: source_config_class(kind)(),
                 metadata={"section_class": lambda: source_config_class(kind)})


@dataclass
class DataConfig:
    kind: str = "toy"
    """The data source (vpae.registry.data_source): toy: the procedural world (vpae.toy, settings in data.toy);
    cache: a latent cache folder (vpae.data.cache, data.cache_dir)."""
    cache_dir: str = ""
    """data.kind cache: the latent cache folder (index.json + shards)."""
    frames: int = 9
    height: int = 32
    width: int = 32
    text_tokens: int = 24
    """Text tokens kept per caption (zero-padded)."""
    heldout_size: int = 64
    """Videos in the fixed held-out split used for evaluation (oracle metrics)."""
    proxy_videos: int = 8
    """How many of them also get the offline VBench-I2V proxy dimensions and the Frechet distance (their
    feature networks dominate CPU evaluation time)."""
    toy: Any = source_section("toy")
    """The toy world's settings (vpae.toy.world.ToyDataConfig; read when kind is toy). Another data source with
    settings of its own gets one such line, `<kind>: Any = source_section("<kind>")`; its class stays in its
    package."""

    def __post_init__(self) -> None:
        try:
            source = registry.data_source(self.kind)
        except registry.UnknownName:
            raise ConfigError(f"data.kind = {self.kind!r}; choose one of {registry.data_source_names()}") from None
        for name, cls in section_classes(type(self)).items():
            if not isinstance(getattr(self, name), cls):
                raise ConfigError(f"data.{name} must be a {cls.__name__} (the section's dataclass), got "
                                  f"{type(getattr(self, name)).__name__}; a mapping is built by vpae.config.build")
        if (self.frames - 1) % 4:
            raise ConfigError(f"data.frames must be 4n+1, got {self.frames}")
        check_at_least("data.heldout_size", self.heldout_size, 1)
        check = getattr(source, "check_data", None)
        if check is not None:  # the source's own checks of the whole section (e.g. the toy world fits the frame)
            check(self)


def section_classes(cls) -> dict[str, type]:
    """{field name: dataclass} of the data-source sections of a dataclass (DataConfig.toy, ...)."""
    from dataclasses import fields
    return {f.name: f.metadata["section_class"]() for f in fields(cls) if "section_class" in f.metadata}


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
    few_step_schedule: str = "trailing"
    """The sigmas of every few-step sampler and of the few-step methods' training (FEW_STEP_SCHEDULES): trailing
    (the originals' schedule) | linspace (diffusers' default, what an exported pipeline samples at N > 1)."""

    def __post_init__(self) -> None:
        check_choice("sampling.teacher_sampler", self.teacher_sampler, ("euler", "stochastic"))
        check_choice("sampling.few_step_schedule", self.few_step_schedule, FEW_STEP_SCHEDULES)


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

    def __post_init__(self) -> None:
        check_choice("pretrain.sigma_sampling", self.sigma_sampling, ("logit_normal", "uniform"))
        check_at_least("pretrain.steps", self.steps, 0)
        check_at_least("pretrain.lr_decay_steps", self.lr_decay_steps, 0)
        check_at_least("pretrain.batch_size", self.batch_size, 1)


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

    def __post_init__(self) -> None:
        check_band("priming.generator_band", self.generator_band)
        check_band("priming.renoise_band", self.renoise_band)
        check_choice("priming.generator_mode", self.generator_mode, ("full", "lora"))
        check_choice("priming.kind", self.kind, ("vpae", "lcm"))
        check_at_least("priming.steps", self.steps, 0)
        check_at_least("priming.batch_size", self.batch_size, 1)


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
    """Real and generated videos are re-noised with t from this band before the discriminator (low SNR)."""
    disc_band_power: float = 1.0
    """How t is drawn from disc_band: lo + (hi - lo) u^power, u ~ U[0, 1). 1 = uniform (the paper); > 1 weights
    the draws toward the band's low end, where real and generated videos differ most (docs/RESULTS.md)."""
    disc_blur: float = 0.0
    """Gaussian blur (std in latent pixels, per frame over H and W) of real and generated videos before they are
    re-noised for the discriminator; 0 = off (the paper). Not in the paper: a layout-only discriminator for the toy
    world, whose heads otherwise key on fine texture rather than on partial averages (docs/RESULTS.md)."""
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
    adv_balance: float = 0.0
    """Gradient-norm balancing of eq. 6, whose adversarial weight the paper leaves open: > 0 rescales, every step,
    the adversarial term's gradient on the generated videos to adv_balance x the norm of the C-SDS term's
    (sds_lambda x grad C-SDS), and adv_weight is not used; 0 = off (adv_weight x the adversarial term). Logged:
    adv/grad_norm_adv, adv/grad_norm_sds, adv/scale."""
    sds_lambda: float = 10.0
    sds_band: tuple = (0.02, 0.98)
    """t' ~ U(band) for the conditional SDS re-noising."""
    sds_guidance: float = 1.0
    """CFG of the teacher's x0 prediction in C-SDS (1 = none; the paper does not say)."""
    disc_updates_per_generator: int = 1
    diversity_weight: float = 0.0
    """Weight of the mode-seeking term (losses/mode_seeking.py, MSGAN eq. 3) added to eq. 6; 0 = off (the paper).
    Not in the paper: each generator update draws a second noise for every condition of the batch and pushes the
    two samples of one condition apart, against one-step generators that pick the mode from the condition."""
    diversity_blur: float = 1.5
    """Gaussian blur (std in latent pixels, per frame) of both samples before the mode-seeking distance: the
    term then rewards different layouts (where the object goes), not different fine texture (which it otherwise
    buys by adding noise; docs/RESULTS.md); 0 = the raw distance of MSGAN."""
    grad_clip: float = 10.0

    def __post_init__(self) -> None:
        check_band("equilibrium.disc_band", self.disc_band)
        if self.diversity_weight < 0 or self.diversity_blur < 0:
            raise ConfigError(f"equilibrium.diversity_weight and diversity_blur must be >= 0 (0 = off), got "
                              f"{self.diversity_weight}, {self.diversity_blur}")
        if self.disc_blur < 0:
            raise ConfigError(f"equilibrium.disc_blur must be >= 0 (0 = off), got {self.disc_blur}")
        check_band("equilibrium.sds_band", self.sds_band)
        if not self.disc_band_power > 0 or self.adv_balance < 0:
            raise ConfigError(f"equilibrium.disc_band_power must be > 0 and equilibrium.adv_balance >= 0 (0 = off), "
                              f"got {self.disc_band_power}, {self.adv_balance}")
        check_choice("equilibrium.backbone", self.backbone, ("unified", "frozen", "trained"))
        check_choice("equilibrium.head", self.head, HEADS)
        check_choice("equilibrium.loss", self.loss, ("hinge", "non_saturating"))
        check_choice("equilibrium.r1_on", self.r1_on, ("fake", "real", "both"))
        check_at_least("equilibrium.steps", self.steps, 0)
        check_at_least("equilibrium.batch_size", self.batch_size, 1)
        check_layers("equilibrium.layers", self.layers)
        if self.adv_weight < 0 or self.sds_lambda < 0 or self.adv_weight == self.sds_lambda == 0:
            raise ConfigError(f"need equilibrium.adv_weight >= 0 and equilibrium.sds_lambda >= 0, not both 0; "
                              f"got {self.adv_weight}, {self.sds_lambda}")


METHODS = ("vpae", "dmd2", "lcm", "pcm", "dcm", "add", "apt", "md", "ladd", "rcm")
"""`method`: V-PAE or one of the paper's comparison methods (Table 1), all trained by the same `vpae distill`
(vpae.training.methods; docs/COMPARISON_METHODS.md)."""


@dataclass
class ComparisonConfig:
    """What every comparison method (method != vpae) shares, so that budgets are equal: generator updates x
    batch, the generator's optimizer, the discriminator heads, and the few-step sigmas the multi-step methods
    train and sample with. The paper does not give the comparison methods' hyper-parameters; the defaults are
    V-PAE's phase II ones."""
    steps: int = 1500
    """Generator updates (the paper's V-PAE budget: phase I 500 + phase II 1000)."""
    batch_size: int = 32
    lr: float = 2e-6
    betas: tuple = (0.9, 0.999)
    disc_lr: float = 2e-6
    """Learning rate of every discriminator head (and APT's trained discriminator backbone)."""
    disc_betas: tuple = (0.5, 0.999)
    head: str = "original"
    """The discriminator heads of the methods that have one (DMD2, ADD, APT, DCM, PCM, LADD): original (each
    method's own kind: DMD2, ADD, PCM, DCM, LADD conv heads; APT cross-attention with learnable queries, `ca`) |
    conv | ca | semantic (V-PAE's head for every method)."""
    layers: tuple = (0.25, 0.5, 0.75, 1.0)
    """Backbone depths read by those heads (fractions of the depth or block indices)."""
    head_dim: int = 256
    head_queries: int = 4
    head_attn_heads: int = 4
    grad_clip: float = 10.0
    nfe: int = 4
    """Steps of the multi-step schedule a method trains for: DMD2 / ADD / MD / LADD train at the few-step
    sampler's sigmas (sampling.few_step_sigmas(nfe, shift, sampling.few_step_schedule): 1, 0.75, 0.5, 0.25 at
    nfe 4, shift 1), PCM / DCM phases end at those sigmas and 0. 1: a one-step model (DMD2's 1-step recipes)."""
    shift: float = 1.0
    """Timestep shift of that schedule (the few-step samplers use the same sigmas; FastGen's Wan DMD2: 5)."""
    guidance: float = 5.0
    """CFG of the teacher wherever a method queries it (real score, ODE solver, distillation target):
    standard convention; Wan's 5.0. The toy world uses 2.0 like the demo's phase I."""

    def __post_init__(self) -> None:
        check_at_least("comparison.steps", self.steps, 0)
        check_at_least("comparison.batch_size", self.batch_size, 1)
        check_at_least("comparison.nfe", self.nfe, 1)
        check_choice("comparison.head", self.head, HEADS + ("original",))
        check_layers("comparison.layers", self.layers)


@dataclass
class DMD2Config:
    """DMD2 (Yin et al. 2024a): DMD + two time-scale updates + a GAN head on the fake score."""
    fake_updates_per_generator: int = 5
    """Two time-scale update rule: fake-score (and GAN head) updates per generator update (DMD2: 5)."""
    fake_lr: float = 2e-6
    gan_weight_generator: float = 3e-3
    """DMD2's generator GAN weight (its SDXL / ImageNet recipes: 3e-3)."""
    gan_weight_fake: float = 1e-2
    """DMD2's classifier (fake-score side) GAN weight (its recipes: 1e-2). The classifier head trains in the
    fake score's optimizer at fake_lr, as DMD2's guidance model (fake UNet + classification branch, one optimizer)."""
    fake_critic: str = "full"
    """full: the fake score is a whole trainable copy of the teacher (DMD2, FastVideo and FastGen) | lora: the
    teacher plus a LoRA (V-PAE's phase I; no second copy of a 14B model)."""
    renoise_band: tuple = (0.02, 0.98)
    backward_simulation: bool = True
    """Multi-step training inputs come from running the generator itself from noise (DMD2 sec. 4.5); False:
    noised real data at the student sigma."""

    def __post_init__(self) -> None:
        check_at_least("dmd2.fake_updates_per_generator", self.fake_updates_per_generator, 1)
        check_choice("dmd2.fake_critic", self.fake_critic, ("full", "lora"))
        check_band("dmd2.renoise_band", self.renoise_band)


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
    """DCM: temporal coherence loss weight on the semantic expert (DCM's release: 1,
    fastvideo/distill_dcm_wan_semantic_expert.py)."""
    adv_weight: float = 0.5
    """DCM: weight of the detail expert's GAN term relu(1 - D) (DCM's release: adv_weight 0.1 x 5 = 0.5,
    distill_dcm_wan_detail_expert.py). PCM's own is pcm.adv_weight."""
    feature_matching_weight: float = 1.0
    """DCM: feature-matching weight on the detail expert (DCM's release: 0.1 x 10 = 1.0)."""
    semantic_phases: int = 2
    """DCM: the first (high-noise) phases belong to the semantic expert, the rest to the detail expert; the
    experts switch at that phase edge (paper: semantic layout/motion early, details late; 2 of 4 chosen)."""
    gan_real: str = "target"
    """DCM: the GAN's real side: target = the consistency target moved into the phase with the prediction's noise
    (DCM's release) | data = the real video noised to the same sigma inside the phase."""
    temporal_stride: int = 3
    """DCM: frame distance of the temporal coherence loss (DCM's release: 3; clipped to the clip's frames - 1)."""

    def __post_init__(self) -> None:
        check_choice("consistency.distance", self.distance, ("huber", "l2"))
        check_at_least("consistency.skip", self.skip, 1)
        check_choice("consistency.gan_real", self.gan_real, ("target", "data"))
        check_at_least("consistency.temporal_stride", self.temporal_stride, 1)


@dataclass
class ADDConfig:
    """ADD (Sauer et al. 2024b): adversarial loss with a frozen feature discriminator + score distillation."""
    distill_weight: float = 2.5
    """lambda of ADD eq. 5 (ADD: 2.5)."""
    r1_weight: float = 1e-5
    """Weight of the exact R1 |grad_x D|^2 on real data (ADD: 1e-5), estimated without a double backward by the
    approximated R1 divided by r1_sigma^2 (losses/approx_r1.py, normalized)."""
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
    init: str = "cd"
    """The generator's start: cd = consistency distillation first (APT initialises its generator from a
    discrete-time consistency-distilled model), teacher = the teacher itself."""
    init_fraction: float = 0.3
    """With init cd: the share of comparison.steps spent on the consistency distillation (the generator-update
    budget counts both stages)."""
    disc_lr_scale: float = 1.0
    """Discriminator (backbone and heads) lr = this x comparison.lr (APT: the same lr for both, 5e-6)."""
    ema_decay: float = 0.995
    """EMA of the generator, which is what APT samples with (0 = the raw generator)."""

    def __post_init__(self) -> None:
        check_band("apt.disc_band", self.disc_band)
        check_choice("apt.init", self.init, ("cd", "teacher"))
        if not 0.0 < self.init_fraction < 1.0:
            raise ConfigError(f"apt.init_fraction is in (0, 1), got {self.init_fraction}")


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

    def __post_init__(self) -> None:
        check_at_least("md.fake_updates_per_generator", self.fake_updates_per_generator, 1)
        check_band("md.renoise_band", self.renoise_band)
        if not 0.0 <= self.weak_weight <= 1.0:
            raise ConfigError(f"md.weak_weight is in [0, 1], got {self.weak_weight}")


@dataclass
class PCMConfig:
    """PCM (Wang et al. 2024, G-U-N/Phased-Consistency-Model): phased consistency distillation."""
    target_decay: float = 0.0
    """EMA decay of the consistency target: 0 = the stop-gradient online network (PCM's released code) | > 0 an
    EMA target (LCM's 0.95)."""
    adv_weight: float = 0.1
    """The adversarial consistency loss of every released PCM script (adv_weight 0.1; 0 = off): heads on the frozen
    teacher's features (comparison.disc_lr) read the prediction and the consistency target re-noised into the
    phase."""


@dataclass
class LADDConfig:
    """LADD (Sauer et al. 2024a, Fast High-Resolution Image Synthesis with Latent Adversarial Diffusion
    Distillation): the student's x0 re-noised and judged by heads on the frozen teacher's features."""
    disc_t_mean: float = 1.0
    """Discriminator noise levels t = sigmoid(N(mean, std)) (logit-normal, LADD's shifted toward high noise)."""
    disc_t_std: float = 1.0
    loss: str = "hinge"
    distill_weight: float = 0.0
    """ADD's distillation term on top (LADD drops it: 0)."""

    def __post_init__(self) -> None:
        check_choice("ladd.loss", self.loss, ("hinge", "non_saturating"))
        check_at_least("ladd.disc_t_std", self.disc_t_std, 0.0)


@dataclass
class RCMConfig:
    """rCM (Zheng et al. 2025, NVlabs/rcm): continuous-time consistency (sCM) regularised by DMD."""
    dmd_weight: float = 0.01
    """Weight of the DMD regulariser (a fake score trained on generated samples; the release's loss_scale_dmd 1 to
    loss_scale 100)."""
    fake_updates_per_generator: int = 4
    """Fake-score updates per generator update (the release's student_update_freq 5 at 1.3B: 4 to 1)."""
    fake_lr: float = 2e-6
    renoise_band: tuple = (0.02, 0.98)
    t_mean: float = 0.7
    """Consistency-training noise levels t = sigmoid(N(mean, std)) (logit-normal; the release's 1.3B p_G
    LogNormal(0.7, 1.6) on s / (1 - s))."""
    t_std: float = 1.6
    tangent_warmup_steps: int = 100
    """sCM's tangent warm-up: the time-derivative term is ramped from 0 to 1 over these generator updates."""
    tangent_norm_c: float = 0.1
    """sCM's tangent normalisation g / (||g|| + c)."""

    def __post_init__(self) -> None:
        check_at_least("rcm.fake_updates_per_generator", self.fake_updates_per_generator, 1)
        check_band("rcm.renoise_band", self.renoise_band)
        check_at_least("rcm.tangent_warmup_steps", self.tangent_warmup_steps, 0)


def resolve_device(device: str) -> str:
    """train.device as torch takes it: auto -> cuda when a CUDA device is present, else cpu."""
    if device != "auto":
        return device
    import torch
    return "cuda" if torch.cuda.is_available() else "cpu"


@dataclass
class TrainConfig:
    seed: int = 0
    device: str = "auto"
    """auto (CUDA when present, else the CPU, said in one line), cuda, cuda:N or cpu."""
    logger: str = "jsonl"
    """Experiment tracking besides RUN/<phase>/log.jsonl (always written): jsonl (nothing else) | tensorboard |
    wandb (offline unless WANDB_MODE says otherwise)."""
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
    grad_accum: int = 1
    """Gradient accumulation: each rank's share of a step's batch is run as this many micro-batches, whose
    gradients add up before each optimizer step (the step equals the whole-batch step; global batch =
    phase batch_size, split over the data-parallel ranks, then into micro-batches)."""

    def __post_init__(self) -> None:
        check_at_least("train.eval_every", self.eval_every, 0)
        check_at_least("train.grad_accum", self.grad_accum, 1)
        check_choice("train.logger", self.logger, ("jsonl", "tensorboard", "wandb"))
        if not (self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:")):
            raise ConfigError(f"train.device must be auto, cpu, cuda or cuda:N, got {self.device!r}")
        for name in ("checkpoint_every", "log_every", "keep_checkpoints"):
            check_at_least(f"train.{name}", getattr(self, name), 1)


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
    dp_replicate: int = 1
    """Data-parallel replicas (HSDP: weights replicated across this mesh dimension, e.g. across nodes)."""
    dp_shard: int = -1
    """Data-parallel ranks the weights are sharded over (FSDP2), per replica. -1: what the world size leaves
    (world / (dp_replicate x cp))."""
    cp: int = 1
    """Context-parallel degree: the ranks that share one sample, its token sequence split over them (diffusers'
    context parallelism; weights are sharded over them too)."""
    cp_kind: str = "ulysses"
    """ulysses (all-to-all over heads: the head count must divide by cp) | ring (K/V passed around; needs an
    attention backend that returns the log-sum-exp: parallel.attention_backend)."""
    attention_backend: str = ""
    """diffusers attention backend of every network under torchrun (model.set_attention_backend), e.g. flash,
    _native_flash, _native_cudnn; empty: diffusers' default (native SDPA, which Ulysses supports and ring does not)."""
    cpu_offload: bool = False
    """FSDP2 CPUOffloadPolicy: sharded parameters, gradients and optimizer states live in CPU memory."""
    accum_sync: str = "last"
    """With train.grad_accum > 1: last = reduce gradients only after the last micro-batch (full unsharded
    gradients are held between micro-batches); every = reduce-scatter after each micro-batch (sharded
    gradients, more communication: the choice at 14B)."""
    init_timeout_s: int = 1800
    """Collective timeout while the roles are built and loaded (slow at 14B)."""
    timeout_s: int = 600
    """Collective timeout during training: a rank that stops answering ends the run after this long."""

    def __post_init__(self) -> None:
        check_choice("parallel.param_dtype", self.param_dtype, ("float32", "bfloat16"))
        check_choice("parallel.reduce_dtype", self.reduce_dtype, ("float32", "bfloat16"))
        check_choice("parallel.backend", self.backend, ("auto", "gloo", "nccl"))
        check_choice("parallel.cp_kind", self.cp_kind, ("ulysses", "ring"))
        if self.cp > 1 and self.cp_kind == "ring" and self.attention_backend in ("", "native"):
            raise ConfigError("parallel.cp_kind=ring needs an attention backend that returns the log-sum-exp; set "
                              "parallel.attention_backend (flash, _native_flash or _native_cudnn on GPUs), or use "
                              "parallel.cp_kind=ulysses")
        check_choice("parallel.accum_sync", self.accum_sync, ("last", "every"))
        check_at_least("parallel.dp_replicate", self.dp_replicate, 1)
        check_at_least("parallel.cp", self.cp, 1)
        if self.dp_shard != -1:
            check_at_least("parallel.dp_shard", self.dp_shard, 1)
        check_at_least("parallel.init_timeout_s", self.init_timeout_s, 1)
        check_at_least("parallel.timeout_s", self.timeout_s, 1)


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
    """vpae | dmd2 | lcm | pcm | dcm | add | apt | md | ladd | rcm (docs/COMPARISON_METHODS.md)."""
    comparison: ComparisonConfig = field(default_factory=ComparisonConfig)
    dmd2: DMD2Config = field(default_factory=DMD2Config)
    consistency: ConsistencyConfig = field(default_factory=ConsistencyConfig)
    add: ADDConfig = field(default_factory=ADDConfig)
    apt: APTConfig = field(default_factory=APTConfig)
    md: MDConfig = field(default_factory=MDConfig)
    pcm: PCMConfig = field(default_factory=PCMConfig)
    ladd: LADDConfig = field(default_factory=LADDConfig)
    rcm: RCMConfig = field(default_factory=RCMConfig)

    def __post_init__(self) -> None:
        validate(self)


def _non_finite(obj, where: str = ""):
    """The first float (or float in a tuple/list) of a config that is NaN or infinite, as (key, value)."""
    import math
    from dataclasses import fields, is_dataclass
    if is_dataclass(obj):
        for f in fields(obj):
            found = _non_finite(getattr(obj, f.name), f"{where}.{f.name}".lstrip("."))
            if found:
                return found
    elif isinstance(obj, (tuple, list)):
        for v in obj:
            found = _non_finite(v, where)
            if found:
                return found
    elif isinstance(obj, float) and not math.isfinite(obj):
        return where, obj
    return None


def validate(cfg: VPAEConfig) -> None:
    """What spans sections (each section checks its own values when it is built)."""
    bad = _non_finite(cfg)
    if bad:
        raise ConfigError(f"{bad[0]} is {bad[1]}; every number in a config must be finite")
    check_choice("method", cfg.method, METHODS)
    c, nfe = cfg.consistency, cfg.comparison.nfe
    if cfg.method not in ("pcm", "dcm"):  # the phase checks concern the phased consistency models only
        return
    if c.num_timesteps % nfe:
        raise ConfigError(f"consistency.num_timesteps ({c.num_timesteps}) must be a multiple of comparison.nfe "
                          f"({nfe}) so every phase edge lies on the ODE grid")
    if cfg.method == "dcm" and not 0 < c.semantic_phases < nfe:
        raise ConfigError(f"consistency.semantic_phases must be in 1..comparison.nfe - 1 = {nfe - 1}, "
                          f"got {c.semantic_phases}")
