"""Linear attention by its recurrence, ``algorithm="recurrent"`` of
``fusednn.ops.linear_attention``: the fused recurrent Triton kernels
(``fusednn.kernels.linear_attention_recurrent``, one time step per loop iteration, the state
in fp32 registers) as autograd-aware ops. The public op validates the inputs and calls
``recurrent_linear_attention``; the registry entry is the public op's.

Registered ops:

* ``fusednn::linear_attention_recurrent_forward(Tensor q, Tensor k, Tensor v, Tensor? decay,
  Tensor? s0, Tensor? z0, Tensor? cu_seqlens, str feature_map, bool causal, bool normalize,
  float scale, float eps, bool output_final_state) -> (Tensor o, Tensor den, Tensor s_final,
  Tensor z_final)``: ``den`` [B, H, T] float32 is φq_t·z_t + eps, the denominator of each
  position (``[0]`` without normalize), kept for the backward; s_final [N, H, Dk, Dv] and
  z_final [N, H, Dk] are float32, ``[0]`` unless output_final_state (z_final: and normalize).
* ``fusednn::linear_attention_recurrent_backward(Tensor grad_o, Tensor? grad_s_final,
  Tensor? grad_z_final, Tensor q, Tensor k, Tensor v, Tensor o, Tensor den, Tensor? decay,
  Tensor? s0, Tensor? z0, Tensor? cu_seqlens, str feature_map, bool causal, bool normalize,
  float scale, bool q_grad, bool k_grad, bool v_grad, bool decay_grad, bool s0_grad,
  bool z0_grad) -> (Tensor dq, Tensor dk, Tensor dv, Tensor ddecay, Tensor ds0, Tensor dz0)``:
  each ``[0]`` unless asked for.

Layouts: q, k, v are read through their strides (a [B, T, H, D] tensor transposed to
[B, H, T, D] costs no copy); o and the input gradients keep that layout (heads-inner input,
heads-inner output), otherwise they are contiguous. The states and their gradients are
contiguous.

The decay's gradient needs no pass of its own: S_t = γ S_{t-1} + φk_t v_tᵀ gives
dL/dγ = Σ_t <A_t, S_{t-1}> + <a_t, z_{t-1}>, A_t and a_t the gradients of S_t and z_t (from
later positions and the final state). With the states' history R_t = γ R_{t-1} + S_{t-1}
(Rz_t likewise) that is Σ_t φq_t·(R_t gn_t + gd_t Rz_t) + <R_{L-1}, gS_L> + <Rz_{L-1}, gz_L>
(gn, gd: the gradients of o_t's numerator and denominator; gS_L, gz_L: the final state's),
which the dq pass reads out as it recomputes the states, summed here over the sequences.
No large sums cancel in it, unlike the identity dL/dlogγ = Σ_t t (φq_t·gφq_t) -
Σ_s s (φk_s·gφk_s) + (state terms), whose two position-weighted sums are about L/2 times
larger than their difference: in float32 that identity is off by 2e-3 (relative) at L = 130,
γ = 0.05, where this history is within 1e-5 (tests/ops/test_linear_attention_recurrent.py).

Saved for backward: q, k, v, decay, s0, z0, cu_seqlens, o and den. Double backward: with
``create_graph=True`` the backward is autograd through the reference
(``registry.differentiable_backward``).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from fusednn import _runtime, registry
from fusednn.kernels import linear_attention_recurrent as _kernels
from fusednn.reference.linear_attention import linear_attention as _reference

# --------------------------------------------------------------------------- shapes and layouts


def _heads_inner(x: Tensor) -> bool:
    """x [B, H, T, D] is a [B, T, H, D] tensor transposed (heads inner), not a [B, H, T, D] one."""
    return not x.is_contiguous() and x.transpose(1, 2).is_contiguous()


def _like(x: Tensor, dim: int, dtype: torch.dtype, allocate=torch.empty) -> Tensor:
    """A [B, H, T, dim] tensor in x's layout (see the module docstring)."""
    batch, heads, length, _ = x.shape
    if _heads_inner(x):
        return allocate((batch, length, heads, dim), dtype=dtype, device=x.device).transpose(1, 2)
    return allocate((batch, heads, length, dim), dtype=dtype, device=x.device)


