"""Samples, bad inputs and benchmark shapes of the recurrent ops: ``lstm``, ``lstm_cell``,
``gru``, ``gru_cell``, ``rnn`` and ``rnn_cell``."""

from __future__ import annotations

import re

import torch

from fusednn.registry import BadInput, BenchShapes, Sample, View, mark

F64 = torch.float64

# The LSTM's and GRU's benchmark shapes (bench/recurrent.py): the modules with L layers,
# bidirectional or not (D = 2 or 1), input size I = H. On the CPU one layer at every B and H,
# and two bidirectional layers at H = 256 and at B = 16, H = 1024 (the two-layer H = 1024,
# B = 64 training step alone takes over 15 s on a 2-core machine).
BENCH_SHAPES = BenchShapes(
    gpu=tuple({"B": b, "T": 256, "I": h, "H": h, "L": 1, "D": 1} for h in (512, 1024) for b in (16, 64)),
    gpu_quick=({"B": 16, "T": 256, "I": 512, "H": 512, "L": 1, "D": 1},),
    cpu=tuple({"B": b, "T": 128, "I": h, "H": h, "L": 1, "D": 1} for h in (256, 1024) for b in (1, 16, 64))
    + tuple({"B": b, "T": 128, "I": 256, "H": 256, "L": 2, "D": 2} for b in (1, 16, 64))
    + ({"B": 16, "T": 128, "I": 1024, "H": 1024, "L": 2, "D": 2},),
    cpu_quick=({"B": 16, "T": 64, "I": 256, "H": 256, "L": 1, "D": 1},),
)


def lstm_tensors(T, B, I, H, P=0, bias=True, grad=True):
    """float64 inputs of one layer: x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr (None where absent).
    Weights ~ H^-0.5 so the gates stay away from saturation."""
    R = P or H
    s = H**-0.5

    def t(*shape, scale=1.0):
        return (scale * torch.randn(shape, dtype=F64)).requires_grad_(grad)

    b_ih, b_hh = (t(4 * H, scale=0.5), t(4 * H, scale=0.5)) if bias else (None, None)
    return dict(x=t(T, B, I), h0=t(B, R), c0=t(B, H), w_ih=t(4 * H, I, scale=s), w_hh=t(4 * H, R, scale=s),
                b_ih=b_ih, b_hh=b_hh, w_hr=t(P, H, scale=s) if P else None)


def batch_sizes_of(lengths, T):
    return [sum(1 for n in lengths if n > t) for t in range(T)]


def _sequence_input(x, x_layout):
    """x itself, or (``x_layout`` given) a View whose base holds x's values batch-major and
    ``x_layout`` (a transpose) shows them time-major again: a non-contiguous x."""
    return View(x.detach().transpose(0, 1).contiguous().requires_grad_(), x_layout) if x_layout else x


def _lstm_sample(name, T, B, I, H, P=0, bias=True, *, lengths=None, with_state=True, x_layout=None, **options):
    t = lstm_tensors(T, B, I, H, P, bias)
    x = _sequence_input(t["x"], x_layout)
    hx = (t["h0"], t["c0"]) if with_state else None
    kwargs = {"batch_sizes": batch_sizes_of(lengths, T)} if lengths else {}
    return Sample(name, (x, hx, t["w_ih"], t["w_hh"], t["b_ih"], t["b_hh"], t["w_hr"]), kwargs, **options)


# Tiny samples (odd sizes, edge cases) run in float32/float64; the float16/bfloat16 grid
# takes samples with about a thousand elements per output, where the max error is a
# stable statistic (see Sample.low_precision).
_TINY = dict(low_precision=False)


