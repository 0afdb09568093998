"""linear_attention beyond what every op gets from the registry (tests/test_registry.py): both
algorithms forced (the registry's samples run "auto", which takes the recurrent kernel for
short sequences) against the reference for every feature map and option, with the initial
and final states and every gradient; packed sequences against one call per sequence; a strong
decay over a long sequence; the decay gradient in float16; a [B, T, H, D] input read in
place; double backward through the reference."""

import pytest
import torch

import fusednn
from fusednn import registry, testing
from fusednn.kernels import linear_attention as kernels
from fusednn.reference.linear_attention import linear_attention as reference
from fusednn.testing import assert_close

OP = registry.get("linear_attention")
FLOAT32_PAIRS = [(d, t) for d, t in testing.kernel_dtypes(OP) if t == torch.float32]
FLOAT16_PAIRS = [(d, t) for d, t in testing.kernel_dtypes(OP) if t == torch.float16]
NAMES = ("q", "k", "v", "decay", "S_0", "z_0")


def _leaves(B, H, T, Dk, Dv, *, decay=None, normalize=True, sequences=None, shift=0.0):
    """float64 CPU leaves q, k, v, decay (None or [H] filled with ``decay``), S_0, z_0 (None
    without normalize; positive) for ``sequences`` (default B) states."""
    N = B if sequences is None else sequences
    q, k = (torch.randn(B, H, T, Dk, dtype=torch.float64) + shift for _ in range(2))
    v = torch.randn(B, H, T, Dv, dtype=torch.float64)
    gamma = None if decay is None else (decay + 0.02 * torch.rand(H, dtype=torch.float64)).clamp(max=1.0)
    s0 = torch.randn(N, H, Dk, Dv, dtype=torch.float64)
    z0 = torch.rand(N, H, Dk, dtype=torch.float64) + 0.5 if normalize else None
    return [q, k, v, gamma, s0, z0]


def _run(fn, leaves, device, dtype, **options):
    """Outputs (o, S[, z]) and the gradients of sum_i <output_i, cotangent_i> to every leaf
    (None for a leaf that is None; zeros where no output depends on it: the decay without
    causal), the leaves cast to (device, dtype)."""
    cast = [None if t is None else t.detach().to(device=device, dtype=dtype).requires_grad_() for t in leaves]
    q, k, v, decay, s0, z0 = cast
    state = (s0, z0) if options.get("normalize", True) else (s0,)
    o, final = fn(q, k, v, decay=decay, initial_state=state, output_final_state=True, **options)
    outputs = [o, *final]
    cotangents = [testing.cotangent(i, t).to(device=device, dtype=t.dtype) for i, t in enumerate(outputs)]
    present = [t for t in cast if t is not None]
    grads = iter(torch.autograd.grad(outputs, present, cotangents, allow_unused=True, materialize_grads=True))
    return [t.detach() for t in outputs], [None if t is None else next(grads) for t in cast]


def _assert_matches_reference(fn, leaves, device, dtype, **options):
    """fn's outputs and gradients against the float64 reference's; returns them."""
    outputs, grads = _run(fn, leaves, device, dtype, **options)
    options.pop("algorithm", None)  # the reference is the recurrence
    expected_outputs, expected_grads = _run(reference, leaves, "cpu", torch.float64, **options)
    for name, got, want in zip(("o", "S", "z"), outputs, expected_outputs):
        assert_close(got, want, name=name)
    for name, got, want in zip(NAMES, grads, expected_grads):
        if want is not None:
            assert_close(got, want, name=f"grad {name}")
    return outputs, grads


# (feature_map, causal, decay, normalize, shift of q and k): every feature map, causal and not,
# decay and not (a decay without causal is ignored: zero gradient), normalize and not (the
# normalised cases keep the denominators away from 0)
OPTIONS = [
    ("elu+1", True, 0.9, True, 0.0),
    ("relu", True, None, False, 0.0),
    ("identity", True, 0.8, False, 0.0),
    ("relu", True, 0.95, True, 1.0),
    ("elu+1", False, None, True, 0.0),
    ("identity", False, 0.9, False, 0.0),
]


