"""
`reference_salt_loss`: SALT's loss written plainly in float64 with autograd (whole tensors, no chunks, no closed-form
gradients). The tests and benchmarks check both implementations (`salt_loss`, `fused_linear_salt_loss`) against it.
"""

from __future__ import annotations

import torch

from .chunks import SALTLossOutput


def _reference_divergence(log_q, log_p, divergence: str, beta: float) -> torch.Tensor:
    q, p = log_q.exp(), log_p.exp()
    if divergence == "forward_kl" or (divergence == "jsd" and beta == 0.0):
        return torch.where(p > 0, p * (log_p - log_q), 0.0).sum(-1)  # KL(p || q)
    if divergence == "reverse_kl" or (divergence == "jsd" and beta == 1.0):
        return (q * (log_q - log_p)).sum(-1)  # KL(q || p)
    # GKD (https://arxiv.org/abs/2306.13649) Eq. 1: beta KL(p || m) + (1 - beta) KL(q || m)
    log_m = (beta * p + (1.0 - beta) * q).log()
    kl_pm = torch.where(p > 0, p * (log_p - log_m), 0.0).sum(-1)
    kl_qm = (q * (log_q - log_m)).sum(-1)
    return beta * kl_pm + (1.0 - beta) * kl_qm


def _reference_teacher_nll(teacher, labels, mask) -> torch.Tensor:
    """Sum over supervised tokens of -log softmax(teacher)[label] at temperature 1 (teacher: float64 [N, vocab])."""
    log_p1 = torch.log_softmax(teacher, dim=-1)
    label_log_probs = log_p1.gather(-1, torch.where(mask, labels, 0).unsqueeze(-1)).squeeze(-1)
    return torch.where(mask, -label_log_probs, 0.0).sum()


def reference_salt_loss(
    student_logits: torch.Tensor,
    labels: torch.Tensor,
    teacher_logits: torch.Tensor | None = None,
    *,
    nll_weight: float = 1.0,
    kd_weight: float = 0.0,
    divergence: str = "forward_kl",
    temperature: float = 1.0,
    beta: float = 0.5,
    vocab_size: int | None = None,
    ignore_index: int = -100,
) -> SALTLossOutput:
    """
    `salt_loss` written plainly: float64, whole tensors, autograd for the gradient. Slow and memory-hungry on purpose
    (it holds several [N, V] float64 tensors); tests and benchmarks compare the fused loss with it.

    Args: as `salt_loss`. Returns: `SALTLossOutput` of float64 sums; `loss` is differentiable w.r.t. `student_logits`.
    """
    student = student_logits.double().reshape(-1, student_logits.shape[-1])
    labels = labels.reshape(-1)
    mask = labels != ignore_index
    log_q1 = torch.log_softmax(student, dim=-1)
    label_log_probs = log_q1.gather(-1, torch.where(mask, labels, 0).unsqueeze(-1)).squeeze(-1)
    nll = torch.where(mask, -label_log_probs, 0.0).sum()
    kd = torch.zeros((), dtype=torch.float64, device=student.device)
    teacher_nll = torch.zeros((), dtype=torch.float64, device=student.device)
    if teacher_logits is not None:
        vocab = vocab_size or student.shape[-1]
        teacher = teacher_logits.detach().double().reshape(-1, teacher_logits.shape[-1])[:, :vocab]
        tau = temperature
        log_q = torch.log_softmax(student[:, :vocab] / tau, dim=-1)
        log_p = torch.log_softmax(teacher / tau, dim=-1)
        per_token = _reference_divergence(log_q, log_p, divergence, beta)
        kd = torch.where(mask, per_token, 0.0).sum() * tau**2
        if kd_weight != 0.0:  # as the fused loss: the teacher is not looked at without a KD term
            teacher_nll = _reference_teacher_nll(teacher, labels, mask)
    loss = nll_weight * nll + kd_weight * kd
    return SALTLossOutput(loss, nll.detach(), kd.detach(), mask.sum(), teacher_nll)
