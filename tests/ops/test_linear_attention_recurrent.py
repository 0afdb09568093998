"""The recurrent algorithm of linear attention (``fusednn.ops._linear_attention_recurrent``)
against the float64 reference (``fusednn.reference.linear_attention``): outputs, final
states and the gradients of q, k, v, the decay and the initial state (the final state's
gradient flowing back), over the feature maps, causal or not, decay or not, normalize or
not, sequence lengths 1 to 130, head dims 16, 40 and 64 with Dk != Dv, packed sequences,
[B, T, H, D] inputs read in place, a strong decay over a long sequence, float16, one input
needing a gradient, a broadcast output gradient; opcheck of its two ops and the double
backward through the reference.

The Triton interpreter runs one program (sequence, head, block of 32 head dims) at a time
and one time step per loop iteration: B * H stays small, the long sequences have one head."""

import pytest
import torch

from fusednn import testing
from fusednn.ops import _linear_attention_recurrent as recurrent
from fusednn.reference.linear_attention import linear_attention as reference
from fusednn.testing import assert_close

SCALE = 0.3
EPS = 1e-6
NAMES = ("q", "k", "v", "decay", "s0", "z0")


def _device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def _inputs(B, H, T, Dk, Dv, *, gamma=None, states=False, normalize=True, cu_seqlens=None, heads_inner=False):
    """float64 leaves q, k, v [B, H, T, D] (views of [B, T, H, D] tensors with heads_inner),
    decay [H] (gamma: a float, "random" in [0.5, 1), or None) and the initial state."""
    def randn(*shape):
        return torch.randn(*shape, dtype=torch.float64)

    if heads_inner:
        q, k, v = (randn(B, T, H, d).transpose(1, 2) for d in (Dk, Dk, Dv))
    else:
        q, k, v = randn(B, H, T, Dk), randn(B, H, T, Dk), randn(B, H, T, Dv)
    if gamma == "random":
        decay = 0.5 + 0.5 * torch.rand(H, dtype=torch.float64)
    else:
        decay = None if gamma is None else torch.full((H,), gamma, dtype=torch.float64)
    sequences = B if cu_seqlens is None else len(cu_seqlens) - 1
    s0 = 0.5 * randn(sequences, H, Dk, Dv) if states else None
    z0 = 0.5 + torch.rand(sequences, H, Dk, dtype=torch.float64) if states and normalize else None
    return dict(q=q, k=k, v=v, decay=decay, s0=s0, z0=z0)


def _run_reference(leaves, options, cu_seqlens):
    initial = None if leaves["s0"] is None else (leaves["s0"], leaves["z0"])
    result = reference(leaves["q"], leaves["k"], leaves["v"], feature_map=options["feature_map"],
                       causal=options["causal"], normalize=options["normalize"], decay=leaves["decay"], scale=SCALE,
                       initial_state=initial, output_final_state=True, eps=EPS, cu_seqlens=cu_seqlens)
    o, state = result
    return [o, *state]


def _run_recurrent(leaves, options, cu_seqlens):
    o, s, z = recurrent.recurrent_linear_attention(
        leaves["q"], leaves["k"], leaves["v"], leaves["decay"], leaves["s0"], leaves["z0"], scale=SCALE, eps=EPS,
        cu_seqlens=cu_seqlens, output_final_state=True, **options)
    return [o, s] if z is None else [o, s, z]


def _outputs_and_grads(run, leaves, cotangents, cu_seqlens, options):
    outputs = run(leaves, options, cu_seqlens)
    wanted = [name for name in NAMES if leaves[name] is not None]
    grads = torch.autograd.grad(outputs, [leaves[name] for name in wanted], cotangents, allow_unused=True)
    return outputs, dict(zip(wanted, grads))


def _cast(leaves: dict, dtype: torch.dtype, device) -> dict:
    """Fresh leaves: q, k, v in ``dtype`` (their layout kept), the decay and states in float32."""
    return {name: None if t is None else t.detach().to(device=device, dtype=dtype if name in "qkv" else torch.float32)
            .requires_grad_() for name, t in leaves.items()}


