"""Samples, bad inputs and benchmark shapes of ``depthwise_conv2d``.

The samples stay small for Triton's interpreter (H, W <= 13, at most 40 channels): the
31 x 31 filter runs on a 9 x 9 single-channel image padded by 15, every tap of its 961
still visited. Channel counts 1, 3, 5, 8, 16 and 40 take a channel block that is full (8,
16: EVEN_C) or partial (3, 5, and 40 over two blocks); 13 x 13 maps with 16 channels span
two spatial tiles.
"""

from __future__ import annotations

import torch

from fusednn.registry import BadInput, BenchShapes, Sample, View, mark

F64 = torch.float64

# ConvNeXt's 7 x 7 (biased, LayerNorm after) and RepLKNet's 31 x 31 (BatchNorm folded into
# scale and shift) depthwise convolutions at their stages' sizes; bfloat16 channels_last,
# float16 for two of them in the full run.
BENCH_SHAPES = BenchShapes(
    gpu=({"N": 32, "C": 128, "H": 56, "k": 7, "epilogue": "bias"},
         {"N": 32, "C": 512, "H": 14, "k": 7, "epilogue": "bias"},
         {"N": 32, "C": 128, "H": 56, "k": 31, "epilogue": "bn"},
         {"N": 64, "C": 512, "H": 14, "k": 31, "epilogue": "bn"},
         {"N": 64, "C": 1024, "H": 14, "k": 31, "epilogue": "bn"},
         {"N": 32, "C": 128, "H": 56, "k": 7, "epilogue": "bias", "dtype": "float16"},
         {"N": 64, "C": 512, "H": 14, "k": 31, "epilogue": "bn", "dtype": "float16"}),
    gpu_quick=({"N": 32, "C": 128, "H": 56, "k": 7, "epilogue": "bias"},
               {"N": 64, "C": 512, "H": 14, "k": 31, "epilogue": "bn"}),
    cpu=({"N": 2, "C": 32, "H": 14, "k": 7, "epilogue": "bias"},
         {"N": 2, "C": 32, "H": 14, "k": 13, "epilogue": "bn"}),
    cpu_quick=({"N": 2, "C": 16, "H": 14, "k": 7, "epilogue": "bias"},),
)


def _t(*shape, grad=True):
    return torch.randn(shape, dtype=F64).requires_grad_(grad)


