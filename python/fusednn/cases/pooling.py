"""Samples, bad inputs and benchmark shapes of ``max_pool2d``, ``avg_pool2d`` and
``adaptive_avg_pool2d``.

Inputs are [N, C, H, W] float64 tensors with H, W in 1, 7, 13 and C in 1, 3, 5, 16 (one
sample with C = 64), given contiguous (NCHW), channels_last (a ``View`` of an NHWC base, the
kernels' native layout) and as other strided views, unbatched [C, H, W], batch 1 and
batch 0. Random normal values have no ties, so every window's maximum is unique (ties are
the family test's business).
"""

from __future__ import annotations

import torch

from fusednn.registry import BadInput, BenchShapes, Sample, View, mark

F64 = torch.float64

# ResNet's stem pooling (3x3, stride 2, padding 1 after the 7x7 convolution) at batch 32
# and 128; the average pool also at a DenseNet transition (2x2, stride 2).
_STEM = {"C": 64, "H": 112, "W": 112, "kernel": 3, "stride": 2, "padding": 1}
_CPU = ({"N": 8, "C": 16, "H": 28, "W": 28, "kernel": 3, "stride": 2, "padding": 1},)
MAX_POOL_BENCH_SHAPES = BenchShapes(
    gpu=({"N": 32, **_STEM}, {"N": 128, **_STEM}),
    gpu_quick=({"N": 128, **_STEM},),
    cpu=_CPU, cpu_quick=_CPU,
)
AVG_POOL_BENCH_SHAPES = BenchShapes(
    gpu=({"N": 32, **_STEM}, {"N": 128, **_STEM},
         {"N": 128, "C": 256, "H": 56, "W": 56, "kernel": 2, "stride": 2, "padding": 0}),
    gpu_quick=({"N": 128, **_STEM},),
    cpu=_CPU, cpu_quick=_CPU,
)
# The global average before ResNet-50's classifier.
GLOBAL_POOL_BENCH_SHAPES = BenchShapes(
    gpu=({"N": 128, "C": 2048, "H": 7, "W": 7}, {"N": 32, "C": 2048, "H": 7, "W": 7}),
    gpu_quick=({"N": 128, "C": 2048, "H": 7, "W": 7},),
    cpu=({"N": 8, "C": 256, "H": 7, "W": 7},), cpu_quick=({"N": 8, "C": 256, "H": 7, "W": 7},),
)


def _randn(*shape, grad=True):
    return torch.randn(shape, dtype=F64).requires_grad_(grad)


def _channels_last(n, c, h, w, grad=True) -> View:
    """An [N, C, H, W] input with channels_last strides: an NHWC base, permuted."""
    return View(_randn(n, h, w, c, grad=grad), lambda t: t.permute(0, 3, 1, 2))


def _strided(n, c, h, w) -> View:
    """An [N, C, H, W] view that is neither contiguous nor channels_last: every other
    channel of an [N, H, 2C, W] base (C strided by 2W, H by 2CW)."""
    return View(_randn(n, h, 2 * c, w), lambda t: t.permute(0, 2, 1, 3)[:, ::2])


def _zero_batch(c, h, w) -> torch.Tensor:
    return _randn(0, c, h, w)


def _with_nonfinite() -> torch.Tensor:
    """NaN in one window, -inf filling another (a window of -inf only keeps its first tap as
    the argmax), +inf in a third."""
    x = torch.randn(2, 3, 7, 7, dtype=F64)
    x[0, 1, 2, 3] = float("nan")
    x[1, 0, 4:7, 4:7] = float("-inf")
    x[1, 2, 0, 0] = float("inf")
    return x.requires_grad_()


