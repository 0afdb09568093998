"""LSH attention (Reformer): tokens hashed by random rotations, sorted by bucket, attention within
chunks of the sorted sequence; Triton kernels (``fusednn.kernels.lsh_attention``) as
autograd-aware ops.

The hashing and the sort run in torch (``fusednn.reference.lsh_attention.sort_order``, not
differentiated); the keys qk / ||qk|| are computed in torch, so their gradient reaches qk through
autograd. Registered ops (R hash rounds, outputs in original token order):

* ``fusednn::lsh_chunk_attention_forward(Tensor q, Tensor k, Tensor v, Tensor order,
  int chunk_size, bool causal, float scale) -> (Tensor out, Tensor lse, Tensor self_only)``:
  q, k [B, H, T, D], v [B, H, T, Dv]; order [B, H, R, T] int32, the original position of each
  sorted slot of each round. out [B, H, R, T, Dv] (v's dtype), lse [B, H, R, T] float32,
  self_only [B, H, R, T] int8 (the queries that saw no other key and attended to themselves).
* ``fusednn::lsh_chunk_attention_backward(Tensor grad_out, Tensor? grad_lse, Tensor q, Tensor k,
  Tensor v, Tensor order, Tensor out, Tensor lse, Tensor self_only, int chunk_size, bool causal,
  float scale) -> (Tensor grad_q, Tensor grad_k, Tensor grad_v)``: each round's gradients in
  float32 buffers, summed over the rounds and returned in the inputs' dtypes.
* ``fusednn::lsh_combine_rounds_forward(Tensor out, Tensor lse) -> Tensor``:
  [B, H, T, Dv] = sum_r softmax_r(lse) out_r.
* ``fusednn::lsh_combine_rounds_backward(Tensor grad, Tensor out, Tensor lse)
  -> (Tensor grad_out, Tensor grad_lse)``.

Saved for backward: q, k, v, order and the forward's out, lse, self_only (the chunked
attention); the rounds' out and lse (the combination). Double backward: with
``create_graph=True`` both backward formulas are autograd through the reference
(``registry.differentiable_backward``).
"""

from __future__ import annotations

import functools
from typing import Optional

import torch
from torch import Tensor

from fusednn import _runtime, registry
from fusednn._validate import Args, dtype_list, dtype_name, shape_of
from fusednn.cases import lsh_attention as _cases
from fusednn.kernels import lsh_attention as _kernels
from fusednn.reference.lsh_attention import chunked_attention as _reference_chunked_attention
from fusednn.reference.lsh_attention import combine_rounds as _reference_combine_rounds
from fusednn.reference.lsh_attention import draw_rotations, shared_keys, sort_order
from fusednn.reference.lsh_attention import lsh_attention as _reference_lsh_attention

__all__ = ["lsh_attention"]

KERNEL_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
MAX_HEAD_DIM = _kernels.MAX_HEAD_DIM
# The round rows B * H * R share one axis of the launch grid (CUDA's limit on grid axis y).
MAX_ROUND_ROWS = 65535


# --------------------------------------------------------------------------- chunked attention ops


def _rounds_shape(order: Tensor, last: int) -> tuple[int, ...]:
    """[B, H, R, T, last]: one row of ``last`` values per token of each round."""
    return (*order.shape, last)


@torch.library.triton_op("fusednn::lsh_chunk_attention_forward", mutates_args=())
def lsh_chunk_attention_forward(q: Tensor, k: Tensor, v: Tensor, order: Tensor, chunk_size: int, causal: bool,
                                scale: float) -> tuple[Tensor, Tensor, Tensor]:
    """Each round's chunked attention. q, k [B, H, T, D] and v [B, H, T, Dv] of one dtype, unit
    last strides; order [B, H, R, T] int32, each row a permutation of 0 .. T - 1 (as sort_order
    gives; not checked here: the kernels gather and scatter through it). Returns out
    [B, H, R, T, Dv] (v's dtype), lse [B, H, R, T] (float32, natural log) and self_only
    [B, H, R, T] (int8), in original token order."""
    order = order.contiguous()
    out = _runtime.empty(_rounds_shape(order, v.shape[-1]), dtype=v.dtype, device=v.device)
    lse = _runtime.empty(order.shape, dtype=torch.float32, device=q.device)
    self_only = torch.empty(order.shape, dtype=torch.int8, device=q.device)
    _kernels.chunk_attention_forward(q, k, v, order, out, lse, self_only, chunk_size, causal, scale)
    return out, lse, self_only


