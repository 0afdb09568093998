"""Drop-in ``torch.nn.MultiheadAttention`` whose attention core is ``fusednn.ops.scaled_dot_product_attention``.

It subclasses the torch module, so constructor arguments, parameters (``in_proj_weight`` or
``q/k/v_proj_weight``, ``in_proj_bias``, ``out_proj``, ``bias_k``/``bias_v``), initialisation
and ``state_dict`` are torch's own; only ``forward`` changes. It follows torch's slow path
(``F.multi_head_attention_forward``), with the projections and masks kept batch-first.
Nested tensors go to torch's own forward, and a TorchScript-compiled module runs torch's
``F.multi_head_attention_forward`` (see ``MultiheadAttention.forward``).
"""

from __future__ import annotations

import warnings
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from fusednn import ops, registry
from fusednn._validate import ArgumentAssertionError, Args, shape_of

__all__ = ["MultiheadAttention"]


def _check_mask_dtype(mask: Optional[Tensor], name: str) -> None:
    if mask is not None and mask.dtype != torch.bool and not mask.is_floating_point():
        raise ArgumentAssertionError(f"only bool and floating types of {name} are supported")


def _as_float(mask: Tensor, dtype: torch.dtype) -> Tensor:
    """torch's canonical form: a bool mask (True = ignore) becomes 0 / -inf, a float mask is a bias."""
    if mask.dtype == torch.bool:
        return torch.zeros_like(mask, dtype=dtype).masked_fill_(mask, float("-inf"))
    return mask


def _linear(x: Tensor, weight: Tensor, bias: Optional[Tensor]) -> Tensor:
    """``F.linear``, also for a bias of another dtype than the weight (a float16 ``in_proj_bias``
    of a float64 module): the product, then the bias added with type promotion. torch's module
    computes that where its F.linear takes the matmul-then-add route (a non-contiguous 3-D input:
    contiguous batch-first inputs, which it transposes) and refuses the mix elsewhere (addmm)."""
    if bias is not None and bias.dtype != weight.dtype:
        return F.linear(x, weight) + bias
    return F.linear(x, weight, bias)


def _pad_keys(mask: Tensor, columns: int) -> Tensor:
    return F.pad(mask, (0, columns)) if columns else mask


def _merge_masks(attn_mask: Optional[Tensor], key_padding_mask: Optional[Tensor], dtype: torch.dtype,
                 ) -> Optional[Tensor]:
    """The masks given (broadcastable to [N, H, L, S]) merged into one in the op's convention:
    a bool keep-mask (True = may attend) when all are bool, else torch's sum of their float forms."""
    masks = [m for m in (attn_mask, key_padding_mask) if m is not None]
    if not masks:
        return None
    if all(m.dtype == torch.bool for m in masks):
        ignore = masks[0] if len(masks) == 1 else masks[0] | masks[1]
        return ~ignore
    merged = _as_float(masks[0], dtype)
    return merged if len(masks) == 1 else merged + _as_float(masks[1], dtype)


