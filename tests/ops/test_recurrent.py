"""fusednn.ops.lstm / lstm_cell against torch.nn.LSTM / LSTMCell with float64 references.

On the CPU the C++ kernels run in float64 and float32; on a GPU machine device_dtypes
adds CUDA float32/float16/bfloat16 (half types: the 2x rule against torch's own LSTM
in that precision).
"""

import pytest
import torch
from torch.func import functional_call
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import fusednn
from fusednn.testing import assert_close, device_dtypes, opcheck

# torch's own LSTM (the reference) warns that oneDNN has no projection support.
pytestmark = pytest.mark.filterwarnings("ignore:LSTM with projections is not supported with oneDNN")

DEVICE_DTYPES = device_dtypes("cpp")
LOW_PRECISION = (torch.float16, torch.bfloat16)


def _rtol(device, dtype):
    # CUDA float32: cuBLAS' reduction order compounds through the recurrence.
    return 1e-4 if (device == "cuda" and dtype == torch.float32) else None


def _make_inputs(T, B, I, H, P=0, bias=True):
    """float64 CPU inputs of one layer; P > 0 adds the projection w_hr."""
    R = P or H
    scale = H**-0.5
    inputs = {
        "x": torch.randn(T, B, I, dtype=torch.float64),
        "h0": torch.randn(B, R, dtype=torch.float64),
        "c0": torch.randn(B, H, dtype=torch.float64),
        "w_ih": scale * torch.randn(4 * H, I, dtype=torch.float64),
        "w_hh": scale * torch.randn(4 * H, R, dtype=torch.float64),
    }
    if bias:
        inputs["b_ih"] = 0.5 * torch.randn(4 * H, dtype=torch.float64)
        inputs["b_hh"] = 0.5 * torch.randn(4 * H, dtype=torch.float64)
    if P:
        inputs["w_hr"] = scale * torch.randn(P, H, dtype=torch.float64)
    return inputs


def _batch_sizes(lengths, T):
    return [sum(1 for n in lengths if n > t) for t in range(T)]


def _torch_lstm(t, lengths=None, with_state=True):
    """torch.nn.LSTM (one layer) on the tensors of ``t``, padded outputs like the op's."""
    x = t["x"]
    H, I = t["w_ih"].shape[0] // 4, x.shape[2]
    P = t["w_hr"].shape[0] if "w_hr" in t else 0
    module = torch.nn.LSTM(I, H, bias="b_ih" in t, proj_size=P, device="meta")
    names = {"w_ih": "weight_ih_l0", "w_hh": "weight_hh_l0", "b_ih": "bias_ih_l0", "b_hh": "bias_hh_l0",
             "w_hr": "weight_hr_l0"}
    params = {names[k]: v for k, v in t.items() if k in names}
    hx = (t["h0"][None], t["c0"][None]) if with_state else None
    if lengths is None:
        y, (h, c) = functional_call(module, params, (x, hx))
    else:
        packed = pack_padded_sequence(x, torch.tensor(lengths), enforce_sorted=True)
        y, (h, c) = functional_call(module, params, (packed, hx))
        y, _ = pad_packed_sequence(y, total_length=x.shape[0])
    return y, h[0], c[0]


def _fused_lstm(t, batch_sizes=None, with_state=True):
    hx = (t["h0"], t["c0"]) if with_state else None
    y, (h, c) = fusednn.ops.lstm(
        t["x"], hx, t["w_ih"], t["w_hh"], t.get("b_ih"), t.get("b_hh"), t.get("w_hr"), batch_sizes=batch_sizes
    )
    return y, h, c


def _outputs_and_grads(fn, tensors, grad_outputs, names):
    outputs = fn(tensors)
    loss = sum((o * g.to(o.dtype)).sum() for o, g in zip(outputs, grad_outputs))
    grads = torch.autograd.grad(loss, [tensors[n] for n in names])
    return list(outputs), list(grads)


def _leaf_copies(master, device, dtype, names):
    return {k: v.to(device, dtype).requires_grad_(k in names) for k, v in master.items()}


