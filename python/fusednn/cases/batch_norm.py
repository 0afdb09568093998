"""Samples, bad inputs and benchmark shapes of ``batch_norm`` (with the fused residual add
and activation).

Every sample draws its own running statistics, so the in-place update of one call never
reaches another; the harness casts them with the other floating inputs (they do not
require grad, so no gradient is compared for them). What the update writes is checked by
tests/ops/test_batch_norm.py.

Sample values lie on the bfloat16 grid, so every dtype under test holds them exactly:
the float16/bfloat16 runs then normalise the same numbers as the float64 truth, and
relu's kink sees the same pre-activation (an input rounded across it would flip an
element of the mask, an error no tolerance rule can tell from a bug).
"""

from __future__ import annotations

import torch

from fusednn.registry import BadInput, BenchShapes, Sample, View, mark

F64 = torch.float64

# Parameters of bench/batch_norm.py: input [N, C, H, W] (bfloat16, channels_last on a GPU),
# training with relu, with or without a residual.
BENCH_SHAPES = BenchShapes(
    gpu=({"N": 128, "C": 256, "H": 56, "W": 56, "residual": False},
         {"N": 128, "C": 256, "H": 56, "W": 56, "residual": True},
         {"N": 128, "C": 1024, "H": 14, "W": 14, "residual": False},
         {"N": 128, "C": 1024, "H": 14, "W": 14, "residual": True}),
    gpu_quick=({"N": 32, "C": 256, "H": 56, "W": 56, "residual": True},
               {"N": 128, "C": 1024, "H": 14, "W": 14, "residual": True}),
    cpu=({"N": 8, "C": 64, "H": 28, "W": 28, "residual": True},
         {"N": 8, "C": 256, "H": 14, "W": 14, "residual": False}),
    cpu_quick=({"N": 4, "C": 64, "H": 14, "W": 14, "residual": True},),
)

# Layouts of a [N, C, H, W] input, as (base shape, view): the harness casts the base and
# applies the view, so the op sees the view's strides.
_LAYOUTS = {
    "nchw": (lambda n, c, h, w: (n, c, h, w), None),
    "channels_last": (lambda n, c, h, w: (n, h, w, c), lambda t: t.permute(0, 3, 1, 2)),
    # every other column: spatial dims still one run of pixels (at stride 2)
    "strided": (lambda n, c, h, w: (n, c, h, 2 * w), lambda t: t[..., ::2]),
    # H and W swapped: the spatial dims are no single run (the op copies)
    "transposed": (lambda n, c, h, w: (n, c, w, h), lambda t: t.transpose(2, 3)),
}


def _on_grid(t):
    """t rounded to the bfloat16 grid (exact in float16, bfloat16, float32), as float64."""
    return t.to(torch.bfloat16).to(F64)


def _tensor(shape, layout="nchw", grad=True):
    base_shape, view = _LAYOUTS[layout]
    base = _on_grid(torch.randn(base_shape(*shape) if len(shape) == 4 else shape, dtype=F64)).requires_grad_(grad)
    return base if view is None else View(base, view)


def _running(channels):
    """Running statistics away from (0, 1), so a kernel that ignores them shows."""
    return _on_grid(0.5 * torch.randn(channels, dtype=F64)), _on_grid(0.5 + torch.rand(channels, dtype=F64))


def _params(channels, names=("weight", "bias"), grad=True):
    """weight ~ 1 + noise, bias ~ noise: away from the identity, so a dropped one shows."""
    return {name: _on_grid((1.0 if name == "weight" else 0.0) + 0.5 * torch.randn(channels, dtype=F64))
            .requires_grad_(grad) for name in names}


def _sample(name, shape, *, training, layout="nchw", params=("weight", "bias"), residual=None, activation=None,
            running=True, momentum=0.1, eps=1e-5, input_grad=True, param_grad=True, residual_grad=True,
            low_precision=True):
    """A batch_norm call on a fresh input of ``shape`` in ``layout``; ``residual`` names the
    residual's layout (None: no residual)."""
    channels = shape[1]
    x = _tensor(shape, layout, grad=input_grad)
    running_mean, running_var = _running(channels) if running else (None, None)
    kwargs = dict(_params(channels, params, grad=param_grad), training=training, momentum=momentum, eps=eps,
                  activation=activation)
    if residual is not None:
        kwargs["residual"] = _tensor(shape, residual, grad=residual_grad)
    return Sample(name, (x, running_mean, running_var), kwargs, low_precision=low_precision)


