"""Recurrent ops (LSTM, GRU, Elman RNN) beyond what every op gets from the registry
(tests/test_registry.py): the references against torch's own kernels, padding that must not
leak, the workspace saved only for backward, and agreement of the C++ CPU kernel with the
reference backend."""

import pytest
import torch

import fusednn
from fusednn import registry, testing
from fusednn._validate import accumulate_dtype
from fusednn.cases.recurrent import batch_sizes_of, gru_tensors, lstm_tensors, rnn_tensors
from fusednn.reference import recurrent as reference
from fusednn.testing import assert_close


@pytest.mark.parametrize("op", ["lstm", "lstm_cell", "gru", "gru_cell", "rnn", "rnn_cell"])
def test_reference_matches_torch(op):
    """fusednn.reference.<op> (the truth of the registry tests) against torch's own kernels
    (reference.torch_<op>) in float64, outputs and every gradient, on every registered sample."""
    torch_op = getattr(reference, f"torch_{op}")
    info = registry.get(op)
    for sample in info.samples():
        inputs = testing.Inputs(info.function, sample, torch.float64, "cpu")
        ours = testing.run_sample(info.reference, inputs)
        theirs = testing.run_sample(torch_op, testing.Inputs(info.function, sample, torch.float64, "cpu"),
                                    ours.differentiated)
        for i, (a, e) in enumerate(zip(ours.outputs + ours.grads, theirs.outputs + theirs.grads)):
            assert_close(a, e, name=f"{sample.name} tensor {i}")


def _padded_call(op, x, t, batch_sizes):
    """op over x with the other tensors of ``t`` (the op's own, as the cases draw them)."""
    if op == "lstm":
        return fusednn.ops.lstm(x, (t["h0"], t["c0"]), t["w_ih"], t["w_hh"], t["b_ih"], t["b_hh"],
                                batch_sizes=batch_sizes)
    weights = (t["w_ih"], t["w_hh"], t["b_ih"], t["b_hh"])
    if op == "gru":
        return fusednn.ops.gru(x, t["h0"], *weights, batch_sizes=batch_sizes)
    return fusednn.ops.rnn(x, t["h0"], *weights, nonlinearity=op.split("-")[1], batch_sizes=batch_sizes)


@pytest.mark.parametrize("op, tensors", [("lstm", lstm_tensors), ("gru", gru_tensors),
                                         ("rnn-tanh", rnn_tensors), ("rnn-relu", rnn_tensors)])
def test_padded_entries_are_ignored(op, tensors):
    kwargs = {"nonlinearity": op.split("-")[1]} if op.startswith("rnn") else {}
    t = {k: v for k, v in tensors(6, 3, 4, 5, **kwargs).items() if v is not None}
    lengths = [6, 4, 2]
    x = t.pop("x").detach().clone()
    for b, n in enumerate(lengths):
        x[n:, b] = float("nan")  # padding must neither reach the outputs nor the gradients
    x.requires_grad_()
    outputs = torch.utils._pytree.tree_leaves(_padded_call(op, x, t, batch_sizes_of(lengths, 6)))
    leaves = [x, *t.values()]
    grads = torch.autograd.grad(sum(o.sum() for o in outputs), leaves)
    assert all(torch.isfinite(g).all() for g in [*outputs, *grads])
    y = outputs[0]
    for b, n in enumerate(lengths):
        assert (y[n:, b] == 0).all() and (grads[0][n:, b] == 0).all()


def _forward_op_args(op, dtype=torch.float64):
    """The forward op of ``op`` (lstm, gru, rnn) and its arguments before save_workspace
    (T = 3, B = 2, I = 4, H = 5)."""
    tensors = {"lstm": lstm_tensors, "gru": gru_tensors, "rnn": rnn_tensors}[op]
    t = {k: v.detach().to(dtype) for k, v in tensors(3, 2, 4, 5).items() if v is not None}
    args = [t[k] for k in ("x", "h0", "c0", "w_ih", "w_hh", "b_ih", "b_hh") if k in t]
    options = {"lstm": (None, None), "gru": (None,), "rnn": ("tanh", None)}[op]  # w_hr, nonlinearity, batch_sizes
    return getattr(torch.ops.fusednn, f"{op}_forward"), (*args, *options)


