"""A small GoogLeNet-style network (Szegedy et al., 2015) for 32x32 images, every
convolution a ``fusednn.nn.ConvBNAct`` (convolution, batch norm, ReLU).

    images [N, C, 32, 32] -> channels_last -> stem: ConvBNAct 3x3 (2w channels), ConvBNAct 3x3 / 2 (4w)
    -> stage 1 (16x16): Inception modules of 4w channels -> max pool 3x3 / 2
    -> stage 2 (8x8): Inception modules of 8w channels -> max pool 3x3 / 2
    -> stage 3 (4x4): Inception modules of 16w channels
    -> avgpool (global) -> dropout -> fc -> logits [N, classes]

(w = ``width``; ``blocks`` sets the stages and their modules; any image size works.) An Inception module runs
four branches on its input and concatenates their outputs on the channels, C in all, in
GoogLeNet's inception (3a) proportions (64, 96 -> 128, 16 -> 32, 32 of 256):

* ``branch1x1``: 1x1 convolution to C/4;
* ``branch3x3``: 1x1 to 3C/8, then 3x3 to C/2;
* ``branch5x5``: 1x1 to C/16, then two 3x3 to C/8 (the receptive field of GoogLeNet's 5x5
  at a lower cost, as Inception v2 has it);
* ``branch_pool``: 3x3 max pool (stride 1), then 1x1 to C/8.

In training each ``ConvBNAct`` runs the convolution, then the batch norm with the ReLU fused
in; in eval mode one convolution with the batch norm and the ReLU in its epilogue
(``fusednn.nn.conv_bn_act``); ``fusednn.fold_conv_bn`` folds them for good.
``layers="fusednn"`` builds the convolutions, batch norms and pools from ``fusednn.nn``,
``layers="torch"`` the same model (the same parameters) from ``torch.nn``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F

from .. import nn as fused_nn
from .._validate import Args, dtype_name
from ._checks import LAYERS, check_images, check_labels

__all__ = ["InceptionNet", "InceptionNetConfig"]


@dataclass
class InceptionNetConfig:
    """Sizes of an ``InceptionNet``.

    in_channels: the images' channels.
    num_classes: the logits' size.
    width: w, a multiple of 4: the stem has 2w and 4w channels (the second convolution with
        stride 2), the Inception modules of stage k (from 0) 4w * 2^k.
    blocks: the Inception modules of each stage; a 3x3 / 2 max pool between stages.
    dropout: the probability of dropout before the classifier (training only).
    layers: ``"fusednn"`` (fused kernels) or ``"torch"`` (torch.nn layers).
    """

    in_channels: int = 3
    num_classes: int = 10
    width: int = 8
    blocks: tuple = (2, 2, 2)
    dropout: float = 0.2
    layers: str = "fusednn"

    def __post_init__(self):
        args = Args("fusednn.models.InceptionNetConfig")
        args.integer("in_channels", self.in_channels, minimum=1)
        args.integer("num_classes", self.num_classes, minimum=1)
        args.integer("width", self.width, minimum=4)
        if self.width % 4:
            raise args.error("width", "a multiple of 4 (the 5x5 branch's 1x1 has C/16 channels)", repr(self.width))
        blocks = args.int_list("blocks", self.blocks, "[stages]")
        if not blocks or min(blocks) < 1:
            raise args.error("blocks", "one or more ints >= 1 (the Inception modules of each stage)",
                             repr(self.blocks))
        self.blocks = tuple(blocks)
        args.real("dropout", self.dropout, minimum=0.0, maximum=1.0, max_inclusive=False)
        args.choice("layers", self.layers, LAYERS)


def _pool_classes(layers: str):
    source = fused_nn if layers == "fusednn" else torch.nn
    return source.MaxPool2d, source.AdaptiveAvgPool2d


class InceptionModule(torch.nn.Module):
    """Four branches on the same input, concatenated on the channels: ``[N, in_channels, H,
    W]`` -> ``[N, out_channels, H, W]`` (out_channels a multiple of 16; the module docstring
    has the split)."""

    def __init__(self, in_channels: int, out_channels: int, layers: str, factory: dict):
        super().__init__()
        c = out_channels

        def block(cin, cout, k):
            return fused_nn.ConvBNAct(cin, cout, k, **factory, layers=layers)

        self.branch1x1 = block(in_channels, c // 4, 1)
        self.branch3x3 = torch.nn.Sequential(block(in_channels, 3 * c // 8, 1), block(3 * c // 8, c // 2, 3))
        self.branch5x5 = torch.nn.Sequential(block(in_channels, c // 16, 1), block(c // 16, c // 8, 3),
                                             block(c // 8, c // 8, 3))
        self.branch_pool = torch.nn.Sequential(_pool_classes(layers)[0](3, 1, 1), block(in_channels, c // 8, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branches = (self.branch1x1, self.branch3x3, self.branch5x5, self.branch_pool)
        return torch.cat([branch(x) for branch in branches], dim=1)


class InceptionNet(torch.nn.Module):
    """An image classifier (see the module docstring).

    forward(images ``[N, in_channels, H, W]`` floating point) -> logits ``[N, num_classes]``;
    ``loss(images, labels)``: the mean cross-entropy against ``labels [N]`` (class ids).
    """

    def __init__(self, config: Optional[InceptionNetConfig] = None, *, device=None, dtype=None):
        super().__init__()
        self.config = config = config if config is not None else InceptionNetConfig()
        factory = dict(device=device, dtype=dtype)
        max_pool, average_pool = _pool_classes(config.layers)
        w = config.width
        self.stem = torch.nn.Sequential(
            fused_nn.ConvBNAct(config.in_channels, 2 * w, 3, **factory, layers=config.layers),
            fused_nn.ConvBNAct(2 * w, 4 * w, 3, stride=2, **factory, layers=config.layers))
        features, channels = [], 4 * w
        for stage, count in enumerate(config.blocks):
            if stage > 0:
                features.append(max_pool(3, 2, 1))
            for _ in range(count):
                features.append(InceptionModule(channels, 4 * w * 2**stage, config.layers, factory))
                channels = 4 * w * 2**stage
        self.features = torch.nn.Sequential(*features)
        self.avgpool = average_pool((1, 1))
        self.dropout = torch.nn.Dropout(config.dropout)
        self.fc = torch.nn.Linear(channels, config.num_classes, **factory)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images: ``[N, in_channels, H, W]`` floating point (any layout; computed in
        channels_last). Returns logits ``[N, num_classes]``."""
        check_images(Args("fusednn.models.InceptionNet"), images, self.config.in_channels)
        x = self.features(self.stem(images.contiguous(memory_format=torch.channels_last)))
        return self.fc(self.dropout(torch.flatten(self.avgpool(x), 1)))

    def loss(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy of the logits of ``images`` against ``labels [N]``; a scalar."""
        check_labels(Args("fusednn.models.InceptionNet.loss"), labels, images)
        return F.cross_entropy(self(images), labels)

    def extra_repr(self) -> str:
        return f"layers={self.config.layers!r}, dtype={dtype_name(self.fc.weight.dtype)}"
