"""
SALT's loss on the models' logits: `salt_loss` (and its two halves `kd_loss` and `nll_loss`) as pure tensor functions.

Every loss here returns the SUM over supervised tokens (labels != ignore_index). The caller divides by the global
number of supervised tokens (`num_items_in_batch` in the Trainer), so the result does not depend on how a batch is
split into micro-batches or processes.

Beside the student's NLL and the KD term, the loss reports `teacher_nll`, the teacher's next-token NLL at tau 1 on the
same tokens (the reference point of the student's NLL). It is read off the teacher log-probs that the KD term forms
anyway (one gather; one logsumexp over the teacher's logits at tau != 1), and is 0 when the KD term is skipped.

Memory: full-vocabulary logits are the largest tensors of a language-model step. The losses walk over the tokens
in chunks and compute, for each chunk, both the value and the gradient with respect to the student's logits in one
pass, in fp32 (as Liger-Kernel's fused losses do). Autograd therefore keeps one gradient buffer the size of the
student's logits and nothing per chunk; the extra memory of the loss is bounded by the chunk, not by
batch x length x vocab, and the teacher's logits are never kept for the backward pass.

The chunk paths (value and gradient of one chunk) are in `salt_hf.losses.chunks`, shared with the fused-linear loss.
"""

from __future__ import annotations

import torch

from .chunks import (
    LossOptions,
    SALTLossOutput,
    SparseTargets,
    check_inputs,
    check_sparse_targets,
    choose_path,
    resolve_chunk_size,
)

# ---- the chunk driver and its autograd Function --------------------------------------------------------------------


def _chunked_loss(student, teacher, labels, o: LossOptions, need_grad: bool):
    """
    Walks over [N, V] logits in chunks of tokens; returns (nll_sum, kd_sum, teacher_nll_sum, num_tokens, grad or
    None).
    """
    n_tokens, vocab = student.shape
    sparse = isinstance(teacher, SparseTargets)
    path = choose_path(o, teacher is not None, vocab, need_grad, sparse=sparse)
    nll_sum, kd_sum, teacher_nll_sum = (torch.zeros((), dtype=torch.float32, device=student.device) for _ in range(3))
    grad_buf = torch.empty_like(student) if need_grad else None
    for start in range(0, n_tokens, o.chunk_size):
        end = min(start + o.chunk_size, n_tokens)
        grad = None
        if need_grad:
            # written in place into the buffer when it is fp32; through an fp32 temporary otherwise
            in_place = grad_buf.dtype == torch.float32
            grad = grad_buf[start:end] if in_place else student.new_empty(end - start, vocab, dtype=torch.float32)
        if teacher is None:
            chunk_teacher = None
        else:
            chunk_teacher = teacher.rows(slice(start, end)) if sparse else teacher[start:end]
        nll, kd, teacher_nll = path(student[start:end], chunk_teacher, labels[start:end], grad, o)
        nll_sum += nll
        kd_sum += kd
        teacher_nll_sum += teacher_nll
        if need_grad and not in_place:
            grad_buf[start:end].copy_(grad)
    num_tokens = (labels != o.ignore_index).sum()
    return nll_sum, kd_sum, teacher_nll_sum, num_tokens, grad_buf


class _FusedNLLKDLoss(torch.autograd.Function):
    """Value and gradient in one chunked pass; backward only scales the stored gradient."""

    @staticmethod
    def forward(ctx, student, teacher, labels, options: LossOptions):
        need_grad = ctx.needs_input_grad[0]
        nll_sum, kd_sum, teacher_nll, num_tokens, grad_buf = _chunked_loss(
            student, teacher, labels, options, need_grad
        )
        loss = nll_sum * options.nll_weight
        if options.kd_weight != 0.0:
            loss = loss + kd_sum * options.kd_weight
        ctx.mark_non_differentiable(nll_sum, kd_sum, num_tokens, teacher_nll)
        if need_grad:
            ctx.save_for_backward(grad_buf)
        ctx.backward_done = False
        return loss, nll_sum, kd_sum, num_tokens, teacher_nll

    @staticmethod
    def backward(ctx, grad_loss, *unused):
        if ctx.backward_done:
            raise RuntimeError("The fused SALT loss scales its stored gradient in place; it supports one backward.")
        ctx.backward_done = True
        (grad_buf,) = ctx.saved_tensors
        # In place: this buffer is the gradient to the logits and nothing else holds it.
        grad = grad_buf.mul_(grad_loss.to(grad_buf.dtype))
        # one gradient per input of forward: the logits, then teacher, labels and options
        return grad, None, None, None


