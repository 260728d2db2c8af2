"""Consistency distillation of the teacher's probability-flow ODE: LCM (one phase) and PCM (several phases).

LCM (Luo et al. 2023, "Latent Consistency Models", eq. 8-9 and Algorithm 1): the student f_theta maps a
point x_t of the teacher's CFG-augmented PF-ODE to the trajectory's origin; the target is the EMA network
f_theta^- evaluated one solver step earlier, at x_{t-k} = Psi(x_t, t, t-k; w) (skipping-step k, CFG scale w):
    L_CD = d( f_theta(x_t, t), f_theta^-(x_{t-k}, t-k) ).
PCM (Wang et al. 2024, "Phased Consistency Model", eq. 5-7): the ODE is cut into M phases by edges
1 = s_0 > s_1 > ... > s_M = 0 and the student maps x_t, s_{m+1} < t <= s_m, to the phase's lower edge
s_{m+1} (not to 0), so an M-step sampler walks the edges deterministically; M = 1 is LCM.

Rectified flow makes both exact and parameter-free: the consistency function to edge s is the Euler jump
    f(x_t, t -> s) = x_t + (s - t) v(x_t, t)
which satisfies the boundary condition f(x_s, s -> s) = x_s for any v (LCM's c_skip/c_out do this job for
eps-prediction models); at s = 0 it is the x0 prediction x_t - t v. The teacher's solver Psi is one Euler
(= DDIM) step with classifier-free guidance. The noise levels are drawn here (EDM2 style), through
vpae.randomness.

PCM's adversarial consistency loss (G-U-N/Phased-Consistency-Model
code/text_to_image_sd3/train_pcm_lora_sd3_adv.py:1383-1500, discriminator_sd3.py d_loss / g_loss), also DCM's
detail-expert GAN (Vchitect/DCM fastvideo/distill_dcm_wan_detail_expert.py:466-561, 647-713): the prediction
and the consistency target, both at the phase's lower edge s_e, travel up to a sigma drawn inside the phase,
    x_adv = ((1 - sigma) x_{s_e} + (sigma - s_e) eps) / (1 - s_e),
and a discriminator on the frozen teacher's features at sigma tells them apart: hinge for the heads,
relu(1 - D(fake)) for the generator. PCM draws separate noise for the two sides, DCM shares it.
"""

from __future__ import annotations

import torch

from vpae import flow, randomness
from vpae.losses.adversarial import discriminator_accuracy, discriminator_loss
from vpae.sampling import guided_velocity

Tensor = torch.Tensor


def ode_grid(edges, num_timesteps: int) -> Tensor:
    """The discrete solver grid sigma_0 = 0 < ... < sigma_N = 1 (float64, (N + 1,)): N / M points per phase,
    uniform in sigma inside each phase, so every phase edge is a grid point. edges: 1 = s_0 > ... > s_M = 0."""
    asc = [float(e) for e in reversed(list(edges))]
    per = num_timesteps // (len(asc) - 1)
    parts = [torch.linspace(asc[i], asc[i + 1], per + 1, dtype=torch.float64)[:-1] for i in range(len(asc) - 1)]
    return torch.cat(parts + [torch.tensor([asc[-1]], dtype=torch.float64)])


def jump(x_t: Tensor, v: Tensor, t: Tensor, s: Tensor) -> Tensor:
    """The consistency function to edge s: x_t + (s - t) v (the Euler jump along the predicted velocity)."""
    return x_t + (flow.expand_sigma(s, x_t) - flow.expand_sigma(t, x_t)) * v


def pseudo_huber(a: Tensor, b: Tensor, c: float) -> Tensor:
    """Per-sample mean of sqrt((a - b)^2 + c^2) - c (LCM's released training code, c = 0.001)."""
    return (((a - b) ** 2 + c * c).sqrt() - c).flatten(1).mean(1)


