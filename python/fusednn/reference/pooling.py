"""Plain-PyTorch 2-D pooling: max, average and adaptive average pooling of ``[N, C, H, W]``
or unbatched ``[C, H, W]`` tensors.

torch.nn.functional's pooling ops are the definition of these ops, so the references are
those functions, called with the same arguments; autograd comes from PyTorch.

One exception, a matter of layout only: the global mean (``adaptive_avg_pool2d`` to 1x1)
is computed as the average pool whose window is the whole plane. torch's own
``adaptive_avg_pool2d(x, 1)`` takes ``x.mean((-2, -1))``, whose gradient of a
channels_last ``x`` comes back contiguous; the average pool's gradient keeps the input's
memory format, as every other output size does (and as torch's module tests ask).
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F

__all__ = ["adaptive_avg_pool2d", "avg_pool2d", "max_pool2d", "resolve_output_size"]

IntPair = int | Sequence[int]


def max_pool2d(
    input: torch.Tensor,
    kernel_size: IntPair,
    stride: Optional[IntPair] = None,
    padding: IntPair = 0,
    dilation: IntPair = 1,
    ceil_mode: bool = False,
    return_indices: bool = False,
):
    """The maximum over each window (``-inf`` padding, NaN propagates); with
    ``return_indices`` also the argmax as a flat index ``h * W + w`` into the input plane."""
    return F.max_pool2d(input, kernel_size, stride, padding, dilation, ceil_mode=ceil_mode,
                        return_indices=return_indices)


def avg_pool2d(
    input: torch.Tensor,
    kernel_size: IntPair,
    stride: Optional[IntPair] = None,
    padding: IntPair = 0,
    ceil_mode: bool = False,
    count_include_pad: bool = True,
    divisor_override: Optional[int] = None,
) -> torch.Tensor:
    """The sum over each window divided by ``divisor_override``, else by the window's size
    (``count_include_pad``: padded positions count, positions beyond the padded input in
    ceil mode do not) or by the number of input elements in it."""
    return F.avg_pool2d(input, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override)


def resolve_output_size(input: torch.Tensor, output_size) -> tuple[int, int]:
    """``output_size`` (an int, or a pair whose None entries keep the input's size) as a pair."""
    pair = (output_size, output_size) if not isinstance(output_size, Sequence) else tuple(output_size)
    return tuple(input.shape[-2 + i] if size is None else int(size) for i, size in enumerate(pair))


def adaptive_avg_pool2d(input: torch.Tensor, output_size) -> torch.Tensor:
    """Averages over the adaptive windows of torch (window i of n over a size L spans
    ``[floor(i * L / n), ceil((i + 1) * L / n))``); a 1x1 output is the mean over H x W."""
    if resolve_output_size(input, output_size) == (1, 1):
        return F.avg_pool2d(input, tuple(input.shape[-2:]))  # the mean, with the input's gradient layout
    return F.adaptive_avg_pool2d(input, output_size)