@lsh_chunk_attention_forward.register_fake
def _(q, k, v, order, chunk_size, causal, scale):
    return (v.new_empty(_rounds_shape(order, v.shape[-1])), q.new_empty(order.shape, dtype=torch.float32),
            q.new_empty(order.shape, dtype=torch.int8))


@torch.library.triton_op("fusednn::lsh_chunk_attention_backward", mutates_args=())
def lsh_chunk_attention_backward(grad_out: Tensor, grad_lse: Optional[Tensor], q: Tensor, k: Tensor, v: Tensor,
                                 order: Tensor, out: Tensor, lse: Tensor, self_only: Tensor, chunk_size: int,
                                 causal: bool, scale: float) -> tuple[Tensor, Tensor, Tensor]:
    """Gradients of lsh_chunk_attention_forward: grad_q, grad_k, grad_v in the shapes and dtypes
    of q, k, v (contiguous). grad_out [B, H, R, T, Dv], grad_lse [B, H, R, T] or None (no
    gradient reaches lse). Each round's gradients are kept in float32 and summed over rounds."""
    if grad_lse is None:
        grad_lse = torch.zeros(lse.shape, dtype=torch.float32, device=lse.device)
    rounds = [_runtime.empty(_rounds_shape(order, t.shape[-1]), dtype=torch.float32, device=t.device)
              for t in (q, k, v)]
    _kernels.chunk_attention_backward(grad_out.contiguous(), grad_lse.float().contiguous(), q, k, v,
                                      order.contiguous(), out.contiguous(), lse.contiguous(),
                                      self_only.contiguous(), *rounds, chunk_size, causal, scale)
    return tuple(g.sum(dim=2).to(t.dtype) for g, t in zip(rounds, (q, k, v)))


@lsh_chunk_attention_backward.register_fake
def _(grad_out, grad_lse, q, k, v, order, out, lse, self_only, chunk_size, causal, scale):
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)


def _chunk_setup_context(ctx, inputs, output):
    q, k, v, order, chunk_size, causal, scale = inputs
    out, lse, self_only = output
    ctx.mark_non_differentiable(self_only)
    ctx.save_for_backward(q, k, v, order, out, lse, self_only)
    ctx.options = (chunk_size, causal, scale)


def _chunk_backward_formula(ctx, grad_out, grad_lse, _grad_self_only):
    q, k, v, order, out, lse, self_only = ctx.saved_tensors
    if torch.is_grad_enabled():  # create_graph=True: a differentiable first gradient

        def recompute(q, k, v):
            return _reference_chunked_attention(q, k, v, order.long(), *ctx.options)

        # Fresh views as the inputs: k is a function of q (the normalised qk), and a gradient taken
        # with respect to q itself would also count the path through k, which autograd adds again.
        inputs = tuple(t.view_as(t) for t in (q, k, v))
        grads = registry.differentiable_backward(recompute, inputs, ctx.needs_input_grad[:3], (grad_out, grad_lse))
        return (*grads, None, None, None, None)
    grads = torch.ops.fusednn.lsh_chunk_attention_backward(grad_out, grad_lse, q, k, v, order, out, lse, self_only,
                                                           *ctx.options)
    return tuple(g if needed else None for g, needed in zip(grads, ctx.needs_input_grad[:3])) + (None,) * 4


lsh_chunk_attention_forward.register_autograd(_chunk_backward_formula, setup_context=_chunk_setup_context)


# --------------------------------------------------------------------------- combination ops


@torch.library.triton_op("fusednn::lsh_combine_rounds_forward", mutates_args=())
def lsh_combine_rounds_forward(out: Tensor, lse: Tensor) -> Tensor:
    """out [B, H, R, T, Dv], lse [B, H, R, T] float32 -> [B, H, T, Dv] in out's dtype: the rounds
    weighted by the softmax over rounds of their lse."""
    out, lse = out.contiguous(), lse.contiguous()
    combined = _runtime.empty((*out.shape[:2], *out.shape[3:]), dtype=out.dtype, device=out.device)
    _kernels.combine_forward(out, lse, combined)
    return combined


@lsh_combine_rounds_forward.register_fake
def _(out, lse):
    return out.new_empty((*out.shape[:2], *out.shape[3:]))


