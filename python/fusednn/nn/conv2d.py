"""Drop-in ``torch.nn.Conv2d`` on the fused convolution, the block ``ConvBNAct``
(convolution, batch norm, activation), and ``conv_bn_act``, the one function that runs a
convolution followed by a batch norm (and a residual add and an activation) for every
block of the library (``ConvBNAct``, the ResNet blocks).

``conv_bn_act`` computes ``act(bn(conv(x)) + residual)`` in two fused kernels or one:

* training (the batch norm normalizes by the batch's statistics): ``fusednn.ops.conv2d``,
  then ``fusednn.ops.batch_norm`` with the residual add and the activation fused into the
  normalization kernel (torch runs four kernels: convolution, batch norm, add, activation,
  and keeps each intermediate for backward);
* inference (the batch norm uses its running statistics, an affine map per channel): one
  ``fusednn.ops.conv2d`` with the batch norm folded into its epilogue,
  ``scale = bn.weight / sqrt(running_var + eps)``, ``shift = bn.bias - running_mean * scale``,
  and the residual and the activation in the same epilogue;
* after ``fusednn.fold_conv_bn`` (the batch norm replaced by ``torch.nn.Identity`` and folded
  into the convolution's weight and bias): one ``fusednn.ops.conv2d`` with the residual and
  the activation.

Which computation runs follows the convolution module: a ``fusednn.nn.Conv2d`` takes the
fused path above; a ``torch.nn.Conv2d`` (a model built with ``layers="torch"``) runs the
modules' own forwards, ``act(bn(conv(x)) + residual)`` in torch ops.
"""

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from fusednn import ops, registry
from fusednn._validate import Args
from fusednn.reference._activation import apply_activation, check_activation

from .batch_norm import BatchNorm2d

__all__ = ["Conv2d", "ConvBNAct", "conv_bn_act"]

# How a block is built: fusednn's modules, or torch's for comparison (the models' ``layers``).
LAYERS = ("fusednn", "torch")


def padded_input(conv: torch.nn.Conv2d, x: Tensor):
    """``(x, padding)`` to pass to a zero-padding convolution: for ``padding_mode`` other
    than ``"zeros"`` (reflect, replicate, circular) ``x`` padded by ``F.pad`` and padding 0,
    as ``torch.nn.Conv2d`` does; otherwise ``x`` itself and the module's padding."""
    if conv.padding_mode != "zeros":
        return F.pad(x, conv._reversed_padding_repeated_twice, mode=conv.padding_mode), 0
    return x, conv.padding


@registry.drop_in(torch.nn.Conv2d)
class Conv2d(torch.nn.Conv2d):
    """``torch.nn.Conv2d(in_channels, out_channels, kernel_size, stride=1, padding=0,
    dilation=1, groups=1, bias=True, padding_mode="zeros", device=None, dtype=None)``
    computed by ``fusednn.ops.conv2d``, with one more keyword-only argument:

    activation: None (torch's Conv2d) or one of ``"relu"``, ``"gelu"``, ``"gelu_tanh"``,
        ``"silu"``, applied in the convolution's epilogue: ``act(conv2d(input) + bias)``.
        ``fusednn.fold_conv_bn`` sets it when it folds the activation module that followed
        the convolution. Shown by ``repr`` when set.

    input: [N, C_in, H, W] or unbatched [C_in, H, W] -> output [N, C_out, H_out, W_out]
    (or [C_out, H_out, W_out]), in the memory format torch gives (channels_last when the
    input or the weight is). ``padding_mode`` other than ``"zeros"`` pads the input with
    ``F.pad`` first, as torch does. ``torch.jit.script`` compiles torch's convolution (and
    the activation in torch ops).
    """

    activation: Optional[str]

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, dilation=1,
                 groups: int = 1, bias: bool = True, padding_mode: str = "zeros", device=None, dtype=None, *,
                 activation: Optional[str] = None) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias,
                         padding_mode, device, dtype)
        self.activation = check_activation(Args("fusednn.nn.Conv2d"), activation)

    def __setstate__(self, state):
        super().__setstate__(state)
        self.__dict__.setdefault("activation", None)

    def forward(self, input: Tensor) -> Tensor:
        if torch.jit.is_scripting():  # TorchScript compiles this branch only: torch's function
            return apply_activation(self._conv_forward(input, self.weight, self.bias), self.activation)
        return self._fused_forward(input)

    @torch.jit.unused
    def _fused_forward(self, input: Tensor) -> Tensor:
        input, padding = padded_input(self, input)
        return ops.conv2d(input, self.weight, self.bias, self.stride, padding, self.dilation, self.groups,
                          activation=self.activation)

    def extra_repr(self) -> str:
        text = super().extra_repr()
        return text if self.activation is None else f"{text}, activation={self.activation!r}"


