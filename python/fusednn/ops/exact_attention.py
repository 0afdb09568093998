"""Exact fused attention (the FlashAttention-2 algorithm in Triton: ``fusednn.kernels.exact_attention``)
as autograd-aware ops: ``attention`` on [B, H, T, D] tensors, ``attention_varlen`` on packed
sequences, and ``scaled_dot_product_attention``, a drop-in for torch's.

Registered ops (one pair serves the dense and the packed layout):

* ``fusednn::attention_forward(q, k, v, bias?, cu_seqlens_q?, cu_seqlens_k?, max_seqlen_q,
  max_seqlen_k, scale, softcap, window_left, window_right, bottom_right, dropout_p, seed?,
  deterministic) -> (out, lse)``
* ``fusednn::attention_backward(grad_out, q, k, v, out, lse, bias?, cu_seqlens_q?,
  cu_seqlens_k?, max_seqlen_q, max_seqlen_k, scale, softcap, window_left, window_right,
  bottom_right, dropout_p, seed?, bias_grad, deterministic) -> (dq, dk, dv, dbias)``

``bias`` is a bool mask or float bias of shape [B, Hq, Tq, Tk] (any strides: the public
functions pass an expanded view of a broadcastable one). Encoding of the options in the
schema: ``softcap`` 0 = none; window sides -1 = unbounded (causal is window_right = 0);
``seed`` is an int64 [1] tensor on q's device (None without dropout). Dense: q [B, Hq, Tq, D], lse [B, Hq, Tq]. Packed: q [total_q, Hq, D], lse
[1, Hq, total_q]. ``dbias`` is the gradient of the scores after softcap, [B, Hq, Tq, Tk] in
float32, or ``[0]`` unless bias_grad; autograd sums it back through the caller's expand.
"""

from __future__ import annotations

import math
import numbers
from typing import Optional

import torch
from torch import Tensor

from fusednn import _runtime
from fusednn import reference as _reference
from fusednn.kernels import exact_attention as _kernels

_KERNEL_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
_SUPPORTED_DTYPES = _KERNEL_DTYPES + (torch.float64,)
MAX_HEAD_DIM = _kernels.MAX_HEAD_DIM
ALIGNMENTS = ("top_left", "bottom_right")


# --------------------------------------------------------------------------- registered ops


@torch.library.triton_op("fusednn::attention_forward", mutates_args=())
def attention_forward(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    bias: Optional[Tensor],
    cu_seqlens_q: Optional[Tensor],
    cu_seqlens_k: Optional[Tensor],
    max_seqlen_q: int,
    max_seqlen_k: int,
    scale: float,
    softcap: float,
    window_left: int,
    window_right: int,
    bottom_right: bool,
    dropout_p: float,
    seed: Optional[Tensor],
    deterministic: bool,
) -> tuple[Tensor, Tensor]:
    """Forward pass. Dense: q [B, Hq, Tq, D], k [B, Hkv, Tk, D], v [B, Hkv, Tk, Dv] ->
    out [B, Hq, Tq, Dv] (q's dtype), lse [B, Hq, Tq] float32. Packed (cu_seqlens given):
    q [total_q, Hq, D] ... -> out [total_q, Hq, Dv], lse [1, Hq, total_q]. ``deterministic``
    only matters to the backward."""
    out = _runtime.empty(_out_shape(q, v), dtype=q.dtype, device=q.device)
    lse = _runtime.empty(_lse_shape(q), dtype=torch.float32, device=q.device)
    _kernels.attention_forward(
        _as_heads_first(q, cu_seqlens_q),
        _as_heads_first(k, cu_seqlens_k),
        _as_heads_first(v, cu_seqlens_k),
        bias,
        _as_heads_first(out, cu_seqlens_q),
        lse,
        _options(cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, scale, softcap, window_left,
                 window_right, bottom_right, dropout_p, seed),
    )
    return out, lse


