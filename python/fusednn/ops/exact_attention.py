"""Exact fused attention (the FlashAttention-2 algorithm in Triton: ``fusednn.kernels.exact_attention``)
as autograd-aware ops: ``attention`` on [B, H, T, D] tensors, ``attention_varlen`` on packed
sequences, and ``scaled_dot_product_attention``, a drop-in for torch's.

Registered ops (one pair serves the dense and the packed layout), their options being the
fields of ``kernels.exact_attention.Options`` in order (declared there once):

* ``fusednn::attention_forward(q, k, v, bias?, *options) -> (out, lse)``
* ``fusednn::attention_backward(grad_out, q, k, v, out, lse, bias?, bias_grad, *options)
  -> (dq, dk, dv, dbias)``

``bias`` is a bool mask or float bias of shape [B, Hq, Tq, Tk] (any strides: the public
functions pass an expanded view of a broadcastable one). Encoding of the options: ``softcap``
0 = none; window sides -1 = unbounded (causal is window_right = 0); ``seed`` is an int64 [1]
tensor on q's device (None without dropout). Dense: q [B, Hq, Tq, D], lse [B, Hq, Tq].
Packed: q [total_q, Hq, D], lse [1, Hq, total_q]. ``dbias`` is the gradient of the scores
after softcap, [B, Hq, Tq, Tk] in float32, or ``[0]`` unless bias_grad; autograd sums it
back through the caller's expand.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import math
import numbers
from typing import Optional

import torch
from torch import Tensor
from torch._subclasses.fake_tensor import FakeTensor
from torch._subclasses.functional_tensor import FunctionalTensor
from torch.nn.attention.bias import CausalBias, CausalVariant

from fusednn import _runtime, registry
from fusednn import reference as _reference
from fusednn._validate import Args, describe, dtype_name, shape_of
from fusednn.cases import exact_attention as _cases
from fusednn.kernels import exact_attention as _kernels
from fusednn.kernels.exact_attention import Options

__all__ = ["attention", "attention_varlen", "scaled_dot_product_attention"]

_KERNEL_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
MAX_HEAD_DIM = _kernels.MAX_HEAD_DIM
ALIGNMENTS = ("top_left", "bottom_right")


# --------------------------------------------------------------------------- registered ops

_SCHEMA_TYPES = {"Tensor": Tensor, "Tensor?": Optional[Tensor], "SymInt": int, "float": float, "bool": bool}


def _signature(*leading: str, returns: int):
    """Gives a registered op's function the signature ``(<leading>, <the fields of Options>)``
    that torch.library infers its schema from; ``leading`` are "Tensor q"-style arguments.
    The function itself takes the options as ``*options`` and rebuilds them with
    ``Options(*options)``, so they are spelled only in ``Options``."""
    def parameter(schema_type: str, name: str) -> inspect.Parameter:
        return inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=_SCHEMA_TYPES[schema_type])

    def wrap(fn):
        params = [parameter(*arg.split()) for arg in leading]
        params += [parameter(f.metadata["schema"], f.name) for f in dataclasses.fields(Options)]
        fn.__signature__ = inspect.Signature(params, return_annotation=tuple[(Tensor,) * returns])
        return fn

    return wrap


@torch.library.triton_op("fusednn::attention_forward", mutates_args=())
@_signature("Tensor q", "Tensor k", "Tensor v", "Tensor? bias", returns=2)
def attention_forward(q: Tensor, k: Tensor, v: Tensor, bias: Optional[Tensor], *options) -> tuple[Tensor, Tensor]:
    """Forward pass. Dense: q [B, Hq, Tq, D], k [B, Hkv, Tk, D], v [B, Hkv, Tk, Dv] ->
    out [B, Hq, Tq, Dv] (q's dtype), lse [B, Hq, Tq] float32. Packed (cu_seqlens given):
    q [total_q, Hq, D] ... -> out [total_q, Hq, Dv], lse [1, Hq, total_q]. ``options`` are the
    fields of ``Options`` in order."""
    options = Options(*options)
    out = _runtime.empty(_out_shape(q, v), dtype=q.dtype, device=q.device)
    lse = _runtime.empty(_lse_shape(q), dtype=torch.float32, device=q.device)
    varlen = options.varlen
    _kernels.attention_forward(_as_heads_first(q, varlen), _as_heads_first(k, varlen), _as_heads_first(v, varlen),
                               bias, _as_heads_first(out, varlen), lse, options)
    return out, lse


@attention_forward.register_fake
def _(q, k, v, bias, *options):
    return q.new_empty(_out_shape(q, v)), q.new_empty(_lse_shape(q), dtype=torch.float32)


@torch.library.triton_op("fusednn::attention_backward", mutates_args=())
@_signature("Tensor grad_out", "Tensor q", "Tensor k", "Tensor v", "Tensor out", "Tensor lse", "Tensor? bias",
            "bool bias_grad", returns=4)
def attention_backward(grad_out: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor,
                       bias: Optional[Tensor], bias_grad: bool, *options) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Gradients of attention_forward: dq, dk, dv in the inputs' shapes and dtypes; dbias
    [B, Hq, Tq, Tk] float32 (``[0]`` unless bias_grad). With ``deterministic`` dq is
    computed in its own pass instead of float32 atomics, so results are bitwise reproducible."""
    options = Options(*options)
    varlen = options.varlen
    dq = _runtime.empty(q.shape, dtype=q.dtype, device=q.device)
    dk = _runtime.empty(k.shape, dtype=k.dtype, device=k.device)
    dv = _runtime.empty(v.shape, dtype=v.dtype, device=v.device)
    dbias = _dbias_empty(q, k, bias_grad)
    heads_first = [_as_heads_first(t, varlen) for t in (grad_out, q, k, v, out)]
    _kernels.attention_backward(*heads_first, lse, bias, _as_heads_first(dq, varlen), _as_heads_first(dk, varlen),
                                _as_heads_first(dv, varlen), dbias if bias_grad else None, options)
    return dq, dk, dv, dbias


@attention_backward.register_fake
def _(grad_out, q, k, v, out, lse, bias, bias_grad, *options):
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape), _dbias_empty(q, k, bias_grad, fake=True)


