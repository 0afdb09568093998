"""Samples, bad inputs and benchmark shapes of ``causal_conv1d`` and ``causal_conv1d_update``."""

from __future__ import annotations

import torch

from fusednn.registry import BadInput, BenchShapes, Sample, View, mark

F64 = torch.float64

# Parameters of bench/causal_conv1d.py: batch, channels, length, kernel width (x is a
# [B, L, D] tensor seen as [B, D, L], silu and a bias, as a Mamba block runs it).
BENCH_SHAPES = BenchShapes(
    gpu=({"B": 4, "D": 2048, "L": 2048, "W": 4}, {"B": 4, "D": 4096, "L": 2048, "W": 4}),
    gpu_quick=({"B": 4, "D": 4096, "L": 2048, "W": 4},),
    cpu=({"B": 2, "D": 256, "L": 256, "W": 4},),
    cpu_quick=({"B": 2, "D": 64, "L": 128, "W": 4},),
)

# Tiny samples run in float32/float64 only; the float16/bfloat16 grid takes the samples with
# about a thousand elements per output (see Sample.low_precision).
_TINY = dict(low_precision=False)


def _randn(*shape, grad=True, scale=1.0):
    return (scale * torch.randn(shape, dtype=F64)).requires_grad_(grad)


def _conv_sample(name, B, D, L, W, *, bias=True, activation=None, state=False, final=False, layout="BDL",
                 no_grad=(), **options) -> Sample:
    """A causal_conv1d Sample. ``layout``: "BDL" (contiguous x), "BLD" (a [B, L, D] tensor
    transposed, channels contiguous) or "strided" (every other position of a longer
    sequence, with a [W, D] weight transposed and a [B, W-1, D] initial state transposed).
    ``no_grad`` names the inputs that do not require grad. Weights ~ 1/sqrt(W)."""
    grads = {n: n not in no_grad for n in ("x", "weight", "bias", "initial_state")}
    if layout == "BLD":
        x = View(_randn(B, L, D, grad=grads["x"]), lambda t: t.transpose(1, 2))
    elif layout == "strided":
        x = View(_randn(B, D, 2 * L, grad=grads["x"]), lambda t: t[..., ::2])
    else:
        x = _randn(B, D, L, grad=grads["x"])
    if layout == "strided":
        weight = View(_randn(W, D, grad=grads["weight"], scale=W**-0.5), lambda t: t.t())
    else:
        weight = _randn(D, W, grad=grads["weight"], scale=W**-0.5)
    kwargs = dict(activation=activation, return_final_state=final)
    if state:
        kwargs["initial_state"] = (View(_randn(B, W - 1, D, grad=grads["initial_state"]), lambda t: t.transpose(1, 2))
                                   if layout == "strided" else _randn(B, D, W - 1, grad=grads["initial_state"]))
    args = (x, weight, _randn(D, grad=grads["bias"], scale=0.5) if bias else None)
    return Sample(name, args, kwargs, **options)


def causal_conv1d_samples() -> list[Sample]:
    samples = [
        # the float16/bfloat16 grid too; L = 33 spans two time blocks of the interpreter's tile
        _conv_sample("B2-D16-L33-W4-silu", 2, 16, 33, 4, activation="silu"),
        _conv_sample("B1-D16-L33-W8-states", 1, 16, 33, 8, state=True, final=True),
        _conv_sample("B2-D16-L31-W3-BLD-silu-states", 2, 16, 31, 3, activation="silu", state=True, final=True,
                     layout="BLD"),
        _conv_sample("B1-D64-L17-W4-BLD-silu", 1, 64, 17, 4, activation="silu", layout="BLD"),
        _conv_sample("B2-D16-L33-W2-no-bias", 2, 16, 33, 2, bias=False),
        _conv_sample("B2-D16-L17-W5-strided-states", 2, 16, 17, 5, state=True, final=True, layout="strided"),
        # odd sizes, sequences shorter than the window, every width's corner
        _conv_sample("B1-D5-L7-W3", 1, 5, 7, 3, **_TINY),
        _conv_sample("B2-D5-L17-W6-final", 2, 5, 17, 6, bias=False, final=True, **_TINY),
        _conv_sample("B1-D1-L1-W4-states", 1, 1, 1, 4, state=True, final=True, **_TINY),
        _conv_sample("B1-D5-L2-W8-silu-states", 1, 5, 2, 8, activation="silu", state=True, final=True, **_TINY),
        _conv_sample("B1-D16-L7-W7-final-no-state", 1, 16, 7, 7, final=True, **_TINY),
        _conv_sample("B2-D5-L9-W4-strided-silu", 2, 5, 9, 4, activation="silu", layout="strided", **_TINY),
        # only some inputs need a gradient: the backward leaves out what is not asked for
        _conv_sample("x-grad-only", 1, 5, 17, 4, activation="silu", state=True, final=True,
                     no_grad=("weight", "bias", "initial_state"), **_TINY),
        _conv_sample("weight-and-bias-grads-only", 2, 5, 17, 4, activation="silu", state=True,
                     no_grad=("x", "initial_state"), **_TINY),
        _conv_sample("state-grad-only", 2, 5, 3, 5, state=True, final=True, no_grad=("x", "weight", "bias"),
                     **_TINY),
        # zero-size: L = 0 gives an empty y, and final_state is initial_state (or zeros)
        _conv_sample("L0-states", 2, 5, 0, 4, activation="silu", state=True, final=True, **_TINY),
        _conv_sample("L0-final-no-state", 2, 5, 0, 3, final=True, **_TINY),
        _conv_sample("B0", 0, 5, 7, 4, activation="silu", state=True, final=True, **_TINY),
        _conv_sample("gradcheck", 1, 3, 5, 3, activation="silu", state=True, final=True, **_TINY),
    ]
    return mark(samples, opcheck={"B2-D16-L33-W2-no-bias", "x-grad-only",
                                  "weight-and-bias-grads-only", "L0-states"},
                gradcheck={"gradcheck"})