# The workspace each forward op saves for backward: shapes for T = 3, B = 2, H = 5.
WORKSPACE = {"lstm": [(3, 2, 20), (3, 2, 5), (0,)], "gru": [(3, 2, 20), (3, 2, 5)], "rnn": [(3, 2, 5)]}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16], ids=["float64", "float16"])
@pytest.mark.parametrize("op", ["lstm", "gru", "rnn"])
def test_workspace_saved_only_when_needed(op, dtype):
    """save_workspace=False saves nothing; True the workspace, in the accumulate dtype
    (float32 for half types); y is the same either way."""
    forward, args = _forward_op_args(op, dtype)
    y, *rest = forward(*args, False)
    assert all(w.numel() == 0 for w in rest[len(rest) - len(WORKSPACE[op]):])
    y_saved, *rest = forward(*args, True)
    workspace = rest[len(rest) - len(WORKSPACE[op]):]
    assert [tuple(w.shape) for w in workspace] == WORKSPACE[op]
    if op != "lstm":  # the LSTM's third (unprojected hidden states) stays empty without a projection
        assert all(w.dtype == accumulate_dtype(dtype) for w in workspace)
    torch.testing.assert_close(y, y_saved, rtol=0, atol=0)


@pytest.mark.parametrize("P, batch_sizes", [(0, None), (3, [3, 3, 1, 0])])
def test_opcheck_forward_without_workspace(P, batch_sizes):
    """The forward run for inference (save_workspace=False), which the registry's opcheck
    samples (all differentiated) do not reach."""
    t = {k: (v.detach().float() if v is not None else None) for k, v in lstm_tensors(4, 3, 5, 4, P).items()}
    args = (t["x"], t["h0"], t["c0"], t["w_ih"], t["w_hh"], t["b_ih"], t["b_hh"], t["w_hr"], batch_sizes, False)
    testing.opcheck(torch.ops.fusednn.lstm_forward.default, args)


@pytest.mark.parametrize("op, options", [("gru", ()), ("rnn", ("relu",))])
def test_opcheck_gru_rnn_forward_without_workspace(op, options):
    tensors = {"gru": gru_tensors, "rnn": rnn_tensors}[op]
    t = {k: v.detach().float() for k, v in tensors(4, 3, 5, 4).items()}
    args = (t["x"], t["h0"], t["w_ih"], t["w_hh"], t["b_ih"], None, *options, [3, 3, 1, 0], False)
    testing.opcheck(getattr(torch.ops.fusednn, f"{op}_forward").default, args)


@pytest.mark.parametrize("op, sample_name", [("lstm", "large-packed-proj"), ("gru", "large-packed"),
                                             ("rnn", "large-packed-relu"), ("rnn", "large-T17")])
def test_cpu_kernel_agrees_with_the_reference_backend(op, sample_name):
    """The same float32 call on the C++ kernel and on the reference backend: outputs and
    every gradient agree to float32's 1e-5."""
    info = registry.get(op)
    sample = next(s for s in info.samples() if s.name == sample_name)
    results = {}
    for backend in ("cpu", "reference"):
        with fusednn.use_backend(backend):
            run = testing.run_sample(info.function, testing.Inputs(info.function, sample, torch.float32, "cpu"))
        results[backend] = run.outputs + run.grads
    for i, (a, b) in enumerate(zip(results["cpu"], results["reference"])):
        assert_close(a, b.double(), name=f"tensor {i}")


@pytest.mark.parametrize("op", ["lstm", "gru", "rnn"])
def test_threads_agree(op):
    """The CPU splits each step by hidden units across threads (one 16-unit panel of W_hh per
    task): one and two threads must give the same forward bits (the split changes no sum)
    and the same gradients up to the all-steps GEMMs' float32 summation order, with packed
    rows, a partial last panel (H = 136: 8.5 panels, enough work per panel that each is a task
    of its own) and a one-row tail (B = 7)."""
    T, B, I, H = 6, 7, 9, 136
    lengths = [6, 6, 5, 3, 3, 2, 1]
    tensors = {"lstm": lstm_tensors, "gru": gru_tensors, "rnn": rnn_tensors}[op](T, B, I, H)
    leaves = [v.detach().float().requires_grad_() for v in tensors.values() if v is not None]
    function = getattr(fusednn.ops, op)

    def run():
        x, h0, *rest = leaves
        hx = (h0, rest.pop(0)) if op == "lstm" else h0
        y, state = function(x, hx, *rest, batch_sizes=batch_sizes_of(lengths, T))
        outputs = [y, *(state if op == "lstm" else (state,))]
        grads = torch.autograd.grad(sum((o * torch.linspace(-1, 1, o.numel()).view_as(o)).sum() for o in outputs),
                                    leaves)
        return [o.detach() for o in outputs] + list(grads)

    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = run()
        torch.set_num_threads(2)
        two = run()
    finally:
        torch.set_num_threads(threads)
    outputs = 3 if op == "lstm" else 2
    for i, (a, b) in enumerate(zip(one, two)):
        if i < outputs:
            assert torch.equal(a, b), f"output {i} differs between one and two threads"
        else:
            torch.testing.assert_close(a, b, msg=lambda m: f"gradient {i - outputs}: {m}")
