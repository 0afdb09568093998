"""Linear attention (causal or not, with a per-head decay, normalised or not, with initial and
final states, over dense or packed sequences) as an autograd-aware op: the chunked Triton
kernels of ``fusednn.kernels.linear_attention`` and, for short sequences, the recurrent ones
of ``fusednn.ops._linear_attention_recurrent``.

Registered ops of the chunked algorithm (``feature_map`` a key of
``kernels._feature_map.FEATURE_MAP_CODES``; decay, s0, z0 None or tensors):

* ``fusednn::linear_attention_chunk_forward(q, k, v, decay?, s0?, z0?, cu_seqlens?, feature_map,
  causal, normalize, scale, eps, output_final_state) -> (o, s_final, z_final, den)``: o
  [B, H, T, Dv] in v's dtype and layout family (see ``_like_heads``); s_final [N, H, Dk, Dv] and
  z_final [N, H, Dk] float32 (``[0]`` unless output_final_state, z_final also without
  normalize); den [B, H, T] float32, the normalisation's denominator without eps (``[0]``
  without normalize), kept for the backward.
* ``fusednn::linear_attention_chunk_backward(grad_o, grad_s?, grad_z?, q, k, v, o?, den?, decay?,
  s0?, z0?, cu_seqlens?, feature_map, causal, normalize, scale, eps, q_grad, kv_grad,
  decay_grad, s0_grad, z0_grad) -> (dq, dk, dv, ddecay, ds0, dz0)``: each ``[0]`` unless asked
  for; dq, dk, dv in the inputs' dtypes and layouts, the others in their inputs' dtypes.

Saved for backward: q, k, v, decay, s0, z0, cu_seqlens and, with normalize, o and den; the
states inside the sequence are recomputed (memory O(B·H·Dk·Dv) beside the inputs). Double
backward: with ``create_graph=True`` the backward is autograd through the reference
(``registry.differentiable_backward``).
"""

from __future__ import annotations

from typing import Optional

import functools

import torch
from torch import Tensor

from fusednn import _runtime, registry
from fusednn._validate import Args, describe, shape_of
from fusednn.cases import linear_attention as _cases
from fusednn.kernels import linear_attention as _kernels
from fusednn.ops._linear_attention_recurrent import recurrent_linear_attention
from fusednn.reference.linear_attention import FEATURE_MAPS
from fusednn.reference.linear_attention import linear_attention as _reference

__all__ = ["linear_attention"]

KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
ALGORITHMS = ("auto", "chunk", "recurrent")
# "auto" runs the recurrent kernel up to this length (decoding steps, short prompts: a chunk
# of 64 positions would be mostly padding), the chunked one above it.
RECURRENT_MAX_LENGTH = 16


# --------------------------------------------------------------------------- layouts


def _like_heads(t: Tensor, last: int, allocate=torch.empty, dtype=None) -> Tensor:
    """A [B, H, T, last] tensor in t's layout family: a [B, T, H, D] tensor seen as [B, H, T, D]
    gives one stored [B, T, H, last] (so o.transpose(1, 2) is contiguous for the output
    projection), any other a contiguous one."""
    batch, heads, length = t.shape[:3]
    dtype = t.dtype if dtype is None else dtype
    if not t.is_contiguous() and t.transpose(1, 2).is_contiguous():
        return allocate((batch, length, heads, last), dtype=dtype, device=t.device).transpose(1, 2)
    return allocate((batch, heads, length, last), dtype=dtype, device=t.device)


def _sequences(q: Tensor, cu_seqlens: Optional[Tensor]) -> int:
    return q.shape[0] if cu_seqlens is None else cu_seqlens.shape[0] - 1


def _state_shapes(q: Tensor, v: Tensor, cu_seqlens: Optional[Tensor]):
    n, heads = _sequences(q, cu_seqlens), q.shape[1]
    return (n, heads, q.shape[-1], v.shape[-1]), (n, heads, q.shape[-1])


def _float32_contiguous(t: Optional[Tensor]) -> Optional[Tensor]:
    return None if t is None else t.to(torch.float32).contiguous()


# --------------------------------------------------------------------------- forward and backward ops