@attention_forward.register_fake
def _(q, k, v, bias, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, scale, softcap, window_left,
      window_right, bottom_right, dropout_p, seed, deterministic):
    return q.new_empty(_out_shape(q, v)), q.new_empty(_lse_shape(q), dtype=torch.float32)


@torch.library.triton_op("fusednn::attention_backward", mutates_args=())
def attention_backward(
    grad_out: Tensor,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    out: Tensor,
    lse: Tensor,
    bias: Optional[Tensor],
    cu_seqlens_q: Optional[Tensor],
    cu_seqlens_k: Optional[Tensor],
    max_seqlen_q: int,
    max_seqlen_k: int,
    scale: float,
    softcap: float,
    window_left: int,
    window_right: int,
    bottom_right: bool,
    dropout_p: float,
    seed: Optional[Tensor],
    bias_grad: bool,
    deterministic: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Gradients of attention_forward: dq, dk, dv in the inputs' shapes and dtypes; dbias
    [B, Hq, Tq, Tk] float32 (``[0]`` unless bias_grad). ``deterministic`` computes dq in its
    own pass instead of float32 atomics, so results are bitwise reproducible."""
    dq = _runtime.empty(q.shape, dtype=q.dtype, device=q.device)
    dk = _runtime.empty(k.shape, dtype=k.dtype, device=k.device)
    dv = _runtime.empty(v.shape, dtype=v.dtype, device=v.device)
    dbias = _dbias_empty(q, k, bias_grad)
    _kernels.attention_backward(
        _as_heads_first(grad_out, cu_seqlens_q),
        _as_heads_first(q, cu_seqlens_q),
        _as_heads_first(k, cu_seqlens_k),
        _as_heads_first(v, cu_seqlens_k),
        _as_heads_first(out, cu_seqlens_q),
        lse,
        bias,
        _as_heads_first(dq, cu_seqlens_q),
        _as_heads_first(dk, cu_seqlens_k),
        _as_heads_first(dv, cu_seqlens_k),
        dbias if bias_grad else None,
        _options(cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, scale, softcap, window_left,
                 window_right, bottom_right, dropout_p, seed),
        deterministic=deterministic,
    )
    return dq, dk, dv, dbias


@attention_backward.register_fake
def _(grad_out, q, k, v, out, lse, bias, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, scale, softcap,
      window_left, window_right, bottom_right, dropout_p, seed, bias_grad, deterministic):
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape), _dbias_empty(q, k, bias_grad, fake=True)


def _setup_context(ctx, inputs, output):
    (q, k, v, bias, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, scale, softcap, window_left,
     window_right, bottom_right, dropout_p, seed, deterministic) = inputs
    out, lse = output
    ctx.mark_non_differentiable(lse)
    ctx.save_for_backward(q, k, v, out, lse, bias, cu_seqlens_q, cu_seqlens_k, seed)
    ctx.options = (max_seqlen_q, max_seqlen_k, scale, softcap, window_left, window_right, bottom_right, dropout_p)
    ctx.deterministic = deterministic


def _backward_formula(ctx, grad_out, _grad_lse):
    q, k, v, out, lse, bias, cu_seqlens_q, cu_seqlens_k, seed = ctx.saved_tensors
    (max_seqlen_q, max_seqlen_k, scale, softcap, window_left, window_right, bottom_right, dropout_p) = ctx.options
    bias_grad = bool(ctx.needs_input_grad[3]) and bias is not None and bias.is_floating_point()
    dq, dk, dv, dbias = torch.ops.fusednn.attention_backward(
        grad_out, q, k, v, out, lse, bias, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, scale, softcap,
        window_left, window_right, bottom_right, dropout_p, seed, bias_grad, ctx.deterministic,
    )
    # The op takes the bias already broadcast to [B, Hq, Tq, Tk] (the public functions pass an
    # expanded view), so dbias has its shape; autograd sums it back through the expand.
    grad_bias = dbias.to(bias.dtype) if bias_grad else None
    return (dq, dk, dv, grad_bias) + (None,) * 12


attention_forward.register_autograd(_backward_formula, setup_context=_setup_context)


# --------------------------------------------------------------------------- op helpers


def _out_shape(q: Tensor, v: Tensor) -> tuple[int, ...]:
    return tuple(q.shape[:-1]) + (v.shape[-1],)


def _lse_shape(q: Tensor) -> tuple[int, ...]:
    if q.dim() == 3:  # packed [total, H, D]
        return (1, q.shape[1], q.shape[0])
    return tuple(q.shape[:3])


def _dbias_empty(q: Tensor, k: Tensor, bias_grad: bool, fake: bool = False) -> Tensor:
    if not bias_grad:
        return q.new_empty(0, dtype=torch.float32)
    shape = tuple(q.shape[:3]) + (k.shape[2],)
    # Tiles outside the causal/window band are never visited: their gradient is zero.
    return q.new_empty(shape, dtype=torch.float32) if fake else q.new_zeros(shape, dtype=torch.float32)


def _as_heads_first(t: Tensor, cu_seqlens: Optional[Tensor]) -> Tensor:
    """The kernels index [B, H, T, D] views; a packed [total, H, D] tensor is the view
    [1, H, total, D] and each program finds its rows through cu_seqlens."""
    return t.permute(1, 0, 2).unsqueeze(0) if cu_seqlens is not None else t


def _options(cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, scale, softcap, window_left, window_right,
             bottom_right, dropout_p, seed) -> "_kernels.Options":
    return _kernels.Options(
        cu_seqlens_q=cu_seqlens_q,
        cu_seqlens_k=cu_seqlens_k,
        max_seqlen_q=max_seqlen_q,
        max_seqlen_k=max_seqlen_k,
        scale=scale,
        softcap=softcap,
        window_left=window_left,
        window_right=window_right,
        bottom_right=bottom_right,
        dropout_p=dropout_p,
        seed=seed,
    )


# --------------------------------------------------------------------------- validation


def _is_int(x) -> bool:
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def _check_options(where, causal, window, scale, softcap, dropout_p, alignment):
    """Validates the scalar options; returns (window_left, window_right, softcap) in the op's encoding."""
    if not isinstance(causal, bool):
        raise TypeError(f"{where}: causal must be a bool, got {type(causal).__name__}")
    left = right = -1
    if window is not None:
        if not isinstance(window, (tuple, list)) or len(window) != 2:
            raise TypeError(f"{where}: window must be None or a pair (left, right), got {window!r}")
        sides = []
        for side_name, side in zip(("left", "right"), window):
            if side is None:
                side = -1
            if not _is_int(side) or side < -1:
                raise ValueError(
                    f"{where}: window {side_name} must be a non-negative int, or None / -1 for unbounded; got {side!r}"
                )
            sides.append(int(side))
        left, right = sides
    if causal:
        if right > 0:
            raise ValueError(f"{where}: causal=True hides keys after the query, so window right must be 0 or None; "
                             f"got window={tuple(window)}")
        right = 0
    if scale is not None and (not isinstance(scale, numbers.Real) or isinstance(scale, bool) or not math.isfinite(scale)):
        raise TypeError(f"{where}: scale must be None or a finite float, got {scale!r}")
    if softcap is None:
        softcap = 0.0
    if not isinstance(softcap, numbers.Real) or isinstance(softcap, bool) or not softcap >= 0 or math.isinf(softcap):
        raise ValueError(f"{where}: softcap must be None or a finite float >= 0 (0 = off), got {softcap!r}")
    if not isinstance(dropout_p, numbers.Real) or isinstance(dropout_p, bool) or not 0.0 <= dropout_p <= 1.0:
        raise ValueError(f"{where}: dropout_p must be a float in [0, 1], got {dropout_p!r}")
    if alignment not in ALIGNMENTS:
        raise ValueError(f"{where}: alignment must be one of {ALIGNMENTS}, got {alignment!r}")
    return left, right, float(softcap)


def _check_qkv(where: str, q, k, v, rank: int, layout: str) -> None:
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{where}: {name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() != rank:
            raise ValueError(f"{where}: {name} must be {rank}-D {layout}, got shape {tuple(t.shape)}")
        if t.dtype not in _SUPPORTED_DTYPES:
            raise TypeError(f"{where}: {name} must be float16, bfloat16, float32 or float64, got {t.dtype}")
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"{where}: q, k and v must have the same dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if not (q.device == k.device == v.device):
        raise ValueError(f"{where}: q, k and v must be on the same device, got {q.device}, {k.device}, {v.device}")
    head_axis = 1  # [B, H, T, D] and [total, H, D]
    hq, hkv = q.shape[head_axis], k.shape[head_axis]
    if v.shape[head_axis] != hkv:
        raise ValueError(f"{where}: k and v must have the same number of heads, got {hkv} and {v.shape[head_axis]}")
    if hkv == 0 or hq % hkv != 0:
        raise ValueError(
            f"{where}: the query heads ({hq}) must be a multiple of the key/value heads ({hkv}) (GQA/MQA)"
        )
    seq_axis = 2 if rank == 4 else 0
    if k.shape[seq_axis] != v.shape[seq_axis]:
        raise ValueError(f"{where}: k and v must have the same length, got {k.shape[seq_axis]} and {v.shape[seq_axis]}")
    if rank == 4 and not (q.shape[0] == k.shape[0] == v.shape[0]):
        raise ValueError(f"{where}: q, k and v must have the same batch size, got {q.shape[0]}, {k.shape[0]}, "
                         f"{v.shape[0]}")
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(f"{where}: q and k must have the same head dim, got {q.shape[-1]} and {k.shape[-1]}")
    for name, d in (("q/k", q.shape[-1]), ("v", v.shape[-1])):
        if not 1 <= d <= MAX_HEAD_DIM:
            raise ValueError(f"{where}: the {name} head dim must be between 1 and {MAX_HEAD_DIM}, got {d}")


def _check_bias(where: str, attn_bias, q: Tensor, k: Tensor) -> Optional[Tensor]:
    """attn_bias broadcast (as a view) to [B, Hq, Tq, Tk]."""
    if attn_bias is None:
        return None
    if not isinstance(attn_bias, Tensor):
        raise TypeError(f"{where}: attn_bias must be a torch.Tensor or None, got {type(attn_bias).__name__}")
    if attn_bias.dtype != torch.bool and not attn_bias.is_floating_point():
        raise TypeError(f"{where}: attn_bias must be a bool mask or a float bias, got {attn_bias.dtype}")
    if attn_bias.device != q.device:
        raise ValueError(f"{where}: attn_bias must be on q's device {q.device}, got {attn_bias.device}")
    target = (q.shape[0], q.shape[1], q.shape[2], k.shape[2])
    try:
        if attn_bias.dim() > 4 or torch.broadcast_shapes(attn_bias.shape, target) != target:
            raise RuntimeError
    except RuntimeError:
        raise ValueError(
            f"{where}: attn_bias must be broadcastable to [B, Hq, Tq, Tk] = {list(target)}, got shape "
            f"{tuple(attn_bias.shape)}"
        ) from None
    return attn_bias.expand(target)


def _check_cu_seqlens(where: str, name: str, cu: Tensor, total: int, max_seqlen, device) -> None:
    if not isinstance(cu, Tensor) or cu.dtype not in (torch.int32, torch.int64) or cu.dim() != 1 or cu.numel() < 1:
        raise TypeError(f"{where}: {name} must be a 1-D int32/int64 tensor [num_seqs + 1], got "
                        f"{cu.dtype if isinstance(cu, Tensor) else type(cu).__name__}"
                        f"{' of shape ' + str(tuple(cu.shape)) if isinstance(cu, Tensor) else ''}")
    if cu.device != device:
        raise ValueError(f"{where}: {name} must be on q's device {device}, got {cu.device}")
    if not _is_int(max_seqlen) or max_seqlen < 0:
        raise ValueError(f"{where}: max_seqlen for {name} must be a non-negative int, got {max_seqlen!r}")
    # One synchronising check: bad offsets would make the kernels read out of bounds.
    if not torch.compiler.is_compiling():
        lengths = cu[1:] - cu[:-1]
        if int(cu[0]) != 0 or int(cu[-1]) != total or (lengths.numel() and int(lengths.min()) < 0):
            raise ValueError(f"{where}: {name} must start at 0, be non-decreasing and end at the packed length "
                             f"{total}; got {cu.tolist() if cu.numel() <= 16 else 'a tensor that does not'}")
        if lengths.numel() and int(lengths.max()) > max_seqlen:
            raise ValueError(f"{where}: a sequence in {name} is longer ({int(lengths.max())}) than its max_seqlen "
                             f"({max_seqlen})")


def _draw_seed(dropout_p: float, device) -> Optional[Tensor]:
    """The dropout seed, drawn from torch's generator of q's device (torch.manual_seed
    reproduces it); the kernels derive every element's keep decision from it."""
    if dropout_p == 0.0:
        return None
    return torch.randint(0, 2**62, (1,), dtype=torch.int64, device=device)


def _use_kernel(op: str, dtype: torch.dtype, device: torch.device) -> bool:
    backend = _runtime.select_backend(op, device, ("triton",))
    if backend == "reference":
        return False
    if dtype == torch.float64:
        if _runtime.requested_backend() == "triton":
            raise NotImplementedError(f"fusednn.ops.{op}: the Triton kernel takes float16, bfloat16 or float32 "
                                      "inputs; float64 runs on the reference backend")
        return False
    return True


# --------------------------------------------------------------------------- public functions


def attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    causal: bool = False,
    window: Optional[tuple[Optional[int], Optional[int]]] = None,
    scale: Optional[float] = None,
    softcap: Optional[float] = None,
    attn_bias: Optional[Tensor] = None,
    dropout_p: float = 0.0,
    return_lse: bool = False,
    deterministic: bool = False,
    alignment: str = "top_left",
):
    """Exact attention ``softmax(scale * q @ k^T + bias) @ v``, fused (FlashAttention-2).

    q: [B, Hq, Tq, D]; k: [B, Hkv, Tk, D]; v: [B, Hkv, Tk, Dv]; any strides. Hq must be a
    multiple of Hkv (GQA; Hkv = 1 is MQA). D, Dv in 1..256; Tq != Tk allowed. float16,
    bfloat16, float32 (float64 runs the reference).

    causal: query i sees keys j <= i (``alignment="top_left"``, torch's ``is_causal``) or
    j <= i + Tk - Tq (``"bottom_right"``, FlashAttention's convention for KV caches).
    window: (left, right); query i sees keys j with pos - left <= j <= pos + right, pos the
    aligned position; None (or -1) leaves a side unbounded. Tiles outside the band are skipped.
    scale: default D ** -0.5. softcap: scores become softcap * tanh(scores / softcap).
    attn_bias: bool mask (True = may attend) or float bias added to the scores (after
    softcap), broadcastable to [B, Hq, Tq, Tk]; a float bias that requires grad gets one.
    dropout_p: dropout on the attention probabilities, drawn in the kernel from a seed
    taken from torch's generator; the backward regenerates the same mask.
    A query that sees no key gets output 0 and zero gradients.

    Returns out [B, Hq, Tq, Dv] in q's dtype, and also lse [B, Hq, Tq] (float32, natural
    log of the softmax denominator; -inf for rows that see no key) when return_lse.
    Saved for backward: q, k, v, out, lse, the bias and the dropout seed. The backward
    recomputes the probabilities block by block. ``deterministic=True`` computes dq in its
    own pass (no float32 atomics), so gradients are bitwise reproducible.
    """
    where = "fusednn.ops.attention"
    _check_qkv(where, q, k, v, 4, "[B, H, T, D]")
    left, right, softcap_value = _check_options(where, causal, window, scale, softcap, dropout_p, alignment)
    bias = _check_bias(where, attn_bias, q, k)
    if not isinstance(deterministic, bool):
        raise TypeError(f"{where}: deterministic must be a bool, got {type(deterministic).__name__}")
    scale_value = float(q.shape[-1] ** -0.5 if scale is None else scale)

    if not _use_kernel("attention", q.dtype, q.device):
        return _reference.attention(
            q, k, v, causal=causal, window=window and (None if left < 0 else left, None if right < 0 else right),
            scale=scale_value, softcap=softcap_value or None, attn_bias=attn_bias, dropout_p=float(dropout_p),
            return_lse=return_lse, alignment=alignment,
        )
    q, k, v = (_runtime.unit_last_stride(t) for t in (q, k, v))
    out, lse = torch.ops.fusednn.attention_forward(
        q, k, v, bias, None, None, q.shape[2], k.shape[2], scale_value, softcap_value, left, right,
        alignment == "bottom_right", float(dropout_p), _draw_seed(dropout_p, q.device), deterministic,
    )
    return (out, lse) if return_lse else out


def attention_varlen(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    cu_seqlens_q: Tensor,
    cu_seqlens_k: Tensor,
    max_seqlen_q: int,
    max_seqlen_k: int,
    *,
    causal: bool = False,
    window: Optional[tuple[Optional[int], Optional[int]]] = None,
    scale: Optional[float] = None,
    softcap: Optional[float] = None,
    dropout_p: float = 0.0,
    return_lse: bool = False,
    deterministic: bool = False,
    alignment: str = "top_left",
):
    """Attention over packed variable-length sequences, without computing any padding.

    q: [total_q, Hq, D]; k: [total_k, Hkv, D]; v: [total_k, Hkv, Dv]. Sequence b is rows
    ``cu_seqlens_q[b]:cu_seqlens_q[b + 1]`` of q and ``cu_seqlens_k[b]:cu_seqlens_k[b + 1]``
    of k and v (int32/int64 [num_seqs + 1], starting at 0); max_seqlen_q / max_seqlen_k bound
    the lengths (they size the launch grid). The options are those of ``attention``
    (alignment, causal and windows apply per sequence); attention biases are not supported.
    Returns out [total_q, Hq, Dv], and lse [Hq, total_q] (float32) when return_lse.
    """
    where = "fusednn.ops.attention_varlen"
    _check_qkv(where, q, k, v, 3, "[total_tokens, H, D]")
    left, right, softcap_value = _check_options(where, causal, window, scale, softcap, dropout_p, alignment)
    _check_cu_seqlens(where, "cu_seqlens_q", cu_seqlens_q, q.shape[0], max_seqlen_q, q.device)
    _check_cu_seqlens(where, "cu_seqlens_k", cu_seqlens_k, k.shape[0], max_seqlen_k, q.device)
    if cu_seqlens_q.shape != cu_seqlens_k.shape:
        raise ValueError(f"{where}: cu_seqlens_q and cu_seqlens_k must describe the same number of sequences, got "
                         f"{cu_seqlens_q.numel() - 1} and {cu_seqlens_k.numel() - 1}")
    scale_value = float(q.shape[-1] ** -0.5 if scale is None else scale)
    if not _use_kernel("attention_varlen", q.dtype, q.device):
        return _reference.attention_varlen(
            q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, causal=causal,
            window=window and (None if left < 0 else left, None if right < 0 else right), scale=scale_value,
            softcap=softcap_value or None, dropout_p=float(dropout_p), return_lse=return_lse, alignment=alignment,
        )
    q, k, v = (_runtime.unit_last_stride(t) for t in (q, k, v))
    out, lse = torch.ops.fusednn.attention_forward(
        q, k, v, None, cu_seqlens_q.to(torch.int32), cu_seqlens_k.to(torch.int32), int(max_seqlen_q),
        int(max_seqlen_k), scale_value, softcap_value, left, right, alignment == "bottom_right", float(dropout_p),
        _draw_seed(dropout_p, q.device), deterministic,
    )
    return (out, lse[0]) if return_lse else out


def scaled_dot_product_attention(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    attn_mask: Optional[Tensor] = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: Optional[float] = None,
    enable_gqa: bool = False,
) -> Tensor:
    """``torch.nn.functional.scaled_dot_product_attention`` computed by ``attention``.

    query: [..., Hq, L, E]; key: [..., Hkv, S, E]; value: [..., Hkv, S, Ev] (any number of
    leading dims, broadcast against each other as torch does; without enable_gqa the head
    dims broadcast too, with it Hq must be a multiple of Hkv). attn_mask: bool (True = may
    attend) or float, broadcastable to [..., L, S]. is_causal is top-left aligned and cannot
    be combined with attn_mask, as in torch. Returns [..., Hq, L, Ev] in query's dtype.
    """
    where = "fusednn.ops.scaled_dot_product_attention"
    for name, t in (("query", query), ("key", key), ("value", value)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{where}: {name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() < 2:
            raise ValueError(f"{where}: {name} must have at least 2 dims [..., T, E], got shape {tuple(t.shape)}")
    if attn_mask is not None and is_causal:
        raise ValueError(f"{where}: attn_mask cannot be combined with is_causal=True (as in torch)")
    rank = max(query.dim(), key.dim(), value.dim(), 4)
    q, k, v = (t.reshape((1,) * (rank - t.dim()) + tuple(t.shape)) for t in (query, key, value))
    try:
        if enable_gqa:
            batch = torch.broadcast_shapes(q.shape[:-3], k.shape[:-3], v.shape[:-3])
            heads_q, heads_kv = q.shape[-3], torch.broadcast_shapes(k.shape[-3:-2], v.shape[-3:-2])[0]
        else:
            common = torch.broadcast_shapes(q.shape[:-2], k.shape[:-2], v.shape[:-2])
            batch, heads_q, heads_kv = common[:-1], common[-1], common[-1]
    except RuntimeError:
        raise ValueError(f"{where}: the leading dims of query {tuple(query.shape)}, key {tuple(key.shape)} and value "
                         f"{tuple(value.shape)} do not broadcast") from None
    if enable_gqa and heads_q % heads_kv != 0:
        raise ValueError(f"{where}: with enable_gqa the query heads ({heads_q}) must be a multiple of the key/value "
                         f"heads ({heads_kv})")
    n = math.prod(batch)

    def to_bhtd(t, heads):
        return t.expand(*batch, heads, *t.shape[-2:]).reshape(n, heads, *t.shape[-2:])

    q4, k4, v4 = to_bhtd(q, heads_q), to_bhtd(k, heads_kv), to_bhtd(v, heads_kv)
    bias = None
    if attn_mask is not None:
        if not isinstance(attn_mask, Tensor):
            raise TypeError(f"{where}: attn_mask must be a torch.Tensor or None, got {type(attn_mask).__name__}")
        full = (*batch, heads_q, q.shape[-2], k.shape[-2])
        try:
            mask = attn_mask.expand(full) if attn_mask.dim() <= len(full) else None
        except RuntimeError:
            mask = None
        if mask is None:
            raise ValueError(f"{where}: attn_mask must be broadcastable to {list(full)}, got shape "
                             f"{tuple(attn_mask.shape)}")
        bias = mask.reshape(n, heads_q, q.shape[-2], k.shape[-2])
    out = attention(q4, k4, v4, causal=bool(is_causal), scale=scale, attn_bias=bias, dropout_p=dropout_p)
    return _restore_rank(out.reshape(*batch, heads_q, q.shape[-2], v.shape[-1]), query, key, value)


def _restore_rank(out: Tensor, query: Tensor, key: Tensor, value: Tensor) -> Tensor:
    """Drop the leading singleton dims added to reach 4-D, as torch's result has the rank
    of its broadcast inputs."""
    rank = max(query.dim(), key.dim(), value.dim())
    return out.reshape(out.shape[out.dim() - rank:]) if out.dim() > rank else out