@pytest.mark.parametrize("device, dtype", FLOAT32_PAIRS)
@pytest.mark.parametrize("algorithm", ["chunk", "recurrent"])
@pytest.mark.parametrize("feature_map, causal, decay, normalize, shift", OPTIONS,
                         ids=[f"{f}-{'causal' if c else 'full'}-{'decay' if d else 'plain'}-{'norm' if n else 'raw'}"
                              for f, c, d, n, _ in OPTIONS])
def test_algorithms_match_the_reference(device, dtype, algorithm, feature_map, causal, decay, normalize, shift):
    """Both algorithms against the float64 recurrence, with initial and final states and the
    gradients of q, k, v, the decay and the initial states (T = 45: two chunks of 32 under the
    interpreter, the second partial)."""
    leaves = _leaves(1, 2, 45, 16, 24, decay=decay, normalize=normalize, shift=shift)
    _assert_matches_reference(fusednn.ops.linear_attention, leaves, device, dtype, feature_map=feature_map,
                              causal=causal, normalize=normalize, algorithm=algorithm)


@pytest.mark.parametrize("device, dtype", FLOAT32_PAIRS)
@pytest.mark.parametrize("T, Dk, Dv", [(1, 16, 16), (17, 40, 40), (63, 64, 64), (130, 16, 40)])
def test_chunked_lengths_and_head_dims(device, dtype, T, Dk, Dv):
    """The chunked kernels (which "auto" does not pick for T <= 16) at odd lengths, across
    chunk borders, and at head dims that fill the padded tiles partly, fully, and unequally."""
    leaves = _leaves(1, 1, T, Dk, Dv, decay=0.9)
    _assert_matches_reference(fusednn.ops.linear_attention, leaves, device, dtype, algorithm="chunk")


@pytest.mark.parametrize("device, dtype", FLOAT32_PAIRS)
@pytest.mark.parametrize("algorithm", ["chunk", "recurrent"])
def test_packed_sequences_are_separate_calls(device, dtype, algorithm):
    """cu_seqlens: each sequence (one of them empty) starts from its own initial state and ends
    in its own final state, as separate calls give, gradients included."""
    offsets = [0, 35, 35, 40, 50]
    N = len(offsets) - 1
    leaves = _leaves(1, 2, offsets[-1], 16, 16, decay=0.9, sequences=N)
    cu = torch.tensor(offsets, dtype=torch.int32, device=device)
    packed_out, packed_grads = _run(fusednn.ops.linear_attention, leaves, device, dtype, cu_seqlens=cu,
                                    algorithm=algorithm)

    def per_sequence(q, k, v, decay, initial_state, **options):
        pieces = [fusednn.ops.linear_attention(
            q[:, :, a:b], k[:, :, a:b], v[:, :, a:b], decay=decay,
            initial_state=tuple(t[n:n + 1] for t in initial_state), **options)
            for n, (a, b) in enumerate(zip(offsets[:-1], offsets[1:]))]
        o = torch.cat([p[0] for p in pieces], dim=2)
        return o, tuple(torch.cat([p[1][i] for p in pieces]) for i in range(2))

    separate_out, separate_grads = _run(per_sequence, leaves, device, dtype, algorithm=algorithm)
    for name, got, want in zip(("o", "S", "z"), packed_out, separate_out):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5, msg=name)
    for name, got, want in zip(NAMES, packed_grads, separate_grads):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5, msg=f"grad {name}")


@pytest.mark.parametrize("device, dtype", FLOAT32_PAIRS)
@pytest.mark.parametrize("gamma", [0.5, 0.05])
def test_strong_decay_over_a_long_sequence(device, dtype, gamma):
    """γ^130 is 1e-39 (0.5) or far below float32's range (0.05): every decay factor is taken
    relative to a chunk's start or end, so none overflows, and those that underflow multiply
    negligible terms. Outputs and gradients (the decay's included) stay finite and exact."""
    leaves = _leaves(1, 1, 130, 16, 16, decay=gamma)
    leaves[3] = torch.full((1,), gamma, dtype=torch.float64)
    outputs, grads = _assert_matches_reference(fusednn.ops.linear_attention, leaves, device, dtype, algorithm="chunk")
    assert all(torch.isfinite(t).all() for t in outputs + grads)