# torch's module inputs all ask for the weights (need_weights defaults to True), which are
# computed explicitly: the generic module tests also run them without, through the fused op.
@registry.drop_in(torch.nn.MultiheadAttention, forward_kwargs=({"need_weights": False},))
class MultiheadAttention(torch.nn.MultiheadAttention):
    """``torch.nn.MultiheadAttention(embed_dim, num_heads, dropout=0.0, bias=True, add_bias_kv=False,
    add_zero_attn=False, kdim=None, vdim=None, batch_first=False, device=None, dtype=None)``
    with the attention computed by ``fusednn.ops.scaled_dot_product_attention``.

    Shapes (L target length, S source length, N batch, E = embed_dim, H = num_heads):
    query [L, N, E] ([N, L, E] when batch_first, [L, E] unbatched); key [S, N, kdim];
    value [S, N, vdim]; key_padding_mask [N, S] ([S] unbatched), bool (True = ignore) or
    float (added); attn_mask [L, S] or [N * H, L, S], bool (True = may not attend) or float
    (added). is_causal is torch's hint that attn_mask is the causal mask: attn_mask is still
    required, and without key_padding_mask and need_weights the fused causal kernel runs
    instead of the mask.

    Returns (attn_output in query's layout, attn_weights or None). With need_weights=True
    the weights (after dropout, as torch returns them) are [N, L, S] averaged over heads, or
    [N, H, L, S] when not average_attn_weights (no N when unbatched); they and the output
    then come from an explicit softmax in plain PyTorch, as in torch. Dropout on the
    attention probabilities applies only in training. A query that may attend to no key
    gets attention 0 (output = out_proj.bias) without weights and NaN with them, as in torch.

    Nested-tensor inputs run torch's own forward, which takes them only on its fast path
    (inference: eval mode without autograd, batch_first, self-attention, no mask, ...) and
    raises AssertionError elsewhere. ``torch.jit.script`` compiles the module to torch's
    ``F.multi_head_attention_forward`` (TorchScript cannot compile the fused op's Python),
    which refuses nested tensors.
    A float16 ``in_proj_bias`` of a float64 module is added with type promotion (float64
    result), as torch does for contiguous batch-first inputs; ours does so for every layout,
    where torch's refuses the others (RuntimeError from its F.linear).
    """

    def forward(
        self,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        key_padding_mask: Optional[Tensor] = None,
        need_weights: bool = True,
        attn_mask: Optional[Tensor] = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[Tensor, Optional[Tensor]]:
        if torch.jit.is_scripting():
            # TorchScript compiles this branch only: torch's F.multi_head_attention_forward
            # (sequence-first), which checks the arguments itself.
            if query.is_nested or key.is_nested or value.is_nested:
                raise AssertionError("fusednn.nn.MultiheadAttention: a TorchScript-compiled module does not take "
                                     "nested tensors; the eager module takes them where torch's does (its fast path)")
            transpose = self.batch_first and query.dim() == 3
            if transpose:
                # One transpose per distinct tensor: F.multi_head_attention_forward recognises
                # self-attention (one projection GEMM) by identity.
                key_is_value = key is value
                self_attention = query is key and key_is_value
                query = query.transpose(1, 0)
                key = query if self_attention else key.transpose(1, 0)
                value = key if key_is_value else value.transpose(1, 0)
            out, weights = F.multi_head_attention_forward(
                query, key, value, self.embed_dim, self.num_heads, self.in_proj_weight, self.in_proj_bias,
                self.bias_k, self.bias_v, self.add_zero_attn, self.dropout, self.out_proj.weight, self.out_proj.bias,
                training=self.training, key_padding_mask=key_padding_mask, need_weights=need_weights,
                attn_mask=attn_mask, use_separate_proj_weight=not self._qkv_same_embed_dim,
                q_proj_weight=self.q_proj_weight, k_proj_weight=self.k_proj_weight,
                v_proj_weight=self.v_proj_weight, average_attn_weights=average_attn_weights, is_causal=is_causal)
            return (out.transpose(1, 0) if transpose else out), weights
        if query.is_nested or key.is_nested or value.is_nested:
            # torch accepts nested tensors only on its fast path (torch._native_multi_head_attention,
            # an inference kernel that takes them as they are). Its forward decides whether the
            # fast path applies (a dozen conditions: grad mode, training, autocast, masks, tracing,
            # ...) and raises otherwise; running it keeps both the results and the errors torch's,
            # where padding the input for the fused op would compute the padded rows and have to
            # re-derive those conditions.
            return super().forward(query, key, value, key_padding_mask=key_padding_mask, need_weights=need_weights,
                                   attn_mask=attn_mask, average_attn_weights=average_attn_weights,
                                   is_causal=is_causal)
        return self._fused_forward(query, key, value, key_padding_mask, need_weights, attn_mask, average_attn_weights,
                                   is_causal)

    @torch.jit.unused
    def _fused_forward(
        self,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        key_padding_mask: Optional[Tensor],
        need_weights: bool,
        attn_mask: Optional[Tensor],
        average_attn_weights: bool,
        is_causal: bool,
    ) -> tuple[Tensor, Optional[Tensor]]:
        """The eager forward: projections, then the fused op (or, with need_weights, an explicit softmax)."""
        batched = self._check_shapes(query, key, value, key_padding_mask, attn_mask)
        _check_mask_dtype(key_padding_mask, "key_padding_mask")
        _check_mask_dtype(attn_mask, "attn_mask")
        if key_padding_mask is not None and attn_mask is not None and key_padding_mask.dtype != attn_mask.dtype:
            warnings.warn("Support for mismatched key_padding_mask and attn_mask is deprecated. Use same type for "
                          "both instead.", stacklevel=3)
        if is_causal and attn_mask is None:
            raise RuntimeError("Need attn_mask if specifying the is_causal hint. You may use the Transformer module "
                               "method `generate_square_subsequent_mask` to create this mask.")
        # As torch: the hint replaces attn_mask only where no mask has to be merged or returned.
        use_causal_kernel = is_causal and key_padding_mask is None and not need_weights
        if use_causal_kernel:
            attn_mask = None

        self._check_features(query, key, value, batched)
        self_attention = query is key and key is value
        # Everything batch-first from here: [N, L, E].
        if not batched:
            query, key, value = query.unsqueeze(0), key.unsqueeze(0), value.unsqueeze(0)
            key_padding_mask = None if key_padding_mask is None else key_padding_mask.unsqueeze(0)
        elif not self.batch_first:
            query, key, value = query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1)
        N, L, E = query.shape
        S, H = key.shape[1], self.num_heads
        if key_padding_mask is not None and tuple(key_padding_mask.shape) != (N, S):
            raise ArgumentAssertionError(f"Expected key_padded_mask.shape to be {(N, S)}, but got "
                                 f"{tuple(key_padding_mask.shape)}")
        if attn_mask is not None:
            expected = (L, S) if attn_mask.dim() == 2 else (N * H, L, S)
            if tuple(attn_mask.shape) != expected:
                raise RuntimeError(f"The shape of the {attn_mask.dim()}D attn_mask is {attn_mask.shape}, but should "
                                   f"be {expected}.")

        q, k, v = self._in_projection(query, key, value, self_attention)
        # Extra key/value columns (bias_k/bias_v, then a zero one) every query may attend to.
        extra = []
        if self.bias_k is not None:
            extra.append((self.bias_k.expand(N, 1, E), self.bias_v.expand(N, 1, E)))
        if self.add_zero_attn:
            extra.append((k.new_zeros(N, 1, E), v.new_zeros(N, 1, E)))
        if extra:
            k = torch.cat([k] + [ek for ek, _ in extra], dim=1)
            v = torch.cat([v] + [ev for _, ev in extra], dim=1)
        # Masks get "attend" columns (False / 0.0) for the extra keys and broadcast to [N, H, L, S'].
        if attn_mask is not None:
            heads = H if attn_mask.dim() == 3 else 1
            attn_mask = _pad_keys(attn_mask, len(extra)).reshape(-1, heads, L, S + len(extra))
        if key_padding_mask is not None:
            key_padding_mask = _pad_keys(key_padding_mask, len(extra)).reshape(N, 1, 1, S + len(extra))
        mask = _merge_masks(attn_mask, key_padding_mask, query.dtype)

        # [N, T, E] -> [N, H, T, head_dim]
        q, k, v = (t.unflatten(-1, (H, self.head_dim)).transpose(1, 2) for t in (q, k, v))
        dropout_p = self.dropout if self.training else 0.0
        weights = None
        if need_weights:
            scores = (q * self.head_dim**-0.5) @ k.transpose(-2, -1)
            if mask is not None:
                scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask
            weights = scores.softmax(dim=-1)
            if dropout_p > 0:
                weights = F.dropout(weights, p=dropout_p)
            attn = weights @ v
            if average_attn_weights:
                weights = weights.mean(dim=1)
            if not batched:
                weights = weights.squeeze(0)
        else:
            attn = ops.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p,
                                                    is_causal=use_causal_kernel)

        # [N, H, L, head_dim] -> the caller's layout, then the output projection.
        if batched and not self.batch_first:
            attn = attn.permute(2, 0, 1, 3).reshape(L, N, E)
        else:
            attn = attn.transpose(1, 2).reshape(N, L, E)
        out = F.linear(attn, self.out_proj.weight, self.out_proj.bias)
        return (out if batched else out.squeeze(0)), weights

    def _in_projection(self, query: Tensor, key: Tensor, value: Tensor, self_attention: bool,
                       ) -> tuple[Tensor, Tensor, Tensor]:
        """q [N, L, E], k [N, S, E], v [N, S, E]; self-attention takes one GEMM."""
        if self._qkv_same_embed_dim:
            if self_attention:
                return _linear(query, self.in_proj_weight, self.in_proj_bias).chunk(3, dim=-1)
            weights = self.in_proj_weight.chunk(3)
        else:
            weights = (self.q_proj_weight, self.k_proj_weight, self.v_proj_weight)
        biases = self.in_proj_bias.chunk(3) if self.in_proj_bias is not None else (None,) * 3
        return tuple(_linear(x, w, b) for x, w, b in zip((query, key, value), weights, biases))

    def _check_features(self, query: Tensor, key: Tensor, value: Tensor, batched: bool) -> None:
        """Feature sizes (embed_dim, kdim, vdim) and key/value agreement, shown in the caller's layout.
        AssertionError where torch asserts (also a ValueError and a RuntimeError)."""
        args = Args("fusednn.nn.MultiheadAttention")
        if not batched:
            layouts = ("[L, E]", "[S, kdim]", "[S, vdim]")
        elif self.batch_first:
            layouts = ("[N, L, E]", "[N, S, kdim]", "[N, S, vdim]")
        else:
            layouts = ("[L, N, E]", "[S, N, kdim]", "[S, N, vdim]")
        if query.shape[-1] != self.embed_dim:
            raise args.error("query", f"{layouts[0]} with E = embed_dim = {self.embed_dim}", f"E = {query.shape[-1]}",
                             AssertionError)
        if self._qkv_same_embed_dim and key.shape != value.shape:
            raise ArgumentAssertionError(f"key shape {key.shape} does not match value shape {value.shape}")
        if key.shape[:-1] != value.shape[:-1]:
            raise ArgumentAssertionError(f"key's sequence and batch dims {tuple(key.shape[:-1])} do not match value's "
                                         f"{tuple(value.shape[:-1])}")
        for name, t, layout, size, size_name in (("key", key, layouts[1], self.kdim, "kdim"),
                                                 ("value", value, layouts[2], self.vdim, "vdim")):
            if t.shape[-1] != size:
                raise args.error(name, f"{layout} with {size_name} = {size}", shape_of(t), AssertionError)

    def _check_shapes(self, query, key, value, key_padding_mask, attn_mask) -> bool:
        """torch's rank checks (AssertionError, as ``F.multi_head_attention_forward``); True when batched."""
        if query.dim() not in (2, 3):
            raise ArgumentAssertionError(f"query should be unbatched 2D or batched 3D tensor but received "
                                         f"{query.dim()}-D query tensor")
        batched = query.dim() == 3
        kind = "batched (3-D)" if batched else "unbatched (2-D)"
        if key.dim() != query.dim() or value.dim() != query.dim():
            raise ArgumentAssertionError(f"For {kind} `query`, expected `key` and `value` to be {query.dim()}-D but "
                                         f"found {key.dim()}-D and {value.dim()}-D tensors respectively")
        if key_padding_mask is not None and key_padding_mask.dim() != query.dim() - 1:
            raise ArgumentAssertionError(f"For {kind} `query`, expected `key_padding_mask` to be `None` or "
                                 f"{query.dim() - 1}-D but found {key_padding_mask.dim()}-D tensor instead")
        if attn_mask is not None and attn_mask.dim() not in (2, 3):
            raise ArgumentAssertionError(f"For {kind} `query`, expected `attn_mask` to be `None`, 2-D or 3-D but "
                                         f"found {attn_mask.dim()}-D tensor instead")
        if not batched and attn_mask is not None and attn_mask.dim() == 3:
            expected = (self.num_heads, query.shape[0], key.shape[0])
            if attn_mask.shape != expected:
                raise ArgumentAssertionError(f"Expected `attn_mask` shape to be {expected} but got {attn_mask.shape}")
        return batched
