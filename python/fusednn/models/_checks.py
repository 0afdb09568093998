"""Argument checks the models share."""

from __future__ import annotations

import torch

from .._validate import Args

# How a model's recurrent layers are built: fusednn's modules, or torch's for comparison.
LAYERS = ("fusednn", "torch")
INDEX_DTYPES = (torch.int64, torch.int32)


def check_token_range(args: Args, name: str, tokens: torch.Tensor, vocab_size: int) -> None:
    """Token ids of a CPU tensor lie in [0, vocab_size): the embedding's own error names no
    argument. CUDA tensors are not checked: the check would wait for the GPU at every call."""
    if tokens.device.type == "cpu" and tokens.numel() > 0:
        low, high = int(tokens.min()), int(tokens.max())
        if low < 0 or high >= vocab_size:
            raise args.error(name, f"token ids in [0, {vocab_size})", f"ids in [{low}, {high}]")