def _setup_context(ctx, inputs, output):
    q, k, v, bias, *options = inputs
    options = Options(*options)
    out, lse = output
    ctx.mark_non_differentiable(lse)
    # Tensors go through save_for_backward; the rest of the options ride on ctx.
    ctx.save_for_backward(q, k, v, out, lse, bias, *options.tensors())
    ctx.options = options.with_tensors((None,) * len(Options.TENSORS))


def _backward_formula(ctx, grad_out, _grad_lse):
    registry.check_no_double_backward("attention")
    q, k, v, out, lse, bias, *option_tensors = ctx.saved_tensors
    options = ctx.options.with_tensors(option_tensors)
    bias_grad = bool(ctx.needs_input_grad[3]) and bias is not None and bias.is_floating_point()
    dq, dk, dv, dbias = torch.ops.fusednn.attention_backward(grad_out, q, k, v, out, lse, bias, bias_grad,
                                                           *options.values())
    # The op takes the bias already broadcast to [B, Hq, Tq, Tk] (the public functions pass an
    # expanded view), so dbias has its shape; autograd sums it back through the expand.
    grad_bias = dbias.to(bias.dtype) if bias_grad else None
    return (dq, dk, dv, grad_bias) + (None,) * Options.count()


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


def _as_heads_first(t: Tensor, varlen: bool) -> Tensor:
    """The kernels index [B, H, T, D] views; a packed [total, H, D] tensor is the view
    [1, H, total, D] and each program finds its rows through cu_seqlens."""
    return t.permute(1, 0, 2).unsqueeze(0) if varlen else t


# --------------------------------------------------------------------------- validation


def _check_options(args: Args, causal, window, scale, softcap, dropout_p, alignment, deterministic,
                   causal_name: str = "causal") -> tuple[int, int, Optional[float], float]:
    """Validates the scalar options; returns (window_left, window_right, scale, softcap) in
    the op's encoding (-1: unbounded side; softcap 0: none)."""
    args.boolean(causal_name, causal)
    left = right = -1
    if window is not None:
        if not isinstance(window, (tuple, list)) or len(window) != 2:
            raise args.error("window", "None or a pair (left, right)", describe(window), TypeError)
        sides = []
        for side_name, side in zip(("left", "right"), window):
            side = -1 if side is None else side
            if not isinstance(side, numbers.Integral) or isinstance(side, bool):
                raise args.error(f"window {side_name}", "an int, or None / -1 for unbounded", describe(side), TypeError)
            if side < -1:
                raise args.error(f"window {side_name}", "an int >= 0, or None / -1 for unbounded", repr(side))
            sides.append(int(side))
        left, right = sides
    if causal:
        if right > 0:
            raise args.error("window", f"(left, 0) or (left, None) with {causal_name}=True (it hides the keys after "
                             "the query)", repr(tuple(window)))
        right = 0
    if scale is not None:
        scale = args.real("scale", scale)
    softcap = 0.0 if softcap is None else args.real("softcap", softcap, minimum=0.0)
    args.real("dropout_p", dropout_p, minimum=0.0, maximum=1.0)
    args.choice("alignment", alignment, ALIGNMENTS)
    args.boolean("deterministic", deterministic)
    return left, right, scale, softcap


