"""Seeded synthetic tasks for the models, and the short training run of ``python -m fusednn train``.

* ``repeating_sequences``: next-token prediction on short random patterns repeated
  (``LSTMLanguageModel``, ``LinearTransformerLM``): after one period every token is
  predictable by copying.
* ``bit_sequences``: the majority (or parity) of variable-length bit sequences
  (``GRUClassifier``).
* ``moving_squares``: a square moving at constant velocity and bouncing off the borders
  (``ConvLSTMPredictor``).
* ``oriented_bars``: the orientation of a colored bar on a noisy image (the image
  classifiers ``ResNet`` and ``InceptionNet``).

Every generator draws from the ``torch.Generator`` it is given (on the CPU, so that a seed
gives the same data on every device) and returns tensors on ``device``.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable, Optional

import torch

from .._validate import Args
from .conv_lstm_predictor import ConvLSTMPredictor, ConvLSTMPredictorConfig
from .gru_classifier import GRUClassifier, GRUClassifierConfig
from .inception_net import InceptionNet, InceptionNetConfig
from .linear_transformer_lm import LinearTransformerLM, LinearTransformerLMConfig
from .lstm_language_model import LSTMLanguageModel, LSTMLanguageModelConfig
from .resnet import resnet18

__all__ = ["bit_sequences", "moving_squares", "oriented_bars", "repeating_sequences"]

BIT_RULES = ("majority", "parity")


def _generator(generator: Optional[torch.Generator]) -> torch.Generator:
    return generator if generator is not None else torch.Generator().manual_seed(0)


def repeating_sequences(batch_size: int, length: int, vocab_size: int = 16, min_period: int = 2, max_period: int = 5,
                        *, generator: Optional[torch.Generator] = None, device=None,
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row repeats a random pattern of p tokens (p uniform in [min_period, max_period],
    tokens uniform in [0, vocab_size)).

    Returns ``(tokens [B, T], targets [B, T])`` int64, T = ``length``: ``targets[:, t] =
    tokens[:, t + 1]`` of the repeated sequence, so only the first p targets of a row are
    not predictable from what came before.
    """
    args = Args("fusednn.models.tasks.repeating_sequences")
    args.integer("batch_size", batch_size, minimum=1)
    args.integer("length", length, minimum=1)
    args.integer("vocab_size", vocab_size, minimum=1)
    args.integer("min_period", min_period, minimum=1)
    args.integer("max_period", max_period, minimum=min_period)
    generator = _generator(generator)
    periods = torch.randint(min_period, max_period + 1, (batch_size, 1), generator=generator)
    patterns = torch.randint(0, vocab_size, (batch_size, max_period), generator=generator)
    position_in_pattern = torch.arange(length + 1).unsqueeze(0) % periods  # [B, T + 1]
    sequence = patterns.gather(1, position_in_pattern)
    return sequence[:, :-1].to(device), sequence[:, 1:].to(device)