def _check_lstm(device, dtype, master, lengths=None, with_state=True, x_view=None):
    """Outputs and gradients of every input of fusednn.ops.lstm against torch.nn.LSTM."""
    T = master["x"].shape[0]
    names = [k for k in master if with_state or k not in ("h0", "c0")]
    ref = _leaf_copies(master, "cpu", torch.float64, names)
    expected_out = _torch_lstm(ref, lengths, with_state)
    grad_outputs = [torch.randn_like(o) for o in expected_out]
    loss = sum((o * g).sum() for o, g in zip(expected_out, grad_outputs))
    expected_grads = torch.autograd.grad(loss, [ref[n] for n in names])

    ours = _leaf_copies(master, device, dtype, names)
    if x_view is not None:  # a non-contiguous view holding the same values
        ours["x"] = x_view(master["x"].to(device, dtype)).requires_grad_()
    batch_sizes = _batch_sizes(lengths, T) if lengths is not None else None
    out, grads = _outputs_and_grads(
        lambda t: _fused_lstm(t, batch_sizes, with_state), ours, [g.to(device) for g in grad_outputs], names
    )
    baseline_out = baseline_grads = [None] * 16
    if dtype in LOW_PRECISION:
        low = _leaf_copies(master, device, dtype, names)
        baseline_out, baseline_grads = _outputs_and_grads(
            lambda t: _torch_lstm(t, lengths, with_state), low, [g.to(device) for g in grad_outputs], names
        )
    for name, actual, expected, base in zip(("y", "h_n", "c_n"), out, expected_out, baseline_out):
        assert actual.dtype == dtype
        assert_close(actual, expected, name=name, rtol=_rtol(device, dtype), lowp_baseline=base)
    for name, actual, expected, base in zip(names, grads, expected_grads, baseline_grads):
        assert_close(actual, expected, name=f"grad {name}", rtol=_rtol(device, dtype), lowp_baseline=base)


# (T, B, I, H, P, bias)
SHAPES = [
    (1, 1, 3, 4, 0, True),
    (17, 3, 5, 7, 0, True),
    (17, 2, 6, 5, 3, True),
    (4, 5, 40, 16, 0, False),
    (9, 1, 4, 8, 5, False),
]


@pytest.mark.parametrize("device,dtype", DEVICE_DTYPES)
@pytest.mark.parametrize("T,B,I,H,P,bias", SHAPES)
def test_lstm_matches_torch(device, dtype, T, B, I, H, P, bias):
    _check_lstm(device, dtype, _make_inputs(T, B, I, H, P, bias))


@pytest.mark.parametrize("device,dtype", DEVICE_DTYPES)
@pytest.mark.parametrize("P", [0, 3])
def test_lstm_default_state(device, dtype, P):
    _check_lstm(device, dtype, _make_inputs(6, 3, 4, 5, P), with_state=False)


@pytest.mark.parametrize("device,dtype", DEVICE_DTYPES)
@pytest.mark.parametrize(
    "lengths,P",
    [([17, 9, 9, 1], 0), ([17, 12, 4], 3), ([1, 1], 0), ([5], 0), ([6, 3, 2], 0)],
    ids=["4seq", "proj", "T1", "batch1", "shorter-than-T"],
)
def test_lstm_variable_lengths(device, dtype, lengths, P):
    T = 8 if lengths == [6, 3, 2] else max(lengths)  # the last case leaves steps with no active row
    _check_lstm(device, dtype, _make_inputs(T, len(lengths), 5, 6, P), lengths=lengths)


