"""Samples, bad inputs and benchmark shapes of ``linear_attention``.

The shapes are small (Triton's interpreter runs one program at a time, one chunk of 16
positions after another) but their lengths (1, 17, 63, 130) end chunks at every kind of
offset, and the head dims (16, 24, 40, 64) fill the padded tiles partly and fully. The
normalised samples use elu+1 (or relu of mostly positive inputs) so that the denominators
stay away from 0; identity and relu run without normalisation.
"""

from __future__ import annotations

import torch

from fusednn.registry import BadInput, BenchShapes, Sample, View, mark

F64 = torch.float64

# bf16, H = 16 heads, 32768 tokens (B = 32768 // T), with or without a decay;
# bench/linear_attention.py adds exact causal attention as a provider, so the crossover
# length shows.
BENCH_SHAPES = BenchShapes(
    gpu=tuple({"T": t, "D": d} for d in (64, 128) for t in (1024, 2048, 4096, 8192, 16384, 32768))
    + tuple({"T": t, "D": 128, "decay": True} for t in (4096, 16384)),
    gpu_quick=({"T": 2048, "D": 64}, {"T": 16384, "D": 128}, {"T": 16384, "D": 128, "decay": True}),
    cpu=({"T": 256, "D": 32}, {"T": 512, "D": 32}),
    cpu_quick=({"T": 128, "D": 16},),
)

# Tiny samples run in float32/float64 only (see Sample.low_precision).
_TINY = dict(low_precision=False)
# The samples of the float16/bfloat16 grid leave the decay's gradient out: it is a [H] tensor,
# on which the 2x rule's maximum is noise (tests/ops/test_linear_attention.py bounds its
# low-precision error against the float64 truth instead).
_LOW_PRECISION_NO_GRAD = ("decay",)


def _randn(*shape, grad=True, shift=0.0):
    return (torch.randn(shape, dtype=F64) + shift).requires_grad_(grad)


def _la_sample(name, B, H, T, Dk, Dv=None, *, feature_map="elu+1", causal=True, normalize=True, decay=False,
               state=False, final=False, layout="BHTD", cu_seqlens=None, no_grad=(), shift=0.0, **options) -> Sample:
    """A linear_attention Sample. ``layout`` "BTHD": q, k, v are [B, T, H, D] tensors
    transposed. ``decay``: a [H] decay in [0.6, 1). ``state``: an initial state (z_0 > 0).
    ``cu_seqlens``: offsets of a packed batch (B = 1, T their total). ``no_grad`` names the
    inputs that do not require grad ("q", "k", "v", "decay", "state"; the decay never in the
    float16/bfloat16 grid). ``shift`` moves q and k
    (relu with normalize: mostly positive features)."""
    Dv = Dk if Dv is None else Dv
    if options.get("low_precision", True):
        no_grad = tuple(no_grad) + _LOW_PRECISION_NO_GRAD
    grad = {n: n not in no_grad for n in ("q", "k", "v", "decay", "state")}
    tensors = []
    for n, d in (("q", Dk), ("k", Dk), ("v", Dv)):
        s = shift if n != "v" else 0.0
        if layout == "BTHD":
            tensors.append(View(_randn(B, T, H, d, grad=grad[n], shift=s), lambda t: t.transpose(1, 2)))
        else:
            tensors.append(_randn(B, H, T, d, grad=grad[n], shift=s))
    kwargs = dict(feature_map=feature_map, causal=causal, normalize=normalize, output_final_state=final)
    if decay:
        kwargs["decay"] = (0.6 + 0.4 * torch.rand(H, dtype=F64) * 0.95).requires_grad_(grad["decay"])
    N = B if cu_seqlens is None else len(cu_seqlens) - 1
    if state:
        s0 = _randn(N, H, Dk, Dv, grad=grad["state"])
        if normalize:
            z0 = (torch.rand(N, H, Dk, dtype=F64) + 0.5).requires_grad_(grad["state"])
            kwargs["initial_state"] = (s0, z0)
        else:
            kwargs["initial_state"] = (s0,)
    if cu_seqlens is not None:
        kwargs["cu_seqlens"] = torch.tensor(cu_seqlens, dtype=torch.int32)
    return Sample(name, tuple(tensors), kwargs, **options)