@torch.library.triton_op("fusednn::linear_attention_chunk_forward", mutates_args=())
def linear_attention_chunk_forward(
    q: Tensor, k: Tensor, v: Tensor, decay: Optional[Tensor], s0: Optional[Tensor], z0: Optional[Tensor],
    cu_seqlens: Optional[Tensor], feature_map: str, causal: bool, normalize: bool, scale: float, eps: float,
    output_final_state: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Chunked linear attention (see the module docstring for the outputs).

    q, k: [B, H, T, Dk]; v: [B, H, T, Dv]; float32/float16/bfloat16, unit last stride, any
    other strides. decay: [H] or None; s0: [N, H, Dk, Dv], z0: [N, H, Dk] or None (any float
    dtype); cu_seqlens: int32 [N + 1] or None (q is then [1, H, total, Dk]).
    """
    s_shape, z_shape = _state_shapes(q, v, cu_seqlens)
    o = _like_heads(v, v.shape[-1], _runtime.empty)
    den = _runtime.empty(q.shape[:3], dtype=torch.float32, device=q.device) if normalize else None
    s_final = _runtime.empty(s_shape, dtype=torch.float32, device=q.device) if output_final_state else None
    z_final = (_runtime.empty(z_shape, dtype=torch.float32, device=q.device) if output_final_state and normalize
               else None)
    s0c = _float32_contiguous(s0)
    z0c = _float32_contiguous(z0)
    _kernels.chunk_forward(q, k, v, decay, s0c, z0c, cu_seqlens, feature_map=feature_map, causal=causal,
                           normalize=normalize, scale=scale, eps=eps, o=o, den=den, s_final=s_final, z_final=z_final)
    empty = q.new_empty(0, dtype=torch.float32)
    return (o, s_final if s_final is not None else empty, z_final if z_final is not None else empty.clone(),
            den if den is not None else empty.clone())


@linear_attention_chunk_forward.register_fake
def _(q, k, v, decay, s0, z0, cu_seqlens, feature_map, causal, normalize, scale, eps, output_final_state):
    s_shape, z_shape = _state_shapes(q, v, cu_seqlens)
    f32 = dict(dtype=torch.float32)
    return (_like_heads(v, v.shape[-1], lambda shape, **kw: v.new_empty(shape, **kw)),
            q.new_empty(s_shape if output_final_state else (0,), **f32),
            q.new_empty(z_shape if output_final_state and normalize else (0,), **f32),
            q.new_empty(q.shape[:3] if normalize else (0,), **f32))


@torch.library.triton_op("fusednn::linear_attention_chunk_backward", mutates_args=())
def linear_attention_chunk_backward(
    grad_o: Tensor, grad_s: Optional[Tensor], grad_z: Optional[Tensor], q: Tensor, k: Tensor, v: Tensor,
    o: Optional[Tensor], den: Optional[Tensor], decay: Optional[Tensor], s0: Optional[Tensor], z0: Optional[Tensor],
    cu_seqlens: Optional[Tensor], feature_map: str, causal: bool, normalize: bool, scale: float, eps: float,
    q_grad: bool, kv_grad: bool, decay_grad: bool, s0_grad: bool, z0_grad: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Gradients of linear_attention_chunk_forward (see the module docstring).

    grad_o: [B, H, T, Dv] any strides; grad_s / grad_z: the final states' gradients or None
    (no gradient reaches them); o and den: the forward's outputs (needed with normalize).
    The decay gradient is reduced in float32 from one value per (sequence, head, block of Dk)
    (no atomics).
    """
    for flag, name, needed in ((decay_grad, "decay", decay), (s0_grad, "s0", s0), (z0_grad, "z0", z0)):
        if flag and needed is None:
            raise ValueError(f"fusednn::linear_attention_chunk_backward: {name}_grad=True needs a {name}")
    if normalize and (o is None or den is None):
        raise ValueError("fusednn::linear_attention_chunk_backward: normalize=True needs o and den")
    decay_grad = decay_grad and causal  # without causal the decay does not apply
    s_shape, z_shape = _state_shapes(q, v, cu_seqlens)
    f32 = dict(dtype=torch.float32, device=q.device)
    run_dkdv = kv_grad or s0_grad or z0_grad  # the dk/dv kernel writes dk, dv and the initial states' gradients
    dq = _like_heads(q, q.shape[-1], _runtime.empty) if q_grad else None
    dk = _like_heads(k, k.shape[-1], _runtime.empty) if run_dkdv else None
    dv = _like_heads(v, v.shape[-1], _runtime.empty) if run_dkdv else None
    ds0 = _runtime.empty(s_shape, **f32) if s0_grad else None
    dz0 = _runtime.empty(z_shape, **f32) if z0_grad else None
    grad_o = _runtime.unit_last_stride(grad_o)
    grad_s, grad_z = _float32_contiguous(grad_s), _float32_contiguous(grad_z)
    dlog_decay = _kernels.chunk_backward(
        grad_o, grad_s, grad_z, q, k, v, o, den, decay, _float32_contiguous(s0), _float32_contiguous(z0), cu_seqlens,
        feature_map=feature_map, causal=causal, normalize=normalize, scale=scale, eps=eps, dq=dq, dk=dk, dv=dv,
        ds0=ds0, dz0=dz0, decay_grad=decay_grad)
    empty = q.new_empty(0)
    ddecay = empty.clone()
    if decay is not None and decay_grad:
        # dL/dγ = dL/dlogγ / γ, summed over the sequences
        ddecay = (dlog_decay.sum(0) / decay.float()).to(decay.dtype)
    return (
        dq if q_grad else empty.clone(),
        dk if kv_grad else empty.clone(),
        dv if kv_grad else empty.clone(),
        ddecay,
        ds0.to(s0.dtype) if s0_grad else empty.clone(),
        dz0.to(z0.dtype) if z0_grad else empty.clone(),
    )


@linear_attention_chunk_backward.register_fake
def _(grad_o, grad_s, grad_z, q, k, v, o, den, decay, s0, z0, cu_seqlens, feature_map, causal, normalize, scale, eps,
      q_grad, kv_grad, decay_grad, s0_grad, z0_grad):
    empty = q.new_empty(0)
    return (
        _like_heads(q, q.shape[-1], lambda shape, **kw: q.new_empty(shape, **kw)) if q_grad else empty,
        _like_heads(k, k.shape[-1], lambda shape, **kw: k.new_empty(shape, **kw)) if kv_grad else q.new_empty(0),
        _like_heads(v, v.shape[-1], lambda shape, **kw: v.new_empty(shape, **kw)) if kv_grad else q.new_empty(0),
        decay.new_empty(decay.shape) if decay_grad and causal else q.new_empty(0),
        s0.new_empty(s0.shape) if s0_grad else q.new_empty(0),
        z0.new_empty(z0.shape) if z0_grad else q.new_empty(0),
    )


def _setup_context(ctx, inputs, output):
    (q, k, v, decay, s0, z0, cu_seqlens, feature_map, causal, normalize, scale, eps, output_final_state) = inputs
    o, s_final, z_final, den = output
    ctx.mark_non_differentiable(den)
    if not output_final_state:
        ctx.mark_non_differentiable(s_final, z_final)
    elif not normalize:
        ctx.mark_non_differentiable(z_final)
    ctx.save_for_backward(q, k, v, o if normalize else None, den if normalize else None, decay, s0, z0, cu_seqlens)
    ctx.options = dict(feature_map=feature_map, causal=causal, normalize=normalize, scale=scale, eps=eps)
    ctx.output_final_state = output_final_state


def _reference_outputs(options: dict, output_final_state: bool, cu_seqlens):
    """The reference as a function of (q, k, v, decay, s0, z0), for differentiable_backward."""
    def recompute(q, k, v, decay, s0, z0):
        state = None if s0 is None else ((s0, z0) if options["normalize"] else (s0,))
        return _reference(q, k, v, feature_map=options["feature_map"], causal=options["causal"],
                          normalize=options["normalize"], decay=decay, scale=options["scale"], initial_state=state,
                          output_final_state=output_final_state, eps=options["eps"], cu_seqlens=cu_seqlens)

    return recompute


def _autograd(ctx, grad_o, grad_s, grad_z, _grad_den):
    q, k, v, o, den, decay, s0, z0, cu_seqlens = ctx.saved_tensors
    needs_q, needs_k, needs_v, needs_decay, needs_s0, needs_z0 = ctx.needs_input_grad[:6]
    options, final = ctx.options, ctx.output_final_state
    grad_s = grad_s if final else None
    grad_z = grad_z if final and options["normalize"] else None
    if torch.is_grad_enabled():  # create_graph=True: a differentiable first gradient
        grad_outputs = (grad_o,) + ((grad_s,) if final else ()) + ((grad_z,) if final and options["normalize"] else ())
        grads = registry.differentiable_backward(
            _reference_outputs(options, final, cu_seqlens), (q, k, v, decay, s0, z0),
            (needs_q, needs_k, needs_v, needs_decay, needs_s0, needs_z0), grad_outputs)
        return (*grads,) + (None,) * 7
    decay_grad = needs_decay and decay is not None and options["causal"]
    s0_grad = needs_s0 and s0 is not None
    z0_grad = needs_z0 and z0 is not None
    dq, dk, dv, ddecay, ds0, dz0 = torch.ops.fusednn.linear_attention_chunk_backward(
        grad_o, grad_s, grad_z, q, k, v, o, den, decay, s0, z0, cu_seqlens, options["feature_map"],
        options["causal"], options["normalize"], options["scale"], options["eps"], needs_q, needs_k or needs_v,
        decay_grad, s0_grad, z0_grad)
    if needs_decay and decay is not None and not decay_grad:  # the decay does not apply without causal
        ddecay = torch.zeros_like(decay)
    return (
        dq if needs_q else None,
        dk if needs_k else None,
        dv if needs_v else None,
        ddecay if needs_decay and decay is not None else None,
        ds0 if s0_grad else None,
        dz0 if z0_grad else None,
    ) + (None,) * 7


linear_attention_chunk_forward.register_autograd(_autograd, setup_context=_setup_context)


def chunked_linear_attention(q: Tensor, k: Tensor, v: Tensor, decay: Optional[Tensor], s0: Optional[Tensor],
                             z0: Optional[Tensor], *, feature_map: str, causal: bool, normalize: bool, scale: float,
                             eps: float, cu_seqlens: Optional[Tensor], output_final_state: bool):
    """The chunked algorithm on validated inputs (q, k, v with unit last stride, cu_seqlens
    int32 on their device, scale a float): returns (o, s_final or None, z_final or None), the
    states float32 (z_final None without normalize)."""
    o, s_final, z_final, _den = torch.ops.fusednn.linear_attention_chunk_forward(
        q, k, v, decay, s0, z0, cu_seqlens, feature_map, causal, normalize, scale, eps, output_final_state)
    if not output_final_state:
        return o, None, None
    return o, s_final, z_final if normalize else None


# --------------------------------------------------------------------------- validation


def _check_qkv(args: Args, q, k, v) -> None:
    args.tensor("q", q, "[B, H, T, Dk]", ndim=4)
    args.tensor("k", k, "[B, H, T, Dk]", ndim=4, like=q, like_name="q")
    args.tensor("v", v, "[B, H, T, Dv]", ndim=4, like=q, like_name="q")
    if tuple(k.shape) != tuple(q.shape):
        raise args.error("k", f"[B, H, T, Dk] = {tuple(q.shape)} (q's shape)", shape_of(k))
    if tuple(v.shape[:3]) != tuple(q.shape[:3]):
        raise args.error("v", f"[B, H, T, Dv] with [B, H, T] = {tuple(q.shape[:3])} (q's)", shape_of(v))
    for name, t in (("q", q), ("v", v)):
        if not 1 <= t.shape[-1] <= _kernels.MAX_HEAD_DIM:
            raise args.error(name, f"[B, H, T, D] with a head dim between 1 and {_kernels.MAX_HEAD_DIM}", shape_of(t))


def _check_decay(args: Args, decay, q: Tensor) -> Optional[Tensor]:
    args.tensor("decay", decay, "[H]", optional=True, like=q, like_name="q", same_dtype=False)
    if decay is None:
        return None
    args.shape("decay", decay, (q.shape[1],), "[H]")
    # One synchronising check: a decay outside (0, 1] has factors above 1 (or NaN logarithms).
    if not torch.compiler.is_compiling() and decay.numel() and not bool(((decay > 0) & (decay <= 1)).all()):
        raise args.error("decay", "values in (0, 1]", f"values from {decay.min().item():g} to {decay.max().item():g}")
    return decay


def _check_initial_state(args: Args, initial_state, normalize: bool, q: Tensor, v: Tensor,
                         sequences: int) -> tuple[Optional[Tensor], Optional[Tensor]]:
    """(S_0, z_0) of initial_state: (S_0, z_0) with normalize, (S_0,), (S_0, None) or S_0 without."""
    if initial_state is None:
        return None, None
    if isinstance(initial_state, Tensor):
        parts = (initial_state,)
    elif isinstance(initial_state, (tuple, list)) and 1 <= len(initial_state) <= 2:
        parts = tuple(initial_state)
    else:
        raise args.error("initial_state", "None, a tensor S_0, or a tuple (S_0, z_0) / (S_0,)",
                         describe(initial_state), TypeError)
    s0 = parts[0]
    z0 = parts[1] if len(parts) == 2 else None
    heads, dk, dv = q.shape[1], q.shape[-1], v.shape[-1]
    args.tensor("initial_state S_0", s0, "[N, H, Dk, Dv]", ndim=4, like=q, like_name="q", same_dtype=False)
    args.shape("initial_state S_0", s0, (sequences, heads, dk, dv), "[N, H, Dk, Dv]")
    if normalize:
        if z0 is None:
            raise args.error("initial_state", "(S_0, z_0) with normalize=True (the normaliser's state z_0 [N, H, Dk])",
                             "no z_0")
        args.tensor("initial_state z_0", z0, "[N, H, Dk]", ndim=3, like=q, like_name="q", same_dtype=False)
        args.shape("initial_state z_0", z0, (sequences, heads, dk), "[N, H, Dk]")
    elif z0 is not None:
        raise args.error("initial_state", "(S_0,), (S_0, None) or S_0 with normalize=False (no normaliser state)",
                         "a z_0")
    return s0, z0


def _check_cu_seqlens(args: Args, cu, q: Tensor) -> Optional[Tensor]:
    if cu is None:
        return None
    if not isinstance(cu, Tensor) or cu.dtype not in (torch.int32, torch.int64) or cu.dim() != 1 or cu.numel() < 1:
        raise args.error("cu_seqlens", "a 1-D int32/int64 tensor [N + 1]", describe(cu), TypeError)
    if cu.device != q.device:
        raise args.error("cu_seqlens", f"on q's device {q.device}", str(cu.device))
    if q.shape[0] != 1:
        raise args.error("q", "[1, H, total, Dk] (a packed batch) with cu_seqlens", shape_of(q))
    total = q.shape[2]
    # One synchronising check: bad offsets would make the kernels read out of bounds.
    if not torch.compiler.is_compiling():
        lengths = cu[1:] - cu[:-1]
        if int(cu[0]) != 0 or int(cu[-1]) != total or (lengths.numel() and int(lengths.min()) < 0):
            values = cu.tolist() if cu.numel() <= 16 else "offsets " + str(cu[:16].tolist())[:-1] + ", ...]"
            raise args.error("cu_seqlens",
                             f"offsets starting at 0, non-decreasing, ending at the packed length {total}", str(values))
    return cu


def _check_scalars(args: Args, feature_map, causal, normalize, scale, output_final_state, eps, algorithm):
    if not isinstance(feature_map, str):
        raise args.error("feature_map", "one of " + ", ".join(repr(f) for f in FEATURE_MAPS), describe(feature_map),
                         TypeError)
    args.choice("feature_map", feature_map, FEATURE_MAPS)
    args.boolean("causal", causal)
    args.boolean("normalize", normalize)
    args.boolean("output_final_state", output_final_state)
    if scale is not None:
        scale = args.real("scale", scale)
    eps = args.real("eps", eps, minimum=0.0)
    if not isinstance(algorithm, str):
        raise args.error("algorithm", "one of " + ", ".join(repr(a) for a in ALGORITHMS), describe(algorithm),
                         TypeError)
    args.choice("algorithm", algorithm, ALGORITHMS)
    return scale, eps


# --------------------------------------------------------------------------- public function


def linear_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    feature_map: str = "elu+1",
    causal: bool = True,
    normalize: bool = True,
    decay: Optional[Tensor] = None,
    scale: Optional[float] = None,
    initial_state=None,
    output_final_state: bool = False,
    eps: float = 1e-6,
    cu_seqlens: Optional[Tensor] = None,
    algorithm: str = "auto",
):
    """Linear attention: with φ the feature map and γ the per-head decay, position t of a causal
    sequence reads the state S_t = γ S_{t-1} + φ(k_t) v_tᵀ (and z_t = γ z_{t-1} + φ(k_t))::

        o_t = (scale φ(q_t))ᵀ S_t / ((scale φ(q_t))ᵀ z_t + eps)      normalize=True
        o_t = (scale φ(q_t))ᵀ S_t                                    normalize=False

    from (S_0, z_0) = initial_state or zeros; without causal every query reads the sums over
    the whole sequence (S_0 + Σ φ(k_t) v_tᵀ) and the decay does not apply. Exactly
    ``fusednn.reference.linear_attention``.

    q, k: [B, H, T, Dk]; v: [B, H, T, Dv]; head dims 1..128; one dtype (float16, bfloat16,
    float32 run the kernels with float32 states and sums, float64 the reference) and device;
    any strides (a [B, T, H, D] tensor transposed to [B, H, T, D] is read in place, and o then
    comes in that layout too). feature_map: "elu+1" (elu(x) + 1), "relu" or "identity".
    scale: multiplies φ(q), default Dk ** -0.5. decay: None or a [H] tensor in (0, 1] (any
    float dtype). initial_state: (S_0 [N, H, Dk, Dv], z_0 [N, H, Dk]) with normalize, (S_0,),
    (S_0, None) or S_0 without (any float dtype); N = B, or the number of sequences with
    cu_seqlens. cu_seqlens: int32/int64 [N + 1] offsets from 0 to T of a packed batch
    [1, H, total, D]; the state starts afresh (from its initial state) at each boundary.

    Returns o [B, H, T, Dv] in v's dtype; with output_final_state ``(o, (S, z))`` with
    normalize and ``(o, (S,))`` without, the states float32 (float64 for float64 inputs), so
    that a call with ``initial_state`` = that state continues the sequence. Gradients flow
    to q, k, v, decay, S_0, z_0 and from the final state.

    algorithm: "chunk" (chunks of 64 positions: intra-chunk products on tensor cores, the
    state passed from chunk to chunk), "recurrent" (one position at a time), or "auto": the
    recurrent kernel when T <= 16 (decoding, short prompts), else the chunked one. The
    chunked backward saves q, k, v, decay, the initial state and, with normalize, o and the
    denominators; it recomputes the states.
    """
    args = Args("fusednn.ops.linear_attention")
    _check_qkv(args, q, k, v)
    scale, eps = _check_scalars(args, feature_map, causal, normalize, scale, output_final_state, eps, algorithm)
    decay = _check_decay(args, decay, q)
    cu_seqlens = _check_cu_seqlens(args, cu_seqlens, q)
    sequences = q.shape[0] if cu_seqlens is None else cu_seqlens.numel() - 1
    s0, z0 = _check_initial_state(args, initial_state, normalize, q, v, sequences)
    scale = float(q.shape[-1] ** -0.5 if scale is None else scale)
    if LINEAR_ATTENTION.select(q.device, q.dtype) == "reference":
        return _reference(q, k, v, feature_map=feature_map, causal=causal, normalize=normalize, decay=decay,
                          scale=scale, initial_state=initial_state, output_final_state=output_final_state, eps=eps,
                          cu_seqlens=cu_seqlens)
    if algorithm == "auto":
        algorithm = "recurrent" if q.shape[2] <= RECURRENT_MAX_LENGTH else "chunk"
    run = recurrent_linear_attention if algorithm == "recurrent" else chunked_linear_attention
    q, k, v = (_runtime.unit_last_stride(t) for t in (q, k, v))
    o, s_final, z_final = run(q, k, v, decay, s0, z0, feature_map=feature_map, causal=causal, normalize=normalize,
                              scale=scale, eps=eps, output_final_state=output_final_state,
                              cu_seqlens=None if cu_seqlens is None else cu_seqlens.to(torch.int32))
    if not output_final_state:
        return o
    return o, ((s_final, z_final) if normalize else (s_final,))


# --------------------------------------------------------------------------- registry

LINEAR_ATTENTION = registry.register(registry.OpInfo(
    name="linear_attention", family="efficient_attention", function=linear_attention, reference=_reference,
    baseline=functools.partial(_reference, upcast=False),
    kernels=(registry.Kernel("triton", KERNEL_DTYPES, compile_variants=_kernels.compile_variants),),
    samples=_cases.linear_attention_samples, bad_inputs=_cases.linear_attention_bad_inputs, outputs=("o", "S", "z"),
    double_backward=True, bench=_cases.BENCH_SHAPES,
))
