"""Samples, bad inputs and benchmark shapes of ``attention``, ``attention_varlen`` and
``scaled_dot_product_attention``.

The shapes are small (Triton's interpreter runs one program at a time on the CPU) but cross
the interpreter's tile borders (query tiles of 32 and 16, key tiles of 16 and 32) in both
directions, with odd lengths and head dims.
"""

from __future__ import annotations

import warnings

import torch
from torch.nn.attention.bias import causal_lower_right, causal_upper_left

from fusednn.registry import BadInput, BenchShapes, Sample, Tolerance, View, mark

F64 = torch.float64

# bf16, model dim 2048 (H = 2048 // D), 16384 tokens (B = 16384 // T).
BENCH_SHAPES = BenchShapes(
    gpu=tuple({"T": t, "D": d, "causal": c} for d in (64, 128) for t in (512, 1024, 2048, 4096, 8192, 16384)
              for c in (False, True))
    + tuple({"T": t, "D": 128, "causal": True, "window": 1024} for t in (4096, 16384)),
    gpu_quick=({"T": 2048, "D": 128, "causal": True}, {"T": 8192, "D": 128, "causal": False},
               {"T": 16384, "D": 128, "causal": True, "window": 1024}),
)

# Queries that see a single key: the softmax over one score is constant, so the score
# gradient dS = P (dP - rowsum(dO * O)) is 0 in exact arithmetic, and so are dq and dk;
# what the kernel gives is the rounding of the cancelling O(1) terms.
_ONE_KEY = Tolerance("each query sees one key: dq and dk are 0 in exact arithmetic, rounding noise here", atol=1e-5)
_ONE_KEY_GRADS = {"grad q": _ONE_KEY, "grad k": _ONE_KEY}


def _t(*shape, grad=True):
    return torch.randn(shape, dtype=F64).requires_grad_(grad)


def qkv(B, Hq, Hkv, Tq, Tk, D, Dv, grad=True):
    return _t(B, Hq, Tq, D, grad=grad), _t(B, Hkv, Tk, D, grad=grad), _t(B, Hkv, Tk, Dv, grad=grad)


