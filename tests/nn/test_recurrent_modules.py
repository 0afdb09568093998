"""fusednn.nn.LSTM / LSTMCell as drop-ins for torch.nn.LSTM / LSTMCell: same state_dict,
same outputs and gradients (the comparison harness against torch's module in float64; CUDA
cases on a GPU machine)."""

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

import fusednn
from fusednn import registry, testing
from fusednn.registry import Sample, View

# The tiny modules here run in float32/float64 on the CPU; float16/bfloat16 on CUDA (the
# registry's large samples cover the CPU kernels' low precision).
DEVICE_DTYPES = [(d, t) for d, t in testing.kernel_dtypes(registry.get("lstm"))
                 if d == "cuda" or t in (torch.float32, torch.float64)]


def _rtol(device, dtype):
    # CUDA float32: cuBLAS' reduction order compounds through layers and time steps.
    return 1e-4 if (device == "cuda" and dtype == torch.float32) else None


def _pair(cls_torch, cls_fused, *args, **kwargs):
    """A torch module and a fused one holding the same (fresh random, away from init) weights."""
    theirs = cls_torch(*args, **kwargs).double()
    with torch.no_grad():
        for p in theirs.parameters():
            p.copy_(torch.randn_like(p) * 0.4)
    ours = cls_fused(*args, **kwargs).double()
    ours.load_state_dict(theirs.state_dict())
    return ours, theirs


def _randn(*shape):
    return torch.randn(shape, dtype=torch.float64, requires_grad=True)


CONFIGS = {
    "1layer": dict(num_layers=1),
    "2layer-bidir": dict(num_layers=2, bidirectional=True),
    "batch_first-proj": dict(num_layers=2, batch_first=True, proj_size=3),
    "bidir-proj-nobias": dict(bidirectional=True, proj_size=4, bias=False),
    "3layer-bidir-batch_first": dict(num_layers=3, bidirectional=True, batch_first=True),
}


@pytest.mark.parametrize("device,dtype", DEVICE_DTYPES)
@pytest.mark.parametrize("config", CONFIGS.values(), ids=CONFIGS.keys())
@pytest.mark.parametrize("with_state", [True, False], ids=["state", "no-state"])
def test_lstm_matches_torch(device, dtype, config, with_state):
    I, H, T, B = 5, 6, 17, 3
    ours, theirs = _pair(torch.nn.LSTM, fusednn.nn.LSTM, I, H, **config)
    D = 2 if config.get("bidirectional") else 1
    L = config.get("num_layers", 1)
    P = config.get("proj_size", 0) or H
    if config.get("batch_first"):
        x = _randn(B, T, I)
    else:  # time-major values stored batch-major: a non-contiguous view
        x = View(_randn(B, T, I), lambda t: t.transpose(0, 1))
    args = (x, (_randn(L * D, B, P), _randn(L * D, B, H))) if with_state else (x,)
    testing.compare_modules(ours, theirs, Sample("lstm", args), device, dtype, rtol=_rtol(device, dtype))


@pytest.mark.parametrize("device,dtype", DEVICE_DTYPES)
@pytest.mark.parametrize(
    "lengths,config",
    [
        ([17, 4, 9, 1], dict(num_layers=2, bidirectional=True)),
        ([5], dict(bidirectional=True)),
        ([1, 1, 1], dict(num_layers=2, proj_size=2, bidirectional=True)),
        ([3, 7, 7, 2, 6], dict(batch_first=True, proj_size=3)),
        ([9, 4, 4, 2], dict(bidirectional=True, enforce_sorted=True)),
    ],
    ids=["bidir-2layer", "batch1", "T1", "batch_first-proj", "sorted"],
)
def test_lstm_packed_sequences(device, dtype, lengths, config):
    config = dict(config)
    enforce_sorted = config.pop("enforce_sorted", False)
    I, H, B = 4, 5, len(lengths)
    ours, theirs = _pair(torch.nn.LSTM, fusednn.nn.LSTM, I, H, **config)
    T = max(lengths)
    x = torch.randn(B, T, I, dtype=torch.float64) if config.get("batch_first") else torch.randn(T, B, I,
                                                                                               dtype=torch.float64)
    packed = pack_padded_sequence(x, torch.tensor(lengths), batch_first=config.get("batch_first", False),
                                  enforce_sorted=enforce_sorted)
    packed.data.requires_grad_()
    D = 2 if config.get("bidirectional") else 1
    L, P = config.get("num_layers", 1), config.get("proj_size", 0) or H
    testing.compare_modules(ours, theirs, Sample("packed", (packed, (_randn(L * D, B, P), _randn(L * D, B, H)))),
                            device, dtype, rtol=_rtol(device, dtype))


