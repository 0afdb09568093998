"""Plain-PyTorch LayerNorm and RMSNorm: the statistics over the trailing
``normalized_shape`` dimensions, computed in float32 (float64 for float64 inputs),
the result cast back to the input's dtype. Autograd comes from PyTorch."""

from __future__ import annotations

from typing import Sequence

import torch

from .._validate import accumulate_dtype

__all__ = ["default_rms_eps", "layer_norm", "rms_norm"]


def _normalized_dims(normalized_shape: int | Sequence[int]) -> tuple[int, ...]:
    count = 1 if isinstance(normalized_shape, int) else len(normalized_shape)
    return tuple(range(-count, 0))


def default_rms_eps(dtype: torch.dtype) -> float:
    """torch's rms_norm default eps: the machine epsilon of the dtype the statistics are
    computed in (float32 for float16/bfloat16/float32 inputs, float64 for float64)."""
    return torch.finfo(accumulate_dtype(dtype)).eps


def layer_norm(
    x: torch.Tensor,
    normalized_shape: int | Sequence[int],
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    eps: float = 1e-5,
) -> torch.Tensor:
    """y = (x - mean) / sqrt(var + eps) * weight + bias, over the trailing dims.

    x: [..., *normalized_shape]; weight, bias: normalized_shape or None. Biased variance.
    """
    dims = _normalized_dims(normalized_shape)
    compute = accumulate_dtype(x.dtype)
    xf = x.to(compute)
    mean = xf.mean(dim=dims, keepdim=True)
    centered = xf - mean
    var = centered.square().mean(dim=dims, keepdim=True)
    y = centered * torch.rsqrt(var + eps)
    if weight is not None:
        y = y * weight.to(compute)
    if bias is not None:
        y = y + bias.to(compute)
    return y.to(x.dtype)


def rms_norm(
    x: torch.Tensor,
    normalized_shape: int | Sequence[int],
    weight: torch.Tensor | None = None,
    eps: float | None = None,
) -> torch.Tensor:
    """y = x / sqrt(mean(x^2) + eps) * weight, over the trailing dims.

    x: [..., *normalized_shape]; weight: normalized_shape or None; eps None means
    ``default_rms_eps(x.dtype)`` (as torch.nn.functional.rms_norm).
    """
    if eps is None:
        eps = default_rms_eps(x.dtype)
    dims = _normalized_dims(normalized_shape)
    compute = accumulate_dtype(x.dtype)
    xf = x.to(compute)
    y = xf * torch.rsqrt(xf.square().mean(dim=dims, keepdim=True) + eps)
    if weight is not None:
        y = y * weight.to(compute)
    return y.to(x.dtype)
