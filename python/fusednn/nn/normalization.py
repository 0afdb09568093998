"""Drop-in ``torch.nn.LayerNorm`` and ``torch.nn.RMSNorm`` running the fused kernels.

They subclass the torch modules, so constructor arguments, parameters (``weight``,
``bias``), ``state_dict`` and ``extra_repr`` are torch's own; only ``forward`` changes.
``torch.jit.script`` compiles them to torch's own functions (TorchScript cannot compile
the fused ops' Python).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fusednn import ops, registry

__all__ = ["LayerNorm", "RMSNorm"]


@registry.drop_in(torch.nn.LayerNorm)
class LayerNorm(torch.nn.LayerNorm):
    """``torch.nn.LayerNorm(normalized_shape, eps=1e-5, elementwise_affine=True, bias=True,
    device=None, dtype=None)`` computed by ``fusednn.ops.layer_norm``.

    input: [..., *normalized_shape] -> output of the same shape and dtype.
    """

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if torch.jit.is_scripting():  # TorchScript compiles this branch only: torch's function
            return F.layer_norm(input, self.normalized_shape, self.weight, self.bias, self.eps)
        return self._fused_forward(input)

    @torch.jit.unused
    def _fused_forward(self, input: torch.Tensor) -> torch.Tensor:
        return ops.layer_norm(input, self.normalized_shape, self.weight, self.bias, self.eps)


@registry.drop_in(torch.nn.RMSNorm)
class RMSNorm(torch.nn.RMSNorm):
    """``torch.nn.RMSNorm(normalized_shape, eps=None, elementwise_affine=True, device=None,
    dtype=None)`` computed by ``fusednn.ops.rms_norm``.

    input: [..., *normalized_shape] -> output of the same shape and dtype.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.jit.is_scripting():  # TorchScript compiles this branch only: torch's function
            return F.rms_norm(x, self.normalized_shape, self.weight, self.eps)
        return self._fused_forward(x)

    @torch.jit.unused
    def _fused_forward(self, x: torch.Tensor) -> torch.Tensor:
        return ops.rms_norm(x, self.normalized_shape, self.weight, self.eps)
