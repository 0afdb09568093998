"""The activations of the fused epilogues (convolutions, batch norm) in plain PyTorch, and
their validation: one list of names for every op that takes ``activation=``."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from fusednn._validate import Args

# The names an ``activation=`` argument takes (None: no activation), in the order messages list them.
ACTIVATIONS = (None, "relu", "gelu", "gelu_tanh", "silu")


def apply_activation(x: torch.Tensor, activation: Optional[str]) -> torch.Tensor:
    """act(x) as torch computes it: relu, gelu (erf), gelu(approximate="tanh"), silu; None: x.
    TorchScript compiles it."""
    if activation is None:
        return x
    if activation == "relu":
        return F.relu(x)
    if activation == "gelu":
        return F.gelu(x)
    if activation == "gelu_tanh":
        return F.gelu(x, approximate="tanh")
    if activation == "silu":
        return F.silu(x)
    # no !r conversion: TorchScript compiles this function (fusednn.nn.Conv2d's scripted branch)
    raise ValueError(f"unknown activation '{activation}'; expected one of None, 'relu', 'gelu', 'gelu_tanh', "
                     "'silu'")


def check_activation(args: Args, activation, allowed=ACTIVATIONS) -> Optional[str]:
    """Validates an ``activation=`` argument against ``allowed`` (a subset of ACTIVATIONS)."""
    return args.choice("activation", activation, allowed)
