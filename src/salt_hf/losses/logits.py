"""Losses of SALT as pure tensor functions: token-level KD divergences and next-token NLL, as token SUMS.

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

`reference_salt_loss` is the same loss written plainly in float64 with autograd: the tests and benchmarks check the
fused loss against it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, NamedTuple, get_args

import torch

Divergence = Literal["forward_kl", "reverse_kl", "jsd"]
DIVERGENCES: tuple[str, ...] = get_args(Divergence)

# Elements of one [chunk, vocab] fp32 temporary: 2**22 floats = 16 MiB. The loss holds a handful of such
# temporaries at a time, so its extra memory stays well under 128 MiB whatever the batch, length or vocabulary.
_AUTO_CHUNK_ELEMENTS = 2**22


class SALTLossOutput(NamedTuple):
    """Sums over supervised tokens. Only `loss` carries a gradient (to the student's logits)."""

    loss: torch.Tensor
    nll: torch.Tensor
    kd: torch.Tensor
    num_tokens: torch.Tensor
    teacher_nll: torch.Tensor


@dataclass(frozen=True)
class LossOptions:
    """Everything the fused loss needs besides its tensors; `vocab_size` and `chunk_size` already resolved."""

    nll_weight: float = 1.0
    kd_weight: float = 0.0
    divergence: str = "forward_kl"
    temperature: float = 1.0
    beta: float = 0.5
    vocab_size: int = 0
    ignore_index: int = -100
    chunk_size: int = 1
    compile: bool = False


def _resolve_chunk_size(chunk_size: int | None, vocab: int) -> int:
    if chunk_size is None:
        return max(1, _AUTO_CHUNK_ELEMENTS // vocab)
    if chunk_size < 1:
        raise ValueError(f"chunk_size={chunk_size} must be a positive number of tokens (or None for automatic).")
    return chunk_size


def _rowdot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """sum_v a[n, v] * b[n, v] as a batched matrix-vector product: one pass, no [n, V] temporary."""
    return torch.bmm(a.unsqueeze(1), b.unsqueeze(2)).view(-1)


# ---- divergences on one chunk ---------------------------------------------------------------------------------------


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

    # jsd: log m = log(beta p + (1 - beta) q), computed stably in log space
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


def _teacher_log_probs(teacher_chunk: torch.Tensor, vocab_size: int, tau: float, clamp: bool = True) -> torch.Tensor:
    t = teacher_chunk[:, :vocab_size].float()
    log_p = torch.log_softmax(t / tau if tau != 1.0 else t, dim=-1)
    # A teacher logit of -inf (a banned token) gives p = 0 and log p = -inf; clamping keeps 0 * log p finite (= 0).
    return log_p.clamp_(min=torch.finfo(torch.float32).min) if clamp else log_p


def _label_nll(log_probs: torch.Tensor, mask: torch.Tensor, safe: torch.Tensor) -> torch.Tensor:
    """Sum over supervised tokens of -log_probs[label]: one gather, no pass over the vocabulary."""
    return torch.where(mask, -log_probs.gather(-1, safe).squeeze(-1), 0.0).sum()


def _forward_kl_fast(teacher_chunk, log_q1, vocab_size, mask, safe):
    """
    (per-token KL(p || q), p, teacher NLL sum) at tau 1; the clamp pass is paid only by chunks whose teacher has -inf
    logits.
    """
    for clamp in (False, True):
        log_p = _teacher_log_probs(teacher_chunk, vocab_size, 1.0, clamp=clamp)
        teacher_nll = _label_nll(log_p, mask, safe)  # before log_p is overwritten below
        p = log_p.exp()
        kd_tok = _rowdot(p, log_p.sub_(log_q1))
        if clamp or bool(torch.isfinite(kd_tok).all()):
            return kd_tok, p, teacher_nll


def _tempered_teacher_nll(teacher_chunk, vocab_size, mask, safe):
    """The teacher's NLL sum at tau 1 when its log-probs are formed at another tau: logsumexp(t) - t[label]."""
    t = teacher_chunk[:, :vocab_size]
    nll = torch.logsumexp(t.float(), dim=-1) - t.gather(-1, safe).squeeze(-1).float()
    return torch.where(mask, nll, 0.0).sum()


# ---- one function per path: (student, teacher, labels, fp32 gradient out or None) -> (nll, kd, teacher_nll) -------


def _student_nll(s: torch.Tensor, labels: torch.Tensor, o: LossOptions):
    """fp32 student log-probs at temperature 1, the chunk's NLL sum, the label mask and the safe labels."""
    mask = labels != o.ignore_index
    safe = torch.where(mask, labels, 0).unsqueeze(-1)
    log_q1 = torch.log_softmax(s, dim=-1)
    nll = torch.where(mask, -log_q1.gather(-1, safe).squeeze(-1), 0.0).sum()
    return log_q1, nll, mask, safe


def _finish_grad(grad: torch.Tensor, mask: torch.Tensor, safe: torch.Tensor, nll_weight: float) -> None:
    """Adds the NLL's -onehot(label) term and zeroes the rows of unsupervised tokens."""
    if nll_weight != 0.0:
        grad.scatter_add_(-1, safe, torch.full(safe.shape, -nll_weight, device=grad.device))
    # unsupervised rows get no gradient (zeroed row by row: usually a few rows, not a pass over the chunk)
    unsupervised = (~mask).nonzero().squeeze(-1)
    if unsupervised.numel():
        grad.index_fill_(0, unsupervised, 0.0)


def _nll_chunk(student, teacher, labels, grad, o: LossOptions):
    """No KD term: d NLL / dz = softmax(z) - onehot(label)."""
    log_q1, nll, mask, safe = _student_nll(student.float(), labels, o)
    if grad is not None:
        torch.exp(log_q1, out=grad)
        if o.nll_weight != 1.0:
            grad.mul_(o.nll_weight)
        _finish_grad(grad, mask, safe, o.nll_weight)
    zero = torch.zeros((), dtype=torch.float32, device=student.device)
    return nll, zero, zero  # no KD term: the teacher is not looked at


def _fast_forward_kl_chunk(student, teacher, labels, grad, o: LossOptions):
    """
    SALT's default (forward KL, tau 1, one vocabulary): the student's log-probs serve both terms and the gradient
    (1 - w)(q - onehot) + w(q - p) = q - w p - (1 - w) onehot is written straight into the buffer.
    """
    log_q1, nll, mask, safe = _student_nll(student.float(), labels, o)
    kd_tok, p, teacher_nll = _forward_kl_fast(teacher, log_q1, o.vocab_size, mask, safe)
    kd = torch.where(mask, kd_tok, 0.0).sum()
    if grad is not None:
        torch.exp(log_q1, out=grad)
        if o.nll_weight + o.kd_weight != 1.0:
            grad.mul_(o.nll_weight + o.kd_weight)
        grad.sub_(p, alpha=o.kd_weight)
        _finish_grad(grad, mask, safe, o.nll_weight)
    return nll, kd, teacher_nll


def _divergence_chunk(student, teacher, labels, grad, o: LossOptions):
    """Any divergence, temperature and shared vocabulary: the NLL at tau 1 plus tau^2 x D at tau."""
    s = student.float()
    log_q1, nll, mask, safe = _student_nll(s, labels, o)
    tau, vocab = o.temperature, o.vocab_size
    if grad is not None:
        torch.exp(log_q1, out=grad)
        if o.nll_weight != 1.0:
            grad.mul_(o.nll_weight)
    if tau == 1.0 and vocab == s.shape[-1]:
        log_q = log_q1  # consumed below; the NLL is done with it
    else:
        sk = s[:, :vocab]
        log_q = torch.log_softmax(sk / tau if tau != 1.0 else sk, dim=-1)
    log_p = _teacher_log_probs(teacher, vocab, tau)
    if tau == 1.0:
        teacher_nll = _label_nll(log_p, mask, safe)  # before log_p is consumed below
    else:
        teacher_nll = _tempered_teacher_nll(teacher, vocab, mask, safe)
    kd_tok, kd_grad = _divergence_and_grad(log_q, log_p, o.divergence, o.beta, grad is not None)
    del log_q, log_p
    kd = torch.where(mask, kd_tok, 0.0).sum() * (tau * tau)
    if grad is not None:
        # tau^2 (scale of the loss) x 1/tau (chain rule through z / tau)
        grad[:, :vocab].add_(kd_grad, alpha=o.kd_weight * tau)
        _finish_grad(grad, mask, safe, o.nll_weight)
    return nll, kd, teacher_nll


def _nll_forward_kl_terms(s, t, labels, ignore_index: int, nll_weight: torch.Tensor, kd_weight: torch.Tensor):
    """
    The fast path's chunk written for `torch.compile` (which fuses it into a few passes over the chunk): (NLL sum,
    forward-KL sum, teacher NLL sum, fp32 gradient w.r.t. the student logits). The weights are tensors so that a
    changing KD weight does not trigger a recompilation.
    """
    mask = labels != ignore_index
    safe = torch.where(mask, labels, 0).unsqueeze(-1)
    log_q = torch.log_softmax(s.float(), dim=-1)
    log_p = torch.log_softmax(t.float(), dim=-1)
    p = log_p.exp()
    kd = torch.where(p > 0, p * (log_p - log_q), 0.0).sum(-1)
    nll = -log_q.gather(-1, safe).squeeze(-1)
    teacher_nll = -log_p.gather(-1, safe).squeeze(-1)
    grad = (nll_weight + kd_weight) * log_q.exp() - kd_weight * p
    grad = grad.scatter_add(-1, safe, (-nll_weight).expand(safe.shape).to(grad.dtype))
    grad = grad * mask.unsqueeze(-1)
    sums = [torch.where(mask, x, 0.0).sum() for x in (nll, kd, teacher_nll)]
    return *sums, grad


_COMPILED: dict[str, Callable] = {}


def _compiled_forward_kl_chunk(student, teacher, labels, grad, o: LossOptions):
    if "chunk" not in _COMPILED:
        _COMPILED["chunk"] = torch.compile(_nll_forward_kl_terms, dynamic=True)
    weights = torch.tensor([o.nll_weight, o.kd_weight], dtype=torch.float32, device=student.device)
    teacher = teacher[:, : o.vocab_size]  # a teacher padded wider than the shared vocabulary
    nll, kd, teacher_nll, chunk_grad = _COMPILED["chunk"](student, teacher, labels, o.ignore_index, *weights)
    grad.copy_(chunk_grad)
    return nll, kd, teacher_nll


ChunkPath = Callable[..., tuple[torch.Tensor, torch.Tensor, torch.Tensor]]


def _choose_path(o: LossOptions, has_teacher: bool, student_vocab: int, need_grad: bool) -> ChunkPath:
    if not has_teacher or o.kd_weight == 0.0:
        return _nll_chunk
    forward_kl = o.divergence == "forward_kl" or (o.divergence, o.beta) == ("jsd", 0)
    if o.temperature == 1.0 and o.vocab_size == student_vocab and forward_kl:
        return _compiled_forward_kl_chunk if (o.compile and need_grad) else _fast_forward_kl_chunk
    return _divergence_chunk


# ---- the chunk driver and its autograd Function --------------------------------------------------------------------


def _chunked_loss(student, teacher, labels, o: LossOptions, need_grad: bool):
    """
    Walks over [N, V] logits in chunks of tokens; returns (nll_sum, kd_sum, teacher_nll_sum, num_tokens, grad or
    None).
    """
    n_tokens, vocab = student.shape
    path = _choose_path(o, teacher is not None, vocab, need_grad)
    nll_sum, kd_sum, teacher_nll_sum = (torch.zeros((), dtype=torch.float32, device=student.device) for _ in range(3))
    grad_buf = torch.empty_like(student) if need_grad else None
    for start in range(0, n_tokens, o.chunk_size):
        end = min(start + o.chunk_size, n_tokens)
        grad = None
        if need_grad:
            # written in place into the buffer when it is fp32; through an fp32 temporary otherwise
            in_place = grad_buf.dtype == torch.float32
            grad = grad_buf[start:end] if in_place else student.new_empty(end - start, vocab, dtype=torch.float32)
        chunk_teacher = None if teacher is None else teacher[start:end]
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
        fp32), `num_tokens` (supervised tokens) and `teacher_nll` (the teacher's NLL sum at temperature 1 over the
        first `vocab_size` columns, detached, fp32; 0 without a teacher or when `kd_weight == 0`).
    """
    kd_vocab = _check_inputs(student_logits, teacher_logits, labels, vocab_size, divergence, temperature, beta)
    v_s = student_logits.shape[-1]
    student = student_logits.reshape(-1, v_s)
    teacher = None if teacher_logits is None else teacher_logits.reshape(-1, teacher_logits.shape[-1]).detach()
    options = LossOptions(
        nll_weight=float(nll_weight),
        kd_weight=float(kd_weight),
        divergence=divergence,
        temperature=float(temperature),
        beta=float(beta),
        vocab_size=kd_vocab,
        ignore_index=ignore_index,
        chunk_size=_resolve_chunk_size(chunk_size, v_s),
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