def check(B, H, T, Dk, Dv, *, feature_map="elu+1", causal=True, normalize=True, gamma="random", states=True,
          cu_seqlens=None, heads_inner=False, dtype=torch.float32):
    """The recurrent kernels in ``dtype`` against the float64 reference (float16: the 2x rule,
    the baseline being the reference run in float16); returns our outputs and gradients."""
    options = dict(feature_map=feature_map, causal=causal, normalize=normalize)
    truth_leaves = _inputs(B, H, T, Dk, Dv, gamma=gamma, states=states, normalize=normalize, cu_seqlens=cu_seqlens,
                           heads_inner=heads_inner)
    for t in truth_leaves.values():
        if t is not None:
            t.requires_grad_()
    cu64 = None if cu_seqlens is None else torch.tensor(cu_seqlens)
    cotangents = [torch.randn_like(o) for o in _run_reference(truth_leaves, options, cu64)]
    truth, truth_grads = _outputs_and_grads(_run_reference, truth_leaves, cotangents, cu64, options)

    device = _device()
    cu = None if cu_seqlens is None else torch.tensor(cu_seqlens, dtype=torch.int32, device=device)
    cotangents = [c.to(device=device, dtype=dtype if i == 0 else torch.float32) for i, c in enumerate(cotangents)]
    outputs, grads = _outputs_and_grads(_run_recurrent, _cast(truth_leaves, dtype, device), cotangents, cu, options)
    baseline_outputs, baseline_grads = [None] * len(outputs), {}
    if dtype in (torch.float16, torch.bfloat16):
        baseline_outputs, baseline_grads = _outputs_and_grads(
            _run_reference, _cast(truth_leaves, dtype, "cpu"), [c.cpu() for c in cotangents], cu64, options)
    for name, ours, expected, base in zip(("o", "s_final", "z_final"), outputs, truth, baseline_outputs):
        assert_close(ours, expected, name=name, lowp_baseline=base, precision=dtype)
    for name, expected in truth_grads.items():
        if expected is None:  # not read (a decay without causal): no gradient either
            assert grads[name] is None, f"a gradient for {name}, which the reference does not read"
            continue
        assert grads[name] is not None, f"no gradient for {name}"
        assert_close(grads[name], expected, name=f"grad {name}", lowp_baseline=baseline_grads.get(name),
                     precision=dtype)
    return outputs, grads


# --------------------------------------------------------------------------- options


@pytest.mark.parametrize("feature_map, normalize", [("elu+1", True), ("relu", True), ("identity", False),
                                                    ("elu+1", False)])
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "full"])
def test_feature_maps_causal_and_not(feature_map, normalize, causal):
    """Decay (read only with causal), initial and final states with gradients."""
    check(1, 2, 9, 16, 16, feature_map=feature_map, normalize=normalize, causal=causal)


@pytest.mark.parametrize("normalize", [True, False])
def test_without_decay_or_initial_state(normalize):
    check(2, 1, 7, 16, 16, normalize=normalize, gamma=None, states=False)


# --------------------------------------------------------------------------- shapes


@pytest.mark.parametrize("T, B, H", [(1, 2, 2), (17, 2, 1), (63, 1, 1)])
def test_sequence_lengths(T, B, H):
    check(B, H, T, 16, 16)


@pytest.mark.parametrize("Dk, Dv", [(40, 16), (16, 40), (64, 40)])
def test_head_dims(Dk, Dv):
    """Head dims above the 32 of a block: two blocks of Dv columns (forward, dv) or Dk rows
    (dq, dk), the last one masked."""
    check(1, 1, 5, Dk, Dv)


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "full"])
def test_packed_sequences(causal):
    """cu_seqlens: the state restarts at each boundary from that sequence's initial state; an
    empty sequence returns its initial state (gradient: the final state's)."""
    check(1, 2, 11, 16, 24, causal=causal, cu_seqlens=[0, 4, 4, 11])


def test_heads_inner_layout_is_read_in_place():
    """q, k, v as [B, T, H, D] tensors transposed: read through their strides, and o and the
    input gradients come back in that layout."""
    outputs, grads = check(2, 2, 5, 16, 24, heads_inner=True)
    for t in (outputs[0], grads["q"], grads["k"], grads["v"]):
        assert t.transpose(1, 2).is_contiguous()


