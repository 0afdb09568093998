"""fusednn.nn.CausalConv1d: against the same convolution written with torch's conv1d (outputs,
input and parameter gradients), the op it calls, decoding step by step, parameters and their
initialisation (torch's depthwise Conv1d's), repr and argument errors. torch has no causal
conv1d module, so this one is not a drop-in and gets these tests instead of
tests/test_module_db.py."""

import pytest
import torch
import torch.nn.functional as F

import fusednn
from fusednn import registry, testing
from fusednn.registry import Sample, View

DEVICE_DTYPES = [(d, t) for d, t in testing.kernel_dtypes(registry.get("causal_conv1d"))
                 if d == "cuda" or t in (torch.float32, torch.float64)]


class _TorchCausalConv1d(torch.nn.Module):
    """The same convolution with torch's own conv1d: left padding (or the state), then a
    depthwise F.conv1d and the activation; parameters copied from a CausalConv1d, same names."""

    def __init__(self, module: fusednn.nn.CausalConv1d):
        super().__init__()
        self.activation = module.activation
        for name, parameter in module.named_parameters():
            self.register_parameter(name, torch.nn.Parameter(parameter.detach().clone()))
        if module.bias is None:
            self.bias = None

    def forward(self, x, initial_state=None, return_final_state=False):
        taps = self.weight.shape[1]
        xpad = F.pad(x, (taps - 1, 0)) if initial_state is None else torch.cat([initial_state, x], dim=-1)
        y = F.conv1d(xpad, self.weight.unsqueeze(1), self.bias, groups=self.weight.shape[0])
        y = F.silu(y) if self.activation == "silu" else y
        return (y, xpad[..., -(taps - 1):]) if return_final_state else y


def _randn(*shape):
    return torch.randn(shape, dtype=torch.float64, requires_grad=True)


CONFIGS = {
    "W4-silu": dict(kernel_size=4, activation="silu"),
    "W2-no-bias": dict(kernel_size=2, bias=False),
    "W8": dict(kernel_size=8),
}


@pytest.mark.parametrize("device, dtype", DEVICE_DTYPES)
@pytest.mark.parametrize("config", CONFIGS.values(), ids=CONFIGS.keys())
@pytest.mark.parametrize("with_state", [True, False], ids=["state", "no-state"])
def test_matches_torch_conv1d(device, dtype, config, with_state):
    D, B, L = 6, 2, 11
    ours = fusednn.nn.CausalConv1d(D, **config).double()
    theirs = _TorchCausalConv1d(ours)
    x = View(_randn(B, L, D), lambda t: t.transpose(1, 2))  # a [B, L, D] activation seen as [B, D, L]
    if with_state:
        sample = Sample("causal_conv1d", (x, _randn(B, D, config["kernel_size"] - 1), True))
    else:
        sample = Sample("causal_conv1d", (x,))
    results = testing.compare_modules(ours, theirs, sample, device, dtype)
    outputs, inputs = (2, 2) if with_state else (1, 1)
    assert len(results) == outputs + inputs + len(list(ours.parameters()))


def test_forward_and_step_are_the_ops():
    torch.manual_seed(0)
    module = fusednn.nn.CausalConv1d(5, 3, activation="silu")
    x, state = torch.randn(2, 5, 7), torch.randn(2, 5, 2)
    y, final = module(x, state, return_final_state=True)
    y_op, final_op = fusednn.ops.causal_conv1d(x, module.weight, module.bias, activation="silu",
                                               initial_state=state, return_final_state=True)
    assert torch.equal(y, y_op) and torch.equal(final, final_op)
    conv_state = torch.randn(2, 5, 2)
    state_op = conv_state.clone()
    x_t = torch.randn(2, 5)
    with torch.no_grad():
        assert torch.equal(module.step(x_t, conv_state),
                           fusednn.ops.causal_conv1d_update(x_t, state_op, module.weight, module.bias, "silu"))
    assert torch.equal(conv_state, state_op)


@pytest.mark.parametrize("device, dtype", DEVICE_DTYPES)
def test_steps_from_a_zero_state_are_the_forward(device, dtype):
    """Decoding one position at a time from a zero state gives the forward over the sequence
    (here without a graph: inference, the kernel path of the step)."""
    D, B, L, W = 16, 3, 6, 4
    module = fusednn.nn.CausalConv1d(D, W, activation="silu", device=device, dtype=dtype)
    x = torch.randn(B, D, L, device=device, dtype=dtype)
    with torch.no_grad():
        expected = module(x)
        state = torch.zeros(B, D, W - 1, device=device, dtype=dtype)
        steps = torch.stack([module.step(x[..., t], state) for t in range(L)], dim=-1)
    reference = _TorchCausalConv1d(module).double()(x.double().cpu()).detach()
    testing.assert_close(steps, reference, name="steps")
    testing.assert_close(expected, reference, name="forward")
    assert torch.equal(state, x[..., L - (W - 1):])


