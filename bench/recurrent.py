"""LSTM benchmark: ``fusednn.nn.LSTM`` (one layer, zero initial state) against
``torch.nn.LSTM`` — cuDNN on a GPU (``cudnn``), ATen's oneDNN kernel on the CPU (``torch``) —
and, on a GPU, a Python loop over ``nn.LSTMCell`` (``torch_cell_loop``).

bfloat16 on a GPU, float32 on the CPU; shapes from the registry (``fusednn.cases.recurrent``).
FLOPs: the forward's GEMMs, 2·T·B·4H·(I + H); the backward does twice that (the gradients of
the inputs and of the weights), fwd+bwd three times.
"""

from __future__ import annotations

import torch

import fusednn

from .runner import Case, register

MODE_FLOPS = {"fwd": 1.0, "bwd": 2.0, "fwd+bwd": 3.0}  # multiples of the forward's FLOPs


def lstm_flops(T: int, B: int, I: int, H: int) -> float:
    """Forward GEMM FLOPs of one LSTM layer: input and recurrent projections to 4H gates."""
    return 2.0 * T * B * 4 * H * (I + H)


class CellLoop(torch.nn.Module):
    """What a model without a fused LSTM runs: ``nn.LSTMCell`` once per step."""

    def __init__(self, cell: torch.nn.LSTMCell):
        super().__init__()
        self.cell = cell

    def forward(self, x):
        h = x.new_zeros(x.shape[1], self.cell.hidden_size)
        c = torch.zeros_like(h)
        outs = []
        for step in x:
            h, c = self.cell(step, (h, c))
            outs.append(h)
        return torch.stack(outs), (h, c)


def _fused_copy(ref: torch.nn.LSTM) -> fusednn.nn.LSTM:
    weight = ref.weight_ih_l0
    ours = fusednn.nn.LSTM(ref.input_size, ref.hidden_size, device=weight.device, dtype=weight.dtype)
    ours.load_state_dict(ref.state_dict())
    return ours


@register("lstm")
def lstm(shape: dict, device: torch.device) -> Case:
    B, T, I, H = shape["B"], shape["T"], shape["I"], shape["H"]
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    ref = torch.nn.LSTM(I, H, device=device, dtype=dtype)
    providers = {"fusednn": lambda: _fused_copy(ref)}
    if device.type == "cuda":
        providers["cudnn"] = lambda: ref
        providers["torch_cell_loop"] = lambda: CellLoop(torch.nn.LSTMCell(I, H, device=device, dtype=dtype))
    else:
        providers["torch"] = lambda: ref
    x = torch.randn(T, B, I, device=device, dtype=dtype, requires_grad=True)
    forward = lstm_flops(T, B, I, H)
    return Case(dtype, (x,), providers, flops={mode: factor * forward for mode, factor in MODE_FLOPS.items()})