def lstm_samples() -> list[Sample]:
    samples = [
        _lstm_sample("large-T17", 17, 8, 64, 128),
        _lstm_sample("large-packed-proj", 12, 8, 48, 96, P=33, lengths=[12, 12, 9, 7, 7, 3, 2, 1]),
        _lstm_sample("large-default-state-no-bias", 9, 8, 32, 128, bias=False, with_state=False,
                     x_layout=lambda t: t.transpose(0, 1)),
        _lstm_sample("T1-B1", 1, 1, 3, 4, **_TINY),
        _lstm_sample("T17", 17, 3, 5, 7, **_TINY),
        _lstm_sample("T17-proj", 17, 2, 6, 5, P=3, **_TINY),
        _lstm_sample("I40-no-bias", 4, 5, 40, 16, bias=False, **_TINY),
        _lstm_sample("batch1-proj-no-bias", 9, 1, 4, 8, P=5, bias=False, **_TINY),
        _lstm_sample("default-state", 6, 3, 4, 5, with_state=False, **_TINY),
        _lstm_sample("default-state-proj", 6, 3, 4, 5, P=3, with_state=False, **_TINY),
        # packed batches: step t advances the rows [0, batch_sizes[t])
        _lstm_sample("packed-4seq", 17, 4, 5, 6, lengths=[17, 9, 9, 1], **_TINY),
        _lstm_sample("packed-proj", 17, 3, 5, 6, P=3, lengths=[17, 12, 4], **_TINY),
        _lstm_sample("packed-T1", 1, 2, 5, 6, lengths=[1, 1], **_TINY),
        # steps with no active row at the end
        _lstm_sample("packed-shorter-than-T", 8, 3, 5, 6, lengths=[6, 3, 2], **_TINY),
        # x stored batch-major and viewed time-major
        _lstm_sample("non-contiguous-x", 7, 3, 5, 6, P=2, x_layout=lambda t: t.transpose(0, 1), **_TINY),
        _lstm_sample("zero-batch", 5, 0, 3, 4, P=2, **_TINY),
        _lstm_sample("gradcheck", 4, 3, 3, 4, P=2, lengths=[4, 2, 1], gradcheck=True, low_precision=False),
    ]
    # a strided weight view (every other column of a wider matrix)
    t = lstm_tensors(5, 2, 5, 6)
    wide = View(torch.randn(24, 10, dtype=F64).requires_grad_(), lambda w: w[:, ::2])
    samples.append(Sample("strided-w_ih", (t["x"], (t["h0"], t["c0"]), wide, t["w_hh"], t["b_ih"], t["b_hh"]),
                          **_TINY))
    return mark(samples, opcheck={"T17-proj", "packed-shorter-than-T", "I40-no-bias", "default-state"})


def lstm_cell_samples() -> list[Sample]:
    samples = []
    for name, B, I, H, bias, with_state in (("state", 3, 5, 7, True, True), ("batch1-no-bias", 1, 8, 4, False, True),
                                            ("default-state", 4, 3, 6, True, False)):
        t = lstm_tensors(1, B, I, H, 0, bias)
        hx = (t["h0"], t["c0"]) if with_state else None
        samples.append(Sample(name, (t["x"][0].detach().requires_grad_(), hx, t["w_ih"], t["w_hh"], t["b_ih"],
                                     t["b_hh"]), **_TINY))
    t = lstm_tensors(1, 2, 3, 4)
    samples.append(Sample("gradcheck", (t["x"][0].detach().requires_grad_(), (t["h0"], t["c0"]), t["w_ih"],
                                        t["w_hh"], t["b_ih"], t["b_hh"]), gradcheck=True, **_TINY))
    t = lstm_tensors(1, 16, 96, 128)
    samples.append(Sample("large", (t["x"][0].detach().requires_grad_(), (t["h0"], t["c0"]), t["w_ih"],
                                    t["w_hh"], t["b_ih"], t["b_hh"])))
    return mark(samples, opcheck={"state", "batch1-no-bias"})


def _bad_lstm_args(**changes):
    """Arguments of fusednn.ops.lstm (float32, T=4, B=3, I=5, H=6) with some replaced."""
    t = {k: (v.detach().float() if v is not None else None) for k, v in lstm_tensors(4, 3, 5, 6).items()}
    args = {"x": t["x"], "hx": (t["h0"], t["c0"]), "w_ih": t["w_ih"], "w_hh": t["w_hh"], "b_ih": t["b_ih"],
            "b_hh": t["b_hh"], "w_hr": None, "batch_sizes": None}
    for key, value in changes.items():
        args[key] = value(args) if callable(value) else value
    return args


