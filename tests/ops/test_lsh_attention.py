"""LSH attention beyond what every op gets from the registry (tests/test_registry.py): the
reference against a token-by-token reading of the definition, the special case that is full
shared-QK attention with the self-mask, causality (no gradient from later tokens, the first
token attending to itself), the combination of rounds, rotations drawn from torch's generator,
double backward, dispatch, and on a GPU a realistic size in bfloat16."""

import pytest
import torch
import torch.nn.functional as F

import fusednn
from fusednn import reference, registry, testing
from fusednn.cases.lsh_attention import lsh_inputs
from fusednn.reference.lsh_attention import chunked_attention, shared_keys, sort_order
from fusednn.reference.lsh_attention import lsh_attention as reference_lsh_attention
from fusednn.registry import Sample
from fusednn.testing import assert_close

LSH = registry.get("lsh_attention")
# (device, dtype) where the Triton kernels run here, float32 (float16 is in the registry grid)
KERNEL_PAIRS = [(d, t) for d, t in testing.kernel_dtypes(LSH) if t == torch.float32 or d == "cuda"]
requires_kernel = pytest.mark.skipif(not KERNEL_PAIRS, reason="no Triton LSH attention kernel runs here")
requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _pairs():
    """The kernel pairs, and the float64 reference path on the CPU."""
    return KERNEL + [pytest.param("cpu", torch.float64, id="cpu-float64-reference")]


KERNEL = [pytest.param(d, t, id=f"{d}-{str(t)[6:]}") for d, t in KERNEL_PAIRS]


def _leaves(device, dtype, *tensors):
    return [t.detach().to(device, dtype).requires_grad_() for t in tensors]


# --------------------------------------------------------------------------- the definition


