"""ConvLSTM benchmark: ``fusednn.nn.ConvLSTM`` (one layer, zero initial state) against the
eager per-step formulation a model without a fused ConvLSTM runs (``eager``: per step one
convolution of ``[x_t, h_{t-1}]`` and the gate math as separate PyTorch ops), once with
contiguous (NCHW) frames, as such code is usually written, and once with channels-last
frames (``eager_channels_last``), its fastest form on the CPU.

bfloat16 on a GPU, float32 on the CPU; shapes from the registry (``fusednn.cases.conv_lstm``).
FLOPs: the forward's convolutions, 2·T·B·H·W·4Hc·(C + Hc)·kh·kw; the backward does twice
that (the gradients of the inputs and of the weights), fwd+bwd three times.
"""

from __future__ import annotations

import torch

import fusednn

from .runner import Case, register

MODE_FLOPS = {"fwd": 1.0, "bwd": 2.0, "fwd+bwd": 3.0}  # multiples of the forward's FLOPs


def conv_lstm_flops(T: int, B: int, C: int, Hc: int, H: int, W: int, k: int) -> float:
    """Forward FLOPs of one ConvLSTM layer: the input and hidden convolutions to 4Hc gates."""
    return 2.0 * T * B * H * W * 4 * Hc * (C + Hc) * k * k


class EagerConvLSTM(torch.nn.Module):
    """One ConvLSTM layer as it is usually written: per step, one convolution of the
    concatenated ``[x_t, h_{t-1}]`` (``nn.Conv2d`` holding ``[W_ih | W_hh]`` and
    ``b_ih + b_hh``), then the gates and the state update as separate eager ops.
    ``channels_last`` keeps every frame channels-last."""

    def __init__(self, fused: fusednn.nn.ConvLSTM, channels_last: bool = False):
        super().__init__()
        weight = fused.weight_ih_l0
        self.hidden_channels = fused.hidden_channels
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.conv = torch.nn.Conv2d(fused.input_channels + fused.hidden_channels, 4 * fused.hidden_channels,
                                    fused.kernel_size, padding=(fused.kernel_size[0] // 2, fused.kernel_size[1] // 2),
                                    bias=fused.bias, device=weight.device, dtype=weight.dtype)
        with torch.no_grad():
            self.conv.weight.copy_(torch.cat([fused.weight_ih_l0, fused.weight_hh_l0], dim=1))
            if fused.bias:
                self.conv.bias.copy_(fused.bias_ih_l0 + fused.bias_hh_l0)
        self.conv.to(memory_format=self.memory_format)

    def forward(self, x):
        T, B, _, H, W = x.shape
        h = x.new_zeros(B, self.hidden_channels, H, W).contiguous(memory_format=self.memory_format)
        c = torch.zeros_like(h)
        outputs = []
        for x_t in x:
            gates = self.conv(torch.cat([x_t.contiguous(memory_format=self.memory_format), h], dim=1))
            i, f, g, o = gates.chunk(4, dim=1)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            h = torch.sigmoid(o) * torch.tanh(c)
            outputs.append(h)
        return torch.stack(outputs), (h, c)


@register("conv_lstm")
def conv_lstm(shape: dict, device: torch.device) -> Case:
    B, T, C, Hc, H, W, k = (shape[key] for key in ("B", "T", "C", "Hc", "H", "W", "k"))
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    fused = fusednn.nn.ConvLSTM(C, Hc, k, device=device, dtype=dtype)
    providers = {
        "fusednn": lambda: fused,
        "eager": lambda: EagerConvLSTM(fused),
        "eager_channels_last": lambda: EagerConvLSTM(fused, channels_last=True),
    }
    x = torch.randn(T, B, C, H, W, device=device, dtype=dtype, requires_grad=True)
    forward = conv_lstm_flops(T, B, C, Hc, H, W, k)
    return Case(dtype, (x,), providers, flops={mode: factor * forward for mode, factor in MODE_FLOPS.items()})