def bit_sequences(batch_size: int, min_length: int, max_length: int, rule: str = "majority",
                  *, generator: Optional[torch.Generator] = None, device=None,
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random bit sequences (tokens 0 and 1) of lengths uniform in [min_length, max_length],
    labelled by ``rule``: ``"majority"``: 1 if the sequence holds more ones than zeros, else 0;
    ``"parity"``: the number of ones mod 2.

    Returns ``(tokens [B, max_length], lengths [B], labels [B])`` int64; tokens past a
    row's length are 0 (padding).
    """
    args = Args("fusednn.models.tasks.bit_sequences")
    args.integer("batch_size", batch_size, minimum=1)
    args.integer("min_length", min_length, minimum=1)
    args.integer("max_length", max_length, minimum=min_length)
    args.choice("rule", rule, BIT_RULES)
    generator = _generator(generator)
    lengths = torch.randint(min_length, max_length + 1, (batch_size,), generator=generator)
    bits = torch.randint(0, 2, (batch_size, max_length), generator=generator)
    tokens = bits * (torch.arange(max_length).unsqueeze(0) < lengths.unsqueeze(1))
    ones = tokens.sum(dim=1)
    labels = (2 * ones > lengths).long() if rule == "majority" else ones % 2
    return tokens.to(device), lengths.to(device), labels.to(device)


def moving_squares(batch_size: int, length: int, size: int = 16, square: int = 4, *,
                   generator: Optional[torch.Generator] = None, device=None, dtype: torch.dtype = torch.float32,
                   ) -> torch.Tensor:
    """Videos of one bright ``square x square`` square on a dark ``size x size`` frame, from
    a random position with a random velocity of -1, 0 or +1 pixels per frame on each axis
    (never both 0), bouncing off the borders.

    Returns frames ``[B, T, 1, size, size]`` (T = ``length``) of 0.0 and 1.0 in ``dtype``.
    """
    args = Args("fusednn.models.tasks.moving_squares")
    args.integer("batch_size", batch_size, minimum=1)
    args.integer("length", length, minimum=1)
    args.integer("size", size, minimum=2)
    args.integer("square", square, minimum=1, maximum=size - 1)
    generator = _generator(generator)
    free = size - square  # positions 0 .. free
    start = torch.randint(0, free + 1, (batch_size, 2), generator=generator)
    # Velocities (vy, vx) in {-1, 0, 1}^2 other than (0, 0): index 4 of the 3x3 grid is (0, 0).
    choice = torch.randint(0, 8, (batch_size,), generator=generator)
    choice = choice + (choice >= 4).long()
    velocity = torch.stack([choice // 3 - 1, choice % 3 - 1], dim=1)
    # Bouncing between 0 and `free` is a triangle wave of the unbounded position.
    unbounded = start.unsqueeze(1) + velocity.unsqueeze(1) * torch.arange(length).view(1, length, 1)  # [B, T, 2]
    folded = unbounded.remainder(2 * free)
    position = torch.where(folded <= free, folded, 2 * free - folded)
    pixels = torch.arange(size)
    inside = (pixels >= position.unsqueeze(-1)) & (pixels < position.unsqueeze(-1) + square)  # [B, T, 2, size]
    frames = inside[:, :, 0, :, None] & inside[:, :, 1, None, :]
    return frames.unsqueeze(2).to(device=device, dtype=dtype)


def oriented_bars(batch_size: int, size: int = 32, num_classes: int = 4, noise: float = 0.3, *,
                  generator: Optional[torch.Generator] = None, device=None, dtype: torch.dtype = torch.float32,
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Color images of one bar on Gaussian noise, labelled by the bar's orientation: class k
    is a bar at ``k * 180 / num_classes`` degrees (within a quarter of the spacing between
    classes). Each bar has a random center (in the middle 40% of the image on each axis),
    length (40% to 70% of the image), thickness (1.5 to 3 pixels, antialiased) and color
    (each RGB channel in [0.5, 1]); the noise has standard deviation ``noise``.

    Returns ``(images [B, 3, size, size]`` in ``dtype``, ``labels [B]`` int64 in [0, num_classes)).
    """
    args = Args("fusednn.models.tasks.oriented_bars")
    args.integer("batch_size", batch_size, minimum=1)
    args.integer("size", size, minimum=4)
    args.integer("num_classes", num_classes, minimum=2)
    args.real("noise", noise, minimum=0.0)
    generator = _generator(generator)
    B = batch_size

    def uniform(*shape):
        return torch.rand(*shape, generator=generator, dtype=torch.float64)

    labels = torch.randint(0, num_classes, (B,), generator=generator)
    angle = (labels + (uniform(B) - 0.5) / 2) * (math.pi / num_classes)
    center = size * (0.3 + 0.4 * uniform(B, 2))  # (y, x)
    half_length = size * (0.2 + 0.15 * uniform(B))
    half_thickness = 0.75 + 0.75 * uniform(B)
    color = 0.5 + 0.5 * uniform(B, 3)
    pixels = torch.arange(size, dtype=torch.float64) + 0.5  # pixel centers
    dy = pixels.view(1, size, 1) - center[:, 0].view(B, 1, 1)
    dx = pixels.view(1, 1, size) - center[:, 1].view(B, 1, 1)
    cos, sin = torch.cos(angle).view(B, 1, 1), torch.sin(angle).view(B, 1, 1)
    along, across = dx * cos + dy * sin, (dy * cos - dx * sin).abs()
    # Coverage of each pixel, a linear ramp one pixel wide at the bar's edges and ends.
    coverage = ((half_thickness.view(B, 1, 1) + 0.5 - across).clamp(0, 1)
                * (half_length.view(B, 1, 1) + 0.5 - along.abs()).clamp(0, 1))
    images = coverage.unsqueeze(1) * color.view(B, 3, 1, 1)
    images = images + noise * torch.randn(B, 3, size, size, generator=generator, dtype=torch.float64)
    return images.to(device=device, dtype=dtype), labels.to(device)


# --------------------------------------------------------------------------- training


@dataclass(frozen=True)
class Task:
    """A model with its synthetic task, as ``python -m fusednn train`` runs it.

    build(layers, device): the model (``layers`` ``"fusednn"`` or ``"torch"``: torch's layers,
        or where torch has none the same layers on the reference backend).
    batch(batch_size, generator, device): one batch, the arguments of the model's ``loss``.
    units(batch): the tokens, frames or images a batch holds (throughput).
    """

    description: str
    unit: str
    batch_size: int
    steps: int
    learning_rate: float
    build: Callable[[str, torch.device], torch.nn.Module]
    batch: Callable[[int, torch.Generator, torch.device], tuple]
    units: Callable[[tuple], int]


LM_LENGTH = 32
BIT_LENGTHS = (4, 24)
VIDEO_LENGTH, VIDEO_SIZE = 8, 16
IMAGE_SIZE, IMAGE_CLASSES = 32, 4
RESNET_WIDTH, INCEPTION_WIDTH = 16, 8


def _repeating(batch_size: int, generator: torch.Generator, device) -> tuple:
    return repeating_sequences(batch_size, LM_LENGTH, generator=generator, device=device)


def _bars(batch_size: int, generator: torch.Generator, device) -> tuple:
    return oriented_bars(batch_size, IMAGE_SIZE, IMAGE_CLASSES, generator=generator, device=device)


BARS = f"orientation of a bar among {IMAGE_CLASSES} on noisy {IMAGE_SIZE}x{IMAGE_SIZE} color images"

TASKS = {
    "lstm-lm": Task(
        description=f"LSTMLanguageModel: next token of short random patterns repeated ({LM_LENGTH} tokens)",
        unit="tokens", batch_size=32, steps=150, learning_rate=1e-2,
        build=lambda layers, device: LSTMLanguageModel(LSTMLanguageModelConfig(layers=layers), device=device),
        batch=_repeating, units=lambda batch: batch[0].numel(),
    ),
    "linear_transformer": Task(
        description=f"LinearTransformerLM: next token of short random patterns repeated ({LM_LENGTH} tokens)",
        unit="tokens", batch_size=32, steps=150, learning_rate=3e-3,
        build=lambda layers, device: LinearTransformerLM(LinearTransformerLMConfig(layers=layers), device=device),
        batch=_repeating, units=lambda batch: batch[0].numel(),
    ),
    "gru-classifier": Task(
        description=f"GRUClassifier: majority of {BIT_LENGTHS[0]} to {BIT_LENGTHS[1]} bits (packed, bidirectional)",
        unit="tokens", batch_size=32, steps=150, learning_rate=1e-2,
        build=lambda layers, device: GRUClassifier(GRUClassifierConfig(layers=layers), device=device),
        batch=lambda batch_size, generator, device: bit_sequences(batch_size, *BIT_LENGTHS, generator=generator,
                                                                    device=device),
        units=lambda batch: int(batch[1].sum()),
    ),
    "conv-lstm-predictor": Task(
        description=f"ConvLSTMPredictor: next frame of a moving square ({VIDEO_LENGTH} frames of "
                    f"{VIDEO_SIZE}x{VIDEO_SIZE})",
        unit="frames", batch_size=8, steps=60, learning_rate=1e-2,
        build=lambda layers, device: ConvLSTMPredictor(ConvLSTMPredictorConfig(layers=layers), device=device),
        batch=lambda batch_size, generator, device: (moving_squares(batch_size, VIDEO_LENGTH, VIDEO_SIZE,
                                                                      generator=generator, device=device),),
        units=lambda batch: batch[0].shape[0] * batch[0].shape[1],
    ),
    "resnet18": Task(
        description=f"ResNet-18 (width {RESNET_WIDTH}, torchvision's stem): {BARS}",
        unit="images", batch_size=32, steps=40, learning_rate=3e-3,
        build=lambda layers, device: resnet18(IMAGE_CLASSES, layers, width=RESNET_WIDTH, device=device),
        batch=_bars, units=lambda batch: batch[0].shape[0],
    ),
    "inception-net": Task(
        description=f"InceptionNet (width {INCEPTION_WIDTH}): {BARS}",
        unit="images", batch_size=32, steps=40, learning_rate=3e-3,
        build=lambda layers, device: InceptionNet(InceptionNetConfig(num_classes=IMAGE_CLASSES, width=INCEPTION_WIDTH,
                                                                     layers=layers), device=device),
        batch=_bars, units=lambda batch: batch[0].shape[0],
    ),
}


@dataclass
class TrainingResult:
    """What ``train`` measured: the loss on a held-out batch before and after training, the
    time of the timed steps (every step but the first, a warm-up, unless there is only
    one) with the tokens, frames or images they processed, and memory:

    saved_bytes: the bytes the first step's forward kept for its backward (the distinct
        storages autograd saved, parameters excluded): the activation memory of a step,
        which fusing layers reduces, measured on any device.
    peak_bytes: CUDA only (else None): the most memory the CUDA allocator held over the
        whole run (model, optimizer state, batches and activations).
    """

    loss_before: float
    loss_after: float
    steps: int
    timed_steps: int
    seconds: float
    units: int
    saved_bytes: int = 0
    peak_bytes: Optional[int] = None

    @property
    def throughput(self) -> float:
        """Tokens, frames or images per second over the timed steps."""
        return self.units / self.seconds if self.seconds > 0 else float("inf")


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class SavedForBackward:
    """A context counting the bytes of the tensors autograd saves for backward inside it
    (``torch.autograd.graph.saved_tensors_hooks``): each distinct storage once, the
    ``excluded`` tensors' (the parameters) left out. ``bytes`` after the block."""

    def __init__(self, excluded=()):
        self.excluded = {t.untyped_storage().data_ptr() for t in excluded}
        self.storages: dict[int, int] = {}
        self.hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)

    def _pack(self, t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in self.excluded:
            self.storages[storage.data_ptr()] = storage.nbytes()
        return t

    @property
    def bytes(self) -> int:
        return sum(self.storages.values())

    def __enter__(self) -> "SavedForBackward":
        self.hooks.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.hooks.__exit__(*exc)


def held_out_loss(model: torch.nn.Module, batch: tuple) -> float:
    """The model's loss on ``batch`` in eval mode, without gradients."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return float(model.loss(*batch))
    finally:
        model.train(was_training)


def train(model: torch.nn.Module, task: Task, steps: int, batch_size: int, seed: int, device: torch.device,
          learning_rate: Optional[float] = None,
          progress: Optional[Callable[[int, int, float], None]] = None) -> TrainingResult:
    """``steps`` Adam steps of ``model`` on fresh batches of ``task``, drawn from ``seed``
    (the same batches for the same seed), then the held-out loss (a batch drawn from
    ``seed + 1``) before and after. ``progress(step, steps, loss)`` is called after each
    step. Times forward, backward and the optimizer step; data generation is not timed.
    Measures the first step's activations saved for backward, and on CUDA the allocator's
    peak (``TrainingResult``)."""
    args = Args("fusednn.models.tasks.train")
    steps = args.integer("steps", steps, minimum=1)
    batch_size = args.integer("batch_size", batch_size, minimum=1)
    data = torch.Generator().manual_seed(seed)
    held_out = task.batch(batch_size, torch.Generator().manual_seed(seed + 1), device)
    loss_before = held_out_loss(model, held_out)
    optimizer = torch.optim.Adam(model.parameters(), lr=learning_rate if learning_rate is not None
                                 else task.learning_rate)
    model.train()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    seconds, units, timed_steps, saved_bytes = 0.0, 0, 0, 0
    for step in range(1, steps + 1):
        batch = task.batch(batch_size, data, device)
        _synchronize(device)
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        if step == 1:  # the warm-up step (timed only when it is the only one)
            with SavedForBackward(model.parameters()) as saved:
                loss = model.loss(*batch)
            saved_bytes = saved.bytes
        else:
            loss = model.loss(*batch)
        loss.backward()
        optimizer.step()
        _synchronize(device)
        if step > 1 or steps == 1:
            seconds += time.perf_counter() - start
            units += task.units(batch)
            timed_steps += 1
        if progress is not None:
            progress(step, steps, loss.item())
    peak_bytes = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    return TrainingResult(loss_before, held_out_loss(model, held_out), steps, timed_steps, seconds, units,
                          saved_bytes, peak_bytes)
