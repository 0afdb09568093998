"""A causal linear-attention transformer language model (Katharopoulos et al., 2020; with
RetNet's per-head decay, Sun et al., 2023), decoding in O(1) per token from a recurrent state.

    tokens [B, T] -> embedding [B, T, E] -> dropout
    -> L blocks: x = x + dropout(attention(LN(x)));  x = x + dropout(MLP(LN(x)))
    -> LN -> logits = x @ embedding.weight.T + bias [B, T, V]

attention: ``fusednn.nn.LinearAttention`` (causal, H heads, feature map and decay from the
config); MLP: Linear E -> M, GELU, Linear M -> E; LN:
``fusednn.nn.LayerNorm`` (pre-norm blocks). There is no position embedding (so no limit
on the length): each position sees only its prefix, and the decay weighs recent tokens
more. The output layer reuses the embedding's weight (Press & Wolf, 2017).

Each attention layer's state after a sequence, ``(S [B, H, D, D], z [B, H, D])`` float32
(float64 in a float64 model), sums everything the sequence showed it: ``forward`` returns the states and takes them
back to continue the sequence, and ``generate`` reads the prompt once, then runs each new
token alone from the carried states, so a step costs the same at any position.

``layers="fusednn"`` runs the fused ops. torch has no linear attention; ``layers="torch"``
builds the norms from ``torch.nn.LayerNorm`` and runs the attention on the ``reference``
backend (``fusednn.use_backend("reference")``: plain PyTorch). Both builds have the same
parameters, so their state_dicts load into each other.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F

from .. import nn as fused_nn
from .._runtime import use_backend
from .._validate import Args, describe, dtype_name, shape_of
from ..nn.linear_attention import DECAYS
from ..reference.linear_attention import FEATURE_MAPS
from . import _language_model
from ._checks import INDEX_DTYPES, LAYERS, check_token_range

__all__ = ["LinearTransformerLM", "LinearTransformerLMConfig"]

# One layer's recurrent state: (S [B, H, D, D], z [B, H, D]).
LayerState = tuple[torch.Tensor, torch.Tensor]


@dataclass
class LinearTransformerLMConfig:
    """Sizes of a ``LinearTransformerLM``.

    vocab_size: V, the number of token ids (0 .. V-1).
    embed_dim: E, the width of the blocks (and of the embedding and the tied output layer).
    num_heads: H, the attention heads; E must be divisible by H (head size D = E / H).
    num_layers: L, the blocks.
    mlp_size: M, the hidden size of each block's MLP.
    feature_map: the attention's φ, ``"elu+1"``, ``"relu"`` or ``"identity"``.
    decay: ``"retnet"`` (head h decays by 1 - 2^(-5 - h) per token) or None (no decay).
    dropout: the probability of dropout on the embeddings and on each block's two branches
        (training only).
    layers: ``"fusednn"`` (fused ops) or ``"torch"`` (``torch.nn.LayerNorm`` and the attention
        on the reference backend: plain PyTorch).
    """

    vocab_size: int = 16
    embed_dim: int = 64
    num_heads: int = 4
    num_layers: int = 2
    mlp_size: int = 128
    feature_map: str = "elu+1"
    decay: Optional[str] = "retnet"
    dropout: float = 0.0
    layers: str = "fusednn"

    def __post_init__(self):
        args = Args("fusednn.models.LinearTransformerLMConfig")
        args.integer("vocab_size", self.vocab_size, minimum=1)
        args.integer("embed_dim", self.embed_dim, minimum=1)
        args.integer("num_heads", self.num_heads, minimum=1)
        if self.embed_dim % self.num_heads:
            raise args.error("embed_dim", f"divisible by num_heads = {self.num_heads}", repr(self.embed_dim))
        args.integer("num_layers", self.num_layers, minimum=1)
        args.integer("mlp_size", self.mlp_size, minimum=1)
        args.choice("feature_map", self.feature_map, FEATURE_MAPS)
        args.choice("decay", self.decay, DECAYS)
        args.real("dropout", self.dropout, minimum=0.0, maximum=1.0, max_inclusive=False)
        args.choice("layers", self.layers, LAYERS)


def _layer_norm_class(config: LinearTransformerLMConfig) -> type:
    return fused_nn.LayerNorm if config.layers == "fusednn" else torch.nn.LayerNorm


class LinearTransformerBlock(torch.nn.Module):
    """One pre-norm block: ``x + dropout(attention(LN(x)))``, then ``x + dropout(MLP(LN(x)))``.

    Parameters: ``attention_norm.*``, ``attention.*`` (``fusednn.nn.LinearAttention``'s),
    ``mlp_norm.*``, ``mlp.0.*`` (E -> M) and ``mlp.2.*`` (M -> E).
    """

    def __init__(self, config: LinearTransformerLMConfig, *, device=None, dtype=None):
        super().__init__()
        factory = dict(device=device, dtype=dtype)
        norm_class = _layer_norm_class(config)
        E = config.embed_dim
        self.attention_norm = norm_class(E, **factory)
        self.attention = fused_nn.LinearAttention(E, config.num_heads, feature_map=config.feature_map, causal=True,
                                                  decay=config.decay, **factory)
        self.mlp_norm = norm_class(E, **factory)
        self.mlp = torch.nn.Sequential(torch.nn.Linear(E, config.mlp_size, **factory),
                                       torch.nn.GELU(),
                                       torch.nn.Linear(config.mlp_size, E, **factory))
        self.dropout = torch.nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, state: Optional[LayerState]) -> tuple[torch.Tensor, LayerState]:
        """x: [B, T, E]; state: the attention's state before the sequence (None: zeros).
        Returns ``(x [B, T, E], the attention's state after it)``."""
        attended, state = self.attention(self.attention_norm(x), state, return_state=True)
        x = x + self.dropout(attended)
        return x + self.dropout(self.mlp(self.mlp_norm(x))), state


class LinearTransformerLM(torch.nn.Module):
    """Next-token prediction with causal linear-attention blocks and a tied output layer
    (see the module docstring).

    Parameters: ``embedding.weight [V, E]`` (also the output layer's weight; N(0, 1/E) at first),
    ``blocks.<l>.*`` (``LinearTransformerBlock``'s), ``final_norm.weight/bias [E]``,
    ``output_bias [V]``.
    """

    def __init__(self, config: Optional[LinearTransformerLMConfig] = None, *, device=None, dtype=None):
        super().__init__()
        self.config = config = config if config is not None else LinearTransformerLMConfig()
        factory = dict(device=device, dtype=dtype)
        self.embedding = torch.nn.Embedding(config.vocab_size, config.embed_dim, **factory)
        self.dropout = torch.nn.Dropout(config.dropout)
        self.blocks = torch.nn.ModuleList(LinearTransformerBlock(config, **factory) for _ in range(config.num_layers))
        self.final_norm = _layer_norm_class(config)(config.embed_dim, **factory)
        self.output_bias = torch.nn.Parameter(torch.zeros(config.vocab_size, **factory))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # The embedding is also the output layer, whose input (the final LayerNorm's output)
        # has unit scale per feature: N(0, 1/E) keeps the first logits at unit scale, where
        # torch's N(0, 1) would start them at a standard deviation of sqrt(E).
        torch.nn.init.normal_(self.embedding.weight, std=self.config.embed_dim ** -0.5)

    def forward(self, tokens: torch.Tensor, state: Optional[tuple[LayerState, ...]] = None,
                ) -> tuple[torch.Tensor, tuple[LayerState, ...]]:
        """tokens: ``[B, T]`` int64/int32 ids in [0, V) (checked on CPU tensors).
        state: the per-layer states a previous call returned (a tuple of L pairs
        ``(S [B, H, D, D], z [B, H, D])``), or None for zeros.

        Returns ``(logits [B, T, V], state)``: ``logits[:, t]`` scores the token after
        ``tokens[:, t]``; ``state`` after the last token, to continue the sequence with.
        """
        args = Args("fusednn.models.LinearTransformerLM")
        args.tensor("tokens", tokens, "[B, T]", ndim=2, dtypes=INDEX_DTYPES)
        if tokens.shape[1] == 0:
            raise args.error("tokens", "[B, T] with T >= 1", shape_of(tokens))
        check_token_range(args, "tokens", tokens, self.config.vocab_size)
        layers = self.config.num_layers
        if state is None:
            state = (None,) * layers
        elif not isinstance(state, (tuple, list)) or len(state) != layers:
            raise args.error("state", f"a tuple of L = {layers} layer states (S, z) or None", describe(state),
                             TypeError)
        x = self.dropout(self.embedding(tokens))
        new_state = []
        with use_backend("reference") if self.config.layers == "torch" else contextlib.nullcontext():
            for block, layer_state in zip(self.blocks, state):
                x, layer_state = block(x, layer_state)
                new_state.append(layer_state)
        logits = F.linear(self.final_norm(x), self.embedding.weight, self.output_bias)
        return logits, tuple(new_state)

    def loss(self, tokens: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy of predicting ``targets [B, T]`` (usually the tokens shifted by
        one) from ``tokens [B, T]``, starting from a zero state; a scalar."""
        return _language_model.next_token_loss(self, "fusednn.models.LinearTransformerLM.loss", tokens, targets)

    def generate(self, prompt: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
                 top_k: Optional[int] = None, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """Continue ``prompt`` by ``max_new_tokens`` sampled tokens.

        prompt: ``[B, P]`` or ``[P]`` token ids, P >= 1. temperature: >= 0; 0 picks the most
        likely token (greedy, as ``top_k=1`` does). top_k: sample among the k most likely
        tokens only (None: all V). generator: the ``torch.Generator`` to sample with.

        Returns ``[B, P + max_new_tokens]`` (``[P + max_new_tokens]`` for a 1-D prompt): the
        prompt followed by the new tokens. The prompt is read once; each new token is one
        position run from the carried attention states (no recomputation of the sequence,
        the same cost at every position). Runs in eval mode (no dropout) and restores the
        module's mode afterwards.
        """
        return _language_model.generate(self, "fusednn.models.LinearTransformerLM.generate", prompt, max_new_tokens,
                                    temperature, top_k, generator)

    def extra_repr(self) -> str:
        return f"layers={self.config.layers!r}, dtype={dtype_name(self.output_bias.dtype)}"