def batch_norm_samples() -> list[Sample]:
    samples = [
        # training: batch statistics, the running ones updated
        _sample("train-relu-residual", (2, 3, 7, 13), training=True, residual="nchw", activation="relu"),
        _sample("train-silu-residual-channels_last", (3, 16, 7, 7), training=True, layout="channels_last",
                residual="channels_last", activation="silu"),
        _sample("train-gelu-c5", (3, 5, 13, 7), training=True, activation="gelu", momentum=0.3),
        _sample("train-gelu_tanh-channels_last-nchw-residual", (2, 5, 13, 13), training=True,
                layout="channels_last", residual="nchw", activation="gelu_tanh"),
        _sample("train-c64-relu-residual-channels_last", (2, 64, 7, 7), training=True, layout="channels_last",
                residual="channels_last", activation="relu"),
        _sample("train-residual-no-activation-strided", (3, 3, 7, 7), training=True, layout="strided",
                residual="strided"),
        _sample("train-no-affine-no-running-stats", (2, 3, 7, 7), training=True, params=(), running=False,
                activation="relu"),
        _sample("train-weight-only-h1", (3, 5, 1, 13), training=True, params=("weight",), activation="silu",
                eps=0.5),
        _sample("train-transposed-hw", (2, 3, 13, 7), training=True, layout="transposed", residual="nchw",
                activation="relu"),
        _sample("train-c1-w1", (3, 1, 13, 1), training=True, residual="nchw", activation="gelu",
                low_precision=False),
        _sample("train-1x1-pixels", (3, 16, 1, 1), training=True, activation="relu", low_precision=False),
        _sample("train-2d", (13, 5), training=True, residual="nchw", activation="relu", low_precision=False),
        _sample("train-3d", (3, 5, 13), training=True, activation="silu"),
        # training with a zero-size batch: torch gives an empty output and leaves the running stats alone
        _sample("train-zero-batch", (0, 5, 2, 2), training=True, residual="nchw", activation="relu"),
        # evaluation: the running statistics
        _sample("eval-relu-residual", (2, 5, 7, 13), training=False, residual="nchw", activation="relu"),
        _sample("eval-gelu-channels_last", (3, 16, 7, 7), training=False, layout="channels_last", activation="gelu"),
        _sample("eval-batch1-c1-no-affine", (1, 1, 13, 7), training=False, params=(), low_precision=False),
        _sample("eval-residual-no-activation-strided", (2, 3, 7, 13), training=False, layout="strided",
                residual="channels_last"),
        _sample("eval-3d", (2, 5, 13), training=False, activation="gelu_tanh", residual="nchw"),
        _sample("eval-zero-batch", (0, 5, 7, 7), training=False, residual="nchw", activation="relu"),
        # only some inputs need a gradient
        _sample("only-weight-grad", (2, 5, 7, 7), training=True, residual="nchw", activation="relu",
                input_grad=False, residual_grad=False),
        _sample("only-residual-grad", (2, 5, 7, 7), training=True, residual="channels_last", activation="gelu",
                input_grad=False, param_grad=False),
        _sample("eval-only-input-grad", (2, 5, 7, 7), training=False, layout="channels_last", residual="nchw",
                activation="silu", param_grad=False, residual_grad=False),
        _sample("gradcheck", (2, 3, 2, 2), training=True, residual="nchw", activation="silu", low_precision=False),
    ]
    return mark(samples, opcheck={"train-relu-residual", "train-silu-residual-channels_last", "eval-relu-residual",
                                  "only-weight-grad"}, gradcheck={"gradcheck"})


def batch_norm_bad_inputs() -> list[BadInput]:
    x = torch.randn(2, 3, 4, 4)
    mean, var, w = torch.zeros(3), torch.ones(3), torch.ones(3)

    def bad(name, args, error, match, **kwargs):
        return BadInput(f"batch_norm-{name}", args, kwargs, error, r"fusednn\.ops\.batch_norm: " + match)

    return [
        bad("input-1d", (torch.randn(4), None, None), ValueError, r"input must be \[N, C, \*\].*; got shape \(4,\)",
            training=True),
        bad("input-int", (x.long(), mean, var), TypeError, r"input must be float.*; got int64"),
        bad("input-numpy", (x.numpy(), mean, var), TypeError, r"input must be a tensor; got a numpy.ndarray"),
        bad("running-mean-size", (x, torch.zeros(4), var), ValueError,
            r"running_mean must be \[C\] = \(3,\); got shape \(4,\).*should contain 3 elements not 4"),
        bad("weight-size", (x, mean, var, torch.ones(2)), ValueError,
            r"weight must be \[C\] = \(3,\); got shape \(2,\)"),
        bad("bias-int", (x, mean, var, w, torch.ones(3, dtype=torch.int32)), TypeError,
            r"bias must be float.*; got int32"),
        bad("running-var-device", (x, mean, var.to("meta")), ValueError,
            r"running_var must be on input's device cpu; got meta"),
        bad("running-var-missing-in-training", (x, mean, None), ValueError,
            r"running_var must be a tensor when running_mean is given.*both be None or neither", training=True),
        bad("running-mean-missing-in-eval", (x, None, None), ValueError,
            r"running_mean must be a tensor \[C\] in evaluation mode.*running_mean must be defined in evaluation mode"),
        bad("one-value-per-channel", (torch.randn(1, 3, 1, 1), None, None), ValueError,
            r"input must be more than 1 value per channel when training.*Expected more than 1 value per channel",
            training=True),
        bad("eps-zero-in-training", (x, mean, var), ValueError,
            r"eps must be a float > 0 when training; got 0.0.*eps must be positive", training=True, eps=0.0),
        bad("eps-negative", (x, mean, var), ValueError, r"eps must be a float >= 0; got -1.0.*non-negative", eps=-1.0),
        bad("momentum-none", (x, mean, var), TypeError, r"momentum must be a float; got None", training=True,
            momentum=None),
        bad("training-string", (x, mean, var), TypeError, r"training must be a bool; got 'yes'", training="yes"),
        bad("residual-shape", (x, mean, var), ValueError,
            r"residual must be of input's shape \(2, 3, 4, 4\); got shape", residual=torch.randn(2, 3, 4, 5)),
        bad("residual-dtype", (x, mean, var), TypeError, r"residual must be of input's dtype float32; got float16",
            residual=x.half()),
        bad("activation-unknown", (x, mean, var), ValueError, r"activation must be one of None, 'relu'.*; got 'tanh'",
            activation="tanh"),
    ]
