"""Pooling beyond what every op gets from the registry (tests/test_registry.py): the argmax
against torch's (ties, NaN, -inf windows), the memory formats of outputs, indices and
gradients, several programs per launch, determinism, broadcast output gradients, second
derivatives on the kernels' path, the argmax kept only when needed, the adaptive op's
dispatch, and the 1x1 reference against torch's adaptive_avg_pool2d."""

import pytest
import torch
import torch.nn.functional as F

import fusednn
from fusednn import registry, testing
from fusednn.kernels import pooling as kernels
from fusednn.testing import assert_close

OPS = ("max_pool2d", "avg_pool2d", "adaptive_avg_pool2d")


def _kernel_pairs(op):
    """(device, dtype) pairs where the op's Triton kernel runs here (never float64)."""
    return testing.kernel_dtypes(registry.get(op))


def _first_pair(op):
    pairs = _kernel_pairs(op)
    if not pairs:
        pytest.skip(f"no kernel of {op} runs here")
    return pairs[0]


def _ties(shape, dtype, device):
    """Values from {0, 1, 2, 3}: every window has tied maxima."""
    return torch.randint(0, 4, shape, device=device).to(dtype)


@pytest.mark.parametrize("case", ["ties", "nonfinite", "dilation-ceil", "channels-last"])
def test_argmax_and_gradient_match_torch(case):
    """The argmax is torch's exactly: the first maximum in window order (rows, then columns),
    the last NaN, the first tap inside the input for a window of -inf only; so is the
    gradient routed through it."""
    for device, dtype in _kernel_pairs("max_pool2d"):
        kwargs = dict(kernel_size=3, stride=2, padding=1)
        if case == "ties":
            x = _ties((2, 5, 13, 13), dtype, device)
        elif case == "nonfinite":
            x = torch.randn(2, 3, 7, 7, dtype=dtype, device=device)
            x[0, 0, 1:4, 1:4] = float("nan")
            x[0, 1, 0, 1] = float("nan")
            x[1, 2] = float("-inf")
            x[1, 0, 3, 3] = float("inf")
        elif case == "dilation-ceil":
            x = _ties((2, 3, 13, 7), dtype, device)
            kwargs = dict(kernel_size=(3, 2), stride=(2, 3), padding=1, dilation=(2, 1), ceil_mode=True)
        else:
            x = _ties((2, 16, 7, 13), dtype, device).to(memory_format=torch.channels_last)
        x.requires_grad_()
        y, indices = fusednn.ops.max_pool2d(x, **kwargs, return_indices=True)
        x_ref = x.detach().double().cpu().requires_grad_()  # the same values
        y_ref, indices_ref = F.max_pool2d(x_ref, **kwargs, return_indices=True)
        torch.testing.assert_close(y.double().cpu(), y_ref, rtol=0, atol=0, equal_nan=True)
        assert torch.equal(indices.cpu(), indices_ref), case
        grad_y = torch.randn(y.shape, dtype=dtype, device=device)
        (grad_x,) = torch.autograd.grad(y, x, grad_y)
        (grad_ref,) = torch.autograd.grad(y_ref, x_ref, grad_y.double().cpu())
        baseline = None
        if dtype in (torch.float16, torch.bfloat16):  # torch's computation in that precision
            x_low = x.detach().cpu().requires_grad_()
            (baseline,) = torch.autograd.grad(F.max_pool2d(x_low, **kwargs), x_low, grad_y.cpu())
        assert_close(grad_x, grad_ref, name="grad x", lowp_baseline=baseline)


def _calls(op, *args, **kwargs):
    with testing.recording_fusednn_calls() as calls:
        result = getattr(fusednn.ops, op)(*args, **kwargs)
    return result, [c.op._name for c in calls]


@pytest.mark.parametrize("shape, fmt", [((2, 3, 7, 13), torch.contiguous_format), ((2, 3, 7, 13), torch.channels_last),
                                        ((2, 1, 7, 7), torch.channels_last), ((2, 3, 1, 1), torch.channels_last),
                                        ((3, 7, 13), torch.contiguous_format)],
                         ids=["nchw", "channels-last", "one-channel-channels-last", "one-pixel-channels-last",
                              "unbatched"])