# name: ((B, Hq, Hkv, Tq, Tk, D, Dv), options)
DENSE_CASES = {
    "full": ((2, 2, 2, 33, 33, 32, 32), {}),
    "causal": ((2, 2, 2, 33, 33, 32, 32), dict(causal=True)),
    "batch1-one-head": ((1, 1, 1, 20, 20, 16, 16), {}),
    "tq<tk": ((1, 2, 2, 17, 40, 16, 16), {}),
    "tq>tk": ((1, 2, 2, 40, 17, 16, 16), {}),
    "causal-tq<tk": ((1, 2, 2, 17, 40, 16, 16), dict(causal=True)),
    "causal-tq>tk": ((1, 2, 2, 40, 17, 16, 16), dict(causal=True)),
    "causal-bottom-right-tq<tk": ((1, 2, 2, 17, 40, 16, 16), dict(causal=True, alignment="bottom_right")),
    # the first Tq - Tk queries see no key: output 0, lse -inf, zero gradients
    "causal-bottom-right-tq>tk": ((1, 2, 2, 40, 17, 16, 16), dict(causal=True, alignment="bottom_right")),
    "window-8-0-causal": ((1, 2, 2, 40, 40, 16, 16), dict(causal=True, window=(8, 0))),
    "window-5-3": ((1, 2, 2, 40, 40, 16, 16), dict(window=(5, 3))),
    "window-None-4": ((1, 2, 2, 40, 40, 16, 16), dict(window=(None, 4))),
    "window-3-None": ((1, 2, 2, 40, 40, 16, 16), dict(window=(3, None))),
    "window-minus1-4": ((1, 2, 2, 40, 40, 16, 16), dict(window=(-1, 4))),
    "window-0-0": ((1, 2, 2, 40, 40, 16, 16), dict(window=(0, 0))),
    "window-bottom-right-tq<tk": ((1, 2, 2, 17, 40, 16, 16), dict(window=(4, 2), alignment="bottom_right")),
    "window-bottom-right-tq>tk": ((1, 2, 2, 40, 17, 16, 16), dict(window=(6, 0), alignment="bottom_right")),
    # queries past Tk + 2 see no key
    "window-past-the-keys": ((1, 2, 2, 40, 17, 16, 16), dict(window=(2, 2))),
    "gqa-causal": ((2, 4, 2, 33, 33, 16, 16), dict(causal=True)),
    "mqa": ((1, 4, 1, 19, 26, 16, 16), {}),
    "mqa-window-bottom-right": ((1, 4, 1, 19, 26, 16, 16), dict(window=(5, 1), alignment="bottom_right")),
    # scale 0.5 on D=16: scores with standard deviation 2, where tanh(s / 2) is far from linear
    "softcap": ((1, 2, 2, 33, 33, 16, 16), dict(softcap=2.0, scale=0.5)),
    "softcap-gqa-causal": ((1, 4, 2, 33, 33, 16, 16), dict(softcap=3.0, scale=0.7, causal=True)),
    "scale": ((1, 2, 2, 20, 20, 16, 16), dict(scale=0.3)),
    # decoding (one query over a cache) and a single key
    "one-query": ((1, 2, 1, 1, 97, 16, 16), dict(causal=True, alignment="bottom_right")),
    "one-key": ((1, 2, 1, 97, 1, 16, 16), dict(causal=True, alignment="bottom_right")),
    "one-query-one-key": ((1, 2, 1, 1, 1, 16, 16), dict(causal=True, alignment="bottom_right")),
    # head dims (Dv != D included)
    "D40": ((1, 2, 2, 20, 23, 40, 40), dict(causal=True)),
    "D64": ((1, 2, 2, 20, 23, 64, 64), dict(causal=True)),
    "D80": ((1, 2, 2, 20, 23, 80, 80), dict(causal=True)),
    "D40-Dv24": ((1, 2, 2, 20, 23, 40, 24), dict(causal=True)),
    "D16-Dv80": ((1, 2, 2, 20, 23, 16, 80), dict(causal=True)),
    "D8-Dv1": ((1, 2, 2, 20, 23, 8, 1), dict(causal=True)),
    # odd lengths
    "T1": ((1, 1, 1, 1, 1, 16, 16), {}),
    "T17-causal": ((1, 1, 1, 17, 17, 16, 16), dict(causal=True)),
    "T97": ((1, 1, 1, 97, 97, 16, 16), {}),
    "T97-causal": ((1, 1, 1, 97, 97, 16, 16), dict(causal=True)),
    # both backward paths (dq by float32 atomics, dq in its own pass)
    "deterministic-gqa-causal": ((2, 4, 2, 33, 33, 16, 16), dict(causal=True, deterministic=True)),
    "deterministic-window-bottom-right-tq>tk": ((1, 2, 2, 40, 17, 16, 16),
                                                dict(window=(6, 0), alignment="bottom_right", deterministic=True)),
}
_SLOW_CASES = {
    "D128": ((1, 2, 2, 20, 23, 128, 128), dict(causal=True)),
    "D256": ((1, 2, 2, 20, 23, 256, 256), dict(causal=True)),
    "T130-causal": ((1, 1, 1, 130, 130, 16, 16), dict(causal=True)),
}
_TOLERANCES = {name: _ONE_KEY_GRADS for name in ("window-0-0", "one-key", "one-query-one-key", "T1")}


# (B, Hq, Tq, Tk) -> bias shape
BIAS_SHAPES = {
    "tq-tk": lambda B, H, Tq, Tk: (Tq, Tk),
    "b-1-1-tk": lambda B, H, Tq, Tk: (B, 1, 1, Tk),
    "1-h-tq-tk": lambda B, H, Tq, Tk: (1, H, Tq, Tk),
    "b-h-tq-tk": lambda B, H, Tq, Tk: (B, H, Tq, Tk),
    "1-h-1-tk": lambda B, H, Tq, Tk: (1, H, 1, Tk),
}


def bias_of(kind: str, shape) -> torch.Tensor:
    """A bool mask (True = may attend; about a quarter hidden) or a float bias (with grad for "float-grad")."""
    if kind == "bool":
        return torch.rand(shape) < 0.75
    return torch.randn(shape, dtype=F64).requires_grad_(kind == "float-grad")


