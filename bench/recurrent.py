"""LSTM and GRU benchmarks: ``fusednn.nn.LSTM`` / ``GRU`` (L layers, bidirectional when D = 2,
zero initial state) against ``torch.nn.LSTM`` / ``GRU`` — cuDNN on a GPU (``cudnn``), ATen's
oneDNN kernels on the CPU (``torch``) — and, on a GPU, the fused module with its whole
forward (and backward) captured once in a CUDA graph (``fusednn_cuda_graph``: the per-step
launches replayed without host work, for static shapes), and a Python loop over the cell
module (``torch_cell_loop``).

bfloat16 on a GPU, float32 on the CPU; shapes from the registry (``fusednn.cases.recurrent``).
The CPU runs inference (``fwd``, eval mode, no grad) and training (``fwd+bwd``).
FLOPs: the forward's GEMMs, 2·T·B·G·H·(I_l + H) per layer and direction (G = 4 gates for
the LSTM, 3 for the GRU; I_l = I for the first layer, D·H after); the backward does twice
that (the gradients of the inputs and of the weights), fwd+bwd three times.
"""

from __future__ import annotations

import torch

import fusednn

from .runner import Case, register

MODE_FLOPS = {"fwd": 1.0, "bwd": 2.0, "fwd+bwd": 3.0}  # multiples of the forward's FLOPs
GATES = {"lstm": 4, "gru": 3}


def recurrent_flops(gates: int, T: int, B: int, I: int, H: int, layers: int = 1, directions: int = 1) -> float:
    """Forward GEMM FLOPs of a stacked recurrent module: input and recurrent projections."""
    total = 0.0
    for layer in range(layers):
        inputs = I if layer == 0 else directions * H
        total += directions * 2.0 * T * B * gates * H * (inputs + H)
    return total


class CellLoop(torch.nn.Module):
    """What a model without a fused recurrent layer runs: the cell module once per step."""

    def __init__(self, cell: torch.nn.Module):
        super().__init__()
        self.cell = cell

    def forward(self, x):
        h = x.new_zeros(x.shape[1], self.cell.hidden_size)
        state = (h, torch.zeros_like(h)) if isinstance(self.cell, torch.nn.LSTMCell) else h
        outs = []
        for step in x:
            state = self.cell(step, state)
            outs.append(state[0] if isinstance(state, tuple) else state)
        return torch.stack(outs), state


def _fused_copy(ref: torch.nn.Module, kind: str) -> torch.nn.Module:
    weight = ref.weight_ih_l0
    cls = {"lstm": fusednn.nn.LSTM, "gru": fusednn.nn.GRU}[kind]
    ours = cls(ref.input_size, ref.hidden_size, num_layers=ref.num_layers, bidirectional=ref.bidirectional,
               device=weight.device, dtype=weight.dtype)
    ours.load_state_dict(ref.state_dict())
    return ours


def _cuda_graphed(module: torch.nn.Module, x: torch.Tensor) -> torch.nn.Module:
    """The module's forward and backward captured in CUDA graphs for x's shape."""
    sample = x.detach().clone().requires_grad_(x.requires_grad)
    return torch.cuda.make_graphed_callables(module, (sample,))


def _case(kind: str, shape: dict, device: torch.device) -> Case:
    B, T, I, H = shape["B"], shape["T"], shape["I"], shape["H"]
    layers, directions = shape.get("L", 1), shape.get("D", 1)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    module = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU}[kind]
    ref = module(I, H, num_layers=layers, bidirectional=directions == 2, device=device, dtype=dtype)
    x = torch.randn(T, B, I, device=device, dtype=dtype, requires_grad=True)
    providers = {"fusednn": lambda: _fused_copy(ref, kind)}
    if device.type == "cuda":
        providers["fusednn_cuda_graph"] = lambda: _cuda_graphed(_fused_copy(ref, kind), x)
        providers["cudnn"] = lambda: ref
        if layers == 1 and directions == 1:
            cell = {"lstm": torch.nn.LSTMCell, "gru": torch.nn.GRUCell}[kind]
            providers["torch_cell_loop"] = lambda: CellLoop(cell(I, H, device=device, dtype=dtype))
        modes = ("fwd", "bwd", "fwd+bwd")
    else:
        providers["torch"] = lambda: ref
        modes = ("fwd", "fwd+bwd")
    forward = recurrent_flops(GATES[kind], T, B, I, H, layers, directions)
    return Case(dtype, (x,), providers, flops={mode: factor * forward for mode, factor in MODE_FLOPS.items()},
                modes=modes)


@register("lstm")
def lstm(shape: dict, device: torch.device) -> Case:
    return _case("lstm", shape, device)


@register("gru")
def gru(shape: dict, device: torch.device) -> Case:
    return _case("gru", shape, device)
