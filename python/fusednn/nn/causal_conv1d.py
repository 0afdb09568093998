"""``CausalConv1d``: the causal depthwise convolution of Mamba-style blocks on the fused ops
``fusednn.ops.causal_conv1d`` (a sequence) and ``fusednn.ops.causal_conv1d_update`` (one
decoding step).

torch has no such module (``torch.nn.Conv1d`` pads both sides), so this one is not a
drop-in; its parameters are those of a depthwise ``torch.nn.Conv1d(channels, channels,
kernel_size, groups=channels)`` without the singleton input-channel dim, initialised the
same way.
"""

from __future__ import annotations

import math
from typing import Optional

import torch

from .. import ops
from .._validate import Args, dtype_name, shape_of
from ..ops.causal_conv1d import ACTIVATIONS
from ..reference._activation import check_activation

__all__ = ["CausalConv1d"]

_WHERE = "fusednn.nn.CausalConv1d"


class CausalConv1d(torch.nn.Module):
    """A causal depthwise conv1d: channel d of the input convolved with its own
    ``kernel_size`` taps, output position t seeing the inputs t-kernel_size+1..t::

        y[b, d, t] = act(bias[d] + sum_k weight[d, k] * xpad[b, d, t + k])

    with xpad the input left-padded by kernel_size - 1 zeros (or by a given state).

    Args:
        channels: D, the channels of the input and the output.
        kernel_size: W, the taps per channel, 2 to 8.
        bias: whether the module has a ``bias`` (default True).
        activation: None or "silu", applied to the output.
        device, dtype: of the parameters.

    Parameters: ``weight`` [D, W] and ``bias`` [D], both uniform in ±1/sqrt(W) (torch's
    Conv1d initialisation: kaiming-uniform with a = sqrt(5) over the fan-in W).

    ``forward(x, initial_state=None, return_final_state=False)``: x [B, D, L] (a [B, L, D]
    tensor transposed is read in place) -> y [B, D, L]; initial_state [B, D, W-1] holds the
    W-1 inputs before the sequence (zeros when None); with return_final_state returns
    ``(y, final_state)``, final_state [B, D, W-1] the last W-1 inputs, for a following call
    or for ``step``.

    ``step(x_t, conv_state)``: one decoding step, x_t [B, D] -> y_t [B, D]; conv_state
    [B, D, W-1] (a final_state, or zeros) is updated in place.
    """

    def __init__(self, channels: int, kernel_size: int, bias: bool = True, activation: Optional[str] = None,
                 device=None, dtype=None):
        super().__init__()
        args = Args(_WHERE)
        self.channels = args.integer("channels", channels, minimum=1)
        self.kernel_size = args.integer("kernel_size", kernel_size, minimum=2, maximum=8)
        args.boolean("bias", bias)
        self.activation = check_activation(args, activation, ACTIVATIONS)
        factory = dict(device=device, dtype=dtype)
        self.weight = torch.nn.Parameter(torch.empty(self.channels, self.kernel_size, **factory))
        if bias:
            self.bias = torch.nn.Parameter(torch.empty(self.channels, **factory))
        else:
            self.register_parameter("bias", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # torch.nn.Conv1d's rule: kaiming_uniform_(a=sqrt(5)) is uniform in ±1/sqrt(fan_in),
        # and the fan-in of a depthwise tap set is kernel_size; the bias takes the same bound.
        torch.nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            bound = 1.0 / math.sqrt(self.kernel_size)
            torch.nn.init.uniform_(self.bias, -bound, bound)

    def extra_repr(self) -> str:
        s = f"{self.channels}, kernel_size={self.kernel_size}"
        if self.bias is None:
            s += ", bias=False"
        if self.activation is not None:
            s += f", activation={self.activation!r}"
        return s

    def _check_input(self, args: Args, name: str, t, doc: str, ndim: int) -> None:
        args.tensor(name, t, doc, ndim=ndim, dtypes=None)
        if t.dtype != self.weight.dtype:
            raise args.error(name, f"of the module's dtype {dtype_name(self.weight.dtype)}", dtype_name(t.dtype),
                             TypeError)
        if t.device != self.weight.device:
            raise args.error(name, f"on the module's device {self.weight.device}", str(t.device))
        if t.shape[1] != self.channels:
            raise args.error(name, f"{doc} with D = channels = {self.channels}", shape_of(t))

    def forward(self, x: torch.Tensor, initial_state: Optional[torch.Tensor] = None,
                return_final_state: bool = False):
        self._check_input(Args(_WHERE), "x", x, "[B, D, L]", 3)
        return ops.causal_conv1d(x, self.weight, self.bias, activation=self.activation, initial_state=initial_state,
                                 return_final_state=return_final_state)

    def step(self, x_t: torch.Tensor, conv_state: torch.Tensor) -> torch.Tensor:
        """One decoding step: y_t [B, D] for x_t [B, D]; conv_state [B, D, W-1] is updated in
        place (shifted left by one, x_t appended)."""
        self._check_input(Args(_WHERE), "x_t", x_t, "[B, D]", 2)
        return ops.causal_conv1d_update(x_t, conv_state, self.weight, self.bias, self.activation)
