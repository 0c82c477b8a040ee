"""Optimizer parameter groups and schedule lengths of the published recipes."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch

__all__ = ["kernel_weight_decay_groups", "epochs_for_iterations"]


def kernel_weight_decay_groups(
    network: torch.nn.Module, weight_decay: float, extra: Iterable[torch.nn.Parameter] = ()
) -> list[dict]:
    """Two parameter groups: the network's kernels (parameters with more than one dimension) with ``weight_decay``,
    its biases and the ``extra`` parameters (e.g. learnable heatmap σ) without, as TensorFlow's
    ``kernel_regularizer=l2_loss`` (Payer's SCN) regularises kernels only. With SGD, ``weight_decay`` adds
    ``weight_decay * w`` to a kernel's gradient: TensorFlow's ``reg * l2_loss(w)`` (``l2_loss = sum(w²)/2``) is
    ``weight_decay = reg`` on the same loss scale."""
    kernels = [p for p in network.parameters() if p.ndim > 1]
    ids = {id(p) for p in kernels}
    others = [p for p in network.parameters() if id(p) not in ids] + list(extra)
    return [{"params": kernels, "weight_decay": float(weight_decay)}, {"params": others, "weight_decay": 0.0}]


def epochs_for_iterations(iterations: int, num_samples: int, batch_size: int) -> int:
    """Epochs that run at least ``iterations`` optimizer steps over ``num_samples`` samples in batches of
    ``batch_size`` (the last partial batch counted), for recipes given in iterations (MONAI trainers count epochs)."""
    if num_samples < 1 or batch_size < 1:
        raise ValueError(f"epochs_for_iterations: num_samples and batch_size must be >= 1, got {num_samples}, {batch_size}.")
    return max(1, math.ceil(int(iterations) / math.ceil(num_samples / batch_size)))
