"""Losses of SALT as pure tensor functions: token-level KD divergences and next-token NLL, as token SUMS.

Every loss here returns the SUM over supervised tokens (labels != ignore_index). The caller divides by the global
number of supervised tokens (`num_items_in_batch` in the Trainer), so the result does not depend on how a batch is
split into micro-batches or processes (../shared/RESEARCH.md, failure 3).

Memory: full-vocabulary logits are the largest tensors of a language-model step. The losses walk over the tokens
in chunks and compute, for each chunk, both the value and the gradient with respect to the student's logits in one
pass, in fp32 (as Liger-Kernel's fused losses do). Autograd therefore keeps one gradient buffer the size of the
student's logits and nothing per chunk; the extra memory of the loss is bounded by the chunk, not by
batch x length x vocab, and the teacher's logits are never kept for the backward pass.

Gradients are written in closed form. With q = softmax(z / tau) the student's and p = softmax(t / tau) the
teacher's distribution, every divergence D(q) has dD/dz = (1 / tau) * q * (g - <q, g>) with g = dD/dq:
    forward_kl  KL(p || q):          g = -p / q                 ->  dD/dz = (q - p) / tau
    reverse_kl  KL(q || p):          g = log q - log p + 1
    jsd (beta)  beta KL(p || m) + (1 - beta) KL(q || m),  m = beta p + (1 - beta) q:
                                     g = (1 - beta) (log q - log m)
The generalized JSD is Eq. 1 of GKD (Agarwal et al., 2023, https://arxiv.org/abs/2306.13649). At beta = 0 and
beta = 1 it vanishes identically; its gradient divided by beta (resp. 1 - beta) tends to that of the forward (resp.
reverse) KL, so, as in the GKD reference code, beta = 0 is the forward and beta = 1 the reverse KL. Each
divergence is multiplied by tau^2 so that its gradient scale does not change with the temperature (Hinton et al.).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

DIVERGENCES = ("forward_kl", "reverse_kl", "jsd")

# Elements of one [chunk, vocab] fp32 temporary: 2**22 floats = 16 MiB. The loss holds a handful of such
# temporaries at a time, so its extra memory stays well under 128 MiB whatever the batch, length or vocabulary.
_AUTO_CHUNK_ELEMENTS = 2**22


class SALTLossOutput(NamedTuple):
    """Sums over supervised tokens. Only `loss` carries a gradient (to the student's logits)."""

    loss: torch.Tensor
    nll: torch.Tensor
    kd: torch.Tensor
    num_tokens: torch.Tensor


def _resolve_chunk_size(chunk_size: int | None, vocab: int) -> int:
    if chunk_size is None:
        return max(1, _AUTO_CHUNK_ELEMENTS // vocab)
    if chunk_size < 1:
        raise ValueError(f"chunk_size={chunk_size} must be a positive number of tokens (or None for automatic).")
    return chunk_size


def _rowdot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """sum_v a[n, v] * b[n, v] as a batched matrix-vector product: one pass, no [n, V] temporary."""
    return torch.bmm(a.unsqueeze(1), b.unsqueeze(2)).view(-1)


def _divergence_and_grad(
    log_q: torch.Tensor, log_p: torch.Tensor, divergence: str, beta: float, need_grad: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """
    Per-token divergence between student log-probs `log_q` and teacher log-probs `log_p` (both fp32 [n, V], already
    at temperature tau; `log_p` clamped to finite values) and its gradient with respect to the tempered student logits
    z / tau. Consumes its inputs (overwrites them in place) to keep the number of [n, V] temporaries small.
    """
    if divergence == "jsd" and beta == 0.0:
        divergence = "forward_kl"
    elif divergence == "jsd" and beta == 1.0:
        divergence = "reverse_kl"

    if divergence == "forward_kl":
        p = log_p.exp()
        d = log_p.sub_(log_q)  # log p - log q
        per_token = _rowdot(p, d)
        grad = log_q.exp_().sub_(p) if need_grad else None  # q - p
        return per_token, grad

    q = log_q.exp()
    if divergence == "reverse_kl":
        d = log_q.sub_(log_p)  # log q - log p
        per_token = _rowdot(q, d)
        if not need_grad:
            return per_token, None
        # g = d + 1; the constant cancels in q * (g - <q, g>)
        grad = d.sub_(per_token.unsqueeze(-1)).mul_(q)
        return per_token, grad

    if divergence == "jsd":
        # log m = log(beta p + (1 - beta) q), computed stably in log space
        log_m = torch.logaddexp(log_p + math.log(beta), log_q + math.log1p(-beta))
        p = log_p.exp()
        kl_p = _rowdot(p, log_p.sub_(log_m))
        g = log_q.sub_(log_m)  # log q - log m
        kl_q = _rowdot(q, g)
        per_token = beta * kl_p + (1.0 - beta) * kl_q
        if not need_grad:
            return per_token, None
        # g = (1 - beta) (log q - log m); <q, log q - log m> = kl_q
        grad = g.sub_(kl_q.unsqueeze(-1)).mul_(q).mul_(1.0 - beta)
        return per_token, grad

    raise ValueError(f"divergence={divergence!r} is not one of {DIVERGENCES}.")


def _teacher_log_probs(teacher_chunk: torch.Tensor, vocab_size: int, tau: float, clamp: bool = True) -> torch.Tensor:
    t = teacher_chunk[:, :vocab_size].float()
    log_p = torch.log_softmax(t / tau if tau != 1.0 else t, dim=-1)
    # A teacher logit of -inf (a banned token) gives p = 0 and log p = -inf; clamping keeps 0 * log p finite (= 0).
    return log_p.clamp_(min=torch.finfo(torch.float32).min) if clamp else log_p


def _forward_kl_fast(teacher_chunk, log_q1, vocab_size):
    """(per-token KL(p || q), p) at tau 1; the clamp pass is paid only by chunks whose teacher has -inf logits."""
    for clamp in (False, True):
        log_p = _teacher_log_probs(teacher_chunk, vocab_size, 1.0, clamp=clamp)
        p = log_p.exp()
        kd_tok = _rowdot(p, log_p.sub_(log_q1))
        if clamp or bool(torch.isfinite(kd_tok).all()):
            return kd_tok, p


def _nll_forward_kl_chunk(s, t, labels, ignore_index: int, nll_weight: torch.Tensor, kd_weight: torch.Tensor):
    """
    SALT's default term on one chunk, written for `torch.compile` (which fuses it into a few passes over the chunk):
    (NLL sum, forward-KL sum, gradient of nll_weight * NLL + kd_weight * KL w.r.t. the student logits). The weights
    are tensors so that a changing KD weight does not trigger a recompilation.
    """
    mask = labels != ignore_index
    safe = torch.where(mask, labels, 0).unsqueeze(-1)
    log_q = torch.log_softmax(s.float(), dim=-1)
    log_p = torch.log_softmax(t.float(), dim=-1)
    p = log_p.exp()
    kd = torch.where(p > 0, p * (log_p - log_q), 0.0).sum(-1)
    nll = -log_q.gather(-1, safe).squeeze(-1)
    grad = (nll_weight + kd_weight) * log_q.exp() - kd_weight * p
    grad = grad.scatter_add(-1, safe, (-nll_weight).expand(safe.shape).to(grad.dtype))
    grad = grad * mask.unsqueeze(-1)
    return torch.where(mask, nll, 0.0).sum(), torch.where(mask, kd, 0.0).sum(), grad.to(s.dtype)


_COMPILED: dict[str, object] = {}


def _compiled_chunk():
    if "chunk" not in _COMPILED:
        _COMPILED["chunk"] = torch.compile(_nll_forward_kl_chunk, dynamic=True)
    return _COMPILED["chunk"]


def _fused_forward(
    student: torch.Tensor,
    teacher: torch.Tensor | None,
    labels: torch.Tensor,
    nll_weight: float,
    kd_weight: float,
    divergence: str,
    temperature: float,
    beta: float,
    vocab_size: int,
    ignore_index: int,
    chunk_size: int,
    need_grad: bool,
    compile: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Walks over [N, V] logits in chunks of tokens; returns (nll_sum, kd_sum, num_tokens, grad or None)."""
    n_tokens, v_s = student.shape
    device = student.device
    nll_sum = torch.zeros((), dtype=torch.float32, device=device)
    kd_sum = torch.zeros((), dtype=torch.float32, device=device)
    grad_buf = torch.empty_like(student) if need_grad else None
    with_kd = teacher is not None and kd_weight != 0.0
    tau = temperature
    # SALT's default (forward KL, tau 1, one vocabulary): the student's log-probs serve both terms and the gradient
    # (1 - w)(q - onehot) + w(q - p) = q - w p - (1 - w) onehot is written straight into the buffer.
    fast_kd = (
        with_kd
        and tau == 1.0
        and vocab_size == v_s
        and (divergence == "forward_kl" or (divergence, beta) == ("jsd", 0))
    )

    compiled = _compiled_chunk() if (compile and fast_kd and need_grad) else None
    if compiled is not None:
        weights = torch.tensor([nll_weight, kd_weight], dtype=torch.float32, device=device)

    for start in range(0, n_tokens, chunk_size):
        end = min(start + chunk_size, n_tokens)
        lab = labels[start:end]
        if compiled is not None:
            nll_c, kd_c, grad_c = compiled(student[start:end], teacher[start:end], lab, ignore_index, *weights)
            nll_sum += nll_c
            kd_sum += kd_c
            grad_buf[start:end].copy_(grad_c)
            continue
        mask = lab != ignore_index
        safe_lab = torch.where(mask, lab, 0).unsqueeze(-1)
        s = student[start:end].float()
        # 1) student log-probs at temperature 1 and the NLL, in fp32 whatever the input dtype
        log_q1 = torch.log_softmax(s, dim=-1)
        nll_sum += torch.where(mask, -log_q1.gather(-1, safe_lab).squeeze(-1), 0.0).sum()

        grad = None
        if need_grad:
            # written in place into the buffer when it is fp32; through an fp32 temporary otherwise
            grad = grad_buf[start:end] if grad_buf.dtype == torch.float32 else torch.empty_like(log_q1)

        # 2) the KD term on the real vocabulary, at temperature tau
        if fast_kd:
            kd_tok, p = _forward_kl_fast(teacher[start:end], log_q1, vocab_size)
            kd_sum += torch.where(mask, kd_tok, 0.0).sum()
            if need_grad:
                torch.exp(log_q1, out=grad)
                if nll_weight + kd_weight != 1.0:
                    grad.mul_(nll_weight + kd_weight)
                grad.sub_(p, alpha=kd_weight)
            del p
        else:
            if need_grad:
                # d NLL / dz = softmax(z) - onehot(label)
                torch.exp(log_q1, out=grad)
                if nll_weight != 1.0:
                    grad.mul_(nll_weight)
            if with_kd:
                if tau == 1.0 and vocab_size == v_s:
                    log_q = log_q1  # consumed below; the NLL is done with it
                else:
                    sk = s[:, :vocab_size]
                    log_q = torch.log_softmax(sk / tau if tau != 1.0 else sk, dim=-1)
                log_p = _teacher_log_probs(teacher[start:end], vocab_size, tau)
                kd_tok, kd_grad = _divergence_and_grad(log_q, log_p, divergence, beta, need_grad)
                del log_q, log_p
                kd_sum += torch.where(mask, kd_tok, 0.0).sum() * (tau * tau)
                if need_grad:
                    # tau^2 (scale of the loss) x 1/tau (chain rule through z / tau)
                    grad[:, :vocab_size].add_(kd_grad, alpha=kd_weight * tau)
                    del kd_grad
        del log_q1, s

        if need_grad:
            if nll_weight != 0.0:
                grad.scatter_add_(-1, safe_lab, torch.full(safe_lab.shape, -nll_weight, device=device))
            # unsupervised rows get no gradient (zeroed row by row: usually a few rows, not a pass over the chunk)
            unsupervised = (~mask).nonzero().squeeze(-1)
            if unsupervised.numel():
                grad.index_fill_(0, unsupervised, 0.0)
            if grad.data_ptr() != grad_buf[start:end].data_ptr():
                grad_buf[start:end].copy_(grad)
            del grad

    num_tokens = (labels != ignore_index).sum()
    return nll_sum, kd_sum, num_tokens, grad_buf


class _FusedNLLKDLoss(torch.autograd.Function):
    """Value and gradient in one chunked pass; backward only scales the stored gradient."""

    @staticmethod
    def forward(ctx, student, teacher, labels, nll_weight, kd_weight, divergence, temperature, beta, vocab_size,
                ignore_index, chunk_size, compile):  # fmt: skip
        need_grad = ctx.needs_input_grad[0]
        nll_sum, kd_sum, num_tokens, grad_buf = _fused_forward(
            student, teacher, labels, nll_weight, kd_weight, divergence, temperature, beta, vocab_size,
            ignore_index, chunk_size, need_grad, compile,
        )  # fmt: skip
        loss = nll_sum * nll_weight + kd_sum * kd_weight if kd_weight != 0.0 else nll_sum * nll_weight
        ctx.mark_non_differentiable(nll_sum, kd_sum, num_tokens)
        if need_grad:
            ctx.save_for_backward(grad_buf)
        ctx.backward_done = False
        return loss, nll_sum, kd_sum, num_tokens

    @staticmethod
    def backward(ctx, grad_loss, *unused):
        if ctx.backward_done:
            raise RuntimeError("The fused SALT loss scales its stored gradient in place; it supports one backward.")
        ctx.backward_done = True
        (grad_buf,) = ctx.saved_tensors
        # In place: this buffer is the gradient to the logits and nothing else holds it.
        grad = grad_buf.mul_(grad_loss.to(grad_buf.dtype))
        return (grad,) + (None,) * 11


def _check_inputs(student_logits, teacher_logits, labels, vocab_size, divergence, temperature, beta):
    if divergence not in DIVERGENCES:
        raise ValueError(f"divergence={divergence!r} is not one of {DIVERGENCES}.")
    if not temperature > 0:
        raise ValueError(f"temperature={temperature} must be > 0.")
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"beta={beta} must be in [0, 1].")
    if student_logits.shape[:-1] != labels.shape:
        raise ValueError(
            f"student_logits of shape {tuple(student_logits.shape)} do not align with labels of shape "
            f"{tuple(labels.shape)}: expected logits [..., vocab] with labels [...]."
        )
    if teacher_logits is None:
        return student_logits.shape[-1]
    if teacher_logits.shape[:-1] != student_logits.shape[:-1]:
        raise ValueError(
            f"teacher_logits {tuple(teacher_logits.shape)} and student_logits {tuple(student_logits.shape)} differ "
            "in their leading (token) dimensions; give the teacher exactly the student's inputs."
        )
    vs, vt = student_logits.shape[-1], teacher_logits.shape[-1]
    if vocab_size is None:
        if vs != vt:
            raise ValueError(
                f"student vocabulary {vs} != teacher vocabulary {vt}: pass vocab_size=<the tokenizer's size> to "
                "distil over the shared real vocabulary (embedding matrices padded to different sizes)."
            )
        return vs
    if not 0 < vocab_size <= min(vs, vt):
        raise ValueError(f"vocab_size={vocab_size} must be in [1, min(student {vs}, teacher {vt})].")
    return vocab_size


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
            passes over the vocabulary (benchmarks/RESULTS.md, section 1); the first call compiles (tens of seconds).

    Returns:
        `SALTLossOutput`: `loss` (differentiable w.r.t. `student_logits`), `nll` and `kd` (token sums, detached,
        fp32) and `num_tokens` (supervised tokens).
    """
    kd_vocab = _check_inputs(student_logits, teacher_logits, labels, vocab_size, divergence, temperature, beta)
    v_s = student_logits.shape[-1]
    student = student_logits.reshape(-1, v_s)
    teacher = None if teacher_logits is None else teacher_logits.reshape(-1, teacher_logits.shape[-1]).detach()
    chunk = _resolve_chunk_size(chunk_size, v_s)
    loss, nll, kd, num_tokens = _FusedNLLKDLoss.apply(
        student, teacher, labels.reshape(-1), float(nll_weight), float(kd_weight), divergence, float(temperature),
        float(beta), kd_vocab, ignore_index, chunk, compile,
    )  # fmt: skip
    return SALTLossOutput(loss, nll, kd, num_tokens)


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
