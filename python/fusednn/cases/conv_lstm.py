"""Samples, bad inputs and benchmark shapes of ``conv_lstm``."""

from __future__ import annotations

import torch

from fusednn.registry import BadInput, BenchShapes, Sample, View, mark

F64 = torch.float64

# Parameters of bench/conv_lstm.py: batch, steps, input and hidden channels, frame size, kernel.
BENCH_SHAPES = BenchShapes(
    gpu=({"B": 16, "T": 16, "C": 64, "Hc": 64, "H": 64, "W": 64, "k": 3},
         {"B": 8, "T": 16, "C": 128, "Hc": 128, "H": 32, "W": 32, "k": 3},
         {"B": 16, "T": 10, "C": 32, "Hc": 64, "H": 64, "W": 64, "k": 5}),
    gpu_quick=({"B": 16, "T": 16, "C": 64, "Hc": 64, "H": 64, "W": 64, "k": 3},),
    cpu=({"B": 4, "T": 16, "C": 64, "Hc": 64, "H": 32, "W": 32, "k": 3},),
    cpu_quick=({"B": 2, "T": 8, "C": 32, "Hc": 32, "H": 16, "W": 16, "k": 3},),
)


def _pair(k) -> tuple[int, int]:
    return (k, k) if isinstance(k, int) else tuple(k)


def conv_lstm_tensors(T, B, C, Hc, H, W, kernel=3, hidden_kernel=None, bias=True, grad=True):
    """float64 inputs of one layer: x, h0, c0, w_ih, w_hh, b_ih, b_hh (None where absent).
    Weights ~ fan_in^-0.5, so the gates' pre-activations are ~1 and stay away from saturation."""
    kh, kw = _pair(kernel)
    hh, hw = _pair(hidden_kernel if hidden_kernel is not None else kernel)

    def t(*shape, scale=1.0):
        return (scale * torch.randn(shape, dtype=F64)).requires_grad_(grad)

    b_ih, b_hh = (t(4 * Hc, scale=0.5), t(4 * Hc, scale=0.5)) if bias else (None, None)
    return dict(x=t(T, B, C, H, W), h0=t(B, Hc, H, W), c0=t(B, Hc, H, W),
                w_ih=t(4 * Hc, C, kh, kw, scale=(C * kh * kw) ** -0.5),
                w_hh=t(4 * Hc, Hc, hh, hw, scale=(Hc * hh * hw) ** -0.5), b_ih=b_ih, b_hh=b_hh)


def _sample(name, T, B, C, Hc, H, W, kernel=3, *, hidden_kernel=None, bias=True, with_state=True, x_layout=None,
            no_grad=(), **options):
    """A Sample of conv_lstm; ``x_layout`` = (stored shape order, view) gives x as a
    non-contiguous view; ``no_grad`` names inputs that do not require grad."""
    t = conv_lstm_tensors(T, B, C, Hc, H, W, kernel, hidden_kernel, bias)
    for key in no_grad:
        t[key] = t[key].detach()
    x = t["x"]
    if x_layout is not None:
        order, view = x_layout
        x = View(x.detach().permute(order).contiguous().requires_grad_(x.requires_grad), view)
    hx = (t["h0"], t["c0"]) if with_state else None
    return Sample(name, (x, hx, t["w_ih"], t["w_hh"], t["b_ih"], t["b_hh"]), **options)


# x stored as [T, B, H, W, C] (channels-last frames) or [B, T, C, H, W] (batch-major).
CHANNELS_LAST = ((0, 1, 3, 4, 2), lambda s: s.permute(0, 1, 4, 2, 3))
BATCH_MAJOR = ((1, 0, 2, 3, 4), lambda s: s.transpose(0, 1))

# Tiny samples run in float32/float64 only; the float16/bfloat16 grid takes samples with
# about a thousand elements per output or more (see Sample.low_precision).
_TINY = dict(low_precision=False)