def _sequences(q: Tensor, cu_seqlens: Optional[Tensor]) -> int:
    return q.shape[0] if cu_seqlens is None else cu_seqlens.shape[0] - 1


def _state_shapes(q: Tensor, v: Tensor, cu_seqlens: Optional[Tensor]):
    """S [N, H, Dk, Dv] and z [N, H, Dk]."""
    sequences, heads, key_dim = _sequences(q, cu_seqlens), q.shape[1], q.shape[3]
    return (sequences, heads, key_dim, v.shape[3]), (sequences, heads, key_dim)


def _forward_outputs(q: Tensor, v: Tensor, cu_seqlens: Optional[Tensor], normalize: bool, output_final_state: bool,
                     allocate=torch.empty) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """o, den, s_final, z_final as the forward op returns them (``[0]`` where absent)."""
    f32 = dict(dtype=torch.float32, device=q.device)
    s_shape, z_shape = _state_shapes(q, v, cu_seqlens)
    return (
        _like(q, v.shape[3], v.dtype, allocate),
        allocate(tuple(q.shape[:3]), **f32) if normalize else q.new_empty(0, dtype=torch.float32),
        allocate(s_shape, **f32) if output_final_state else q.new_empty(0, dtype=torch.float32),
        allocate(z_shape, **f32) if output_final_state and normalize else q.new_empty(0, dtype=torch.float32),
    )


# --------------------------------------------------------------------------- forward and backward ops


