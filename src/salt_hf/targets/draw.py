"""The teacher's targets for one row, from its logits: K sampled ids with counts, or the top-K ids with log-probs.

Pure tensor functions (torch and the standard library only), shared by the precompute (`salt_hf.targets.writer`) and
the tests. Everything a draw depends on is the row's logits, the temperature, K and a per-row seed, so a store is the
same whatever the number of processes or the batch size of the run that wrote it.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

FORMS = ("sampled", "topk")


class RowTargets(NamedTuple):
    """
    One row's targets, position by position (position t holds the teacher's distribution of token t + 1).

    ids (`[L, K]` int64), values (`[L, K]`: counts as uint8 for "sampled", fp32 log-probabilities for "topk"),
    teacher_nll (`[L]` fp32: -log p_1(next token), 0 where there is no next token or it is not supervised),
    offset (`[L]` fp32: -H(p_tau) for "sampled", sum_k w_k log w_k of the renormalised top-K for "topk").
    """

    ids: torch.Tensor
    values: torch.Tensor
    teacher_nll: torch.Tensor
    offset: torch.Tensor


def row_uniforms(seed: int, row: int, length: int, k: int) -> torch.Tensor:
    """The [length, k] fp64 uniforms of one row's draws: they depend on (seed, row) alone, not on which process or
    batch computes the row."""
    generator = torch.Generator().manual_seed((seed * 1_000_003 + row) % (2**63 - 1))
    return torch.rand(length, k, generator=generator, dtype=torch.float64)


def sample_ids(log_p: torch.Tensor, uniforms: torch.Tensor, p: torch.Tensor | None = None):
    """
    K draws with replacement from each row of `exp(log_p)` ([L, V] log-probabilities; `p`, their exponent, when
    already at hand) by inverting the CDF, summed in fp64, at the [L, K] `uniforms`; returns the distinct ids of each
    row sorted, with their counts ([L, K]; unused slots hold id 0 and count 0).
    """
    cdf = (log_p.exp() if p is None else p).double().cumsum(-1)
    u = uniforms.to(cdf.device)
    drawn = torch.searchsorted(cdf, u * cdf[:, -1:], right=True).clamp_(max=log_p.shape[-1] - 1)
    drawn, _ = drawn.sort(dim=-1)
    first = torch.ones_like(drawn, dtype=torch.bool)
    first[:, 1:] = drawn[:, 1:] != drawn[:, :-1]
    slot = first.long().cumsum(-1) - 1  # the slot of each draw's distinct id
    ids = torch.zeros_like(drawn).scatter_(-1, slot, drawn)
    counts = torch.zeros_like(drawn).scatter_add_(-1, slot, torch.ones_like(drawn))
    return ids, counts


def row_targets(
    logits: torch.Tensor,
    next_tokens: torch.Tensor,
    *,
    form: str,
    k: int,
    temperature: float,
    uniforms: torch.Tensor | None = None,
) -> RowTargets:
    """
    The stored targets of one row from the teacher's logits.

    Args:
        logits (`torch.Tensor` of shape `[L, V]`): the teacher's logits over the real vocabulary (padding cut off).
        next_tokens (`torch.Tensor` of shape `[L]`): the label of each position (token t + 1), -100 where none.
        form (`str`): "sampled" or "topk".
        k (`int`): draws per position ("sampled", at most 255) or ids kept ("topk", at most V).
        temperature (`float`): tau; the targets describe softmax(logits / tau).
        uniforms (`torch.Tensor` of shape `[L, K]`, *optional*): the row's uniforms (`row_uniforms`); "sampled" only.
    """
    z = logits.float()
    log_p1 = torch.log_softmax(z, dim=-1)
    mask = next_tokens != -100
    safe = torch.where(mask, next_tokens, 0).unsqueeze(-1)
    teacher_nll = torch.where(mask, -log_p1.gather(-1, safe).squeeze(-1), 0.0)
    log_p = log_p1 if temperature == 1.0 else torch.log_softmax(z / temperature, dim=-1)
    if form == "sampled":
        p = log_p.exp()
        ids, counts = sample_ids(log_p, uniforms, p)
        offset = torch.where(p > 0, p * log_p, 0.0).sum(-1)  # -H(p), with 0 log 0 = 0
        return RowTargets(ids, counts.to(torch.uint8), teacher_nll, offset)
    top, ids = log_p.topk(k, dim=-1)
    w = torch.log_softmax(top, dim=-1)  # the top K renormalised
    offset = (w.exp() * w).sum(-1)
    return RowTargets(ids, top, teacher_nll, offset)


def weights_of(form: str, values: torch.Tensor) -> torch.Tensor:
    """The fp32 weights [.., K] the loss uses (`salt_hf.losses.SparseTargets`): counts / their sum, or the top-K
    log-probabilities renormalised."""
    if form == "sampled":
        counts = values.float()
        return counts / counts.sum(-1, keepdim=True).clamp_min(1.0)
    return torch.softmax(values.float(), dim=-1)