@pytest.mark.parametrize("device, dtype", FLOAT16_PAIRS)
def test_decay_gradient_in_float16(device, dtype):
    """The decay's gradient (a sum over every position, kept out of the registry's float16 grid:
    the 2x rule's maximum over [H] is noise) is within 1% of the float64 truth: the float16
    inputs alone move it by ~1e-3 (the chunked kernels carry dS/dlogγ forward; the identity of
    position-weighted sums would cancel to ~4e-2 here)."""
    leaves = _leaves(1, 4, 130, 32, 32, decay=0.9)
    _outputs, grads = _run(fusednn.ops.linear_attention, leaves, device, dtype, algorithm="chunk")
    _outputs, expected = _run(reference, leaves, "cpu", torch.float64)
    assert_close(grads[3], expected[3], name="grad decay", rtol=1e-2, precision=torch.float32)


@pytest.mark.parametrize("device, dtype", FLOAT32_PAIRS)
def test_transposed_input_is_read_in_place(device, dtype, monkeypatch):
    """[B, T, H, D] tensors seen as [B, H, T, D] reach the kernels as they are (no copy), and
    o and the gradients of q, k, v come in that layout."""
    seen = []
    forward, backward = kernels.chunk_forward, kernels.chunk_backward

    def recording_forward(q, k, v, *args, **kwargs):
        seen.append(tuple(t.data_ptr() for t in (q, k, v)))
        return forward(q, k, v, *args, **kwargs)

    def recording_backward(grad_o, grad_s, grad_z, q, k, v, *args, **kwargs):
        seen.append(tuple(t.data_ptr() for t in (q, k, v)))
        return backward(grad_o, grad_s, grad_z, q, k, v, *args, **kwargs)

    monkeypatch.setattr(kernels, "chunk_forward", recording_forward)
    monkeypatch.setattr(kernels, "chunk_backward", recording_backward)
    bases = [torch.randn(2, 33, 3, 16, device=device, dtype=dtype) for _ in range(3)]
    q, k, v = (b.transpose(1, 2).requires_grad_() for b in bases)
    o = fusednn.ops.linear_attention(q, k, v, algorithm="chunk")
    grads = torch.autograd.grad(o, (q, k, v), torch.randn_like(o))
    assert seen == [tuple(b.data_ptr() for b in bases)] * 2
    assert all(t.transpose(1, 2).is_contiguous() for t in (o, *grads))
    expected = reference(*(t.detach().double() for t in (q, k, v)))
    assert_close(o, expected, name="o")


@pytest.mark.parametrize("device, dtype", FLOAT32_PAIRS)
def test_double_backward_follows_the_reference(device, dtype):
    """With create_graph=True the first gradient is differentiable (autograd through the
    reference): a gradient of the gradient matches the float64 reference's."""
    leaves = _leaves(1, 1, 9, 4, 3, decay=0.9)
    results = []
    for options, cast in ((dict(algorithm="chunk"), dict(device=device, dtype=dtype)),
                          (dict(), dict(device="cpu", dtype=torch.float64))):
        q, k, v, decay = (t.detach().to(**cast).requires_grad_() for t in leaves[:4])
        fn = fusednn.ops.linear_attention if options else reference
        o = fn(q, k, v, decay=decay, **options)
        (grad_q,) = torch.autograd.grad(o, q, torch.ones_like(o), create_graph=True)
        results.append(torch.autograd.grad((grad_q ** 2).sum(), (k, v, decay)))
    for name, got, want in zip(("k", "v", "decay"), *results):
        assert_close(got, want, name=f"grad grad {name}")