def conv_lstm_samples() -> list[Sample]:
    samples = [
        _sample("large-7x9", 4, 2, 3, 16, 7, 9),
        _sample("large-k5-default-state", 3, 2, 4, 8, 11, 11, kernel=5, with_state=False),
        _sample("large-k1-no-bias", 5, 3, 6, 8, 5, 7, kernel=1, bias=False),
        _sample("large-channels-last-x", 3, 2, 5, 8, 9, 7, x_layout=CHANNELS_LAST),
        _sample("T1-B1-1x1", 1, 1, 1, 1, 1, 1, **_TINY),
        _sample("T6-5x3", 6, 3, 2, 3, 5, 3, **_TINY),
        _sample("kernel-3x5-hidden-1x3", 3, 2, 2, 3, 6, 5, kernel=(3, 5), hidden_kernel=(1, 3), **_TINY),
        _sample("channels-last-x", 4, 2, 3, 4, 5, 7, x_layout=CHANNELS_LAST, **_TINY),
        _sample("batch-major-x", 4, 3, 2, 3, 4, 5, x_layout=BATCH_MAJOR, **_TINY),
        _sample("default-state-no-bias", 3, 2, 2, 3, 4, 4, bias=False, with_state=False, **_TINY),
        # only some inputs need a gradient: the backward leaves out what is not asked for
        _sample("x-grad-only", 3, 2, 2, 3, 5, 4, no_grad=("h0", "c0", "w_ih", "w_hh", "b_ih", "b_hh"), **_TINY),
        _sample("weight-grads-only", 3, 2, 2, 3, 5, 4, no_grad=("x", "h0", "c0"), **_TINY),
        _sample("zero-batch", 3, 0, 2, 3, 5, 4, **_TINY),
        _sample("gradcheck", 2, 1, 1, 1, 3, 3, kernel=(3, 1), hidden_kernel=(1, 3), gradcheck=True, **_TINY),
    ]
    # one bias only, and a strided weight view (every other output channel of a wider one)
    t = conv_lstm_tensors(3, 2, 2, 3, 4, 5)
    wide = View(torch.randn(24, 3, 3, 3, dtype=F64).requires_grad_(), lambda w: w[::2])
    samples.append(Sample("b_ih-only-strided-w_hh", (t["x"], (t["h0"], t["c0"]), t["w_ih"], wide, t["b_ih"], None),
                          **_TINY))
    return mark(samples, opcheck={"channels-last-x", "weight-grads-only"})


def _bad_args(**changes):
    """Arguments of fusednn.ops.conv_lstm (float32, T=3, B=2, C=3, Hc=4, 5x6, 3x3) with some replaced."""
    t = {k: (v.detach().float() if v is not None else None) for k, v in conv_lstm_tensors(3, 2, 3, 4, 5, 6).items()}
    args = {"x": t["x"], "hx": (t["h0"], t["c0"]), "w_ih": t["w_ih"], "w_hh": t["w_hh"], "b_ih": t["b_ih"],
            "b_hh": t["b_hh"]}
    for key, value in changes.items():
        args[key] = value(args) if callable(value) else value
    return args