@torch.library.triton_op("fusednn::lsh_combine_rounds_backward", mutates_args=())
def lsh_combine_rounds_backward(grad: Tensor, out: Tensor, lse: Tensor) -> tuple[Tensor, Tensor]:
    """Gradients of lsh_combine_rounds_forward: grad_out [B, H, R, T, Dv] (out's dtype) and
    grad_lse [B, H, R, T] (float32) from grad [B, H, T, Dv]."""
    out, lse = out.contiguous(), lse.contiguous()
    grad_out = _runtime.empty(out.shape, dtype=out.dtype, device=out.device)
    grad_lse = _runtime.empty(lse.shape, dtype=torch.float32, device=lse.device)
    _kernels.combine_backward(grad.contiguous(), out, lse, grad_out, grad_lse)
    return grad_out, grad_lse


@lsh_combine_rounds_backward.register_fake
def _(grad, out, lse):
    return out.new_empty(out.shape), lse.new_empty(lse.shape, dtype=torch.float32)


def _combine_setup_context(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _combine_backward_formula(ctx, grad):
    out, lse = ctx.saved_tensors
    if torch.is_grad_enabled():  # create_graph=True: a differentiable first gradient
        return tuple(registry.differentiable_backward(_reference_combine_rounds, (out, lse), ctx.needs_input_grad,
                                                      (grad,)))
    grad_out, grad_lse = torch.ops.fusednn.lsh_combine_rounds_backward(grad, out, lse)
    return (grad_out if ctx.needs_input_grad[0] else None, grad_lse if ctx.needs_input_grad[1] else None)


lsh_combine_rounds_forward.register_autograd(_combine_backward_formula, setup_context=_combine_setup_context)


# --------------------------------------------------------------------------- validation


def check_options(args: Args, n_buckets, n_hashes, chunk_size, causal) -> tuple[int, int, int, bool]:
    """The hashing and chunking options (also checked by ``fusednn.nn.LSHSelfAttention`` when it is
    built): n_buckets an even int >= 2, n_hashes and chunk_size ints >= 1, causal a bool."""
    n_buckets = args.integer("n_buckets", n_buckets, minimum=2)
    if n_buckets % 2:
        raise args.error("n_buckets", "an even int >= 2 (a rotation gives two buckets, x R and -x R)",
                         repr(n_buckets))
    return (n_buckets, args.integer("n_hashes", n_hashes, minimum=1),
            args.integer("chunk_size", chunk_size, minimum=1), args.boolean("causal", causal))


def _check(args: Args, qk, v, n_buckets, n_hashes, chunk_size, causal, rotations, scale):
    """Validates the arguments; returns (n_buckets, n_hashes, chunk_size, scale or None)."""
    args.tensor("qk", qk, "[B, H, T, D]", ndim=4)
    args.tensor("v", v, "[B, H, T, Dv]", ndim=4, like=qk, like_name="qk")
    if v.shape[:3] != qk.shape[:3]:
        raise args.error("v", f"[B, H, T, Dv] with qk's (B, H, T) = {tuple(qk.shape[:3])}", shape_of(v))
    for name, t, dim in (("qk", qk, "D"), ("v", v, "Dv")):
        if not 1 <= t.shape[-1] <= MAX_HEAD_DIM:
            raise args.error(name, f"a tensor with a head dim {dim} between 1 and {MAX_HEAD_DIM}", shape_of(t))
    n_buckets, n_hashes, chunk_size, causal = check_options(args, n_buckets, n_hashes, chunk_size, causal)
    if rotations is not None:
        args.tensor("rotations", rotations, "[n_hashes, D, n_buckets // 2]", dtypes=None)
        allowed = tuple(dict.fromkeys((qk.dtype, torch.float32)))
        if rotations.dtype not in allowed:
            raise args.error("rotations", f"{dtype_list(allowed)} (qk's dtype or float32)", dtype_name(rotations.dtype),
                             TypeError)
        if rotations.device != qk.device:
            raise args.error("rotations", f"on qk's device {qk.device}", str(rotations.device))
        args.shape("rotations", rotations, (n_hashes, qk.shape[-1], n_buckets // 2), "[n_hashes, D, n_buckets // 2]")
    if scale is not None:
        scale = args.real("scale", scale)
    return n_buckets, n_hashes, chunk_size, scale


# --------------------------------------------------------------------------- public function


def lsh_attention(
    qk: Tensor,
    v: Tensor,
    *,
    n_buckets: int,
    n_hashes: int = 1,
    chunk_size: int = 64,
    causal: bool = False,
    rotations: Optional[Tensor] = None,
    scale: Optional[float] = None,
) -> Tensor:
    """LSH attention (Reformer): shared query/key ``qk``, each token attending to the tokens that
    hash near it.

    qk: [B, H, T, D]; v: [B, H, T, Dv] of qk's dtype and device; any strides. D, Dv in 1..256.
    float16, bfloat16, float32 (float64 runs the reference). Returns out [B, H, T, Dv] in v's
    dtype.

    Per hash round r (n_hashes rounds):

    * hashing: x = qk / ||qk|| (L2 over D); the token's bucket is ``argmax([x R_r, -x R_r])``
      with R_r = rotations[r] [D, n_buckets // 2]; n_buckets even and >= 2. rotations
      [n_hashes, D, n_buckets // 2] of qk's dtype or float32 on qk's device; when None they
      are drawn with ``torch.randn`` on qk's device in float32 (torch.manual_seed reproduces
      them). Hashing runs in float32 and is not differentiated;
    * the tokens are sorted by (bucket, position) and the sorted sequence is cut into chunks
      of chunk_size (the last one may be shorter); each chunk's queries attend to the keys of
      that chunk and the previous one (chunk 0 only to its own: no wrap-around). Chunks, not
      buckets, decide visibility: keys of other buckets inside the two chunks are visible;
    * a token does not attend to itself unless it has no other visible key (decided per
      round); with ``causal`` it attends only to original positions j < i, so the first token
      attends to itself;
    * queries are qk as given, keys qk / ||qk||; scores ``scale * q . k`` (scale default
      D ** -0.5); softmax over the visible keys gives the round's output o_r and log-sum-exp
      lse_r.

    The rounds combine as ``o = sum_r softmax_r(lse_r) o_r``; a key seen in several rounds
    counts in each (no de-duplication). Gradients flow to qk (as query and through the keys)
    and v.

    Saved for backward: qk, the keys, v, the sort order, each round's output and lse and which
    queries attended to themselves alone. The backward recomputes the probabilities chunk by
    chunk; each round's gradients accumulate in float32.
    """
    args = Args("fusednn.ops.lsh_attention")
    n_buckets, n_hashes, chunk_size, scale = _check(args, qk, v, n_buckets, n_hashes, chunk_size, causal, rotations,
                                                    scale)
    if rotations is None:
        rotations = draw_rotations(n_hashes, qk.shape[-1], n_buckets, qk.device)
    scale = float(qk.shape[-1] ** -0.5 if scale is None else scale)
    if LSH_ATTENTION.select(qk.device, qk.dtype) == "reference":
        return _reference_lsh_attention(qk, v, n_buckets=n_buckets, n_hashes=n_hashes, chunk_size=chunk_size,
                                        causal=causal, rotations=rotations, scale=scale)
    round_rows = qk.shape[0] * qk.shape[1] * n_hashes
    if round_rows > MAX_ROUND_ROWS:
        raise args.unsupported(f"the kernels take B * H * n_hashes <= {MAX_ROUND_ROWS} (one axis of the launch "
                               f"grid); got {round_rows}")
    order = sort_order(qk, rotations).to(torch.int32)
    q, k, v = (_runtime.unit_last_stride(t) for t in (qk, shared_keys(qk), v))
    out, lse, _self_only = torch.ops.fusednn.lsh_chunk_attention_forward(q, k, v, order, chunk_size, causal, scale)
    if n_hashes == 1:  # one round: its softmax weight is 1
        return out.select(2, 0)
    return torch.ops.fusednn.lsh_combine_rounds_forward(out, lse)


# --------------------------------------------------------------------------- registry

LSH_ATTENTION = registry.register(registry.OpInfo(
    name="lsh_attention", family="efficient_attention", function=lsh_attention, reference=_reference_lsh_attention,
    baseline=functools.partial(_reference_lsh_attention, upcast=False),
    kernels=(registry.Kernel("triton", KERNEL_DTYPES, compile_variants=_kernels.compile_variants),),
    samples=_cases.lsh_attention_samples, bad_inputs=_cases.lsh_attention_bad_inputs, outputs=("out",),
    double_backward=True, bench=_cases.BENCH_SHAPES,
))
