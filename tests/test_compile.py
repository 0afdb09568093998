"""torch.compile(fullgraph=True) traces through the ops (fake impls + registered autograd)."""

import pytest
import torch
import torch._dynamo

import fusednn
from fusednn import _runtime, testing


@pytest.mark.parametrize("device", testing.devices())
def test_lstm_op_fullgraph_matches_eager(device):
    T, B, I, H = 5, 3, 8, 6
    weights = [torch.randn(4 * H, I, device=device), torch.randn(4 * H, H, device=device),
               torch.randn(4 * H, device=device), torch.randn(4 * H, device=device)]
    weights = [w.mul_(0.3).requires_grad_() for w in weights]
    x = torch.randn(T, B, I, device=device, requires_grad=True)
    h0, c0 = torch.randn(B, H, device=device), torch.randn(B, H, device=device)
    scale = torch.arange(H, dtype=torch.float32, device=device)

    def loss(x):
        y, (h, c) = fusednn.ops.lstm(x, (h0, c0), *weights)
        return (y * scale).sum() + (h * c).sum()

    compiled = torch.compile(loss, fullgraph=True, backend="aot_eager")
    got = compiled(x)
    got_grads = torch.autograd.grad(got, [x, *weights])
    want = loss(x)
    want_grads = torch.autograd.grad(want, [x, *weights])
    testing.assert_close(got, want.double(), name="loss")
    for i, (g, w) in enumerate(zip(got_grads, want_grads)):
        testing.assert_close(g, w.double(), name=f"grad[{i}]")


@pytest.mark.parametrize("device", testing.devices())
def test_norm_ops_fullgraph(device):
    if device == "cpu" and _runtime.interpreter_enabled():
        pytest.skip("Triton's interpreter cannot run under tracing (fake tensors); runs on CUDA")
    x = torch.randn(4, 33, device=device, requires_grad=True)
    w = torch.randn(33, device=device, requires_grad=True)

    def f(x):
        return (fusednn.ops.layer_norm(x, 33, w) * fusednn.ops.rms_norm(x, 33, w)).sum()

    got = torch.compile(f, fullgraph=True, backend="aot_eager")(x)
    testing.assert_close(got, f(x).detach().double(), name="output")


def test_lstm_module_compiles_with_allow_rnn():
    """Dynamo refuses torch.nn.RNNBase subclasses unless allow_rnn is set; with it the
    drop-in module traces in one graph."""
    m = fusednn.nn.LSTM(8, 6, num_layers=2, bidirectional=True)
    x = torch.randn(5, 3, 8)
    with torch._dynamo.config.patch(allow_rnn=True):
        y = torch.compile(m, fullgraph=True, backend="aot_eager")(x)[0]
    testing.assert_close(y, m(x)[0].detach().double(), name="output")