def linear_attention_samples() -> list[Sample]:
    samples = [
        # the float16/bfloat16 grid too (about a thousand elements per output or more)
        _la_sample("B2-H2-T63-D16-causal", 2, 2, 63, 16),
        _la_sample("B1-H2-T130-D32-decay-states", 1, 2, 130, 32, decay=True, state=True, final=True),
        _la_sample("B2-H2-T63-D16-noncausal-states", 2, 2, 63, 16, causal=False, state=True, final=True),
        _la_sample("B1-H2-T63-D64-identity-plain-final", 1, 2, 63, 64, feature_map="identity", normalize=False,
                   decay=True, final=True),
        _la_sample("B2-H1-T130-Dk40-Dv24-relu-plain", 2, 1, 130, 40, 24, feature_map="relu", normalize=False,
                   decay=True),
        _la_sample("B2-H2-T63-D16-BTHD-decay", 2, 2, 63, 16, decay=True, layout="BTHD"),
        _la_sample("varlen-decay-states", 1, 2, 63, 16, decay=True, state=True, final=True,
                   cu_seqlens=[0, 17, 17, 50, 63]),
        # odd sizes, options, the decay's gradient, only some inputs needing a gradient
        _la_sample("B1-H2-T130-D16-decay-grad-states", 1, 2, 130, 16, decay=True, state=True, final=True, **_TINY),
        _la_sample("B1-H2-T17-D16-relu-normalize", 1, 2, 17, 16, feature_map="relu", shift=1.0, **_TINY),
        _la_sample("B1-H1-T17-Dk16-Dv40-noncausal-identity", 1, 1, 17, 16, 40, feature_map="identity",
                   causal=False, normalize=False, state=True, final=True, **_TINY),
        _la_sample("B1-H2-T17-D16-noncausal-decay-ignored", 1, 2, 17, 16, causal=False, decay=True, **_TINY),
        _la_sample("B1-H1-T1-D16-states", 1, 1, 1, 16, decay=True, state=True, final=True, **_TINY),
        _la_sample("B1-H1-T0-states", 1, 1, 0, 16, decay=True, state=True, final=True, **_TINY),
        _la_sample("varlen-plain", 1, 1, 17, 16, feature_map="relu", normalize=False, final=True,
                   cu_seqlens=[0, 1, 9, 17], **_TINY),
        _la_sample("q-grad-only", 1, 1, 17, 16, decay=True, state=True, final=True,
                   no_grad=("k", "v", "decay", "state"), **_TINY),
        _la_sample("kv-state-grads-only", 1, 1, 17, 16, decay=True, state=True, final=True, no_grad=("q", "decay"),
                   **_TINY),
        _la_sample("decay-grad-only", 1, 2, 17, 16, decay=True, state=True, final=True,
                   no_grad=("q", "k", "v", "state"), **_TINY),
        _la_sample("gradcheck", 1, 1, 5, 3, 2, decay=True, state=True, final=True, **_TINY),
    ]
    return mark(samples, opcheck={"varlen-plain", "q-grad-only", "B1-H2-T17-D16-noncausal-decay-ignored"},
                gradcheck={"gradcheck"})


# --------------------------------------------------------------------------- bad inputs