def max_pool2d_samples() -> list[Sample]:
    samples = [
        Sample("stem-3x3-s2-p1-channels-last", (_channels_last(2, 16, 13, 13), 3, 2, 1)),
        Sample("2x2-nchw", (_randn(2, 5, 7, 7), 2)),
        Sample("3x3-s1-nchw-batch1", (_randn(1, 3, 13, 13), 3), dict(stride=1, padding=1)),
        Sample("dilation2", (_channels_last(2, 3, 13, 13), 3), dict(stride=1, padding=1, dilation=2)),
        Sample("dilation-pair-strided", (_strided(2, 5, 13, 7), (2, 3)), dict(stride=(3, 1), padding=(1, 0),
                                                                             dilation=(2, 1))),
        # H: floor 6 -> ceil 7 (the last window half outside); W: 5 windows (the rule that
        # the last window starts inside the input or its left padding removes a 6th)
        Sample("ceil-mode", (_randn(2, 3, 13, 13), 2), dict(stride=(2, 3), padding=(0, 1), ceil_mode=True)),
        Sample("kernel7-s2-p3", (_channels_last(1, 16, 13, 13), 7, 2, 3)),
        Sample("kernel1-s3", (_randn(2, 3, 7, 7), 1, 3)),
        Sample("one-pixel", (_randn(2, 3, 1, 1), 1)),
        Sample("row-1x13", (_channels_last(2, 5, 1, 13), (1, 3)), dict(stride=(1, 2), padding=(0, 1))),
        Sample("channels64", (_channels_last(1, 64, 7, 7), 3, 2, 1)),
        Sample("unbatched", (_randn(3, 7, 7), 3, 2)),
        Sample("zero-batch", (_zero_batch(3, 7, 7), 3, 2, 1)),
        Sample("return-indices", (_randn(2, 3, 7, 7), 3, 2, 1), dict(return_indices=True)),
        Sample("no-grad", (_channels_last(2, 16, 7, 7, grad=False), 3, 2, 1)),
        Sample("nan-and-inf", (_with_nonfinite(), 3, 2, 1)),
        Sample("gradcheck", (_randn(1, 2, 5, 5), 3, 2, 1), gradcheck=True, low_precision=False),
    ]
    return mark(samples, opcheck={"ceil-mode", "unbatched"})


def avg_pool2d_samples() -> list[Sample]:
    samples = [
        Sample("stem-3x3-s2-p1-channels-last", (_channels_last(2, 16, 13, 13), 3, 2, 1)),
        Sample("2x2-nchw", (_randn(2, 5, 7, 7), 2)),
        Sample("3x3-s1-exclude-pad-batch1", (_randn(1, 3, 13, 13), 3), dict(stride=1, padding=1,
                                                                           count_include_pad=False)),
        # H: 5 windows, the first with a padded row; W: floor 2 -> ceil 3 windows, the last
        # reaching 2 columns past the (unpadded) input: counted by neither divisor rule
        Sample("ceil-mode-include-pad", (_randn(2, 3, 13, 7), 3, 3, (1, 0)), dict(ceil_mode=True)),
        Sample("ceil-mode-exclude-pad", (_channels_last(2, 3, 13, 7), 3, 3, (1, 0)),
               dict(ceil_mode=True, count_include_pad=False)),
        Sample("divisor-override", (_channels_last(2, 5, 7, 7), 3, 2, 1), dict(divisor_override=5)),
        Sample("strided-pair", (_strided(2, 5, 13, 7), (2, 3)), dict(stride=(3, 1), padding=(1, 1))),
        Sample("row-1x13", (_randn(2, 3, 1, 13), (1, 3)), dict(stride=(1, 2), padding=(0, 1))),
        Sample("unbatched", (_randn(5, 7, 7), 2, 1)),
        Sample("zero-batch", (_zero_batch(3, 7, 7), 3, 2, 1)),
        Sample("no-grad", (_channels_last(2, 16, 7, 7, grad=False), 3, 2, 1)),
        Sample("gradcheck", (_randn(1, 2, 5, 5), 3, 2, 1), gradcheck=True, low_precision=False),
    ]
    return mark(samples, opcheck={"divisor-override", "unbatched"})