@pytest.mark.parametrize("device,dtype", DEVICE_DTYPES)
def test_lstm_non_contiguous_inputs(device, dtype):
    master = _make_inputs(7, 3, 5, 6, 2)
    # x stored batch-major and viewed time-major; weights as strided column views
    _check_lstm(device, dtype, master, x_view=lambda x: x.transpose(0, 1).contiguous().transpose(0, 1))
    x = master["x"].to(device, dtype)
    wide = torch.randn(24, 10, device=device, dtype=dtype)
    w_ih = wide[:, ::2].contiguous().requires_grad_()
    w_ih_view = wide[:, ::2]
    h0, c0 = master["h0"].to(device, dtype), master["c0"].to(device, dtype)
    w_hh, w_hr = master["w_hh"].to(device, dtype), master["w_hr"].to(device, dtype)
    y1, _ = fusednn.ops.lstm(x, (h0, c0), w_ih_view, w_hh.t().contiguous().t(), w_hr=w_hr)
    y2, _ = fusednn.ops.lstm(x.contiguous(), (h0, c0), w_ih, w_hh, w_hr=w_hr)
    torch.testing.assert_close(y1, y2)


def test_lstm_padded_entries_are_ignored():
    master = _make_inputs(6, 3, 4, 5)
    lengths = [6, 4, 2]
    x = master["x"].clone()
    for b, n in enumerate(lengths):
        x[n:, b] = float("nan")  # padding must neither reach the outputs nor the gradients
    t = {k: v.clone().requires_grad_() for k, v in master.items()}
    t["x"] = x.requires_grad_()
    y, h, c = _fused_lstm(t, _batch_sizes(lengths, 6))
    grads = torch.autograd.grad((y.sum() + h.sum() + c.sum()), list(t.values()))
    assert all(torch.isfinite(g).all() for g in [y, h, c, *grads])
    for b, n in enumerate(lengths):
        assert (y[n:, b] == 0).all() and (grads[0][n:, b] == 0).all()


@pytest.mark.parametrize("device,dtype", DEVICE_DTYPES)
@pytest.mark.parametrize(
    "B,I,H,bias,with_state", [(3, 5, 7, True, True), (1, 8, 4, False, True), (4, 3, 6, True, False)]
)
def test_lstm_cell_matches_torch(device, dtype, B, I, H, bias, with_state):
    master = _make_inputs(1, B, I, H, 0, bias)
    master["x"] = master["x"][0]
    names = [k for k in master if with_state or k not in ("h0", "c0")]

    def torch_cell(t):
        module = torch.nn.LSTMCell(I, H, bias=bias, device="meta")
        params = {"weight_ih": t["w_ih"], "weight_hh": t["w_hh"]}
        if bias:
            params.update(bias_ih=t["b_ih"], bias_hh=t["b_hh"])
        return functional_call(module, params, (t["x"], (t["h0"], t["c0"]) if with_state else None))

    def fused_cell(t):
        hx = (t["h0"], t["c0"]) if with_state else None
        return fusednn.ops.lstm_cell(t["x"], hx, t["w_ih"], t["w_hh"], t.get("b_ih"), t.get("b_hh"))

    ref = _leaf_copies(master, "cpu", torch.float64, names)
    grad_outputs = [torch.randn(B, H, dtype=torch.float64) for _ in range(2)]
    expected_out, expected_grads = _outputs_and_grads(torch_cell, ref, grad_outputs, names)
    ours = _leaf_copies(master, device, dtype, names)
    out, grads = _outputs_and_grads(fused_cell, ours, [g.to(device) for g in grad_outputs], names)
    baseline_out = baseline_grads = [None] * 8
    if dtype in LOW_PRECISION:
        low = _leaf_copies(master, device, dtype, names)
        baseline_out, baseline_grads = _outputs_and_grads(torch_cell, low, [g.to(device) for g in grad_outputs], names)
    for name, a, e, base in zip(("h", "c"), out, expected_out, baseline_out):
        assert_close(a, e, name=name, rtol=_rtol(device, dtype), lowp_baseline=base)
    for name, a, e, base in zip(names, grads, expected_grads, baseline_grads):
        assert_close(a, e, name=f"grad {name}", rtol=_rtol(device, dtype), lowp_baseline=base)


