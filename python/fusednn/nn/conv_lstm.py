"""``ConvLSTM``: a stack of convolutional LSTM layers on the fused op ``fusednn.ops.conv_lstm``.

torch has no ConvLSTM, so this module is not a drop-in; it follows ``torch.nn.LSTM``'s
conventions (time-major by default, ``batch_first``, ``(h_0, c_0)`` stacked over layers,
dropout between layers in training, parameters ``weight_ih_l{k}`` and so on, gate order
i, f, g, o) with convolutions in place of the matrix products.
"""

from __future__ import annotations

import math
import numbers
import warnings
from typing import Optional

import torch
import torch.nn.functional as F

from .. import ops
from .._validate import Args, describe, dtype_name, shape_of

__all__ = ["ConvLSTM"]

_WHERE = "fusednn.nn.ConvLSTM"


def _kernel_size(args: Args, kernel_size) -> tuple[int, int]:
    """An odd int or a pair of odd ints, as (kh, kw)."""
    pair = (kernel_size, kernel_size) if isinstance(kernel_size, numbers.Integral) else kernel_size
    expected = "an odd int or a pair of odd ints (\"same\" padding keeps H and W)"
    if (not isinstance(pair, (tuple, list)) or len(pair) != 2
            or any(not isinstance(k, numbers.Integral) or isinstance(k, bool) for k in pair)):
        raise args.error("kernel_size", expected, describe(kernel_size), TypeError)
    if any(k < 1 or k % 2 == 0 for k in pair):
        raise args.error("kernel_size", expected, repr(kernel_size))
    return int(pair[0]), int(pair[1])


