"""fusednn.nn.Conv2d (drop-in; torch's generic module tests run in tests/test_module_db.py),
fusednn.nn.conv_bn_act and fusednn.nn.ConvBNAct against torch's modules.

The float64 tests check the modules' logic (padding modes, the batch norm's arguments and
running statistics, the folding of a batch norm in eval mode, the residual and the
activations); float64 runs the ops' references. The float32 tests run the Triton kernels
(through the interpreter on CPU) on a few tiny inputs, and check which kernels run."""

import pytest
import torch
import torch.nn.functional as F

import fusednn
from fusednn import testing
from fusednn.nn import Conv2d, ConvBNAct, conv_bn_act
from fusednn.reference._activation import apply_activation
from fusednn.registry import Sample, View

ACTIVATIONS = [None, "relu", "gelu", "gelu_tanh", "silu"]


def channels_last(t):
    """A sample input the op sees in channels_last."""
    return View(t, lambda x: x.contiguous(memory_format=torch.channels_last))


def _randomize(module, scale=0.5):
    """Parameters and running statistics away from their 1/0 initialisation, so that a
    swapped or ignored one shows."""
    with torch.no_grad():
        for name, t in [*module.named_parameters(), *module.named_buffers()]:
            if name.endswith("running_var"):
                t.uniform_(0.5, 2.0)
            elif t.is_floating_point():
                t.copy_(torch.randn_like(t) * scale)
    return module


def _forward_ops(calls):
    """The names of the recorded fusednn ops that are not backward ones, in order."""
    names = [str(c.op).removeprefix("fusednn.").removesuffix(".default") for c in calls]
    return [name for name in names if "backward" not in name]


# --------------------------------------------------------------------------- Conv2d


def test_conv2d_is_torch_conv2d_with_an_optional_activation():
    ours, theirs = Conv2d(4, 6, 3, padding=1, bias=False), torch.nn.Conv2d(4, 6, 3, padding=1, bias=False)
    assert isinstance(ours, torch.nn.Conv2d) and ours.activation is None
    assert repr(ours) == repr(theirs)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    fused = Conv2d(4, 6, 3, stride=2, activation="gelu_tanh")
    assert repr(fused) == "Conv2d(4, 6, kernel_size=(3, 3), stride=(2, 2), activation='gelu_tanh')"
    with pytest.raises(ValueError, match="fusednn.nn.Conv2d: activation must be one of None, 'relu'"):
        Conv2d(4, 6, 3, activation="tanh")


CONV_CONFIGS = [
    dict(padding=1, padding_mode="reflect"),
    dict(padding=(2, 1), padding_mode="circular", stride=2),
    dict(padding="same", padding_mode="replicate", dilation=2),
    dict(padding="same", groups=2),
    dict(padding=1, stride=(2, 1), bias=False),
]


@pytest.mark.parametrize("config", CONV_CONFIGS, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()))
def test_conv2d_matches_torch_in_every_padding_mode(config):
    ours = _randomize(Conv2d(4, 6, 3, dtype=torch.float64, **config))
    theirs = torch.nn.Conv2d(4, 6, 3, dtype=torch.float64, **config)
    theirs.load_state_dict(ours.state_dict())
    testing.compare_modules(ours, theirs, Sample("x", (torch.randn(2, 4, 7, 8, dtype=torch.float64,
                                                                   requires_grad=True),)), "cpu", torch.float64)
    unbatched = torch.randn(4, 7, 8, dtype=torch.float64)
    testing.assert_close(ours(unbatched), theirs(unbatched))


@pytest.mark.parametrize("activation", ACTIVATIONS[1:])
def test_conv2d_activation_follows_the_convolution(activation):
    ours = _randomize(Conv2d(3, 5, 3, padding=1, dtype=torch.float64, activation=activation))
    x = torch.randn(2, 3, 6, 5, dtype=torch.float64)
    expected = apply_activation(F.conv2d(x, ours.weight, ours.bias, padding=1), activation)
    testing.assert_close(ours(x), expected)
    scripted = torch.jit.script(ours)  # TorchScript compiles torch's convolution and the activation
    testing.assert_close(scripted(x), expected)