def hiding_some_rows(B, H, Tq, Tk) -> torch.Tensor:
    """Bool [B, H, Tq, Tk], True = may attend: row 3 hidden in every head, row 20 in head 1 only."""
    mask = torch.rand(B, H, Tq, Tk) < 0.7
    mask[:, :, 3] = False
    mask[:, 1, 20] = False
    return mask


def _dense(name, shape, options=None, bias=None, **sample_options) -> Sample:
    q, k, v = qkv(*shape)
    return Sample(name, (q, k, v), dict(options or {}, attn_bias=bias, return_lse=True),
                  tolerances=_TOLERANCES.get(name, {}), **sample_options)


def attention_samples() -> list[Sample]:
    samples = [_dense(name, shape, options) for name, (shape, options) in DENSE_CASES.items()]
    samples += [_dense(name, shape, options, slow=True) for name, (shape, options) in _SLOW_CASES.items()]
    B, Hq, Hkv, Tq, Tk = 2, 4, 2, 19, 24
    for shape_name, bias_shape in BIAS_SHAPES.items():
        for kind in ("bool", "float", "float-grad"):
            samples.append(_dense(f"bias-{kind}-{shape_name}", (B, Hq, Hkv, Tq, Tk, 16, 16), {},
                                  bias_of(kind, bias_shape(B, Hq, Tq, Tk))))
    for name, kind, options in (
        ("bias-bool-causal-bottom-right", "bool", dict(causal=True, alignment="bottom_right")),
        ("bias-float-grad-causal-bottom-right", "float-grad", dict(causal=True, alignment="bottom_right")),
        ("bias-float-grad-window", "float-grad", dict(window=(4, 3))),
        ("bias-float-grad-softcap", "float-grad", dict(softcap=2.0, scale=0.5)),
        ("bias-bool-softcap-window", "bool", dict(softcap=2.0, window=(None, 2))),
        ("bias-float-grad-softcap-deterministic", "float-grad", dict(softcap=2.0, scale=0.5, deterministic=True)),
    ):
        samples.append(_dense(name, (1, 2, 1, 21, 30, 16, 16), options, bias_of(kind, (1, 2, 21, 30))))
    # whole rows hidden: output 0, lse -inf, zero gradients, no NaN; by a bool mask and by a
    # float bias of -inf (torch's float masks carry -inf)
    samples.append(_dense("bool-mask-hiding-rows", (2, 2, 2, 33, 20, 16, 16), {}, hiding_some_rows(2, 2, 33, 20)))
    float_bias = torch.randn(1, 2, 33, 20, dtype=F64).masked_fill(~hiding_some_rows(1, 2, 33, 20), float("-inf"))
    samples.append(_dense("float-bias-minus-inf-rows", (1, 2, 2, 33, 20, 16, 16), {}, float_bias.requires_grad_()))
    # non-contiguous q, k, v (and a transposed float bias with grad)
    B, H, T, D = 2, 2, 21, 16
    layouts = {
        # the layout of a [B, T, H * D] projection
        "bthd-transposed": [View(_t(B, T, H, D), lambda x: x.transpose(1, 2)) for _ in range(3)],
        # k and v halves of one [B, H, T, 2D] tensor; q a time slice
        "packed-kv-slices": [View(_t(B, H, T + 5, D), lambda x: x[:, :, 3:3 + T])] + [
            View(_t(B, H, T, 2 * D), lambda x: x[..., :D]), View(_t(B, H, T, 2 * D), lambda x: x[..., D:])],
        # every other element of the head dim (copied by the op)
        "strided-head-dim": [View(_t(B, H, T, 2 * D), lambda x: x[..., ::2]) for _ in range(3)],
        # one k/v head expanded over H (head stride 0)
        "expanded-kv-heads": [_t(B, H, T, D)] + [View(_t(B, 1, T, D), lambda x: x.expand(B, H, T, D))
                                                for _ in range(2)],
    }
    for name, (q, k, v) in layouts.items():
        bias = View(_t(T, T), lambda x: x.t())
        samples.append(Sample(f"non-contiguous-{name}", (q, k, v), dict(causal=True, attn_bias=bias,
                                                                        return_lse=True)))
    # zero sizes
    for name, (Bz, Tq, Tk) in {"batch-0": (0, 9, 9), "tq-0": (2, 0, 9), "tk-0": (2, 9, 0), "both-0": (2, 0, 0)}.items():
        samples.append(_dense(f"zero-{name}", (Bz, 2, 1, Tq, Tk, 16, 8), dict(causal=True),
                              _t(Bz, 2, Tq, Tk)))
    # only some inputs need a gradient
    for which in ("q", "v", "attn_bias", "k+attn_bias"):
        q, k, v = qkv(1, 2, 1, 17, 20, 16, 16, grad=False)
        bias = _t(1, 2, 17, 20, grad=False)
        for name, t in zip(("q", "k", "v", "attn_bias"), (q, k, v, bias)):
            t.requires_grad_(name in which.split("+"))
        samples.append(Sample(f"only-{which}-grad", (q, k, v), dict(attn_bias=bias, causal=True,
                                                                    alignment="bottom_right", return_lse=True)))
    return mark(samples, opcheck={"causal", "softcap-gqa-causal", "bias-float-grad-window", "bias-bool-softcap-window",
                                  "deterministic-gqa-causal", "T1"}, gradcheck={"T17-causal"})


