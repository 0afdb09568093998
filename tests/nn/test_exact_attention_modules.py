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
from fusednn.cases.exact_attention import strided_nested_tensor
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
    "unbatched_bias_kv_zero_attn_masks": (dict(add_bias_kv=True, add_zero_attn=True, kdim=12, vdim=20), 5, 13, None,
                                          dict(key_padding_mask="float", attn_mask="float3")),
    "causal_hint_mask3d": (dict(batch_first=True), 17, 17, 2, dict(attn_mask="causal3", is_causal=True)),
    "weights_unbatched_avg": (dict(add_zero_attn=True), 9, 13, None, dict(attn_mask="bool2", need_weights=True)),
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
        "causal3": lambda: torch.ones(n * H, L, S, dtype=torch.bool).triu(1),
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
        "key_features": dict(query=q, key=torch.randn(S, N, E + 1), value=torch.randn(S, N, E + 1)),
    }


def _kdim_error_cases():
    """Mistakes with kdim = 12, vdim = 20 (separate projection weights)."""
    L, S, N = 5, 7, 2
    q = torch.randn(L, N, E)
    return {
        "kdim": dict(query=q, key=torch.randn(S, N, 13), value=torch.randn(S, N, 20)),
        "vdim": dict(query=q, key=torch.randn(S, N, 12), value=torch.randn(S, N, 12)),
        "self_attention_with_kdim": dict(query=q, key=q, value=q),
        "key_value_lengths": dict(query=q, key=torch.randn(S, N, 12), value=torch.randn(S + 1, N, 20)),
    }


@pytest.mark.parametrize("case", list(_kdim_error_cases()))
def test_malformed_inputs_with_kdim_vdim_raise_torchs_errors(case):
    kwargs = _kdim_error_cases()[case]
    theirs = torch.nn.MultiheadAttention(E, H, kdim=12, vdim=20)
    ours = MultiheadAttention(E, H, kdim=12, vdim=20)
    with pytest.raises(Exception) as torch_error:
        theirs(**kwargs, need_weights=False)
    with pytest.raises(torch_error.type):
        ours(**kwargs, need_weights=False)


@pytest.mark.parametrize("case", list(_error_cases()))
def test_malformed_inputs_raise_torchs_errors(case):
    kwargs = _error_cases()[case]
    theirs = torch.nn.MultiheadAttention(E, H)
    ours = MultiheadAttention(E, H)
    with pytest.raises(Exception) as torch_error:
        theirs(**kwargs, need_weights=False)
    with pytest.raises(torch_error.type):
        ours(**kwargs, need_weights=False)


# --------------------------------------------------------------------------- nested tensors


def _nested_batch(*lengths, features=E):
    return strided_nested_tensor([torch.randn(T, features) for T in lengths])


@pytest.mark.parametrize("need_weights", [False, True])
@pytest.mark.parametrize("grad_mode", ["no_grad", "inference_mode"])
def test_nested_input_on_torchs_fast_path(grad_mode, need_weights):
    """torch runs nested self-attention in inference (its fast path); so does ours, with torch's result."""
    ours, theirs = _modules(batch_first=True, dtype=torch.float32)
    theirs = theirs.float()
    ours.eval()
    theirs.eval()
    x = _nested_batch(5, 9)
    with getattr(torch, grad_mode)():
        actual, actual_weights = ours(x, x, x, need_weights=need_weights)
        expected, expected_weights = theirs(x, x, x, need_weights=need_weights)
    assert actual.is_nested
    assert [tuple(t.shape) for t in actual.unbind()] == [(5, E), (9, E)]
    for i, (a, e) in enumerate(zip(actual.unbind(), expected.unbind())):
        assert_close(a, e, name=f"sequence {i}")
    assert (actual_weights is None) == (expected_weights is None) == (not need_weights)
    if need_weights:
        assert_close(actual_weights, expected_weights, name="weights")


# situation: (module kwargs, forward kwargs, grad mode, train)
_OUTSIDE_FAST_PATH = {
    "training": (dict(batch_first=True), {}, "no_grad", True),
    "grad_enabled": (dict(batch_first=True), {}, "enable_grad", False),
    "sequence_first": (dict(), {}, "no_grad", False),
    "key_padding_mask": (dict(batch_first=True), dict(key_padding_mask=torch.zeros(2, 9, dtype=torch.bool)),
                         "no_grad", False),
    "odd_heads": (dict(batch_first=True, num_heads=3), {}, "no_grad", False),
    "add_bias_kv": (dict(batch_first=True, add_bias_kv=True), {}, "no_grad", False),
}


@pytest.mark.parametrize("situation", list(_OUTSIDE_FAST_PATH))
def test_nested_input_outside_fast_path_raises_as_torch(situation):
    module_kwargs, forward_kwargs, grad_mode, train = _OUTSIDE_FAST_PATH[situation]
    module_kwargs = dict(module_kwargs)
    num_heads = module_kwargs.pop("num_heads", H)
    ours, theirs = _modules(E, num_heads, dtype=torch.float32, **module_kwargs)
    theirs = theirs.float()
    ours.train(train)
    theirs.train(train)
    x = _nested_batch(5, 9)
    with getattr(torch, grad_mode)():
        with pytest.raises(AssertionError, match="NestedTensor outside of its fast path"):
            theirs(x, x, x, **forward_kwargs)
        with pytest.raises(AssertionError, match="NestedTensor outside of its fast path"):
            ours(x, x, x, **forward_kwargs)


