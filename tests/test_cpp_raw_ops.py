"""The registered C++ LSTM ops called directly (torch.ops.fusednn.lstm_forward /
lstm_backward), without the Python wrappers' validation in front of them.

Every tensor argument is checked in C++ before a kernel reads it: a bad one raises
TypeError (dtype) or ValueError (anything else) naming it, and nothing crashes or
reads out of bounds (``make sanitize`` runs these under ASan and UBSan). NaN and
+-inf inputs are well defined in the float32 kernels.
"""

import pytest
import torch

import fusednn  # noqa: F401  (loads fusednn._C, which registers the ops)

T, B, I, H, P = 4, 3, 5, 6, 2
CPU_ONLY = torch._C.DispatchKeySet(torch._C.DispatchKey.CPU)


def _forward_args(dtype=torch.float32, projected=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    R = P if projected else H

    def randn(*shape, scale=1.0):
        return (scale * torch.randn(*shape, generator=g, dtype=torch.float64)).to(dtype)

    return {
        "x": randn(T, B, I),
        "h0": randn(B, R),
        "c0": randn(B, H),
        "w_ih": randn(4 * H, I, scale=H**-0.5),
        "w_hh": randn(4 * H, R, scale=H**-0.5),
        "b_ih": randn(4 * H, scale=0.5),
        "b_hh": randn(4 * H, scale=0.5),
        "w_hr": randn(P, H, scale=H**-0.5) if projected else None,
        "batch_sizes": None,
        "save_workspace": True,
    }


def _backward_args(dtype=torch.float32, projected=False, seed=0):
    f = _forward_args(dtype, projected, seed)
    y, h_n, c_n, gates, cells, hidden = torch.ops.fusednn.lstm_forward(**f)
    g = torch.Generator().manual_seed(seed + 1)
    return {
        "grad_y": torch.randn(y.shape, generator=g).to(dtype),
        "grad_h_n": torch.randn(h_n.shape, generator=g).to(dtype),
        "grad_c_n": torch.randn(c_n.shape, generator=g).to(dtype),
        **{k: f[k] for k in ("x", "h0", "c0", "w_ih", "w_hh", "w_hr", "batch_sizes")},
        "y": y,
        "gates": gates,
        "cells": cells,
        "hidden": hidden,
        "input_grad": True,
    }


OPS = {"forward": (torch.ops.fusednn.lstm_forward, _forward_args),
       "backward": (torch.ops.fusednn.lstm_backward, _backward_args)}


def _non_contiguous(t):
    """The same values with a non-contiguous layout (every other element of a wider tensor)."""
    wide = torch.empty(*t.shape[:-1], 2 * t.shape[-1], dtype=t.dtype)
    wide[..., ::2] = t
    return wide[..., ::2]


# (op, argument, replacement, error, message fragment). Replacements take the valid
# argument; the message fragment must name the argument.
BAD_ARGUMENTS = [
    ("forward", "x", lambda t: t.long(), TypeError, "x must be torch.float32, torch.float64, torch.float16 or"),
    ("forward", "x", lambda t: t.int(), TypeError, "got torch.int32"),
    ("forward", "x", lambda t: t[0], ValueError, r"x must be [T, B, I] (3-D); got [3, 5]"),
    ("forward", "x", lambda t: t[:0], ValueError, "x must have at least one time step"),
    ("forward", "h0", lambda t: t.double(), TypeError, "h0 must be torch.float32; got torch.float64"),
    ("forward", "h0", lambda t: t[:2], ValueError, "h0 must be [B, H] = [3, 6]; got [2, 6]"),
    ("forward", "c0", lambda t: t.half(), TypeError, "c0 must be torch.float32; got torch.float16"),
    ("forward", "c0", lambda t: t[:, :5], ValueError, "c0 must be [B, H] = [3, 6]; got [3, 5]"),
    ("forward", "w_ih", lambda t: t[:23], ValueError, "w_ih must be [4H, I] with I = 5; got [23, 5]"),
    ("forward", "w_ih", lambda t: t[:, :4], ValueError, "w_ih must be [4H, I] with I = 5; got [24, 4]"),
    ("forward", "w_ih", lambda t: t[None], ValueError, "w_ih must be [4H, I]"),
    ("forward", "w_ih", lambda t: t.bfloat16(), TypeError, "w_ih must be torch.float32; got torch.bfloat16"),
    ("forward", "w_hh", lambda t: t[:, :5], ValueError, "w_hh must be [4H, H] = [24, 6]; got [24, 5]"),
    ("forward", "w_hh", lambda t: t.double(), TypeError, "w_hh must be torch.float32"),
    ("forward", "b_ih", lambda t: t[:5], ValueError, "b_ih must be [4H] = [24]; got [5]"),
    ("forward", "b_ih", lambda t: t[:1], ValueError, "b_ih must be [4H]"),  # broadcastable, still wrong
    ("forward", "b_hh", lambda t: t[None], ValueError, "b_hh must be [4H]"),
    ("forward", "b_hh", lambda t: t.half(), TypeError, "b_hh must be torch.float32"),
    ("forward", "w_hr", lambda t: torch.randn(3, 5), ValueError, "w_hr must be [P, H] with H = 6; got [3, 5]"),
    ("forward", "w_hr", lambda t: torch.randn(2, 6, dtype=torch.float64), TypeError, "w_hr must be torch.float32"),
    ("forward", "batch_sizes", lambda t: [3, 2], ValueError, "batch_sizes must have one entry per time step"),
    ("forward", "batch_sizes", lambda t: [4, 3, 1, 1], ValueError, "batch_sizes[0] must be in [0, B = 3]; got 4"),
    ("forward", "batch_sizes", lambda t: [3, 1, 2, 0], ValueError, "batch_sizes must be non-increasing"),
    ("forward", "batch_sizes", lambda t: [3, -1, -1, -1], ValueError, "batch_sizes[1] must be in [0, B = 3]"),
    ("backward", "grad_y", lambda t: t.double(), TypeError, "grad_y must be torch.float32; got torch.float64"),
    ("backward", "grad_y", lambda t: t[:, :2], ValueError, "grad_y must be [T, B, H] = [4, 3, 6]; got [4, 2, 6]"),
    ("backward", "grad_y", lambda t: t[0], ValueError, "grad_y must be [T, B, H]"),
    ("backward", "grad_h_n", lambda t: t[0], ValueError, "grad_h_n must be [B, H] = [3, 6]; got [6]"),
    ("backward", "grad_h_n", lambda t: t.half(), TypeError, "grad_h_n must be torch.float32"),
    ("backward", "grad_c_n", lambda t: t[:, :1], ValueError, "grad_c_n must be [B, H]"),
    ("backward", "grad_c_n", lambda t: t.bfloat16(), TypeError, "grad_c_n must be torch.float32"),
    # x decides the dtype and device the other tensors must share.
    ("backward", "x", lambda t: t.double(), TypeError, "w_ih must be torch.float64; got torch.float32"),
    ("backward", "x", lambda t: t[:, :, :4], ValueError, "w_ih must be [4H, I] with I = 4"),
    ("backward", "h0", lambda t: t[:, :5], ValueError, "h0 must be [B, H]"),
    ("backward", "c0", lambda t: t.double(), TypeError, "c0 must be torch.float32"),
    ("backward", "w_ih", lambda t: t[:23], ValueError, "w_ih must be [4H, I]"),
    ("backward", "w_hh", lambda t: t.half(), TypeError, "w_hh must be torch.float32"),
    ("backward", "w_hr", lambda t: torch.randn(2, 5), ValueError, "w_hr must be [P, H]"),
    ("backward", "y", lambda t: t[:3], ValueError, "y must be [T, B, H] = [4, 3, 6]; got [3, 3, 6]"),
    ("backward", "y", lambda t: t.double(), TypeError, "y must be torch.float32"),
    ("backward", "gates", lambda t: t[:, :, :20], ValueError, "gates must be [T, B, 4H] = [4, 3, 24]; got [4, 3, 20]"),
    ("backward", "gates", lambda t: torch.empty(0), ValueError, "gates must be [T, B, 4H]"),  # save_workspace=False
    ("backward", "gates", lambda t: t.double(), TypeError, "gates must be torch.float32; got torch.float64"),
    ("backward", "gates", _non_contiguous, ValueError, "gates must be contiguous"),
    ("backward", "gates", lambda t: t.transpose(0, 1).contiguous().transpose(0, 1), ValueError, "gates must be contiguous"),
    ("backward", "cells", lambda t: t.reshape(-1), ValueError, "cells must be [T, B, H] = [4, 3, 6]; got [72]"),
    ("backward", "cells", lambda t: t.half(), TypeError, "cells must be torch.float32; got torch.float16"),
    ("backward", "cells", _non_contiguous, ValueError, "cells must be contiguous"),
    ("backward", "hidden", lambda t: torch.zeros(T, B, H), ValueError, "hidden must be [0] (empty without w_hr)"),
    ("backward", "hidden", lambda t: t.double(), TypeError, "hidden must be torch.float32"),
    ("backward", "batch_sizes", lambda t: [3, 3, 3, 4], ValueError, "batch_sizes[3] must be in [0, B = 3]"),
]


def _case_id(case):
    op, name, _, error, _ = case
    return f"{op}-{name}-{error.__name__}"


def _call(op, args, **changes):
    fn, _ = OPS[op]
    return fn(**{**args, **changes})


@pytest.mark.parametrize("op,name,replace,error,fragment", BAD_ARGUMENTS, ids=map(_case_id, BAD_ARGUMENTS))
def test_bad_argument_raises_naming_it(op, name, replace, error, fragment):
    args = OPS[op][1](projected=(name == "w_hr"))
    with pytest.raises(error) as info:
        _call(op, args, **{name: replace(args[name])})
    message = str(info.value)
    assert f"fusednn::lstm_{op}: " in message
    assert fragment in message, message


# The projected op's own arguments: hidden holds the unprojected states [T, B, H].
@pytest.mark.parametrize("name,replace,error,fragment", [
    ("hidden", lambda t: t[:, :, :5], ValueError, "hidden must be [T, B, H] = [4, 3, 6]; got [4, 3, 5]"),
    ("hidden", lambda t: torch.empty(0), ValueError, "hidden must be [T, B, H]"),
    ("hidden", lambda t: t.half(), TypeError, "hidden must be torch.float32; got torch.float16"),
    ("hidden", _non_contiguous, ValueError, "hidden must be contiguous"),
    ("grad_y", lambda t: torch.randn(T, B, H), ValueError, "grad_y must be [T, B, P] = [4, 3, 2]; got [4, 3, 6]"),
    ("grad_h_n", lambda t: torch.randn(B, H), ValueError, "grad_h_n must be [B, P] = [3, 2]; got [3, 6]"),
    ("h0", lambda t: torch.randn(B, H), ValueError, "h0 must be [B, P] = [3, 2]; got [3, 6]"),
    ("w_hh", lambda t: torch.randn(4 * H, H), ValueError, "w_hh must be [4H, P] = [24, 2]; got [24, 6]"),
])
def test_bad_projected_backward_argument(name, replace, error, fragment):
    args = _backward_args(projected=True)
    with pytest.raises(error, match="fusednn::lstm_backward: ") as info:
        _call("backward", args, **{name: replace(args[name])})
    assert fragment in str(info.value), str(info.value)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_workspace_in_storage_dtype_is_rejected(dtype):
    """A half sequence's workspace is float32; a half one would be read past its end."""
    args = _backward_args(dtype)
    assert args["gates"].dtype == args["cells"].dtype == torch.float32
    with pytest.raises(TypeError, match=f"gates must be torch.float32; got {dtype}"):
        _call("backward", args, gates=args["gates"].to(dtype))
    with pytest.raises(TypeError, match=f"cells must be torch.float32; got {dtype}"):
        _call("backward", args, cells=args["cells"].to(dtype))


def _tensor_arguments(op, projected):
    args = OPS[op][1](projected=projected)
    return args, [k for k, v in args.items() if isinstance(v, torch.Tensor)]


@pytest.mark.parametrize("op,projected", [("forward", False), ("forward", True), ("backward", False), ("backward", True)])
def test_meta_argument_reaching_the_cpu_kernel_raises(op, projected):
    """A meta tensor among CPU ones normally dispatches to the fake kernel; sent to the
    CPU kernel anyway (redispatch), it is refused by name."""
    args, names = _tensor_arguments(op, projected)
    overload = OPS[op][0].default
    for name in names:
        changed = {**args, name: args[name].to("meta")}
        where = "a cpu tensor" if name == "x" else "on cpu"
        with pytest.raises(ValueError, match=rf"fusednn::lstm_{op}: {name} must be {where}; got meta"):
            overload.redispatch(CPU_ONLY, **changed)


def _variants(t):
    """Wrong versions of a tensor argument: other dtypes, shapes and layouts."""
    yield from (t.to(d) for d in (torch.float16, torch.bfloat16, torch.float64, torch.int32, torch.bool))
    yield t.reshape(-1)
    yield t[..., :-1] if t.dim() and t.shape[-1] else torch.zeros(1)
    yield torch.cat([t, t], dim=0) if t.dim() else t.reshape(1)
    yield t[None]
    yield torch.empty(0)
    if t.dim() and t.numel():
        yield _non_contiguous(t)
        yield _non_contiguous(t).half()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("op,projected", [("forward", False), ("forward", True), ("backward", False), ("backward", True)])
def test_any_wrong_tensor_raises_or_runs(op, projected, dtype):
    """Every single-argument corruption raises ValueError/TypeError, or is an input the op
    takes: another layout of the same values (then the results agree) or, for the
    forward's x, a longer sequence. Never another error."""
    args = OPS[op][1](dtype=dtype, projected=projected)
    names = [k for k, v in args.items() if isinstance(v, torch.Tensor)]
    expected = _call(op, args)
    for name in names:
        for bad in _variants(args[name]):
            try:
                out = _call(op, args, **{name: bad})
            except (ValueError, TypeError) as e:
                assert f"fusednn::lstm_{op}: " in str(e)
                continue
            assert bad.dtype == args[name].dtype, (name, bad.dtype, bad.shape)
            if bad.shape == args[name].shape:
                for a, b in zip(out, expected):
                    torch.testing.assert_close(a, b, equal_nan=True)
            else:
                assert (op, name) == ("forward", "x") and bad.shape[1:] == args[name].shape[1:], (name, bad.shape)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("projected", [False, True])
def test_non_contiguous_inputs_match_contiguous(dtype, projected):
    for op in ("forward", "backward"):
        args = OPS[op][1](dtype=dtype, projected=projected)
        layouts = {k: _non_contiguous(v) for k, v in args.items()
                   if isinstance(v, torch.Tensor) and k not in ("gates", "cells", "hidden")}
        for a, b in zip(_call(op, args, **layouts), _call(op, args)):
            torch.testing.assert_close(a, b)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("projected", [False, True])
def test_half_types_run_with_float32_workspace(dtype, projected):
    args = _backward_args(dtype, projected)
    reference = _backward_args(torch.float32, projected)
    out = _call("backward", args)
    expected = _call("backward", reference)
    tol = {torch.float16: 2e-2, torch.bfloat16: 1e-1}[dtype]
    for name in ("y", "gates", "cells"):
        torch.testing.assert_close(args[name].float(), reference[name], rtol=tol, atol=tol)
    for a, b in zip(out, expected):
        assert a.dtype == dtype and a.shape == b.shape
        torch.testing.assert_close(a.float(), b, rtol=tol, atol=tol)


def _torch_lstm(args):
    """torch.nn.LSTM (one layer) on the op's arguments: y, h_n, c_n."""
    x, w_ih = args["x"], args["w_ih"]
    module = torch.nn.LSTM(x.shape[2], w_ih.shape[0] // 4, dtype=x.dtype)
    with torch.no_grad():
        for name, key in (("weight_ih_l0", "w_ih"), ("weight_hh_l0", "w_hh"), ("bias_ih_l0", "b_ih"),
                          ("bias_hh_l0", "b_hh")):
            getattr(module, name).copy_(args[key])
        y, (h, c) = module(x, (args["h0"][None], args["c0"][None]))
    return y, h[0], c[0]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_nan_input_gives_nan_outputs(dtype):
    """NaN in one row of x poisons that row from its step on, as in torch; the other
    rows stay finite (the float32 exp used to convert NaN to int: undefined)."""
    args = _forward_args(dtype)
    args["x"][1, 2, 0] = float("nan")
    for save in (False, True):
        y, h_n, c_n, gates, cells, _ = torch.ops.fusednn.lstm_forward(**{**args, "save_workspace": save})
        y_ref, h_ref, c_ref = _torch_lstm(args)
        for a, e in ((y, y_ref), (h_n, h_ref), (c_n, c_ref)):
            assert torch.equal(a.isnan(), e.isnan())
            torch.testing.assert_close(a, e, equal_nan=True)
        assert y[1:, 2].isnan().all() and y[:1].isfinite().all() and y[:, :2].isfinite().all()
        if save:
            assert gates[1:, 2].isnan().any() and gates[:, :2].isfinite().all()
    args = _backward_args(dtype)
    args["grad_y"][2, 0, 1] = float("nan")
    grad_x, grad_h0, grad_c0, *_ = torch.ops.fusednn.lstm_backward(**args)
    assert grad_x[:3, 0].isnan().any() and grad_h0[0].isnan().any() and grad_x[:, 1:].isfinite().all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_infinite_input_saturates_like_torch(dtype):
    """+-inf in x drives the gates to 0/1/+-1: finite outputs where torch's are finite."""
    args = _forward_args(dtype)
    args["x"][0, 0, 1] = float("inf")
    args["x"][2, 1, 3] = float("-inf")
    args["x"][3, 2, :] = float("inf")  # one inf per gate pre-activation would do; here the sums may meet
    y, h_n, c_n, gates, cells, _ = torch.ops.fusednn.lstm_forward(**args)
    y_ref, h_ref, c_ref = _torch_lstm(args)
    for a, e in ((y, y_ref), (h_n, h_ref), (c_n, c_ref)):
        assert torch.equal(a.isfinite(), e.isfinite())
        torch.testing.assert_close(a, e, equal_nan=True)
    assert y[:, :2].isfinite().all() and gates[:, :2].isfinite().all()
    assert (gates[0, 0].abs() <= 1).all()


@pytest.mark.parametrize("extreme", [float("nan"), float("inf"), float("-inf"), 1e30, -1e30, 88.8, -87.5])
def test_extreme_cell_states_stay_defined(extreme):
    """Extreme states reach tanh of the cell; the float32 kernel's activations take them."""
    args = _forward_args(torch.float32)
    args["c0"][0, :] = extreme
    args["h0"][1, :] = extreme if extreme == extreme else 0.0
    y, h_n, c_n, *_ = torch.ops.fusednn.lstm_forward(**args)
    y_ref, h_ref, c_ref = _torch_lstm(args)
    for a, e in ((y, y_ref), (h_n, h_ref), (c_n, c_ref)):
        assert torch.equal(a.isnan(), e.isnan())
        torch.testing.assert_close(a, e, equal_nan=True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("sizes", [dict(B=0), dict(I=0), dict(H=0), dict(P=0), dict(T=1, B=1, I=1, H=1)],
                         ids=lambda s: "-".join(f"{k}{v}" for k, v in s.items()))
def test_degenerate_sizes(sizes, dtype):
    """Empty dimensions go through both ops (the kernels see null pointers and zero widths)."""
    d = {"T": 3, "B": 2, "I": 3, "H": 4, **sizes}
    proj = sizes.get("P")
    R = d["H"] if proj is None else proj
    x = torch.randn(d["T"], d["B"], d["I"]).to(dtype)
    w_hr = torch.randn(proj, d["H"]).to(dtype) if proj is not None else None
    args = dict(x=x, h0=torch.randn(d["B"], R).to(dtype), c0=torch.randn(d["B"], d["H"]).to(dtype),
                w_ih=torch.randn(4 * d["H"], d["I"]).to(dtype), w_hh=torch.randn(4 * d["H"], R).to(dtype),
                b_ih=torch.randn(4 * d["H"]).to(dtype), b_hh=None, w_hr=w_hr)
    for batch_sizes in (None, [d["B"]] + [max(d["B"] - 1, 0)] * (d["T"] - 1)):
        y, h_n, c_n, gates, cells, hidden = torch.ops.fusednn.lstm_forward(**args, batch_sizes=batch_sizes,
                                                                          save_workspace=True)
        assert y.shape == (d["T"], d["B"], R) and c_n.shape == (d["B"], d["H"])
        assert not y.isnan().any() and not c_n.isnan().any()
        grads = torch.ops.fusednn.lstm_backward(
            torch.ones_like(y), None, torch.ones_like(c_n), x, args["h0"], args["c0"], args["w_ih"], args["w_hh"],
            w_hr, batch_sizes, y, gates, cells, hidden, True)
        assert grads[0].shape == x.shape and grads[3].shape == (4 * d["H"], d["I"] + R)
        assert not any(g.isnan().any() for g in grads)


def test_batch_sizes_of_zero_rows():
    """Steps where no row is active, and rows never active at all."""
    args = _backward_args()
    for batch_sizes in ([3, 0, 0, 0], [2, 2, 1, 0], [0, 0, 0, 0]):
        f = {k: v for k, v in _forward_args().items() if k != "batch_sizes"}
        y, h_n, c_n, gates, cells, hidden = torch.ops.fusednn.lstm_forward(**f, batch_sizes=batch_sizes)
        assert not y.isnan().any()
        out = _call("backward", args, batch_sizes=batch_sizes, y=y, gates=gates, cells=cells, hidden=hidden)
        assert not any(g.isnan().any() for g in out)


def test_schemas_are_in_the_fusednn_namespace():
    for name in ("lstm_forward", "lstm_backward"):
        assert getattr(torch.ops.fusednn, name).default._schema.name == f"fusednn::{name}"
