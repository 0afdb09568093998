"""Samples, bad inputs and benchmark shapes of ``conv2d`` (with its fused epilogue).

The samples are small (the implicit-GEMM kernels run through Triton's interpreter on CPU
machines): images of 1 x 1 to 13 x 13 (7 x 9 for a non-square one), 1 to 16 channels and
one sample of 64 input channels (several channel blocks in every kernel). Weights are drawn
~ fan_in^-0.5 so that the convolution's output is ~1, where the activations bend.
"""

from __future__ import annotations

import warnings

import torch

from fusednn.registry import BadInput, BenchShapes, Sample, View, mark

F64 = torch.float64

# Parameters of bench/conv2d.py: batch, input and output channels, input size (H = W),
# square kernel, stride (padding k // 2), dtype. ResNet-50's convolutions: the 7x7/2 stem,
# the 1x1 and 3x3 convolutions of its bottleneck blocks at 56, 28, 14 and 7, and a strided
# 3x3 (v1.5 puts the stride in the 3x3).
_RESNET50 = (  # (C_in, C_out, H, k, stride)
    (3, 64, 224, 7, 2),
    (64, 256, 56, 1, 1),
    (64, 64, 56, 3, 1),
    (128, 128, 56, 3, 2),
    (512, 128, 28, 1, 1),
    (256, 256, 14, 3, 1),
    (1024, 256, 14, 1, 1),
    (512, 512, 7, 3, 1),
    (2048, 512, 7, 1, 1),
)


def _bench_shape(batch, c_in, c_out, h, k, stride, dtype):
    return {"N": batch, "C_in": c_in, "C_out": c_out, "H": h, "k": k, "stride": stride, "dtype": dtype}


BENCH_SHAPES = BenchShapes(
    gpu=tuple(_bench_shape(128, *shape, dtype) for dtype in ("bfloat16", "float16") for shape in _RESNET50),
    gpu_quick=tuple(_bench_shape(32, *shape, "bfloat16") for shape in _RESNET50),
    cpu=(_bench_shape(8, 16, 32, 28, 3, 1, "float32"), _bench_shape(8, 64, 64, 14, 1, 1, "float32")),
    cpu_quick=(_bench_shape(4, 16, 16, 14, 3, 1, "float32"),),
)

# Tiny samples run in float32/float64 only; the float16/bfloat16 grid takes samples with
# a few hundred elements per output or more (see Sample.low_precision).
_TINY = dict(low_precision=False)

_ACTIVATIONS = ("relu", "gelu", "gelu_tanh", "silu")


def _pair(v):
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v)


def _output_shape(x_shape, w_shape, stride, padding, dilation, groups):
    x = torch.empty(x_shape, device="meta")
    w = torch.empty(w_shape, device="meta")
    with warnings.catch_warnings():  # torch's note that "same" with an even kernel pads a copy
        warnings.simplefilter("ignore", UserWarning)
        return tuple(torch.nn.functional.conv2d(x, w, None, stride, padding, dilation, groups).shape)


def _nhwc_view(shape, grad=True, scale=1.0):
    """A channels_last [N, C, H, W] (or [C, H, W]) tensor: a permuted view of an NHWC base."""
    if len(shape) == 3:
        base = (scale * torch.randn(shape[1], shape[2], shape[0], dtype=F64)).requires_grad_(grad)
        return View(base, lambda t: t.permute(2, 0, 1))
    n, c, h, w = shape
    base = (scale * torch.randn(n, h, w, c, dtype=F64)).requires_grad_(grad)
    return View(base, lambda t: t.permute(0, 3, 1, 2))


def _sliced_view(shape, grad=True):
    """A non-contiguous [N, C, H, W]: every other column of a wider tensor, one row dropped."""
    n, c, h, w = shape
    base = torch.randn(n, c, h + 1, 2 * w, dtype=F64).requires_grad_(grad)
    return View(base, lambda t: t[:, :, 1:, ::2])


def _sliced_channels_last_view(shape, grad=True):
    """Channels contiguous, the rest not: every other column and the first channels of a
    wider NHWC tensor, one row dropped (the kernels read it in place)."""
    n, c, h, w = shape
    base = torch.randn(n, h + 1, 2 * w, c + 2, dtype=F64).requires_grad_(grad)
    return View(base, lambda t: t[:, 1:, ::2, :c].permute(0, 3, 1, 2))


def _tensor(shape, layout, grad=True, scale=1.0):
    if layout == "channels_last":
        return _nhwc_view(shape, grad, scale)
    if layout == "sliced":
        return _sliced_view(shape, grad)
    if layout == "sliced_channels_last":
        return _sliced_channels_last_view(shape, grad)
    return (scale * torch.randn(shape, dtype=F64)).requires_grad_(grad)


