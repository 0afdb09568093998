"""fusednn.nn.ConvLSTM: a stack of fused ConvLSTM layers against the same stack written with
the reference op (outputs, input and parameter gradients), dropout between layers, the
default state, parameters, initialisation, repr and argument errors. torch has no ConvLSTM,
so the module is not a drop-in and gets these tests instead of tests/test_module_db.py."""

import math

import pytest
import torch
import torch.nn.functional as F

import fusednn
from fusednn import registry, testing
from fusednn.reference.conv_lstm import conv_lstm as reference_conv_lstm
from fusednn.registry import Sample, View

DEVICE_DTYPES = [(d, t) for d, t in testing.kernel_dtypes(registry.get("conv_lstm"))
                 if d == "cuda" or t in (torch.float32, torch.float64)]


class _ReferenceStack(torch.nn.Module):
    """The stack written out with the reference op, holding copies of a ConvLSTM's parameters
    under the same names: layer k's outputs are layer k + 1's inputs."""

    def __init__(self, module: fusednn.nn.ConvLSTM):
        super().__init__()
        self.num_layers, self.batch_first, self.bias = module.num_layers, module.batch_first, module.bias
        for name, parameter in module.named_parameters():
            self.register_parameter(name, torch.nn.Parameter(parameter.detach().clone()))

    def forward(self, input, hx=None):  # noqa: A002
        x = input.transpose(0, 1) if self.batch_first else input
        h_n, c_n = [], []
        for k in range(self.num_layers):
            biases = (getattr(self, f"bias_ih_l{k}"), getattr(self, f"bias_hh_l{k}")) if self.bias else (None, None)
            state = None if hx is None else (hx[0][k], hx[1][k])
            x, (h, c) = reference_conv_lstm(x, state, getattr(self, f"weight_ih_l{k}"),
                                            getattr(self, f"weight_hh_l{k}"), *biases)
            h_n.append(h)
            c_n.append(c)
        return (x.transpose(0, 1) if self.batch_first else x), (torch.stack(h_n), torch.stack(c_n))


def _randn(*shape):
    return torch.randn(shape, dtype=torch.float64, requires_grad=True)


CONFIGS = {
    "1layer": dict(kernel_size=3),
    "2layer-batch_first": dict(kernel_size=3, num_layers=2, batch_first=True),
    "3layer-no-bias-k5": dict(kernel_size=5, num_layers=3, bias=False),
    "2layer-kernel-3x1": dict(kernel_size=(3, 1), num_layers=2),
}


@pytest.mark.parametrize("device,dtype", DEVICE_DTYPES)
@pytest.mark.parametrize("config", CONFIGS.values(), ids=CONFIGS.keys())
@pytest.mark.parametrize("with_state", [True, False], ids=["state", "no-state"])
def test_matches_the_reference_stack(device, dtype, config, with_state):
    C, Hc, T, B, H, W = 3, 4, 5, 2, 7, 5
    ours = fusednn.nn.ConvLSTM(C, Hc, **config).double()
    with torch.no_grad():  # away from the initialisation's small weights
        for p in ours.parameters():
            p.mul_(2.0)
    theirs = _ReferenceStack(ours)
    L = ours.num_layers
    if config.get("batch_first"):
        x = _randn(B, T, C, H, W)
    else:  # time-major values stored batch-major: a non-contiguous view
        x = View(_randn(B, T, C, H, W), lambda t: t.transpose(0, 1))
    args = (x, (_randn(L, B, Hc, H, W), _randn(L, B, Hc, H, W))) if with_state else (x,)
    results = testing.compare_modules(ours, theirs, Sample("conv_lstm", args), device, dtype)
    inputs = 3 if with_state else 1  # x, h_0, c_0
    assert len(results) == 3 + inputs + len(list(ours.parameters()))  # outputs and gradients


def _module(**options):
    torch.manual_seed(0)
    return fusednn.nn.ConvLSTM(3, 4, 3, **options).double()


def _layer_parameters(module, k):
    return [getattr(module, f"{name}_l{k}") for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]


def test_dropout_acts_between_layers_in_training_only():
    module = _module(num_layers=3, dropout=0.5)
    x = torch.randn(4, 2, 3, 5, 6, dtype=torch.float64)
    without = _module(num_layers=3)  # the same weights (same seed), no dropout
    module.eval()
    for a, b in zip(torch.utils._pytree.tree_leaves(module(x)), torch.utils._pytree.tree_leaves(without(x))):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    module.train()
    torch.manual_seed(1)
    y, (h_n, c_n) = module(x)
    # the same stack by hand, drawing the same dropout masks: after layers 0 and 1 only
    torch.manual_seed(1)
    layer_input, states = x, []
    for k in range(3):
        out, state = fusednn.ops.conv_lstm(layer_input, None, *_layer_parameters(module, k))
        states.append(state)
        layer_input = F.dropout(out, 0.5, training=True) if k < 2 else out
    torch.testing.assert_close(y, layer_input, rtol=0, atol=0)
    torch.testing.assert_close(h_n, torch.stack([h for h, _ in states]), rtol=0, atol=0)
    torch.testing.assert_close(c_n, torch.stack([c for _, c in states]), rtol=0, atol=0)
    assert not torch.equal(y, without(x)[0])


