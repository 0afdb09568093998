"""A next-frame predictor: a ConvLSTM encoder and a 1x1 convolution head.

    frames [B, T, C, H, W] -> ConvLSTM (L layers, Hc hidden channels, k x k kernels, batch_first)
    -> outputs [B, T, Hc, H, W] -> 1x1 conv Hc -> C -> predictions [B, T, C, H, W]

``predictions[:, t]`` is the prediction of frame ``t + 1`` from frames ``0 .. t`` (the
ConvLSTM reads the sequence causally), so the training target of ``predictions[:, :-1]``
is ``frames[:, 1:]``, and ``predictions[:, -1]`` predicts the frame after the sequence.

``layers="fusednn"`` runs ``fusednn.nn.ConvLSTM`` on its fused kernels. torch has no
ConvLSTM module; ``layers="torch"`` runs the same module on the ``reference`` backend
(``fusednn.use_backend("reference")`` around the encoder): its plain-PyTorch computation,
a ``conv2d`` and the gate math in torch ops per step. Both builds have the same parameters,
so their state_dicts load into each other.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F

from .. import nn as fused_nn
from .._runtime import use_backend
from .._validate import Args, dtype_name, shape_of
from ._checks import LAYERS

__all__ = ["ConvLSTMPredictor", "ConvLSTMPredictorConfig"]


@dataclass
class ConvLSTMPredictorConfig:
    """Sizes of a ``ConvLSTMPredictor``.

    channels: C, the frames' channels (input and prediction).
    hidden_channels: Hc, the ConvLSTM's hidden channels.
    kernel_size: k, the ConvLSTM's (odd) kernel size; the frame size is kept.
    num_layers: L, the ConvLSTM's layers.
    layers: ``"fusednn"`` (fused kernels) or ``"torch"`` (the same module on the reference
        backend: plain PyTorch).
    """

    channels: int = 1
    hidden_channels: int = 8
    kernel_size: int = 3
    num_layers: int = 1
    layers: str = "fusednn"

    def __post_init__(self):
        args = Args("fusednn.models.ConvLSTMPredictorConfig")
        args.integer("channels", self.channels, minimum=1)
        args.integer("hidden_channels", self.hidden_channels, minimum=1)
        args.integer("kernel_size", self.kernel_size, minimum=1)
        if self.kernel_size % 2 == 0:
            raise args.error("kernel_size", "odd (so that the frame size is kept)", repr(self.kernel_size))
        args.integer("num_layers", self.num_layers, minimum=1)
        args.choice("layers", self.layers, LAYERS)


class ConvLSTMPredictor(torch.nn.Module):
    """Predicts each next frame of a video (see the module docstring).

    Parameters: ``encoder.*`` (``fusednn.nn.ConvLSTM``'s), ``head.weight [C, Hc, 1, 1]`` and
    ``head.bias [C]``.
    """

    def __init__(self, config: Optional[ConvLSTMPredictorConfig] = None, *, device=None, dtype=None):
        super().__init__()
        self.config = config = config if config is not None else ConvLSTMPredictorConfig()
        factory = dict(device=device, dtype=dtype)
        self.encoder = fused_nn.ConvLSTM(config.channels, config.hidden_channels, config.kernel_size,
                                         num_layers=config.num_layers, batch_first=True, **factory)
        self.head = torch.nn.Conv2d(config.hidden_channels, config.channels, kernel_size=1, **factory)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        """frames: ``[B, T, C, H, W]`` floating point, T >= 1.

        Returns predictions ``[B, T, C, H, W]``: ``predictions[:, t]`` predicts ``frames[:, t + 1]``.
        """
        args = Args("fusednn.models.ConvLSTMPredictor")
        args.tensor("frames", frames, "[B, T, C, H, W]", ndim=5, dtypes=None)
        if not frames.dtype.is_floating_point:
            raise args.error("frames", "a floating-point tensor", dtype_name(frames.dtype), TypeError)
        B, T, C, H, W = frames.shape
        if C != self.config.channels:
            raise args.error("frames", f"[B, T, C, H, W] with C = {self.config.channels} (config.channels)",
                             shape_of(frames))
        if T == 0:
            raise args.error("frames", "[B, T, C, H, W] with T >= 1", shape_of(frames))
        if self.config.layers == "torch":
            with use_backend("reference"):
                outputs, _ = self.encoder(frames)
        else:
            outputs, _ = self.encoder(frames)  # [B, T, Hc, H, W]
        predictions = self.head(outputs.reshape(B * T, self.config.hidden_channels, H, W))
        return predictions.reshape(B, T, C, H, W)

    def loss(self, frames: torch.Tensor) -> torch.Tensor:
        """Mean squared error of the predictions of frames ``1 .. T-1`` from ``frames
        [B, T, C, H, W]`` (T >= 2); a scalar."""
        if isinstance(frames, torch.Tensor) and frames.dim() == 5 and frames.shape[1] < 2:
            raise Args("fusednn.models.ConvLSTMPredictor.loss").error(
                "frames", "[B, T, C, H, W] with T >= 2 (a frame to predict)", shape_of(frames))
        predictions = self(frames)
        return F.mse_loss(predictions[:, :-1], frames[:, 1:])

    def extra_repr(self) -> str:
        return f"layers={self.config.layers!r}, dtype={dtype_name(self.head.weight.dtype)}"