def adaptive_avg_pool2d_samples() -> list[Sample]:
    samples = [
        Sample("global-channels-last", (_channels_last(2, 16, 7, 7), 1)),
        Sample("global-pair-nchw", (_randn(2, 5, 13, 13), (1, 1))),
        Sample("global-none-entries", (_randn(2, 3, 7, 1), (1, None))),
        Sample("global-strided", (_strided(2, 5, 13, 7), 1)),
        Sample("global-channels64", (_channels_last(1, 64, 7, 7), 1)),
        Sample("global-one-pixel", (_randn(3, 1, 1, 1), (None, None))),
        Sample("global-unbatched", (_randn(3, 7, 13), 1)),
        Sample("global-zero-batch", (_zero_batch(3, 7, 7), 1)),
        Sample("global-no-grad", (_channels_last(2, 16, 7, 7, grad=False), 1)),
        # other output sizes run the reference (torch's adaptive_avg_pool2d)
        Sample("reference-3x4", (_channels_last(2, 3, 7, 13), (3, 4))),
        Sample("reference-none", (_randn(2, 3, 7, 13), (3, None))),
        Sample("gradcheck", (_randn(1, 2, 3, 3), 1), gradcheck=True, low_precision=False),
    ]
    return mark(samples, opcheck={"global-channels-last", "global-unbatched"})


# --------------------------------------------------------------------------- bad inputs


def _bad(op, name, args, error, match, **kwargs) -> BadInput:
    return BadInput(f"{op}-{name}", args, kwargs, error, rf"fusednn\.ops\.{op}: " + match)


def _pool_bad_inputs(op: str) -> list[BadInput]:
    x = torch.randn(2, 3, 7, 7)
    rank = r"non-empty 3D or 4D \(batch mode\) tensor expected" if op == "max_pool2d" else r"Expected 3D or 4D"
    return [
        _bad(op, "rank-2", (torch.randn(7, 7), 2), ValueError,
             rf"input must be 3-D \[C, H, W\] or 4-D \[N, C, H, W\]; got shape \(7, 7\) \[{rank}"),
        _bad(op, "rank-5", (torch.randn(1, 2, 3, 7, 7), 2), ValueError,
             r"input must be 3-D .*; got shape \(1, 2, 3, 7, 7\)"),
        _bad(op, "zero-channels", (torch.randn(2, 0, 7, 7), 2), ValueError,
             r"input must be non-empty in C, H and W .*; got shape \(2, 0, 7, 7\) \[Expected 3D or 4D"),
        _bad(op, "zero-width", (torch.randn(3, 7, 0), 2), ValueError, r"input must be non-empty in C, H and W"),
        _bad(op, "int64", (x.long(), 2), TypeError, r"input must be float16, bfloat16, float32 or float64; got int64"),
        _bad(op, "not-a-tensor", (x.numpy(), 2), TypeError, r"input must be a tensor; got a numpy.ndarray"),
        _bad(op, "padding-over-half", (x, 3), ValueError,
             r"padding must be at most half of kernel_size \(3, 3\); got \(2, 2\) "
             r"\[pad should be at most half of effective kernel size, but got pad=2, kernel_size=3 and dilation=1\]",
             padding=2),
        _bad(op, "padding-negative", (x, 3), ValueError, r"padding must be at least 0; got \(-1, -1\)", padding=-1),
        _bad(op, "stride-0", (x, 3), ValueError, r"stride must be at least 1; got \(0, 0\) \[stride should not be zero",
             stride=0),
        _bad(op, "kernel-0", (x, 0), ValueError,
             r"kernel_size must be at least 1; got \(0, 0\) \[kernel size should be greater than zero"),
        _bad(op, "kernel-3-items", (x, (1, 2, 3)), ValueError,
             rf"kernel_size must be an int or a tuple of one or two ints; got \(1, 2, 3\) \[{op}: kernel_size must "
             r"either be a single int"),
        _bad(op, "kernel-float", (x, 2.5), TypeError, r"kernel_size must be an int or a tuple of one or two ints; "
             r"got 2.5"),
        _bad(op, "output-too-small", (torch.randn(1, 3, 2, 2), 3), ValueError,
             r"input must be at least one window in size once padded .*; got shape \(1, 3, 2, 2\), an output of "
             r"0 x 0 \[Given input size: \(3x2x2\)\. Calculated output size: \(3x0x0\)\. Output size is too small\]"),
        _bad(op, "ceil-mode-int", (x, 2), TypeError, r"ceil_mode must be a bool; got 1", ceil_mode=1),
    ]