@torch.library.triton_op("fusednn::linear_attention_recurrent_forward", mutates_args=())
def linear_attention_recurrent_forward(
    q: Tensor, k: Tensor, v: Tensor, decay: Optional[Tensor], s0: Optional[Tensor], z0: Optional[Tensor],
    cu_seqlens: Optional[Tensor], feature_map: str, causal: bool, normalize: bool, scale: float, eps: float,
    output_final_state: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """o [B, H, T, Dv] (v's dtype, q's layout), den [B, H, T], s_final [N, H, Dk, Dv], z_final
    [N, H, Dk] (float32; see the module docstring).

    q, k: [B, H, T, Dk], v: [B, H, T, Dv], float32/float16/bfloat16, unit last stride; decay
    [H] in (0, 1] or None (read only with causal); s0 [N, H, Dk, Dv], z0 [N, H, Dk] or None
    (z0 read only with normalize); cu_seqlens int32 [N + 1] with B = 1, or None (N = B).
    """
    o, den, s_final, z_final = _forward_outputs(q, v, cu_seqlens, normalize, output_final_state, _runtime.empty)
    _kernels.linear_attention_recurrent_forward(
        q, k, v, decay, s0, z0, cu_seqlens, feature_map=feature_map, causal=causal, normalize=normalize, scale=scale,
        eps=eps, o=o, den=den if normalize else None, s_final=s_final if output_final_state else None,
        z_final=z_final if output_final_state and normalize else None)
    return o, den, s_final, z_final


@linear_attention_recurrent_forward.register_fake
def _(q, k, v, decay, s0, z0, cu_seqlens, feature_map, causal, normalize, scale, eps, output_final_state):
    return _forward_outputs(q, v, cu_seqlens, normalize, output_final_state)


def _gradient_outputs(q: Tensor, k: Tensor, v: Tensor, cu_seqlens: Optional[Tensor], q_grad: bool, k_grad: bool,
                      v_grad: bool, s0_grad: bool, z0_grad: bool, allocate=torch.empty) -> tuple[Optional[Tensor], ...]:
    """dq, dk, dv (the inputs' dtypes and layouts) and ds0, dz0 (float32, the kernels'
    accumulate dtype) where asked for, else None."""
    f32 = dict(dtype=torch.float32, device=q.device)
    s_shape, z_shape = _state_shapes(q, v, cu_seqlens)
    return (
        _like(q, q.shape[3], q.dtype, allocate) if q_grad else None,
        _like(k, k.shape[3], k.dtype, allocate) if k_grad else None,
        _like(v, v.shape[3], v.dtype, allocate) if v_grad else None,
        allocate(s_shape, **f32) if s0_grad else None,
        allocate(z_shape, **f32) if z0_grad else None,
    )


def _empty_if_none(grads, q: Tensor) -> tuple[Tensor, ...]:
    return tuple(q.new_empty(0) if g is None else g for g in grads)


@torch.library.triton_op("fusednn::linear_attention_recurrent_backward", mutates_args=())
def linear_attention_recurrent_backward(
    grad_o: Tensor, grad_s_final: Optional[Tensor], grad_z_final: Optional[Tensor], q: Tensor, k: Tensor, v: Tensor,
    o: Tensor, den: Tensor, decay: Optional[Tensor], s0: Optional[Tensor], z0: Optional[Tensor],
    cu_seqlens: Optional[Tensor], feature_map: str, causal: bool, normalize: bool, scale: float, q_grad: bool,
    k_grad: bool, v_grad: bool, decay_grad: bool, s0_grad: bool, z0_grad: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Gradients of linear_attention_recurrent_forward: dq, dk, dv (the inputs' dtypes and
    layouts), ddecay [H], ds0 [N, H, Dk, Dv], dz0 [N, H, Dk] (the inputs' dtypes), each
    ``[0]`` unless asked for. grad_o: [B, H, T, Dv], any strides; grad_s_final /
    grad_z_final: the final state's gradients or None; o, den: the forward's outputs; the rest
    as the forward's. Inputs the forward does not read get zero gradients: a decay without
    causal, z0 without normalize.
    """
    for flag, tensor, name in ((decay_grad, decay, "decay"), (s0_grad, s0, "s0"), (z0_grad, z0, "z0")):
        if flag and tensor is None:
            raise ValueError(f"fusednn::linear_attention_recurrent_backward: {name}_grad=True needs a {name}")
    if grad_o.stride(3) != 1:  # the kernels read rows with unit stride (an expanded o.sum() gradient has 0)
        grad_o = grad_o.contiguous()
    dq, dk, dv, ds0, dz0 = _gradient_outputs(q, k, v, cu_seqlens, q_grad, k_grad, v_grad, s0_grad,
                                             z0_grad and normalize, _runtime.empty)
    ddecay = _kernels.linear_attention_recurrent_backward(
        grad_o, grad_s_final, grad_z_final, q, k, v, o, den, decay, s0, z0, cu_seqlens, feature_map=feature_map,
        causal=causal, normalize=normalize, scale=scale, dq=dq, dk=dk, dv=dv, grad_s0=ds0, grad_z0=dz0,
        decay_grad=decay_grad)
    if decay_grad:
        ddecay = torch.zeros_like(decay) if ddecay is None else ddecay.to(decay.dtype)
    if z0_grad:
        dz0 = torch.zeros_like(z0) if dz0 is None else dz0.to(z0.dtype)
    return _empty_if_none((dq, dk, dv, ddecay, ds0.to(s0.dtype) if s0_grad else None, dz0), q)


@linear_attention_recurrent_backward.register_fake
def _(grad_o, grad_s_final, grad_z_final, q, k, v, o, den, decay, s0, z0, cu_seqlens, feature_map, causal, normalize,
      scale, q_grad, k_grad, v_grad, decay_grad, s0_grad, z0_grad):
    dq, dk, dv, _, _ = _gradient_outputs(q, k, v, cu_seqlens, q_grad, k_grad, v_grad, False, False)
    return _empty_if_none((dq, dk, dv, decay.new_empty(decay.shape) if decay_grad else None,
                           s0.new_empty(s0.shape) if s0_grad else None, z0.new_empty(z0.shape) if z0_grad else None), q)


def _setup_context(ctx, inputs, output):
    q, k, v, decay, s0, z0, cu_seqlens, feature_map, causal, normalize, scale, eps, output_final_state = inputs
    o, den, s_final, z_final = output
    ctx.mark_non_differentiable(den)
    if not output_final_state:
        ctx.mark_non_differentiable(s_final, z_final)
    elif not normalize:
        ctx.mark_non_differentiable(z_final)
    ctx.save_for_backward(q, k, v, decay, s0, z0, cu_seqlens, o, den)
    ctx.options = dict(feature_map=feature_map, causal=causal, normalize=normalize, scale=scale, eps=eps,
                       output_final_state=output_final_state)


def _autograd(ctx, grad_o, _grad_den, grad_s_final, grad_z_final):
    q, k, v, decay, s0, z0, cu_seqlens, o, den = ctx.saved_tensors
    options = ctx.options
    normalize, output_final_state = options["normalize"], options["output_final_state"]
    needs = tuple(ctx.needs_input_grad[:6])
    grad_states = (grad_s_final, grad_z_final) if normalize else (grad_s_final,)
    grad_outputs = (grad_o, *grad_states) if output_final_state else (grad_o,)
    if torch.is_grad_enabled():  # create_graph=True: a differentiable first gradient

        def recompute(q, k, v, decay, s0, z0):
            return _reference(q, k, v, feature_map=options["feature_map"], causal=options["causal"],
                              normalize=normalize, decay=decay, scale=options["scale"],
                              initial_state=None if s0 is None else (s0, z0), output_final_state=output_final_state,
                              eps=options["eps"], cu_seqlens=cu_seqlens)

        grads = registry.differentiable_backward(recompute, (q, k, v, decay, s0, z0), needs, grad_outputs)
        return (*grads, *(None,) * 7)
    if not output_final_state:
        grad_s_final = grad_z_final = None
    elif not normalize:
        grad_z_final = None
    wanted = [need and tensor is not None for need, tensor in zip(needs, (q, k, v, decay, s0, z0))]
    grads = torch.ops.fusednn.linear_attention_recurrent_backward(
        grad_o, grad_s_final, grad_z_final, q, k, v, o, den, decay, s0, z0, cu_seqlens, options["feature_map"],
        options["causal"], normalize, options["scale"], *wanted)
    return (*(g if want else None for g, want in zip(grads, wanted)), *(None,) * 7)


linear_attention_recurrent_forward.register_autograd(_autograd, setup_context=_setup_context)


# --------------------------------------------------------------------------- the algorithm's function


def recurrent_linear_attention(
    q: Tensor, k: Tensor, v: Tensor, decay: Optional[Tensor], s0: Optional[Tensor], z0: Optional[Tensor], *,
    feature_map: str, causal: bool, normalize: bool, scale: float, eps: float, cu_seqlens: Optional[Tensor],
    output_final_state: bool,
) -> tuple[Tensor, Optional[Tensor], Optional[Tensor]]:
    """Linear attention by the recurrent kernels: (o, s_final or None, z_final or None).

    Inputs already validated by ``fusednn.ops.linear_attention``: q, k [B, H, T, Dk], v
    [B, H, T, Dv] float32/float16/bfloat16 with unit last stride; decay [H] or None (read
    only with causal, as the reference); s0 [N, H, Dk, Dv] and z0 [N, H, Dk] or None (z0 read
    only with normalize); cu_seqlens int32 [N + 1] on q's device (B = 1) or None; scale a
    float. o [B, H, T, Dv] in v's dtype; with output_final_state the final state, float32
    (z_final None without normalize). Autograd-aware: gradients flow to q, k, v, decay, s0,
    z0 and from the final state.
    """
    o, _den, s_final, z_final = torch.ops.fusednn.linear_attention_recurrent_forward(
        q, k, v, decay if causal else None, s0, z0 if normalize else None, cu_seqlens, feature_map, causal, normalize,
        float(scale), float(eps), output_final_state)
    if not output_final_state:
        return o, None, None
    return o, s_final, z_final if normalize else None