def _sample(name, n, c_in, hw, c_out, kernel, *, groups=1, stride=1, padding=0, dilation=1, layout="nchw",
            weight_layout="nchw", bias=True, scale=False, shift=False, residual=False, activation=None,
            no_grad=(), **options) -> Sample:
    """A conv2d Sample: input [n, c_in, *hw] (no batch dim when n is None) in ``layout``
    ("nchw", "channels_last", "sliced" or "sliced_channels_last"), weight [c_out, c_in /
    groups, *kernel] ("nchw" or "channels_last"); epilogue pieces as asked; ``no_grad``
    names the tensors that do not require grad."""
    h, w = _pair(hw)
    kh, kw = _pair(kernel)
    x_shape = (c_in, h, w) if n is None else (n, c_in, h, w)
    w_shape = (c_out, c_in // groups, kh, kw)
    y_shape = _output_shape(x_shape, w_shape, stride, padding, dilation, groups)

    def grad(key):
        return key not in no_grad

    x = _tensor(x_shape, layout, grad("input"))
    fan_in = (c_in // groups) * kh * kw
    weight = _tensor(w_shape, weight_layout, grad("weight"), scale=fan_in ** -0.5)
    kwargs = dict(stride=stride, padding=padding, dilation=dilation, groups=groups)
    if scale:
        kwargs["scale"] = (1.0 + 0.5 * torch.randn(c_out, dtype=F64)).requires_grad_(grad("scale"))
    if shift:
        kwargs["shift"] = (0.5 * torch.randn(c_out, dtype=F64)).requires_grad_(grad("shift"))
    if residual:
        r_layout = "channels_last" if "channels_last" in (layout, weight_layout) else "nchw"
        kwargs["residual"] = _tensor(y_shape, r_layout, grad("residual"))
    if activation is not None:
        kwargs["activation"] = activation
    b = (0.5 * torch.randn(c_out, dtype=F64)).requires_grad_(grad("bias")) if bias else None
    return Sample(name, (x, weight, b), kwargs, **options)


_ALL = dict(scale=True, shift=True, residual=True)


def conv2d_samples() -> list[Sample]:
    samples = [
        # kernels and sizes
        _sample("1x1-7x9", 2, 5, (7, 9), 7, 1, **_TINY),
        _sample("3x3-pad1-13x13-channels-last", 2, 3, 13, 8, 3, padding=1, layout="channels_last"),
        _sample("5x5-valid", 1, 3, 13, 4, 5, padding="valid", **_TINY),
        _sample("stem-7x7-s2-p3-channels-last", 1, 3, 13, 16, 7, stride=2, padding=3, layout="channels_last",
                bias=False, scale=True, shift=True, activation="relu"),
        # 64 channels in 2 groups: blocks of one tap's channels, two of them along K and N in
        # every kernel (under the interpreter; the samples of fewer channels pack taps in a block)
        _sample("c64-to-40-groups2-3x1", 1, 64, 5, 40, (3, 1), padding=(1, 0), groups=2, **_ALL, activation="relu"),
        _sample("c16-to-16-s2-d2-p2", 1, 16, 7, 16, 3, stride=2, padding=2, dilation=2, **_TINY),
        _sample("1x1-image-3x3-pad1", 2, 3, 1, 5, 3, padding=1, **_TINY),
        _sample("1x1-image-1x1", 3, 1, 1, 2, 1, **_TINY),
        _sample("c1-to-3", 2, 1, 7, 3, 3, **_TINY),
        _sample("c5-to-1", 1, 5, 7, 1, 3, **_TINY),
        # stride / padding / dilation / groups
        _sample("s2-p1", 2, 4, (7, 9), 6, 3, stride=2, padding=1, **_TINY),
        _sample("s2x3-p2x0-d1x2-3x2", 1, 4, (13, 11), 4, (3, 2), stride=(2, 3), padding=(2, 0), dilation=(1, 2),
                **_TINY),
        _sample("d2-p2", 1, 3, 9, 5, 3, padding=2, dilation=2, **_TINY),
        _sample("s3-d2-p1", 1, 3, 8, 4, 3, stride=3, padding=1, dilation=2, **_TINY),
        # stride 2 with dilation 2: the odd input rows and columns are reached by no tap
        _sample("s2-d2-p2", 1, 3, 9, 4, 3, stride=2, padding=2, dilation=2, **_TINY),
        _sample("s2-1x1", 2, 5, (7, 9), 6, 1, stride=2, **_TINY),
        _sample("groups2", 2, 4, 7, 6, 3, groups=2, padding=1, **_TINY),
        _sample("groups4-s2", 1, 8, 5, 8, 3, groups=4, stride=2, padding=1, **_TINY),
        _sample("groups3-multiplier2", 1, 3, 7, 6, 3, groups=3, padding=1, **_TINY),
        # groups == C_in == C_out: fusednn.ops.depthwise_conv2d's kernel
        _sample("depthwise", 1, 4, 5, 4, 3, groups=4, padding=1, **_TINY),
        _sample("same-odd", 1, 3, (7, 9), 4, 3, padding="same", **_TINY),
        _sample("same-even-4x2-d2", 1, 3, (7, 9), 4, (4, 2), padding="same", dilation=(1, 2), **_TINY),
        # layouts
        _sample("sliced-input", 2, 3, 7, 5, 3, padding=1, layout="sliced", **_TINY),
        _sample("sliced-channels-last-input", 2, 3, 7, 5, 3, padding=1, layout="sliced_channels_last", **_TINY),
        _sample("channels-last-weight", 1, 3, 7, 5, 3, weight_layout="channels_last", residual=True, **_TINY),
        _sample("unbatched", None, 3, (7, 9), 5, 3, padding=1, residual=True, activation="silu", **_TINY),
        _sample("unbatched-channels-last", None, 3, 7, 4, 3, layout="channels_last", **_TINY),
        _sample("zero-batch", 0, 3, 7, 4, 3, padding=1, **_ALL, activation="gelu", **_TINY),
        # the epilogue: each piece alone, then all of them with every activation
        _sample("no-bias", 1, 3, 7, 4, 3, bias=False, **_TINY),
        _sample("scale-only", 1, 3, 7, 4, 3, bias=False, scale=True, **_TINY),
        _sample("shift-only", 1, 3, 7, 4, 3, bias=False, shift=True, **_TINY),
        _sample("residual-only", 1, 3, 7, 4, 3, bias=False, padding=1, residual=True, **_TINY),
    ]
    samples += [_sample(f"{activation}-only", 1, 3, 7, 4, 3, bias=False, activation=activation, **_TINY)
                for activation in _ACTIVATIONS]
    samples += [_sample("all-no-activation", 2, 3, 7, 8, 3, padding=1, **_ALL, **_TINY)]
    # float16 takes the channels_last ones (about 800 outputs)
    samples += [_sample(f"all-{activation}", 2, 3, 7, 8, 3, padding=1, **_ALL, activation=activation,
                        **(dict(layout="channels_last") if activation in ("relu", "silu") else _TINY))
                for activation in _ACTIVATIONS]
    # only some inputs need a gradient
    everything = ("input", "weight", "bias", "scale", "shift", "residual")
    for wanted in ("input", "weight", "scale", "residual"):
        samples.append(_sample(f"only-{wanted}-grad", 1, 3, 7, 4, 3, padding=1, **_ALL, activation="relu",
                               no_grad=tuple(k for k in everything if k != wanted), **_TINY))
    samples.append(_sample("gradcheck", 1, 2, 4, 2, 3, padding=1, scale=True, shift=True, residual=True,
                           activation="silu", **_TINY))
    return mark(samples, opcheck={"all-gelu", "only-scale-grad", "s2-1x1"}, gradcheck={"gradcheck"})


def _bad_args(**changes):
    """Arguments of fusednn.ops.conv2d (float32 input [2, 4, 5, 6], weight [6, 4, 3, 3], bias
    [6]) with some replaced or added."""
    args = {"input": torch.randn(2, 4, 5, 6), "weight": torch.randn(6, 4, 3, 3), "bias": torch.randn(6)}
    for key, value in changes.items():
        args[key] = value(args) if callable(value) else value
    return args


def conv2d_bad_inputs() -> list[BadInput]:
    cases = {
        "input-2d": (dict(input=torch.randn(5, 6)), ValueError,
                     r"input must be 3-D \[C_in, H, W\] or 4-D \[N, C_in, H, W\]; got shape \(5, 6\) "
                     r"\[Expected 3D \(unbatched\) or 4D \(batched\) input to conv2d"),
        "input-5d": (dict(input=torch.randn(1, 2, 4, 5, 6)), ValueError, r"input must be 3-D .* or 4-D"),
        "input-list": (dict(input=[1.0, 2.0]), TypeError, r"input must be a tensor; got a list of 2 items"),
        "input-integer": (dict(input=lambda a: a["input"].long()), TypeError,
                          r"input must be float16, bfloat16, float32 or float64; got int64"),
        "weight-3d": (dict(weight=torch.randn(6, 4, 3)), ValueError,
                      r"weight must be 4-D \[C_out, C_in / groups, kh, kw\]; got shape \(6, 4, 3\)"),
        "weight-integer": (dict(weight=lambda a: a["weight"].int()), TypeError, r"weight must be float.*; got int32"),
        "weight-dtype": (dict(weight=lambda a: a["weight"].double()), TypeError,
                         r"weight must be of input's dtype float32; got float64 \[Input type \(torch.FloatTensor\) "
                         r"and weight type \(torch.DoubleTensor\) should be the same"),
        "weight-device": (dict(weight=lambda a: a["weight"].to("meta")), ValueError,
                          r"weight must be on input's device cpu; got meta"),
        "channels": (dict(weight=torch.randn(6, 3, 3, 3)), ValueError,
                     r"weight must be \[C_out, C_in / groups, kh, kw\] with C_in / groups = 4 / 1; got shape "
                     r"\(6, 3, 3, 3\) \[Given groups=1, weight of size \[6, 3, 3, 3\], expected input\[2, 4, 5, 6\] "
                     r"to have 3 channels, but got 4 channels instead\]"),
        "groups-not-dividing-C_in": (dict(weight=torch.randn(6, 1, 3, 3), groups=3), ValueError,
                                     r"weight must be .* with C_in / groups = 4 / 3; got shape \(6, 1, 3, 3\)"),
        "groups-not-dividing-C_out": (dict(weight=torch.randn(5, 2, 3, 3), groups=2, bias=torch.randn(5)),
                                      ValueError,
                                      r"weight must be \[C_out, ...\] with C_out divisible by groups = 2; got shape "
                                      r"\(5, 2, 3, 3\) \[Given groups=2, expected weight to be divisible by 2"),
        "groups-zero": (dict(groups=0), ValueError,
                        r"groups must be at least 1; got 0 \[non-positive groups is not supported\]"),
        "groups-float": (dict(groups=2.0), TypeError, r"groups must be an int; got 2.0"),
        "stride-zero": (dict(stride=0), ValueError, r"stride must be at least 1; got 0"),
        "stride-pair-negative": (dict(stride=(1, -1)), ValueError, r"stride must be at least 1; got \(1, -1\)"),
        "dilation-zero": (dict(dilation=(0, 1)), ValueError, r"dilation must be at least 1; got \(0, 1\)"),
        "padding-negative": (dict(padding=-1), ValueError, r"padding must be at least 0; got -1"),
        "padding-triple": (dict(padding=(1, 1, 1)), TypeError, r"padding must be an int or a pair of ints"),
        "padding-same-strided": (dict(padding="same", stride=2), ValueError,
                                 r"padding must be .*; got 'same' \[padding='same' is not supported for strided "
                                 r"convolutions\]"),
        "padding-unknown-string": (dict(padding="full"), ValueError,
                                   r"padding must be an int, a pair of ints, 'same' or 'valid'; got 'full'"),
        "kernel-larger-than-input": (dict(weight=torch.randn(6, 4, 9, 3)), ValueError,
                                     r"input must be at least the dilated kernel's size \(9 x 3\) once padded; got a "
                                     r"padded size of \(5 x 6\) \[Calculated padded input size"),
        "dilated-kernel-larger-than-input": (dict(dilation=4, padding=1), ValueError,
                                             r"input must be at least the dilated kernel's size \(9 x 9\)"),
        "bias-shape": (dict(bias=torch.randn(5)), ValueError, r"bias must be \[C_out\] = \[6\]; got shape \(5,\)"),
        "bias-2d": (dict(bias=torch.randn(6, 1)), ValueError, r"bias must be 1-D \[C_out\]; got shape \(6, 1\)"),
        "bias-integer": (dict(bias=torch.arange(6)), TypeError, r"bias must be float.*; got int64"),
        "bias-device": (dict(bias=lambda a: a["bias"].to("meta")), ValueError,
                        r"bias must be on input's device cpu; got meta"),
        "scale-shape": (dict(scale=torch.randn(4)), ValueError, r"scale must be \[C_out\] = \[6\]; got shape \(4,\)"),
        "shift-shape": (dict(shift=torch.randn(7)), ValueError, r"shift must be \[C_out\] = \[6\]; got shape \(7,\)"),
        "residual-shape": (dict(residual=torch.randn(2, 6, 5, 6)), ValueError,
                           r"residual must be of the output's shape \[2, 6, 3, 4\]; got shape \(2, 6, 5, 6\)"),
        "residual-dtype": (dict(residual=torch.randn(2, 6, 3, 4, dtype=torch.float64)), TypeError,
                           r"residual must be of input's dtype float32; got float64"),
        "activation-unknown": (dict(activation="tanh"), ValueError,
                               r"activation must be one of None, 'relu', 'gelu', 'gelu_tanh', 'silu'; got 'tanh'"),
    }
    return [BadInput(name, (), _bad_args(**changes), error, r"fusednn\.ops\.conv2d: " + match)
            for name, (changes, error, match) in cases.items()]