# --------------------------------------------------------------------------- conv + batch norm + activation


def _is_batch_norm(module) -> bool:
    return isinstance(module, torch.nn.BatchNorm2d)


def folded_batch_norm(bn: torch.nn.BatchNorm2d) -> tuple[Tensor, Tensor]:
    """``(scale, shift)`` [C] of a batch norm that normalizes by its running statistics:
    ``bn(y) = y * scale + shift`` with ``scale = weight / sqrt(running_var + eps)`` and
    ``shift = bias - running_mean * scale`` (weight 1 and bias 0 without affine
    parameters). Differentiable in weight and bias."""
    scale = torch.rsqrt(bn.running_var + bn.eps)
    if bn.weight is not None:
        scale = bn.weight * scale
    shift = -bn.running_mean * scale
    if bn.bias is not None:
        shift = shift + bn.bias
    return scale, shift


def _batch_norm_call(bn: torch.nn.BatchNorm2d):
    """What ``torch.nn.BatchNorm2d.forward`` passes to ``F.batch_norm``: ``(running_mean,
    running_var, use_batch_statistics, momentum)``, counting the batch in
    ``num_batches_tracked`` as it does (``momentum=None``: the cumulative average)."""
    momentum = 0.0 if bn.momentum is None else bn.momentum
    if bn.training and bn.track_running_stats and bn.num_batches_tracked is not None:
        bn.num_batches_tracked.add_(1)
        momentum = 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum
    use_batch_statistics = bn.training or (bn.running_mean is None and bn.running_var is None)
    if bn.training and not bn.track_running_stats:
        return None, None, use_batch_statistics, momentum
    return bn.running_mean, bn.running_var, use_batch_statistics, momentum


def conv_bn_act(conv: torch.nn.Conv2d, bn: torch.nn.Module, x: Tensor, activation: Optional[str] = None,
                residual: Optional[Tensor] = None) -> Tensor:
    """``act(bn(conv(x)) + residual)`` (see the module docstring for the kernels it runs).

    conv: a ``fusednn.nn.Conv2d`` (the fused path) or a ``torch.nn.Conv2d`` (torch's
        modules); its own ``activation`` must be None (the activation follows the batch norm).
    bn: a ``BatchNorm2d`` over conv's output channels (torch's or fusednn's), or
        ``torch.nn.Identity`` once folded into conv (``fusednn.fold_conv_bn``).
    x: ``[N, C_in, H, W]``.
    activation: None, ``"relu"``, ``"gelu"``, ``"gelu_tanh"`` or ``"silu"``.
    residual: None or a tensor of the output's shape ``[N, C_out, H_out, W_out]``, added
        before the activation (a ResNet block's identity path).

    In training the batch norm's running statistics and ``num_batches_tracked`` update as
    torch's do.
    """
    args = Args("fusednn.nn.conv_bn_act")
    activation = check_activation(args, activation)
    if not isinstance(conv, torch.nn.Conv2d):
        raise args.error("conv", "a torch.nn.Conv2d or fusednn.nn.Conv2d", type(conv).__name__, TypeError)
    if not (_is_batch_norm(bn) or isinstance(bn, torch.nn.Identity)):
        raise args.error("bn", "a BatchNorm2d or torch.nn.Identity (a batch norm folded into conv)",
                         type(bn).__name__, TypeError)
    args.tensor("x", x, "[N, C, H, W]", ndim=4, dtypes=None)
    if _is_batch_norm(bn) and bn.num_features != conv.out_channels:
        raise args.error("bn", f"a batch norm over conv's {conv.out_channels} output channels",
                         f"num_features={bn.num_features}")
    if getattr(conv, "activation", None) is not None:
        raise args.error("conv", "a convolution without its own activation (it would come before the batch norm)",
                         f"activation={conv.activation!r}")
    if not isinstance(conv, Conv2d):  # torch's layers: the modules' own computation
        y = bn(conv(x))
        if residual is not None:
            y = y + residual
        return apply_activation(y, activation)

    x, padding = padded_input(conv, x)
    geometry = (conv.stride, padding, conv.dilation, conv.groups)
    if isinstance(bn, torch.nn.Identity):
        return ops.conv2d(x, conv.weight, conv.bias, *geometry, residual=residual, activation=activation)
    running_mean, running_var, use_batch_statistics, momentum = _batch_norm_call(bn)
    if not use_batch_statistics:
        scale, shift = folded_batch_norm(bn)
        return ops.conv2d(x, conv.weight, conv.bias, *geometry, scale=scale, shift=shift, residual=residual,
                          activation=activation)
    y = ops.conv2d(x, conv.weight, conv.bias, *geometry)
    return ops.batch_norm(y, running_mean, running_var, bn.weight, bn.bias, True, momentum, bn.eps,
                          residual=residual, activation=activation)


