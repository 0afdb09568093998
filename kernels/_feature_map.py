"""The feature maps φ of linear attention as Triton device functions, shared by its chunked
and recurrent kernels.

A feature map travels to a kernel as the constexpr code ``FEATURE_MAP_CODES[name]``.
``feature_map(x, PHI)`` is φ(x), ``feature_map_derivative(x, PHI)`` dφ/dx at x (the backward
multiplies the gradient of φ(x) by it). Both compute in the dtype of x: callers pass float32.
"""

import triton
import triton.language as tl

# name -> constexpr code; the Python side validates names against these keys.
FEATURE_MAP_CODES = {"elu+1": 0, "relu": 1, "identity": 2}

_ELU_PLUS_ONE = tl.constexpr(0)
_RELU = tl.constexpr(1)


@triton.jit
def feature_map(x, PHI: tl.constexpr):
    """elu(x) + 1 (= exp(x) for x <= 0, x + 1 above), max(x, 0), or x."""
    if PHI == _ELU_PLUS_ONE:
        return tl.where(x > 0.0, x + 1.0, tl.exp(tl.minimum(x, 0.0)))
    elif PHI == _RELU:
        return tl.maximum(x, 0.0)
    else:
        return x


@triton.jit
def feature_map_derivative(x, PHI: tl.constexpr):
    """dφ/dx: 1 or exp(x) (elu+1), 1 or 0 (relu; 0 at x = 0, as torch's threshold_backward), 1."""
    if PHI == _ELU_PLUS_ONE:
        return tl.where(x > 0.0, 1.0, tl.exp(tl.minimum(x, 0.0)))
    elif PHI == _RELU:
        return tl.where(x > 0.0, 1.0, 0.0)
    else:
        return tl.full(x.shape, 1.0, x.dtype)