def max_pool2d_bad_inputs() -> list[BadInput]:
    op, x = "max_pool2d", torch.randn(2, 3, 7, 7)
    return _pool_bad_inputs(op) + [
        _bad(op, "dilation-0", (x, 3), ValueError, r"dilation must be at least 1; got \(0, 0\) \[dilation should be "
             r"greater than zero", dilation=0),
        # within half the dilated kernel (2 <= 5 // 2), beyond half the kernel (2 > 3 // 2)
        _bad(op, "padding-over-half-dilated", (x, 3), ValueError,
             r"padding must be at most half of kernel_size \(3, 3\); got \(2, 2\) \[pad should be smaller than or "
             r"equal to half of kernel size", padding=2, dilation=2),
        _bad(op, "return-indices-none", (x, 3), TypeError, r"return_indices must be a bool; got None",
             return_indices=None),
    ]


def avg_pool2d_bad_inputs() -> list[BadInput]:
    op, x = "avg_pool2d", torch.randn(2, 3, 7, 7)
    return _pool_bad_inputs(op) + [
        _bad(op, "divisor-0", (x, 3), ValueError,
             r"divisor_override must be a nonzero int or None; got 0 \[divisor must be not zero\]", divisor_override=0),
        _bad(op, "divisor-float", (x, 3), TypeError, r"divisor_override must be a nonzero int or None; got 2.0",
             divisor_override=2.0),
        _bad(op, "count-include-pad-none", (x, 3), TypeError, r"count_include_pad must be a bool; got None",
             count_include_pad=None),
    ]


def adaptive_avg_pool2d_bad_inputs() -> list[BadInput]:
    op, x = "adaptive_avg_pool2d", torch.randn(2, 3, 7, 7)
    return [
        _bad(op, "rank-2", (torch.randn(7, 7), 1), ValueError,
             r"input must be 3-D \[C, H, W\] or 4-D \[N, C, H, W\]; got shape \(7, 7\) "
             r"\[adaptive_avg_pool2d\(\): Expected 3D or 4D tensor, but got \[7, 7\]\]"),
        _bad(op, "rank-5", (torch.randn(1, 2, 3, 7, 7), 1), ValueError, r"input must be 3-D .*; got shape"),
        _bad(op, "zero-height", (torch.randn(2, 3, 0, 7), 1), ValueError,
             r"input must be non-empty in H and W; got shape \(2, 3, 0, 7\) .*with dimension 2 being empty"),
        _bad(op, "int32", (x.int(), 1), TypeError, r"input must be float16, bfloat16, float32 or float64; got int32"),
        _bad(op, "output-size-negative", (x, -1), ValueError,
             r"output_size must be at least 0; got -1 \[adaptive_avg_pool2d: elements of output_size must be "
             r"greater than or equal to 0 but received \{-1, -1\}\]"),
        _bad(op, "output-size-3-items", (x, (1, 2, 3)), ValueError,
             r"output_size must be an int or a pair of ints or None .*; got \(1, 2, 3\) "
             r"\[adaptive_avg_pool2d: output_size must be 2\]"),
        _bad(op, "output-size-one-item", (x, (1,)), ValueError, r"output_size must be .*; got \(1,\)"),
        _bad(op, "output-size-float", (x, 1.5), TypeError, r"output_size must be an int or a pair .*; got 1.5"),
        _bad(op, "output-size-string", (x, "1"), TypeError, r"output_size must be an int or a pair .*; got '1'"),
    ]
