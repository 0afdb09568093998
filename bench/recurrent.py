"""LSTM benchmarks: fusednn.nn.LSTM against torch.nn.LSTM (cuDNN on a GPU, ATen's
native kernels on the CPU) and, on a GPU, against a Python loop over nn.LSTMCell."""

from __future__ import annotations

import torch

import fusednn

from .runner import Context, register


def _lstm_flops(T: int, B: int, I: int, H: int) -> float:
    """Forward GEMM FLOPs of one LSTM layer: input and recurrent projections to 4H gates."""
    return 2.0 * T * B * 4 * H * (I + H)


def _cell_loop(cell: torch.nn.LSTMCell):
    def run(x):
        h = x.new_zeros(x.shape[1], cell.hidden_size)
        c = torch.zeros_like(h)
        outs = []
        for t in range(x.shape[0]):
            h, c = cell(x[t], (h, c))
            outs.append(h)
        return torch.stack(outs)

    return run


def _modes(ctx: Context, *, shape: dict, dtype, providers: dict, x: torch.Tensor, flops: float) -> None:
    dy = torch.randn(x.shape[0], x.shape[1], shape["H"], device=x.device, dtype=dtype)
    x_train = x.detach().clone().requires_grad_(True)
    for name, fn in providers.items():
        def forward(fn=fn):
            with torch.no_grad():
                return fn(x)

        def forward_backward(fn=fn):
            fn(x_train).backward(dy)

        ctx.measure(op="lstm", mode="fwd", dtype=dtype, shape=shape, provider=name, fn=forward, flops=flops)
        ctx.measure(op="lstm", mode="fwd+bwd", dtype=dtype, shape=shape, provider=name, fn=forward_backward,
                    flops=3 * flops)


@register("lstm")
def bench_lstm(ctx: Context) -> None:
    if ctx.is_cuda:
        dtype = torch.bfloat16
        shapes = [(16, 256, 512)] if ctx.quick else [(b, 256, h) for h in (512, 1024) for b in (16, 64)]
    else:
        dtype = torch.float32
        shapes = [(16, 128, 256)]
    for B, T, H in shapes:
        shape = {"B": B, "T": T, "I": H, "H": H}
        ref = torch.nn.LSTM(H, H, device=ctx.device, dtype=dtype)
        ours = fusednn.nn.LSTM(H, H, device=ctx.device, dtype=dtype)
        ours.load_state_dict(ref.state_dict())
        x = torch.randn(T, B, H, device=ctx.device, dtype=dtype)
        providers = {"fusednn": lambda inp: ours(inp)[0]}
        if ctx.is_cuda:
            providers["cudnn"] = lambda inp: ref(inp)[0]
            cell = torch.nn.LSTMCell(H, H, device=ctx.device, dtype=dtype)
            providers["torch_cell_loop"] = _cell_loop(cell)
        else:
            providers["torch"] = lambda inp: ref(inp)[0]
        _modes(ctx, shape=shape, dtype=dtype, providers=providers, x=x, flops=_lstm_flops(T, B, H, H))