def lstm_bad_inputs() -> list[BadInput]:
    cases = {
        "x-rank": (dict(x=lambda a: a["x"][0]), ValueError, r"x must be 3-D \[T, B, I\]; got shape \(3, 5\)"),
        "x-integer": (dict(x=lambda a: a["x"].long()), TypeError, r"x must be float16, .*; got int64"),
        "x-numpy": (dict(x=lambda a: a["x"].numpy()), TypeError, r"x must be a tensor \[T, B, I\]; got a numpy.ndarray"),
        "x-feature-size": (dict(x=lambda a: torch.randn(4, 3, 7)), ValueError,
                           r"x must be \[T, B, I\] with I = 5 \(w_ih is \[4H, I\] = \(24, 5\)\); got shape \(4, 3, 7\)"),
        "w_ih-rows": (dict(w_ih=lambda a: a["w_ih"][:23]), ValueError,
                      r"w_ih must be \[4H, I\] with H >= 1; got shape \(23, 5\)"),
        "w_hh-shape": (dict(w_hh=lambda a: a["w_hh"][:, :5]), ValueError,
                       r"w_hh must be \[4H, H\] = \(24, 6\); got shape \(24, 5\)"),
        "b_ih-shape": (dict(b_ih=lambda a: a["b_ih"][:5]), ValueError, r"b_ih must be \[4H\] = \(24,\); got shape \(5,\)"),
        "h0-shape": (dict(hx=lambda a: (a["hx"][0][:2], a["hx"][1])), ValueError,
                     r"h0 must be \[B, H\] = \(3, 6\); got shape \(2, 6\)"),
        "c0-shape": (dict(hx=lambda a: (a["hx"][0], a["hx"][1][:, :4])), ValueError,
                     r"c0 must be \[B, H\] = \(3, 6\); got shape \(3, 4\)"),
        "hx-not-a-pair": (dict(hx=lambda a: a["hx"][0]), TypeError, r"hx must be a pair \(h0, c0\) of tensors or None; "
                                                                     r"got a tensor"),
        "w_hh-dtype": (dict(w_hh=lambda a: a["w_hh"].double()), TypeError, r"w_hh must be of x's dtype float32; got float64"),
        "c0-dtype": (dict(hx=lambda a: (a["hx"][0], a["hx"][1].half())), TypeError, r"c0 must be of x's dtype float32"),
        "w_ih-device": (dict(w_ih=lambda a: a["w_ih"].to("meta")), ValueError, r"w_ih must be on x's device cpu; got meta"),
        "w_hr-shape": (dict(w_hr=torch.randn(3, 5)), ValueError, r"w_hr must be \[P, H\] = \(3, 6\); got shape \(3, 5\)"),
        "batch_sizes-bool": (dict(batch_sizes=[True, 1, 1, 1]), TypeError,
                             r"batch_sizes must be a list of ints \[T\]; got an element True"),
    }
    cases.update(_SEQUENCE_CASES)  # the x and batch_sizes cases every sequence op shares
    return [BadInput(name, (), _bad_lstm_args(**changes), error, r"fusednn\.ops\.lstm: " + match)
            for name, (changes, error, match) in cases.items()]


def lstm_cell_bad_inputs() -> list[BadInput]:
    t = {k: v.detach().float() for k, v in lstm_tensors(1, 3, 5, 6).items() if v is not None}
    x, h, c, w_ih, w_hh = t["x"][0], t["h0"], t["c0"], t["w_ih"], t["w_hh"]
    cases = [
        ("x-rank", (x[None], (h, c), w_ih, w_hh), ValueError, r"x must be 2-D \[B, I\]; got shape \(1, 3, 5\)"),
        ("x-feature-size", (torch.randn(3, 4), (h, c), w_ih, w_hh), ValueError,
         r"x must be \[B, I\] with I = 5 \(w_ih is \[4H, I\] = \(24, 5\)\); got shape \(3, 4\)"),
        ("h-shape", (x, (h[:, :5], c), w_ih, w_hh), ValueError, r"h must be \[B, H\] = \(3, 6\); got shape \(3, 5\)"),
        ("x-int", (x.int(), (h, c), w_ih, w_hh), TypeError, r"x must be float16, .*; got int32"),
        ("w_ih-dtype", (x, (h, c), w_ih.double(), w_hh), TypeError, r"w_ih must be of x's dtype float32; got float64"),
    ]
    return [BadInput(name, args, {}, error, r"fusednn\.ops\.lstm_cell: " + match) for name, args, error, match in cases]