def test_default_state_is_zeros():
    module = _module(num_layers=2, batch_first=True)
    x = torch.randn(2, 3, 3, 5, 4, dtype=torch.float64)
    zeros = torch.zeros(2, 2, 4, 5, 4, dtype=torch.float64)
    for a, b in zip(torch.utils._pytree.tree_leaves(module(x)),
                    torch.utils._pytree.tree_leaves(module(x, (zeros, zeros)))):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_parameters_init_and_repr():
    module = fusednn.nn.ConvLSTM(3, 8, (3, 5), num_layers=2, dtype=torch.float64)
    shapes = {name: tuple(p.shape) for name, p in module.named_parameters()}
    assert shapes == {
        "weight_ih_l0": (32, 3, 3, 5), "weight_hh_l0": (32, 8, 3, 5), "bias_ih_l0": (32,), "bias_hh_l0": (32,),
        "weight_ih_l1": (32, 8, 3, 5), "weight_hh_l1": (32, 8, 3, 5), "bias_ih_l1": (32,), "bias_hh_l1": (32,),
    }
    assert all(p.dtype == torch.float64 for p in module.parameters())
    bound = 1 / math.sqrt(8 * 3 * 5)
    for p in module.parameters():
        assert p.abs().max() <= bound and p.abs().max() > bound / 2 and p.std() > bound / 4
    before = [p.detach().clone() for p in module.parameters()]
    module.reset_parameters()
    assert all(not torch.equal(a, b) for a, b in zip(before, module.parameters()))
    assert repr(module) == "ConvLSTM(3, 8, kernel_size=(3, 5), num_layers=2)"
    plain = fusednn.nn.ConvLSTM(2, 4, 3, bias=False, batch_first=True, num_layers=2, dropout=0.25)
    assert set(plain.state_dict()) == {"weight_ih_l0", "weight_hh_l0", "weight_ih_l1", "weight_hh_l1"}
    assert repr(plain) == "ConvLSTM(2, 4, kernel_size=(3, 3), num_layers=2, bias=False, batch_first=True, dropout=0.25)"


def test_dropout_with_one_layer_warns():
    with pytest.warns(UserWarning, match="non-zero dropout expects num_layers greater than 1"):
        fusednn.nn.ConvLSTM(2, 4, 3, dropout=0.5)


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(kernel_size=2), ValueError, r"kernel_size must be an odd int or a pair of odd ints .*; got 2"),
    (dict(kernel_size=(3, 4)), ValueError, r"kernel_size must be an odd int or a pair of odd ints .*; got \(3, 4\)"),
    (dict(kernel_size="3"), TypeError, r"kernel_size must be an odd int .*; got '3'"),
    (dict(kernel_size=(3, 3, 3)), TypeError, r"kernel_size must be an odd int .*; got a tuple of 3 items"),
    (dict(input_channels=0), ValueError, r"input_channels must be an int >= 1; got 0"),
    (dict(hidden_channels=2.0), TypeError, r"hidden_channels must be an int; got 2.0"),
    (dict(num_layers=0), ValueError, r"num_layers must be an int >= 1; got 0"),
    (dict(dropout=1.5), ValueError, r"dropout must be a finite float in \[0.0, 1.0\]; got 1.5"),
    (dict(bias="yes"), TypeError, r"bias must be a bool; got 'yes'"),
])
def test_constructor_errors(kwargs, error, match):
    arguments = {**dict(input_channels=3, hidden_channels=4, kernel_size=3), **kwargs}
    with pytest.raises(error, match=r"fusednn\.nn\.ConvLSTM: " + match):
        fusednn.nn.ConvLSTM(**arguments)


def _state(*shape):
    return torch.zeros(shape)


@pytest.mark.parametrize("args, error, match", [
    ((torch.randn(4, 2, 3, 5),), ValueError, r"input must be 5-D \[T, B, C, H, W\]; got shape \(4, 2, 3, 5\)"),
    ((torch.randn(4, 2, 5, 5, 6),), ValueError,
     r"input must be \[T, B, C, H, W\] with C = input_channels = 3; got shape \(4, 2, 5, 5, 6\)"),
    ((torch.randn(4, 2, 3, 5, 6, dtype=torch.float64),), TypeError,
     r"input must be of the module's dtype float32; got float64"),
    ((torch.randn(4, 2, 3, 5, 6), _state(2, 2, 4, 5, 6)), TypeError,
     r"hx must be a pair \(h_0, c_0\) of tensors or None; got a tensor"),
    ((torch.randn(4, 2, 3, 5, 6), (_state(2, 2, 4, 5, 6), _state(1, 2, 4, 5, 6))), ValueError,
     r"c_0 must be \[num_layers, B, Hc, H, W\] = \(2, 2, 4, 5, 6\); got shape \(1, 2, 4, 5, 6\)"),
    ((torch.randn(4, 2, 3, 5, 6), (_state(2, 2, 4, 6, 5), _state(2, 2, 4, 5, 6))), ValueError,
     r"h_0 must be \[num_layers, B, Hc, H, W\] = \(2, 2, 4, 5, 6\); got shape \(2, 2, 4, 6, 5\)"),
    ((torch.randn(4, 2, 3, 5, 6), (_state(2, 2, 4, 5, 6).double(), _state(2, 2, 4, 5, 6))), TypeError,
     r"h_0 must be of input's dtype float32; got float64"),
])
def test_forward_errors(args, error, match):
    module = fusednn.nn.ConvLSTM(3, 4, 3, num_layers=2)
    with pytest.raises(error, match=r"fusednn\.nn\.ConvLSTM: " + match):
        module(*args)