def test_gradcheck_lstm():
    master = _make_inputs(4, 3, 3, 4, 2)
    t = {k: v.clone().requires_grad_() for k, v in master.items()}
    names = list(t)
    batch_sizes = [3, 2, 2, 1]

    def fn(*args):
        y, (h, c) = fusednn.ops.lstm(
            args[0], (args[1], args[2]), *args[3:7], w_hr=args[7], batch_sizes=batch_sizes
        )
        return y, h, c

    assert names == ["x", "h0", "c0", "w_ih", "w_hh", "b_ih", "b_hh", "w_hr"]
    assert torch.autograd.gradcheck(fn, tuple(t.values()))


def test_gradcheck_lstm_cell():
    master = _make_inputs(1, 2, 3, 4)
    args = [master[k].clone().requires_grad_() for k in ("x", "h0", "c0", "w_ih", "w_hh", "b_ih", "b_hh")]
    args[0] = args[0][0].detach().requires_grad_()
    assert torch.autograd.gradcheck(lambda x, h, c, *w: fusednn.ops.lstm_cell(x, (h, c), *w), tuple(args))


@pytest.mark.parametrize("device,dtype", [pair for pair in DEVICE_DTYPES if pair[1] != torch.float16])
@pytest.mark.parametrize("P,batch_sizes,save", [(0, None, True), (3, [3, 2, 1, 1], True), (0, [3, 3, 1, 0], False)])
def test_opcheck_lstm_forward(device, dtype, P, batch_sizes, save):
    t = {k: v.to(device, dtype) for k, v in _make_inputs(4, 3, 5, 4, P).items()}
    for v in t.values():
        v.requires_grad_(save)
    args = (t["x"], t["h0"], t["c0"], t["w_ih"], t["w_hh"], t["b_ih"], t["b_hh"], t.get("w_hr"), batch_sizes, save)
    opcheck(torch.ops.fusednn.lstm_forward.default, args)


@pytest.mark.parametrize("device,dtype", [pair for pair in DEVICE_DTYPES if pair[1] != torch.float16])
@pytest.mark.parametrize("P,batch_sizes", [(0, None), (2, [3, 1, 1])])
def test_opcheck_lstm_backward(device, dtype, P, batch_sizes):
    t = {k: v.to(device, dtype) for k, v in _make_inputs(3, 3, 4, 5, P).items()}
    y, h_n, c_n, gates, cells, hidden = torch.ops.fusednn.lstm_forward(
        t["x"], t["h0"], t["c0"], t["w_ih"], t["w_hh"], t["b_ih"], t["b_hh"], t.get("w_hr"), batch_sizes, True
    )
    args = (torch.randn_like(y), torch.randn_like(h_n), None, t["x"], t["h0"], t["c0"], t["w_ih"], t["w_hh"],
            t.get("w_hr"), batch_sizes, y, gates, cells, hidden, True)
    opcheck(torch.ops.fusednn.lstm_backward.default, args)


def test_workspace_saved_only_when_needed():
    t = _make_inputs(3, 2, 4, 5)
    args = [t[k] for k in ("x", "h0", "c0", "w_ih", "w_hh", "b_ih", "b_hh")]
    *_, gates, cells, hidden = torch.ops.fusednn.lstm_forward(*args, None, None, False)
    assert gates.numel() == cells.numel() == hidden.numel() == 0
    *_, gates, cells, hidden = torch.ops.fusednn.lstm_forward(*args, None, None, True)
    assert gates.shape == (3, 2, 20) and cells.shape == (3, 2, 5) and hidden.numel() == 0
    y, *_ = torch.ops.fusednn.lstm_forward(*args, None, None, False)
    y_saved, *_ = torch.ops.fusednn.lstm_forward(*args, None, None, True)
    torch.testing.assert_close(y, y_saved, rtol=0, atol=0)


def test_batch_size_zero():
    t = {k: v.requires_grad_() for k, v in _make_inputs(5, 0, 3, 4, 2).items()}
    y, h, c = _fused_lstm(t)
    y_ref, h_ref, c_ref = _torch_lstm(t)
    assert y.shape == y_ref.shape == (5, 0, 2) and h.shape == h_ref.shape and c.shape == c_ref.shape
    grads = torch.autograd.grad(y.sum() + h.sum() + c.sum(), list(t.values()), allow_unused=True)
    assert all(g is None or (g == 0).all() for g in grads)
    h1, c1 = fusednn.ops.lstm_cell(torch.randn(0, 3), (torch.zeros(0, 4), torch.zeros(0, 4)), torch.randn(16, 3),
                                   torch.randn(16, 4))
    assert h1.shape == c1.shape == (0, 4)