def cu_seqlens(lengths, dtype=torch.int32) -> torch.Tensor:
    return torch.tensor([0] + list(lengths)).cumsum(0).to(dtype)


# name: (q lengths, k lengths, Hq, Hkv, options)
VARLEN_CASES = {
    "equal-lengths": ([17, 0, 1, 40], [17, 0, 1, 40], 2, 2, {}),
    "equal-lengths-causal": ([17, 0, 1, 40], [17, 0, 1, 40], 2, 2, dict(causal=True)),
    # a sequence with queries but no key (output 0) and one with keys but no query (dk = dv = 0)
    "tq!=tk": ([17, 0, 3, 1, 40], [30, 4, 0, 1, 23], 2, 2, {}),
    "tq!=tk-causal": ([17, 0, 3, 1, 40], [30, 4, 0, 1, 23], 2, 2, dict(causal=True)),
    "tq!=tk-causal-bottom-right": ([17, 0, 3, 1, 40], [30, 4, 0, 1, 23], 2, 2,
                                   dict(causal=True, alignment="bottom_right")),
    "window-bottom-right": ([17, 5, 40], [30, 5, 23], 2, 2, dict(window=(4, 2), alignment="bottom_right")),
    "gqa-causal-int64-offsets": ([17, 1, 40], [20, 1, 33], 4, 2, dict(causal=True)),
    "mqa-softcap-deterministic": ([17, 40], [17, 33], 4, 1, dict(softcap=2.0, scale=0.5, deterministic=True)),
}


def attention_varlen_samples() -> list[Sample]:
    samples = []
    for name, (lengths_q, lengths_k, Hq, Hkv, options) in VARLEN_CASES.items():
        q, k, v = _t(sum(lengths_q), Hq, 16), _t(sum(lengths_k), Hkv, 16), _t(sum(lengths_k), Hkv, 24)
        offsets = torch.int64 if "int64" in name else torch.int32
        # max_seqlen above the longest sequence in one case
        max_q = max(lengths_q) + (7 if name == "tq!=tk" else 0)
        samples.append(Sample(name, (q, k, v, cu_seqlens(lengths_q, offsets), cu_seqlens(lengths_k, offsets), max_q,
                                     max(lengths_k)), dict(options, return_lse=True)))
    return mark(samples, opcheck={"tq!=tk-causal-bottom-right", "mqa-softcap-deterministic"},
                gradcheck={"equal-lengths-causal"})


