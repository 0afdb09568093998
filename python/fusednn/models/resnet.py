"""ResNet (He et al., 2016) on the fused convolution ops, with torchvision's module names.

    images [N, C, H, W] -> channels_last -> stem: conv1 (7x7 / 2) + bn1 + relu, maxpool (3x3 / 2)
    -> layer1 .. layer4 (stage k: blocks of width * 2^k planes, the first of stages 2-4 with stride 2)
    -> avgpool (global) -> fc -> logits [N, classes]

Blocks (torchvision's ResNet v1.5: the stride sits on a Bottleneck's 3x3 convolution):

* ``BasicBlock`` (ResNet-18/34): relu(bn1(conv1 3x3)), then bn2(conv2 3x3) + identity, relu;
* ``Bottleneck`` (ResNet-50): 1x1 reduce, 3x3, 1x1 expand (x4), each with its batch norm,
  the last one + identity, relu;

with ``downsample = Sequential(conv 1x1 / stride, bn)`` on the identity path where the
shape changes. Every (convolution, batch norm[, + identity], relu) runs through
``fusednn.nn.conv_bn_act``: in training the convolution, then the batch norm with the add
and the ReLU fused into its kernel; in eval mode one convolution with the batch norm, the
add and the ReLU in its epilogue. The model converts its input to channels_last (NHWC,
the kernels' native layout), so every activation stays channels_last.

Module and parameter names are torchvision's (``conv1``, ``bn1``, ``relu``, ``maxpool``,
``layer1`` .. ``layer4`` of blocks with ``conv1``, ``bn1``, ``conv2``, ``bn2`` (``conv3``,
``bn3``), ``downsample``; ``avgpool``, ``fc``), so a torchvision ResNet's state_dict loads
with no renaming (``ResNetConfig`` defaults, ``stem="imagenet"``). The ``relu`` modules
are there for that structure; the fused path applies ReLU inside the kernels.

``layers="fusednn"`` builds the convolutions, batch norms and pools from ``fusednn.nn``;
``layers="torch"`` builds the same model from ``torch.nn`` layers (the same names and
parameters, torch's computation) for comparison. ``stem="small"`` replaces the stem by a
3x3 / 1 convolution without max pool, for 32x32 images (CIFAR).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F

from .. import nn as fused_nn
from .._validate import Args, dtype_name
from ._checks import LAYERS, check_images, check_labels

__all__ = ["ResNet", "ResNetConfig", "resnet18", "resnet34", "resnet50"]

BLOCKS = ("basic", "bottleneck")
STEMS = ("imagenet", "small")


@dataclass
class ResNetConfig:
    """Sizes of a ``ResNet``.

    block: ``"basic"`` (two 3x3 convolutions, ResNet-18/34) or ``"bottleneck"`` (1x1, 3x3,
        1x1 with 4x expansion, ResNet-50 and deeper).
    blocks: the number of blocks of each of the four stages (torchvision's ``layers``
        argument): ResNet-18 (2, 2, 2, 2), ResNet-34 and ResNet-50 (3, 4, 6, 3).
    num_classes: the logits' size.
    width: the stem's channels and the first stage's planes; stage k has ``width * 2^k``
        (torchvision: 64). A block's output has ``planes * expansion`` channels (4 for
        ``"bottleneck"``).
    in_channels: the images' channels.
    stem: ``"imagenet"`` (7x7 / 2 convolution, 3x3 / 2 max pool: torchvision's) or
        ``"small"`` (3x3 / 1 convolution, no max pool: 32x32 images).
    zero_init_residual: the last batch norm of each block starts with weight 0, so each
        block starts as the identity (torchvision's option).
    layers: ``"fusednn"`` (fused kernels) or ``"torch"`` (torch.nn layers).
    """

    block: str = "basic"
    blocks: tuple = (2, 2, 2, 2)
    num_classes: int = 1000
    width: int = 64
    in_channels: int = 3
    stem: str = "imagenet"
    zero_init_residual: bool = False
    layers: str = "fusednn"

    def __post_init__(self):
        args = Args("fusednn.models.ResNetConfig")
        args.choice("block", self.block, BLOCKS)
        blocks = args.int_list("blocks", self.blocks, "[4]")
        if len(blocks) != 4 or min(blocks) < 1:
            raise args.error("blocks", "four ints >= 1 (the blocks of each stage)", repr(self.blocks))
        self.blocks = tuple(blocks)
        args.integer("num_classes", self.num_classes, minimum=1)
        args.integer("width", self.width, minimum=1)
        args.integer("in_channels", self.in_channels, minimum=1)
        args.choice("stem", self.stem, STEMS)
        args.boolean("zero_init_residual", self.zero_init_residual)
        args.choice("layers", self.layers, LAYERS)


def _layer_classes(layers: str) -> dict:
    """The layer classes of ``layers``: fusednn's drop-ins or torch's."""
    source = fused_nn if layers == "fusednn" else torch.nn
    return {name: getattr(source, name) for name in ("Conv2d", "BatchNorm2d", "MaxPool2d", "AdaptiveAvgPool2d")}


class BasicBlock(torch.nn.Module):
    """``relu(bn2(conv2(relu(bn1(conv1(x))))) + identity)``, identity ``downsample(x)`` or x."""

    expansion = 1
    # The (convolution, batch norm) pairs passed to conv_bn_act, folded by fusednn.fold_conv_bn.
    conv_bn_pairs = (("conv1", "bn1"), ("conv2", "bn2"))

    def __init__(self, inplanes: int, planes: int, stride: int, layers: dict, factory: dict):
        super().__init__()
        conv, bn = layers["Conv2d"], layers["BatchNorm2d"]
        self.conv1 = conv(inplanes, planes, 3, stride, 1, bias=False, **factory)
        self.bn1 = bn(planes, **factory)
        self.relu = torch.nn.ReLU(inplace=True)
        self.conv2 = conv(planes, planes, 3, 1, 1, bias=False, **factory)
        self.bn2 = bn(planes, **factory)
        self.downsample = _downsample(inplanes, planes * self.expansion, stride, layers, factory)
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else fused_nn.conv_bn_act(*self.downsample, x)
        out = fused_nn.conv_bn_act(self.conv1, self.bn1, x, "relu")
        return fused_nn.conv_bn_act(self.conv2, self.bn2, out, "relu", residual=identity)


class Bottleneck(torch.nn.Module):
    """``relu(bn3(conv3(relu(bn2(conv2(relu(bn1(conv1(x)))))))) + identity)``: 1x1 to
    ``planes``, 3x3 (with the stride), 1x1 to ``4 * planes``."""

    expansion = 4
    conv_bn_pairs = (("conv1", "bn1"), ("conv2", "bn2"), ("conv3", "bn3"))

    def __init__(self, inplanes: int, planes: int, stride: int, layers: dict, factory: dict):
        super().__init__()
        conv, bn = layers["Conv2d"], layers["BatchNorm2d"]
        self.conv1 = conv(inplanes, planes, 1, bias=False, **factory)
        self.bn1 = bn(planes, **factory)
        self.conv2 = conv(planes, planes, 3, stride, 1, bias=False, **factory)
        self.bn2 = bn(planes, **factory)
        self.conv3 = conv(planes, planes * self.expansion, 1, bias=False, **factory)
        self.bn3 = bn(planes * self.expansion, **factory)
        self.relu = torch.nn.ReLU(inplace=True)
        self.downsample = _downsample(inplanes, planes * self.expansion, stride, layers, factory)
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else fused_nn.conv_bn_act(*self.downsample, x)
        out = fused_nn.conv_bn_act(self.conv1, self.bn1, x, "relu")
        out = fused_nn.conv_bn_act(self.conv2, self.bn2, out, "relu")
        return fused_nn.conv_bn_act(self.conv3, self.bn3, out, "relu", residual=identity)


def _downsample(inplanes: int, outplanes: int, stride: int, layers: dict, factory: dict):
    """``Sequential(conv 1x1 / stride, bn)`` where the identity path changes shape, else None."""
    if stride == 1 and inplanes == outplanes:
        return None
    return torch.nn.Sequential(layers["Conv2d"](inplanes, outplanes, 1, stride, bias=False, **factory),
                               layers["BatchNorm2d"](outplanes, **factory))


class ResNet(torch.nn.Module):
    """An image classifier (see the module docstring).

    forward(images ``[N, in_channels, H, W]`` floating point) -> logits ``[N, num_classes]``;
    ``loss(images, labels)``: the mean cross-entropy against ``labels [N]`` (class ids).
    """

    conv_bn_pairs = (("conv1", "bn1"),)

    def __init__(self, config: Optional[ResNetConfig] = None, *, device=None, dtype=None):
        super().__init__()
        self.config = config = config if config is not None else ResNetConfig()
        factory = dict(device=device, dtype=dtype)
        layers = _layer_classes(config.layers)
        block = BasicBlock if config.block == "basic" else Bottleneck
        width = config.width
        imagenet_stem = config.stem == "imagenet"
        self.conv1 = layers["Conv2d"](config.in_channels, width, *((7, 2, 3) if imagenet_stem else (3, 1, 1)),
                                      bias=False, **factory)
        self.bn1 = layers["BatchNorm2d"](width, **factory)
        self.relu = torch.nn.ReLU(inplace=True)
        self.maxpool = layers["MaxPool2d"](3, 2, 1) if imagenet_stem else torch.nn.Identity()
        inplanes = width
        for stage, count in enumerate(config.blocks):
            planes = width * 2**stage
            stride = 1 if stage == 0 else 2
            stage_blocks = []
            for index in range(count):
                stage_blocks.append(block(inplanes, planes, stride if index == 0 else 1, layers, factory))
                inplanes = planes * block.expansion
            setattr(self, f"layer{stage + 1}", torch.nn.Sequential(*stage_blocks))
        self.avgpool = layers["AdaptiveAvgPool2d"]((1, 1))
        self.fc = torch.nn.Linear(inplanes, config.num_classes, **factory)
        self._initialize()

    def _initialize(self) -> None:
        """torchvision's initialization: He normal (fan out) convolutions, batch norms 1 and
        0, the last batch norm of each block 0 with ``zero_init_residual``."""
        for module in self.modules():
            if isinstance(module, torch.nn.Conv2d):
                torch.nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, torch.nn.BatchNorm2d):
                torch.nn.init.ones_(module.weight)
                torch.nn.init.zeros_(module.bias)
        if self.config.zero_init_residual:
            for module in self.modules():
                if isinstance(module, Bottleneck):
                    torch.nn.init.zeros_(module.bn3.weight)
                elif isinstance(module, BasicBlock):
                    torch.nn.init.zeros_(module.bn2.weight)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images: ``[N, in_channels, H, W]`` floating point (any layout; computed in
        channels_last). Returns logits ``[N, num_classes]``."""
        check_images(Args("fusednn.models.ResNet"), images, self.config.in_channels)
        x = images.contiguous(memory_format=torch.channels_last)
        x = fused_nn.conv_bn_act(self.conv1, self.bn1, x, "relu")
        x = self.maxpool(x)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = torch.flatten(self.avgpool(x), 1)
        return self.fc(x)

    def loss(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy of the logits of ``images`` against ``labels [N]``; a scalar."""
        check_labels(Args("fusednn.models.ResNet.loss"), labels, images)
        return F.cross_entropy(self(images), labels)

    def extra_repr(self) -> str:
        return (f"layers={self.config.layers!r}, block={self.config.block!r}, blocks={self.config.blocks}, "
                f"dtype={dtype_name(self.fc.weight.dtype)}")


def _build(block: str, blocks: tuple, num_classes: int, layers: str, device, dtype, config: dict) -> ResNet:
    return ResNet(ResNetConfig(block=block, blocks=blocks, num_classes=num_classes, layers=layers, **config),
                  device=device, dtype=dtype)


def resnet18(num_classes: int = 1000, layers: str = "fusednn", *, device=None, dtype=None, **config) -> ResNet:
    """ResNet-18: basic blocks (2, 2, 2, 2); ``config``: other ``ResNetConfig`` fields
    (``width``, ``stem``, ``in_channels``, ``zero_init_residual``)."""
    return _build("basic", (2, 2, 2, 2), num_classes, layers, device, dtype, config)


def resnet34(num_classes: int = 1000, layers: str = "fusednn", *, device=None, dtype=None, **config) -> ResNet:
    """ResNet-34: basic blocks (3, 4, 6, 3); ``config`` as ``resnet18``'s."""
    return _build("basic", (3, 4, 6, 3), num_classes, layers, device, dtype, config)


def resnet50(num_classes: int = 1000, layers: str = "fusednn", *, device=None, dtype=None, **config) -> ResNet:
    """ResNet-50: bottleneck blocks (3, 4, 6, 3); ``config`` as ``resnet18``'s."""
    return _build("bottleneck", (3, 4, 6, 3), num_classes, layers, device, dtype, config)
