"""fusednn.nn.exact_attention.MultiheadAttention against torch.nn.MultiheadAttention with the same
state_dict: outputs, attention weights and the gradients of every input and parameter, the
torch module in float64 as the reference. float32 runs the Triton kernel (the interpreter on
the CPU), float64 the plain-PyTorch reference op, which checks the module's own logic to 1e-10."""

import contextlib
import io
import warnings

import pytest
import torch

import fusednn
from fusednn.nn import MultiheadAttention
from fusednn.testing import assert_close

E, H = 24, 4  # head_dim 6


def _modules(embed_dim=E, num_heads=H, *, dtype=torch.float32, **kwargs):
    """(ours in ``dtype``, torch's in float64) with the same random parameters (torch starts biases at 0)."""
    theirs = torch.nn.MultiheadAttention(embed_dim, num_heads, dtype=torch.float64, **kwargs)
    with torch.no_grad():
        for p in theirs.parameters():
            p.uniform_(-0.4, 0.4)
    ours = MultiheadAttention(embed_dim, num_heads, dtype=dtype, **kwargs)
    ours.load_state_dict(theirs.state_dict())
    return ours, theirs


def _randn(*shape, noncontiguous=False):
    if noncontiguous:  # every other element of the last dim
        return torch.randn(*shape[:-1], 2 * shape[-1], dtype=torch.float64)[..., ::2]
    return torch.randn(*shape, dtype=torch.float64)


def _bool_mask(*shape):
    """Random True (= ignore) entries; key 0 is never ignored, so no row is fully masked."""
    mask = torch.rand(shape) < 0.35
    mask[..., 0] = False
    return mask


def _float_mask(*shape):
    return torch.randn(shape, dtype=torch.float64).masked_fill(_bool_mask(*shape), float("-inf"))


def _run(module, dtype, inputs, grad_names, grad_seed, share, **kwargs):
    """Forward and backward of ``module`` on ``inputs`` cast to ``dtype`` (``share``: "qkv" passes
    query as key and value, "kv" key as value): output, weights and the gradients of the inputs
    in ``grad_names`` and of every parameter."""
    leaves = {}
    for name, t in inputs.items():
        if t is not None and t.is_floating_point():
            t = t.detach().to(dtype).requires_grad_(name in grad_names)
        leaves[name] = t
    if share == "qkv":
        leaves["key"] = leaves["value"] = leaves["query"]
    elif share == "kv":
        leaves["value"] = leaves["key"]
    out, weights = module(**leaves, **kwargs)
    generator = torch.Generator().manual_seed(grad_seed)
    loss = (out * torch.randn(out.shape, generator=generator, dtype=torch.float64).to(dtype)).sum()
    if weights is not None:
        loss = loss + (weights * torch.randn(weights.shape, generator=generator, dtype=torch.float64).to(dtype)).sum()
    loss.backward()
    results = {"output": out, "weights": weights}
    results.update({f"grad {name}": leaves[name].grad for name in grad_names})
    results.update({f"grad {name}": p.grad for name, p in module.named_parameters()})
    return results


