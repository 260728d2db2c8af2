"""Byte and parameter accounting: live tensor bytes of a variant's networks and optimizers, parameter
counts (the project's own counter, and peft's LoRA count from the shapes), MiB / GiB."""

from __future__ import annotations

import torch

# The project's own parameter counter (trainable_only=True counts what an optimizer would update).
from vpae.training.model import count_parameters as count_params  # noqa: F401

MIB = 2 ** 20
GIB = 2 ** 30


def mib(b) -> float:
    return b / MIB


def tensor_bytes(modules: dict, optimizers: dict) -> dict:
    """Bytes of parameters (unique storage), their gradients (one per optimised parameter: what backward
    allocates for it) and optimizer states, summed over the variant's networks. "Optimised" = held by one of
    the variant's optimizers (a requires_grad tensor no optimizer steps, e.g. the fake LoRA in phase II,
    gets no gradient and is counted as a weight only)."""
    optimised = {p.data_ptr() for o in optimizers.values() for g in o.param_groups for p in g["params"]}
    seen, weights, grads, n_params, n_train = set(), 0, 0, 0, 0
    for m in modules.values():
        for p in m.parameters():
            if p.data_ptr() in seen:
                continue
            seen.add(p.data_ptr())
            nb = p.numel() * p.element_size()
            weights += nb
            n_params += p.numel()
            if p.data_ptr() in optimised:
                grads += nb
                n_train += p.numel()
    opt = 0
    for o in optimizers.values():
        for st in o.state.values():
            for t in st.values():
                if torch.is_tensor(t):
                    opt += t.numel() * t.element_size()
    return {"weights": weights, "grads": grads, "optimizer": opt, "total": weights + grads + opt,
            "params": n_params, "optimised_params": n_train}


def lora_param_count(model, rank: int, targets) -> int:
    """Parameters peft's LoRA adds: rank x (in + out) for every Linear whose name ends with a target
    (peft's list-of-names matching). Works on a meta-device model."""
    n = 0
    for name, m in model.named_modules():
        if isinstance(m, torch.nn.Linear) and any(name == t or name.endswith("." + t) for t in targets):
            n += rank * (m.in_features + m.out_features)
    return n