# query, key, value shapes (L = 13 queries, S = 19 keys, E = 16, Ev = 8)
SDPA_SHAPES = {
    "2d": ((13, 16), (19, 16), (19, 8)),
    "3d": ((3, 13, 16), (3, 19, 16), (3, 19, 8)),
    "4d": ((2, 3, 13, 16), (2, 3, 19, 16), (2, 3, 19, 8)),
    "5d": ((2, 2, 2, 13, 16), (2, 2, 2, 19, 16), (2, 2, 2, 19, 8)),
    "broadcast-batch": ((2, 3, 13, 16), (1, 3, 19, 16), (3, 19, 8)),
    "broadcast-heads": ((2, 3, 13, 16), (2, 1, 19, 16), (2, 1, 19, 8)),
    "query-3d-key-4d": ((3, 13, 16), (2, 3, 19, 16), (2, 3, 19, 8)),
    "swapped": ((2, 3, 19, 16), (2, 3, 13, 16), (2, 3, 13, 8)),
    "gqa": ((2, 4, 13, 16), (2, 2, 19, 16), (2, 2, 19, 8)),
    "gqa-5d": ((2, 2, 4, 13, 16), (2, 2, 1, 19, 16), (2, 2, 1, 19, 8)),
}

# name: (shape name, kwargs, mask shape and kind)
SDPA_CASES = {
    **{shape: (shape, {}, None) for shape in list(SDPA_SHAPES)[:7]},
    "causal-L<S": ("4d", dict(is_causal=True), None),
    "causal-L>S": ("swapped", dict(is_causal=True), None),
    "scale": ("3d", dict(scale=0.3), None),
    "gqa": ("gqa", dict(enable_gqa=True), None),
    "gqa-causal-5d": ("gqa-5d", dict(enable_gqa=True, is_causal=True), None),
    "bool-mask-L-S": ("4d", {}, ((13, 19), "bool")),
    "bool-mask-broadcast-3d": ("3d", {}, ((3, 1, 19), "bool")),
    "float-mask-B-1-L-S": ("4d", {}, ((2, 1, 13, 19), "float")),
    "float-mask-with-grad": ("5d", {}, ((2, 1, 13, 19), "float-grad")),
    "float-mask-minus-inf": ("broadcast-heads", {}, ((13, 19), "float-inf")),
    # attn_mask and is_causal together: the mask inside the top-left causal band
    "causal-bool-mask-L<S": ("4d", dict(is_causal=True), ((13, 19), "bool")),
    "causal-float-mask-with-grad-L>S": ("swapped", dict(is_causal=True), ((2, 1, 19, 13), "float-grad")),
    "causal-float-mask-minus-inf-5d": ("5d", dict(is_causal=True), ((13, 19), "float-inf")),
    # rows 0 (by the band and the mask together) and 3 (by the mask) see no key: output 0
    "causal-bool-mask-hiding-rows-gqa": ("gqa", dict(enable_gqa=True, is_causal=True), ((2, 4, 13, 19), "bool-rows")),
}


def _sdpa_mask(spec):
    if spec is None:
        return None
    shape, kind = spec
    if kind == "bool":  # the diagonal kept, so every row sees a key, with is_causal too
        return (torch.rand(shape) < 0.7) | torch.eye(shape[-2], shape[-1], dtype=torch.bool)
    if kind == "bool-rows":  # key 0 hidden from query 0 (which is_causal leaves only key 0) and every key from 3
        mask = (torch.rand(shape) < 0.7) | torch.eye(shape[-2], shape[-1], dtype=torch.bool)
        mask[..., 0, 0] = False
        mask[..., 3, :] = False
        return mask
    mask = torch.randn(shape, dtype=F64)
    if kind == "float-inf":
        mask = mask.masked_fill((torch.rand(shape) < 0.3).fill_diagonal_(False), float("-inf"))
    return mask.requires_grad_(kind == "float-grad")


def sdpa_samples() -> list[Sample]:
    samples = []
    for name, (shape_name, kwargs, mask) in SDPA_CASES.items():
        query, key, value = (_t(*shape) for shape in SDPA_SHAPES[shape_name])
        samples.append(Sample(name, (query, key, value), dict(kwargs, attn_mask=_sdpa_mask(mask))))
    return mark(samples, opcheck={"float-mask-with-grad", "causal-float-mask-with-grad-L>S"}, gradcheck={"3d"})


# --------------------------------------------------------------------------- bad inputs