# name: (constructor kwargs, L, S, N, input kwargs); inputs are seq-first unless batch_first,
# and self-attention (query is key is value) when L == S without kdim, unless "share" says otherwise.
CASES = {
    "self": (dict(), 17, 17, 2, dict()),
    "self_batch_first": (dict(batch_first=True), 17, 17, 2, dict()),
    "self_batch1_L1": (dict(batch_first=True), 1, 1, 1, dict()),
    "unbatched": (dict(), 17, 17, None, dict()),
    "unbatched_masks_weights": (dict(), 5, 13, None,
                                dict(key_padding_mask="bool", attn_mask="bool3", need_weights=True,
                                     average_attn_weights=False)),
    "cross_kdim_vdim": (dict(kdim=12, vdim=20, batch_first=True), 17, 13, 2, dict()),
    "cross_same_dim": (dict(), 1, 13, 2, dict(share="kv")),
    "noncontiguous": (dict(kdim=12, vdim=20), 9, 13, 2, dict(noncontiguous=True)),
    "no_bias": (dict(bias=False), 17, 13, 2, dict()),
    "add_bias_kv": (dict(add_bias_kv=True), 17, 13, 2, dict()),
    "add_zero_attn": (dict(add_zero_attn=True), 17, 13, 2, dict()),
    "bias_kv_zero_attn_masks": (dict(add_bias_kv=True, add_zero_attn=True, batch_first=True), 17, 13, 2,
                                dict(key_padding_mask="bool", attn_mask="bool3")),
    "kpm_bool": (dict(), 17, 13, 2, dict(key_padding_mask="bool")),
    "kpm_float": (dict(), 17, 13, 2, dict(key_padding_mask="float")),
    "mask2d_bool": (dict(), 17, 13, 2, dict(attn_mask="bool2")),
    "mask3d_bool": (dict(batch_first=True), 17, 13, 2, dict(attn_mask="bool3")),
    "mask2d_float": (dict(), 17, 13, 2, dict(attn_mask="float2")),
    "mask3d_float": (dict(batch_first=True), 17, 13, 2, dict(attn_mask="float3")),
    "masks_bool_bool": (dict(), 17, 13, 2, dict(key_padding_mask="bool", attn_mask="bool2")),
    "masks_float_float": (dict(), 17, 13, 2, dict(key_padding_mask="float", attn_mask="float3")),
    "masks_float_kpm_bool_mask": (dict(batch_first=True), 17, 13, 2,
                                  dict(key_padding_mask="float", attn_mask="bool2")),
    "causal_hint": (dict(batch_first=True), 17, 17, 2, dict(attn_mask="causal", is_causal=True)),
    "causal_hint_bias_kv": (dict(add_bias_kv=True, add_zero_attn=True), 17, 17, 2,
                            dict(attn_mask="causal", is_causal=True)),
    "causal_hint_kpm": (dict(), 17, 17, 2, dict(attn_mask="causal", is_causal=True, key_padding_mask="bool")),
    "causal_hint_weights": (dict(), 17, 17, 2, dict(attn_mask="causal", is_causal=True, need_weights=True)),
    "weights_avg": (dict(), 17, 13, 2, dict(need_weights=True)),
    "weights_per_head": (dict(batch_first=True, kdim=12, vdim=20), 17, 13, 2,
                         dict(need_weights=True, average_attn_weights=False, attn_mask="float2",
                              key_padding_mask="bool")),
    "eval_with_dropout": (dict(dropout=0.5), 17, 13, 2, dict(eval=True)),
    "eval_with_dropout_weights": (dict(dropout=0.5, batch_first=True), 17, 13, 2, dict(eval=True, need_weights=True)),
}


def _make_mask(kind, L, S, N):
    """A mask of ``kind`` for L queries, S keys and batch N (None: unbatched)."""
    n = 1 if N is None else N
    padding_shape = (S,) if N is None else (N, S)
    makers = {
        "bool": lambda: _bool_mask(*padding_shape),
        "float": lambda: _float_mask(*padding_shape),
        "bool2": lambda: _bool_mask(L, S),
        "float2": lambda: _float_mask(L, S),
        "bool3": lambda: _bool_mask(n * H, L, S),
        "float3": lambda: _float_mask(n * H, L, S),
        "causal": lambda: torch.ones(L, S, dtype=torch.bool).triu(1),
    }
    return None if kind is None else makers[kind]()


