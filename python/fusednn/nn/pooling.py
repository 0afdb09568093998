"""Drop-in ``torch.nn.MaxPool2d``, ``torch.nn.AvgPool2d`` and ``torch.nn.AdaptiveAvgPool2d``
running fusednn's pooling ops.

They subclass the torch modules, so constructor arguments, ``extra_repr`` and the (empty)
``state_dict`` are torch's own; only ``forward`` changes. ``torch.jit.script`` compiles
them to torch's own functions (TorchScript cannot compile the fused ops' Python).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from fusednn import ops, registry

__all__ = ["AdaptiveAvgPool2d", "AvgPool2d", "MaxPool2d"]


@registry.drop_in(torch.nn.MaxPool2d)
class MaxPool2d(torch.nn.MaxPool2d):
    """``torch.nn.MaxPool2d(kernel_size, stride=None, padding=0, dilation=1,
    return_indices=False, ceil_mode=False)`` computed by ``fusednn.ops.max_pool2d``.

    input: [N, C, H, W] or [C, H, W] -> output [.., C, OH, OW] (and the int64 argmax with
    ``return_indices``), channels_last for a channels_last input.
    """

    def forward(self, input: Tensor):
        if torch.jit.is_scripting():  # TorchScript compiles this branch only: torch's function
            return F.max_pool2d(input, self.kernel_size, self.stride, self.padding, self.dilation,
                                ceil_mode=self.ceil_mode, return_indices=self.return_indices)
        return self._fused_forward(input)

    @torch.jit.unused
    def _fused_forward(self, input: Tensor):
        return ops.max_pool2d(input, self.kernel_size, self.stride, self.padding, self.dilation,
                              ceil_mode=self.ceil_mode, return_indices=self.return_indices)


@registry.drop_in(torch.nn.AvgPool2d)
class AvgPool2d(torch.nn.AvgPool2d):
    """``torch.nn.AvgPool2d(kernel_size, stride=None, padding=0, ceil_mode=False,
    count_include_pad=True, divisor_override=None)`` computed by ``fusednn.ops.avg_pool2d``.

    input: [N, C, H, W] or [C, H, W] -> output [.., C, OH, OW], channels_last for a
    channels_last input.
    """

    def forward(self, input: Tensor) -> Tensor:
        if torch.jit.is_scripting():  # TorchScript compiles this branch only: torch's function
            return F.avg_pool2d(input, self.kernel_size, self.stride, self.padding, self.ceil_mode,
                                self.count_include_pad, self.divisor_override)
        return self._fused_forward(input)

    @torch.jit.unused
    def _fused_forward(self, input: Tensor) -> Tensor:
        return ops.avg_pool2d(input, self.kernel_size, self.stride, self.padding, self.ceil_mode,
                              self.count_include_pad, self.divisor_override)


@registry.drop_in(torch.nn.AdaptiveAvgPool2d)
class AdaptiveAvgPool2d(torch.nn.AdaptiveAvgPool2d):
    """``torch.nn.AdaptiveAvgPool2d(output_size)`` computed by
    ``fusednn.ops.adaptive_avg_pool2d``: the fused kernel for a 1x1 output (the global
    mean), torch's computation for other output sizes.

    input: [N, C, H, W] or [C, H, W] -> output [.., C, OH, OW].
    """

    def forward(self, input: Tensor) -> Tensor:
        if torch.jit.is_scripting():  # TorchScript compiles this branch only: torch's function
            return F.adaptive_avg_pool2d(input, self.output_size)
        return self._fused_forward(input)

    @torch.jit.unused
    def _fused_forward(self, input: Tensor) -> Tensor:
        return ops.adaptive_avg_pool2d(input, self.output_size)