def linear_attention_bad_inputs() -> list[BadInput]:
    q, k, v = torch.randn(2, 3, 5, 4), torch.randn(2, 3, 5, 4), torch.randn(2, 3, 5, 6)
    s0, z0 = torch.randn(2, 3, 4, 6), torch.rand(2, 3, 4)
    packed = [torch.randn(1, 3, 5, 4), torch.randn(1, 3, 5, 4), torch.randn(1, 3, 5, 6)]
    cases = [
        ("q-3d", (q[0], k, v), {}, ValueError, r"q must be 4-D \[B, H, T, Dk\]; got shape \(3, 5, 4\)"),
        ("v-5d", (q, k, v[None]), {}, ValueError, r"v must be 4-D \[B, H, T, Dv\]; got shape"),
        ("q-int", (q.long(), k, v), {}, TypeError, r"q must be float16, bfloat16, float32 or float64; got int64"),
        ("k-dtype", (q, k.double(), v), {}, TypeError, r"k must be of q's dtype float32; got float64"),
        ("v-device", (q, k, v.to("meta")), {}, ValueError, r"v must be on q's device cpu; got meta"),
        ("k-shape", (q, k[:, :, :4], v), {}, ValueError, r"k must be \[B, H, T, Dk\] = \(2, 3, 5, 4\) \(q's shape\)"),
        ("v-length", (q, k, v[:, :, :4]), {}, ValueError, r"v must be \[B, H, T, Dv\] with \[B, H, T\] = \(2, 3, 5\)"),
        ("head-dim-too-large", (torch.randn(1, 1, 2, 129),) * 2 + (torch.randn(1, 1, 2, 4),), {}, ValueError,
         r"q must be \[B, H, T, D\] with a head dim between 1 and 128; got shape \(1, 1, 2, 129\)"),
        ("feature-map-unknown", (q, k, v), dict(feature_map="softmax"), ValueError,
         r"feature_map must be one of 'elu\+1', 'relu', 'identity'; got 'softmax'"),
        ("feature-map-not-str", (q, k, v), dict(feature_map=None), TypeError, r"feature_map must be one of"),
        ("causal-int", (q, k, v), dict(causal=1), TypeError, r"causal must be a bool; got 1"),
        ("eps-negative", (q, k, v), dict(eps=-1.0), ValueError, r"eps must be a finite float >= 0.0; got -1.0"),
        ("scale-str", (q, k, v), dict(scale="1"), TypeError, r"scale must be a float; got '1'"),
        ("algorithm-unknown", (q, k, v), dict(algorithm="parallel"), ValueError,
         r"algorithm must be one of 'auto', 'chunk', 'recurrent'; got 'parallel'"),
        ("decay-zero", (q, k, v), dict(decay=torch.tensor([0.5, 0.0, 0.9])), ValueError,
         r"decay must be values in \(0, 1\]; got values from 0 to 0.9"),
        ("decay-above-one", (q, k, v), dict(decay=torch.tensor([0.5, 1.5, 0.9])), ValueError,
         r"decay must be values in \(0, 1\]; got values from 0.5 to 1.5"),
        ("decay-shape", (q, k, v), dict(decay=torch.full((2,), 0.9)), ValueError,
         r"decay must be \[H\] = \(3,\); got shape \(2,\)"),
        ("decay-int", (q, k, v), dict(decay=torch.ones(3, dtype=torch.int64)), TypeError,
         r"decay must be float16, bfloat16, float32 or float64; got int64"),
        ("decay-device", (q, k, v), dict(decay=torch.full((3,), 0.9, device="meta")), ValueError,
         r"decay must be on q's device cpu; got meta"),
        ("state-shape", (q, k, v), dict(initial_state=(s0[:, :, :, :5], z0)), ValueError,
         r"initial_state S_0 must be \[N, H, Dk, Dv\] = \(2, 3, 4, 6\); got shape \(2, 3, 4, 5\)"),
        ("state-z-shape", (q, k, v), dict(initial_state=(s0, z0[:1])), ValueError,
         r"initial_state z_0 must be \[N, H, Dk\] = \(2, 3, 4\); got shape \(1, 3, 4\)"),
        ("state-z-missing", (q, k, v), dict(initial_state=(s0,)), ValueError,
         r"initial_state must be \(S_0, z_0\) with normalize=True .*; got no z_0"),
        ("state-bare-with-normalize", (q, k, v), dict(initial_state=s0), ValueError,
         r"initial_state must be \(S_0, z_0\) with normalize=True"),
        ("state-z-without-normalize", (q, k, v), dict(initial_state=(s0, z0), normalize=False), ValueError,
         r"initial_state must be \(S_0,\), \(S_0, None\) or S_0 with normalize=False .*; got a z_0"),
        ("state-list-of-3", (q, k, v), dict(initial_state=[s0, z0, z0]), TypeError,
         r"initial_state must be None, a tensor S_0, or a tuple \(S_0, z_0\) / \(S_0,\); got a list of 3 items"),
        ("state-device", (q, k, v), dict(initial_state=(s0.to("meta"), z0)), ValueError,
         r"initial_state S_0 must be on q's device cpu; got meta"),
        ("state-int", (q, k, v), dict(initial_state=(s0.int(), z0)), TypeError,
         r"initial_state S_0 must be float16, bfloat16, float32 or float64; got int32"),
        ("cu-seqlens-batch-2", (q, k, v), dict(cu_seqlens=torch.tensor([0, 5], dtype=torch.int32)), ValueError,
         r"q must be \[1, H, total, Dk\] \(a packed batch\) with cu_seqlens; got shape \(2, 3, 5, 4\)"),
        ("cu-seqlens-end", tuple(packed), dict(cu_seqlens=torch.tensor([0, 2, 4], dtype=torch.int32)), ValueError,
         r"cu_seqlens must be offsets starting at 0, non-decreasing, ending at the packed length 5; got \[0, 2, 4\]"),
        ("cu-seqlens-decreasing", tuple(packed), dict(cu_seqlens=torch.tensor([0, 3, 2, 5])), ValueError,
         r"cu_seqlens must be offsets starting at 0, non-decreasing"),
        ("cu-seqlens-float", tuple(packed), dict(cu_seqlens=torch.tensor([0.0, 5.0])), TypeError,
         r"cu_seqlens must be a 1-D int32/int64 tensor \[N \+ 1\]"),
        ("cu-seqlens-state-count", tuple(packed),
         dict(cu_seqlens=torch.tensor([0, 2, 5]), initial_state=(torch.randn(1, 3, 4, 6), torch.rand(1, 3, 4))),
         ValueError, r"initial_state S_0 must be \[N, H, Dk, Dv\] = \(2, 3, 4, 6\); got shape \(1, 3, 4, 6\)"),
    ]
    return [BadInput(f"linear_attention-{name}", args, kwargs, error, r"fusednn\.ops\.linear_attention: " + match)
            for name, args, kwargs, error, match in cases]
