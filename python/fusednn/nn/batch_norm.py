"""Drop-in ``torch.nn.BatchNorm2d`` running the fused batch-norm kernels.

It subclasses torch's module, so constructor arguments, parameters (``weight``,
``bias``), buffers (``running_mean``, ``running_var``, ``num_batches_tracked``),
``state_dict`` and ``extra_repr`` are torch's own; ``forward`` keeps torch's logic
(``num_batches_tracked``, ``momentum=None`` as a cumulative average, buffers left alone
without ``track_running_stats``, batch statistics in evaluation mode when there are no
running ones) and computes with ``fusednn.ops.batch_norm``. The fused residual add and
activation are reached through the op::

    fusednn.ops.batch_norm(x, bn.running_mean, bn.running_var, bn.weight, bn.bias,
                           bn.training, bn.momentum, bn.eps, residual=shortcut, activation="relu")

(a caller doing so owns ``num_batches_tracked`` and ``momentum=None``). ``torch.jit.script``
compiles the module to torch's own function.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from fusednn import ops, registry

__all__ = ["BatchNorm2d"]


@registry.drop_in(torch.nn.BatchNorm2d)
class BatchNorm2d(torch.nn.BatchNorm2d):
    """``torch.nn.BatchNorm2d(num_features, eps=1e-5, momentum=0.1, affine=True,
    track_running_stats=True, device=None, dtype=None, *, bias=True)`` computed by
    ``fusednn.ops.batch_norm``.

    input: [N, C, H, W] -> output of the same shape, dtype and memory format.
    """

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        self._check_input_dim(input)
        # torch's _BatchNorm.forward: the factor of the running average, and which
        # statistics normalise
        if self.momentum is None:
            exponential_average_factor = 0.0
        else:
            exponential_average_factor = self.momentum
        if self.training and self.track_running_stats:
            if self.num_batches_tracked is not None:
                self.num_batches_tracked.add_(1)
                if self.momentum is None:  # cumulative moving average
                    exponential_average_factor = 1.0 / float(self.num_batches_tracked)
                else:
                    exponential_average_factor = self.momentum
        if self.training:
            bn_training = True
        else:
            bn_training = (self.running_mean is None) and (self.running_var is None)
        # the buffers are passed where they are updated (training and tracked) or read (evaluation)
        running_mean = self.running_mean if not self.training or self.track_running_stats else None
        running_var = self.running_var if not self.training or self.track_running_stats else None
        if torch.jit.is_scripting():  # TorchScript compiles this branch only: torch's function
            return F.batch_norm(input, running_mean, running_var, self.weight, self.bias, bn_training,
                                exponential_average_factor, self.eps)
        return self._fused_forward(input, running_mean, running_var, bn_training, exponential_average_factor)

    @torch.jit.unused
    def _fused_forward(self, input: torch.Tensor, running_mean: Optional[torch.Tensor],
                       running_var: Optional[torch.Tensor], training: bool, momentum: float) -> torch.Tensor:
        return ops.batch_norm(input, running_mean, running_var, self.weight, self.bias, training, momentum, self.eps)