def _layer_classes(layers: str):
    """(Conv2d, BatchNorm2d) classes of ``layers``: fusednn's drop-ins or torch's."""
    return (torch.nn.Conv2d, torch.nn.BatchNorm2d) if layers == "torch" else (Conv2d, BatchNorm2d)


class ConvBNAct(torch.nn.Module):
    """``act(bn(conv(x)))``: a bias-free ``kernel_size x kernel_size`` convolution with
    padding ``kernel_size // 2``, a ``BatchNorm2d`` and an activation, through
    ``conv_bn_act`` (training: the convolution, then the batch norm with the activation
    fused in; inference: one convolution with the batch norm and the activation in its
    epilogue).

    activation: None, ``"relu"``, ``"gelu"``, ``"gelu_tanh"`` or ``"silu"``.
    layers: ``"fusednn"`` (``fusednn.nn.Conv2d`` and ``BatchNorm2d``, fused) or ``"torch"``
        (``torch.nn.Conv2d`` and ``BatchNorm2d``, torch's computation), keyword only; both
        have the same parameters and buffers.

    Submodules ``conv`` and ``bn``; x ``[N, in_channels, H, W]`` -> ``[N, out_channels,
    H_out, W_out]`` with ``H_out = (H - 1) // stride + 1`` for an odd kernel size.
    ``fusednn.fold_conv_bn`` folds ``bn`` into ``conv`` (``conv_bn_pairs``).
    """

    # The (convolution, batch norm) submodule pairs the forward passes to conv_bn_act,
    # which fusednn.fold_conv_bn folds.
    conv_bn_pairs = (("conv", "bn"),)

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, groups: int = 1,
                 activation: Optional[str] = "relu", device=None, dtype=None, *, layers: str = "fusednn"):
        super().__init__()
        args = Args("fusednn.nn.ConvBNAct")
        args.integer("kernel_size", kernel_size, minimum=1)
        self.activation = check_activation(args, activation)
        conv_class, bn_class = _layer_classes(args.choice("layers", layers, LAYERS))
        self.conv = conv_class(in_channels, out_channels, kernel_size, stride=stride, padding=kernel_size // 2,
                               groups=groups, bias=False, device=device, dtype=dtype)
        self.bn = bn_class(out_channels, device=device, dtype=dtype)

    def forward(self, x: Tensor) -> Tensor:
        return conv_bn_act(self.conv, self.bn, x, self.activation)

    def extra_repr(self) -> str:
        return f"activation={self.activation!r}"

