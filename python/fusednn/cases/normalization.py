"""Samples, bad inputs and benchmark shapes of ``layer_norm`` and ``rms_norm``."""

from __future__ import annotations

import torch

from fusednn.registry import BadInput, BenchShapes, Sample, Tolerance, View, mark

F64 = torch.float64

BENCH_SHAPES = BenchShapes(
    gpu=({"rows": 4096, "N": 1024}, {"rows": 4096, "N": 4096}, {"rows": 8192, "N": 8192}, {"rows": 16384, "N": 2048}),
    gpu_quick=({"rows": 4096, "N": 4096},),
)

# A one-column row normalises to +-1 whatever its value: its input gradient is the
# difference of two nearly equal terms, 0 in exact arithmetic and rounding noise in any
# float32 implementation (PyTorch's too). Such rows get a large eps and an absolute bound.
_WIDTH_ONE = Tolerance("a one-column LayerNorm's input gradient is 0 in exact arithmetic; what is left is the "
                       "rounding of two cancelling terms", atol=1e-6)


def _randn(*shape, grad=True):
    return torch.randn(shape, dtype=F64).requires_grad_(grad)


def _params(names, shape, grad=True):
    """weight ~ 1 + noise, bias ~ noise: away from the identity, so a dropped one shows."""
    out = {}
    for name in names:
        base = 1.0 if name == "weight" else 0.0
        out[name] = (base + 0.5 * torch.randn(shape, dtype=F64)).requires_grad_(grad)
    return out


def _norm_samples(param_sets) -> list[Sample]:
    samples = []
    for width in (1, 37, 1000):
        for names in param_sets:
            eps = 0.5 if width == 1 else 1e-5
            tolerances = {"grad x": _WIDTH_ONE} if width == 1 and "bias" in param_sets[-1] else {}
            label = "+".join(names) or "no-params"
            samples.append(Sample(f"width{width}-{label}", (_randn(3, width), (width,)),
                                  dict(_params(names, (width,)), eps=eps), tolerances=tolerances))
    names = param_sets[-1]
    for label, x_shape, normalized in (("1d", (37,), (37,)), ("single-row-int-shape", (1, 37), 37),
                                       ("3d", (2, 3, 37), (37,)), ("2-normalized-dims", (2, 3, 4, 5), (4, 5)),
                                       ("3-normalized-dims", (2, 3, 4, 5), (3, 4, 5))):
        shape = (normalized,) if isinstance(normalized, int) else normalized
        samples.append(Sample(label, (_randn(*x_shape), normalized), dict(_params(names, shape), eps=1e-5)))
    # Non-contiguous x (and a strided weight): columns every other element (the op copies
    # them), a column slice of a wider tensor (used in place through the row stride), and
    # leading dims permuted (rows contiguous, leading dims not mergeable).
    layouts = {
        "strided-columns": ((2, 3, 74), lambda t: t[..., ::2]),
        "column-slice": ((2, 3, 50), lambda t: t[..., 3:40]),
        "transposed": ((3, 2, 37), lambda t: t.transpose(0, 1)),
    }
    for label, (base_shape, layout) in layouts.items():
        params = _params(names, (37,))
        params["weight"] = View(_randn(74), lambda t: t[::2])
        samples.append(Sample(f"non-contiguous-{label}", (View(_randn(*base_shape), layout), (37,)),
                              dict(params, eps=1e-5)))
    samples.append(Sample("eps-0.75", (_randn(3, 37), (37,)), dict(eps=0.75)))
    for label, x_shape, normalized in (("zero-rows", (0, 37), (37,)), ("zero-leading", (2, 0, 37), (37,)),
                                       ("zero-width", (3, 0), (0,))):
        samples.append(Sample(label, (_randn(*x_shape), normalized), dict(_params(names[:1], normalized), eps=1e-5)))
    # Only some inputs need a gradient (frozen parameters: only x).
    samples.append(Sample("only-x-grad", (_randn(4, 37), (37,)), dict(_params(names, (37,), grad=False), eps=1e-5)))
    for which in names:
        params = _params(names, (37,), grad=False)
        params[which].requires_grad_(True)
        samples.append(Sample(f"only-{which}-grad", (_randn(4, 37, grad=False), (37,)), dict(params, eps=1e-5)))
    samples.append(Sample("gradcheck", (_randn(3, 5), (5,)), dict(_params(names, (5,)), eps=1e-5), gradcheck=True))
    return samples


