"""fusednn.nn.LSTM / GRU / RNN and their cells as drop-ins for torch's: same state_dict,
same outputs and gradients (the comparison harness against torch's module in float64; CUDA
cases on a GPU machine)."""

import re

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
    """A torch module and a fused one holding the same (fresh random, away from init) weights.

    ReLU modules get weights that keep every pre-activation away from relu's kink, so that a
    float32 rounding never takes the other side of it than float64 (which would change a
    gradient by a whole weight): each unit's biases sum to ±[1, 2] with a random sign, and
    the weights are small (``|W x + W h|`` stays far below 1 for the unit-scale inputs here)."""
    theirs = cls_torch(*args, **kwargs).double()
    relu = kwargs.get("nonlinearity") == "relu"
    with torch.no_grad():
        for name, p in theirs.named_parameters():
            if relu and name.startswith("bias_ih"):
                sign = torch.where(torch.rand_like(p) < 0.5, -1.0, 1.0)
                p.copy_(sign * (0.5 + 0.5 * torch.rand_like(p)))
                getattr(theirs, name.replace("bias_ih", "bias_hh")).copy_(sign * (0.5 + 0.5 * torch.rand_like(p)))
            elif not (relu and name.startswith("bias_hh")):
                p.copy_(torch.randn_like(p) * (0.02 if relu else 0.4))
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


@pytest.mark.parametrize("name", ["LSTM", "GRU", "RNN"])
def test_batch_size_zero(name):
    ours, theirs = _pair(getattr(torch.nn, name), getattr(fusednn.nn, name), 3, 4, num_layers=2, bidirectional=True)
    x = torch.randn(5, 0, 3, dtype=torch.float64)
    shapes = [t.shape for t in torch.utils._pytree.tree_leaves(ours(x))]
    assert shapes == [t.shape for t in torch.utils._pytree.tree_leaves(theirs(x))]


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


def _state(cls: str, *shape):
    """hx of a module: the pair (h, c) for the LSTMs, a tensor for the others."""
    return (_randn(*shape), _randn(*shape)) if cls.startswith("LSTM") else _randn(*shape)


ALL_MODULES = ["LSTM", "LSTMCell", "GRU", "GRUCell", "RNN", "RNNCell"]


@pytest.mark.parametrize("cls", ALL_MODULES)
def test_second_derivatives_match_torch(cls):
    """create_graph=True gives a first gradient with a graph: a gradient penalty gets the
    same second derivatives as torch's module."""
    cell = cls.endswith("Cell")
    kwargs = {} if cell else dict(num_layers=2, bidirectional=True)
    ours, theirs = _pair(getattr(torch.nn, cls), getattr(fusednn.nn, cls), 3, 4, **kwargs)
    x, hx = (_randn(2, 3), _state(cls, 2, 4)) if cell else (_randn(5, 2, 3), _state(cls, 4, 2, 4))
    names = ["x", *(name for name, _ in ours.named_parameters())]
    for name, a, b in zip(names, _gradient_penalty(ours, x, hx), _gradient_penalty(theirs, x, hx)):
        assert b is not None and b.abs().max() > 0, name
        testing.assert_close(a, b, name=f"second derivative by {name}")


@pytest.mark.parametrize("cls", ALL_MODULES)
def test_weight_gradients_are_contiguous(cls):
    """Every parameter gradient has its parameter's (contiguous) strides, as torch's."""
    cell = cls.endswith("Cell")
    kwargs = {} if cell else dict(num_layers=2, proj_size=2) if cls == "LSTM" else dict(num_layers=2)
    ours, theirs = _pair(getattr(torch.nn, cls), getattr(fusednn.nn, cls), 5, 3, **kwargs)
    x = _randn(2, 5) if cell else _randn(4, 2, 5)
    for module in (ours, theirs):
        torch.utils._pytree.tree_leaves(module(x))[0].sum().backward()
    for (name, p), q in zip(ours.named_parameters(), theirs.parameters()):
        assert p.grad.is_contiguous() and p.grad.stride() == q.grad.stride(), name
        testing.assert_close(p.grad, q.grad, name=name)


CELLS = {"LSTMCell": {}, "GRUCell": {}, "RNNCell-relu": dict(nonlinearity="relu")}


