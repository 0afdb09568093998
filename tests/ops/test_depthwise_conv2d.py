"""depthwise_conv2d beyond what every op gets from the registry (tests/test_registry.py): the
reference against torch.nn.functional.conv2d(groups=C) with an eager epilogue, the memory
formats of the output and the gradients against torch's, that the Triton kernels ran and
saved the pre-epilogue output only when the backward needs it, double backward through the
kernel path (the registry's gradgradcheck needs a float64 kernel, and float64 runs the
reference), and the launch heuristics."""

import pytest
import torch
import torch.nn.functional as F
from torch._prims_common import suggest_memory_format

import fusednn
from fusednn import registry, testing
from fusednn.kernels import depthwise_conv2d as kernels
from fusednn.testing import assert_close

INFO = registry.get("depthwise_conv2d")
F64 = torch.float64

_ACTIVATIONS = {None: lambda t: t, "relu": torch.relu, "gelu": F.gelu,
                "gelu_tanh": lambda t: F.gelu(t, approximate="tanh"), "silu": F.silu}


def _kernel_device():
    """The device where the op runs its Triton kernels in float32 here (CPU: the interpreter)."""
    pairs = [(device, dtype) for device, dtype in testing.kernel_dtypes(INFO) if dtype == torch.float32]
    if not pairs:
        pytest.skip("no Triton kernel runs here")
    return pairs[0][0]


@pytest.mark.parametrize("geometry", [
    dict(stride=1, padding=1, dilation=1), dict(stride=2, padding=(2, 0), dilation=(1, 2)),
    dict(stride=1, padding="same", dilation=1), dict(stride=(1, 3), padding="valid", dilation=2),
], ids=["s1-p1", "s2-asymmetric", "same", "valid-d2"])
def test_reference_matches_torch_conv2d_and_eager_epilogue(geometry):
    x = torch.randn(2, 4, 9, 10, dtype=F64)
    w = torch.randn(4, 1, 4, 3, dtype=F64)  # an even kernel height: "same" pads one more at the bottom
    bias, scale, shift = (torch.randn(4, dtype=F64) for _ in range(3))
    conv = F.conv2d(x, w, None, groups=4, **geometry)
    torch.testing.assert_close(fusednn.reference.depthwise_conv2d(x, w, **geometry), conv, rtol=1e-12, atol=1e-12)
    residual = torch.randn(conv.shape, dtype=F64)
    for activation, act in _ACTIVATIONS.items():
        got = fusednn.reference.depthwise_conv2d(x, w, bias, **geometry, scale=scale, shift=shift, residual=residual,
                                                 activation=activation)
        expected = act((conv + bias[:, None, None]) * scale[:, None, None] + shift[:, None, None] + residual)
        torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)


def _format(t: torch.Tensor) -> tuple[bool, bool]:
    return t.is_contiguous(), t.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("case", ["nchw", "channels-last", "channels-last-weight", "unbatched",
                                  "unbatched-hwc", "zero-batch-channels-last"])
def test_output_and_gradient_formats_follow_torch(case):
    """y, grad_input and grad_residual in the memory format torch's conv gives (channels_last
    when the input or the weight is), the weight gradient contiguous; values against float64."""
    device = _kernel_device()
    cl = torch.channels_last
    shape = {"unbatched": (3, 6, 5), "unbatched-hwc": (3, 6, 5), "zero-batch-channels-last": (0, 3, 6, 5)}.get(
        case, (2, 3, 6, 5))
    x = torch.randn(shape, device=device)
    if case == "unbatched-hwc":
        x = torch.randn(6, 5, 3, device=device).permute(2, 0, 1)
    elif case in ("channels-last", "zero-batch-channels-last"):
        x = x.contiguous(memory_format=cl)
    w = torch.randn(3, 1, 3, 3, device=device)
    if case == "channels-last-weight":  # [C, 1, kh, kw] strides (kh * kw, 1, kw, 1), as a channels_last model has
        w = w.to(memory_format=cl)
        assert suggest_memory_format(w) == cl
    bias = torch.randn(3, device=device)
    leaves = [t.requires_grad_() for t in (x, w, bias)]
    conv = F.conv2d(x, w, bias, padding=1, groups=3)  # torch's format (an add after it may change it)
    residual = torch.randn_like(conv).requires_grad_()
    with testing.recording_fusednn_calls() as calls:
        y = fusednn.ops.depthwise_conv2d(x, w, bias, padding=1, residual=residual)
        grad_y = torch.randn_like(y)
        grads = torch.autograd.grad(y, leaves + [residual], grad_y)
    assert {str(c.op) for c in calls} == {"fusednn.depthwise_conv2d_forward.default",
                                          "fusednn.depthwise_conv2d_backward.default"}
    grad_x_t = torch.autograd.grad(conv + residual, x, grad_y)[0]
    assert _format(y) == _format(conv), (case, y.stride(), conv.stride())
    assert _format(grads[0]) == _format(grad_x_t), (case, grads[0].stride(), grad_x_t.stride())
    assert grads[1].is_contiguous()
    assert _format(grads[3]) == _format(conv)
    # the values against float64 on the CPU (a GPU's float32 convolution may run in TF32)
    leaves64 = [t.detach().double().cpu().requires_grad_() for t in leaves + [residual]]
    x64, w64, bias64, residual64 = leaves64
    y64 = F.conv2d(x64, w64, bias64, padding=1, groups=3) + residual64
    assert_close(y, y64, name="y")
    for name, g, g64 in zip(("input", "weight", "bias", "residual"), grads,
                            torch.autograd.grad(y64, leaves64, grad_y.double().cpu())):
        assert_close(g, g64, name=f"grad {name}")


