"""What the language models share: their loss, and generation (argument checks, the decoding
loop carrying the model's state from token to token, and the choice of each next token)."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from .._validate import Args, describe, shape_of
from ._checks import INDEX_DTYPES


def next_token_loss(model: torch.nn.Module, where: str, tokens: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``model.loss``: mean cross-entropy of the logits of ``model(tokens)`` against ``targets``
    (the same shape as tokens); ``where`` names the method in errors."""
    args = Args(where)
    args.tensor("targets", targets, "[B, T]", dtypes=INDEX_DTYPES)
    if isinstance(tokens, torch.Tensor) and targets.shape != tokens.shape:
        raise args.error("targets", f"of the tokens' shape {tuple(tokens.shape)}", shape_of(targets))
    logits, _ = model(tokens)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


@torch.no_grad()
def generate(model: torch.nn.Module, where: str, prompt: torch.Tensor, max_new_tokens: int, temperature: float,
             top_k: Optional[int], generator: Optional[torch.Generator]) -> torch.Tensor:
    """``model.generate`` of a language model whose ``forward(tokens [B, T], state=None)``
    returns ``(logits [B, T, V], state)`` and whose config has ``vocab_size``: the prompt
    read once, then one forward of one token per new token from the carried state, in eval
    mode (the model's mode restored afterwards). ``where`` names the method in errors."""
    args = Args(where)
    args.tensor("prompt", prompt, "[B, P] or [P]", ndim=(1, 2), dtypes=INDEX_DTYPES)
    if prompt.shape[-1] == 0:
        raise args.error("prompt", "at least one token (P >= 1)", shape_of(prompt))
    max_new_tokens = args.integer("max_new_tokens", max_new_tokens, minimum=0)
    temperature = args.real("temperature", temperature, minimum=0.0)
    if top_k is not None:
        top_k = args.integer("top_k", top_k, minimum=1, maximum=model.config.vocab_size)
    if generator is not None and not isinstance(generator, torch.Generator):
        raise args.error("generator", "a torch.Generator or None", describe(generator), TypeError)

    unbatched = prompt.dim() == 1
    tokens = prompt.unsqueeze(0) if unbatched else prompt
    was_training = model.training
    model.eval()
    try:
        generated = [tokens]
        logits, state = model(tokens)
        for step in range(max_new_tokens):
            next_token = pick_next_token(logits[:, -1], temperature, top_k, generator)  # [B, 1]
            generated.append(next_token)
            if step + 1 < max_new_tokens:
                logits, state = model(next_token, state)
    finally:
        model.train(was_training)
    out = torch.cat(generated, dim=1)
    return out.squeeze(0) if unbatched else out


def pick_next_token(logits: torch.Tensor, temperature: float, top_k: Optional[int],
                    generator: Optional[torch.Generator]) -> torch.Tensor:
    """The next token ``[B, 1]`` from the last step's ``logits [B, V]``."""
    if temperature == 0.0 or top_k == 1:
        return logits.argmax(dim=-1, keepdim=True)
    logits = logits.float() / temperature
    if top_k is not None:
        kth_largest = logits.topk(top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth_largest, float("-inf"))
    probabilities = torch.softmax(logits, dim=-1)
    return torch.multinomial(probabilities, 1, generator=generator)