@pytest.mark.parametrize("cls, kwargs", CELLS.items(), ids=CELLS.keys())
def test_cell_torchscript_and_trace(cls, kwargs):
    """torch.jit.script compiles the cells (to torch's cell kernels) and gives the eager
    results, with and without a state, batched and not; torch.jit.trace passes its own
    sanity check."""
    cls = cls.split("-")[0]
    ours, theirs = _pair(getattr(torch.nn, cls), getattr(fusednn.nn, cls), 3, 4, **kwargs)
    scripted = torch.jit.script(ours)
    x, hx = _randn(2, 3), _state(cls, 2, 4)
    unbatched_hx = torch.utils._pytree.tree_map(lambda t: t[0], hx)
    leaves = torch.utils._pytree.tree_leaves
    for args in ((x,), (x, hx), (x[0], unbatched_hx)):
        for a, e in zip(leaves(scripted(*args)), leaves(theirs(*args))):
            testing.assert_close(a, e)
    traced = torch.jit.trace(ours, (x, hx))
    for a, e in zip(leaves(traced(x, hx)), leaves(theirs(x, hx))):
        testing.assert_close(a, e)


@pytest.mark.parametrize("cls", ["LSTM", "GRU", "RNN"])
def test_trace_passes_its_check(cls):
    """The workspace flag is fixed under tracing, so trace's rerun (without grad) matches."""
    ours, theirs = _pair(getattr(torch.nn, cls), getattr(fusednn.nn, cls), 3, 4, num_layers=2)
    x = _randn(5, 2, 3)
    traced = torch.jit.trace(ours, (x,))
    testing.assert_close(traced(x)[0], theirs(x)[0])
    traced(x)[0].sum().backward()  # the traced module still trains
    assert ours.weight_ih_l0.grad is not None


class _Tagger(torch.nn.Module):
    """A model holding a recurrent module, as torch.jit.script users have them."""

    def __init__(self, recurrent_cls):
        super().__init__()
        self.recurrent = recurrent_cls(3, 4, num_layers=2, bidirectional=True, batch_first=True)
        self.head = torch.nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.recurrent(x)[0])


@pytest.mark.parametrize("cls", ["LSTM", "GRU", "RNN"])
def test_inside_a_scripted_model(cls):
    """torch.jit.script of a model holding fusednn.nn.<cls> compiles (tensor inputs run
    torch's kernel there) and gives the eager model's output."""
    ours, theirs = _Tagger(getattr(fusednn.nn, cls)).double(), _Tagger(getattr(torch.nn, cls)).double()
    theirs.load_state_dict(ours.state_dict())
    x = _randn(2, 5, 3)
    testing.assert_close(torch.jit.script(ours)(x), theirs(x))
    testing.assert_close(ours(x), theirs(x))


# --------------------------------------------------------------------------- GRU and RNN

HIDDEN_CONFIGS = {
    "gru-1layer": ("GRU", dict()),
    "gru-2layer-bidir": ("GRU", dict(num_layers=2, bidirectional=True)),
    "gru-batch_first-nobias": ("GRU", dict(num_layers=2, batch_first=True, bias=False)),
    "rnn-tanh-bidir-nobias": ("RNN", dict(bidirectional=True, bias=False)),
    "rnn-relu-2layer": ("RNN", dict(num_layers=2, nonlinearity="relu")),
    "rnn-relu-3layer-bidir-batch_first": ("RNN", dict(num_layers=3, bidirectional=True, batch_first=True,
                                                      nonlinearity="relu")),
}


def _layers_and_directions(config) -> int:
    return config.get("num_layers", 1) * (2 if config.get("bidirectional") else 1)


@pytest.mark.parametrize("device,dtype", DEVICE_DTYPES)
@pytest.mark.parametrize("config", HIDDEN_CONFIGS.values(), ids=HIDDEN_CONFIGS.keys())
@pytest.mark.parametrize("with_state", [True, False], ids=["state", "no-state"])
def test_gru_rnn_match_torch(device, dtype, config, with_state):
    name, kwargs = config
    I, H, T, B = 5, 6, 9, 3
    ours, theirs = _pair(getattr(torch.nn, name), getattr(fusednn.nn, name), I, H, **kwargs)
    if kwargs.get("batch_first"):
        x = _randn(B, T, I)
    else:  # time-major values stored batch-major: a non-contiguous view
        x = View(_randn(B, T, I), lambda t: t.transpose(0, 1))
    args = (x, _randn(_layers_and_directions(kwargs), B, H)) if with_state else (x,)
    testing.compare_modules(ours, theirs, Sample(name, args), device, dtype, rtol=_rtol(device, dtype))


