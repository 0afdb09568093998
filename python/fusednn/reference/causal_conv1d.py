"""Plain-PyTorch causal depthwise conv1d and its one-step decoding update.

Every channel d of x ``[B, D, L]`` is convolved with its own ``W`` taps ``weight[d]``;
output position t sees the inputs t-W+1..t, so the sequence is left-padded with W-1
values: zeros, or ``initial_state`` (the W-1 inputs before position 0, oldest first)::

    xpad = cat(initial_state or zeros, x)            # [B, D, W-1+L]
    y[b, d, t] = act(bias[d] + sum_k weight[d, k] * xpad[b, d, t + k])

which is ``F.conv1d(F.pad(x, (W-1, 0)), weight.unsqueeze(1), bias, groups=D)``.
Computed in float32 (float64 for float64 inputs), the result cast back to x's dtype.
Autograd comes from PyTorch.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from .._validate import accumulate_dtype
from ._activation import apply_activation

__all__ = ["causal_conv1d", "causal_conv1d_update"]


def causal_conv1d(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor] = None,
    *,
    activation: Optional[str] = None,
    initial_state: Optional[torch.Tensor] = None,
    return_final_state: bool = False,
):
    """y = act(causal depthwise conv1d of x with weight + bias).

    x: [B, D, L]; weight: [D, W]; bias: [D] or None; initial_state: [B, D, W-1] or None
    (zeros). Returns y [B, D, L], and with ``return_final_state`` also ``final_state``
    [B, D, W-1], the last W-1 entries of xpad (what a following call takes as its
    initial_state to continue the sequence).
    """
    compute = accumulate_dtype(x.dtype)
    taps = weight.shape[1]
    xf = x.to(compute)
    if initial_state is None:
        xpad = F.pad(xf, (taps - 1, 0))
    else:
        xpad = torch.cat([initial_state.to(compute), xf], dim=-1)
    bias = None if bias is None else bias.to(compute)
    if x.shape[-1] > 0:
        y = F.conv1d(xpad, weight.to(compute).unsqueeze(1), bias, groups=weight.shape[0])
    else:  # no output position (F.conv1d refuses an input shorter than its kernel): an empty y
        y = xpad[..., :0] * weight.to(compute)[:, :1] + (0.0 if bias is None else bias[:, None])
    y = apply_activation(y, activation).to(x.dtype)
    if not return_final_state:
        return y
    final_state = xpad[..., xpad.shape[-1] - (taps - 1):].to(x.dtype)
    return y, final_state


def causal_conv1d_update(
    x_t: torch.Tensor,
    conv_state: torch.Tensor,
    weight: torch.Tensor,
    bias: Optional[torch.Tensor] = None,
    activation: Optional[str] = None,
) -> torch.Tensor:
    """One decoding step: y_t = act(bias + sum over the window (conv_state, then x_t) * weight).

    x_t: [B, D]; conv_state: [B, D, W-1], the W-1 previous inputs oldest first, updated in
    place (shifted left by one, x_t appended); weight: [D, W]; bias: [D] or None.
    Returns y_t [B, D]. The gradient, if asked for, is that of the state before the update.
    """
    compute = accumulate_dtype(x_t.dtype)
    window = torch.cat([conv_state, x_t.unsqueeze(-1)], dim=-1)  # [B, D, W]
    y = (window.to(compute) * weight.to(compute)).sum(-1)
    if bias is not None:
        y = y + bias.to(compute)
    y = apply_activation(y, activation).to(x_t.dtype)
    with torch.no_grad():  # the new state is data, not a function to differentiate
        conv_state.copy_(window[..., 1:])
    return y