def _bad(op: str, cases) -> list[BadInput]:
    return [BadInput(name, args, kwargs, error, rf"fusednn\.ops\.{op}: " + match)
            for name, args, kwargs, error, match in cases]


def attention_bad_inputs() -> list[BadInput]:
    Q, K, V = torch.randn(2, 4, 5, 8), torch.randn(2, 2, 6, 8), torch.randn(2, 2, 6, 8)
    return _bad("attention", [
        ("q-rank", (Q[0], K, V), {}, ValueError, r"q must be 4-D \[B, H, T, D\]; got shape \(4, 5, 8\)"),
        ("k-rank", (Q, K[0], V), {}, ValueError, r"k must be 4-D \[B, H, T, D\]; got shape \(2, 6, 8\)"),
        ("heads", (Q[:, :3], K, V), {}, ValueError, r"k must be .* a number of heads that divides q's 3 .*; got 2"),
        ("kv-heads", (Q, K, V[:, :1]), {}, ValueError, r"v must be .* k's number of heads 2; got 1 heads"),
        ("kv-lengths", (Q, K, V[:, :, :5]), {}, ValueError, r"v must be .* k's length 6; got length 5"),
        ("batch", (Q, K[:1], V[:1]), {}, ValueError, r"k must be .* q's batch size 2; got batch size 1"),
        ("head-dim", (Q, K[..., :4], V), {}, ValueError, r"k must be .* q's head dim 8; got head dim 4"),
        ("head-dim-257", (torch.randn(1, 1, 3, 257), torch.randn(1, 1, 3, 257), torch.randn(1, 1, 3, 8)), {},
         ValueError, r"q must be .* head dim between 1 and 256; got head dim 257"),
        ("v-head-dim-300", (Q, K, torch.randn(2, 2, 6, 300)), {}, ValueError, r"v must be .*between 1 and 256.*300"),
        ("dtype-mix", (Q, K.half(), V), {}, TypeError, r"k must be of q's dtype float32; got float16"),
        ("int64", (Q.long(), K.long(), V.long()), {}, TypeError, r"q must be float16, .*; got int64"),
        ("device-mix", (Q, K.to("meta"), V), {}, ValueError, r"k must be on q's device cpu; got meta"),
        ("numpy", (Q.numpy(), K, V), {}, TypeError, r"q must be a tensor \[B, H, T, D\]; got a numpy.ndarray"),
        ("bias-shape", (Q, K, V), dict(attn_bias=torch.randn(3, 6)), ValueError,
         r"attn_bias must be broadcastable to \[B, Hq, Tq, Tk\] = \[2, 4, 5, 6\]; got shape \(3, 6\)"),
        ("bias-rank-5", (Q, K, V), dict(attn_bias=torch.randn(1, 2, 4, 5, 6)), ValueError,
         r"attn_bias must be broadcastable .*; got shape \(1, 2, 4, 5, 6\)"),
        ("bias-int", (Q, K, V), dict(attn_bias=torch.ones(5, 6, dtype=torch.int32)), TypeError,
         r"attn_bias must be a bool mask or a float bias; got int32"),
        ("bias-device", (Q, K, V), dict(attn_bias=torch.randn(5, 6, device="meta")), ValueError,
         r"attn_bias must be on the inputs' device cpu; got meta"),
        ("window-one-side", (Q, K, V), dict(window=(1,)), TypeError, r"window must be None or a pair"),
        ("window-left-negative", (Q, K, V), dict(window=(-2, 0)), ValueError, r"window left must be an int >= 0.*-2"),
        ("window-right-float", (Q, K, V), dict(window=(0, 1.5)), TypeError, r"window right must be an int.*; got 1.5"),
        ("causal-window-right", (Q, K, V), dict(causal=True, window=(2, 3)), ValueError,
         r"window must be \(left, 0\) or \(left, None\) with causal=True.*\(2, 3\)"),
        ("causal-int", (Q, K, V), dict(causal=1), TypeError, r"causal must be a bool; got 1"),
        ("dropout-1.5", (Q, K, V), dict(dropout_p=1.5), ValueError,
         r"dropout_p must be a finite float in \[0.0, 1.0\]; "
                                                                    r"got 1.5"),
        ("dropout-negative", (Q, K, V), dict(dropout_p=-0.1), ValueError, r"dropout_p must be .*; got -0.1"),
        ("softcap-negative", (Q, K, V), dict(softcap=-1.0), ValueError,
         r"softcap must be a finite float >= 0.0; got -1.0"),
        ("scale-inf", (Q, K, V), dict(scale=float("inf")), ValueError, r"scale must be a finite float; got inf"),
        ("scale-string", (Q, K, V), dict(scale="big"), TypeError, r"scale must be a float; got 'big'"),
        ("alignment", (Q, K, V), dict(alignment="center"), ValueError,
         r"alignment must be one of 'top_left', 'bottom_right'; got 'center'"),
        ("deterministic-none", (Q, K, V), dict(deterministic=None), TypeError,
         r"deterministic must be a bool; got None"),
        ("return-lse-int", (Q, K, V), dict(return_lse=1), TypeError, r"return_lse must be a bool; got 1"),
    ])