@pytest.mark.parametrize("device,dtype", DEVICE_DTYPES)
@pytest.mark.parametrize(
    "name, lengths, config",
    [
        ("GRU", [9, 4, 6, 1], dict(num_layers=2, bidirectional=True)),
        ("GRU", [7, 5, 5, 2], dict(batch_first=True, enforce_sorted=True)),
        ("RNN", [9, 4, 6, 1], dict(bidirectional=True, nonlinearity="relu", with_state=False)),
        ("RNN", [1, 1, 1], dict(num_layers=2, bidirectional=True, enforce_sorted=True)),
    ],
    ids=["gru-bidir-2layer", "gru-batch_first-sorted", "rnn-relu-bidir-default-state", "rnn-T1-sorted"],
)
def test_gru_rnn_packed_sequences(device, dtype, name, lengths, config):
    config = dict(config)
    enforce_sorted = config.pop("enforce_sorted", False)
    with_state = config.pop("with_state", True)
    I, H, B, T = 4, 5, len(lengths), max(lengths)
    ours, theirs = _pair(getattr(torch.nn, name), getattr(fusednn.nn, name), I, H, **config)
    batch_first = config.get("batch_first", False)
    x = torch.randn((B, T, I) if batch_first else (T, B, I), dtype=torch.float64)
    packed = pack_padded_sequence(x, torch.tensor(lengths), batch_first=batch_first, enforce_sorted=enforce_sorted)
    packed.data.requires_grad_()
    args = (packed, _randn(_layers_and_directions(config), B, H)) if with_state else (packed,)
    testing.compare_modules(ours, theirs, Sample("packed", args), device, dtype, rtol=_rtol(device, dtype))


@pytest.mark.parametrize("device,dtype", DEVICE_DTYPES)
@pytest.mark.parametrize("name, config", [("GRU", dict(num_layers=2, bidirectional=True)),
                                          ("RNN", dict(batch_first=True, nonlinearity="relu"))], ids=["GRU", "RNN"])
def test_gru_rnn_unbatched_input(device, dtype, name, config):
    ours, theirs = _pair(getattr(torch.nn, name), getattr(fusednn.nn, name), 4, 5, **config)
    for sample in (Sample("unbatched", (_randn(7, 4), _randn(_layers_and_directions(config), 5))),
                   Sample("unbatched-default-state", (_randn(7, 4),))):
        testing.compare_modules(ours, theirs, sample, device, dtype, rtol=_rtol(device, dtype))


@pytest.mark.parametrize("name, config", [("GRU", dict(num_layers=2, bidirectional=True)),
                                          ("RNN", dict(num_layers=2, nonlinearity="relu", bias=False))])
