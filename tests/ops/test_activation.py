"""The epilogue activations shared by the convolution-family kernels (kernels/_activation.py)
against torch's, value and derivative, through Triton (interpreter or GPU)."""

import pytest
import torch
import triton
import triton.language as tl

from fusednn.kernels._activation import ACTIVATION_CODES, activate, activation_derivative
from fusednn.reference._activation import ACTIVATIONS, apply_activation


@triton.jit
def _activation_kernel(X, Y, DY, N, ACT: tl.constexpr, BLOCK: tl.constexpr):
    offsets = tl.arange(0, BLOCK)
    mask = offsets < N
    x = tl.load(X + offsets, mask=mask, other=0.0)
    tl.store(Y + offsets, activate(x, ACT), mask=mask)
    tl.store(DY + offsets, activation_derivative(x, ACT), mask=mask)


def test_codes_cover_the_names():
    assert tuple(ACTIVATION_CODES) == ACTIVATIONS


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_value_and_derivative_match_torch(activation):
    device = "cuda" if torch.cuda.is_available() else "cpu"
    x = torch.cat([torch.randn(200) * 4, torch.tensor([-1e-3, 1e-3, 30.0, -30.0])]).to(device)
    y, dy = torch.empty_like(x), torch.empty_like(x)
    _activation_kernel[(1,)](x, y, dy, x.numel(), ACT=ACTIVATION_CODES[activation],
                             BLOCK=triton.next_power_of_2(x.numel()))
    x64 = x.double().requires_grad_()
    expected = apply_activation(x64, activation)
    (expected_dy,) = torch.autograd.grad(expected.sum(), x64)
    torch.testing.assert_close(y.double(), expected.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(dy.double(), expected_dy, rtol=1e-5, atol=1e-6)


def test_unknown_activation_is_refused():
    with pytest.raises(ValueError, match="unknown activation"):
        apply_activation(torch.ones(2), "tanh")