def _case_inputs(case):
    """(constructor kwargs, input tensors, forward kwargs, share, eval) of a CASES entry."""
    module_kwargs, L, S, N, options = CASES[case]
    options = dict(options)
    noncontiguous = options.pop("noncontiguous", False)
    evaluate = options.pop("eval", False)
    batch_first = module_kwargs.get("batch_first", False)
    share = options.pop("share", "qkv" if L == S and "kdim" not in module_kwargs else None)

    def seq(T, D):
        if N is None:
            return _randn(T, D, noncontiguous=noncontiguous)
        return _randn(*((N, T, D) if batch_first else (T, N, D)), noncontiguous=noncontiguous)

    query = seq(L, E)
    key = seq(S, module_kwargs.get("kdim", E))
    value = seq(S, module_kwargs.get("vdim", E))
    inputs = dict(query=query, key=key, value=value,
                  key_padding_mask=_make_mask(options.pop("key_padding_mask", None), L, S, N),
                  attn_mask=_make_mask(options.pop("attn_mask", None), L, S, N))
    options.setdefault("need_weights", False)
    return module_kwargs, inputs, options, share, evaluate


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32_kernel", "fp64_reference"])
@pytest.mark.parametrize("case", list(CASES))
def test_matches_torch(case, dtype, monkeypatch):
    module_kwargs, inputs, options, share, evaluate = _case_inputs(case)
    ours, theirs = _modules(dtype=dtype, **module_kwargs)
    if evaluate:
        ours.eval()
        theirs.eval()
    # The fused op must compute the attention exactly when no weights are returned.
    op_calls = []
    op = fusednn.ops.scaled_dot_product_attention
    monkeypatch.setattr(fusednn.ops, "scaled_dot_product_attention",
                        lambda *args, **kwargs: op_calls.append(kwargs) or op(*args, **kwargs))

    grad_names = {"qkv": ["query"], "kv": ["query", "key"], None: ["query", "key", "value"]}[share]
    grad_names += [m for m in ("key_padding_mask", "attn_mask")
                   if inputs[m] is not None and inputs[m].is_floating_point()]
    masks = [inputs[m] for m in ("key_padding_mask", "attn_mask") if inputs[m] is not None]
    mixed_masks = len(masks) == 2 and masks[0].dtype != masks[1].dtype
    with pytest.warns(UserWarning, match="mismatched") if mixed_masks else contextlib.nullcontext():
        actual = _run(ours, dtype, inputs, grad_names, 0, share, **options)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch's own deprecation warning for mixed masks
        expected = _run(theirs, torch.float64, inputs, grad_names, 0, share, **options)

    assert len(op_calls) == (0 if options["need_weights"] else 1)
    if op_calls:
        causal_kernel = options.get("is_causal", False) and inputs["key_padding_mask"] is None
        assert op_calls[0]["is_causal"] == causal_kernel
        assert (op_calls[0]["attn_mask"] is None) == (causal_kernel or (inputs["key_padding_mask"] is None
                                                                       and inputs["attn_mask"] is None))
    assert actual.keys() == expected.keys()
    assert (actual["weights"] is None) == (expected["weights"] is None)
    for name, value in expected.items():
        if value is not None:
            assert actual[name] is not None, name
            assert actual[name].dtype == dtype, name
            assert_close(actual[name], value, name=f"{case}: {name}")


@pytest.mark.parametrize("need_weights", [False, True])
def test_fully_masked_rows_as_torch(need_weights):
    """Batch element 1 ignores every key: torch gives attention 0 through SDPA, NaN with weights."""
    ours, theirs = _modules(batch_first=True)
    query, key = _randn(2, 5, E), _randn(2, 7, E)
    key_padding_mask = torch.zeros(2, 7, dtype=torch.bool)
    key_padding_mask[1] = True
    actual, _ = ours(query.float(), key.float(), key.float(), key_padding_mask, need_weights=need_weights)
    expected, _ = theirs(query, key, key, key_padding_mask, need_weights=need_weights)
    assert_close(actual[0], expected[0], name="unmasked batch element")
    if need_weights:
        assert actual[1].isnan().all() and expected[1].isnan().all()
    else:
        assert_close(actual[1], expected[1], name="fully masked batch element")
        assert_close(actual[1], theirs.out_proj.bias.expand(5, E), name="fully masked = out_proj.bias")


