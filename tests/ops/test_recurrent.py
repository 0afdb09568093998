"""LSTM ops beyond what every op gets from the registry (tests/test_registry.py): the
reference against torch's own LSTM, padding that must not leak, the workspace saved only
for backward, and agreement of the C++ CPU kernel with the reference backend."""

import pytest
import torch

import fusednn
from fusednn import registry, testing
from fusednn.cases.recurrent import batch_sizes_of, lstm_tensors
from fusednn.reference import recurrent as reference
from fusednn.testing import assert_close


@pytest.mark.parametrize("op, torch_op", [("lstm", reference.torch_lstm), ("lstm_cell", reference.torch_lstm_cell)])
def test_reference_matches_torch_lstm(op, torch_op):
    """fusednn.reference.lstm / lstm_cell (the truth of the registry tests) against torch's own
    LSTM kernels in float64, outputs and every gradient, on every registered sample."""
    info = registry.get(op)
    for sample in info.samples():
        inputs = testing.Inputs(info.function, sample, torch.float64, "cpu")
        ours = testing.run_sample(info.reference, inputs)
        theirs = testing.run_sample(torch_op, testing.Inputs(info.function, sample, torch.float64, "cpu"),
                                    ours.differentiated)
        for i, (a, e) in enumerate(zip(ours.outputs + ours.grads, theirs.outputs + theirs.grads)):
            assert_close(a, e, name=f"{sample.name} tensor {i}")


def test_padded_entries_are_ignored():
    t = lstm_tensors(6, 3, 4, 5)
    lengths = [6, 4, 2]
    x = t["x"].detach().clone()
    for b, n in enumerate(lengths):
        x[n:, b] = float("nan")  # padding must neither reach the outputs nor the gradients
    x.requires_grad_()
    y, (h, c) = fusednn.ops.lstm(x, (t["h0"], t["c0"]), t["w_ih"], t["w_hh"], t["b_ih"], t["b_hh"],
                                 batch_sizes=batch_sizes_of(lengths, 6))
    leaves = [x, t["h0"], t["c0"], t["w_ih"], t["w_hh"], t["b_ih"], t["b_hh"]]
    grads = torch.autograd.grad(y.sum() + h.sum() + c.sum(), leaves)
    assert all(torch.isfinite(g).all() for g in [y, h, c, *grads])
    for b, n in enumerate(lengths):
        assert (y[n:, b] == 0).all() and (grads[0][n:, b] == 0).all()


def test_workspace_saved_only_when_needed():
    t = {k: v.detach() for k, v in lstm_tensors(3, 2, 4, 5).items() if v is not None}
    args = [t[k] for k in ("x", "h0", "c0", "w_ih", "w_hh", "b_ih", "b_hh")]
    *_, gates, cells, hidden = torch.ops.fusednn.lstm_forward(*args, None, None, False)
    assert gates.numel() == cells.numel() == hidden.numel() == 0
    *_, gates, cells, hidden = torch.ops.fusednn.lstm_forward(*args, None, None, True)
    assert gates.shape == (3, 2, 20) and cells.shape == (3, 2, 5) and hidden.numel() == 0
    y, *_ = torch.ops.fusednn.lstm_forward(*args, None, None, False)
    y_saved, *_ = torch.ops.fusednn.lstm_forward(*args, None, None, True)
    torch.testing.assert_close(y, y_saved, rtol=0, atol=0)


@pytest.mark.parametrize("P, batch_sizes", [(0, None), (3, [3, 3, 1, 0])])
def test_opcheck_forward_without_workspace(P, batch_sizes):
    """The forward run for inference (save_workspace=False), which the registry's opcheck
    samples (all differentiated) do not reach."""
    t = {k: (v.detach().float() if v is not None else None) for k, v in lstm_tensors(4, 3, 5, 4, P).items()}
    args = (t["x"], t["h0"], t["c0"], t["w_ih"], t["w_hh"], t["b_ih"], t["b_hh"], t["w_hr"], batch_sizes, False)
    testing.opcheck(torch.ops.fusednn.lstm_forward.default, args)


def test_cpu_kernel_agrees_with_the_reference_backend():
    """The same float32 call on the C++ kernel and on the reference backend: outputs and
    every gradient agree to float32's 1e-5."""
    info = registry.get("lstm")
    sample = next(s for s in info.samples() if s.name == "large-packed-proj")
    results = {}
    for backend in ("cpu", "reference"):
        with fusednn.use_backend(backend):
            run = testing.run_sample(info.function, testing.Inputs(info.function, sample, torch.float32, "cpu"))
        results[backend] = run.outputs + run.grads
    for i, (a, b) in enumerate(zip(results["cpu"], results["reference"])):
        assert_close(a, b.double(), name=f"tensor {i}")
