"""The ConvLSTM op beyond what every op gets from the registry (tests/test_registry.py): the
reference against a direct formulation of its formula, the C++ kernel against the reference
backend, the memory formats of outputs and gradients, the workspace saved only for
backward, and the C++ op's own argument checks."""

import pytest
import torch
import torch.nn.functional as F

import fusednn
from fusednn import registry, testing
from fusednn.cases.conv_lstm import conv_lstm_tensors
from fusednn.testing import assert_close

INFO = registry.get("conv_lstm")
CPU_ONLY = torch._C.DispatchKeySet(torch._C.DispatchKey.CPU)


def _conv_same(inp, weight):
    """Cross-correlation with zero "same" padding as a sum over the kernel's taps: tap (dy, dx)
    multiplies every pixel's channels with weight[:, :, dy, dx] at that offset."""
    kh, kw = weight.shape[2], weight.shape[3]
    H, W = inp.shape[2], inp.shape[3]
    padded = F.pad(inp, (kw // 2, kw // 2, kh // 2, kh // 2))
    out = 0
    for dy in range(kh):
        for dx in range(kw):
            out = out + torch.einsum("oc,bchw->bohw", weight[:, :, dy, dx], padded[:, :, dy:dy + H, dx:dx + W])
    return out


def _direct_conv_lstm(x, hx, w_ih, w_hh, b_ih=None, b_hh=None):
    """The ConvLSTM's formula written out step by step, independently of the reference."""
    T, B, _, H, W = x.shape
    Hc = w_ih.shape[0] // 4
    h, c = hx if hx is not None else (x.new_zeros(B, Hc, H, W), x.new_zeros(B, Hc, H, W))
    bias = sum(b for b in (b_ih, b_hh) if b is not None)
    ys = []
    for t in range(T):
        z = _conv_same(x[t], w_ih) + _conv_same(h, w_hh)
        if b_ih is not None or b_hh is not None:
            z = z + bias[None, :, None, None]
        i, f, o = (1 / (1 + torch.exp(-z[:, k * Hc:(k + 1) * Hc])) for k in (0, 1, 3))
        g = torch.tanh(z[:, 2 * Hc:3 * Hc])
        c = f * c + i * g
        h = o * torch.tanh(c)
        ys.append(h)
    return torch.stack(ys), (h, c)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_reference_matches_the_direct_formulation(dtype):
    """fusednn.reference.conv_lstm (the truth of the registry tests) against the formula
    written out with explicit kernel taps, outputs and every gradient, on every small sample
    (the large ones differ only in size)."""
    for sample in (s for s in INFO.samples() if not s.low_precision):
        ours = testing.run_sample(INFO.reference, testing.Inputs(INFO.function, sample, dtype, "cpu"))
        truth = testing.run_sample(_direct_conv_lstm, testing.Inputs(INFO.function, sample, torch.float64, "cpu"),
                                   ours.differentiated)
        assert len(ours.outputs) == 3 and len(ours.grads) == len(truth.grads)
        for i, (a, e) in enumerate(zip(ours.outputs + ours.grads, truth.outputs + truth.grads)):
            assert_close(a, e, name=f"{sample.name} tensor {i}", precision=dtype)


def test_cpu_kernel_agrees_with_the_reference_backend():
    """The same float32 call on the C++ kernel and on the reference backend: outputs and every
    gradient agree to float32's 1e-5, and only the kernel calls the registered ops."""
    sample = next(s for s in INFO.samples() if s.name == "large-7x9")
    results = {}
    for backend in ("cpu", "reference"):
        with fusednn.use_backend(backend):
            run = testing.run_sample(INFO.function, testing.Inputs(INFO.function, sample, torch.float32, "cpu"))
            calls = {str(c.op) for c in testing.fusednn_calls(INFO, sample, "cpu", torch.float32)}
        results[backend] = run.outputs + run.grads
        expected = {"fusednn.conv_lstm_forward.default", "fusednn.conv_lstm_backward.default"}
        assert calls == (expected if backend == "cpu" else set()), (backend, calls)
    for i, (a, b) in enumerate(zip(results["cpu"], results["reference"])):
        assert_close(a, b.double(), name=f"tensor {i}", precision=torch.float32)


def _layer(T=3, B=2, C=3, Hc=4, H=5, W=6, layout="contiguous", **options):
    """(x, h0, c0, w_ih, w_hh, b_ih, b_hh), float32, x in `layout`, all requiring grad."""
    t = {k: (v.detach().float() if v is not None else None) for k, v in
         conv_lstm_tensors(T, B, C, Hc, H, W, **options).items()}
    x = t["x"]
    if layout == "channels_last":  # frames stored as [T, B, H, W, C]
        x = x.permute(0, 1, 3, 4, 2).contiguous().permute(0, 1, 4, 2, 3)
    elif layout == "batch_major":  # stored as [B, T, C, H, W]
        x = x.transpose(0, 1).contiguous().transpose(0, 1)
    values = [x, t["h0"], t["c0"], t["w_ih"], t["w_hh"], t["b_ih"], t["b_hh"]]
    return [v.requires_grad_() if v is not None else None for v in values]


def _is_channels_last_frames(t):
    return t.permute(0, 1, 3, 4, 2).is_contiguous()


@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "batch_major"])
def test_memory_formats_follow_the_input_frames(layout):
    """Channels-last frames of x give channels-last outputs and x and state gradients (as
    torch's convolutions do); other layouts contiguous ones. Weight and bias gradients are
    contiguous always (what optimizers and DDP's buckets expect)."""
    x, h0, c0, *params = _layer(layout=layout)
    y, (h_n, c_n) = fusednn.ops.conv_lstm(x, (h0, c0), *params)
    grads = torch.autograd.grad((y, h_n, c_n), [x, h0, c0, *params],
                                [torch.randn_like(y), torch.randn_like(h_n), torch.randn_like(c_n)])
    frames, states = [y, grads[0]], [h_n, c_n, grads[1], grads[2]]
    if layout == "channels_last":
        assert all(_is_channels_last_frames(t) and not t.is_contiguous() for t in frames)
        assert all(t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous() for t in states)
    else:
        assert all(t.is_contiguous() for t in frames + states)
    assert all(g.is_contiguous() for g in grads[3:])