def test_conv2d_runs_the_kernel_with_padding_and_activation():
    """float32 on the Triton path: a reflect-padded, strided convolution with its activation
    is one conv2d kernel (forward) on the padded input."""
    ours = _randomize(Conv2d(3, 5, 3, stride=2, padding=1, padding_mode="reflect", activation="silu"))
    theirs = torch.nn.Sequential(torch.nn.Conv2d(3, 5, 3, stride=2, padding=1, padding_mode="reflect"),
                                 torch.nn.SiLU())
    theirs[0].load_state_dict(ours.state_dict())
    x = torch.randn(2, 3, 7, 6, dtype=torch.float64, requires_grad=True)
    with testing.recording_fusednn_calls() as calls:
        testing.compare_modules(ours, theirs, Sample("x", (channels_last(x),)), "cpu", torch.float32)
    assert _forward_ops(calls) == ["conv2d_forward"]


# --------------------------------------------------------------------------- conv_bn_act


class ConvBNResidual(torch.nn.Module):
    """conv_bn_act with a residual, as a module (the comparison harness runs modules)."""

    def __init__(self, block: ConvBNAct):
        super().__init__()
        self.block = block

    def forward(self, x, residual):
        return conv_bn_act(self.block.conv, self.block.bn, x, self.block.activation, residual=residual)


def _pair(activation="relu", stride=1, bn_kwargs=None, dtype=torch.float64, residual=False):
    """A fused ConvBNAct and its torch.nn twin with the same (random) weights and statistics."""
    ours = ConvBNAct(3, 4, 3, stride=stride, activation=activation, dtype=dtype)
    theirs = ConvBNAct(3, 4, 3, stride=stride, activation=activation, dtype=dtype, layers="torch")
    assert type(ours.conv) is Conv2d and type(ours.bn) is fusednn.nn.BatchNorm2d
    assert type(theirs.conv) is torch.nn.Conv2d and type(theirs.bn) is torch.nn.BatchNorm2d
    if bn_kwargs:
        ours.bn = fusednn.nn.BatchNorm2d(4, dtype=dtype, **bn_kwargs)
        theirs.bn = torch.nn.BatchNorm2d(4, dtype=dtype, **bn_kwargs)
    _randomize(ours)
    theirs.load_state_dict(ours.state_dict())
    if residual:
        return ConvBNResidual(ours), ConvBNResidual(theirs)
    return ours, theirs


