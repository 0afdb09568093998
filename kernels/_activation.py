"""The activations a fused epilogue can end with, as Triton device functions shared by every
kernel that fuses one (convolution, depthwise and causal convolutions, batch norm).

An activation travels to a kernel as the constexpr code ``ACTIVATION_CODES[name]``, so each
one compiles into its own specialisation and the ``None`` case costs nothing.
``activate(x, ACT)`` applies it, ``activation_derivative(x, ACT)`` is its derivative at the
pre-activation x (the backward multiplies the output gradient by it). Both compute in the
dtype of x: callers pass float32.
"""

import triton
import triton.language as tl

from ._tiles import _tanh

# name -> constexpr code; the Python side validates names against these keys.
ACTIVATION_CODES = {None: 0, "relu": 1, "gelu": 2, "gelu_tanh": 3, "silu": 4}

_NONE = tl.constexpr(0)
_RELU = tl.constexpr(1)
_GELU = tl.constexpr(2)
_GELU_TANH = tl.constexpr(3)
_SILU = tl.constexpr(4)

_SQRT1_2 = tl.constexpr(0.7071067811865476)  # 1 / sqrt(2)
_INV_SQRT_2PI = tl.constexpr(0.3989422804014327)  # 1 / sqrt(2 pi)
_SQRT_2_OVER_PI = tl.constexpr(0.7978845608028654)
_GELU_TANH_CUBIC = tl.constexpr(0.044715)


@triton.jit
def activate(x, ACT: tl.constexpr):
    """act(x): identity, relu, gelu (erf form), gelu with torch's tanh approximation, silu."""
    if ACT == _RELU:
        return tl.maximum(x, 0.0)
    elif ACT == _GELU:
        return 0.5 * x * (1.0 + tl.math.erf(x * _SQRT1_2))
    elif ACT == _GELU_TANH:
        return 0.5 * x * (1.0 + _tanh((x + x * x * x * _GELU_TANH_CUBIC) * _SQRT_2_OVER_PI))
    elif ACT == _SILU:
        return x * tl.sigmoid(x)
    else:
        return x


@triton.jit
def activation_derivative(x, ACT: tl.constexpr):
    """d act(x) / dx at the pre-activation x (relu: 0 at x = 0, as torch's threshold_backward).
    Constexpr factors go after a tensor operand: the interpreter turns constexpr * tensor
    into a constexpr."""
    if ACT == _RELU:
        return tl.where(x > 0.0, 1.0, 0.0)
    elif ACT == _GELU:
        cdf = 0.5 * (1.0 + tl.math.erf(x * _SQRT1_2))
        return cdf + x * tl.exp(-0.5 * x * x) * _INV_SQRT_2PI
    elif ACT == _GELU_TANH:
        inner = (x + x * x * x * _GELU_TANH_CUBIC) * _SQRT_2_OVER_PI
        t = _tanh(inner)
        d_inner = (1.0 + x * x * (3.0 * _GELU_TANH_CUBIC)) * _SQRT_2_OVER_PI
        return 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * d_inner
    elif ACT == _SILU:
        s = tl.sigmoid(x)
        return s * (1.0 + x * (1.0 - s))
    else:
        return tl.full(x.shape, 1.0, x.dtype)