# --------------------------------------------------------------------------- GRU and Elman RNN


def _randn(*shape, scale=1.0, grad=True):
    return (scale * torch.randn(shape, dtype=F64)).requires_grad_(grad)


def gru_tensors(T, B, I, H, bias=True, grad=True):
    """float64 inputs of one GRU layer: x, h0, w_ih, w_hh, b_ih, b_hh (None where absent).
    Weights ~ H^-0.5 so the gates stay away from saturation."""
    s = H**-0.5
    b_ih, b_hh = (_randn(3 * H, scale=0.5, grad=grad), _randn(3 * H, scale=0.5, grad=grad)) if bias else (None, None)
    return dict(x=_randn(T, B, I, grad=grad), h0=_randn(B, H, grad=grad), w_ih=_randn(3 * H, I, scale=s, grad=grad),
                w_hh=_randn(3 * H, H, scale=s, grad=grad), b_ih=b_ih, b_hh=b_hh)


def rnn_tensors(T, B, I, H, bias=True, grad=True, nonlinearity="tanh"):
    """float64 inputs of one Elman RNN layer: x, h0, w_ih, w_hh, b_ih, b_hh (None where absent).

    tanh: weights ~ H^-0.5. relu: every pre-activation stays at least 0.5 away from relu's
    kink, so that neither gradcheck's finite differences nor a low-precision rounding
    crosses it: each unit's two biases sum to ±[1, 2] (a random sign per unit, so both
    sides are taken), and x, h0 in [-1, 1] with weights in ±0.5 / (I + 3H) keep
    ``|W_ih x + W_hh h| <= 0.5`` at every step (h stays below 2.5).
    """
    if nonlinearity == "tanh":
        s = H**-0.5
        b_ih, b_hh = (_randn(H, scale=0.5, grad=grad), _randn(H, scale=0.5, grad=grad)) if bias else (None, None)
        return dict(x=_randn(T, B, I, grad=grad), h0=_randn(B, H, grad=grad), w_ih=_randn(H, I, scale=s, grad=grad),
                    w_hh=_randn(H, H, scale=s, grad=grad), b_ih=b_ih, b_hh=b_hh)
    if not bias:
        raise ValueError("relu samples need biases: they keep the pre-activations away from 0")

    def uniform(*shape, low=-1.0, high=1.0):
        return low + (high - low) * torch.rand(shape, dtype=F64)

    bound = 0.5 / (I + 3 * H)
    sign = torch.where(torch.rand(H) < 0.5, -1.0, 1.0).to(F64)
    tensors = dict(x=uniform(T, B, I), h0=uniform(B, H), w_ih=uniform(H, I, low=-bound, high=bound),
                   w_hh=uniform(H, H, low=-bound, high=bound), b_ih=sign * uniform(H, low=0.5),
                   b_hh=sign * uniform(H, low=0.5))
    return {k: v.requires_grad_(grad) for k, v in tensors.items()}


def _hidden_sample(name, t, *, lengths=None, with_state=True, x_layout=None, kwargs=None, **options):
    """A Sample of ``gru`` / ``rnn`` from their tensors ``t``: (x, hx, w_ih, w_hh, b_ih, b_hh)."""
    kwargs = dict(kwargs or {})
    if lengths:
        kwargs["batch_sizes"] = batch_sizes_of(lengths, t["x"].shape[0])
    args = (_sequence_input(t["x"], x_layout), t["h0"] if with_state else None, t["w_ih"], t["w_hh"], t["b_ih"],
            t["b_hh"])
    return Sample(name, args, kwargs, **options)


def _gru_sample(name, T, B, I, H, bias=True, **options):
    return _hidden_sample(name, gru_tensors(T, B, I, H, bias), **options)


def _rnn_sample(name, T, B, I, H, bias=True, nonlinearity="tanh", **options):
    kwargs = {"nonlinearity": nonlinearity} if nonlinearity != "tanh" else {}  # tanh: the default
    return _hidden_sample(name, rnn_tensors(T, B, I, H, bias, nonlinearity=nonlinearity), kwargs=kwargs, **options)