@pytest.mark.parametrize("device,dtype", DEVICE_DTYPES)
def test_lstm_unbatched_input(device, dtype):
    ours, theirs = _pair(torch.nn.LSTM, fusednn.nn.LSTM, 4, 5, num_layers=2, bidirectional=True)
    testing.compare_modules(ours, theirs, Sample("unbatched", (_randn(7, 4), (_randn(4, 5), _randn(4, 5)))),
                            device, dtype, rtol=_rtol(device, dtype))
    ours, theirs = _pair(torch.nn.LSTM, fusednn.nn.LSTM, 4, 5, batch_first=True, proj_size=2)
    testing.compare_modules(ours, theirs, Sample("unbatched-default-state", (_randn(7, 4),)), device, dtype,
                            rtol=_rtol(device, dtype))


def test_lstm_dropout_between_layers():
    ours, theirs = _pair(torch.nn.LSTM, fusednn.nn.LSTM, 4, 5, num_layers=2, dropout=1.0)
    x = torch.randn(6, 3, 4, dtype=torch.float64)
    # p = 1 zeroes the second layer's input in both (deterministically)
    ours.train(), theirs.train()
    for a, e in zip(ours(x)[0:1] + ours(x)[1], theirs(x)[0:1] + theirs(x)[1]):
        testing.assert_close(a, e)
    ours.dropout = theirs.dropout = 0.5
    y1, y2 = ours(x)[0], ours(x)[0]
    assert not torch.equal(y1, y2)  # fresh masks in training
    ours.eval(), theirs.eval()
    testing.assert_close(ours(x)[0], theirs(x)[0])


def test_lstm_state_dict_round_trip():
    config = dict(num_layers=2, bidirectional=True, proj_size=3)
    torch_module = torch.nn.LSTM(4, 6, **config)
    fused = fusednn.nn.LSTM(4, 6, **config)
    assert [(n, p.shape) for n, p in fused.named_parameters()] == [
        (n, p.shape) for n, p in torch_module.named_parameters()
    ]
    fused.load_state_dict(torch_module.state_dict())
    x = torch.randn(5, 2, 4)
    torch.testing.assert_close(fused(x)[0], torch_module(x)[0], rtol=1e-5, atol=1e-6)
    other = fusednn.nn.LSTM(4, 6, **config)
    back = torch.nn.LSTM(4, 6, **config)
    back.load_state_dict(other.state_dict())
    torch.testing.assert_close(back(x)[0], other(x)[0], rtol=1e-5, atol=1e-6)
    assert isinstance(fused, torch.nn.LSTM) and isinstance(fusednn.nn.LSTMCell(2, 3), torch.nn.LSTMCell)


def test_lstm_batch_size_zero():
    ours, theirs = _pair(torch.nn.LSTM, fusednn.nn.LSTM, 3, 4, num_layers=2, bidirectional=True)
    x = torch.randn(5, 0, 3, dtype=torch.float64)
    out, (h, c) = ours(x)
    ref_out, (ref_h, ref_c) = theirs(x)
    assert out.shape == ref_out.shape and h.shape == ref_h.shape and c.shape == ref_c.shape