def _channels_last(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous(memory_format=torch.channels_last)


def _nhwc(n, c, h, w, grad=True) -> View:
    """An [N, C, H, W] channels_last input (the kernels' fast layout)."""
    return View(_t(n, c, h, w, grad=grad), _channels_last)


def _weight(c, kh, kw=None, grad=True):
    return _t(c, 1, kh, kh if kw is None else kw, grad=grad)


def _epilogue(c, pieces, grad=True) -> dict:
    """Per-channel epilogue operands: scale ~ 1 + noise so that a dropped one shows."""
    out = {}
    for name in pieces:
        base = 1.0 if name == "scale" else 0.0
        out[name] = (base + 0.5 * torch.randn(c, dtype=F64)).requires_grad_(grad)
    return out


# Tiny samples run in float32/float64 only; the float16/bfloat16 grid takes the samples whose
# outputs have a few hundred elements or more (see Sample.low_precision): the per-channel
# gradients (bias, scale, shift: C elements) never qualify, so there they need no gradient.
_TINY = dict(low_precision=False)


def depthwise_conv2d_samples() -> list[Sample]:
    samples = [
        # float16 too: y and the input gradient >= 784 elements, the filter gradient >= 144
        Sample("k3-nchw-c16", (_t(1, 16, 7, 7), _weight(16, 3), _t(16, grad=False)), dict(padding=1)),
        Sample("k3-channels-last-c16", (_nhwc(1, 16, 13, 13), _weight(16, 3), _t(16, grad=False)), dict(padding=1)),
        Sample("k5-stride2-c16", (_nhwc(1, 16, 13, 13), _weight(16, 5)), dict(stride=2, padding=2)),
        Sample("k7-same", (_nhwc(1, 5, 9, 9), _weight(5, 7), _t(5, grad=False)), dict(padding="same")),
        Sample("k3-c40-two-channel-blocks-silu", (_nhwc(1, 40, 5, 5), _weight(40, 3)),
               dict(padding=1, **_epilogue(40, ["bias", "scale", "shift"], grad=False),
                    residual=View(_t(1, 40, 5, 5), _channels_last), activation="silu")),
        # kernel sizes and geometry
        Sample("k1-c3", (_nhwc(1, 3, 5, 5), _weight(3, 1), _t(3)), {}, **_TINY),
        # every one of the 961 taps, on a map smaller than the filter (the filter's gradients:
        # the input gradient runs the same loops as the forward)
        Sample("k31-pad15", (_t(1, 1, 9, 9, grad=False), _weight(1, 31), _t(1)), dict(padding=15), **_TINY),
        Sample("k3x5-dilation2", (_t(1, 3, 13, 11), _weight(3, 3, 5)), dict(padding=(2, 4), dilation=2), **_TINY),
        Sample("k3x5-stride-2x1-dilation-1x2", (_nhwc(1, 5, 9, 11), _weight(5, 3, 5), _t(5)),
               dict(stride=(2, 1), padding=(1, 3), dilation=(1, 2)), **_TINY),
        Sample("k4x2-same", (_nhwc(1, 3, 7, 7), _weight(3, 4, 2), _t(3)), dict(padding="same", dilation=(1, 2)),
               **_TINY),
        # a stride larger than the filter: some input pixels feed no output
        Sample("k2x3-stride3x2", (_nhwc(1, 5, 11, 13), _weight(5, 2, 3)), dict(stride=(3, 2), padding=(0, 1)),
               **_TINY),
        Sample("k3-valid", (_t(1, 5, 7, 13), _weight(5, 3), _t(5)), dict(padding="valid"), **_TINY),
        Sample("k3-hw1", (_t(2, 5, 1, 1), _weight(5, 3), _t(5)), dict(padding=1), **_TINY),
        Sample("unbatched", (_t(5, 7, 7), _weight(5, 3), _t(5)), dict(padding=1, residual=_t(5, 7, 7)), **_TINY),
        Sample("zero-batch", (_t(0, 5, 7, 7), _weight(5, 3), _t(5)), dict(padding=1), **_TINY),
        # non-contiguous inputs: a channel slice of a channels_last tensor, every other row
        Sample("view-channel-slice", (View(_t(2, 7, 7, 9), lambda t: t.permute(0, 3, 1, 2)[:, 2:7]),
                                      _weight(5, 3), _t(5)), dict(padding=1), **_TINY),
        Sample("view-strided-rows", (View(_t(1, 5, 14, 7), lambda t: t[:, :, ::2]),
                                     View(_t(5, 1, 3, 6), lambda t: t[..., ::2])), dict(padding=1), **_TINY),
        # the epilogue, piece by piece and whole with each activation
        Sample("epilogue-scale", (_nhwc(1, 5, 7, 7), _weight(5, 3)), dict(padding=1, **_epilogue(5, ["scale"])),
               **_TINY),
        # bias and shift without a scale: both gradients are the same column sums
        Sample("epilogue-bias-shift", (_t(1, 5, 7, 7), _weight(5, 3), _t(5)),
               dict(padding=1, **_epilogue(5, ["shift"])), **_TINY),
        Sample("epilogue-residual", (_nhwc(1, 5, 7, 7), _weight(5, 3)), dict(padding=1, residual=_t(1, 5, 7, 7)),
               **_TINY),
        Sample("epilogue-scale-no-grad", (_nhwc(1, 5, 7, 7), _weight(5, 3), _t(5)),
               dict(padding=1, **_epilogue(5, ["scale", "shift"], grad=False)), **_TINY),
    ]
    for activation, layout in (("relu", _nhwc), ("gelu", _t), ("gelu_tanh", _nhwc), ("silu", _nhwc)):
        residual = View(_t(1, 8, 5, 5), _channels_last) if layout is _nhwc else _t(1, 8, 5, 5)
        samples.append(Sample(f"epilogue-all-{activation}", (layout(1, 8, 5, 5), _weight(8, 3)),
                              dict(padding=1, **_epilogue(8, ["bias", "scale", "shift"]), residual=residual,
                                   activation=activation), **_TINY))
    samples += [
        Sample("activation-no-grad", (_nhwc(1, 5, 7, 7, grad=False), _weight(5, 3, grad=False), _t(5, grad=False)),
               dict(padding=1, activation="silu"), **_TINY),
        # only some inputs need a gradient
        Sample("only-input-grad", (_nhwc(1, 5, 7, 7), _weight(5, 3, grad=False), _t(5, grad=False)),
               dict(padding=1, activation="gelu"), **_TINY),
        Sample("only-weight-grad", (_nhwc(2, 5, 7, 7, grad=False), _weight(5, 3), _t(5, grad=False)),
               dict(stride=2, padding=1), **_TINY),
        Sample("only-epilogue-grads", (_nhwc(1, 5, 7, 7, grad=False), _weight(5, 3, grad=False)),
               dict(padding=1, **_epilogue(5, ["bias", "scale", "shift"]), residual=_t(1, 5, 7, 7),
                    activation="relu"), **_TINY),
        Sample("gradcheck", (_t(1, 2, 4, 4), _weight(2, 3)),
               dict(padding=1, **_epilogue(2, ["bias", "scale", "shift"]), residual=_t(1, 2, 4, 4),
                    activation="silu"), **_TINY),
    ]
    return mark(samples, opcheck={"gradcheck", "k1-c3", "only-weight-grad"}, gradcheck={"gradcheck"})


def depthwise_conv2d_bad_inputs() -> list[BadInput]:
    x, w = torch.randn(2, 5, 7, 7), torch.randn(5, 1, 3, 3)
    b = torch.randn(5)

    def bad(name, args, error, match, **kwargs):
        return BadInput(name, args, kwargs, error, r"fusednn\.ops\.depthwise_conv2d: " + match)

    return [
        bad("input-2d", (torch.randn(5, 7), w), ValueError, r"input must be 3-D or 4-D .*; got shape \(5, 7\)"),
        bad("input-int", (x.long(), w), TypeError, r"input must be float16, bfloat16, float32 or float64; got int64"),
        bad("input-list", ([1.0], w), TypeError, r"input must be a tensor"),
        bad("input-no-channels", (torch.randn(2, 0, 7, 7), torch.randn(0, 1, 3, 3)), ValueError,
            r"input must be of at least one channel; got shape \(2, 0, 7, 7\)"),
        bad("weight-3d", (x, torch.randn(5, 3, 3)), ValueError, r"weight must be 4-D \[C, 1, kh, kw\]"),
        bad("weight-dtype", (x, w.double()), TypeError, r"weight must be of input's dtype float32; got float64"),
        bad("weight-device", (x, w.to("meta")), ValueError, r"weight must be on input's device cpu; got meta"),
        bad("weight-channels", (x, torch.randn(4, 1, 3, 3)), ValueError,
            r"weight must be \[C, 1, kh, kw\] with C = 5 .*; got shape \(4, 1, 3, 3\)"),
        bad("weight-per-group", (x, torch.randn(5, 2, 3, 3)), ValueError,
            r"weight must be \[C, 1, kh, kw\] .*; got shape \(5, 2, 3, 3\)"),
        bad("weight-empty-kernel", (x, torch.randn(5, 1, 0, 3)), ValueError, r"weight must be .*kh, kw >= 1"),
        bad("channel-multiplier", (x, torch.randn(10, 1, 3, 3)), NotImplementedError,
            r"a channel multiplier of 2 .*fusednn\.ops\.conv2d\(input, weight, groups=5\)"),
        bad("stride-0", (x, w), ValueError, r"stride must be at least 1; got 0", stride=0),
        bad("stride-float", (x, w), TypeError, r"stride must be an int or a pair of ints; got 1.5", stride=1.5),
        bad("dilation-0", (x, w), ValueError, r"dilation must be at least 1; got \(1, 0\)", dilation=(1, 0)),
        bad("padding-negative", (x, w), ValueError, r"padding must be at least 0; got -1", padding=-1),
        bad("padding-same-strided", (x, w), ValueError,
            r"padding must be .*stride other than 1; got 'same'.*not supported for strided", padding="same", stride=2),
        bad("padding-unknown", (x, w), ValueError, r"padding must be an int, a pair of ints, 'same' or 'valid'; "
            r"got 'full'", padding="full"),
        bad("kernel-larger-than-input", (torch.randn(1, 5, 2, 2), w), ValueError,
            r"input must be at least the dilated kernel's size \(3 x 3\) once padded; got a padded size of \(2 x 2\)"),
        bad("bias-shape", (x, w, torch.randn(4)), ValueError, r"bias must be \[C_out\] = \[5\]; got shape \(4,\)"),
        bad("bias-device", (x, w, b.to("meta")), ValueError, r"bias must be on input's device cpu; got meta"),
        bad("scale-int", (x, w), TypeError, r"scale must be float16, bfloat16, float32 or float64; got int64",
            scale=b.long()),
        bad("shift-2d", (x, w), ValueError, r"shift must be 1-D \[C_out\]; got shape \(1, 5\)", shift=b[None]),
        bad("residual-shape", (x, w), ValueError, r"residual must be of the output's shape \[2, 5, 5, 5\]; "
            r"got shape \(2, 5, 7, 7\)", residual=x),
        bad("residual-dtype", (x, w), TypeError, r"residual must be of input's dtype float32; got float16",
            residual=torch.randn(2, 5, 5, 5).half()),
        bad("activation-unknown", (x, w), ValueError, r"activation must be one of None, 'relu', .*; got 'tanh'",
            activation="tanh"),
    ]
