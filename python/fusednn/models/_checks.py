"""Argument checks the models share."""

from __future__ import annotations

import torch

from .._validate import Args, dtype_name, shape_of

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


def check_images(args: Args, images: torch.Tensor, in_channels: int) -> None:
    """images: a floating-point ``[N, C, H, W]`` tensor with C = ``in_channels`` (the image
    classifiers' input)."""
    args.tensor("images", images, "[N, C, H, W]", ndim=4, dtypes=None)
    if not images.dtype.is_floating_point:
        raise args.error("images", "a floating-point tensor", dtype_name(images.dtype), TypeError)
    if images.shape[1] != in_channels:
        raise args.error("images", f"[N, C, H, W] with C = {in_channels} (config.in_channels)", shape_of(images))


def check_labels(args: Args, labels: torch.Tensor, images: torch.Tensor) -> None:
    """labels: ``[N]`` class ids, N the images' batch."""
    args.tensor("labels", labels, "[N]", ndim=1, dtypes=INDEX_DTYPES)
    if isinstance(images, torch.Tensor) and labels.shape[0] != images.shape[0]:
        raise args.error("labels", f"[N] with N = {images.shape[0]} (the images' batch)", shape_of(labels))