def _fresh_state(layout):
    """conv_state as ``layout`` of a copy made on each call: the op updates it in place, and
    the harness runs the op, its reference and the low-precision baseline on one sample."""
    return lambda t: layout(t.clone())


def _update_sample(name, B, D, W, *, bias=True, activation=None, strided=False, grad=False, **options) -> Sample:
    """A causal_conv1d_update Sample. ``strided``: x_t a column of a [B, D, 3] tensor and
    conv_state a [B, W-1, D] tensor transposed. ``grad``: the inputs require grad."""
    if strided:
        x_t = View(_randn(B, D, 3, grad=grad), lambda t: t[..., 1])
        state = View(_randn(B, W - 1, D, grad=grad), _fresh_state(lambda t: t.transpose(1, 2)))
    else:
        x_t = _randn(B, D, grad=grad)
        state = View(_randn(B, D, W - 1, grad=grad), _fresh_state(lambda t: t))
    weight = _randn(D, W, grad=grad, scale=W**-0.5)
    return Sample(name, (x_t, state, weight, _randn(D, grad=grad, scale=0.5) if bias else None, activation),
                  **options)


def causal_conv1d_update_samples() -> list[Sample]:
    samples = [
        _update_sample("B16-D64-W4-silu", 16, 64, 4, activation="silu"),
        _update_sample("B16-D64-W8-strided", 16, 64, 8, bias=False, strided=True),
        _update_sample("B2-D5-W2", 2, 5, 2, bias=False, **_TINY),
        _update_sample("B1-D16-W3-silu-strided", 1, 16, 3, activation="silu", strided=True, **_TINY),
        _update_sample("B2-D1-W6", 2, 1, 6, **_TINY),
        _update_sample("B0", 0, 5, 4, activation="silu", **_TINY),
        # gradients come from the reference
        _update_sample("gradcheck", 2, 3, 4, activation="silu", grad=True, **_TINY),
    ]
    return mark(samples, opcheck={"B2-D5-W2", "B1-D16-W3-silu-strided"}, gradcheck={"gradcheck"})


# --------------------------------------------------------------------------- bad inputs


def _bad(op: str, cases) -> list[BadInput]:
    return [BadInput(f"{op}-{name}", args, kwargs, error, rf"fusednn\.ops\.{op}: " + match)
            for name, args, kwargs, error, match in cases]


