"""conv2d beyond what every op gets from the registry (tests/test_registry.py): the reference
against torch's modules, the memory formats of outputs and gradients, that the kernels (not
the reference) run and where depthwise calls go, float32 parameters with a float16 input,
a broadcast output gradient, and the second derivative of the kernel path."""

import importlib
import warnings

import pytest
import torch
import torch.nn.functional as F

import fusednn
from fusednn import registry, testing
from fusednn.reference.conv2d import conv2d as reference_conv2d
from fusednn.testing import assert_close

INFO = registry.get("conv2d")
conv2d_module = importlib.import_module("fusednn.ops.conv2d")  # fusednn.ops.conv2d is the function
CL = torch.channels_last


def _kernel_pairs():
    return testing.kernel_dtypes(INFO)


def _device():
    return "cuda" if torch.cuda.is_available() else "cpu"


def _needs_kernel():
    if not _kernel_pairs():
        pytest.skip("no conv2d kernel runs on this machine")


def test_reference_is_conv_batchnorm_residual_relu():
    """The reference with a folded BatchNorm (scale = gamma / sqrt(var + eps), shift = beta -
    mean * scale) is torch's Conv2d -> BatchNorm2d (eval) -> + residual -> ReLU."""
    conv = torch.nn.Conv2d(3, 6, 3, stride=2, padding=1, bias=True).double()
    bn = torch.nn.BatchNorm2d(6).double().eval()
    with torch.no_grad():
        bn.running_mean.normal_()
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.normal_()
        bn.bias.normal_()
    x = torch.randn(2, 3, 9, 9, dtype=torch.float64)
    residual = torch.randn(2, 6, 5, 5, dtype=torch.float64)
    expected = F.relu(bn(conv(x)) + residual)
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    shift = bn.bias - bn.running_mean * scale
    got = reference_conv2d(x, conv.weight, conv.bias, 2, 1, scale=scale.detach(), shift=shift.detach(),
                           residual=residual, activation="relu")
    assert_close(got, expected, name="output")


@pytest.mark.parametrize("padding, stride, dilation, kernel", [
    ("same", 1, 1, (4, 2)), ("same", 1, (2, 1), (3, 4)), (1, 2, 1, (3, 3)), ((2, 0), (2, 3), (1, 2), (3, 2)),
])
def test_explicitly_padded_reference_matches_torch(padding, stride, dilation, kernel):
    """The double backward recomputes through the reference on an explicitly padded input
    ((top, left) and the output size: "same" with an even kernel pads one more at the end,
    a stride can leave the last rows unread); it must be torch's convolution."""
    from fusednn.ops._convolution import conv2d_geometry
    from fusednn._validate import Args

    x = torch.randn(2, 3, 7, 9, dtype=torch.float64)
    weight = torch.randn(4, 3, *kernel, dtype=torch.float64)
    geometry = conv2d_geometry(Args("test"), (7, 9), kernel, stride, padding, dilation)
    got = conv2d_module._explicitly_padded_reference(
        x, weight, None, None, None, None, geometry.stride, geometry.padding, geometry.dilation, 1, geometry.output,
        None)
    with warnings.catch_warnings():  # torch pads a copy for "same" with an even kernel
        warnings.simplefilter("ignore", UserWarning)
        expected = F.conv2d(x, weight, None, stride, padding, dilation)
    assert_close(got, expected, name="output")


def _layouts():
    # (input shape, input layout, weight layout): C = 1 and 1 x 1 images are both contiguous
    # and channels_last, where torch's suggest_memory_format decides
    return [((2, 3, 5, 6), "nchw", "nchw"), ((2, 3, 5, 6), "cl", "nchw"), ((2, 3, 5, 6), "nchw", "cl"),
            ((2, 3, 5, 6), "cl", "cl"), ((2, 1, 5, 6), "cl", "nchw"), ((2, 3, 1, 1), "cl", "nchw"),
            ((3, 5, 6), "cl", "nchw")]


