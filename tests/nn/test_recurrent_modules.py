"""fusednn.nn.LSTM / LSTMCell as drop-ins for torch.nn.LSTM / LSTMCell: same state_dict,
same outputs and gradients (float64 references on the CPU; CUDA cases on a GPU machine)."""

import pytest
import torch
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

import fusednn
from fusednn.testing import assert_close, device_dtypes

# torch's own LSTM (the reference) warns that oneDNN has no projection support.
pytestmark = pytest.mark.filterwarnings("ignore:LSTM with projections is not supported with oneDNN")

DEVICE_DTYPES = device_dtypes("cpp")
LOW_PRECISION = (torch.float16, torch.bfloat16)


def _rtol(device, dtype):
    # CUDA float32: cuBLAS' reduction order compounds through layers and time steps.
    return 1e-4 if (device == "cuda" and dtype == torch.float32) else None


def _pair(cls_torch, cls_fused, *args, **kwargs):
    """A float64 CPU torch module and a fused one holding the same (fresh random) weights."""
    reference = cls_torch(*args, **kwargs).double()
    with torch.no_grad():
        for p in reference.parameters():
            p.copy_(torch.randn_like(p) * 0.4)
    fused = cls_fused(*args, **kwargs).double()
    fused.load_state_dict(reference.state_dict())
    return reference, fused


def _run(module, inputs, grad_outputs):
    """Outputs (flattened; PackedSequence -> its data) and gradients of inputs and parameters."""
    out = module(*inputs)
    flat = []
    for o in (out[0], *out[1]) if isinstance(out[1], tuple) else out:
        flat.append(o.data if isinstance(o, PackedSequence) else o)
    loss = sum((o * g.to(o.dtype)).sum() for o, g in zip(flat, grad_outputs))
    leaves = [t for t in _tensors(inputs) if t.requires_grad] + list(module.parameters())
    return out, flat, torch.autograd.grad(loss, leaves)


def _tensors(inputs):
    for item in inputs:
        if isinstance(item, PackedSequence):
            yield item.data
        elif isinstance(item, (tuple, list)):
            yield from item
        elif isinstance(item, torch.Tensor):
            yield item


def _to(inputs, device, dtype):
    """Leaf copies of the tensors in ``inputs`` (nested tuples, PackedSequence) on device/dtype."""
    def conv(item):
        if isinstance(item, PackedSequence):
            data = item.data.detach().to(device, dtype).requires_grad_()
            return PackedSequence(data, item.batch_sizes, *(
                i.to(device) if i is not None else None for i in (item.sorted_indices, item.unsorted_indices)))
        if isinstance(item, (tuple, list)):
            return tuple(conv(i) for i in item)
        if isinstance(item, torch.Tensor):
            return item.detach().to(device, dtype).requires_grad_()
        return item
    return tuple(conv(i) for i in inputs)


def _check_module(reference, fused, inputs, device, dtype, non_contiguous=False):
    """fused on (device, dtype) against reference in float64 on the CPU: outputs and all gradients."""
    ref_inputs = _to(inputs, "cpu", torch.float64)
    with torch.no_grad():
        out = reference(*ref_inputs)
    flat = (out[0], *out[1]) if isinstance(out[1], tuple) else out
    grad_outputs = [torch.randn_like(o.data if isinstance(o, PackedSequence) else o) for o in flat]
    ref_out, expected, expected_grads = _run(reference, ref_inputs, grad_outputs)

    fused = fused.to(device, dtype)
    ours_inputs = _to(inputs, device, dtype)
    if non_contiguous:  # the same values through a transposed view
        x = ours_inputs[0]
        x_view = x.detach().transpose(0, 1).contiguous().transpose(0, 1).requires_grad_()
        assert not x_view.is_contiguous()
        ours_inputs = (x_view, *ours_inputs[1:])
    out, actual, grads = _run(fused, ours_inputs, [g.to(device) for g in grad_outputs])
    assert type(out[0]) is type(ref_out[0])
    baseline = baseline_grads = [None] * 64
    if dtype in LOW_PRECISION:
        low = reference.to(device, dtype)
        _, baseline, baseline_grads = _run(low, _to(inputs, device, dtype), [g.to(device) for g in grad_outputs])
        reference.to("cpu", torch.float64)
    names = ["output", "h_n", "c_n"][: len(actual)]
    for name, a, e, b in zip(names, actual, expected, baseline):
        assert a.shape == e.shape, name
        assert_close(a, e, name=name, rtol=_rtol(device, dtype), lowp_baseline=b)
    grad_names = [f"grad input {i}" for i in range(len(grads) - len(list(fused.parameters())))]
    grad_names += [f"grad {n}" for n, _ in fused.named_parameters()]
    assert len(grads) == len(expected_grads)
    for name, a, e, b in zip(grad_names, grads, expected_grads, baseline_grads):
        assert_close(a, e, name=name, rtol=_rtol(device, dtype), lowp_baseline=b)


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
    reference, fused = _pair(torch.nn.LSTM, fusednn.nn.LSTM, I, H, **config)
    D = 2 if config.get("bidirectional") else 1
    L = config.get("num_layers", 1)
    P = config.get("proj_size", 0) or H
    x = torch.randn(B, T, I) if config.get("batch_first") else torch.randn(T, B, I)
    inputs = (x, (torch.randn(L * D, B, P), torch.randn(L * D, B, H))) if with_state else (x,)
    _check_module(reference, fused, inputs, device, dtype, non_contiguous=not config.get("batch_first"))


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
    reference, fused = _pair(torch.nn.LSTM, fusednn.nn.LSTM, I, H, **config)
    T = max(lengths)
    x = torch.randn(B, T, I) if config.get("batch_first") else torch.randn(T, B, I)
    packed = pack_padded_sequence(x, torch.tensor(lengths), batch_first=config.get("batch_first", False),
                                  enforce_sorted=enforce_sorted)
    D = 2 if config.get("bidirectional") else 1
    L, P = config.get("num_layers", 1), config.get("proj_size", 0) or H
    hx = (torch.randn(L * D, B, P), torch.randn(L * D, B, H))
    _check_module(reference, fused, (packed, hx), device, dtype)