@pytest.mark.parametrize("need_weights", [False, True])
def test_dropout_in_training(need_weights):
    ours, _ = _modules(dropout=0.5, batch_first=True)
    query, key = torch.randn(2, 17, E), torch.randn(2, 13, E)
    ours.eval()
    out_eval, weights_eval = ours(query, key, key, need_weights=need_weights, average_attn_weights=False)
    ours.train()
    torch.manual_seed(1)
    out, weights = ours(query, key, key, need_weights=need_weights, average_attn_weights=False)
    torch.manual_seed(1)
    again, _ = ours(query, key, key, need_weights=need_weights, average_attn_weights=False)
    assert out.shape == out_eval.shape == (2, 17, E)
    assert torch.isfinite(out).all()
    assert (out - out_eval).abs().max() > 1e-2
    torch.testing.assert_close(out, again, rtol=0, atol=0)  # the seed comes from torch's generator
    out.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in ours.parameters())
    if need_weights:  # torch returns the dropped-out weights: 0 or the eval weight / (1 - p)
        kept = weights != 0
        assert 0.3 < kept.double().mean() < 0.7
        assert_close(weights[kept], 2 * weights_eval[kept], name="kept weights")


@pytest.mark.parametrize("module_kwargs", [dict(), dict(kdim=12, vdim=20), dict(bias=False),
                                           dict(add_bias_kv=True, add_zero_attn=True)],
                         ids=["packed", "kdim_vdim", "no_bias", "bias_kv"])
def test_state_dict_round_trip(module_kwargs):
    theirs = torch.nn.MultiheadAttention(E, H, **module_kwargs)
    buffer = io.BytesIO()
    torch.save(theirs.state_dict(), buffer)
    buffer.seek(0)
    ours = MultiheadAttention(E, H, **module_kwargs)
    ours.load_state_dict(torch.load(buffer))  # strict: the same keys and shapes
    assert list(ours.state_dict()) == list(theirs.state_dict())
    for name, value in theirs.state_dict().items():
        torch.testing.assert_close(ours.state_dict()[name], value, rtol=0, atol=0)
    torch.nn.MultiheadAttention(E, H, **module_kwargs).load_state_dict(ours.state_dict())


def _error_cases():
    L, S, N = 5, 7, 2
    q, k = torch.randn(L, N, E), torch.randn(S, N, E)
    return {
        "query_4d": dict(query=q[None], key=k[None], value=k[None]),
        "key_rank": dict(query=q, key=k[:, 0], value=k),
        "kpm_rank": dict(query=q, key=k, value=k, key_padding_mask=torch.zeros(S, dtype=torch.bool)),
        "kpm_shape": dict(query=q, key=k, value=k, key_padding_mask=torch.zeros(N, S + 1, dtype=torch.bool)),
        "mask_rank": dict(query=q, key=k, value=k, attn_mask=torch.zeros(1, 1, L, S, dtype=torch.bool)),
        "mask2d_shape": dict(query=q, key=k, value=k, attn_mask=torch.zeros(S, L, dtype=torch.bool)),
        "mask3d_shape": dict(query=q, key=k, value=k, attn_mask=torch.zeros(H, L, S, dtype=torch.bool)),
        "unbatched_mask3d_shape": dict(query=q[:, 0], key=k[:, 0], value=k[:, 0],
                                       attn_mask=torch.zeros(2 * H, L, S, dtype=torch.bool)),
        "int_mask": dict(query=q, key=k, value=k, attn_mask=torch.zeros(L, S, dtype=torch.int64)),
        "causal_without_mask": dict(query=q, key=k, value=k, is_causal=True),
        "embed_dim": dict(query=q[..., :-1], key=k[..., :-1], value=k[..., :-1]),
        "key_value_shape": dict(query=q, key=k, value=k[:-1]),
    }


@pytest.mark.parametrize("case", list(_error_cases()))
def test_malformed_inputs_raise_torchs_errors(case):
    kwargs = _error_cases()[case]
    theirs = torch.nn.MultiheadAttention(E, H)
    ours = MultiheadAttention(E, H)
    with pytest.raises(Exception) as torch_error:
        theirs(**kwargs, need_weights=False)
    with pytest.raises(torch_error.type):
        ours(**kwargs, need_weights=False)
