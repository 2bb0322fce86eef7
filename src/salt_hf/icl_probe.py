"""An in-context learning probe: random token sequences repeated twice.

A model with working induction (Olsson et al., 2022, https://arxiv.org/abs/2209.11895) predicts the second copy of a
random sequence far better than the first: nothing but the context tells it what comes next. Distillation during
pretraining has been reported to weaken exactly this (Goyal et al., 2025, https://arxiv.org/abs/2509.01649), so the
probe runs beside held-out loss on every model SALT trains. It needs no data and no tokenizer: token ids are drawn
uniformly from `[low, vocab_size)`, seeded, so every model of a vocabulary sees the same sequences.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class ICLProbeResult:
    """Per-token means over the probe's sequences; a copy's first token is not scored (nothing predicts it).

    first_copy_loss / second_copy_loss (`float`): next-token loss (nats) on tokens 2..L of each copy.
    first_copy_accuracy / second_copy_accuracy (`float`): argmax accuracy on the same tokens.
    icl_gain (`float`): first_copy_loss - second_copy_loss; about log(V) for a perfect copier, 0 for none.
    """

    first_copy_loss: float
    second_copy_loss: float
    first_copy_accuracy: float
    second_copy_accuracy: float
    icl_gain: float
    sequences: int
    length: int

    def to_dict(self) -> dict:
        return asdict(self)


def repeated_sequences(vocab_size: int, sequences: int, length: int, seed: int = 0, low: int = 0) -> torch.Tensor:
    """`[sequences, 2 * length]` ids: each row a random sequence of `length` ids from `[low, vocab_size)`, twice."""
    if not 0 <= low < vocab_size:
        raise ValueError(f"need 0 <= low < vocab_size, got low={low}, vocab_size={vocab_size}")
    if length < 2 or sequences < 1:
        raise ValueError(f"need length >= 2 and sequences >= 1, got length={length}, sequences={sequences}")
    generator = torch.Generator().manual_seed(seed)
    half = torch.randint(low, vocab_size, (sequences, length), generator=generator)
    return torch.cat([half, half], dim=1)


@torch.no_grad()
def icl_probe(
    model: torch.nn.Module,
    vocab_size: int,
    sequences: int = 64,
    length: int = 32,
    seed: int = 0,
    low: int = 0,
    batch_size: int = 32,
) -> ICLProbeResult:
    """
    Loss and accuracy of `model` on the first and the second copy of `sequences` random sequences of `length` ids.

    Args:
        model (`torch.nn.Module`): a causal LM whose forward takes `input_ids` and returns `.logits` `[B, T, V']`
            with `V' >= vocab_size` (padded embedding rows are left out of the softmax).
        vocab_size (`int`): ids are drawn from `[low, vocab_size)`; the tokenizer's real vocabulary.
        sequences (`int`, *optional*, defaults to `64`), length (`int`, *optional*, defaults to `32`): the probe's
            size; `2 * length` must fit the model's context.
        seed (`int`, *optional*, defaults to `0`): the sequences' seed.
        low (`int`, *optional*, defaults to `0`): the smallest id drawn (e.g. past special tokens).
        batch_size (`int`, *optional*, defaults to `32`): rows per forward.
    """
    ids = repeated_sequences(vocab_size, sequences, length, seed, low)
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    was_training = model.training
    model.eval()
    losses, hits = [], []
    for batch in ids.split(batch_size):
        batch = batch.to(device)
        logits = model(input_ids=batch).logits[:, :-1, :vocab_size].float()
        targets = batch[:, 1:]
        losses.append(F.cross_entropy(logits.transpose(1, 2), targets, reduction="none").cpu())
        hits.append((logits.argmax(-1) == targets).float().cpu())
    model.train(was_training)
    loss, hit = torch.cat(losses), torch.cat(hits)
    # position t predicts token t + 1: tokens 1..L-1 of copy one are t = 0..L-2, of copy two t = L..2L-2
    first, second = slice(0, length - 1), slice(length, 2 * length - 1)
    first_loss, second_loss = loss[:, first].mean().item(), loss[:, second].mean().item()
    assert math.isfinite(first_loss) and math.isfinite(second_loss)
    return ICLProbeResult(
        first_copy_loss=first_loss,
        second_copy_loss=second_loss,
        first_copy_accuracy=hit[:, first].mean().item(),
        second_copy_accuracy=hit[:, second].mean().item(),
        icl_gain=first_loss - second_loss,
        sequences=sequences,
        length=length,
    )
