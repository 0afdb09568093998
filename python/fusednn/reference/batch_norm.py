"""Plain-PyTorch batch normalization with a fused residual add and activation:
``act(F.batch_norm(input, ...) + residual)``. Autograd, the running-statistics update and
every error come from torch.nn.functional.batch_norm."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from .._validate import accumulate_dtype
from ._activation import apply_activation

__all__ = ["batch_norm"]


def batch_norm(
    input: torch.Tensor,
    running_mean: Optional[torch.Tensor],
    running_var: Optional[torch.Tensor],
    weight: Optional[torch.Tensor] = None,
    bias: Optional[torch.Tensor] = None,
    training: bool = False,
    momentum: float = 0.1,
    eps: float = 1e-5,
    *,
    residual: Optional[torch.Tensor] = None,
    activation: Optional[str] = None,
) -> torch.Tensor:
    """y = act(batch_norm(input) + residual).

    input: [N, C, *] (any number of trailing dims, as F.batch_norm); running_mean,
    running_var, weight, bias: [C] or None; residual: input's shape or None; activation:
    None, "relu", "gelu", "gelu_tanh" or "silu". In training the running statistics
    (when given) are updated in place by F.batch_norm.
    """
    y = F.batch_norm(input, running_mean, running_var, weight, bias, training, momentum, eps)
    if residual is not None:
        y = y + residual
    return apply_activation(y, activation)


def normalize_with_statistics(
    input: torch.Tensor,
    mean: torch.Tensor,
    invstd: torch.Tensor,
    weight: Optional[torch.Tensor],
    bias: Optional[torch.Tensor],
    residual: Optional[torch.Tensor],
    activation: Optional[str],
) -> torch.Tensor:
    """act((input - mean) * invstd * weight + bias + residual) with given per-channel
    statistics ``mean`` and ``invstd`` ([C]): batch normalization once its statistics are
    fixed (evaluation mode), computed in float32 (float64 for float64 input) and cast
    back to the input's dtype."""
    compute = accumulate_dtype(input.dtype)
    shape = (1, -1) + (1,) * (input.dim() - 2)
    y = (input.to(compute) - mean.to(compute).view(shape)) * invstd.to(compute).view(shape)
    if weight is not None:
        y = y * weight.to(compute).view(shape)
    if bias is not None:
        y = y + bias.to(compute).view(shape)
    if residual is not None:
        y = y + residual.to(compute)
    return apply_activation(y, activation).to(input.dtype)