def gru_samples() -> list[Sample]:
    samples = [
        _gru_sample("large-T17", 17, 8, 64, 128),
        _gru_sample("large-packed", 12, 8, 48, 96, lengths=[12, 12, 9, 7, 7, 3, 2, 1]),
        _gru_sample("large-default-state-no-bias", 9, 8, 32, 128, bias=False, with_state=False,
                    x_layout=lambda t: t.transpose(0, 1)),
        _gru_sample("T1-B1", 1, 1, 3, 4, **_TINY),
        _gru_sample("T17", 17, 3, 5, 7, **_TINY),
        _gru_sample("I40-no-bias", 4, 5, 40, 16, bias=False, **_TINY),
        _gru_sample("default-state", 6, 3, 4, 5, with_state=False, **_TINY),
        _gru_sample("packed-4seq", 17, 4, 5, 6, lengths=[17, 9, 9, 1], **_TINY),
        _gru_sample("packed-shorter-than-T", 8, 3, 5, 6, lengths=[6, 3, 2], **_TINY),
        _gru_sample("non-contiguous-x", 7, 3, 5, 6, x_layout=lambda t: t.transpose(0, 1), **_TINY),
        _gru_sample("zero-batch", 5, 0, 3, 4, **_TINY),
        _gru_sample("gradcheck", 4, 3, 3, 4, lengths=[4, 2, 1], gradcheck=True, low_precision=False),
    ]
    return mark(samples, opcheck={"T17", "packed-shorter-than-T", "I40-no-bias", "default-state"})


def rnn_samples() -> list[Sample]:
    samples = [
        _rnn_sample("large-T17", 17, 8, 64, 128),
        _rnn_sample("large-packed-relu", 12, 8, 48, 96, nonlinearity="relu", lengths=[12, 12, 9, 7, 7, 3, 2, 1]),
        _rnn_sample("large-default-state-no-bias", 9, 8, 32, 128, bias=False, with_state=False,
                    x_layout=lambda t: t.transpose(0, 1)),
        _rnn_sample("T1-B1", 1, 1, 3, 4, **_TINY),
        _rnn_sample("T17-relu", 17, 3, 5, 7, nonlinearity="relu", **_TINY),
        _rnn_sample("I40-no-bias", 4, 5, 40, 16, bias=False, **_TINY),
        _rnn_sample("default-state-relu", 6, 3, 4, 5, nonlinearity="relu", with_state=False, **_TINY),
        _rnn_sample("packed-4seq", 17, 4, 5, 6, lengths=[17, 9, 9, 1], **_TINY),
        _rnn_sample("packed-shorter-than-T-relu", 8, 3, 5, 6, nonlinearity="relu", lengths=[6, 3, 2], **_TINY),
        _rnn_sample("non-contiguous-x-relu", 7, 3, 5, 6, nonlinearity="relu", x_layout=lambda t: t.transpose(0, 1),
                    **_TINY),
        _rnn_sample("zero-batch", 5, 0, 3, 4, **_TINY),
        _rnn_sample("gradcheck", 4, 3, 3, 4, lengths=[4, 2, 1], gradcheck=True, low_precision=False),
        _rnn_sample("gradcheck-relu", 4, 3, 3, 4, nonlinearity="relu", lengths=[4, 2, 1], gradcheck=True,
                    low_precision=False),
    ]
    return mark(samples, opcheck={"T17-relu", "packed-shorter-than-T-relu", "I40-no-bias", "default-state-relu"})


def _cell_sample(name, t, *, with_state=True, kwargs=None, **options):
    """A Sample of ``gru_cell`` / ``rnn_cell`` from one step's tensors ``t`` (T = 1)."""
    x = t["x"][0].detach().requires_grad_()
    return Sample(name, (x, t["h0"] if with_state else None, t["w_ih"], t["w_hh"], t["b_ih"], t["b_hh"]),
                  dict(kwargs or {}), **options)


def gru_cell_samples() -> list[Sample]:
    samples = [
        _cell_sample("state", gru_tensors(1, 3, 5, 7), **_TINY),
        _cell_sample("batch1-no-bias", gru_tensors(1, 1, 8, 4, bias=False), **_TINY),
        _cell_sample("default-state", gru_tensors(1, 4, 3, 6), with_state=False, **_TINY),
        _cell_sample("zero-batch", gru_tensors(1, 0, 3, 4), **_TINY),
        _cell_sample("gradcheck", gru_tensors(1, 2, 3, 4), gradcheck=True, **_TINY),
        _cell_sample("large", gru_tensors(1, 16, 96, 128)),
    ]
    return mark(samples, opcheck={"state", "batch1-no-bias"})


