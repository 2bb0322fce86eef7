"""SALT_DS scores: how "challenging yet learnable" each sequence is for the teacher (pure tensor math)."""

from __future__ import annotations

from collections.abc import Callable

import torch

# Elements per chunk of `sequence_scores` (tokens x vocab): bounds its memory for large vocabularies.
# On CPU 8 MiB of fp32, so that a chunk's passes run from cache; on accelerators 256 MiB, so that kernels stay few.
_CHUNK_ELEMENTS = {"cpu": 1 << 21, "other": 1 << 26}


def sequence_scores(
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    top_k: int = 10,
    ignore_index: int = -100,
    chunk_size: int | None = None,
) -> torch.Tensor:
    """
    One SALT_DS score per sequence: the median of the teacher's per-token NLL of the label over the tokens whose label
    is among the teacher's `top_k` predictions.

    Args:
        teacher_logits (`torch.Tensor` of shape `(batch, seq, vocab)`):
            Teacher logits, aligned with `labels`: position t predicts `labels[:, t]` (shift before calling).
        labels (`torch.Tensor` of shape `(batch, seq)`):
            Target token ids; `ignore_index` marks unsupervised positions.
        top_k (`int`):
            A label is "learnable" when fewer than `top_k` vocabulary entries have a strictly larger logit.
        chunk_size (`int`, *optional*):
            Tokens per chunk; the extra memory is a few fp32 `(chunk, vocab)` temporaries, not `(batch, seq, vocab)`.

    Returns:
        `torch.Tensor` of shape `(batch,)`, float32: the median of the kept losses (the mean of the two middle values
        for an even count), NaN for a sequence with no kept token.
    """
    if teacher_logits.dim() != 3 or labels.shape != teacher_logits.shape[:2]:
        raise ValueError(
            f"teacher_logits {tuple(teacher_logits.shape)} and labels {tuple(labels.shape)} must be (batch, seq, "
            "vocab) and (batch, seq), aligned position by position."
        )
    batch, seq, vocab = teacher_logits.shape
    logits = teacher_logits.reshape(batch * seq, vocab)
    # a view for fp32 logits, a (chunk, vocab) copy otherwise
    return chunked_sequence_scores(
        lambda rows: logits[rows].float(), labels, vocab, top_k=top_k, ignore_index=ignore_index, chunk_size=chunk_size
    )


def chunked_sequence_scores(
    chunk_logits: Callable[[slice], torch.Tensor],
    labels: torch.Tensor,
    vocab: int,
    *,
    top_k: int = 10,
    ignore_index: int = -100,
    chunk_size: int | None = None,
) -> torch.Tensor:
    """
    `sequence_scores` from a function that gives the teacher's fp32 logits [rows, vocab] of a slice of the flattened
    (batch * seq) positions, so that the caller never holds them all: `salt_hf.selection.cache` computes them from
    the teacher's last hidden states and output weight, chunk by chunk (issue 15).

    Args:
        chunk_logits (`Callable[[slice], torch.Tensor]`):
            Positions `rows` of the flattened batch to their fp32 logits, of shape `(rows, vocab)`.
        labels (`torch.Tensor` of shape `(batch, seq)`), top_k, ignore_index, chunk_size:
            As in `sequence_scores`.
        vocab (`int`):
            The logits' last dimension.

    Returns:
        `torch.Tensor` of shape `(batch,)`, float32, as `sequence_scores`.
    """
    if top_k < 1:
        raise ValueError(f"top_k={top_k} must be >= 1.")
    batch, seq = labels.shape
    flat_labels = labels.reshape(-1)
    supervised = flat_labels != ignore_index
    if bool((((flat_labels < 0) | (flat_labels >= vocab)) & supervised).any()):  # the one host sync
        raise ValueError(f"labels must be in [0, {vocab}) or ignore_index={ignore_index}.")
    safe_labels = torch.where(supervised, flat_labels, torch.zeros_like(flat_labels))
    elements = _CHUNK_ELEMENTS["cpu" if labels.device.type == "cpu" else "other"]
    chunk = chunk_size or max(1, elements // vocab)
    kept = torch.empty(batch * seq, dtype=torch.float32, device=labels.device)
    nan = torch.tensor(float("nan"), dtype=torch.float32, device=labels.device)
    for start in range(0, batch * seq, chunk):
        stop = min(start + chunk, batch * seq)
        part = chunk_logits(slice(start, stop))
        target = part.gather(1, safe_labels[start:stop, None])
        nll = torch.logsumexp(part, dim=-1) - target.squeeze(1)
        keep = supervised[start:stop]
        if top_k < vocab:
            # fewer than top_k logits strictly above the label's <=> the k-th largest logit is <= the label's
            kth = torch.topk(part, top_k, dim=-1, sorted=False).values.amin(dim=-1)
            keep = keep & (target.squeeze(1) >= kth)
        kept[start:stop] = torch.where(keep, nll, nan)
    # nanquantile(0.5) interpolates linearly: the mean of the two middle values for an even count, NaN if none kept
    return torch.nanquantile(kept.view(batch, seq), 0.5, dim=1)