def test_gru_rnn_state_dict_round_trip(name, config):
    torch_module = getattr(torch.nn, name)(4, 6, **config)
    fused = getattr(fusednn.nn, name)(4, 6, **config)
    assert isinstance(fused, getattr(torch.nn, name))
    assert [(n, p.shape) for n, p in fused.named_parameters()] == [
        (n, p.shape) for n, p in torch_module.named_parameters()
    ]
    fused.load_state_dict(torch_module.state_dict())
    x = torch.randn(5, 2, 4)
    torch.testing.assert_close(fused(x), torch_module(x), rtol=1e-5, atol=1e-6)
    other = getattr(fusednn.nn, name)(4, 6, **config)
    back = getattr(torch.nn, name)(4, 6, **config)
    back.load_state_dict(other.state_dict())
    torch.testing.assert_close(back(x), other(x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["GRU", "RNN"])
def test_gru_rnn_bad_inputs(name):
    fused, twin = getattr(fusednn.nn, name)(4, 5), getattr(torch.nn, name)(4, 5)
    with pytest.raises(ValueError, match=rf"fusednn.nn.{name}: input must be 2-D or 3-D .*; got shape \(2, 3, 4, 5\)"):
        fused(torch.randn(2, 3, 4, 5))
    with pytest.raises(TypeError, match=rf"fusednn.nn.{name}: hx must be a tensor .* or None; got a tuple of 2 items"):
        fused(torch.randn(2, 3, 4), (torch.randn(1, 3, 5), torch.randn(1, 3, 5)))
    # torch's own checks and messages (RuntimeError / ValueError, as torch): the drop-in and its twin alike
    for module in (fused, twin):
        with pytest.raises(RuntimeError, match=r"For unbatched 2-D input, hx should also be 2-D but got 3-D tensor"):
            module(torch.randn(2, 4), torch.randn(1, 1, 5))
        with pytest.raises(RuntimeError, match=r"For batched 3-D input, hx should also be 3-D but got 2-D tensor"):
            module(torch.randn(2, 3, 4), torch.randn(3, 5))
        with pytest.raises(RuntimeError, match="input.size\\(-1\\) must be equal to input_size. Expected 4, got 3"):
            module(torch.randn(2, 3, 3))
        with pytest.raises(RuntimeError, match="Expected hidden size \\(1, 3, 5\\), got \\[1, 2, 5\\]"):
            module(torch.randn(2, 3, 4), torch.randn(1, 2, 5))
        with pytest.raises(ValueError, match="input dtype \\(torch.float64\\) does not match weight dtype"):
            module(torch.randn(2, 3, 4, dtype=torch.float64))


CELL_CONFIGS = {
    "gru": ("GRUCell", {}),
    "gru-nobias": ("GRUCell", dict(bias=False)),
    "rnn-relu": ("RNNCell", dict(nonlinearity="relu")),
    "rnn-tanh-nobias": ("RNNCell", dict(bias=False)),
}


@pytest.mark.parametrize("device,dtype", DEVICE_DTYPES)
@pytest.mark.parametrize("config", CELL_CONFIGS.values(), ids=CELL_CONFIGS.keys())
def test_gru_rnn_cells_match_torch(device, dtype, config):
    name, kwargs = config
    ours, theirs = _pair(getattr(torch.nn, name), getattr(fusednn.nn, name), 5, 7, **kwargs)
    for sample_name, args in (("batched", (_randn(3, 5), _randn(3, 7))), ("default-state", (_randn(1, 5),)),
                              ("unbatched", (_randn(5), _randn(7)))):
        testing.compare_modules(ours, theirs, Sample(sample_name, args), device, dtype, rtol=_rtol(device, dtype))


@pytest.mark.parametrize("name", ["GRUCell", "RNNCell"])
def test_gru_rnn_cell_state_dict_and_bad_inputs(name):
    fused, twin = getattr(fusednn.nn, name)(4, 6), getattr(torch.nn, name)(4, 6)
    assert isinstance(fused, getattr(torch.nn, name))
    fused.load_state_dict(twin.state_dict())
    x = torch.randn(2, 4)
    torch.testing.assert_close(fused(x), twin(x), rtol=1e-5, atol=1e-6)
    # torch's checks in torch's order: its exception types, and its text in brackets after ours
    cases = [
        ((torch.randn(1, 2, 4),), ValueError, r"input must be 1-D .* or 2-D .*; got shape \(1, 2, 4\)",
         f"{name}: Expected input to be 1D or 2D, got 3D instead"),
        ((x, torch.randn(1, 2, 6)), ValueError, r"hx must be 1-D .* or 2-D .*; got shape \(1, 2, 6\)",
         f"{name}: Expected hidden to be 1D or 2D, got 3D instead"),
        ((torch.randn(2, 6),), RuntimeError, r"input must be \[B, input_size\] with input_size = 4; got shape \(2, 6\)",
         "input has inconsistent input_size: got 6 expected 4"),
        ((x, torch.randn(3, 6)), RuntimeError, r"hx must be \[B, hidden_size\] with B = 2 \(input's batch\)",
         "Input batch size 2 doesn't match hidden0 batch size 3"),
        ((x, torch.randn(2, 5)), RuntimeError,
         r"hx must be \[B, hidden_size\] with hidden_size = 6; got shape \(2, 5\)",
         "hidden0 has inconsistent hidden_size: got 5, expected 6"),
    ]
    for args, error, ours_text, torch_text in cases:
        with pytest.raises(error, match=rf"fusednn.nn.{name}: {ours_text}.* \[{re.escape(torch_text)}\]"):
            fused(*args)
        with pytest.raises(error, match=re.escape(torch_text)):
            twin(*args)
    with pytest.raises(TypeError, match=rf"fusednn.nn.{name}: hx must be a tensor; got a tuple of 2 items"):
        fused(x, (torch.randn(2, 6), torch.randn(2, 6)))
    with pytest.raises(TypeError,
                       match=rf"fusednn.nn.{name}: input must be of the module's dtype float32; got float64"):
        fused(x.double())