def test_memory_formats_are_torchs(shape, fmt):
    """Outputs, the argmax and input gradients have torch's strides (channels_last stays
    channels_last; the 1x1 kernel's gradient keeps a channels_last input's layout, where
    torch's adaptive_avg_pool2d(x, 1), a mean, gives a contiguous one)."""
    device, dtype = _first_pair("max_pool2d")
    x = torch.randn(shape, dtype=dtype, device=device).to(memory_format=fmt).requires_grad_()
    calls = {
        "max_pool2d": (lambda f, t: f.max_pool2d(t, 2, 2, 1, return_indices=True)),
        "avg_pool2d": (lambda f, t: f.avg_pool2d(t, 2, 2, 1)),
        "adaptive_avg_pool2d": (lambda f, t: f.adaptive_avg_pool2d(t, 1)),
    }
    for op, call in calls.items():
        with testing.recording_fusednn_calls() as ran:
            ours = call(fusednn.ops, x)
        assert ran, f"{op} ran no fusednn op"
        theirs = call(F, x)
        for a, b in zip(torch.utils._pytree.tree_leaves(ours), torch.utils._pytree.tree_leaves(theirs)):
            assert a.stride() == b.stride(), (op, a.stride(), b.stride())
        y = torch.utils._pytree.tree_leaves(ours)[0]
        (grad_x,) = torch.autograd.grad(y, x, torch.randn_like(y))
        # torch's layout of input gradients; its adaptive_avg_pool2d(x, 1) (a mean) alone
        # gives contiguous ones, every other output size keeps the input's layout
        reference = theirs if op != "adaptive_avg_pool2d" else F.adaptive_avg_pool2d(x, 2)
        y_ref = torch.utils._pytree.tree_leaves(reference)[0]
        (grad_ref,) = torch.autograd.grad(y_ref, x, torch.randn_like(y_ref))
        assert grad_x.stride() == grad_ref.stride(), (op, grad_x.stride(), grad_ref.stride())


@pytest.mark.parametrize("op, args, kwargs", [
    ("max_pool2d", ((2, 3), (1, 2), (1, 0)), dict(dilation=(1, 2), ceil_mode=True)),
    ("avg_pool2d", (3, 2, 1), dict(ceil_mode=True, count_include_pad=False, divisor_override=-3)),
    ("avg_pool2d", (2, 2, 1), dict(ceil_mode=True, count_include_pad=False)),
    ("adaptive_avg_pool2d", (1,), {}),
], ids=["max-dilation-ceil", "avg-negative-divisor", "avg-exclude-pad", "global"])
def test_several_programs_per_launch(monkeypatch, op, args, kwargs):
    """Tiles of 16 pixels x 4 channels: several programs along both grid axes, each masking
    its own edge (the samples' tiles hold all of their pixels and channels)."""
    monkeypatch.setattr(kernels, "TILE_ELEMENTS", 64)
    monkeypatch.setattr(kernels, "INTERPRETER_TILE_SCALE", 1)
    monkeypatch.setattr(kernels, "MAX_BLOCK_C", 4)
    monkeypatch.setattr(kernels, "GLOBAL_TILE_ELEMENTS", 32)
    info = registry.get(op)
    # [2, 6, 5, 5], strided: 6 channels are a full and a partial block of 4
    x = registry.View(torch.randn(2, 5, 5, 12, dtype=torch.float64, requires_grad=True),
                      lambda t: t.permute(0, 3, 1, 2)[:, ::2])
    sample = registry.Sample("small-tiles", (x, *args), kwargs)
    for device, dtype in _kernel_pairs(op)[:1]:
        testing.compare_sample(info, sample, device, dtype)


@pytest.mark.parametrize("op", OPS)
def test_backward_is_deterministic(op):
    device, dtype = _first_pair(op)
    x = torch.randn(2, 16, 13, 13, dtype=dtype, device=device).to(memory_format=torch.channels_last)
    x.requires_grad_()
    args = {"max_pool2d": (3, 2, 1), "avg_pool2d": (3, 2, 1), "adaptive_avg_pool2d": (1,)}[op]
    grads = []
    for _ in range(2):
        y = getattr(fusednn.ops, op)(x, *args)
        grads.append(torch.autograd.grad(y, x, torch.ones_like(y))[0])
    assert torch.equal(grads[0], grads[1])


@pytest.mark.parametrize("op", OPS)
def test_broadcast_output_gradient(op):
    """``y.sum().backward()`` hands the backward an expanded gradient (all strides 0)."""
    device, dtype = _first_pair(op)
    x = torch.randn(2, 5, 7, 7, dtype=dtype, device=device, requires_grad=True)
    args = {"max_pool2d": (3, 2, 1), "avg_pool2d": (3, 2, 1), "adaptive_avg_pool2d": (1,)}[op]
    getattr(fusednn.ops, op)(x, *args).sum().backward()
    x_ref = x.detach().double().cpu().requires_grad_()
    getattr(F, op)(x_ref, *args).sum().backward()
    assert_close(x.grad, x_ref.grad, name="grad x")