def attention_varlen_bad_inputs() -> list[BadInput]:
    Q, K = torch.randn(2, 4, 5, 8), torch.randn(2, 2, 6, 8)
    PQ, PK = torch.randn(7, 4, 8), torch.randn(9, 2, 8)
    CU_Q, CU_K = cu_seqlens([3, 4]), cu_seqlens([4, 5])
    return _bad("attention_varlen", [
        ("q-rank", (Q, K, K, CU_Q, CU_K, 4, 5), {}, ValueError, r"q must be 3-D \[total_tokens, H, D\]"),
        ("cu-float", (PQ, PK, PK, CU_Q.float(), CU_K, 4, 5), {}, TypeError,
         r"cu_seqlens_q must be a 1-D int32/int64 tensor \[num_seqs \+ 1\]; got a tensor .* float32"),
        ("cu-2d", (PQ, PK, PK, CU_Q[None], CU_K, 4, 5), {}, TypeError, r"cu_seqlens_q must be a 1-D .*\(1, 3\)"),
        ("cu-device", (PQ, PK, PK, CU_Q, CU_K.to("meta"), 4, 5), {}, ValueError,
         r"cu_seqlens_k must be on q's device cpu; got meta"),
        ("cu-end", (PQ, PK, PK, torch.tensor([0, 3, 6], dtype=torch.int32), CU_K, 4, 5), {}, ValueError,
         r"cu_seqlens_q must be offsets .*ending at the packed length 7; got \[0, 3, 6\]"),
        ("cu-start", (PQ, PK, PK, torch.tensor([1, 3, 7], dtype=torch.int32), CU_K, 4, 5), {}, ValueError,
         r"cu_seqlens_q must be offsets starting at 0.*; got \[1, 3, 7\]"),
        ("cu-decreasing", (PQ, PK, PK, CU_Q, torch.tensor([0, 6, 4, 9], dtype=torch.int32), 4, 6), {}, ValueError,
         r"cu_seqlens_k must be offsets .*non-decreasing.*; got \[0, 6, 4, 9\]"),
        ("max-too-small", (PQ, PK, PK, CU_Q, CU_K, 3, 5), {}, ValueError,
         r"max_seqlen_q must be at least the longest sequence in cu_seqlens_q \(4\); got 3"),
        ("max-negative", (PQ, PK, PK, CU_Q, CU_K, 4, -1), {}, ValueError, r"max_seqlen_k must be an int >= 0; got -1"),
        ("max-float", (PQ, PK, PK, CU_Q, CU_K, 4.0, 5), {}, TypeError, r"max_seqlen_q must be an int; got 4.0"),
        ("sequence-count", (PQ, PK, PK, CU_Q, torch.tensor([0, 9], dtype=torch.int32), 4, 9), {}, ValueError,
         r"cu_seqlens_k must be offsets of as many sequences as cu_seqlens_q \(2\); got 1 sequences"),
        ("deterministic-string", (PQ, PK, PK, CU_Q, CU_K, 4, 5), dict(deterministic="yes"), TypeError,
         r"deterministic must be a bool; got 'yes'"),
        ("deterministic-int", (PQ, PK, PK, CU_Q, CU_K, 4, 5), dict(deterministic=1), TypeError,
         r"deterministic must be a bool; got 1"),
    ])