def rnn_cell_samples() -> list[Sample]:
    relu = {"nonlinearity": "relu"}
    samples = [
        _cell_sample("state", rnn_tensors(1, 3, 5, 7), **_TINY),
        _cell_sample("state-relu", rnn_tensors(1, 3, 5, 7, nonlinearity="relu"), kwargs=relu, **_TINY),
        _cell_sample("batch1-no-bias", rnn_tensors(1, 1, 8, 4, bias=False), **_TINY),
        _cell_sample("default-state-relu", rnn_tensors(1, 4, 3, 6, nonlinearity="relu"), with_state=False,
                     kwargs=relu, **_TINY),
        _cell_sample("zero-batch", rnn_tensors(1, 0, 3, 4), **_TINY),
        _cell_sample("gradcheck", rnn_tensors(1, 2, 3, 4), gradcheck=True, **_TINY),
        _cell_sample("gradcheck-relu", rnn_tensors(1, 2, 3, 4, nonlinearity="relu"), kwargs=relu, gradcheck=True,
                     **_TINY),
        _cell_sample("large", rnn_tensors(1, 16, 96, 128)),
        _cell_sample("large-relu", rnn_tensors(1, 16, 96, 128, nonlinearity="relu"), kwargs=relu),
    ]
    return mark(samples, opcheck={"state", "state-relu", "batch1-no-bias"})


def _bad_inputs(op: str, make_args, cases: dict) -> list[BadInput]:
    """BadInputs of ``fusednn.ops.<op>``: each case is (changes, error, message fragment); a
    change replaces one argument of ``make_args()`` (a value, or a function of the arguments)."""
    inputs = []
    for name, (changes, error, match) in cases.items():
        args = make_args()
        for key, value in changes.items():
            args[key] = value(args) if callable(value) else value
        inputs.append(BadInput(name, (), args, error, rf"fusednn\.ops\.{op}: " + match))
    return inputs


def _hidden_args(tensors, T, B, I, H, sequence=True, **options):
    """Keyword arguments of gru / rnn (float32; ``sequence=False``: of the cells, one step)."""
    t = {k: (v.detach().float() if v is not None else None) for k, v in tensors(T, B, I, H).items()}
    args = {"x": t["x"] if sequence else t["x"][0], "hx": t["h0"], "w_ih": t["w_ih"], "w_hh": t["w_hh"],
            "b_ih": t["b_ih"], "b_hh": t["b_hh"], **options}
    if sequence:
        args["batch_sizes"] = None
    return args


def _hidden_cases(gates: int, sequence: bool) -> dict:
    """The mistakes every GRU (``gates`` = 3) and RNN (``gates`` = 1) op must name, with
    T = 4, B = 3, I = 5, H = 6; sequences and cells differ only in x's layout."""
    rows, blocks = 6 * gates, "3H" if gates == 3 else "H"
    x_doc, x_shape = ("[T, B, I]", (4, 3, 5)) if sequence else ("[B, I]", (3, 5))
    wrong_x = (*x_shape[:-1], 7)
    return {
        "x-rank": (dict(x=lambda a: a["x"][None]), ValueError,
                   re.escape(f"x must be {len(x_shape)}-D {x_doc}; got shape {(1, *x_shape)}")),
        "x-integer": (dict(x=lambda a: a["x"].long()), TypeError, r"x must be float16, .*; got int64"),
        "x-feature-size": (dict(x=lambda a: torch.randn(wrong_x)), ValueError,
                           re.escape(f"x must be {x_doc} with I = 5 (w_ih is [{blocks}, I] = ({rows}, 5)); "
                                     f"got shape {wrong_x}")),
        "w_hh-shape": (dict(w_hh=lambda a: a["w_hh"][:, :5]), ValueError,
                       re.escape(f"w_hh must be [{blocks}, H] = ({rows}, 6); got shape ({rows}, 5)")),
        "b_ih-shape": (dict(b_ih=lambda a: a["b_ih"][:5]), ValueError,
                       re.escape(f"b_ih must be [{blocks}] = ({rows},); got shape (5,)")),
        "hx-shape": (dict(hx=lambda a: a["hx"][:2]), ValueError, r"hx must be \[B, H\] = \(3, 6\); got shape \(2, 6\)"),
        "hx-not-a-tensor": (dict(hx=lambda a: (a["hx"], a["hx"])), TypeError,
                            r"hx must be a tensor \[B, H\] or None; got a tuple of 2 items"),
        "hx-dtype": (dict(hx=lambda a: a["hx"].double()), TypeError, r"hx must be of x's dtype float32; got float64"),
        "w_hh-dtype": (dict(w_hh=lambda a: a["w_hh"].half()), TypeError,
                       r"w_hh must be of x's dtype float32; got float16"),
        "w_ih-device": (dict(w_ih=lambda a: a["w_ih"].to("meta")), ValueError,
                        r"w_ih must be on x's device cpu; got meta"),
    }