def _laid(t, layout):
    if layout != "cl":
        return t
    if t.dim() == 3:  # unbatched: channels innermost in memory
        return t.permute(1, 2, 0).contiguous().permute(2, 0, 1)
    return t.contiguous(memory_format=CL)


def _layout_flags(t: torch.Tensor) -> tuple[bool, bool]:
    return t.is_contiguous(), t.dim() == 4 and t.is_contiguous(memory_format=CL)


@pytest.mark.parametrize("shape, x_layout, w_layout", _layouts())
def test_memory_formats_follow_torch(shape, x_layout, w_layout):
    """The output and the input and weight gradients are laid out as torch's F.conv2d lays
    them out for the same call: channels_last when the input or the weight is."""
    _needs_kernel()
    device = _device()
    c_in = shape[-3]
    x = _laid(torch.randn(shape, device=device), x_layout).requires_grad_()
    w = _laid(torch.randn(4, c_in, 3, 3, device=device), w_layout).requires_grad_()
    y = fusednn.ops.conv2d(x, w, None, 1, 1)
    y_torch = F.conv2d(x, w, None, 1, 1)
    assert y.stride() == y_torch.stride(), (y.stride(), y_torch.stride())
    grad_y = torch.randn_like(y)
    ours = torch.autograd.grad(y, [x, w], grad_y)
    theirs = torch.autograd.grad(y_torch, [x, w], grad_y)
    for name, got, expected in zip(("grad input", "grad weight"), ours, theirs):
        assert _layout_flags(got) == _layout_flags(expected), (name, got.stride(), expected.stride())


