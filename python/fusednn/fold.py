"""``fold_conv_bn``: batch norms folded into the convolutions before them, for inference.

In eval mode a ``BatchNorm2d`` is an affine map per channel, ``bn(y) = y * scale + shift``
with ``scale = weight / sqrt(running_var + eps)`` and ``shift = bias - running_mean *
scale``; after a convolution it folds into the convolution's weight and bias:

    weight' = weight * scale (per output channel),   bias' = (bias - running_mean) * scale + bn.bias

(``bias`` 0 for a convolution without one, which then gets one). An activation module
right after the pair folds into the convolution's epilogue too: the convolution becomes a
``fusednn.nn.Conv2d`` with ``activation=``, so conv, batch norm and activation run as one
``fusednn.ops.conv2d``.
"""

from __future__ import annotations

from typing import Optional

import torch

from fusednn import registry
from fusednn._validate import Args

__all__ = ["fold_conv_bn"]


def _classes(twin: type) -> tuple[type, ...]:
    """``twin`` and the fusednn drop-ins registered for it: the modules whose forward is the
    twin's computation. Exact types only: a subclass of its own may compute something else
    (a weight-standardized convolution) that folding would break."""
    return (twin,) + tuple(d.module for d in registry.drop_ins() if d.twin is twin)


def _activation_of(module: torch.nn.Module) -> Optional[str]:
    """The epilogue activation an activation module computes, or None."""
    if type(module) is torch.nn.ReLU:
        return "relu"
    if type(module) is torch.nn.GELU:
        return {"none": "gelu", "tanh": "gelu_tanh"}.get(module.approximate)
    if type(module) is torch.nn.SiLU:
        return "silu"
    return None


def _foldable(conv: torch.nn.Module, bn: torch.nn.Module) -> bool:
    return (type(conv) in _classes(torch.nn.Conv2d) and getattr(conv, "activation", None) is None
            and type(bn) in _classes(torch.nn.BatchNorm2d) and bn.running_mean is not None
            and bn.num_features == conv.out_channels)


def _fold(conv: torch.nn.Conv2d, bn: torch.nn.BatchNorm2d) -> None:
    """Folds ``bn`` into ``conv``'s weight and bias, in float64, in place (the parameters keep
    their identity; a convolution without bias gets a new bias parameter)."""
    scale = torch.rsqrt(bn.running_var.double() + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight.double()
    bias = -bn.running_mean.double() if conv.bias is None else conv.bias.double() - bn.running_mean.double()
    bias = bias * scale
    if bn.bias is not None:
        bias = bias + bn.bias.double()
    conv.weight.copy_(conv.weight.double() * scale.view(-1, 1, 1, 1))
    if conv.bias is None:
        conv.bias = torch.nn.Parameter(bias.to(conv.weight.dtype), requires_grad=conv.weight.requires_grad)
    else:
        conv.bias.copy_(bias)


def _with_activation(conv: torch.nn.Conv2d, activation: str) -> torch.nn.Conv2d:
    """``conv`` as a ``fusednn.nn.Conv2d`` applying ``activation`` in its epilogue, with the
    same parameters."""
    from fusednn.nn import Conv2d

    if type(conv) is Conv2d:
        conv.activation = activation
        return conv
    fused = Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                   conv.dilation, conv.groups, conv.bias is not None, conv.padding_mode, device="meta",
                   dtype=conv.weight.dtype, activation=activation)
    fused.weight, fused.bias = conv.weight, conv.bias
    return fused.train(conv.training)


def _fold_sequential(sequence: torch.nn.Sequential) -> None:
    """Every convolution directly followed by a batch norm in ``sequence``, and the
    activation module after the pair."""
    for i in range(len(sequence) - 1):
        conv, bn = sequence[i], sequence[i + 1]
        if not _foldable(conv, bn):
            continue
        _fold(conv, bn)
        sequence[i + 1] = torch.nn.Identity()
        activation = _activation_of(sequence[i + 2]) if i + 2 < len(sequence) else None
        if activation is not None:
            sequence[i] = _with_activation(conv, activation)
            sequence[i + 2] = torch.nn.Identity()


def fold_conv_bn(model: torch.nn.Module) -> torch.nn.Module:
    """Folds, in place, every batch norm that follows a convolution into the convolution,
    for inference; returns ``model``.

    Folded: a ``BatchNorm2d`` (torch's or fusednn's) tracking running statistics directly
    after a ``Conv2d`` (torch's or fusednn's) in a ``torch.nn.Sequential``, at any depth, and
    the pairs the library's blocks declare in ``conv_bn_pairs`` (``fusednn.nn.ConvBNAct``,
    the ResNet blocks and stem), which pass them to ``fusednn.nn.conv_bn_act``. The batch
    norm is replaced by ``torch.nn.Identity`` and its map folded into the convolution's
    weight and bias (computed in float64; a convolution without bias gets one). Where a
    ``torch.nn.ReLU``, ``GELU`` (``approximate`` ``"none"`` or ``"tanh"``) or ``SiLU`` module
    follows the pair in the ``Sequential``, the convolution becomes a ``fusednn.nn.Conv2d``
    with that ``activation`` (holding the same parameters) and the activation module is
    replaced by ``Identity``. Anything else (a batch norm after anything but a plain
    convolution, a convolution subclass of another kind, a batch norm without running
    statistics) is left as it is.

    The model must be in eval mode (``model.eval()``), every submodule included: folding
    uses the running statistics, which only eval mode normalizes by, so a model in
    training mode is refused (ValueError) rather than silently changed in what it
    computes. The folded model computes what the model computed in eval mode; training it
    further would train it without its batch norms.
    """
    args = Args("fusednn.fold_conv_bn")
    if not isinstance(model, torch.nn.Module):
        raise args.error("model", "a torch.nn.Module", type(model).__name__, TypeError)
    training = next((name for name, module in model.named_modules() if module.training), None)
    if training is not None:
        where = f"its submodule {training!r}" if training else "the model"
        raise args.error("model", "in eval mode (call model.eval() first): folding uses the running statistics, "
                                  "and a batch norm in training mode normalizes by the batch's",
                         f"{where} in training mode")
    with torch.no_grad():
        for module in list(model.modules()):
            if isinstance(module, torch.nn.Sequential):
                _fold_sequential(module)
            for conv_name, bn_name in getattr(module, "conv_bn_pairs", ()):
                conv, bn = getattr(module, conv_name), getattr(module, bn_name)
                if _foldable(conv, bn):
                    _fold(conv, bn)
                    setattr(module, bn_name, torch.nn.Identity())
    return model