def test_parameters_are_torchs_depthwise_conv1d():
    """Shapes, state_dict keys and initialisation: with the same seed, the weight and bias of a
    depthwise torch.nn.Conv1d (without its singleton input-channel dim)."""
    torch.manual_seed(3)
    ours = fusednn.nn.CausalConv1d(8, 4, dtype=torch.float64)
    torch.manual_seed(3)
    torchs = torch.nn.Conv1d(8, 8, 4, groups=8, dtype=torch.float64)
    assert {k: tuple(v.shape) for k, v in ours.state_dict().items()} == {"weight": (8, 4), "bias": (8,)}
    assert torch.equal(ours.weight, torchs.weight.squeeze(1)) and torch.equal(ours.bias, torchs.bias)
    assert ours.weight.abs().max() <= 0.5 and ours.weight.abs().max() > 0.25
    before = ours.weight.detach().clone()
    ours.reset_parameters()
    assert not torch.equal(before, ours.weight)
    plain = fusednn.nn.CausalConv1d(3, 2, bias=False)
    assert set(plain.state_dict()) == {"weight"} and plain.bias is None
    loaded = fusednn.nn.CausalConv1d(8, 4, dtype=torch.float64)
    loaded.load_state_dict(ours.state_dict())
    assert torch.equal(loaded.weight, ours.weight)


def test_repr():
    assert repr(fusednn.nn.CausalConv1d(16, 4)) == "CausalConv1d(16, kernel_size=4)"
    assert (repr(fusednn.nn.CausalConv1d(8, 3, bias=False, activation="silu"))
            == "CausalConv1d(8, kernel_size=3, bias=False, activation='silu')")


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(kernel_size=1), ValueError, r"kernel_size must be an int in \[2, 8\]; got 1"),
    (dict(kernel_size=9), ValueError, r"kernel_size must be an int in \[2, 8\]; got 9"),
    (dict(kernel_size=4.0), TypeError, r"kernel_size must be an int; got 4.0"),
    (dict(channels=0), ValueError, r"channels must be an int >= 1; got 0"),
    (dict(bias="yes"), TypeError, r"bias must be a bool; got 'yes'"),
    (dict(activation="relu"), ValueError, r"activation must be one of None, 'silu'; got 'relu'"),
])
def test_constructor_errors(kwargs, error, match):
    arguments = {**dict(channels=4, kernel_size=3), **kwargs}
    with pytest.raises(error, match=r"fusednn\.nn\.CausalConv1d: " + match):
        fusednn.nn.CausalConv1d(**arguments)


@pytest.mark.parametrize("method, args, error, match", [
    ("forward", (torch.randn(2, 4),), ValueError, r"x must be 3-D \[B, D, L\]; got shape \(2, 4\)"),
    ("forward", (torch.randn(2, 5, 7),), ValueError,
     r"x must be \[B, D, L\] with D = channels = 4; got shape \(2, 5, 7\)"),
    ("forward", (torch.randn(2, 4, 7, dtype=torch.float64),), TypeError,
     r"x must be of the module's dtype float32; got float64"),
    ("forward", (torch.randn(2, 4, 7).to("meta"),), ValueError, r"x must be on the module's device cpu; got meta"),
    ("step", (torch.randn(2, 4, 1), torch.zeros(2, 4, 2)), ValueError, r"x_t must be 2-D \[B, D\]"),
    ("step", (torch.randn(2, 3), torch.zeros(2, 4, 2)), ValueError,
     r"x_t must be \[B, D\] with D = channels = 4; got shape \(2, 3\)"),
])
def test_input_errors(method, args, error, match):
    module = fusednn.nn.CausalConv1d(4, 3)
    with pytest.raises(error, match=r"fusednn\.nn\.CausalConv1d: " + match):
        getattr(module, method)(*args)


def test_state_errors_come_from_the_ops():
    module = fusednn.nn.CausalConv1d(4, 3)
    with pytest.raises(ValueError, match=r"fusednn\.ops\.causal_conv1d: initial_state must be \[B, D, W-1\] = "
                                         r"\(2, 4, 2\); got shape \(2, 4, 3\)"):
        module(torch.randn(2, 4, 5), torch.zeros(2, 4, 3))
    with pytest.raises(ValueError, match=r"fusednn\.ops\.causal_conv1d_update: conv_state must be \[B, D, W-1\] = "
                                         r"\(2, 4, 2\); got shape \(2, 4, 1\)"):
        module.step(torch.randn(2, 4), torch.zeros(2, 4, 1))