def conv_lstm_bad_inputs() -> list[BadInput]:
    state = r"\[B, Hc, H, W\] = \(2, 4, 5, 6\)"
    cases = {
        "x-rank": (dict(x=lambda a: a["x"][0]), ValueError,
                   r"x must be 5-D \[T, B, C, H, W\]; got shape \(2, 3, 5, 6\)"),
        "x-integer": (dict(x=lambda a: a["x"].long()), TypeError, r"x must be float16, .*; got int64"),
        "x-numpy": (dict(x=lambda a: a["x"].numpy()), TypeError,
                    r"x must be a tensor \[T, B, C, H, W\]; got a numpy.ndarray"),
        "x-no-steps": (dict(x=lambda a: a["x"][:0]), ValueError, r"x must be .*T >= 1.*; got shape \(0, 2, 3, 5, 6\)"),
        "x-channels": (dict(x=lambda a: torch.randn(3, 2, 5, 5, 6)), ValueError,
                       r"x must be \[T, B, C, H, W\] with C = 3 \(w_ih is \[4Hc, C, kh, kw\] = \(16, 3, 3, 3\)\); "
                       r"got shape \(3, 2, 5, 5, 6\)"),
        "w_ih-rank": (dict(w_ih=lambda a: a["w_ih"][..., 0, 0]), ValueError,
                      r"w_ih must be 4-D \[4Hc, C, kh, kw\]; got shape \(16, 3\)"),
        "w_ih-rows": (dict(w_ih=lambda a: a["w_ih"][:15]), ValueError,
                      r"w_ih must be \[4Hc, C, kh, kw\] with Hc >= 1; got shape \(15, 3, 3, 3\)"),
        "w_ih-even-kernel": (dict(w_ih=lambda a: a["w_ih"][:, :, :2]), ValueError,
                             r"w_ih must be \[4Hc, C, kh, kw\] with odd kh and kw .*; got shape \(16, 3, 2, 3\)"),
        "w_hh-even-kernel": (dict(w_hh=lambda a: torch.randn(16, 4, 3, 4)), ValueError,
                             r"w_hh must be \[4Hc, Hc, kh, kw\] with odd kh and kw .*; got shape \(16, 4, 3, 4\)"),
        "w_hh-shape": (dict(w_hh=lambda a: a["w_hh"][:, :3]), ValueError,
                       r"w_hh must be \[4Hc, Hc, kh, kw\] with Hc = 4 \(w_ih is \[4Hc, C, kh, kw\] = "
                       r"\(16, 3, 3, 3\)\); got shape \(16, 3, 3, 3\)"),
        "w_hh-dtype": (dict(w_hh=lambda a: a["w_hh"].double()), TypeError,
                       r"w_hh must be of x's dtype float32; got float64"),
        "b_ih-shape": (dict(b_ih=lambda a: a["b_ih"][:5]), ValueError,
                       r"b_ih must be \[4Hc\] = \(16,\); got shape \(5,\)"),
        "b_hh-rank": (dict(b_hh=lambda a: a["b_hh"][None]), ValueError,
                      r"b_hh must be 1-D \[4Hc\]; got shape \(1, 16\)"),
        "b_ih-integer": (dict(b_ih=lambda a: a["b_ih"].long()), TypeError,
                         r"b_ih must be of x's dtype float32; got int64"),
        "h0-shape": (dict(hx=lambda a: (a["hx"][0][..., :4], a["hx"][1])), ValueError,
                     r"h0 must be " + state + r"; got shape \(2, 4, 5, 4\)"),
        "c0-shape": (dict(hx=lambda a: (a["hx"][0], a["hx"][1][:1])), ValueError,
                     r"c0 must be " + state + r"; got shape \(1, 4, 5, 6\)"),
        "c0-dtype": (dict(hx=lambda a: (a["hx"][0], a["hx"][1].half())), TypeError,
                     r"c0 must be of x's dtype float32; got float16"),
        "hx-not-a-pair": (dict(hx=lambda a: a["hx"][0]), TypeError,
                          r"hx must be a pair \(h0, c0\) of tensors or None; got a tensor"),
        "w_ih-device": (dict(w_ih=lambda a: a["w_ih"].to("meta")), ValueError,
                        r"w_ih must be on x's device cpu; got meta"),
        "h0-device": (dict(hx=lambda a: (a["hx"][0].to("meta"), a["hx"][1])), ValueError,
                      r"h0 must be on x's device cpu; got meta"),
    }
    return [BadInput(name, (), _bad_args(**changes), error, r"fusednn\.ops\.conv_lstm: " + match)
            for name, (changes, error, match) in cases.items()]