def test_lstm_bad_inputs():
    fused = fusednn.nn.LSTM(4, 5)
    with pytest.raises(ValueError, match=r"fusednn.nn.LSTM: input must be 2-D or 3-D .*; got shape \(2, 3, 4, 5\)"):
        fused(torch.randn(2, 3, 4, 5))
    with pytest.raises(TypeError, match=r"fusednn.nn.LSTM: input must be a tensor .*; got a numpy.ndarray"):
        fused(torch.randn(2, 3, 4).numpy())
    # torch's own checks and messages for sizes and dtypes (RuntimeError / ValueError, as torch)
    with pytest.raises(RuntimeError, match="input.size\\(-1\\) must be equal to input_size. Expected 4, got 3"):
        fused(torch.randn(2, 3, 3))
    with pytest.raises(RuntimeError, match="Expected hidden\\[0\\] size \\(1, 3, 5\\), got \\[1, 2, 5\\]"):
        fused(torch.randn(2, 3, 4), (torch.randn(1, 2, 5), torch.randn(1, 3, 5)))
    with pytest.raises(ValueError, match="input dtype \\(torch.float64\\) does not match weight dtype"):
        fused(torch.randn(2, 3, 4, dtype=torch.float64))


@pytest.mark.parametrize("device,dtype", DEVICE_DTYPES)
@pytest.mark.parametrize("bias", [True, False])
def test_lstm_cell_matches_torch(device, dtype, bias):
    ours, theirs = _pair(torch.nn.LSTMCell, fusednn.nn.LSTMCell, 5, 7, bias=bias)
    for name, args in (("batched", (_randn(3, 5), (_randn(3, 7), _randn(3, 7)))), ("default-state", (_randn(1, 5),)),
                       ("unbatched", (_randn(5), (_randn(7), _randn(7))))):
        testing.compare_modules(ours, theirs, Sample(name, args), device, dtype, rtol=_rtol(device, dtype))


def test_lstm_cell_state_dict_and_bad_inputs():
    cell = torch.nn.LSTMCell(4, 6)
    fused = fusednn.nn.LSTMCell(4, 6)
    fused.load_state_dict(cell.state_dict())
    x = torch.randn(2, 4)
    for a, e in zip(fused(x), cell(x)):
        torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match=r"fusednn.nn.LSTMCell: input must be 1-D .* or 2-D .*; got shape \(1, 2, 4\)"):
        fused(torch.randn(1, 2, 4))
    # the module blames its input for a wrong feature size, not the op's weight argument
    with pytest.raises(ValueError, match=r"fusednn.nn.LSTMCell: input must be \[B, input_size\] with input_size = 4; "
                                         r"got shape \(2, 6\)"):
        fused(torch.randn(2, 6))
    with pytest.raises(ValueError, match=r"fusednn.nn.LSTMCell: hx\[0\] must be \[B, hidden_size\] with hidden_size = 6; "
                                         r"got shape \(2, 5\)"):
        fused(x, (torch.randn(2, 5), torch.randn(2, 6)))
    with pytest.raises(TypeError, match=r"fusednn.nn.LSTMCell: input must be of the module's dtype float32; got "
                                        r"float64"):
        fused(x.double())
    with pytest.raises(RuntimeError):  # catchable as torch's RuntimeError too
        fused(torch.randn(2, 6))


def _gradient_penalty(module, x, hx):
    """d/dparams of |d(sum of outputs)/dx|^2: needs the gradient to be differentiable."""
    out = module(x, hx)
    flat = [t for t in torch.utils._pytree.tree_leaves(out) if isinstance(t, torch.Tensor)]
    (gx,) = torch.autograd.grad(sum(t.sum() for t in flat), x, create_graph=True)
    return torch.autograd.grad(gx.square().sum(), [x, *module.parameters()], allow_unused=True)