def _token_by_token(qk, v, n_buckets, rotations, chunk_size, causal, scale):
    """The description read literally, one token at a time (float64, tiny sizes)."""
    B, H, T, D = qk.shape
    out = torch.zeros(B, H, T, v.shape[-1], dtype=torch.float64)
    for b in range(B):
        for h in range(H):
            rounds = []
            for rotation in rotations:
                x = qk[b, h] / qk[b, h].norm(dim=-1, keepdim=True)
                buckets = torch.cat([x @ rotation, -(x @ rotation)], dim=-1).argmax(dim=-1).tolist()
                slots = sorted(range(T), key=lambda i: (buckets[i], i))
                keys = qk[b, h] / qk[b, h].norm(dim=-1, keepdim=True)
                o, lse = torch.zeros(T, v.shape[-1], dtype=torch.float64), torch.zeros(T, dtype=torch.float64)
                for s, i in enumerate(slots):
                    chunk = s // chunk_size
                    window = [slots[t] for t in range(T) if t // chunk_size in (chunk - 1, chunk)]
                    visible = [j for j in window if j != i and (not causal or j < i)] or [i]
                    scores = torch.stack([scale * qk[b, h, i] @ keys[j] for j in visible])
                    lse[i] = torch.logsumexp(scores, dim=0)
                    o[i] = (torch.softmax(scores, dim=0)[:, None] * v[b, h, visible]).sum(dim=0)
                rounds.append((o, lse))
            weights = torch.softmax(torch.stack([lse for _, lse in rounds]), dim=0)
            out[b, h] = sum(w[:, None] * o for w, (o, _) in zip(weights, rounds))
    return out


@pytest.mark.parametrize("causal", [False, True], ids=["plain", "causal"])
@pytest.mark.parametrize("chunk_size", [1, 3, 4, 20])
def test_reference_follows_the_description(chunk_size, causal):
    qk, v, rotations = lsh_inputs(2, 1, 11, 4, 3, 4, 2, grad=False)
    options = dict(n_buckets=4, n_hashes=2, chunk_size=chunk_size, causal=causal, rotations=rotations)
    expected = _token_by_token(qk, v, 4, rotations, chunk_size, causal, 0.5)
    assert_close(reference_lsh_attention(qk, v, **options), expected)


def test_sort_order_is_by_bucket_then_position():
    qk, _, rotations = lsh_inputs(1, 2, 40, 8, 1, 6, 3, grad=False)
    order = sort_order(qk, rotations)
    projected = torch.einsum("bhtd,rdk->bhrtk", F.normalize(qk, dim=-1), rotations)
    buckets = torch.cat([projected, -projected], dim=-1).argmax(dim=-1)
    keys = buckets.gather(-1, order) * 40 + order
    assert torch.all(keys[..., 1:] > keys[..., :-1])
    assert buckets.unique().numel() == 6  # all buckets in use: the sort is not trivial


# --------------------------------------------------------------------------- special cases


def _one_bucket_inputs(B, H, T, D, n_hashes):
    """qk whose first coordinate is positive, and rotations reading that coordinate alone:
    x R_r = (x_0, 0, ...) puts every token in bucket 0, in every round."""
    qk = torch.randn(B, H, T, D, dtype=torch.float64)
    qk[..., 0] = qk[..., 0].abs() + 0.5
    rotations = torch.zeros(n_hashes, D, 2, dtype=torch.float64)
    rotations[:, 0, 0] = 1.0
    return qk, torch.randn(B, H, T, D, dtype=torch.float64), rotations


@pytest.mark.parametrize("causal", [False, True], ids=["plain", "causal"])
@pytest.mark.parametrize("device, dtype", _pairs())
def test_one_bucket_and_one_chunk_is_full_attention_with_the_self_mask(device, dtype, causal):
    T = 20
    qk, v, rotations = _one_bucket_inputs(1, 2, T, 16, 2)
    assert torch.equal(sort_order(qk, rotations), torch.arange(T).expand(1, 2, 2, T))
    qk, v = _leaves(device, dtype, qk, v)
    out = fusednn.ops.lsh_attention(qk, v, n_buckets=4, n_hashes=2, chunk_size=32, causal=causal,
                                    rotations=rotations.to(device, dtype))
    # every other token, or with causal every earlier one (token 0: itself alone)
    i, j = torch.arange(T)[:, None], torch.arange(T)[None, :]
    may_attend = (j < i) | ((i == 0) & (j == 0)) if causal else j != i
    qk64, v64 = (t.detach().cpu().double() for t in (qk, v))
    expected = reference.attention(qk64, F.normalize(qk64, dim=-1), v64, attn_bias=may_attend)
    assert_close(out.detach().cpu(), expected, precision=dtype)


@pytest.mark.parametrize("device, dtype", KERNEL[:1])
def test_causal_output_ignores_later_tokens_and_the_first_attends_to_itself(device, dtype):
    qk, v, rotations = lsh_inputs(1, 1, 24, 16, 16, 4, 2)
    qk, v = _leaves(device, dtype, qk, v)
    out = fusednn.ops.lsh_attention(qk, v, n_buckets=4, n_hashes=2, chunk_size=8, causal=True,
                                    rotations=rotations.to(device, dtype))
    # no other token comes before token 0: in every round it sees only itself
    assert_close(out[:, :, 0].detach().cpu(), v[:, :, 0].detach().cpu().double())
    i = 17
    grad_qk, grad_v = torch.autograd.grad(out[:, :, i].sum(), (qk, v))
    assert torch.all(grad_qk[:, :, i + 1:] == 0) and torch.all(grad_v[:, :, i + 1:] == 0)
    assert grad_v[:, :, :i + 1].abs().sum() > 0


@pytest.mark.parametrize("device, dtype", KERNEL[:1])
def test_identical_rounds_weigh_one_half_each(device, dtype):
    """Two rounds with the same rotations give equal lse, so each weighs 1/2: the result is the
    one-round result, and so are the gradients."""
    qk, v, rotations = lsh_inputs(1, 1, 24, 16, 16, 4, 1)
    grad_out = torch.randn(1, 1, 24, 16, device=device, dtype=dtype)
    results = []
    for rounds in (rotations, rotations.expand(2, -1, -1)):
        leaves = _leaves(device, dtype, qk, v)
        out = fusednn.ops.lsh_attention(*leaves, n_buckets=4, n_hashes=rounds.shape[0], chunk_size=8,
                                        rotations=rounds.to(device, dtype))
        results.append((out, *torch.autograd.grad(out, leaves, grad_out)))
    for name, one, two in zip(("out", "grad qk", "grad v"), *results):
        assert_close(two.detach().cpu(), one.detach().cpu().double(), name=name)


@pytest.mark.parametrize("device, dtype", KERNEL[:1])
def test_rotations_are_drawn_from_torch_generator(device, dtype):
    qk, v, _ = lsh_inputs(1, 1, 20, 8, 8, 4, 2, grad=False)
    qk, v = qk.to(device, dtype), v.to(device, dtype)
    torch.manual_seed(5)
    drawn = fusednn.ops.lsh_attention(qk, v, n_buckets=6, n_hashes=2, chunk_size=4)
    torch.manual_seed(5)
    rotations = torch.randn(2, 8, 3, device=device)
    assert torch.equal(drawn, fusednn.ops.lsh_attention(qk, v, n_buckets=6, n_hashes=2, chunk_size=4,
                                                        rotations=rotations))


# --------------------------------------------------------------------------- gradients


@pytest.mark.parametrize("device, dtype", KERNEL[:1])
def test_double_backward_matches_the_reference(device, dtype):
    """create_graph=True: the first gradient is differentiable (autograd through the reference
    inside the backward), so a gradient of the gradient matches the reference's."""
    qk, v, rotations = lsh_inputs(1, 1, 12, 8, 8, 4, 2)
    grad_out, direction_qk, direction_v = torch.randn(1, 1, 12, 8), torch.randn(1, 1, 12, 8), torch.randn(1, 1, 12, 8)

    def second(fn, device, dtype):
        leaves = _leaves(device, dtype, qk, v)
        cast = [t.to(device, dtype) for t in (grad_out, direction_qk, direction_v)]
        out = fn(*leaves, n_buckets=4, n_hashes=2, chunk_size=4, causal=True, rotations=rotations.to(device, dtype))
        grads = torch.autograd.grad(out, leaves, cast[0], create_graph=True)
        return torch.autograd.grad((grads[0] * cast[1]).sum() + (grads[1] * cast[2]).sum(), leaves)

    expected = second(reference_lsh_attention, "cpu", torch.float64)
    for name, got, want in zip(("qk", "v"), second(fusednn.ops.lsh_attention, device, dtype), expected):
        assert_close(got.cpu(), want, name=f"second derivative, {name}")


@pytest.mark.parametrize("device, dtype", KERNEL[:1])
def test_chunked_attention_op_gradients_reach_lse(device, dtype):
    """The registered chunked-attention op alone: its lse output carries a gradient into q, k
    (the round combination relies on it), checked against the reference's."""
    qk, v, rotations = lsh_inputs(1, 2, 21, 16, 16, 4, 2, grad=False)
    order = sort_order(qk, rotations)
    grad_lse = torch.randn(1, 2, 2, 21, dtype=torch.float64)
    results = []
    for run_device, run_dtype, fn in ((device, dtype, None), ("cpu", torch.float64, chunked_attention)):
        q, v_ = _leaves(run_device, run_dtype, qk, v)
        k = shared_keys(q)
        if fn is None:
            _, lse, _ = torch.ops.fusednn.lsh_chunk_attention_forward(q, k, v_, order.to(run_device, torch.int32), 8,
                                                                      True, 0.3)
        else:
            _, lse = fn(q, k, v_, order, 8, True, 0.3)
        results.append((lse, torch.autograd.grad(lse, q, grad_lse.to(run_device, lse.dtype))[0]))
    (lse, grad_q), (want_lse, want_grad_q) = results
    assert_close(lse.cpu(), want_lse, name="lse", precision=dtype)
    assert_close(grad_q.cpu(), want_grad_q, name="grad qk", precision=dtype)


# --------------------------------------------------------------------------- dispatch


@requires_kernel
def test_kernel_calls_and_reference_fallback():
    qk, v, rotations = lsh_inputs(1, 1, 9, 8, 8, 4, 2)
    sample = Sample("dispatch", (qk, v), dict(n_buckets=4, n_hashes=2, chunk_size=4, rotations=rotations))
    device, dtype = KERNEL_PAIRS[0]
    names = {call.op.__name__.split(".")[0] for call in testing.fusednn_calls(LSH, sample, device, dtype)}
    assert names == {"lsh_chunk_attention_forward", "lsh_chunk_attention_backward", "lsh_combine_rounds_forward",
                     "lsh_combine_rounds_backward"}
    one_round = Sample("one-round", (qk, v), dict(n_buckets=4, n_hashes=1, chunk_size=4, rotations=rotations[:1]))
    names = {call.op.__name__.split(".")[0] for call in testing.fusednn_calls(LSH, one_round, device, dtype)}
    assert names == {"lsh_chunk_attention_forward", "lsh_chunk_attention_backward"}
    assert not testing.fusednn_calls(LSH, sample, "cpu", torch.float64)


@requires_kernel
def test_too_many_round_rows_for_the_grid_raise():
    device, dtype = KERNEL_PAIRS[0]
    qk = torch.randn(1, 32768, 1, 1, device=device, dtype=dtype)
    with pytest.raises(NotImplementedError, match=r"fusednn\.ops\.lsh_attention: .*B \* H \* n_hashes <= 65535"):
        fusednn.ops.lsh_attention(qk, qk, n_buckets=2, n_hashes=3)


# --------------------------------------------------------------------------- GPU


@requires_cuda
@pytest.mark.parametrize("causal", [False, True], ids=["plain", "causal"])
def test_realistic_size_bfloat16(causal):
    T, D = 2048, 64
    qk, v, rotations = lsh_inputs(2, 4, T, D, D, T // 64, 4)
    sample = Sample("realistic", (qk, v), dict(n_buckets=T // 64, n_hashes=4, chunk_size=64, causal=causal,
                                               rotations=rotations))
    testing.compare_sample(LSH, sample, "cuda", torch.bfloat16)


@requires_cuda
def test_bfloat16_with_float32_rotations_matches_its_reference():
    qk, v, rotations = lsh_inputs(1, 2, 300, 64, 64, 8, 2, grad=False)
    qk, v = qk.cuda().bfloat16(), v.cuda().bfloat16()
    rotations = rotations.cuda().float()
    out = fusednn.ops.lsh_attention(qk, v, n_buckets=8, n_hashes=2, chunk_size=32, rotations=rotations)
    expected = reference_lsh_attention(qk.double(), v.double(), n_buckets=8, n_hashes=2, chunk_size=32,
                                       rotations=rotations.double())
    baseline = reference_lsh_attention(qk, v, n_buckets=8, n_hashes=2, chunk_size=32, rotations=rotations,
                                       upcast=False)
    assert_close(out.cpu(), expected.cpu(), lowp_baseline=baseline.cpu(), precision=torch.bfloat16)