# ---- public functions -----------------------------------------------------------------------------------------------


def salt_loss(
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
    chunk_size: int | None = None,
    compile: bool = False,
    teacher_targets: SparseTargets | None = None,
) -> SALTLossOutput:
    """
    `nll_weight * NLL_sum + kd_weight * KD_sum` in one chunked pass, with the NLL and KD sums beside it for logging.

    SALT's loss at step t is this with `nll_weight = 1 - w_t` and `kd_weight = w_t`, divided by the global number of
    supervised tokens (https://arxiv.org/abs/2410.18779, Section 3).

    Args:
        student_logits (`torch.Tensor` of shape `[..., V_s]`):
            Student logits aligned with `labels` (position t predicts `labels[t]`). Any float dtype.
        labels (`torch.Tensor` of shape `[...]`):
            Target token ids; `ignore_index` marks tokens that are not supervised.
        teacher_logits (`torch.Tensor` of shape `[..., V_t]`, *optional*):
            Teacher logits for the same positions; treated as constants (no gradient flows to them).
        nll_weight (`float`, *optional*, defaults to `1.0`), kd_weight (`float`, *optional*, defaults to `0.0`):
            Weights of the two sums in `loss`.
        divergence (`str`, *optional*, defaults to `"forward_kl"`):
            `"forward_kl"` KL(teacher || student), `"reverse_kl"` KL(student || teacher) or `"jsd"`.
        temperature (`float`, *optional*, defaults to `1.0`):
            tau: both distributions are softmax(logits / tau) and the divergence is multiplied by tau^2.
        beta (`float`, *optional*, defaults to `0.5`):
            Mixture weight of the generalized JSD (0: forward KL, 1: reverse KL).
        vocab_size (`int`, *optional*):
            The real vocabulary over which KD is computed when the two embedding matrices are padded to different
            sizes; defaults to the common size and must be given when the sizes differ.
        ignore_index (`int`, *optional*, defaults to `-100`):
            Label value of unsupervised tokens.
        chunk_size (`int`, *optional*):
            Tokens per chunk; by default chosen so that one [chunk, vocab] fp32 temporary takes 16 MiB.
        compile (`bool`, *optional*, defaults to `False`):
            Run SALT's default term (forward KL, tau 1, one vocabulary) through `torch.compile`, which fuses its
            passes over the vocabulary (benchmarks/micro/REPORT.md); the first call compiles (tens of seconds).
        teacher_targets (`SparseTargets`, *optional*):
            The teacher as stored targets (`salt_hf.targets`) instead of `teacher_logits`: K ids with weights per
            label position ([N, K], N the number of labels). Forward KL only; `temperature` must be the one they
            were drawn at (the store's manifest says which).

    Returns:
        `SALTLossOutput`: `loss` (differentiable w.r.t. `student_logits`), `nll` and `kd` (token sums, detached,
        fp32), `num_tokens` (supervised tokens) and `teacher_nll` (the teacher's NLL sum at temperature 1 over the
        first `vocab_size` columns, detached, fp32; 0 without a teacher or when `kd_weight == 0`).
    """
    kd_vocab = check_inputs(student_logits, teacher_logits, labels, vocab_size, divergence, temperature, beta)
    v_s = student_logits.shape[-1]
    student = student_logits.reshape(-1, v_s)
    teacher = None if teacher_logits is None else teacher_logits.reshape(-1, teacher_logits.shape[-1]).detach()
    if teacher_targets is not None:
        if teacher is not None:
            raise ValueError("Give teacher_logits or teacher_targets, not both.")
        kd_vocab = vocab_size or v_s
        if not 0 < kd_vocab <= v_s:
            raise ValueError(f"vocab_size={vocab_size} must be in [1, {v_s}] (the student's vocabulary).")
        check_sparse_targets(teacher_targets, labels.numel(), kd_vocab, divergence, beta)
        teacher = teacher_targets
    options = LossOptions(
        nll_weight=float(nll_weight),
        kd_weight=float(kd_weight),
        divergence=divergence,
        temperature=float(temperature),
        beta=float(beta),
        vocab_size=kd_vocab,
        ignore_index=ignore_index,
        chunk_size=resolve_chunk_size(chunk_size, v_s),
        compile=compile,
    )
    return SALTLossOutput(*_FusedNLLKDLoss.apply(student, teacher, labels.reshape(-1), options))


def kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    divergence: str = "forward_kl",
    temperature: float = 1.0,
    beta: float = 0.5,
    ignore_index: int = -100,
    chunk_size: int | None = None,
    vocab_size: int | None = None,
) -> torch.Tensor:
    """
    Token-level knowledge distillation: the SUM over supervised tokens of the per-token divergence.

    Args:
        student_logits (`torch.Tensor` of shape `[..., V_s]`), teacher_logits (`torch.Tensor` of shape `[..., V_t]`):
            Logits for the same positions, aligned with `labels`. Only the student receives a gradient.
        labels (`torch.Tensor` of shape `[...]`):
            Tokens with `labels == ignore_index` are left out of the sum.
        divergence (`str`, *optional*, defaults to `"forward_kl"`):
            `"forward_kl"` = KL(teacher || student), `"reverse_kl"` = KL(student || teacher), `"jsd"` = the
            generalized JSD of GKD (https://arxiv.org/abs/2306.13649, Eq. 1) with mixture weight `beta`.
        temperature (`float`, *optional*, defaults to `1.0`):
            Softmax temperature tau; the divergence is multiplied by tau^2.
        beta (`float`, *optional*, defaults to `0.5`):
            JSD mixture weight; 0 gives the forward and 1 the reverse KL.
        ignore_index (`int`, *optional*, defaults to `-100`):
            Label of unsupervised tokens.
        chunk_size (`int`, *optional*):
            Tokens per chunk (extra memory is bounded by the chunk); automatic by default.
        vocab_size (`int`, *optional*):
            Real vocabulary size when the logits are padded to different widths.

    Returns:
        `torch.Tensor`: a 0-dim fp32 tensor, the sum of the divergence over supervised tokens (0 if none).
    """
    return salt_loss(
        student_logits,
        labels,
        teacher_logits,
        nll_weight=0.0,
        kd_weight=1.0,
        divergence=divergence,
        temperature=temperature,
        beta=beta,
        vocab_size=vocab_size,
        ignore_index=ignore_index,
        chunk_size=chunk_size,
    ).loss


def nll_loss(
    logits: torch.Tensor, labels: torch.Tensor, *, ignore_index: int = -100, chunk_size: int | None = None
) -> torch.Tensor:
    """
    Next-token negative log-likelihood: the SUM over supervised tokens of -log softmax(logits)[label].

    Args:
        logits (`torch.Tensor` of shape `[..., V]`): aligned with `labels` (no shift is applied here).
        labels (`torch.Tensor` of shape `[...]`): `ignore_index` marks tokens left out.
        ignore_index (`int`, *optional*, defaults to `-100`), chunk_size (`int`, *optional*): as in `kd_loss`.
    """
    return salt_loss(logits, labels, None, ignore_index=ignore_index, chunk_size=chunk_size).loss