def _check_qkv(args: Args, q, k, v, rank: int, layout: str, names=("q", "k", "v")) -> None:
    """q, k, v of one rank and dtype, on one device; GQA heads; matching lengths and head dims.
    ``layout`` names the dims, heads on dim 1 (``[B, H, T, D]`` or ``[total, H, D]``)."""
    qn, kn, vn = names
    args.tensor(qn, q, layout, ndim=rank)
    for name, t in ((kn, k), (vn, v)):
        args.tensor(name, t, layout, ndim=rank, like=q, like_name=qn)
    hq, hkv = q.shape[1], k.shape[1]
    if v.shape[1] != hkv:
        raise args.error(vn, f"{layout} with {kn}'s number of heads {hkv}", f"{v.shape[1]} heads")
    if hkv == 0 or hq % hkv != 0:
        raise args.error(kn, f"{layout} with a number of heads that divides {qn}'s {hq} (GQA/MQA)", f"{hkv} heads")
    seq = 2 if rank == 4 else 0
    if v.shape[seq] != k.shape[seq]:
        raise args.error(vn, f"{layout} with {kn}'s length {k.shape[seq]}", f"length {v.shape[seq]}")
    if rank == 4:
        for name, t in ((kn, k), (vn, v)):
            if t.shape[0] != q.shape[0]:
                raise args.error(name, f"{layout} with {qn}'s batch size {q.shape[0]}", f"batch size {t.shape[0]}")
    if k.shape[-1] != q.shape[-1]:
        raise args.error(kn, f"{layout} with {qn}'s head dim {q.shape[-1]}", f"head dim {k.shape[-1]}")
    for name, d in ((qn, q.shape[-1]), (vn, v.shape[-1])):
        if not 1 <= d <= MAX_HEAD_DIM:
            raise args.error(name, f"{layout} with a head dim between 1 and {MAX_HEAD_DIM}", f"head dim {d}")


# What torch's tracing (torch.compile, torch.export, make_fx, opcheck) hands to Python code in
# place of plain tensors.
_TRACING_TENSORS = (FakeTensor, FunctionalTensor)
_TENSOR_BASES = (Tensor, torch._C.TensorBase, torch.nn.Parameter, object)


def _is_plain_tensor(t: Tensor) -> bool:
    """True for a tensor the kernels may read as its values: a torch.Tensor, an nn.Parameter,
    a subclass that overrides neither ``__torch_function__`` nor ``__torch_dispatch__``, and
    the FakeTensor / FunctionalTensor of tracing. False for a nested tensor and for subclasses
    with semantics of their own (``CausalBias``, jagged nested tensors, wrappers): their
    storage is not what they stand for. The type is inspected before any tensor attribute,
    so a subclass's own ``__torch_function__`` never runs here."""
    cls = type(t)
    if cls is not Tensor and cls is not torch.nn.Parameter and not isinstance(t, _TRACING_TENSORS):
        for base in cls.__mro__:
            if base not in _TENSOR_BASES and ("__torch_function__" in vars(base) or "__torch_dispatch__" in vars(base)):
                return False
    return not t.is_nested


def _describe_tensor_type(t: Tensor) -> str:
    """How a message shows a tensor that is not a plain one (see ``_is_plain_tensor``)."""
    cls = type(t)
    if cls is Tensor:
        return "a nested tensor" if t.is_nested else "a tensor"
    return f"a {cls.__module__}.{cls.__qualname__}"


_PLAIN_MASK = "a plain tensor (bool mask or float bias)"