@pytest.mark.parametrize("groups, c_in, c_out", [(1, 3, 4), (2, 4, 6), (4, 4, 4)])
def test_the_kernels_run_and_depthwise_goes_to_its_op(groups, c_in, c_out):
    """The implicit GEMM's registered ops run forward and backward (not the reference);
    groups == C_in == C_out goes to fusednn.ops.depthwise_conv2d."""
    _needs_kernel()
    device, dtype = _kernel_pairs()[0]
    sample = registry.Sample("call", (torch.randn(2, c_in, 5, 5, dtype=torch.float64).requires_grad_(),
                                      torch.randn(c_out, c_in // groups, 3, 3, dtype=torch.float64).requires_grad_()),
                             dict(padding=1, groups=groups, activation="relu"))
    calls = {c.op.name().split("::")[1] for c in testing.fusednn_calls(INFO, sample, device, dtype)}
    depthwise = groups == c_in == c_out
    if depthwise:
        assert "depthwise_conv2d_forward" in calls and "conv2d_forward" not in calls, calls
    else:
        assert {"conv2d_forward", "conv2d_backward"} <= calls, calls


def test_conv_output_is_saved_only_for_a_backward_that_needs_it():
    """The pre-epilogue output c is written (a second output) only when grad mode is on and
    the backward needs it: an activation, or a scale that requires grad."""
    _needs_kernel()
    device, dtype = _kernel_pairs()[0]
    x = torch.randn(1, 3, 5, 5, device=device, dtype=dtype, requires_grad=True)
    w = torch.randn(4, 3, 3, 3, device=device, dtype=dtype)
    scale = torch.rand(4, device=device, dtype=dtype)

    def saved(**kwargs):
        with testing.recording_fusednn_calls() as calls:
            fusednn.ops.conv2d(x, w, **kwargs)
        (call,) = [c for c in calls if "conv2d_forward" in str(c.op)]
        return call.args[-1]

    assert saved(activation="relu") and saved(scale=scale.requires_grad_())
    assert not saved(scale=scale.detach())
    with torch.no_grad():
        assert not saved(activation="relu")


def test_float32_parameters_with_a_float16_input():
    """bias / scale / shift may be float32 with a float16 input (mixed precision): the
    output and the input gradients come in float16, the parameter gradients in float32,
    within the 2x rule of PyTorch's float16 computation."""
    pairs = [(d, t) for d, t in _kernel_pairs() if t == torch.float16]
    if not pairs:
        pytest.skip("no float16 kernel on this machine")
    device, dtype = pairs[0]
    x = torch.randn(2, 3, 7, 7, device=device, dtype=dtype, requires_grad=True)
    w = (torch.randn(8, 3, 3, 3, device=device) / 5).to(dtype).requires_grad_()
    params = {name: (torch.randn(8, device=device) * 0.5 + (1.0 if name == "scale" else 0.0)).requires_grad_()
              for name in ("bias", "scale", "shift")}
    residual = torch.randn(2, 8, 7, 7, device=device, dtype=dtype, requires_grad=True)
    grad_y = torch.randn(2, 8, 7, 7, device=device, dtype=dtype)
    inputs = [x, w, *params.values(), residual]

    def run(xs, backend):
        x, w, bias, scale, shift, residual = xs
        with fusednn.use_backend(backend):
            y = fusednn.ops.conv2d(x, w, bias, 1, 1, scale=scale, shift=shift, residual=residual, activation="gelu")
        return [y, *torch.autograd.grad(y, xs, grad_y.to(y.dtype))]

    ours = run(inputs, "auto")
    # PyTorch's float16 computation (parameters rounded to float16) and the float64 truth
    baseline = run([t.detach().to(dtype).requires_grad_() for t in inputs], "reference")
    truth = run([t.detach().double().cpu().requires_grad_() for t in inputs], "reference")
    assert [t.dtype for t in ours] == [dtype, dtype, dtype, torch.float32, torch.float32, torch.float32, dtype]
    for name, got, base, want in zip(("y", "x", "weight", "bias", "scale", "shift", "residual"), ours, baseline,
                                     truth):
        assert_close(got, want, name=name, lowp_baseline=base, precision=dtype)


def test_broadcast_output_gradient():
    """y.sum().backward() hands the backward an expanded gradient (all strides 0): the
    kernels read it through its strides."""
    _needs_kernel()
    device, dtype = _kernel_pairs()[0]
    x = torch.randn(2, 3, 6, 5, dtype=torch.float64)
    w = torch.randn(4, 3, 3, 3, dtype=torch.float64)
    scale = torch.rand(4, dtype=torch.float64) + 0.5
    grads = []
    for device_, dtype_, backend in ((device, dtype, "auto"), ("cpu", torch.float64, "reference")):
        xs = [t.to(device_, dtype_).requires_grad_() for t in (x, w, scale)]
        with fusednn.use_backend(backend):
            y = fusednn.ops.conv2d(xs[0], xs[1], stride=2, padding=1, scale=xs[2])
        grads.append(torch.autograd.grad(y.sum(), xs))
    for name, got, want in zip(("x", "weight", "scale"), *grads):
        assert_close(got, want, name=f"grad {name}")


def test_second_derivative_through_the_kernels():
    """create_graph=True on the kernel path gives a differentiable first gradient (through
    the reference), whose own gradient is the reference's second derivative."""
    _needs_kernel()
    device, dtype = _kernel_pairs()[0]
    base = [torch.randn(1, 2, 5, 5, dtype=torch.float64), torch.randn(3, 2, 3, 3, dtype=torch.float64),
            torch.rand(3, dtype=torch.float64) + 0.5]
    results = []
    for device_, dtype_, backend in ((device, dtype, "auto"), ("cpu", torch.float64, "reference")):
        x, w, scale = (t.to(device_, dtype_).requires_grad_() for t in base)
        with fusednn.use_backend(backend):
            y = fusednn.ops.conv2d(x, w, padding=1, scale=scale, activation="silu")
        grad_x, = torch.autograd.grad((y * y).sum(), x, create_graph=True)
        results.append(torch.autograd.grad(grad_x.square().sum(), [x, w, scale]))
    for name, got, want in zip(("x", "weight", "scale"), *results):
        assert_close(got, want, name=f"second derivative wrt {name}")
