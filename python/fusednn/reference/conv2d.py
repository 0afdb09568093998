"""conv2d with the fused epilogue, and depthwise conv2d, in plain PyTorch:

    y = act((conv2d(input, weight) + bias) * scale + shift + residual)

bias, scale and shift are per output channel (each optional), residual has the output's
shape, act one of ``reference._activation.ACTIVATIONS``. A BatchNorm folded into the
convolution (inference) is ``scale = weight / sqrt(running_var + eps)``,
``shift = bias - running_mean * scale``.
"""

from __future__ import annotations

from typing import Optional

import torch.nn.functional as F
from torch import Tensor

from ._activation import apply_activation

__all__ = ["conv2d", "depthwise_conv2d"]


def _per_channel(v: Tensor) -> Tensor:
    # [C] against [N, C, H, W] or unbatched [C, H, W]
    return v.view(-1, 1, 1)


def conv2d(input: Tensor, weight: Tensor, bias: Optional[Tensor] = None, stride=1, padding=0, dilation=1,
           groups: int = 1, *, scale: Optional[Tensor] = None, shift: Optional[Tensor] = None,
           residual: Optional[Tensor] = None, activation: Optional[str] = None) -> Tensor:
    """input [N, C_in, H, W] (or [C_in, H, W]), weight [C_out, C_in / groups, kh, kw]:
    ``act((F.conv2d(input, weight, bias, ...) * scale + shift + residual)``."""
    # bias, scale and shift may be of another float dtype than the input (fp32 parameters of
    # an fp16 model), as the kernels allow; the result is in the input's dtype
    same = bias is None or bias.dtype == input.dtype
    y = F.conv2d(input, weight, bias if same else None, stride, padding, dilation, groups)
    if not same:
        y = y + _per_channel(bias)
    if scale is not None:
        y = y * _per_channel(scale)
    if shift is not None:
        y = y + _per_channel(shift)
    if residual is not None:
        y = y + residual
    return apply_activation(y, activation).to(input.dtype)


def depthwise_conv2d(input: Tensor, weight: Tensor, bias: Optional[Tensor] = None, stride=1, padding=0,
                     dilation=1, *, scale: Optional[Tensor] = None, shift: Optional[Tensor] = None,
                     residual: Optional[Tensor] = None, activation: Optional[str] = None) -> Tensor:
    """conv2d with groups = channels: input [N, C, H, W], weight [C, 1, kh, kw] (torch's layout)."""
    return conv2d(input, weight, bias, stride, padding, dilation, input.shape[-3], scale=scale, shift=shift,
                  residual=residual, activation=activation)