@pytest.mark.parametrize("op", OPS)
def test_second_derivative_on_the_kernel_path(op):
    """create_graph=True through the kernels' forward: the gradient of the input gradient
    with respect to the output gradient is torch's (pooling is piecewise linear)."""
    device, dtype = _first_pair(op)
    x = torch.randn(2, 3, 7, 7, dtype=dtype, device=device, requires_grad=True)
    args = {"max_pool2d": (3, 2, 1), "avg_pool2d": (3, 2, 1), "adaptive_avg_pool2d": (1,)}[op]
    results = []
    for fn in (getattr(fusednn.ops, op), getattr(F, op)):
        y = fn(x, *args)
        grad_y = torch.ones_like(y).requires_grad_()
        (grad_x,) = torch.autograd.grad(y, x, grad_y, create_graph=True)
        weight = torch.linspace(-1, 1, grad_x.numel(), dtype=dtype, device=device).view_as(grad_x)
        results.append(torch.autograd.grad((grad_x * weight).sum(), grad_y)[0])
    assert_close(results[0], results[1].double(), name="grad of grad")


def test_argmax_is_kept_only_when_needed():
    """Without autograd (and without return_indices) the forward writes no argmax; a raw
    call of the forward without it refuses a backward instead of giving a wrong one."""
    device, dtype = _first_pair("max_pool2d")
    x = torch.randn(2, 3, 7, 7, dtype=dtype, device=device)
    with testing.recording_fusednn_calls() as calls:
        fusednn.ops.max_pool2d(x, 3, 2, 1)
        with torch.no_grad():
            fusednn.ops.max_pool2d(x.requires_grad_(), 3, 2, 1)
    assert [c.args[-1] for c in calls] == [False, False]
    y, indices = torch.ops.fusednn.max_pool2d_forward(x, [3, 3], [2, 2], [1, 1], [1, 1], False, False)
    assert indices.numel() == 0
    assert_close(y, F.max_pool2d(x.detach().double().cpu(), 3, 2, 1))
    with pytest.raises(RuntimeError, match="with_indices=False"):
        y.sum().backward()


def test_adaptive_dispatch_claims_the_kernel_for_1x1_only():
    device, dtype = _first_pair("adaptive_avg_pool2d")
    x = torch.randn(2, 3, 7, 1, dtype=dtype, device=device)
    for size in (1, (1, 1), (1, None)):
        y, calls = _calls("adaptive_avg_pool2d", x, size)
        assert calls == ["fusednn::adaptive_avg_pool2d_forward"], size
        assert_close(y, F.adaptive_avg_pool2d(x.double().cpu(), size))
    y, calls = _calls("adaptive_avg_pool2d", x, (3, None))
    assert calls == []
    assert_close(y, F.adaptive_avg_pool2d(x.double().cpu(), (3, None)))
    with fusednn.use_backend("triton"), pytest.raises(NotImplementedError, match=r"fusednn\.ops\.adaptive_avg_pool2d: "
                                                                                 r"the Triton kernel computes the 1x1"):
        fusednn.ops.adaptive_avg_pool2d(x, (3, None))
    with fusednn.use_backend("triton"):
        assert _calls("adaptive_avg_pool2d", x, 1)[1] == ["fusednn::adaptive_avg_pool2d_forward"]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16])
def test_global_reference_matches_torch(dtype):
    """The 1x1 reference (the average pool over the whole plane) is torch's
    adaptive_avg_pool2d, with a channels_last input's gradient layout kept."""
    x = torch.randn(2, 5, 7, 13, dtype=dtype).to(memory_format=torch.channels_last).requires_grad_()
    ours = fusednn.reference.adaptive_avg_pool2d(x, 1)
    expected = F.adaptive_avg_pool2d(x.detach().double(), 1)
    if dtype in (torch.float16, torch.bfloat16):
        assert_close(ours, expected, lowp_baseline=F.adaptive_avg_pool2d(x, 1))
    else:
        assert_close(ours, expected)
    (grad_x,) = torch.autograd.grad(ours, x, torch.ones_like(ours))
    assert grad_x.is_contiguous(memory_format=torch.channels_last) and not grad_x.is_contiguous()


def test_registered_schemas():
    schemas = {name: str(getattr(torch.ops.fusednn, name).default._schema) for name in (
        "max_pool2d_forward", "max_pool2d_backward", "avg_pool2d_forward", "adaptive_avg_pool2d_backward")}
    assert schemas["max_pool2d_forward"] == (
        "fusednn::max_pool2d_forward(Tensor x, SymInt[] kernel_size, SymInt[] stride, SymInt[] padding, "
        "SymInt[] dilation, bool ceil_mode, bool with_indices) -> (Tensor, Tensor)")
    assert schemas["avg_pool2d_forward"] == (
        "fusednn::avg_pool2d_forward(Tensor x, SymInt[] kernel_size, SymInt[] stride, SymInt[] padding, "
        "bool ceil_mode, bool count_include_pad, SymInt? divisor_override) -> Tensor")
    assert schemas["adaptive_avg_pool2d_backward"] == (
        "fusednn::adaptive_avg_pool2d_backward(Tensor grad_y, Tensor x) -> Tensor")