@pytest.mark.parametrize("name", ["decay", "z0", "k"])
def test_one_input_needs_a_gradient(name):
    """The backward runs only the passes that gradient needs, into scratch buffers for the
    gradients it does not return (the decay's comes from the dq pass, z0's from the dk pass)."""
    leaves = _cast(_inputs(1, 1, 4, 16, 16, gamma="random", states=True), torch.float32, _device())
    truth = {key: t.detach().double().cpu() for key, t in leaves.items()}
    for key in NAMES:
        leaves[key].requires_grad_(key == name)
    truth[name].requires_grad_()
    options = dict(feature_map="elu+1", causal=True, normalize=True)
    ours = _run_recurrent(leaves, options, None)
    expected = _run_reference(truth, options, None)
    cotangents = [torch.randn_like(o) for o in expected]
    (grad,) = torch.autograd.grad(ours, leaves[name], [c.to(o.dtype) for c, o in zip(cotangents, ours)],
                                  allow_unused=True)
    outputs, grad_outputs = zip(*[(o, c) for o, c in zip(expected, cotangents) if o.requires_grad])  # S has no z0
    (grad_expected,) = torch.autograd.grad(outputs, truth[name], grad_outputs)
    assert_close(grad, grad_expected, name=f"grad {name}")


def test_broadcast_output_gradient():
    """o.sum() sends an expanded gradient (all strides 0) into the backward."""
    leaves = _cast(_inputs(1, 2, 4, 16, 16, gamma="random", states=True), torch.float32, _device())
    truth = {name: t.detach().double().cpu().requires_grad_() for name, t in leaves.items()}
    options = dict(feature_map="elu+1", causal=True, normalize=True)
    _run_recurrent(leaves, options, None)[0].sum().backward()
    _run_reference(truth, options, None)[0].sum().backward()
    for name in NAMES:
        assert_close(leaves[name].grad, truth[name].grad, name=f"grad {name}")


def test_strong_decay_over_a_long_sequence():
    """γ = 0.05 over 130 steps: the state forgets within a few steps, and nothing under- or
    overflows (the backward never divides by γ to step back in time)."""
    outputs, grads = check(1, 1, 130, 16, 16, gamma=0.05)
    assert all(torch.isfinite(t).all() for t in [*outputs, *grads.values()])


def test_float16():
    check(1, 2, 9, 16, 16, dtype=torch.float16)


# --------------------------------------------------------------------------- registration


def _tiny_forward_args(requires_grad: bool):
    device = _device()
    q, k, v = (torch.randn(1, 1, 3, 16, device=device, requires_grad=requires_grad) for _ in range(3))
    decay = torch.full((1,), 0.9, device=device, requires_grad=requires_grad)
    s0 = torch.randn(1, 1, 16, 16, device=device, requires_grad=requires_grad)
    z0 = torch.rand(1, 1, 16, device=device).add(0.5).requires_grad_(requires_grad)
    return (q, k, v, decay, s0, z0, None, "elu+1", True, True, SCALE, EPS, True)


def test_opcheck_forward():
    testing.opcheck(torch.ops.fusednn.linear_attention_recurrent_forward, _tiny_forward_args(True), triton=True)


def test_opcheck_backward():
    q, k, v, decay, s0, z0, _, feature_map, causal, normalize, scale, eps, _ = _tiny_forward_args(False)
    o, den, s_final, z_final = torch.ops.fusednn.linear_attention_recurrent_forward(
        q, k, v, decay, s0, z0, None, feature_map, causal, normalize, scale, eps, True)
    args = (torch.randn_like(o), torch.randn_like(s_final), torch.randn_like(z_final), q, k, v, o, den, decay, s0, z0,
            None, feature_map, causal, normalize, scale, True, True, True, True, True, True)
    testing.opcheck(torch.ops.fusednn.linear_attention_recurrent_backward, args, triton=True)


def test_double_backward_goes_through_the_reference():
    """create_graph=True: the first gradient is autograd through the reference, so a second
    derivative is the reference's (the same float32 computation)."""
    q, k, v, decay, *_ = _tiny_forward_args(True)

    def second_derivative(run):
        leaves = [t.detach().requires_grad_() for t in (q, k, v, decay)]
        (dq,) = torch.autograd.grad(run(*leaves).square().sum(), leaves[0], create_graph=True)
        return torch.autograd.grad(dq.sin().sum(), leaves[1:])

    ours = second_derivative(lambda q, k, v, g: recurrent.recurrent_linear_attention(
        q, k, v, g, None, None, feature_map="elu+1", causal=True, normalize=True, scale=SCALE, eps=EPS,
        cu_seqlens=None, output_final_state=False)[0])
    expected = second_derivative(lambda q, k, v, g: reference(q, k, v, decay=g, scale=SCALE, eps=EPS))
    for name, a, e in zip(("k", "v", "decay"), ours, expected):
        assert_close(a, e, name=f"second derivative through {name}")