class TensorWithOwnTorchFunction(torch.Tensor):
    """A tensor subclass with a ``__torch_function__`` of its own (it only forwards): what
    the ops refuse as a mask, since such a subclass may stand for other values than its
    storage holds (as ``torch.nn.attention.bias.CausalBias`` does)."""

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        return super().__torch_function__(func, types, args, kwargs or {})


def strided_nested_tensor(tensors: list[torch.Tensor]) -> torch.Tensor:
    """torch.nested.nested_tensor in its strided layout (a torch.Tensor with is_nested), without
    torch's warning that the layout is a prototype."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The PyTorch API of nested tensors is in prototype stage")
        return torch.nested.nested_tensor(tensors)


def sdpa_bad_inputs() -> list[BadInput]:
    Q, K, V = torch.randn(2, 4, 5, 8), torch.randn(2, 2, 6, 8), torch.randn(2, 2, 6, 8)
    K4 = torch.randn(2, 4, 6, 8)
    return _bad("scaled_dot_product_attention", [
        ("causal-bias-with-is-causal", (Q, Q, Q), dict(attn_mask=causal_upper_left(5, 5), is_causal=True),
         ValueError, r"is_causal must be False with a CausalBias attn_mask .*; got True"),
        ("causal-bias-lengths", (Q, K4, K4), dict(attn_mask=causal_lower_right(5, 7)), ValueError,
         r"attn_mask must be a CausalBias of query's and key's lengths \(L, S\) = \(5, 6\); "
         r"got a CausalBias of \(seq_len_q, seq_len_kv\) = \(5, 7\)"),
        ("mask-subclass", (Q, Q, Q), dict(attn_mask=torch.zeros(5, 5).as_subclass(TensorWithOwnTorchFunction)),
         TypeError,
         r"attn_mask must be a plain tensor \(bool mask or float bias\), a torch.nn.attention.bias.CausalBias or "
         r"None; got a fusednn.cases.exact_attention.TensorWithOwnTorchFunction"),
        ("mask-nested", (Q, Q, Q), dict(attn_mask=strided_nested_tensor([torch.zeros(5, 5)] * 2)), TypeError,
         r"attn_mask must be a plain tensor .*; got a nested tensor"),
        ("mask-jagged", (Q, Q, Q), dict(attn_mask=torch.nested.nested_tensor([torch.zeros(5, 5)] * 2,
                                                                             layout=torch.jagged)), TypeError,
         r"attn_mask must be a plain tensor .*; got a torch\.nested\..*NestedTensor"),
        ("mask-shape", (Q, Q, Q), dict(attn_mask=torch.ones(4, 5)), ValueError,
         r"attn_mask must be broadcastable to \[B, Hq, Tq, Tk\] = \[2, 4, 5, 5\]; got shape \(4, 5\)"),
        ("mask-int", (Q, Q, Q), dict(attn_mask=torch.ones(5, 5, dtype=torch.int64)), TypeError,
         r"attn_mask must be a bool mask or a float bias; got int64"),
        ("no-broadcast", (Q, K, V), {}, ValueError, r"key must be \[\.\.\., S, E\] with leading dims that broadcast"),
        ("gqa-heads", (Q[:, :3], K, V), dict(enable_gqa=True), ValueError,
         r"key must be .* a number of heads that divides query's 3 \(GQA/MQA\); got 2 heads"),
        ("one-dim", (torch.randn(8), torch.randn(8), torch.randn(8)), {}, ValueError,
         r"query must be \[\.\.\., T, E\] with at least 2 dims; got shape \(8,\)"),
        ("dtype-mix", (Q, Q.half(), Q), {}, TypeError, r"key must be of query's dtype float32; got float16"),
        ("value-head-dim", (Q, Q, torch.randn(2, 4, 5, 300)), {}, ValueError,
         r"value must be .* head dim between 1 and 256; got head dim 300"),
        ("is-causal-int", (Q, Q, Q), dict(is_causal=1), TypeError, r"is_causal must be a bool; got 1"),
    ])