def _inputs(stride=1, residual=False):
    x = torch.randn(3, 3, 7, 6, dtype=torch.float64, requires_grad=True)
    if not residual:
        return (channels_last(x),)
    shape = (3, 4, (7 - 1) // stride + 1, (6 - 1) // stride + 1)
    return (channels_last(x), torch.randn(shape, dtype=torch.float64, requires_grad=True))


BN_CONFIGS = {
    "default": None,
    "momentum=None": dict(momentum=None),
    "affine=False": dict(affine=False),
    "no-running-stats": dict(track_running_stats=False),
}


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("bn", BN_CONFIGS)
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_conv_bn_act_matches_torch_modules(activation, bn, training):
    """act(bn(conv(x)) + residual) against torch's modules, outputs and every gradient, and
    the batch norm's buffers after two calls (float64: the modules' logic)."""
    residual = activation in ("relu", "silu")  # the residual's two paths; the others without
    ours, theirs = _pair(activation, 2, BN_CONFIGS[bn], residual=residual)
    ours.train(training), theirs.train(training)
    testing.compare_modules(ours, theirs, Sample(bn, _inputs(2, residual)), "cpu", torch.float64)
    ours.load_state_dict(theirs.state_dict())  # the buffers before the comparison's call
    inputs = [torch.randn(3, 3, 7, 6, dtype=torch.float64)] + ([torch.randn(3, 4, 4, 3, dtype=torch.float64)]
                                                                 if residual else [])
    for _ in range(2):
        ours(*inputs), theirs(*inputs)
    for (name, ours_buffer), expected in zip(ours.named_buffers(), theirs.buffers()):
        if ours_buffer.is_floating_point():
            testing.assert_close(ours_buffer, expected, name=name)
        else:
            assert torch.equal(ours_buffer, expected), name


def test_conv_bn_act_with_a_folded_batch_norm():
    """bn replaced by Identity (fold_conv_bn): act(conv(x) + residual)."""
    ours, theirs = _pair("gelu", residual=True)
    for pair in (ours, theirs):
        pair.block.bn = torch.nn.Identity()
        pair.block.conv.bias = torch.nn.Parameter(torch.randn(4, dtype=torch.float64))
    theirs.load_state_dict(ours.state_dict())
    testing.compare_modules(ours, theirs, Sample("folded", _inputs(residual=True)), "cpu", torch.float64)


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_conv_bn_act_kernels(training):
    """float32 on the Triton path, with a residual: in training the convolution, then the
    batch norm with the add and the activation (two kernels and the running statistics'
    update); in eval mode one convolution with the batch norm, the add and the activation
    in its epilogue."""
    ours, theirs = _pair("relu" if training else "gelu", residual=True)
    ours.train(training), theirs.train(training)
    with testing.recording_fusednn_calls() as calls:
        testing.compare_modules(ours, theirs, Sample("x", _inputs(residual=True)), "cpu", torch.float32)
    forward = _forward_ops(calls)
    assert forward == (["conv2d_forward", "batch_norm_forward", "batch_norm_update_running_stats"] if training
                       else ["conv2d_forward"]), forward


def test_conv_bn_act_torch_layers_run_no_fused_op():
    _, theirs = _pair(residual=True)
    x, residual = (torch.randn(2, 3, 5, 5), torch.randn(2, 4, 5, 5))
    theirs.float()
    with testing.recording_fusednn_calls() as calls:
        theirs(x, residual).sum().backward()
    assert not calls


def test_conv_bn_act_bad_arguments():
    block = ConvBNAct(3, 4, 3)
    x = torch.randn(1, 3, 5, 5)
    cases = [
        (lambda: conv_bn_act(block.bn, block.bn, x), TypeError, "conv must be a torch.nn.Conv2d"),
        (lambda: conv_bn_act(block.conv, torch.nn.ReLU(), x), TypeError, "bn must be a BatchNorm2d or"),
        (lambda: conv_bn_act(block.conv, torch.nn.BatchNorm2d(5), x), ValueError,
         "bn must be a batch norm over conv's 4 output channels; got num_features=5"),
        (lambda: conv_bn_act(block.conv, block.bn, x[0]), ValueError, "x must be 4-D [N, C, H, W]"),
        (lambda: conv_bn_act(block.conv, block.bn, x, "tanh"), ValueError, "activation must be one of"),
        (lambda: conv_bn_act(Conv2d(3, 4, 3, activation="relu"), block.bn, x), ValueError,
         "conv must be a convolution without its own activation"),
        (lambda: ConvBNAct(3, 4, 3, layers="jax"), ValueError,
         "fusednn.nn.ConvBNAct: layers must be one of 'fusednn', 'torch'"),
        (lambda: ConvBNAct(3, 4, 3, activation="elu"), ValueError, "fusednn.nn.ConvBNAct: activation must be"),
    ]
    for index, (call, kind, message) in enumerate(cases):
        with pytest.raises(kind) as info:
            call()
        assert message in str(info.value), (index, str(info.value))


def test_conv_bn_act_module():
    block = ConvBNAct(3, 8, 5, stride=2, groups=1, activation="silu", dtype=torch.float64)
    assert block.conv.padding == (2, 2) and block.conv.bias is None and block.conv.stride == (2, 2)
    assert list(block.state_dict()) == ["conv.weight", "bn.weight", "bn.bias", "bn.running_mean", "bn.running_var",
                                        "bn.num_batches_tracked"]
    assert "activation='silu'" in repr(block)
    assert block(torch.randn(2, 3, 9, 9, dtype=torch.float64)).shape == (2, 8, 5, 5)