@pytest.mark.parametrize("device,dtype", DEVICE_DTYPES)
def test_lstm_unbatched_input(device, dtype):
    reference, fused = _pair(torch.nn.LSTM, fusednn.nn.LSTM, 4, 5, num_layers=2, bidirectional=True)
    _check_module(reference, fused, (torch.randn(7, 4), (torch.randn(4, 5), torch.randn(4, 5))), device, dtype)
    reference, fused = _pair(torch.nn.LSTM, fusednn.nn.LSTM, 4, 5, batch_first=True, proj_size=2)
    _check_module(reference, fused, (torch.randn(7, 4),), device, dtype)


def test_lstm_dropout_between_layers():
    reference, fused = _pair(torch.nn.LSTM, fusednn.nn.LSTM, 4, 5, num_layers=2, dropout=1.0)
    x = torch.randn(6, 3, 4, dtype=torch.float64)
    # p = 1 zeroes the second layer's input in both (deterministically)
    reference.train(), fused.train()
    for a, e in zip(fused(x)[0:1] + fused(x)[1], reference(x)[0:1] + reference(x)[1]):
        assert_close(a, e)
    fused.dropout = reference.dropout = 0.5
    y1, y2 = fused(x)[0], fused(x)[0]
    assert not torch.equal(y1, y2)  # fresh masks in training
    fused.eval(), reference.eval()
    assert_close(fused(x)[0], reference(x)[0])


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
    reference, fused = _pair(torch.nn.LSTM, fusednn.nn.LSTM, 3, 4, num_layers=2, bidirectional=True)
    x = torch.randn(5, 0, 3, dtype=torch.float64)
    out, (h, c) = fused(x)
    ref_out, (ref_h, ref_c) = reference(x)
    assert out.shape == ref_out.shape and h.shape == ref_h.shape and c.shape == ref_c.shape


def test_lstm_bad_inputs_raise_like_torch():
    fused = fusednn.nn.LSTM(4, 5)
    with pytest.raises(ValueError, match="Expected input to be 2D or 3D, got 4D"):
        fused(torch.randn(2, 3, 4, 5))
    with pytest.raises(RuntimeError, match="input.size\\(-1\\) must be equal to input_size. Expected 4, got 3"):
        fused(torch.randn(2, 3, 3))
    with pytest.raises(RuntimeError, match="Expected hidden\\[0\\] size \\(1, 3, 5\\), got \\[1, 2, 5\\]"):
        fused(torch.randn(2, 3, 4), (torch.randn(1, 2, 5), torch.randn(1, 3, 5)))
    with pytest.raises(ValueError, match="input dtype \\(torch.float64\\) does not match weight dtype"):
        fused(torch.randn(2, 3, 4, dtype=torch.float64))


@pytest.mark.parametrize("device,dtype", DEVICE_DTYPES)
@pytest.mark.parametrize("bias", [True, False])
def test_lstm_cell_matches_torch(device, dtype, bias):
    reference, fused = _pair(torch.nn.LSTMCell, fusednn.nn.LSTMCell, 5, 7, bias=bias)
    _check_module(reference, fused, (torch.randn(3, 5), (torch.randn(3, 7), torch.randn(3, 7))), device, dtype)
    _check_module(reference, fused, (torch.randn(1, 5),), device, dtype)
    _check_module(reference, fused, (torch.randn(5), (torch.randn(7), torch.randn(7))), device, dtype)


def test_lstm_cell_state_dict_and_bad_inputs():
    cell = torch.nn.LSTMCell(3, 4)
    fused = fusednn.nn.LSTMCell(3, 4)
    fused.load_state_dict(cell.state_dict())
    x = torch.randn(2, 3)
    for a, e in zip(fused(x), cell(x)):
        torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="Expected input to be 1D or 2D, got 3D"):
        fused(torch.randn(1, 2, 3))
    with pytest.raises(ValueError, match=r"h must be \[B, H\]"):
        fused(x, (torch.randn(2, 5), torch.randn(2, 4)))