def test_pre_epilogue_output_saved_only_when_needed():
    """The forward writes c (save_conv) only when the backward will read it: an activation or
    a scale that requires grad, with grad mode on and something requiring grad."""
    device = _kernel_device()
    x = torch.randn(1, 3, 5, 5, device=device, requires_grad=True)
    w = torch.randn(3, 1, 3, 3, device=device)
    scale = torch.randn(3, device=device)

    def saved(grad_mode=True, **kwargs):
        with torch.set_grad_enabled(grad_mode), testing.recording_fusednn_calls() as calls:
            fusednn.ops.depthwise_conv2d(x, w, padding=1, **kwargs)
        (forward,) = calls
        return forward.args[-1]

    assert saved(activation="gelu") is True
    assert saved(activation="gelu", grad_mode=False) is False
    assert saved(scale=scale) is False
    assert saved(scale=scale.clone().requires_grad_()) is True
    assert saved() is False


def test_float64_runs_the_reference():
    x = torch.randn(1, 3, 5, 5, dtype=F64, requires_grad=True)
    w = torch.randn(3, 1, 3, 3, dtype=F64, requires_grad=True)
    with testing.recording_fusednn_calls() as calls:
        fusednn.ops.depthwise_conv2d(x, w, padding=1).sum().backward()
    assert not calls


def test_double_backward_through_the_kernel_path():
    """create_graph=True: the first gradient (from the Triton forward's saved inputs, through
    the reference) is differentiable; second derivatives match the reference's."""
    device = _kernel_device()
    torch_inputs = [torch.randn(1, 3, 5, 5, dtype=F64), torch.randn(3, 1, 3, 3, dtype=F64),
                    *(torch.randn(3, dtype=F64) for _ in range(3)), torch.randn(1, 3, 5, 4, dtype=F64)]
    cotangent = torch.randn(1, 3, 5, 4, dtype=F64)
    directions = [torch.randn_like(t) for t in torch_inputs]

    def second_derivatives(op, dtype, device):
        leaves = [t.to(device=device, dtype=dtype).requires_grad_() for t in torch_inputs]
        x, w, bias, scale, shift, residual = leaves
        # stride (1, 2) and padding (1, 2): the recomputation replays the resolved geometry
        y = op(x, w, bias, (1, 2), (1, 2), 1, scale=scale, shift=shift, residual=residual, activation="silu")
        first = torch.autograd.grad(y, leaves, cotangent.to(device=device, dtype=dtype), create_graph=True)
        total = sum((g * d.to(device=device, dtype=dtype)).sum() for g, d in zip(first, directions))
        return first, torch.autograd.grad(total, leaves, allow_unused=True)

    first, second = second_derivatives(fusednn.ops.depthwise_conv2d, torch.float32, device)
    first_ref, second_ref = second_derivatives(fusednn.reference.depthwise_conv2d, F64, "cpu")
    names = ("input", "weight", "bias", "scale", "shift", "residual")
    for name, g, g_ref in zip(names, first, first_ref):
        assert_close(g, g_ref, name=f"grad {name}")
    for name, g, g_ref in zip(names, second, second_ref):
        if g_ref is None:  # y is linear in it given the others, and the first gradients do not depend on it
            assert g is None or float(g.abs().max()) == 0.0, name
        else:
            assert_close(g, g_ref, name=f"second derivative {name}")


def test_launch_heuristics():
    # a tile of 2048 / 32 = 64 pixels: square 8 x 8 on a 56 x 56 map, 8 x 8 on 14 x 14 (every
    # 64-pixel shape wastes 23 % there); with 8 channels, 256 pixels: 8 x 32 wastes 12.5 %, 16 x 16 23 %
    assert kernels.spatial_tile(56, 56, 32) == (8, 8)
    assert kernels.spatial_tile(14, 14, 32) == (8, 8)
    assert kernels.spatial_tile(56, 56, 8) == (8, 32)
    # a small map in one tile, a 1 x 1 map in a 1 x 1 tile
    assert kernels.spatial_tile(9, 9, 1) == (16, 16)
    assert kernels.spatial_tile(1, 1, 32) == (1, 1)
    # wgrad: 64 taps x 32 channels per program for a 31 x 31 filter; fewer channels take more taps,
    # and short rows several pixels a step
    assert kernels.wgrad_config(31 * 31, 1024, 14) == (64, 1, 32, 4)
    assert kernels.wgrad_config(31 * 31, 1, 9) == (1024, 2, 1, 4)
    assert kernels.wgrad_config(9, 16, 13) == (16, 8, 16, 4)