def causal_conv1d_bad_inputs() -> list[BadInput]:
    x, w, b, s = torch.randn(2, 5, 7), torch.randn(5, 4), torch.randn(5), torch.randn(2, 5, 3)
    return _bad("causal_conv1d", [
        ("x-2d", (torch.randn(5, 7), w), {}, ValueError, r"x must be 3-D \[B, D, L\]; got shape \(5, 7\)"),
        ("x-4d", (torch.randn(2, 5, 7, 1), w), {}, ValueError, r"x must be 3-D \[B, D, L\]; got shape"),
        ("x-no-channels", (torch.randn(2, 0, 7), torch.randn(0, 4)), {}, ValueError,
         r"x must be \[B, D, L\] with at least one channel \(D >= 1\); got shape \(2, 0, 7\)"),
        ("x-int64", (x.long(), w), {}, TypeError, r"x must be float16, bfloat16, float32 or float64; got int64"),
        ("x-list", ([[1.0]], w), {}, TypeError, r"x must be a tensor \[B, D, L\]; got a list of 1 items"),
        ("weight-3d", (x, w.unsqueeze(1)), {}, ValueError, r"weight must be 2-D \[D, W\]; got shape \(5, 1, 4\)"),
        ("weight-channels", (x, torch.randn(4, 4)), {}, ValueError,
         r"weight must be \[D, W\] with D = 5 \(x's channels\); got shape \(4, 4\)"),
        ("weight-width-1", (x, torch.randn(5, 1)), {}, ValueError,
         r"weight must be \[D, W\] with the kernel width W in \[2, 8\]; got shape \(5, 1\)"),
        ("weight-width-9", (x, torch.randn(5, 9)), {}, ValueError,
         r"weight must be \[D, W\] with the kernel width W in \[2, 8\]; got shape \(5, 9\)"),
        ("weight-int", (x, w.int()), {}, TypeError, r"weight must be of x's dtype float32; got int32"),
        ("weight-float64", (x, w.double()), {}, TypeError, r"weight must be of x's dtype float32; got float64"),
        ("weight-device", (x, w.to("meta")), {}, ValueError, r"weight must be on x's device cpu; got meta"),
        ("bias-shape", (x, w, torch.randn(4)), {}, ValueError, r"bias must be \[D\] = \(5,\); got shape \(4,\)"),
        ("bias-2d", (x, w, b[None]), {}, ValueError, r"bias must be \[D\] = \(5,\); got shape \(1, 5\)"),
        ("bias-device", (x, w, b.to("meta")), {}, ValueError, r"bias must be on x's device cpu; got meta"),
        ("state-shape", (x, w, b), dict(initial_state=torch.randn(2, 5, 4)), ValueError,
         r"initial_state must be \[B, D, W-1\] = \(2, 5, 3\); got shape \(2, 5, 4\)"),
        ("state-batch", (x, w, b), dict(initial_state=torch.randn(1, 5, 3)), ValueError,
         r"initial_state must be \[B, D, W-1\] = \(2, 5, 3\); got shape \(1, 5, 3\)"),
        ("state-2d", (x, w, b), dict(initial_state=torch.randn(5, 3)), ValueError,
         r"initial_state must be 3-D \[B, D, W-1\]; got shape \(5, 3\)"),
        ("state-dtype", (x, w, b), dict(initial_state=s.half()), TypeError,
         r"initial_state must be of x's dtype float32; got float16"),
        ("state-device", (x, w, b), dict(initial_state=s.to("meta")), ValueError,
         r"initial_state must be on x's device cpu; got meta"),
        ("activation-relu", (x, w, b), dict(activation="relu"), ValueError,
         r"activation must be one of None, 'silu'; got 'relu'"),
        ("activation-unknown", (x, w, b), dict(activation="swish"), ValueError,
         r"activation must be one of None, 'silu'; got 'swish'"),
        ("return-final-state-int", (x, w, b), dict(return_final_state=1), TypeError,
         r"return_final_state must be a bool; got 1"),
    ])


def causal_conv1d_update_bad_inputs() -> list[BadInput]:
    x, s, w, b = torch.randn(2, 5), torch.randn(2, 5, 3), torch.randn(5, 4), torch.randn(5)
    return _bad("causal_conv1d_update", [
        ("x-3d", (s, s, w), {}, ValueError, r"x_t must be 2-D \[B, D\]; got shape \(2, 5, 3\)"),
        ("x-int", (x.int(), s, w), {}, TypeError, r"x_t must be float16, bfloat16, float32 or float64; got int32"),
        ("state-shape", (x, torch.randn(2, 5, 4), w), {}, ValueError,
         r"conv_state must be \[B, D, W-1\] = \(2, 5, 3\); got shape \(2, 5, 4\)"),
        ("state-2d", (x, torch.randn(2, 5), w), {}, ValueError, r"conv_state must be 3-D \[B, D, W-1\]"),
        ("state-dtype", (x, s.double(), w), {}, TypeError, r"conv_state must be of x_t's dtype float32; got float64"),
        ("state-device", (x, s.to("meta"), w), {}, ValueError, r"conv_state must be on x_t's device cpu; got meta"),
        ("state-overlapping", (x, torch.randn(1, 5, 3).expand(2, 5, 3), w), {}, ValueError,
         r"conv_state must be a tensor whose elements do not overlap \(it is updated in place\); got strides"),
        ("weight-channels", (x, s, torch.randn(6, 4)), {}, ValueError,
         r"weight must be \[D, W\] with D = 5 \(x_t's channels\); got shape \(6, 4\)"),
        ("weight-width", (x, torch.randn(2, 5, 8), torch.randn(5, 9)), {}, ValueError,
         r"weight must be \[D, W\] with the kernel width W in \[2, 8\]; got shape \(5, 9\)"),
        ("weight-device", (x, s, w.to("meta")), {}, ValueError, r"weight must be on x_t's device cpu; got meta"),
        ("bias-shape", (x, s, w, torch.randn(5, 1)), {}, ValueError,
         r"bias must be \[D\] = \(5,\); got shape \(5, 1\)"),
        ("activation-relu", (x, s, w, b, "relu"), {}, ValueError,
         r"activation must be one of None, 'silu'; got 'relu'"),
    ])