class ConvLSTM(torch.nn.Module):
    """A multi-layer convolutional LSTM (Shi et al., 2015, without peepholes). Layer k runs,
    per time step, with "same" padding::

        gates = conv(x_t, weight_ih_lk) + bias_ih_lk + conv(h_{t-1}, weight_hh_lk) + bias_hh_lk
        i, f, g, o = gates.chunk(4, dim=1)
        c_t = sigmoid(f) c_{t-1} + sigmoid(i) tanh(g),   h_t = sigmoid(o) tanh(c_t)

    and feeds its h_t to layer k + 1 (through dropout in training, except after the last).

    Args:
        input_channels: C, the channels of the input frames.
        hidden_channels: Hc, the channels of h and c.
        kernel_size: an odd int or a pair of odd ints (kh, kw), for both convolutions.
        num_layers: stacked layers (default 1).
        bias: whether each layer has ``bias_ih`` and ``bias_hh`` (default True).
        batch_first: input and output are ``[B, T, ...]`` instead of ``[T, B, ...]``.
        dropout: the probability of dropout on each layer's output but the last, in training.
        device, dtype: of the parameters.

    Parameters of layer k: ``weight_ih_l{k}`` ``[4Hc, C_k, kh, kw]`` (C_0 = C, then Hc),
    ``weight_hh_l{k}`` ``[4Hc, Hc, kh, kw]``, ``bias_ih_l{k}`` and ``bias_hh_l{k}`` ``[4Hc]``,
    all initialised uniform in ±1/sqrt(Hc·kh·kw) (``torch.nn.LSTM``'s rule with the fan-in of
    a convolution).

    Inputs: ``input [T, B, C, H, W]`` (``[B, T, C, H, W]`` with batch_first) and optionally
    ``(h_0, c_0)``, each ``[num_layers, B, Hc, H, W]`` (zeros when absent).

    Outputs: ``(output, (h_n, c_n))``: output ``[T, B, Hc, H, W]`` (``[B, T, Hc, H, W]``
    with batch_first), the last layer's h_t for every t; h_n and c_n ``[num_layers, B,
    Hc, H, W]``, each layer's state after the last step.
    """

    def __init__(self, input_channels: int, hidden_channels: int, kernel_size, num_layers: int = 1,
                 bias: bool = True, batch_first: bool = False, dropout: float = 0.0, device=None, dtype=None):
        super().__init__()
        args = Args(_WHERE)
        self.input_channels = args.integer("input_channels", input_channels, minimum=1)
        self.hidden_channels = args.integer("hidden_channels", hidden_channels, minimum=1)
        self.kernel_size = _kernel_size(args, kernel_size)
        self.num_layers = args.integer("num_layers", num_layers, minimum=1)
        self.bias = args.boolean("bias", bias)
        self.batch_first = args.boolean("batch_first", batch_first)
        self.dropout = args.real("dropout", dropout, minimum=0.0, maximum=1.0)
        if self.dropout > 0 and self.num_layers == 1:
            warnings.warn(f"{_WHERE}: dropout acts between layers, so a non-zero dropout expects num_layers "
                          f"greater than 1; got dropout={self.dropout} and num_layers=1", stacklevel=2)
        factory = dict(device=device, dtype=dtype)
        Hc, (kh, kw) = self.hidden_channels, self.kernel_size
        for layer in range(self.num_layers):
            channels = self.input_channels if layer == 0 else Hc
            self.register_parameter(f"weight_ih_l{layer}",
                                    torch.nn.Parameter(torch.empty(4 * Hc, channels, kh, kw, **factory)))
            self.register_parameter(f"weight_hh_l{layer}",
                                    torch.nn.Parameter(torch.empty(4 * Hc, Hc, kh, kw, **factory)))
            if self.bias:
                self.register_parameter(f"bias_ih_l{layer}", torch.nn.Parameter(torch.empty(4 * Hc, **factory)))
                self.register_parameter(f"bias_hh_l{layer}", torch.nn.Parameter(torch.empty(4 * Hc, **factory)))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        bound = 1.0 / math.sqrt(self.hidden_channels * self.kernel_size[0] * self.kernel_size[1])
        for parameter in self.parameters():
            torch.nn.init.uniform_(parameter, -bound, bound)

    def extra_repr(self) -> str:
        s = f"{self.input_channels}, {self.hidden_channels}, kernel_size={self.kernel_size}"
        if self.num_layers != 1:
            s += f", num_layers={self.num_layers}"
        if not self.bias:
            s += ", bias=False"
        if self.batch_first:
            s += ", batch_first=True"
        if self.dropout:
            s += f", dropout={self.dropout}"
        return s

    def _layer_parameters(self, layer: int) -> tuple:
        """(weight_ih, weight_hh, bias_ih, bias_hh) of one layer; the biases None without bias."""
        weights = (getattr(self, f"weight_ih_l{layer}"), getattr(self, f"weight_hh_l{layer}"))
        if not self.bias:
            return (*weights, None, None)
        return (*weights, getattr(self, f"bias_ih_l{layer}"), getattr(self, f"bias_hh_l{layer}"))

    def forward(self, input: torch.Tensor, hx: Optional[tuple[torch.Tensor, torch.Tensor]] = None,  # noqa: A002
                ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        args = Args(_WHERE)
        layout = "[B, T, C, H, W]" if self.batch_first else "[T, B, C, H, W]"
        args.tensor("input", input, layout, ndim=5, dtypes=None)
        weight = self.weight_ih_l0
        if input.dtype != weight.dtype:
            raise args.error("input", f"of the module's dtype {dtype_name(weight.dtype)}", dtype_name(input.dtype),
                             TypeError)
        if input.device != weight.device:
            raise args.error("input", f"on the module's device {weight.device}", str(input.device))
        if input.shape[2] != self.input_channels:
            raise args.error("input", f"{layout} with C = input_channels = {self.input_channels}", shape_of(input))
        x = input.transpose(0, 1) if self.batch_first else input
        _, B, _, H, W = x.shape
        if hx is not None:
            if not isinstance(hx, (tuple, list)) or len(hx) != 2:
                raise args.error("hx", "a pair (h_0, c_0) of tensors or None", describe(hx), TypeError)
            state_doc = "[num_layers, B, Hc, H, W]"
            for name, state in zip(("h_0", "c_0"), hx):
                args.tensor(name, state, state_doc, ndim=5, like=input, like_name="input")
                args.shape(name, state, (self.num_layers, B, self.hidden_channels, H, W), state_doc)

        layer_input = x
        h_n, c_n = [], []
        for layer in range(self.num_layers):
            state = None if hx is None else (hx[0][layer], hx[1][layer])
            y, (h, c) = ops.conv_lstm(layer_input, state, *self._layer_parameters(layer))
            h_n.append(h)
            c_n.append(c)
            layer_input = y
            if self.dropout > 0 and self.training and layer < self.num_layers - 1:
                layer_input = F.dropout(y, self.dropout, training=True)
        output = layer_input.transpose(0, 1) if self.batch_first else layer_input
        return output, (torch.stack(h_n), torch.stack(c_n))