def layer_norm_samples() -> list[Sample]:
    samples = _norm_samples([(), ("weight",), ("weight", "bias")])
    return mark(samples, opcheck={"width37-no-params", "width37-weight", "width37-weight+bias", "only-bias-grad",
                                  "only-x-grad"})


def rms_norm_samples() -> list[Sample]:
    samples = _norm_samples([(), ("weight",)])
    # eps=None: the default (float32's epsilon) matters when the rows are small.
    return mark(samples, opcheck={"width37-no-params", "width37-weight", "only-weight-grad", "only-x-grad"})


def _bad_norm_inputs(op: str) -> list[BadInput]:
    x, w = torch.randn(2, 3, 5), torch.randn(5)

    def bad(name, args, error, match, **kwargs):
        return BadInput(name, args, kwargs, error, match)

    cases = [
        bad("shape-not-trailing", (x, (4,)), ValueError, r"normalized_shape must be the trailing dims of x.*"
            r"\(2, 3, 5\).*got \(4,\)"),
        bad("shape-too-long", (x, (1, 2, 3, 5)), ValueError,
            r"normalized_shape must be the trailing dims.*\(1, 2, 3, 5\)"),
        bad("shape-empty", (x, ()), ValueError, r"normalized_shape must be non-empty"),
        bad("shape-string", (x, "5"), TypeError, r"normalized_shape must be an int or a sequence of ints; got '5'"),
        bad("shape-bool", (x, True), TypeError, r"normalized_shape must be an int"),
        bad("weight-shape", (x, 5, torch.randn(4)), ValueError,
            r"weight must be normalized_shape = \(5,\); got shape \(4,\)"),
        bad("weight-2d", (x, 5, torch.randn(3, 5)), ValueError, r"weight must be .*\(5,\); got shape \(3, 5\)"),
        bad("x-int64", (x.long(), 5), TypeError, r"x must be float16, bfloat16, float32 or float64; got int64"),
        bad("x-int32", (x.int(), 5), TypeError, r"x must be float.*; got int32"),
        bad("weight-int", (x, 5, w.long()), TypeError, r"weight must be float.*; got int64"),
        bad("weight-bool", (x.half(), 5, w.bool()), TypeError, r"weight must be float.*; got bool"),
        bad("weight-device", (x, 5, w.to("meta")), ValueError, r"weight must be on x's device cpu; got meta"),
        bad("x-numpy", (x.numpy(), 5), TypeError, r"x must be a tensor; got a numpy.ndarray"),
        bad("weight-list", (x, 5, [1.0] * 5), TypeError, r"weight must be a tensor .*or None; got a list of 5 items"),
        bad("eps-negative", (x, 5), ValueError, r"eps must be a finite float >= 0.0; got -1e-05", eps=-1e-5),
        bad("eps-nan", (x, 5), ValueError, r"eps must be a finite float >= 0.0; got nan", eps=float("nan")),
        bad("eps-string", (x, 5), TypeError, r"eps must be a float; got 'tiny'", eps="tiny"),
    ]
    if op == "layer_norm":
        cases += [
            bad("bias-shape", (x, 5, w, torch.randn(5, 1)), ValueError, r"bias must be .*\(5,\); got shape \(5, 1\)"),
            bad("bias-int", (x, 5, w, w.int()), TypeError, r"bias must be float.*; got int32"),
        ]
    return [BadInput(f"{op}-{c.name}", c.args, c.kwargs, c.error, r"fusednn\.ops\." + op + ": " + c.match)
            for c in cases]


def layer_norm_bad_inputs() -> list[BadInput]:
    return _bad_norm_inputs("layer_norm")


def rms_norm_bad_inputs() -> list[BadInput]:
    return _bad_norm_inputs("rms_norm")