class PhasedConsistencyLoss:
    """L = d(f_theta(x_t, t -> s_e), f_theta^-(Psi(x_t, t, t'), t' -> s_e)) with t' = max(t - k, s_e), s_e the
    lower edge of t's phase. Returns per-sample terms; never calls backward.

    edges: 1 = s_0 > ... > s_M = 0, the few-step sampler's sigmas and 0 (sampling.phase_edges(M, shift,
    schedule)); [1, 0] is LCM. num_timesteps N (N % M == 0): the solver grid, built per phase from the edges
    so every edge is a grid point; skip k; guidance w of the teacher's CFG-augmented solver; distance 'huber' |
    'l2'."""

    def __init__(self, edges, num_timesteps: int, skip: int = 1, guidance: float = 1.0,
                 distance: str = "huber", huber_c: float = 1e-3):
        edges = [float(e) for e in edges]
        phases = len(edges) - 1
        if phases < 1 or edges[0] != 1.0 or edges[-1] != 0.0 or any(a <= b for a, b in zip(edges, edges[1:])):
            raise ValueError(f"edges must decrease from 1 to 0, got {edges}")
        if num_timesteps % phases:
            raise ValueError(f"num_timesteps {num_timesteps} must be a multiple of the number of phases {phases}")
        self.N, self.M, self.k, self.w = num_timesteps, phases, skip, guidance
        self.distance, self.c = distance, huber_c
        self.grid = ode_grid(edges, num_timesteps)
        self.per_phase = num_timesteps // phases

    def edges(self) -> list[float]:
        """Phase edges s_0 = 1 > ... > s_M = 0 (the few-step sampler's sigmas)."""
        return [float(self.grid[self.N - m * self.per_phase]) for m in range(self.M + 1)]

    def sample_indices(self, n: int, device, phases: tuple[int, int] | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """Grid indices (j, j', e) per sample: t = grid[j], t' = grid[j'], edge = grid[e]. `phases` = (first,
        last) restricts t to those phases (0 = the phase starting at sigma 1)."""
        first, last = phases if phases is not None else (0, self.M - 1)
        lo = (self.M - 1 - last) * self.per_phase + 1     # smallest index inside phase `last`
        hi = (self.M - first) * self.per_phase            # largest index inside phase `first`
        u = randomness.rand(n, device)
        j = (lo + torch.floor(u * (hi - lo + 1))).long().clamp(max=hi).cpu()
        e = ((j - 1) // self.per_phase) * self.per_phase  # the phase's lower edge index
        j_prev = torch.maximum(j - self.k, e)
        return j, j_prev, e

    def adversarial_sigma(self, e: Tensor, device) -> Tensor:
        """A grid sigma drawn uniformly from [s_e, s_upper) of each sample's phase (e: its lower edge's grid
        index): PCM's adv_index in [end_index, end_index + N / M) (train_pcm_lora_sd3_adv.py:1383-1398)."""
        u = randomness.rand(len(e), device).cpu()
        i = e + torch.floor(u * self.per_phase).long().clamp(max=self.per_phase - 1)
        return self.grid[i].to(device=device, dtype=torch.float32)

    def __call__(self, student, target, teacher, x0: Tensor, cond,
                 phases: tuple[int, int] | None = None) -> dict[str, Tensor]:
        """student / target / teacher: backbones (velocity(x, sigma, cond)). The caller puts the teacher in
        its real-score state. Returns {"loss": (B,), "pred", "target", "t", "edge", "x_t", "edge_index"}."""
        b, dev = x0.shape[0], x0.device
        j, j_prev, e = self.sample_indices(b, dev, phases)
        t, t_prev, edge = (self.grid[i].to(device=dev, dtype=torch.float32) for i in (j, j_prev, e))
        x_t = flow.add_noise(x0, randomness.randn_like(x0), t)
        pred = jump(x_t, student.velocity(x_t, t, cond), t, edge)
        with torch.no_grad():
            v_teacher, _ = guided_velocity(teacher, x_t, t, cond, self.w)
            x_prev = flow.euler_step(x_t, v_teacher, t, t_prev)          # Psi(x_t, t, t'; w)
            # f^-(x_t', t' -> s_e); at t' == s_e the coefficient (s_e - t') is exactly 0: the boundary condition
            tgt = jump(x_prev, target.velocity(x_prev, t_prev.clamp_min(1e-6), cond), t_prev, edge)
        if self.distance == "huber":
            loss = pseudo_huber(pred, tgt, self.c)
        else:
            loss = (pred - tgt).pow(2).flatten(1).mean(1)
        return {"loss": loss, "pred": pred, "target": tgt, "t": t, "edge": edge, "x_t": x_t, "edge_index": e}


def renoise(x_edge: Tensor, eps: Tensor, edge: Tensor, sigma: Tensor) -> Tensor:
    """((1 - sigma) x + (sigma - s_e) eps) / (1 - s_e): a point at the phase edge s_e carried up to sigma
    (train_pcm_lora_sd3_adv.py:1446-1453; distill_dcm_wan_detail_expert.py:706-713). s_e < 1 (a lower edge)."""
    s, e = flow.expand_sigma(sigma, x_edge), flow.expand_sigma(edge, x_edge)
    return ((1 - s) * x_edge + (s - e) * eps) / (1 - e)


class AdversarialConsistencyLoss:
    """PCM's adversarial consistency loss on a PhasedConsistencyLoss output. disc(backbone, x, sigma, cond,
    backbone_grad) -> logits (B,) (a FeatureDiscriminator); shared_noise: the real side reuses the fake's noise
    (DCM) or draws its own (PCM). Per-sample terms; never calls backward."""

    def __init__(self, disc, shared_noise: bool):
        self.disc, self.shared_noise = disc, shared_noise

    def samples(self, loss: PhasedConsistencyLoss, out: dict, x_data: Tensor | None = None) -> dict[str, Tensor]:
        """{"fake": the prediction carried to sigma (with graph), "target": the consistency target carried to
        sigma, "real": that target, or x_data noised to sigma when given (DCM's gan_real: data), "sigma"}."""
        pred = out["pred"]
        sigma = loss.adversarial_sigma(out["edge_index"], pred.device)
        eps = randomness.randn_like(pred)
        fake = renoise(pred, eps, out["edge"], sigma)
        target = renoise(out["target"].detach(), eps if self.shared_noise else randomness.randn_like(pred),
                         out["edge"], sigma)
        real = target if x_data is None else flow.add_noise(x_data, randomness.randn_like(x_data), sigma)
        return {"fake": fake, "target": target, "real": real, "sigma": sigma}

    def generator(self, teacher, fake: Tensor, sigma: Tensor, cond) -> Tensor:
        """relu(1 - D(fake)) (discriminator_sd3.py g_loss; distill_dcm_wan_detail_expert.py:554-558)."""
        return torch.relu(1 - self.disc(teacher, fake, sigma, cond, True))

    def discriminator(self, teacher, fake: Tensor, real: Tensor, sigma: Tensor, cond) -> tuple[Tensor, Tensor]:
        """(hinge relu(1 + D(fake)) + relu(1 - D(real)) per sample, pair accuracy); only the heads get a graph."""
        logits_real = self.disc(teacher, real.detach(), sigma, cond, False)
        logits_fake = self.disc(teacher, fake.detach(), sigma, cond, False)
        return discriminator_loss(logits_real, logits_fake), discriminator_accuracy(logits_real, logits_fake)
