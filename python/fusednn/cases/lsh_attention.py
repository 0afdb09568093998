"""Samples, bad inputs and benchmark shapes of ``lsh_attention``.

Every sample passes its rotations, so the op and its reference hash alike. The tokens are
drawn so that each one's bucket wins by a clear margin in every round (``clearly_hashed``):
the float32/float16 copies of a sample then sort their tokens as the float64 truth does, and a
bucket flipped by rounding cannot fail a comparison. The shapes are small (Triton's
interpreter runs one program at a time) but cross the interpreter's 16-slot tiles inside
chunks, and cover partial last chunks, chunks of one slot (queries attending to themselves
alone), chunks longer than the sequence (full attention), causal masks and 1 to 3 rounds.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fusednn.registry import BadInput, BenchShapes, Sample, Tolerance, View, mark

F64 = torch.float64

# GPU: bfloat16, 16384 tokens (B = 16384 // T) of 8 heads of 64, Reformer's chunks of 64 and
# n_buckets = T // 64 (two chunks per bucket on average); CPU: the reference at small sizes.
BENCH_SHAPES = BenchShapes(
    gpu=tuple({"T": t, "D": 64, "n_hashes": r, "causal": c} for t in (4096, 16384) for r in (1, 4)
              for c in (False, True)),
    gpu_quick=({"T": 4096, "D": 64, "n_hashes": 4, "causal": False},
               {"T": 16384, "D": 64, "n_hashes": 4, "causal": True}),
    cpu=tuple({"T": 512, "D": 32, "n_hashes": r, "causal": c} for r in (1, 2) for c in (False, True)),
    cpu_quick=({"T": 256, "D": 32, "n_hashes": 2, "causal": False},),
)

# The smallest gap between a token's best and second-best rotated coordinate (x R with
# |x| = 1 and standard normal rotations): bfloat16 rounding moves x R by a few 1e-3 at these
# head dims, float16 rounding by less.
HASH_MARGIN = 0.15


def rotations_for(n_hashes: int, head_dim: int, n_buckets: int) -> torch.Tensor:
    return torch.randn(n_hashes, head_dim, n_buckets // 2, dtype=F64)


def clearly_hashed(B: int, H: int, T: int, D: int, rotations: torch.Tensor, margin: float = HASH_MARGIN,
                   ) -> torch.Tensor:
    """qk [B, H, T, D] float64, random, with every token's bucket ahead of the runner-up by at
    least ``margin`` in every round (tokens too close to a bucket border are redrawn)."""
    qk = torch.randn(B, H, T, D, dtype=F64)
    for _ in range(200):
        projected = torch.einsum("bhtd,rdk->bhrtk", F.normalize(qk, dim=-1), rotations)
        top2 = torch.cat([projected, -projected], dim=-1).topk(2, dim=-1).values
        close = ((top2[..., 0] - top2[..., 1]) < margin).any(dim=2)  # [B, H, T]: in some round
        if not close.any():
            return qk
        qk[close] = torch.randn(int(close.sum()), D, dtype=F64)
    raise RuntimeError("clearly_hashed: tokens kept landing near a bucket border")


def lsh_inputs(B: int, H: int, T: int, D: int, Dv: int, n_buckets: int, n_hashes: int, grad: bool = True):
    """(qk, v, rotations), qk clearly hashed; qk and v require grad when ``grad``."""
    rotations = rotations_for(n_hashes, D, n_buckets)
    qk = clearly_hashed(B, H, T, D, rotations).requires_grad_(grad)
    return qk, torch.randn(B, H, T, Dv, dtype=F64, requires_grad=grad), rotations


# name: ((B, H, T, D, Dv), options). Triton's interpreter spends ~20 ms of CPU per program, and
# every pass launches (chunks x blocks per chunk) x B * H * n_hashes programs: the samples keep
# that product small.
CASES = {
    "one-round": ((1, 1, 37, 32, 16), dict(n_buckets=4, n_hashes=1, chunk_size=8)),
    "two-rounds": ((1, 1, 37, 32, 32), dict(n_buckets=4, n_hashes=2, chunk_size=10)),
    "causal-one-round": ((1, 1, 40, 32, 32), dict(n_buckets=4, n_hashes=1, chunk_size=16, causal=True)),
    "causal-three-rounds": ((1, 1, 37, 32, 32), dict(n_buckets=6, n_hashes=3, chunk_size=10, causal=True)),
    # chunks of 20 slots: two query tiles per chunk, key tiles across the chunk border
    "chunk-20": ((1, 1, 45, 32, 32), dict(n_buckets=4, n_hashes=2, chunk_size=20)),
    # one chunk: every round is full attention with the self-mask
    "chunk-over-T": ((1, 1, 33, 32, 16), dict(n_buckets=4, n_hashes=2, chunk_size=64)),
    "head-dims-24-40": ((1, 1, 30, 24, 40), dict(n_buckets=4, n_hashes=2, chunk_size=12)),
    # tiny (float32 only, see _sample)
    "two-buckets-scale": ((1, 1, 20, 16, 16), dict(n_buckets=2, n_hashes=2, chunk_size=8, scale=0.5)),
    # chunks of one slot: slot 0 attends to itself alone, every other slot to the one before
    # (with causal: only when that one comes earlier in the sequence, else to itself)
    "chunk-1-causal": ((1, 1, 8, 16, 16), dict(n_buckets=4, n_hashes=2, chunk_size=1, causal=True)),
    "head-dims-8-1": ((1, 1, 30, 8, 1), dict(n_buckets=4, n_hashes=2, chunk_size=12, causal=True)),
    "many-buckets": ((1, 1, 24, 16, 16), dict(n_buckets=16, n_hashes=2, chunk_size=8)),
    "T1": ((1, 1, 1, 16, 16), dict(n_buckets=4, n_hashes=2, chunk_size=4)),
    "tiny": ((1, 1, 6, 4, 4), dict(n_buckets=2, n_hashes=2, chunk_size=2)),
}
# One token, attending to itself in both rounds: the rounds' lse are equal, so their weights
# are 1/2 whatever qk is, and qk's gradient (through lse and the weights) is 0 in exact
# arithmetic; what the kernels give is the rounding of cancelling terms.
_TOLERANCES = {"T1": {"grad qk": Tolerance("qk's gradient is 0 in exact arithmetic, rounding noise here", atol=1e-6)}}
# The 2x rule of float16/bfloat16 compares maxima of error distributions: noisy below about a
# thousand elements per output.
_LOW_PRECISION_ELEMENTS = 1000


def _sample(name, shape, options, **sample_options) -> Sample:
    B, H, T, D, Dv = shape
    qk, v, rotations = lsh_inputs(*shape, options["n_buckets"], options["n_hashes"])
    low_precision = B * H * T * min(D, Dv) >= _LOW_PRECISION_ELEMENTS
    return Sample(name, (qk, v), dict(options, rotations=rotations), tolerances=_TOLERANCES.get(name, {}),
                  low_precision=low_precision, **sample_options)


def lsh_attention_samples() -> list[Sample]:
    samples = [_sample(name, shape, options) for name, (shape, options) in CASES.items()]
    options = dict(n_buckets=4, n_hashes=2, chunk_size=8)
    # the [B, T, H, D] layout of a projection, viewed as [B, H, T, D]
    qk, v, rotations = lsh_inputs(1, 2, 21, 16, 16, 4, 2)
    samples.append(Sample("bthd-transposed", tuple(View(t.detach().transpose(1, 2).contiguous().requires_grad_(),
                                                        lambda x: x.transpose(1, 2)) for t in (qk, v)),
                          dict(options, rotations=rotations, causal=True), low_precision=False))
    # every other element of the head dims (copied by the op)
    qk, v, rotations = lsh_inputs(1, 1, 21, 16, 16, 4, 2)
    spread = [torch.stack([t.detach(), torch.randn_like(t)], dim=-1).flatten(-2).requires_grad_() for t in (qk, v)]
    samples.append(Sample("strided-head-dims", tuple(View(t, lambda x: x[..., ::2]) for t in spread),
                          dict(options, rotations=rotations), low_precision=False))
    for name, (B, T) in {"zero-length": (1, 0), "batch-0": (0, 9)}.items():
        qk, v, rotations = lsh_inputs(B, 2, T, 16, 8, 4, 2)
        samples.append(Sample(name, (qk, v), dict(options, rotations=rotations)))
    # only one input needs a gradient
    for which in ("qk", "v"):
        qk, v, rotations = lsh_inputs(1, 1, 21, 16, 16, 4, 2, grad=False)
        (qk if which == "qk" else v).requires_grad_()
        samples.append(Sample(f"only-{which}-grad", (qk, v), dict(options, rotations=rotations, causal=True),
                              low_precision=False))
    return mark(samples, opcheck={"tiny"}, gradcheck={"tiny"})


def _bad(cases) -> list[BadInput]:
    return [BadInput(name, args, kwargs, error, r"fusednn\.ops\.lsh_attention: " + match)
            for name, args, kwargs, error, match in cases]


def lsh_attention_bad_inputs() -> list[BadInput]:
    QK, V = torch.randn(2, 2, 9, 8), torch.randn(2, 2, 9, 6)
    R = torch.randn(2, 8, 2)
    options = dict(n_buckets=4, n_hashes=2)
    return _bad([
        ("qk-rank", (QK[0], V), options, ValueError, r"qk must be 4-D \[B, H, T, D\]; got shape \(2, 9, 8\)"),
        ("qk-int", (QK.long(), V), options, TypeError, r"qk must be .*float32.*; got int64"),
        ("qk-not-a-tensor", ([1.0], V), options, TypeError, r"qk must be a tensor \[B, H, T, D\]; got a list"),
        ("v-dtype", (QK, V.half()), options, TypeError, r"v must be of qk's dtype float32; got float16"),
        ("v-device", (QK, V.to("meta")), options, ValueError, r"v must be on qk's device cpu; got meta"),
        ("v-length", (QK, V[:, :, :5]), options, ValueError,
         r"v must be \[B, H, T, Dv\] with qk's \(B, H, T\) = \(2, 2, 9\); got shape \(2, 2, 5, 6\)"),
        ("v-heads", (QK, V[:, :1]), options, ValueError, r"v must be \[B, H, T, Dv\] with qk's \(B, H, T\)"),
        ("head-dim-0", (QK[..., :0], V), dict(n_buckets=4), ValueError,
         r"qk must be a tensor with a head dim D between 1 and 256; got shape \(2, 2, 9, 0\)"),
        ("head-dim-300", (torch.randn(1, 1, 3, 300), torch.randn(1, 1, 3, 4)), dict(n_buckets=4), ValueError,
         r"qk must be a tensor with a head dim D between 1 and 256"),
        ("n-buckets-odd", (QK, V), dict(n_buckets=5), ValueError, r"n_buckets must be an even int >= 2 .*; got 5"),
        ("n-buckets-0", (QK, V), dict(n_buckets=0), ValueError, r"n_buckets must be an int >= 2; got 0"),
        ("n-buckets-float", (QK, V), dict(n_buckets=4.0), TypeError, r"n_buckets must be an int; got 4\.0"),
        ("n-hashes-0", (QK, V), dict(n_buckets=4, n_hashes=0), ValueError, r"n_hashes must be an int >= 1; got 0"),
        ("chunk-size-0", (QK, V), dict(n_buckets=4, chunk_size=0), ValueError,
         r"chunk_size must be an int >= 1; got 0"),
        ("causal-int", (QK, V), dict(n_buckets=4, causal=1), TypeError, r"causal must be a bool; got 1"),
        ("rotations-shape", (QK, V), dict(options, rotations=torch.randn(2, 8, 3)), ValueError,
         r"rotations must be \[n_hashes, D, n_buckets // 2\] = \(2, 8, 2\); got shape \(2, 8, 3\)"),
        ("rotations-rounds", (QK, V), dict(options, rotations=R[:1]), ValueError,
         r"rotations must be \[n_hashes, D, n_buckets // 2\] = \(2, 8, 2\); got shape \(1, 8, 2\)"),
        ("rotations-dtype", (QK, V), dict(options, rotations=R.double()), TypeError,
         r"rotations must be float32 \(qk's dtype or float32\); got float64"),
        ("rotations-float16", (QK.half(), V.half()), dict(options, rotations=R.double()), TypeError,
         r"rotations must be float16 or float32 \(qk's dtype or float32\); got float64"),
        ("rotations-int", (QK, V), dict(options, rotations=R.long()), TypeError,
         r"rotations must be float32 \(qk's dtype or float32\); got int64"),
        ("rotations-device", (QK, V), dict(options, rotations=R.to("meta")), ValueError,
         r"rotations must be on qk's device cpu; got meta"),
        ("rotations-list", (QK, V), dict(options, rotations=[1.0]), TypeError,
         r"rotations must be a tensor \[n_hashes, D, n_buckets // 2\]; got a list"),
        ("scale-str", (QK, V), dict(options, scale="0.5"), TypeError, r"scale must be a float; got '0\.5'"),
        ("scale-nan", (QK, V), dict(options, scale=float("nan")), ValueError, r"scale must be a finite float; got nan"),
    ])