# --------------------------------------------------------------------------- parameter dtypes


def _with_float16_in_proj_bias(**kwargs):
    ours, theirs = _modules(dtype=torch.float64, **kwargs)
    bias = torch.randn(3 * E, dtype=torch.float16)
    for module in (ours, theirs):
        module.in_proj_bias = torch.nn.Parameter(bias.clone())
    return ours, theirs


@pytest.mark.parametrize("module_kwargs, share", [(dict(), "qkv"), (dict(), None), (dict(kdim=12, vdim=20), None)],
                         ids=["self", "cross", "cross_kdim_vdim"])
def test_float16_in_proj_bias_of_a_float64_module_as_torch(module_kwargs, share):
    """torch (contiguous batch-first inputs) adds the float16 bias with type promotion: float64 results."""
    ours, theirs = _with_float16_in_proj_bias(batch_first=True, **module_kwargs)
    query = _randn(2, 7, E)
    key, value = _randn(2, 9, module_kwargs.get("kdim", E)), _randn(2, 9, module_kwargs.get("vdim", E))
    inputs = dict(query=query, key=key, value=value, key_padding_mask=None, attn_mask=None)
    grad_names = ["query"] if share == "qkv" else ["query", "key", "value"]
    actual = _run(ours, torch.float64, inputs, grad_names, 0, share, need_weights=True)
    expected = _run(theirs, torch.float64, inputs, grad_names, 0, share, need_weights=True)
    for name in ["output", "weights"] + [f"grad {n}" for n in grad_names]:
        assert actual[name].dtype == expected[name].dtype == torch.float64, name
        assert_close(actual[name], expected[name], name=name)
    assert actual["grad in_proj_bias"].dtype == expected["grad in_proj_bias"].dtype == torch.float16


def test_float16_in_proj_bias_in_layouts_torch_refuses():
    """torch accepts the float16 bias only where its projection input is non-contiguous (its
    F.linear then multiplies and adds the bias with promotion; the fused addmm wants one dtype):
    contiguous batch-first inputs, which it transposes. Ours takes every layout and gives what
    torch gives on contiguous batch-first inputs."""
    ours, _ = _with_float16_in_proj_bias()
    theirs = torch.nn.MultiheadAttention(E, H, batch_first=True, dtype=torch.float64)
    theirs.in_proj_bias = torch.nn.Parameter(ours.in_proj_bias.detach().clone())
    theirs.load_state_dict(ours.state_dict())
    query = _randn(7, 2, E)
    with pytest.raises(RuntimeError):
        torch.nn.MultiheadAttention.forward(ours, query, query, query)  # torch's forward on the same module
    batch_first = query.transpose(0, 1).contiguous()
    expected, _ = theirs(batch_first, batch_first, batch_first, need_weights=False)
    for name, x in (("sequence-first", query), ("unbatched", query[:, 0])):
        actual, _ = ours(x, x, x, need_weights=False)
        assert actual.dtype == torch.float64
        assert_close(actual, expected.transpose(0, 1) if x.dim() == 3 else expected[0], name=name)


# --------------------------------------------------------------------------- TorchScript


# name: (module kwargs, L, S, N, forward kwargs)
_SCRIPT_CASES = {
    "self_masks": (dict(), 7, 7, 2, dict(key_padding_mask="bool", attn_mask="float2")),
    "batch_first_masks_weights": (dict(batch_first=True), 7, 9, 2,
                                  dict(key_padding_mask="float", attn_mask="float3", need_weights=True,
                                       average_attn_weights=False)),
    "kdim_vdim_bool_masks": (dict(kdim=12, vdim=20, batch_first=True), 7, 9, 2,
                             dict(key_padding_mask="bool", attn_mask="bool3")),
    "bias_kv_zero_attn_unbatched": (dict(add_bias_kv=True, add_zero_attn=True), 7, 9, None,
                                    dict(key_padding_mask="bool", attn_mask="bool2", need_weights=True)),
    "causal_hint": (dict(batch_first=True), 7, 7, 2, dict(attn_mask="causal", is_causal=True)),
}