@pytest.mark.parametrize("P,lengths", [(0, None), (3, [5, 3, 3])])
def test_reference_and_cpu_backends_agree(P, lengths):
    master = _make_inputs(5, 3, 4, 6, P)
    cell_master = _make_inputs(1, 3, 4, 6)
    batch_sizes = _batch_sizes(lengths, 5) if lengths else None
    results = {}
    for backend in ("reference", "cpu"):
        t = {k: v.clone().requires_grad_() for k, v in master.items()}
        c = {k: v.clone().requires_grad_() for k, v in cell_master.items()}
        with fusednn.use_backend(backend):
            out = [*_fused_lstm(t, batch_sizes)]
            out += fusednn.ops.lstm_cell(c["x"][0], (c["h0"], c["c0"]), c["w_ih"], c["w_hh"], c["b_ih"], c["b_hh"])
        grads = torch.autograd.grad(sum((o * o).sum() for o in out), [*t.values(), *c.values()])
        results[backend] = [*out, *grads]
    names = ["y", "h_n", "c_n", "cell h", "cell c", *master, *(f"cell {k}" for k in cell_master)]
    assert len(names) == len(results["cpu"])
    for name, a, e in zip(names, results["cpu"], results["reference"]):
        assert_close(a, e, name=name)


def test_forced_cuda_backend_on_cpu_raises():
    t = _make_inputs(2, 2, 3, 4)
    with fusednn.use_backend("cuda"), pytest.raises(NotImplementedError, match="cuda"):
        _fused_lstm(t)


def _bad(**changes):
    """Arguments of fusednn.ops.lstm (float32, T=4, B=3, I=5, H=6) with some replaced."""
    t = {k: v.float() for k, v in _make_inputs(4, 3, 5, 6).items()}
    args = {"x": t["x"], "hx": (t["h0"], t["c0"]), "w_ih": t["w_ih"], "w_hh": t["w_hh"], "b_ih": t["b_ih"],
            "b_hh": t["b_hh"], "w_hr": None, "batch_sizes": None}
    for key, value in changes.items():
        args[key] = value(args) if callable(value) else value
    return args


BAD_LSTM_INPUTS = {
    "x rank": (dict(x=lambda a: a["x"][0]), ValueError, r"x must be a 3-D tensor \[T, B, I\]; got shape \(3, 5\)"),
    "x integer": (dict(x=lambda a: a["x"].long()), TypeError, "x must be float32.*got torch.int64"),
    "x empty T": (dict(x=lambda a: a["x"][:0]), ValueError, "T >= 1"),
    "feature size": (
        dict(x=lambda a: torch.randn(4, 3, 7)), ValueError, r"w_ih must be \[4H, I\].*\(24, 7\).*\(24, 5\)"
    ),
    "w_ih rows": (dict(w_ih=lambda a: a["w_ih"][:23]), ValueError, "w_ih must be"),
    "w_hh shape": (
        dict(w_hh=lambda a: a["w_hh"][:, :5]), ValueError, r"w_hh must be \[4H, H\] = \(24, 6\); got shape \(24, 5\)"
    ),
    "b_ih shape": (dict(b_ih=lambda a: a["b_ih"][:5]), ValueError, r"b_ih must be \[4H\]"),
    "h0 shape": (
        dict(hx=lambda a: (a["hx"][0][:2], a["hx"][1])), ValueError, r"h0 must be \[B, H\] = \(3, 6\); got shape \(2, 6\)"
    ),
    "c0 shape": (dict(hx=lambda a: (a["hx"][0], a["hx"][1][:, :4])), ValueError, r"c0 must be \[B, H\] = \(3, 6\)"),
    "hx not a pair": (dict(hx=lambda a: a["hx"][0]), TypeError, "hx must be a pair"),
    "w_hh dtype": (
        dict(w_hh=lambda a: a["w_hh"].double()), TypeError, "w_hh must have x's dtype torch.float32; got torch.float64"
    ),
    "c0 dtype": (dict(hx=lambda a: (a["hx"][0], a["hx"][1].half())), TypeError, "c0 must have x's dtype"),
    "device": (dict(w_ih=lambda a: a["w_ih"].to("meta")), ValueError, "w_ih must be on x's device cpu; got meta"),
    "w_hr shape": (dict(w_hr=torch.randn(3, 5)), ValueError, r"w_hr must be \[P, H\] = \(3, 6\)"),
    "batch_sizes increasing": (dict(batch_sizes=[2, 3, 1, 1]), ValueError, "non-increasing"),
    "batch_sizes length": (dict(batch_sizes=[3, 2]), ValueError, "T = 4 entries"),
    "batch_sizes too big": (dict(batch_sizes=[4, 2, 1, 1]), ValueError, r"batch_sizes\[0\] must be in \[0, B = 3\]"),
    "batch_sizes float": (dict(batch_sizes=torch.tensor([3.0, 2, 1, 1])), TypeError, "integers"),
}


