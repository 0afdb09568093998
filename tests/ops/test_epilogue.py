"""The convolutions' shared epilogue backward (kernels/_epilogue.py) against autograd through
``act((c + bias) * scale + shift + residual)``, with every piece present or absent."""

import itertools

import pytest
import torch

from fusednn.kernels._epilogue import epilogue_backward, needs_conv_output
from fusednn.reference._activation import apply_activation


def _device():
    return "cuda" if torch.cuda.is_available() else "cpu"


@pytest.mark.parametrize("activation", [None, "relu", "gelu", "gelu_tanh", "silu"])
@pytest.mark.parametrize("pieces", list(itertools.product([False, True], repeat=4)),
                         ids=lambda p: "".join(n for n, on in zip(("b", "s", "t", "r"), p) if on) or "none")
def test_epilogue_backward_matches_autograd(activation, pieces):
    has_bias, has_scale, has_shift, has_residual = pieces
    m, n = 37, 70  # two column blocks, a partial row block
    device = _device()
    c = torch.randn(m, n, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(n, dtype=torch.float64, requires_grad=True) if has_bias else None
    scale = torch.randn(n, dtype=torch.float64, requires_grad=True) if has_scale else None
    shift = torch.randn(n, dtype=torch.float64, requires_grad=True) if has_shift else None
    residual = torch.randn(m, n, dtype=torch.float64, requires_grad=True) if has_residual else None
    u = c + (bias if has_bias else 0)
    u = u * (scale if has_scale else 1) + (shift if has_shift else 0) + (residual if has_residual else 0)
    y = apply_activation(u, activation)
    dy = torch.randn(m, n, dtype=torch.float64)
    inputs = [t for t in (c, bias, scale, shift, residual) if t is not None]
    expected = dict(zip([name for name, t in zip("c b s t r".split(), (c, bias, scale, shift, residual))
                         if t is not None], torch.autograd.grad(y, inputs, dy)))

    def on_device(t):
        return None if t is None else t.detach().float().to(device)

    # grad_y as a transposed view: the kernel reads strides
    grad_y = on_device(dy).t().contiguous().t()
    keep_c = needs_conv_output(activation, has_scale)
    dc, dr, sum_dz, sum_dzv = epilogue_backward(
        grad_y, on_device(c) if keep_c else None, on_device(bias), on_device(scale), on_device(shift),
        on_device(residual), activation, grad_conv=True, grad_residual=has_residual, sums=True)

    def close(actual, want):
        torch.testing.assert_close(actual.double().cpu(), want, rtol=1e-5, atol=1e-5)

    close(dc, expected["c"])
    if has_residual:
        close(dr, expected["r"])
    scale_or_one = on_device(scale) if has_scale else 1.0
    if has_bias:
        close(sum_dz * scale_or_one, expected["b"])
    if has_shift:
        close(sum_dz, expected["t"])
    if has_scale:
        close(sum_dzv, expected["s"])


def test_empty_rows_give_zero_sums():
    grad_y = torch.randn(0, 5, device=_device())
    dc, dr, sum_dz, sum_dzv = epilogue_backward(grad_y, None, None, None, None, None, None, grad_conv=True,
                                                grad_residual=False, sums=True)
    assert dc.shape == (0, 5) and dr is None and sum_dzv is None
    assert torch.equal(sum_dz.cpu(), torch.zeros(5))


def test_activation_without_conv_output_is_refused():
    with pytest.raises(ValueError, match="needs conv_out"):
        epilogue_backward(torch.randn(2, 2), None, None, None, None, None, "relu", grad_conv=True,
                          grad_residual=False, sums=False)