def _check_bias(args: Args, name: str, bias, target: tuple[int, ...], device,
                accepted: str = f"{_PLAIN_MASK} or None") -> Optional[Tensor]:
    """A bool mask or float bias broadcast (as a view) to ``target`` = [B, Hq, Tq, Tk].
    ``accepted`` is what the message of a tensor that is not a plain one says the argument takes."""
    if bias is None:
        return None
    if not isinstance(bias, Tensor):
        raise args.error(name, "a tensor or None", describe(bias), TypeError)
    if not _is_plain_tensor(bias):
        raise args.error(name, accepted, _describe_tensor_type(bias), TypeError)
    if bias.dtype != torch.bool and not bias.is_floating_point():
        raise args.error(name, "a bool mask or a float bias", dtype_name(bias.dtype), TypeError)
    if bias.device != device:
        raise args.error(name, f"on the inputs' device {device}", str(bias.device))
    try:
        if bias.dim() > len(target) or torch.broadcast_shapes(bias.shape, target) != tuple(target):
            raise RuntimeError
    except RuntimeError:
        raise args.error(name, f"broadcastable to [B, Hq, Tq, Tk] = {list(target)}", shape_of(bias)) from None
    return bias.expand(target)


def _check_cu_seqlens(args: Args, name: str, cu, total: int, max_name: str, max_seqlen, device) -> int:
    """Offsets of a packed batch; returns max_seqlen as an int."""
    if not isinstance(cu, Tensor) or cu.dtype not in (torch.int32, torch.int64) or cu.dim() != 1 or cu.numel() < 1:
        raise args.error(name, "a 1-D int32/int64 tensor [num_seqs + 1]", describe(cu), TypeError)
    if cu.device != device:
        raise args.error(name, f"on q's device {device}", str(cu.device))
    max_seqlen = args.integer(max_name, max_seqlen, minimum=0)
    # One synchronising check: bad offsets would make the kernels read out of bounds.
    if not torch.compiler.is_compiling():
        lengths = cu[1:] - cu[:-1]
        values = cu.tolist() if cu.numel() <= 16 else "offsets " + str(cu[:16].tolist())[:-1] + ", ...]"
        if int(cu[0]) != 0 or int(cu[-1]) != total or (lengths.numel() and int(lengths.min()) < 0):
            raise args.error(name, f"offsets starting at 0, non-decreasing, ending at the packed length {total}",
                             str(values))
        if lengths.numel() and int(lengths.max()) > max_seqlen:
            raise args.error(max_name, f"at least the longest sequence in {name} ({int(lengths.max())})",
                             str(max_seqlen))
    return max_seqlen


def _draw_seed(dropout_p: float, device) -> Optional[Tensor]:
    """The dropout seed, drawn from torch's generator of q's device (torch.manual_seed
    reproduces it); the kernels derive every element's keep decision from it."""
    if dropout_p == 0.0:
        return None
    return torch.randint(0, 2**62, (1,), dtype=torch.int64, device=device)