_SEQUENCE_CASES = {
    "x-no-steps": (dict(x=lambda a: a["x"][:0]), ValueError, r"x must be .*T >= 1.*; got shape \(0, 3, 5\)"),
    "batch_sizes-increasing": (dict(batch_sizes=[2, 3, 1, 1]), ValueError,
                               r"batch_sizes must be non-increasing; got \[2, 3, 1, 1\]"),
    "batch_sizes-length": (dict(batch_sizes=[3, 2]), ValueError,
                           r"batch_sizes must be T = 4 entries, one per step; got 2 entries"),
    "batch_sizes-too-big": (dict(batch_sizes=[4, 2, 1, 1]), ValueError,
                            r"batch_sizes must be in \[0, B = 3\]; got \[4, 2, 1, 1\]"),
    "batch_sizes-float": (dict(batch_sizes=torch.tensor([3.0, 2, 1, 1])), TypeError,
                          r"batch_sizes must be integers \[T\]; got a tensor of dtype float32"),
}

_NONLINEARITY_CASES = {
    "nonlinearity-unknown": (dict(nonlinearity="sigmoid"), ValueError,
                             r"nonlinearity must be \"tanh\" or \"relu\"; got 'sigmoid'"),
    "nonlinearity-type": (dict(nonlinearity=None), TypeError, r"nonlinearity must be \"tanh\" or \"relu\"; got None"),
}

_GRU_ROWS_CASE = {
    # 17 rows: not three gate blocks
    "w_ih-rows": (dict(w_ih=lambda a: a["w_ih"][:17]), ValueError,
                  r"w_ih must be \[3H, I\] with H >= 1; got shape \(17, 5\)"),
}


def gru_bad_inputs() -> list[BadInput]:
    cases = {**_hidden_cases(3, sequence=True), **_GRU_ROWS_CASE, **_SEQUENCE_CASES}
    return _bad_inputs("gru", lambda: _hidden_args(gru_tensors, 4, 3, 5, 6), cases)


def gru_cell_bad_inputs() -> list[BadInput]:
    cases = {**_hidden_cases(3, sequence=False), **_GRU_ROWS_CASE}
    return _bad_inputs("gru_cell", lambda: _hidden_args(gru_tensors, 1, 3, 5, 6, sequence=False), cases)


def rnn_bad_inputs() -> list[BadInput]:
    cases = {**_hidden_cases(1, sequence=True), **_SEQUENCE_CASES, **_NONLINEARITY_CASES,
             "w_ih-no-rows": (dict(w_ih=lambda a: a["w_ih"][:0]), ValueError,
                              r"w_ih must be \[H, I\] with H >= 1; got shape \(0, 5\)")}
    return _bad_inputs("rnn", lambda: _hidden_args(rnn_tensors, 4, 3, 5, 6, nonlinearity="tanh"), cases)


def rnn_cell_bad_inputs() -> list[BadInput]:
    cases = {**_hidden_cases(1, sequence=False), **_NONLINEARITY_CASES}
    return _bad_inputs("rnn_cell", lambda: _hidden_args(rnn_tensors, 1, 3, 5, 6, sequence=False,
                                                        nonlinearity="relu"), cases)