def test_workspace_saved_only_when_needed():
    x, h0, c0, w_ih, w_hh, b_ih, b_hh = (t.detach() for t in _layer())
    args = (x, h0, c0, w_ih, w_hh, b_ih, b_hh)
    y, h_n, c_n, gates, cells = torch.ops.fusednn.conv_lstm_forward(*args, False)
    assert gates.numel() == cells.numel() == 0
    y_saved, h_saved, c_saved, gates, cells = torch.ops.fusednn.conv_lstm_forward(*args, True)
    assert gates.shape == (3, 2, 5, 6, 16) and cells.shape == (3, 2, 5, 6, 4)
    assert gates.dtype == cells.dtype == torch.float32
    for a, b in ((y, y_saved), (h_n, h_saved), (c_n, c_saved)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    # the public op saves the workspace only when a gradient is needed
    x, h0, c0, *params = _layer()
    for grad_mode, saved in ((False, False), (True, True)):
        with testing.recording_fusednn_calls() as calls, torch.set_grad_enabled(grad_mode):
            fusednn.ops.conv_lstm(x, None, *params)
        assert [c.args[-1] for c in calls] == [saved]


def test_backward_of_a_forward_without_workspace_raises():
    x, h0, c0, w_ih, w_hh, b_ih, b_hh = _layer()
    y, *_ = torch.ops.fusednn.conv_lstm_forward(x, h0, c0, w_ih, w_hh, b_ih, b_hh, False)
    with pytest.raises(RuntimeError, match="save_workspace=False, so it cannot be differentiated"):
        y.sum().backward()


def test_opcheck_forward_without_workspace():
    """The forward run for inference (save_workspace=False), which the registry's opcheck
    samples (all differentiated) do not reach."""
    args = [t.detach() for t in _layer()]
    testing.opcheck(torch.ops.fusednn.conv_lstm_forward.default, (*args, False))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_types_keep_the_state_in_float32(dtype):
    """A float16/bfloat16 sequence saves its gate activations and cell states in float32,
    and its outputs match the reference run the same way (convolutions in the half type)."""
    x, h0, c0, w_ih, w_hh, b_ih, b_hh = (t.detach().to(dtype) for t in _layer(T=4, Hc=8))
    *outputs, gates, cells = torch.ops.fusednn.conv_lstm_forward(x, h0, c0, w_ih, w_hh, b_ih, b_hh, True)
    assert gates.dtype == cells.dtype == torch.float32
    assert all(o.dtype == dtype for o in outputs)
    y_base, (h_base, c_base) = INFO.reference(x, (h0, c0), w_ih, w_hh, b_ih, b_hh)
    y, (h, c) = INFO.reference(x.double(), (h0.double(), c0.double()), w_ih.double(), w_hh.double(), b_ih.double(),
                               b_hh.double())
    for name, ours, base, expected in zip(("y", "h_n", "c_n"), outputs, (y_base, h_base, c_base), (y, h, c)):
        assert_close(ours, expected, name=name, lowp_baseline=base)


# --------------------------------------------------------------------------- the C++ op's checks


def _forward_args():
    x, h0, c0, w_ih, w_hh, b_ih, b_hh = (t.detach() for t in _layer())
    return dict(x=x, h0=h0, c0=c0, w_ih=w_ih, w_hh=w_hh, b_ih=b_ih, b_hh=b_hh, save_workspace=True)


def _backward_args():
    f = _forward_args()
    y, h_n, c_n, gates, cells = torch.ops.fusednn.conv_lstm_forward(**f)
    return dict(grad_y=torch.randn_like(y), grad_h_n=torch.randn_like(h_n), grad_c_n=torch.randn_like(c_n),
                **{k: f[k] for k in ("x", "h0", "c0", "w_ih", "w_hh")}, y=y, gates=gates, cells=cells,
                output_mask=[True, True, True])


OPS = {"forward": (torch.ops.fusednn.conv_lstm_forward, _forward_args),
       "backward": (torch.ops.fusednn.conv_lstm_backward, _backward_args)}

# (op, argument, replacement, error, message fragment); T=3, B=2, C=3, Hc=4, 5x6 frames, 3x3.
BAD_ARGUMENTS = [
    ("forward", "x", lambda t: t.long(), TypeError, "x must be torch.float32, torch.float64, torch.float16 or"),
    ("forward", "x", lambda t: t[0], ValueError, "x must be [T, B, C, H, W] (5-D); got [2, 3, 5, 6]"),
    ("forward", "x", lambda t: t[:0], ValueError, "x must have at least one time step (T >= 1)"),
    ("forward", "x", lambda t: t[:, :, :0], ValueError, "x must have at least one channel (C >= 1)"),
    ("forward", "x", lambda t: t[:, :, :2], ValueError, "w_ih must be [4Hc, C, kh, kw] with C = 2"),
    ("forward", "x", lambda t: t.double(), TypeError, "w_ih must be torch.float64; got torch.float32"),
    ("forward", "w_ih", lambda t: t[:15], ValueError, "w_ih must be [4Hc, C, kh, kw] with C = 3, Hc >= 1 and odd"),
    ("forward", "w_ih", lambda t: t[:, :, :2], ValueError, "odd kh, kw; got [16, 3, 2, 3]"),
    ("forward", "w_ih", lambda t: t[..., 1], ValueError, "w_ih must be [4Hc, C, kh, kw]"),
    ("forward", "w_ih", lambda t: t.half(), TypeError, "w_ih must be torch.float32; got torch.float16"),
    ("forward", "w_hh", lambda t: t[:, :3], ValueError, "w_hh must be [4Hc, Hc, kh, kw] with Hc = 4 and odd kh"),
    ("forward", "w_hh", lambda t: t[:, :, :, :2], ValueError, "w_hh must be [4Hc, Hc, kh, kw]"),
    ("forward", "w_hh", lambda t: t.double(), TypeError, "w_hh must be torch.float32"),
    ("forward", "h0", lambda t: t[:, :, :4], ValueError, "h0 must be [B, Hc, H, W] = [2, 4, 5, 6]; got [2, 4, 4, 6]"),
    ("forward", "h0", lambda t: t.bfloat16(), TypeError, "h0 must be torch.float32; got torch.bfloat16"),
    ("forward", "c0", lambda t: t[0], ValueError, "c0 must be [B, Hc, H, W]"),
    # broadcastable, still wrong
    ("forward", "b_ih", lambda t: t[:1], ValueError, "b_ih must be [4Hc] = [16]; got [1]"),
    ("forward", "b_hh", lambda t: t[None], ValueError, "b_hh must be [4Hc]"),
    ("forward", "b_hh", lambda t: t.double(), TypeError, "b_hh must be torch.float32"),
    ("backward", "grad_y", lambda t: t[:, :1], ValueError, "grad_y must be [T, B, Hc, H, W] = [3, 2, 4, 5, 6]"),
    ("backward", "grad_y", lambda t: t.half(), TypeError, "grad_y must be torch.float32"),
    ("backward", "grad_h_n", lambda t: t[None], ValueError, "grad_h_n must be [B, Hc, H, W]"),
    ("backward", "grad_c_n", lambda t: t.double(), TypeError, "grad_c_n must be torch.float32"),
    ("backward", "x", lambda t: t[:, :, :, :4], ValueError, "h0 must be [B, Hc, H, W] = [2, 4, 4, 6]"),
    ("backward", "y", lambda t: t[:2], ValueError, "y must be [T, B, Hc, H, W] = [3, 2, 4, 5, 6]; got [2, 2, 4, 5, 6]"),
    ("backward", "gates", lambda t: torch.empty(0), ValueError, "gates must be [T, B, H, W, 4Hc]"),  # not saved
    ("backward", "gates", lambda t: t[..., :8], ValueError, "gates must be [T, B, H, W, 4Hc] = [3, 2, 5, 6, 16]"),
    ("backward", "gates", lambda t: t.half(), TypeError, "gates must be torch.float32; got torch.float16"),
    ("backward", "gates", lambda t: t.transpose(0, 1).contiguous().transpose(0, 1), ValueError,
     "gates must be contiguous"),
    ("backward", "cells", lambda t: t.permute(0, 1, 2, 4, 3), ValueError, "cells must be [T, B, H, W, Hc]"),
    ("backward", "cells", lambda t: t.transpose(2, 3).contiguous().transpose(2, 3), ValueError,
     "cells must be contiguous"),
]


@pytest.mark.parametrize("op,name,replace,error,fragment", BAD_ARGUMENTS,
                         ids=[f"{op}-{name}-{i}" for i, (op, name, *_) in enumerate(BAD_ARGUMENTS)])
def test_cpp_op_checks_its_arguments(op, name, replace, error, fragment):
    """Every tensor reaching the C++ op is checked before a kernel reads it: a bad one raises
    TypeError (dtype) or ValueError (anything else) naming it."""
    fn, make_args = OPS[op]
    args = make_args()
    with pytest.raises(error) as raised:
        fn(**{**args, name: replace(args[name])})
    message = str(raised.value)
    assert f"fusednn::conv_lstm_{op}: " in message and fragment in message, message


@pytest.mark.parametrize("op", ["forward", "backward"])
def test_meta_argument_reaching_the_cpu_kernel_raises(op):
    """A meta tensor among CPU ones, sent to the CPU kernel (redispatch), is refused by name."""
    fn, make_args = OPS[op]
    args = make_args()
    for name in [k for k, v in args.items() if isinstance(v, torch.Tensor)]:
        where = "a cpu tensor" if name == "x" else "on cpu"
        with pytest.raises(ValueError, match=rf"fusednn::conv_lstm_{op}: {name} must be {where}; got meta"):
            fn.default.redispatch(CPU_ONLY, **{**args, name: args[name].to("meta")})


def test_backward_forms_only_the_gradients_asked_for():
    args = _backward_args()
    full = torch.ops.fusednn.conv_lstm_backward(**args)
    for mask in ([True, False, False], [False, True, False], [False, False, True]):
        partial = torch.ops.fusednn.conv_lstm_backward(**{**args, "output_mask": mask})
        asked = [mask[0], mask[1], mask[1], mask[2], mask[2], mask[2]]
        for i, (p, f, wanted) in enumerate(zip(partial, full, asked)):
            if wanted:
                torch.testing.assert_close(p, f, rtol=0, atol=0, msg=f"{mask} output {i}")
            else:
                assert p.numel() == 0, (mask, i)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_fullgraph_compile_matches_eager(layout):
    """torch.compile(fullgraph=True) traces the op through its fake implementations and
    registered autograd (the output strides included) and gives eager's values."""
    x, h0, c0, *params = _layer(layout=layout)
    scale = torch.arange(4, dtype=torch.float32).view(4, 1, 1)

    def loss(x):
        y, (h, c) = fusednn.ops.conv_lstm(x, (h0, c0), *params)
        return (y * scale).sum() + (h * c).sum()

    compiled = torch.compile(loss, fullgraph=True, backend="aot_eager")
    got = compiled(x)
    got_grads = torch.autograd.grad(got, [x, h0, c0, *params])
    want = loss(x)
    want_grads = torch.autograd.grad(want, [x, h0, c0, *params])
    assert_close(got, want.double(), name="loss")
    for i, (g, w) in enumerate(zip(got_grads, want_grads)):
        assert g.stride() == w.stride(), (i, g.stride(), w.stride())
        assert_close(g, w.double(), name=f"grad[{i}]")
