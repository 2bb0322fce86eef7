"""
The per-chunk math that both implementations of SALT's loss share (`salt_hf.losses.logits` on logits,
`salt_hf.losses.fused_linear` on hidden states and output weights): for one chunk of tokens, the NLL, KD and
teacher-NLL sums and, in the same pass, the fp32 gradient with respect to the student's logits. Also what both check
and resolve before walking over the chunks (`check_inputs`, `resolve_chunk_size`) and the options they pass down.

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
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, NamedTuple, get_args

import torch

Divergence = Literal["forward_kl", "reverse_kl", "jsd"]
DIVERGENCES: tuple[str, ...] = get_args(Divergence)

# Elements of one [chunk, vocab] fp32 temporary: 2**22 floats = 16 MiB. The loss holds a handful of such
# temporaries at a time, so its extra memory stays well under 128 MiB whatever the batch, length or vocabulary.
AUTO_CHUNK_ELEMENTS = 2**22


class SALTLossOutput(NamedTuple):
    """
    Sums over supervised tokens. Only `loss` carries a gradient (to the student's logits; on the fused-linear path to
    its hidden states and output layer).
    """

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


def resolve_chunk_size(chunk_size: int | None, vocab: int) -> int:
    """Tokens per chunk: `chunk_size`, or by default as many as fill one [chunk, vocab] fp32 temporary of 16 MiB."""
    if chunk_size is None:
        return max(1, AUTO_CHUNK_ELEMENTS // vocab)
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


def nll_chunk(student, teacher, labels, grad, o: LossOptions):
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


# ---- stored teacher targets: the teacher's distribution as K ids with weights (salt_hf.targets) ---------------------


class SparseTargets(NamedTuple):
    """
    The teacher's tempered next-token distribution p at each of N positions, held as K ids with weights instead of
    [N, V] logits (stored teacher targets, `salt_hf.targets`).

    - form "sampled": ids drawn from p, weights = count / K. The forward-KL estimate
      `sum_k w_k (-log q(x_k)) + offset` with `offset = -H(p)` has expectation KL(p || q), and its gradient
      `q - sum_k w_k e_{x_k}` with respect to the tempered student logits has expectation `q - p`, the exact one
      (Anshumann et al., 2025, "Sparse Logit Sampling"): unbiased.
    - form "topk": the teacher's K most likely ids, weights = their probabilities renormalised to sum to 1, and
      `offset = sum_k w_k log w_k`: KL(p_K || q) of the truncated distribution p_K, a biased target (K = V is exact).

    Fields (one row per position, aligned with the labels):
        ids (`torch.Tensor` of shape `[N, K]`, int64): token ids; unused slots hold id 0 with weight 0.
        weights (`torch.Tensor` of shape `[N, K]`, fp32): non-negative, summing to 1 on every supervised position.
        teacher_nll (`torch.Tensor` of shape `[N]`, fp32): the teacher's NLL of the true next token at temperature 1.
        offset (`torch.Tensor` of shape `[N]`, fp32): the per-token constant above (no gradient).
    """

    ids: torch.Tensor
    weights: torch.Tensor
    teacher_nll: torch.Tensor
    offset: torch.Tensor

    def rows(self, index: slice) -> SparseTargets:
        return SparseTargets(*(x[index] for x in self))

    def to(self, device) -> SparseTargets:
        return SparseTargets(*(x.to(device, non_blocking=True) for x in self))


def sparse_forward_kl_chunk(student, targets: SparseTargets, labels, grad, o: LossOptions):
    """
    The NLL at tau 1 plus tau^2 x the forward KL against stored targets: cross-entropy with the K weighted ids plus
    the stored offset. Gradient w.r.t. the tempered logits: `q_tau - sum_k w_k e_{x_k}` (scattered, K per row), so the
    step costs the plain NLL's passes over the vocabulary plus a gather and a scatter of K.
    """
    s = student.float()
    log_q1, nll, mask, safe = _student_nll(s, labels, o)
    tau, vocab = o.temperature, o.vocab_size
    same = tau == 1.0 and vocab == s.shape[-1]
    if same:
        log_q = log_q1
    else:
        sk = s[:, :vocab]
        log_q = torch.log_softmax(sk / tau if tau != 1.0 else sk, dim=-1)
    cross = -(targets.weights * log_q.gather(-1, targets.ids)).sum(-1)
    kd = torch.where(mask, cross + targets.offset, 0.0).sum() * (tau * tau)
    teacher_nll = torch.where(mask, targets.teacher_nll, 0.0).sum()
    if grad is not None:
        torch.exp(log_q1, out=grad)
        alpha = o.kd_weight * tau  # tau^2 (scale of the loss) x 1/tau (chain rule through z / tau)
        if same:
            if o.nll_weight + o.kd_weight != 1.0:
                grad.mul_(o.nll_weight + o.kd_weight)
        else:
            if o.nll_weight != 1.0:
                grad.mul_(o.nll_weight)
            grad[:, :vocab].add_(log_q.exp_(), alpha=alpha)
        grad[:, :vocab].scatter_add_(-1, targets.ids, targets.weights * -alpha)
        _finish_grad(grad, mask, safe, o.nll_weight)
    return nll, kd, teacher_nll


def check_sparse_targets(targets: SparseTargets, n_tokens: int, vocab_size: int, divergence: str, beta: float):
    """Raises ValueError on stored targets the loss cannot take: another divergence, shapes, ids beyond the vocab."""
    if not (divergence == "forward_kl" or (divergence, beta) == ("jsd", 0.0)):
        raise ValueError(
            f"divergence={divergence!r} with stored teacher targets: only the forward KL has an unbiased estimate "
            "from sampled ids (and top-K targets are defined for it); use divergence='forward_kl'."
        )
    ids, weights = targets.ids, targets.weights
    if ids.dim() != 2 or weights.shape != ids.shape or ids.shape[0] != n_tokens:
        raise ValueError(
            f"teacher_targets ids {tuple(ids.shape)} and weights {tuple(weights.shape)} must both be [{n_tokens}, K] "
            "(one row per label)."
        )
    if targets.teacher_nll.shape != (n_tokens,) or targets.offset.shape != (n_tokens,):
        raise ValueError(f"teacher_targets teacher_nll and offset must be [{n_tokens}].")
    if ids.numel() and int(ids.max()) >= vocab_size:
        raise ValueError(f"teacher_targets hold token id {int(ids.max())}, beyond the vocabulary of {vocab_size}.")


ChunkPath = Callable[..., tuple[torch.Tensor, torch.Tensor, torch.Tensor]]


def choose_path(
    o: LossOptions, has_teacher: bool, student_vocab: int, need_grad: bool, sparse: bool = False
) -> ChunkPath:
    """
    The function that computes one chunk: `(student [n, V_s], teacher [n, V_t] or None, labels [n], fp32 gradient out
    [n, V_s] or None, options) -> (nll_sum, kd_sum, teacher_nll_sum)`. `nll_chunk` when there is no KD term (the
    teacher is then not looked at); SALT's default term on its fast path; any other divergence on the general one;
    `sparse_forward_kl_chunk` when the teacher is given as stored `SparseTargets` (`sparse=True`).
    """
    if not has_teacher or o.kd_weight == 0.0:
        return nll_chunk
    if sparse:
        return sparse_forward_kl_chunk
    forward_kl = o.divergence == "forward_kl" or (o.divergence, o.beta) == ("jsd", 0)
    if o.temperature == 1.0 and o.vocab_size == student_vocab and forward_kl:
        return _compiled_forward_kl_chunk if (o.compile and need_grad) else _fast_forward_kl_chunk
    return _divergence_chunk


# ---- checks shared by both implementations --------------------------------------------------------------------------


def check_inputs(student_logits, teacher_logits, labels, vocab_size, divergence, temperature, beta) -> int:
    """
    Raises ValueError, naming the argument, on options or shapes the loss cannot take (the logits may be meta tensors:
    only their shapes are read); returns the vocabulary the KD term is computed over.
    """
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