@pytest.mark.filterwarnings("ignore:`torch.jit.:DeprecationWarning")
@pytest.mark.parametrize("case", list(_SCRIPT_CASES))
def test_torchscript_matches_eager_and_torchs_scripted_module(case):
    module_kwargs, L, S, N, options = _SCRIPT_CASES[case]
    options = dict(options)
    ours, theirs = _modules(dtype=torch.float64, **module_kwargs)
    scripted, theirs_scripted = torch.jit.script(ours), torch.jit.script(theirs)
    buffer = io.BytesIO()
    torch.jit.save(scripted, buffer)
    buffer.seek(0)
    loaded = torch.jit.load(buffer)
    batch_first = module_kwargs.get("batch_first", False)

    def seq(T, D):
        return _randn(T, D) if N is None else _randn(*((N, T, D) if batch_first else (T, N, D)))

    query = seq(L, E)
    key = query if L == S and "kdim" not in module_kwargs else seq(S, module_kwargs.get("kdim", E))
    value = key if "vdim" not in module_kwargs else seq(S, module_kwargs["vdim"])
    options.setdefault("need_weights", False)
    kwargs = dict(key_padding_mask=_make_mask(options.pop("key_padding_mask", None), L, S, N),
                  attn_mask=_make_mask(options.pop("attn_mask", None), L, S, N), **options)
    results = {}
    for name, module in (("eager", ours), ("scripted", scripted), ("loaded", loaded), ("torch", theirs_scripted)):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # mixed mask types: torch's deprecation warning
            results[name] = module(query, key, value, **kwargs)
    expected_out, expected_weights = results["torch"]
    for name in ("eager", "scripted", "loaded"):
        out, weights = results[name]
        assert_close(out, expected_out, name=f"{name}: output")
        assert (weights is None) == (expected_weights is None)
        if weights is not None:
            assert_close(weights, expected_weights, name=f"{name}: weights")


@pytest.mark.filterwarnings("ignore:`torch.jit.:DeprecationWarning")
def test_torchscript_refuses_nested_tensors():
    """Said as such (scripted code raises every exception as torch.jit.Error, a RuntimeError)."""
    ours, _ = _modules(batch_first=True, dtype=torch.float32)
    scripted = torch.jit.script(ours.eval())
    x = _nested_batch(5, 9)
    with torch.no_grad(), pytest.raises(torch.jit.Error, match="TorchScript-compiled module does not take nested"):
        scripted(x, x, x)


# --------------------------------------------------------------------------- torch's own module tests


def test_3d_attn_mask_equals_per_sample_2d_masks():
    """A [N * H, L, S] mask repeating one [L, S] mask per batch element gives what each element
    gets alone with that mask (as in torch's test_multihead_attn_3d_attn_mask)."""
    ours, _ = _modules(dtype=torch.float64)
    N, L, S = 4, 5, 7
    query, key = _randn(L, N, E), _randn(S, N, E)
    masks = _float_mask(N, L, S)
    batched, _ = ours(query, key, key, attn_mask=masks.repeat_interleave(H, dim=0))
    for i in range(N):
        alone, _ = ours(query[:, i:i + 1], key[:, i:i + 1], key[:, i:i + 1], attn_mask=masks[i])
        assert_close(batched[:, i:i + 1], alone, name=f"batch element {i}")


# (query, key, value, forward kwargs, torch's message); query, key and value are distinct tensors
# (self-attention in inference takes torch's fast path, which raises RuntimeError: ours are both)
def _invalid_shape_cases():
    batched, unbatched = [torch.randn(4, 4, E) for _ in range(3)], [torch.randn(4, E) for _ in range(3)]
    mask = torch.tensor([False, False, True, True])
    return {
        "3d_query_2d_key": ((batched[0], unbatched[1], batched[2]), {},
                            "expected `key` and `value` to be 3-D but found 2-D and 3-D tensors respectively"),
        "3d_query_2d_value": ((*batched[:2], unbatched[2]), {},
                              "expected `key` and `value` to be 3-D but found 3-D and 2-D tensors respectively"),
        "3d_query_1d_kpm": (batched, dict(key_padding_mask=mask),
                            "expected `key_padding_mask` to be `None` or 2-D but found 1-D tensor instead"),
        "3d_query_1d_mask": (batched, dict(attn_mask=mask),
                             "expected `attn_mask` to be `None`, 2-D or 3-D but found 1-D tensor instead"),
        "2d_query_3d_key": ((unbatched[0], batched[1], unbatched[2]), {},
                            "expected `key` and `value` to be 2-D but found 3-D and 2-D tensors respectively"),
        "2d_query_2d_kpm": (unbatched, dict(key_padding_mask=mask[None].expand(2, 4)),
                            "expected `key_padding_mask` to be `None` or 1-D but found 2-D tensor instead"),
        "2d_query_wrong_3d_mask": (unbatched, dict(attn_mask=torch.ones(H + 1, 4, 4, dtype=torch.bool)),
                                   r"Expected `attn_mask` shape to be \(4, 4, 4\)"),
    }


@pytest.mark.parametrize("inference", [False, True], ids=["train", "eval_no_grad"])
@pytest.mark.parametrize("case", list(_invalid_shape_cases()))
def test_invalid_shapes_raise_torchs_assertions(case, inference):
    (query, key, value), kwargs, message = _invalid_shape_cases()[case]
    for module in (torch.nn.MultiheadAttention(E, H, batch_first=True), MultiheadAttention(E, H, batch_first=True)):
        module.train(not inference)
        with torch.set_grad_enabled(not inference), pytest.raises(AssertionError, match=message):
            module(query, key, value, **kwargs)