def _window_for_reference(left: int, right: int):
    return None if left < 0 and right < 0 else (None if left < 0 else left, None if right < 0 else right)


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
    softcap), broadcastable to [B, Hq, Tq, Tk]; a float bias that requires grad gets one. A plain
    tensor or nn.Parameter: nested tensors and subclasses with semantics of their own (such as
    torch's CausalBias; pass causal/alignment instead) raise TypeError.
    dropout_p: dropout on the attention probabilities, drawn in the kernel from a seed
    taken from torch's generator; the backward regenerates the same mask.
    A query that sees no key gets output 0 and zero gradients.

    Returns out [B, Hq, Tq, Dv] in q's dtype, and also lse [B, Hq, Tq] (float32, natural
    log of the softmax denominator; -inf for rows that see no key) when return_lse.
    Saved for backward: q, k, v, out, lse, the bias and the dropout seed. The backward
    recomputes the probabilities block by block. ``deterministic=True`` computes dq in its
    own pass (no float32 atomics), so gradients are bitwise reproducible.
    """
    args = Args("fusednn.ops.attention")
    _check_qkv(args, q, k, v, 4, "[B, H, T, D]")
    left, right, scale, softcap = _check_options(args, causal, window, scale, softcap, dropout_p, alignment,
                                                 deterministic)
    args.boolean("return_lse", return_lse)
    bias = _check_bias(args, "attn_bias", attn_bias, (q.shape[0], q.shape[1], q.shape[2], k.shape[2]), q.device)
    out, lse = _attend(ATTENTION, q, k, v, bias, None, left, right, scale, softcap, float(dropout_p), deterministic,
                       alignment)
    return (out, lse) if return_lse else out


def _attend(info: registry.OpInfo, q, k, v, bias, packed, left, right, scale, softcap, dropout_p, deterministic,
            alignment) -> tuple[Tensor, Tensor]:
    """Validated attention: the kernel, or the reference where no kernel serves. ``packed`` is
    None for [B, H, T, D] inputs, else (cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k)
    for [total, H, D] ones. Returns (out, lse) as the registered op does."""
    scale = float(q.shape[-1] ** -0.5 if scale is None else scale)
    if info.select(q.device, q.dtype) == "reference":
        options = dict(window=_window_for_reference(left, right), scale=scale, softcap=softcap or None,
                       dropout_p=dropout_p, return_lse=True, alignment=alignment)
        if packed is None:
            return _reference.attention(q, k, v, attn_bias=bias, **options)
        out, lse = _reference.attention_varlen(q, k, v, *packed, **options)
        return out, lse.unsqueeze(0)
    q, k, v = (_runtime.unit_last_stride(t) for t in (q, k, v))
    if packed is None:
        packed = (None, None, q.shape[2], k.shape[2])
    else:
        packed = (packed[0].to(torch.int32), packed[1].to(torch.int32), *packed[2:])
    options = Options(*packed, scale, softcap, left, right, alignment == "bottom_right", dropout_p,
                      _draw_seed(dropout_p, q.device), deterministic)
    return torch.ops.fusednn.attention_forward(q, k, v, bias, *options.values())


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
    args = Args("fusednn.ops.attention_varlen")
    _check_qkv(args, q, k, v, 3, "[total_tokens, H, D]")
    left, right, scale, softcap = _check_options(args, causal, window, scale, softcap, dropout_p, alignment,
                                                 deterministic)
    args.boolean("return_lse", return_lse)
    max_seqlen_q = _check_cu_seqlens(args, "cu_seqlens_q", cu_seqlens_q, q.shape[0], "max_seqlen_q", max_seqlen_q,
                                     q.device)
    max_seqlen_k = _check_cu_seqlens(args, "cu_seqlens_k", cu_seqlens_k, k.shape[0], "max_seqlen_k", max_seqlen_k,
                                     q.device)
    if cu_seqlens_q.shape != cu_seqlens_k.shape:
        raise args.error("cu_seqlens_k", f"offsets of as many sequences as cu_seqlens_q ({cu_seqlens_q.numel() - 1})",
                         f"{cu_seqlens_k.numel() - 1} sequences")
    out, lse = _attend(ATTENTION_VARLEN, q, k, v, None, (cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k),
                       left, right, scale, softcap, float(dropout_p), deterministic, alignment)
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
    """``torch.nn.functional.scaled_dot_product_attention`` computed by the fused kernels.

    query: [..., Hq, L, E]; key: [..., Hkv, S, E]; value: [..., Hkv, S, Ev] (any number of
    leading dims, broadcast against each other as torch does; without enable_gqa the head
    dims broadcast too, with it Hq must be a multiple of Hkv). Returns [..., Hq, L, Ev] in
    query's dtype.

    attn_mask: a bool mask (True = may attend) or a float bias added to the scores,
    broadcastable to [..., Hq, L, S]; or a ``torch.nn.attention.bias.CausalBias`` of lengths
    (L, S): ``causal_upper_left(L, S)`` is query i seeing keys j <= i, ``causal_lower_right(L,
    S)`` keys j <= i + S - L; it runs as the kernels' causal band, no mask is read, and
    is_causal must then be False (as torch). Other tensor subclasses and nested tensors are
    refused (TypeError).
    is_causal: query i sees keys j <= i (top-left aligned). Given together with an attn_mask
    tensor, both apply (a key is visible when the causal band and the mask allow it; a float
    mask is added inside the band), as torch's CPU flash kernel does; torch's math backend
    refuses the combination.

    A query that sees no key (every key masked, or L > S with ``causal_lower_right``: its
    first L - S queries) gets output 0 and zero gradients, as from torch on the CPU (its
    CausalBias warns of NaN there, which its GPU kernels give).
    """
    args = Args("fusednn.ops.scaled_dot_product_attention")
    names = ("query", "key", "value")
    for name, t in zip(names, (query, key, value)):
        args.tensor(name, t, "[..., T, E]")
        if t.dim() < 2:
            raise args.error(name, "[..., T, E] with at least 2 dims", shape_of(t))
    for name, t in zip(names[1:], (key, value)):
        args.tensor(name, t, like=query, like_name="query")
    args.boolean("is_causal", is_causal)
    args.boolean("enable_gqa", enable_gqa)
    alignment = _causal_bias_alignment(args, attn_mask, is_causal, query.shape[-2], key.shape[-2])
    if alignment is not None:
        attn_mask, is_causal = None, True
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
        raise args.error("key", f"[..., S, E] with leading dims that broadcast with query's {tuple(query.shape[:-2])} "
                         f"and value's {tuple(value.shape[:-2])}", shape_of(key)) from None
    n = math.prod(batch)

    def to_bhtd(t, heads):
        return t.expand(*batch, heads, *t.shape[-2:]).reshape(n, heads, *t.shape[-2:])

    q4, k4, v4 = to_bhtd(q, heads_q), to_bhtd(k, heads_kv), to_bhtd(v, heads_kv)
    _check_qkv(args, q4, k4, v4, 4, "[..., H, T, E]", names)
    alignment = alignment or "top_left"
    left, right, scale, softcap = _check_options(args, is_causal, None, scale, None, dropout_p, alignment, False,
                                                 causal_name="is_causal")
    bias = None
    if attn_mask is not None:
        full = (*batch, heads_q, q.shape[-2], k.shape[-2])
        mask = _check_bias(args, "attn_mask", attn_mask, full, query.device,
                           accepted=f"{_PLAIN_MASK}, a torch.nn.attention.bias.CausalBias or None")
        bias = mask.reshape(n, heads_q, q.shape[-2], k.shape[-2])
    out, _lse = _attend(SDPA, q4, k4, v4, bias, None, left, right, scale, softcap, float(dropout_p), False, alignment)
    return _restore_rank(out.reshape(*batch, heads_q, q.shape[-2], v.shape[-1]), query, key, value)


# torch.nn.attention.bias.CausalBias variants as the kernels' causal alignments
_CAUSAL_BIAS_ALIGNMENTS = {CausalVariant.UPPER_LEFT: "top_left", CausalVariant.LOWER_RIGHT: "bottom_right"}


def _causal_bias_alignment(args: Args, attn_mask, is_causal: bool, L: int, S: int) -> Optional[str]:
    """The causal alignment a ``CausalBias`` attn_mask stands for (None when attn_mask is not
    one), after checking it: is_causal False, as torch demands, and lengths (L, S)."""
    if not isinstance(attn_mask, CausalBias):
        return None
    if is_causal:
        raise args.error("is_causal", "False with a CausalBias attn_mask (which is the causal mask already)", "True")
    variant = attn_mask.variant
    if variant not in _CAUSAL_BIAS_ALIGNMENTS:
        raise args.error("attn_mask", "a CausalBias of variant UPPER_LEFT or LOWER_RIGHT", repr(variant))
    lengths = (attn_mask.seq_len_q, attn_mask.seq_len_kv)
    if lengths != (L, S):
        raise args.error("attn_mask", f"a CausalBias of query's and key's lengths (L, S) = ({L}, {S})",
                         f"a CausalBias of (seq_len_q, seq_len_kv) = {lengths}")
    return _CAUSAL_BIAS_ALIGNMENTS[variant]


def _restore_rank(out: Tensor, query: Tensor, key: Tensor, value: Tensor) -> Tensor:
    """Drop the leading singleton dims added to reach 4-D, as torch's result has the rank
    of its broadcast inputs."""
    rank = max(query.dim(), key.dim(), value.dim())
    return out.reshape(out.shape[out.dim() - rank:]) if out.dim() > rank else out


# --------------------------------------------------------------------------- registry

_TRITON = registry.Kernel("triton", _KERNEL_DTYPES, compile_variants=_kernels.compile_variants)

ATTENTION = registry.register(registry.OpInfo(
    name="attention", family="exact_attention", function=attention, reference=_reference.attention,
    baseline=functools.partial(_reference.attention, upcast=False), kernels=(_TRITON,),
    samples=_cases.attention_samples, bad_inputs=_cases.attention_bad_inputs, outputs=("out", "lse"),
    bench=_cases.BENCH_SHAPES,
))
ATTENTION_VARLEN = registry.register(registry.OpInfo(
    name="attention_varlen", family="exact_attention", function=attention_varlen,
    reference=_reference.attention_varlen, baseline=functools.partial(_reference.attention_varlen, upcast=False),
    kernels=(_TRITON,),
    samples=_cases.attention_varlen_samples, bad_inputs=_cases.attention_varlen_bad_inputs, outputs=("out", "lse"),
))
SDPA = registry.register(registry.OpInfo(
    name="scaled_dot_product_attention", family="exact_attention", function=scaled_dot_product_attention,
    reference=_reference.scaled_dot_product_attention, kernels=(_TRITON,), samples=_cases.sdpa_samples,
    bad_inputs=_cases.sdpa_bad_inputs,
))