@pytest.mark.parametrize("changes,error,match", BAD_LSTM_INPUTS.values(), ids=BAD_LSTM_INPUTS.keys())
def test_lstm_bad_inputs(changes, error, match):
    with pytest.raises(error, match=match):
        fusednn.ops.lstm(**_bad(**changes))


def test_lstm_cell_bad_inputs():
    t = _make_inputs(1, 3, 5, 6)
    x, h, c, w_ih, w_hh = t["x"][0], t["h0"], t["c0"], t["w_ih"], t["w_hh"]
    with pytest.raises(ValueError, match=r"x must be a 2-D tensor \[B, I\]; got shape \(1, 3, 5\)"):
        fusednn.ops.lstm_cell(x[None], (h, c), w_ih, w_hh)
    with pytest.raises(ValueError, match=r"h must be \[B, H\] = \(3, 6\); got shape \(3, 5\)"):
        fusednn.ops.lstm_cell(x, (h[:, :5], c), w_ih, w_hh)
    with pytest.raises(TypeError, match="x must be float32"):
        fusednn.ops.lstm_cell(x.int(), (h, c), w_ih, w_hh)
    with pytest.raises(TypeError, match="w_ih must have x's dtype"):
        fusednn.ops.lstm_cell(x, (h, c), w_ih.float(), w_hh)


@pytest.mark.parametrize("dtype", LOW_PRECISION)
def test_lstm_low_precision_on_cpu(dtype):
    """The CPU kernels also take float16/bfloat16 (fp32 cell state): 2x rule against the
    reference run in that precision."""
    master = _make_inputs(9, 3, 5, 8, 4)
    lengths = [9, 6, 2]
    names = list(master)
    ref = _leaf_copies(master, "cpu", torch.float64, names)
    grad_outputs = [torch.randn(9, 3, 4, dtype=torch.float64), torch.randn(3, 4, dtype=torch.float64),
                    torch.randn(3, 8, dtype=torch.float64)]
    expected_out, expected_grads = _outputs_and_grads(lambda t: _torch_lstm(t, lengths), ref, grad_outputs, names)
    results = {}
    for backend in ("cpu", "reference"):
        with fusednn.use_backend(backend):
            results[backend] = _outputs_and_grads(
                lambda t: _fused_lstm(t, _batch_sizes(lengths, 9)), _leaf_copies(master, "cpu", dtype, names),
                grad_outputs, names)
    for i, name in enumerate(["y", "h_n", "c_n"]):
        assert results["cpu"][0][i].dtype == dtype
        assert_close(results["cpu"][0][i], expected_out[i], name=name, lowp_baseline=results["reference"][0][i])
    for i, name in enumerate(names):
        assert_close(results["cpu"][1][i], expected_grads[i], name=f"grad {name}",
                     lowp_baseline=results["reference"][1][i])