@pytest.mark.parametrize("cls", ["LSTM", "LSTMCell"])
def test_second_derivatives_match_torch(cls):
    """create_graph=True gives a first gradient with a graph: a gradient penalty gets the
    same second derivatives as torch's module."""
    kwargs = dict(num_layers=2, bidirectional=True) if cls == "LSTM" else {}
    ours, theirs = _pair(getattr(torch.nn, cls), getattr(fusednn.nn, cls), 3, 4, **kwargs)
    if cls == "LSTM":
        x, hx = _randn(5, 2, 3), (_randn(4, 2, 4), _randn(4, 2, 4))
    else:
        x, hx = _randn(2, 3), (_randn(2, 4), _randn(2, 4))
    names = ["x", *(name for name, _ in ours.named_parameters())]
    for name, a, b in zip(names, _gradient_penalty(ours, x, hx), _gradient_penalty(theirs, x, hx)):
        assert b is not None and b.abs().max() > 0, name
        testing.assert_close(a, b, name=f"second derivative by {name}")


@pytest.mark.parametrize("cls", ["LSTM", "LSTMCell"])
def test_weight_gradients_are_contiguous(cls):
    """Every parameter gradient has its parameter's (contiguous) strides, as torch's."""
    kwargs = dict(num_layers=2, proj_size=2) if cls == "LSTM" else {}
    ours, theirs = _pair(getattr(torch.nn, cls), getattr(fusednn.nn, cls), 5, 3, **kwargs)
    x = _randn(4, 2, 5) if cls == "LSTM" else _randn(2, 5)
    for module in (ours, theirs):
        torch.utils._pytree.tree_leaves(module(x))[0].sum().backward()
    for (name, p), q in zip(ours.named_parameters(), theirs.parameters()):
        assert p.grad.is_contiguous() and p.grad.stride() == q.grad.stride(), name
        testing.assert_close(p.grad, q.grad, name=name)


def test_lstm_cell_torchscript_and_trace():
    """torch.jit.script compiles LSTMCell (to torch's cell kernel) and gives the eager
    results, with and without a state; torch.jit.trace passes its own sanity check."""
    ours, theirs = _pair(torch.nn.LSTMCell, fusednn.nn.LSTMCell, 3, 4)
    scripted = torch.jit.script(ours)
    x, hx = _randn(2, 3), (_randn(2, 4), _randn(2, 4))
    for args in ((x,), (x, hx), (x[0], (hx[0][0], hx[1][0]))):
        for a, e in zip(scripted(*args), theirs(*args)):
            testing.assert_close(a, e)
    traced = torch.jit.trace(ours, (x, hx))
    for a, e in zip(traced(x, hx), theirs(x, hx)):
        testing.assert_close(a, e)


def test_lstm_trace_passes_its_check():
    """The workspace flag is fixed under tracing, so trace's rerun (without grad) matches."""
    ours, theirs = _pair(torch.nn.LSTM, fusednn.nn.LSTM, 3, 4, num_layers=2)
    x = _randn(5, 2, 3)
    traced = torch.jit.trace(ours, (x,))
    testing.assert_close(traced(x)[0], theirs(x)[0])
    traced(x)[0].sum().backward()  # the traced module still trains
    assert ours.weight_ih_l0.grad is not None


class _Tagger(torch.nn.Module):
    """A model holding an LSTM, as torch.jit.script users have them."""

    def __init__(self, lstm_cls):
        super().__init__()
        self.lstm = lstm_cls(3, 4, num_layers=2, bidirectional=True, batch_first=True)
        self.head = torch.nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.lstm(x)[0])


def test_lstm_inside_a_scripted_model():
    """torch.jit.script of a model holding fusednn.nn.LSTM compiles (tensor inputs run
    torch's kernel there) and gives the eager model's output."""
    ours, theirs = _Tagger(fusednn.nn.LSTM).double(), _Tagger(torch.nn.LSTM).double()
    theirs.load_state_dict(ours.state_dict())
    x = _randn(2, 5, 3)
    testing.assert_close(torch.jit.script(ours)(x), theirs(x))
    testing.assert_close(ours(x), theirs(x))
